"""regfs.registry.auth: bounded bodies, credential sources, challenges, the token flow."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import stat
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio

from regfs.errors import AuthError, ProtocolError, RateLimitedError, TransientError
from regfs.registry import auth
from regfs.registry.auth import (
    MAX_SMALL_BODY,
    Challenge,
    Credentials,
    RegistryAuth,
    load_credentials,
    parse_challenges,
    read_capped,
)

SECRET = "s3cr3t-p4ss"

# --------------------------------------------------------------------------------------------
# read_capped


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _capped(
    body: bytes, limit: int, *, encoding: str | None = None, chunk: int | None = None
) -> bytes:
    headers = {"content-encoding": encoding} if encoding else {}

    def handler(request: httpx.Request) -> httpx.Response:
        # An async iterator keeps MockTransport from reading (and decoding) the body eagerly.
        return httpx.Response(200, headers=headers, content=_chunks(body, chunk or 64 << 10))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("GET", "https://blobs.example/thing")
        response = await client.send(request, stream=True)
        try:
            return await read_capped(response, limit)
        finally:
            await response.aclose()


async def test_read_capped_identity_exact_limit() -> None:
    assert await _capped(b"x" * 100, 100) == b"x" * 100


async def test_read_capped_identity_over_limit_names_host_and_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        await _capped(b"x" * 101, 100)
    assert "blobs.example" in str(info.value)
    assert "100" in str(info.value)


async def test_read_capped_identity_streamed_without_length() -> None:
    assert await _capped(b"abc" * 10, 30, chunk=7) == b"abc" * 10
    with pytest.raises(ProtocolError):
        await _capped(b"abc" * 10, 29, chunk=7)


async def test_read_capped_explicit_identity_encoding() -> None:
    assert await _capped(b"plain", 5, encoding="identity") == b"plain"


async def test_read_capped_gzip() -> None:
    data = b"hello gzip " * 100
    assert await _capped(gzip.compress(data), len(data), encoding="gzip") == data
    assert await _capped(gzip.compress(data), len(data), encoding="x-gzip", chunk=1) == data
    with pytest.raises(ProtocolError):
        await _capped(gzip.compress(data), len(data) - 1, encoding="gzip")


async def test_read_capped_gzip_multi_member_and_padding() -> None:
    body = gzip.compress(b"one ") + gzip.compress(b"two") + b"\0\0\0"
    assert await _capped(body, 100, encoding="gzip", chunk=5) == b"one two"


class _DecompressSpy:
    """Wraps zlib decompress objects to record how much each step produced."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.steps: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        spy = self

        class Wrapped:
            def __init__(self) -> None:
                self.inner = spy.real(*args, **kwargs)

            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                assert max_length > 0, "unbounded inflation step"
                out: bytes = self.inner.decompress(data, max_length)
                spy.steps.append(len(out))
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

        return Wrapped()


async def test_read_capped_gzip_bomb_is_stopped_without_inflating_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = gzip.compress(bytes(10 << 20), compresslevel=9)
    assert len(bomb) < 20 << 10
    spy = _DecompressSpy(zlib.decompressobj)
    monkeypatch.setattr(zlib, "decompressobj", spy)
    limit = 1 << 20
    with pytest.raises(ProtocolError, match="limit"):
        await _capped(bomb, limit, encoding="gzip")
    assert spy.steps, "the body was not inflated through zlib.decompressobj"
    assert max(spy.steps) <= limit + 1
    assert sum(spy.steps) <= limit + 1  # stopped as soon as the limit was passed


async def test_read_capped_deflate_zlib_wrapped_and_raw() -> None:
    data = b"deflated " * 50
    assert await _capped(zlib.compress(data), 1000, encoding="deflate") == data
    raw = zlib.compressobj(wbits=-15)
    raw_body = raw.compress(data) + raw.flush()
    assert await _capped(raw_body, 1000, encoding="deflate", chunk=1) == data
    with pytest.raises(ProtocolError):
        await _capped(zlib.compress(data), len(data) - 1, encoding="deflate")


async def test_read_capped_unknown_or_stacked_encoding() -> None:
    with pytest.raises(ProtocolError, match="br"):
        await _capped(b"whatever", 100, encoding="br")
    with pytest.raises(ProtocolError):
        await _capped(b"whatever", 100, encoding="gzip, gzip")


