"""Pull-friendly tag checks, docker's short names and ENOENT for the unknown, on real mounts.

The world stands in for Docker Hub on loopback: docker-registry with token auth (an issuer
that gives anonymous pull tokens), a fault proxy in front of it that refuses `_catalog` with
a 401 as Docker Hub does and records every request, and a default namespace `library` given
to that registry the only way regfs knows one: `reference.DEFAULT_NAMESPACES`, set in the
mount process before it starts (no user-visible option). Requests are counted at the proxy.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import mounting
from tests.fixtures._net import wait_until
from tests.fixtures.faultproxy import FaultProxy, SeenRequest
from tests.fixtures.images import PushedImage, push_image
from tests.fixtures.mounting import mounted
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.seed import ALICE, SEEDER, seed_hello
from tests.fixtures.token_issuer import TokenIssuer

pytestmark = [pytest.mark.registry, pytest.mark.mount]

TTL = 2.0  # long enough that one re-read fits in it on a loaded machine
PAST_TTL = TTL + 0.5  # a wait for the TTL to run out (nothing is measured)


@dataclass
class Hub:
    """Docker Hub's behaviour on loopback: see the module docstring."""

    issuer: TokenIssuer
    registry: RegistryServer
    proxy: FaultProxy
    hello: PushedImage

    @property
    def host(self) -> str:
        return self.proxy.url.removeprefix("http://")

    def since(self, start: int) -> list[SeenRequest]:
        return self.proxy.requests[start:]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("hub")
    with (
        TokenIssuer(
            work / "issuer", users=dict([SEEDER]), push_users=[SEEDER[0]], anonymous_pull=True
        ) as issuer,
        start_registry(work / "registry", auth="token", token_issuer=issuer) as registry,
    ):
        hello = seed_hello(registry.url, auth=SEEDER)
        with FaultProxy(registry.url) as proxy:
            challenge = (
                f'Bearer realm="{issuer.realm}",service="{issuer.service}",'
                'scope="registry:catalog:*"'
            )
            proxy.fault(
                r"^/v2/_catalog",
                method=None,
                times=None,
                status=401,
                headers={"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                body=b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            )
            yield Hub(issuer, registry, proxy, hello)


def no_credentials_env(tmp: Path) -> dict[str, str]:
    empty = tmp / "no-docker-config"
    empty.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["DOCKER_CONFIG"] = str(empty)
    env["REGISTRY_AUTH_FILE"] = str(empty / "auth.json")
    env["XDG_RUNTIME_DIR"] = str(empty)
    return env


def credentials_env(tmp: Path, host: str, user: str, password: str) -> dict[str, str]:
    config = tmp / "docker-config"
    config.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    env = no_credentials_env(tmp)
    env["DOCKER_CONFIG"] = str(config)
    return env


@pytest.fixture
def with_default_namespace(monkeypatch: pytest.MonkeyPatch, hub: Hub) -> None:
    """Mount processes started by `mounted` know the hub's host as Docker Hub's kind."""
    code = (
        "import sys; from regfs.oci import reference; "
        f"reference.DEFAULT_NAMESPACES[{hub.host!r}] = 'library'; "
        "from regfs.cli import main; sys.exit(main())"
    )
    monkeypatch.setattr(mounting, "REGFS", [sys.executable, "-c", code])


def manifest_requests(seen: list[SeenRequest], method: str) -> list[str]:
    return [r.path for r in seen if r.method == method and "/manifests/" in r.path]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


# -- a tag re-checked after --tag-ttl: one HEAD ------------------------------------------


def test_a_recheck_is_one_head_and_a_moved_tag_one_get(tmp_path: Path, hub: Hub) -> None:
    first = push_image(hub.registry.url, "library/moving", "latest", [b"one"], auth=SEEDER)
    ttl = ("--tag-ttl", str(TTL))
    with mounted(tmp_path, hub.proxy.url, *ttl, env=no_credentials_env(tmp_path)) as m:
        manifest = m.path / "library" / "moving" / "latest" / "manifest.json"
        assert manifest.read_bytes() == first.manifest_bytes
        for _ in range(3):  # three re-checks, each after the TTL ran out
            time.sleep(PAST_TTL)
            start = len(hub.proxy.requests)
            assert manifest.read_bytes() == first.manifest_bytes
            seen = hub.since(start)
            assert manifest_requests(seen, "HEAD") == ["/v2/library/moving/manifests/latest"]
            assert manifest_requests(seen, "GET") == []
            # No namespace probe (is `moving` a tag of `library`?), no tag list, no catalog.
            assert [r.path for r in seen if "/tags/list" in r.path or "_catalog" in r.path] == []

        moved = push_image(hub.registry.url, "library/moving", "latest", [b"two"], auth=SEEDER)
        assert moved.manifest_digest != first.manifest_digest
        time.sleep(PAST_TTL)
        start = len(hub.proxy.requests)
        assert manifest.read_bytes() == moved.manifest_bytes
        seen = hub.since(start)
        assert manifest_requests(seen, "HEAD") == ["/v2/library/moving/manifests/latest"]
        assert manifest_requests(seen, "GET") == ["/v2/library/moving/manifests/latest"]
        layer = m.path / "library" / "moving" / "latest" / "layers" / f"{moved.layers[0].digest}"
        assert Path(f"{layer}.tar.gz").read_bytes() == b"two"


def test_the_recheck_goes_to_the_mirror_first(tmp_path: Path, hub: Hub) -> None:
    with FaultProxy(hub.registry.url) as mirror:
        args = ("--tag-ttl", str(TTL), "--mirror", mirror.url)
        with mounted(tmp_path, hub.proxy.url, *args, env=no_credentials_env(tmp_path)) as m:
            manifest = m.path / "library" / "hello" / "latest" / "manifest.json"
            assert manifest.read_bytes() == hub.hello.manifest_bytes
            time.sleep(PAST_TTL)
            start, mirror_start = len(hub.proxy.requests), len(mirror.requests)
            assert manifest.read_bytes() == hub.hello.manifest_bytes
            at_mirror = mirror.requests[mirror_start:]
        assert manifest_requests(at_mirror, "HEAD") == ["/v2/library/hello/manifests/latest"]
        assert manifest_requests(at_mirror, "GET") == []
        assert manifest_requests(hub.since(start), "HEAD") == []
        assert manifest_requests(hub.since(start), "GET") == []


def test_a_refused_catalog_is_asked_once(tmp_path: Path, hub: Hub) -> None:
    def catalog_requests() -> int:
        return sum(1 for r in hub.proxy.requests if r.path.startswith("/v2/_catalog"))

    before = catalog_requests()
    ttl = ("--tag-ttl", str(TTL))
    with mounted(tmp_path, hub.proxy.url, *ttl, env=no_credentials_env(tmp_path)) as m:
        assert os.listdir(m.path) == [".regfs"]
        asked = catalog_requests() - before
        assert asked >= 1  # the 401, and the retry with a token: one refusal
        for _ in range(3):
            time.sleep(PAST_TTL)
            assert (m.path / "library" / "hello" / "latest" / "manifest.json").exists()
            assert sorted(os.listdir(m.path)) == [".regfs", "library"]  # reached, so listed
        assert catalog_requests() - before == asked


# -- docker's short names ------------------------------------------------------------------


@pytest.mark.usefixtures("with_default_namespace")
def test_a_short_name_is_the_library_repository(tmp_path: Path, hub: Hub) -> None:
    start = len(hub.proxy.requests)
    with mounted(tmp_path, hub.proxy.url, env=no_credentials_env(tmp_path)) as m:
        listed = run("ls", str(m.path / "hello"))
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == ["latest", "v1"]
        cat = subprocess.run(
            ["cat", str(m.path / "hello" / "latest" / "manifest.json")],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert cat.returncode == 0 and cat.stdout == hub.hello.manifest_bytes
        full = m.path / "library" / "hello" / "latest" / "manifest.json"
        assert full.read_bytes() == hub.hello.manifest_bytes
        assert sorted(os.listdir(m.path)) == [".regfs", "library"]  # by its full name only
    paths = {r.path for r in hub.since(start)}
    assert "/v2/library/hello/tags/list" in paths
    assert not any(p.startswith("/v2/hello/") for p in paths)


def test_without_the_default_namespace_a_short_name_is_only_itself(
    tmp_path: Path, hub: Hub
) -> None:
    start = len(hub.proxy.requests)
    with mounted(tmp_path, hub.proxy.url, env=no_credentials_env(tmp_path)) as m:
        try:  # no repository `hello` (a 404): no tags, whichever way the kernel says it
            listed = os.listdir(m.path / "hello")
        except FileNotFoundError:
            listed = []
        assert listed == []
        assert not (m.path / "hello" / "latest" / "manifest.json").is_file()
    paths = {r.path for r in hub.since(start)}
    assert "/v2/hello/tags/list" in paths
    assert not any(p.startswith("/v2/library/hello/") for p in paths)


# -- a refusal without credentials: ENOENT, in docker's words ------------------------------


def test_a_missing_repository_without_credentials_is_enoent(
    tmp_path: Path, token_registry: RegistryServer
) -> None:
    # The token registry refuses anonymous pulls (an anonymous token with no access, then
    # 401), as Docker Hub answers for a repository that does not exist.
    with mounted(tmp_path, token_registry.url, env=no_credentials_env(tmp_path)) as m:
        listed = run("ls", str(m.path / "library" / "nosuch"))
        assert listed.returncode == 2, listed
        assert "No such file or directory" in listed.stderr
        with pytest.raises(FileNotFoundError):
            os.listdir(m.path / "team" / "nosuch")
        with pytest.raises(FileNotFoundError):
            (m.path / "team" / "nosuch" / "latest" / "manifest.json").read_bytes()
        # A name at the top (no catalog: only the registry knows it) too, not an empty
        # directory: the listing is taken at opendir, where ls sees its error.
        top = run("ls", str(m.path / "nosuch"))
        assert top.returncode == 2, top
        assert "No such file or directory" in top.stderr
        words = (
            "pull access denied for library/nosuch, repository does not exist or may require "
            "'docker login'"
        )
        wait_until(lambda: words in m.log(), timeout=30, what="docker's words in the log")
        assert "pull access denied for team/nosuch" in m.log()


def test_with_credentials_a_refusal_stays_eacces(
    tmp_path: Path, token_registry: RegistryServer
) -> None:
    env = credentials_env(tmp_path, token_registry.host, ALICE[0], "not-her-password")
    with mounted(tmp_path, token_registry.url, env=env) as m:
        with pytest.raises(PermissionError):
            os.listdir(m.path / "library" / "hello")
        log = m.log()
    assert "pull access denied" not in log
