"""regfs.registry.credentials: docker config, credential helpers, containers auth.json."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from regfs.registry import credentials
from regfs.registry.credentials import Credentials, load_credentials

SECRET = "s3cr3t-p4ss"

# --------------------------------------------------------------------------------------------
# load_credentials


def _b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(tmp_path: Path, home: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return {"HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"}


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _docker_config(home: Path, data: Any) -> Path:
    return _write_json(home / ".docker" / "config.json", data)


def _helper(env: dict[str, str], name: str, body: str) -> Path:
    """A fake docker-credential-<name>; it records its arguments and stdin next to itself."""
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    script = bin_dir / f"docker-credential-{name}"
    log_file = bin_dir / f"{name}.log"
    script.write_text(f'#!/bin/sh\nserver=$(cat)\necho "$1 $server" >> "{log_file}"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return log_file


HELPER_OK = (
    'printf \'{"ServerURL": "%s", "Username": "helperuser", "Secret": "helpersecret"}\' "$server"'
)


def test_no_files_no_credentials(env: dict[str, str]) -> None:
    assert load_credentials("ghcr.io", env) is None


def test_auths_auth_field(env: dict[str, str], home: Path) -> None:
    _docker_config(home, {"auths": {"ghcr.io": {"auth": _b64("alice", "pa:ss")}}})
    assert load_credentials("ghcr.io", env) == Credentials("alice", "pa:ss")


def test_auths_auth_without_padding(env: dict[str, str], home: Path) -> None:
    encoded = _b64("bob", "x").rstrip("=")
    _docker_config(home, {"auths": {"ghcr.io": {"auth": encoded}}})
    assert load_credentials("ghcr.io", env) == Credentials("bob", "x")


def test_auths_username_password(env: dict[str, str], home: Path) -> None:
    _docker_config(home, {"auths": {"ghcr.io": {"username": "u", "password": "p"}}})
    assert load_credentials("ghcr.io", env) == Credentials("u", "p")


def test_auths_identity_token(env: dict[str, str], home: Path) -> None:
    _docker_config(home, {"auths": {"myacr.io": {"auth": _b64("u", "p"), "identitytoken": "rt"}}})
    creds = load_credentials("myacr.io", env)
    assert creds is not None
    assert creds.identity_token
    assert creds.password == "rt"


def test_exact_host_matching(env: dict[str, str], home: Path) -> None:
    _docker_config(
        home,
        {
            "auths": {
                "ghcr.io.evil": {"auth": _b64("evil", "1")},
                "evil.ghcr.io": {"auth": _b64("evil", "2")},
                "https://ghcr.io/": {"auth": _b64("good", "3")},
                "127.0.0.1": {"auth": _b64("noport", "4")},
                "127.0.0.1:5000": {"auth": _b64("port", "5")},
            }
        },
    )
    assert load_credentials("ghcr.io", env) == Credentials("good", "3")
    assert load_credentials("GHCR.IO", env) == Credentials("good", "3")
    assert load_credentials("127.0.0.1:5000", env) == Credentials("port", "5")
    assert load_credentials("127.0.0.1:5001", env) is None
    assert load_credentials("io", env) is None


def test_exact_key_preferred_over_url_key(env: dict[str, str], home: Path) -> None:
    _docker_config(
        home,
        {
            "auths": {
                "https://ghcr.io/v2/": {"auth": _b64("url", "1")},
                "ghcr.io/some-org": {"auth": _b64("org", "2")},
                "ghcr.io": {"auth": _b64("exact", "3")},
            }
        },
    )
    assert load_credentials("ghcr.io", env) == Credentials("exact", "3")


@pytest.mark.parametrize("key", ["docker.io", "index.docker.io", "https://index.docker.io/v1/"])
def test_docker_hub_aliases(env: dict[str, str], home: Path, key: str) -> None:
    _docker_config(home, {"auths": {key: {"auth": _b64("hubuser", "hubpass")}}})
    assert load_credentials("registry-1.docker.io", env) == Credentials("hubuser", "hubpass")


def test_docker_hub_alias_does_not_leak_to_others(env: dict[str, str], home: Path) -> None:
    _docker_config(home, {"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub", "x")}}})
    assert load_credentials("ghcr.io", env) is None


def test_docker_config_env_var(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    _docker_config(home, {"auths": {"ghcr.io": {"auth": _b64("home", "1")}}})
    _write_json(tmp_path / "dc" / "config.json", {"auths": {"ghcr.io": {"auth": _b64("dc", "2")}}})
    assert load_credentials("ghcr.io", {**env, "DOCKER_CONFIG": str(tmp_path / "dc")}) == (
        Credentials("dc", "2")
    )


def test_cred_helper_wins(env: dict[str, str], home: Path) -> None:
    calls = _helper(env, "test", HELPER_OK)
    _helper(env, "store", 'echo \'{"Username": "store", "Secret": "x"}\'')
    _docker_config(
        home,
        {
            "credHelpers": {"ghcr.io": "test"},
            "credsStore": "store",
            "auths": {"ghcr.io": {"auth": _b64("auths", "1")}},
        },
    )
    assert load_credentials("ghcr.io", env) == Credentials("helperuser", "helpersecret")
    assert calls.read_text() == "get ghcr.io\n"


def test_cred_helper_identity_token(env: dict[str, str], home: Path) -> None:
    _helper(env, "test", 'echo \'{"Username": "<token>", "Secret": "refresh"}\'')
    _docker_config(home, {"credHelpers": {"myacr.io": "test"}})
    creds = load_credentials("myacr.io", env)
    assert creds == Credentials("<token>", "refresh", identity_token=True)


def test_cred_helper_for_docker_hub_gets_index_url(env: dict[str, str], home: Path) -> None:
    calls = _helper(env, "test", HELPER_OK)
    _docker_config(home, {"credHelpers": {"docker.io": "test"}})
    assert load_credentials("registry-1.docker.io", env) is not None
    assert calls.read_text() == "get https://index.docker.io/v1/\n"


def test_creds_store_before_auths(env: dict[str, str], home: Path) -> None:
    _helper(env, "store", HELPER_OK)
    _docker_config(
        home, {"credsStore": "store", "auths": {"ghcr.io": {"auth": _b64("auths", "1")}}}
    )
    assert load_credentials("ghcr.io", env) == Credentials("helperuser", "helpersecret")


def test_creds_store_without_entry_falls_back_to_auths(env: dict[str, str], home: Path) -> None:
    _helper(env, "store", 'echo "credentials not found in native keychain"; exit 1')
    _docker_config(
        home, {"credsStore": "store", "auths": {"ghcr.io": {"auth": _b64("auths", "1")}}}
    )
    assert load_credentials("ghcr.io", env) == Credentials("auths", "1")


@pytest.mark.parametrize(
    "body",
    [
        "echo 'not json'",
        "echo '[1, 2]'",
        'echo \'{"Username": "u", "Secret": ""}\'',
        'echo \'{"Secret": "no-user"}\'',
        "exit 3",
    ],
)
def test_failing_helper_is_skipped(
    env: dict[str, str], home: Path, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="regfs.registry.credentials")
    _helper(env, "test", body)
    _docker_config(
        home,
        {"credHelpers": {"ghcr.io": "test"}, "auths": {"ghcr.io": {"auth": _b64("a", SECRET)}}},
    )
    assert load_credentials("ghcr.io", env) == Credentials("a", SECRET)
    assert SECRET not in caplog.text
    assert "no-user" not in caplog.text


def test_missing_helper_is_skipped(
    env: dict[str, str], home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _docker_config(
        home,
        {
            "credHelpers": {"ghcr.io": "absent"},
            "credsStore": "../../bin/sh",
            "auths": {"ghcr.io": {"auth": _b64("a", "b")}},
        },
    )
    assert load_credentials("ghcr.io", env) == Credentials("a", "b")
    assert "docker-credential-absent" in caplog.text


def test_helper_timeout_is_skipped(
    env: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials, "HELPER_TIMEOUT", 0.3)
    _helper(env, "slow", "sleep 30")  # not exec'd: the kill must reach the whole group
    _docker_config(home, {"credHelpers": {"ghcr.io": "slow"}})
    began = time.monotonic()
    assert load_credentials("ghcr.io", env) is None
    assert time.monotonic() - began < 10


def test_malformed_docker_config_falls_through(
    env: dict[str, str], home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = home / ".docker" / "config.json"
    config.parent.mkdir()
    config.write_text('{"auths": {"ghcr.io": {"auth": "' + _b64("x", SECRET) + '"')  # cut short
    _write_json(
        home / ".config" / "containers" / "auth.json",
        {"auths": {"ghcr.io": {"auth": _b64("podman", "p")}}},
    )
    assert load_credentials("ghcr.io", env) == Credentials("podman", "p")
    assert SECRET not in caplog.text
    assert _b64("x", SECRET) not in caplog.text


@pytest.mark.parametrize(
    "data",
    [
        [1, 2, 3],
        {"auths": "nope"},
        {"auths": {"ghcr.io": "nope"}},
        {"auths": {"ghcr.io": {"auth": "!!!not base64!!!"}}},
        {"auths": {"ghcr.io": {"auth": base64.b64encode(b"no-colon").decode()}}},
        {"auths": {"ghcr.io": {}}},
        {"credHelpers": {"ghcr.io": 42}},
    ],
)
def test_malformed_entries_are_skipped(env: dict[str, str], home: Path, data: Any) -> None:
    _docker_config(home, data)
    assert load_credentials("ghcr.io", env) is None


def test_unreadable_file_is_skipped(env: dict[str, str], home: Path) -> None:
    (home / ".docker" / "config.json").mkdir(parents=True)  # a directory: read fails
    assert load_credentials("ghcr.io", env) is None


def test_containers_auth_precedence(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    def entry(user: str) -> dict[str, Any]:
        return {"auths": {"quay.io": {"auth": _b64(user, "p")}}}

    _write_json(home / ".config" / "containers" / "auth.json", entry("config"))
    assert load_credentials("quay.io", env) == Credentials("config", "p")

    runtime = tmp_path / "run"
    _write_json(runtime / "containers" / "auth.json", entry("runtime"))
    env2 = {**env, "XDG_RUNTIME_DIR": str(runtime)}
    assert load_credentials("quay.io", env2) == Credentials("runtime", "p")

    auth_file = _write_json(tmp_path / "explicit.json", entry("explicit"))
    env3 = {**env2, "REGISTRY_AUTH_FILE": str(auth_file)}
    assert load_credentials("quay.io", env3) == Credentials("explicit", "p")

    # An explicit file without the host does not hide the others.
    _write_json(auth_file, {"auths": {"other.io": {"auth": _b64("o", "p")}}})
    assert load_credentials("quay.io", env3) == Credentials("runtime", "p")

    # docker's config comes before all of them.
    _docker_config(home, {"auths": {"quay.io": {"auth": _b64("docker", "p")}}})
    assert load_credentials("quay.io", env3) == Credentials("docker", "p")


def test_credentials_repr_hides_password() -> None:
    creds = Credentials("alice", SECRET)
    assert SECRET not in repr(creds)
    assert "alice" in repr(creds)