async def test_read_capped_corrupt_and_truncated_gzip() -> None:
    with pytest.raises(ProtocolError, match="corrupt"):
        await _capped(b"\x1f\x8b\x08\x00garbage-garbage-garbage", 100, encoding="gzip")
    whole = gzip.compress(b"some data " * 100)
    with pytest.raises(ProtocolError, match="truncated"):
        await _capped(whole[: len(whole) // 2], 10_000, encoding="gzip")


async def test_read_capped_empty_gzip_body() -> None:
    assert await _capped(b"", 10, encoding="gzip") == b""


async def test_read_capped_on_an_already_read_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 10)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.get("https://x.example/")
        assert await read_capped(response, 10) == b"x" * 10
        with pytest.raises(ProtocolError):
            await read_capped(response, 9)


async def test_read_capped_maps_transport_errors() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=failing())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.send(client.build_request("GET", "https://x.example/"), stream=True)
        with pytest.raises(TransientError):
            await read_capped(response, 100)
        await response.aclose()


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
    caplog.set_level(logging.DEBUG, logger="regfs.registry.auth")
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
    monkeypatch.setattr(auth, "HELPER_TIMEOUT", 0.3)
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


# --------------------------------------------------------------------------------------------
# parse_challenges


def test_parse_bearer() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/alpine:pull",
            },
        )
    ]


def test_parse_quoted_commas_and_escapes() -> None:
    [challenge] = parse_challenges(
        'Bearer realm="https://a.example/t", scope="repository:a/b:pull,push", '
        'error="say \\"hi\\", \\\\ok"'
    )
    assert challenge.params["scope"] == "repository:a/b:pull,push"
    assert challenge.params["error"] == 'say "hi", \\ok'


def test_parse_multiple_challenges() -> None:
    challenges = parse_challenges(
        'Basic realm="Registry Realm", BEARER realm="https://t.example/token" , service=reg,'
        " Negotiate abc+/==, NoParams"
    )
    assert challenges == [
        Challenge("basic", {"realm": "Registry Realm"}),
        Challenge("bearer", {"realm": "https://t.example/token", "service": "reg"}),
        Challenge("negotiate", {"token68": "abc+/=="}),
        Challenge("noparams", {}),
    ]


def test_parse_lenient_unquoted_url_and_case() -> None:
    [challenge] = parse_challenges("bearer Realm=https://t.example/token,Service = reg")
    assert challenge == Challenge("bearer", {"realm": "https://t.example/token", "service": "reg"})


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        ",,,",
        '"',
        "=foo",
        'Bearer realm="unterminated',
        "Bearer =x",
        'Bearer realm="x" junk',
        'Bearer realm=x"y',
        "(Bearer) realm=x",
    ],
)
def test_parse_garbage(header: str) -> None:
    assert parse_challenges(header) == []


# --------------------------------------------------------------------------------------------
# RegistryAuth

REGISTRY = "https://registry.example"
REALM = "https://auth.example/token"
SCOPE = "repository:library/alpine:pull"
BEARER = f'Bearer realm="{REALM}",service="registry.example"'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenServer:
    """A MockTransport handler that hands out tok1, tok2, ... and records the requests."""

    def __init__(self, *, expires_in: Any = 300, delay: float = 0.0) -> None:
        self.requests: list[httpx.Request] = []
        self.expires_in = expires_in
        self.delay = delay
        self.reply: Callable[[httpx.Request], httpx.Response] | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await trio.sleep(self.delay)
        if self.reply is not None:
            return self.reply(request)
        body: dict[str, Any] = {"token": f"tok{len(self.requests)}"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)


def _client(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _unauthorized(
    header: str | None, url: str = f"{REGISTRY}/v2/library/alpine/tags/list"
) -> httpx.Response:
    headers = {"WWW-Authenticate": header} if header is not None else {}
    return httpx.Response(401, headers=headers, request=httpx.Request("GET", url))


async def _challenged(
    server: TokenServer,
    *,
    creds: Credentials | None = None,
    clock: FakeClock | None = None,
    registry: str = REGISTRY,
    challenge: str = BEARER,
) -> RegistryAuth:
    registry_auth = RegistryAuth(
        httpx.URL(registry), creds, _client(server), clock=clock or FakeClock()
    )
    url = f"{registry}/v2/library/alpine/tags/list"
    assert await registry_auth.handle_unauthorized(_unauthorized(challenge, url), SCOPE, None)
    return registry_auth


async def test_no_challenge_no_header() -> None:
    server = TokenServer()
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), Credentials("u", "p"), _client(server))
    assert await registry_auth.authorization(SCOPE) is None
    assert server.requests == []


async def test_anonymous_bearer_flow() -> None:
    server = TokenServer()
    registry_auth = await _challenged(server)
    assert await registry_auth.authorization(SCOPE) == "Bearer tok1"
    [request] = server.requests
    assert request.method == "GET"
    assert request.url.host == "auth.example"
    assert dict(request.url.params) == {"service": "registry.example", "scope": SCOPE}
    assert "authorization" not in request.headers


async def test_credentials_go_to_https_realm() -> None:
    server = TokenServer()
    registry_auth = await _challenged(server, creds=Credentials("alice", SECRET))
    [request] = server.requests
    assert request.headers["authorization"] == "Basic " + _b64("alice", SECRET)
    assert await registry_auth.authorization(SCOPE) == "Bearer tok1"


async def test_no_credentials_to_plain_http_realm_on_another_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = TokenServer()
    challenge = 'Bearer realm="http://auth.example/token",service="s"'
    await _challenged(server, creds=Credentials("alice", SECRET), challenge=challenge)
    [request] = server.requests
    assert "authorization" not in request.headers
    assert SECRET not in caplog.text


async def test_no_identity_token_to_plain_http_realm_on_another_host() -> None:
    server = TokenServer()
    challenge = 'Bearer realm="http://auth.example/token",service="s"'
    creds = Credentials("<token>", SECRET, identity_token=True)
    await _challenged(server, creds=creds, challenge=challenge)
    [request] = server.requests
    assert request.method == "GET"
    assert SECRET.encode() not in request.content
    assert SECRET not in str(request.url)


async def test_same_host_http_realm_gets_credentials() -> None:
    server = TokenServer()
    registry = "http://127.0.0.1:5000"
    challenge = 'Bearer realm="http://127.0.0.1:5000/auth/token",service="local"'
    await _challenged(server, creds=Credentials("u", "p"), registry=registry, challenge=challenge)
    [request] = server.requests
    assert request.headers["authorization"] == "Basic " + _b64("u", "p")


async def test_same_host_other_port_http_realm_gets_credentials() -> None:
    server = TokenServer()
    registry = "http://127.0.0.1:5000"
    challenge = 'Bearer realm="http://127.0.0.1:5001/token",service="local"'
    await _challenged(server, creds=Credentials("u", "p"), registry=registry, challenge=challenge)
    [request] = server.requests
    assert request.headers["authorization"].startswith("Basic ")


async def test_other_host_http_realm_gets_no_credentials() -> None:
    server = TokenServer()
    registry = "http://127.0.0.1:5000"
    challenge = 'Bearer realm="http://127.0.0.2:5000/token",service="local"'
    await _challenged(server, creds=Credentials("u", "p"), registry=registry, challenge=challenge)
    [request] = server.requests
    assert "authorization" not in request.headers


async def test_token_reuse_and_refresh_before_expiry() -> None:
    server = TokenServer(expires_in=300)  # renewed when less than 30 s are left
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    start = clock.now
    clock.now = start + 269
    assert await registry_auth.authorization(SCOPE) == "Bearer tok1"
    assert len(server.requests) == 1
    clock.now = start + 271
    assert await registry_auth.authorization(SCOPE) == "Bearer tok2"
    assert len(server.requests) == 2
    assert await registry_auth.authorization(SCOPE) == "Bearer tok2"
    assert len(server.requests) == 2


@pytest.mark.parametrize("expires_in", [None, 5, "soon", True])
async def test_short_or_missing_expiry_means_60_seconds(expires_in: Any) -> None:
    server = TokenServer(expires_in=expires_in)  # 60 s, renewed when less than 10 s are left
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    start = clock.now
    clock.now = start + 49
    assert await registry_auth.authorization(SCOPE) == "Bearer tok1"
    clock.now = start + 51
    assert await registry_auth.authorization(SCOPE) == "Bearer tok2"


async def test_issued_at_is_ignored_and_access_token_accepted() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(
        200,
        json={"access_token": "acc", "expires_in": 600, "issued_at": "1999-01-01T00:00:00Z"},
    )
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    clock.now += 500
    assert await registry_auth.authorization(SCOPE) == "Bearer acc"
    assert len(server.requests) == 1


async def test_concurrent_callers_share_one_token_request() -> None:
    server = TokenServer(delay=0.05)
    registry_auth = await _challenged(server)
    server.requests.clear()
    server.expires_in = 300
    other_scope = "repository:library/busybox:pull"
    results: list[str | None] = []

    async def ask() -> None:
        results.append(await registry_auth.authorization(other_scope))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(ask)
    assert len(server.requests) == 1
    assert set(results) == {"Bearer tok1"}


async def test_different_scopes_fetch_in_parallel() -> None:
    both_arrived = trio.Event()
    arrived: list[str] = []
    server = TokenServer()
    registry_auth = await _challenged(server)

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.append(request.url.params["scope"])
        if len(arrived) == 2:
            both_arrived.set()
        await both_arrived.wait()  # deadlocks (and times out) if requests were serialized
        return httpx.Response(200, json={"token": request.url.params["scope"].split(":")[1]})

    registry_auth._http = _client(handler)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry_auth.authorization, "repository:a:pull")
            nursery.start_soon(registry_auth.authorization, "repository:b:pull")
    assert sorted(arrived) == ["repository:a:pull", "repository:b:pull"]


async def test_repeated_refusal_of_a_fresh_token_is_final() -> None:
    server = TokenServer()
    registry_auth = await _challenged(server)
    header = await registry_auth.authorization(SCOPE)
    assert header == "Bearer tok1"
    assert not await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, header)
    # And the same refused header reported by another task is final too.
    assert not await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, header)
    assert len(server.requests) == 1


async def test_refused_cached_token_is_renewed_once() -> None:
    server = TokenServer(expires_in=3600)
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    clock.now += 120  # tok1 has been in use for a while: a refusal now may be a revocation
    assert await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, "Bearer tok1")
    assert await registry_auth.authorization(SCOPE) == "Bearer tok2"
    # A second task that sent tok1 as well finds tok2 ready: no new request.
    assert await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, "Bearer tok1")
    assert len(server.requests) == 2
    # tok2 refused right away: no loop.
    assert not await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, "Bearer tok2")
    assert len(server.requests) == 2


async def test_concurrent_first_401s_fetch_once() -> None:
    server = TokenServer(delay=0.05)
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    results: list[bool] = []

    async def refused() -> None:
        results.append(await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(refused)
    assert results == [True] * 10
    assert len(server.requests) == 1


async def test_token_server_reissuing_a_refused_token() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(200, json={"token": "static"})
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    clock.now += 100
    assert not await registry_auth.handle_unauthorized(
        _unauthorized(BEARER), SCOPE, "Bearer static"
    )


async def test_basic_challenge_with_credentials() -> None:
    server = TokenServer()
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), Credentials("u", SECRET), _client(server))
    challenge = _unauthorized('Basic realm="Registry Realm"')
    assert await registry_auth.handle_unauthorized(challenge, SCOPE, None)
    header = await registry_auth.authorization(SCOPE)
    assert header == "Basic " + _b64("u", SECRET)
    assert await registry_auth.authorization("registry:catalog:*") == header
    assert not await registry_auth.handle_unauthorized(challenge, SCOPE, header)
    assert server.requests == []


async def test_basic_challenge_without_credentials() -> None:
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(TokenServer()))
    assert not await registry_auth.handle_unauthorized(
        _unauthorized('Basic realm="r"'), SCOPE, None
    )
    assert await registry_auth.authorization(SCOPE) is None


async def test_bearer_preferred_over_basic() -> None:
    server = TokenServer()
    await _challenged(server, challenge=f'Basic realm="r", {BEARER}')
    assert len(server.requests) == 1


@pytest.mark.parametrize("header", [None, "", "Negotiate", 'Bearer service="no-realm"', "(junk"])
async def test_unusable_challenge(header: str | None) -> None:
    server = TokenServer()
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), Credentials("u", "p"), _client(server))
    assert not await registry_auth.handle_unauthorized(_unauthorized(header), SCOPE, None)
    assert server.requests == []


async def test_401_from_another_host_starts_no_token_flow() -> None:
    server = TokenServer()
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), Credentials("u", "p"), _client(server))
    response = _unauthorized(BEARER, "https://cdn.example/blob")
    assert not await registry_auth.handle_unauthorized(response, SCOPE, None)
    assert server.requests == []


async def test_identity_token_post_flow() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(
        200, json={"access_token": "fromrefresh", "expires_in": 3600}
    )
    creds = Credentials("<token>", SECRET, identity_token=True)
    registry_auth = await _challenged(server, creds=creds)
    [request] = server.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in request.headers
    form = {key: values for key, values in parse_qs(request.content.decode()).items()}
    assert form == {
        "grant_type": ["refresh_token"],
        "refresh_token": [SECRET],
        "service": ["registry.example"],
        "scope": [SCOPE],
        "client_id": ["regfs"],
    }
    assert await registry_auth.authorization(SCOPE) == "Bearer fromrefresh"


@pytest.mark.parametrize("status", [401, 403])
async def test_token_server_refusal_is_auth_error(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = TokenServer()
    server.reply = lambda request: httpx.Response(status, text="denied")
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), Credentials("alice", SECRET), _client(server))
    with pytest.raises(AuthError, match="refused credentials") as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert SCOPE in str(info.value)
    assert SECRET not in str(info.value)
    assert _b64("alice", SECRET) not in str(info.value)
    assert SECRET not in caplog.text
    assert _b64("alice", SECRET) not in caplog.text


async def test_token_server_5xx_and_network_errors_are_transient() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(503, headers={"Retry-After": "7"})
    registry_auth = await _challenged(TokenServer())
    registry_auth._http = _client(server)
    registry_auth._tokens.clear()
    with pytest.raises(TransientError) as info:
        await registry_auth.authorization(SCOPE)
    assert info.value.retry_after == 7

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    registry_auth._http = _client(unreachable)
    with pytest.raises(TransientError):
        await registry_auth.authorization(SCOPE)

    server.reply = lambda request: httpx.Response(500)
    registry_auth._http = _client(server)
    with pytest.raises(TransientError):
        await registry_auth.authorization(SCOPE)


async def test_token_server_429_is_rate_limited() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(429, headers={"Retry-After": "3"})
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(RateLimitedError) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert info.value.retry_after == 3


async def test_oversized_token_body_is_protocol_error() -> None:
    server = TokenServer()
    big = json.dumps({"token": "t", "padding": "x" * MAX_SMALL_BODY}).encode()
    server.reply = lambda request: httpx.Response(200, content=_chunks(big, 64 << 10))
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(ProtocolError):
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)


async def test_gzipped_token_body() -> None:
    server = TokenServer()
    body = gzip.compress(json.dumps({"token": "zipped"}).encode())
    server.reply = lambda request: httpx.Response(
        200, content=_chunks(body, 10), headers={"Content-Encoding": "gzip"}
    )
    registry_auth = await _challenged(server)
    assert await registry_auth.authorization(SCOPE) == "Bearer zipped"


@pytest.mark.parametrize(
    "body",
    [
        b"not json " + SECRET.encode(),
        b"[1]",
        b'{"expires_in": 300}',
        b'{"token": ""}',
        b'{"token": 42}',
        b'{"token": "two\\r\\nlines"}',
    ],
)
async def test_malformed_token_answer_is_auth_error(body: bytes) -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(200, content=body)
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(AuthError) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None


async def test_invalid_realm_is_auth_error() -> None:
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(TokenServer()))
    with pytest.raises(AuthError):
        await registry_auth.handle_unauthorized(
            _unauthorized('Bearer realm="ftp://auth.example/token"'), SCOPE, None
        )


async def test_new_realm_drops_cached_tokens() -> None:
    server = TokenServer()
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    assert await registry_auth.authorization(SCOPE) == "Bearer tok1"
    clock.now += 100
    other = 'Bearer realm="https://auth2.example/token",service="registry.example"'
    assert await registry_auth.handle_unauthorized(_unauthorized(other), SCOPE, "Bearer tok1")
    assert server.requests[-1].url.host == "auth2.example"
    assert await registry_auth.authorization(SCOPE) == "Bearer tok2"


async def test_repr_hides_secrets() -> None:
    registry_auth = await _challenged(TokenServer(), creds=Credentials("alice", SECRET))
    assert SECRET not in repr(registry_auth)
    assert "tok1" not in repr(registry_auth._tokens)
