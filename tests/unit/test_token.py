"""regfs.registry.token: RegistryAuth, the token flow."""

from __future__ import annotations

import base64
import gzip
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio

from regfs.errors import (
    AuthError,
    ProtocolError,
    RateLimitedError,
    RegistryError,
    TransientError,
    UntrustedRegistryCertificateError,
)
from regfs.registry.credentials import Credentials
from regfs.registry.http import MAX_SMALL_BODY
from regfs.registry.token import RegistryAuth
from tests.unit.certs import SELF_SIGNED, untrusted_connect
from tests.unit.mock_http import chunks

SECRET = "s3cr3t-p4ss"


def _b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


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
    """A MockTransport handler that hands out tok1, tok2, ... and records the requests.

    `reply`, when set, answers instead (a plain or an async function): how a test changes the
    token server's behaviour after the first challenge.
    """

    def __init__(self, *, expires_in: Any = 300, delay: float = 0.0) -> None:
        self.requests: list[httpx.Request] = []
        self.expires_in = expires_in
        self.delay = delay
        self.reply: Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]] | None
        self.reply = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await trio.sleep(self.delay)
        if self.reply is not None:
            answer = self.reply(request)
            return await answer if inspect.isawaitable(answer) else answer
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

    server.reply = handler
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
    clock = FakeClock()
    registry_auth = await _challenged(server, clock=clock)
    clock.now += 1000  # tok1 has expired: the next request needs a new token
    server.reply = lambda request: httpx.Response(503, headers={"Retry-After": "7"})
    with pytest.raises(TransientError) as info:
        await registry_auth.authorization(SCOPE)
    assert info.value.retry_after == 7

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    server.reply = unreachable
    with pytest.raises(TransientError):
        await registry_auth.authorization(SCOPE)

    server.reply = lambda request: httpx.Response(500)
    with pytest.raises(TransientError):
        await registry_auth.authorization(SCOPE)


async def test_untrusted_realm_certificate_is_an_auth_error_naming_the_realm() -> None:
    server = TokenServer()

    def untrusted(request: httpx.Request) -> httpx.Response:
        raise untrusted_connect()

    server.reply = untrusted
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(UntrustedRegistryCertificateError) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert len(server.requests) == 1
    error = info.value
    assert isinstance(error, AuthError) and not isinstance(error, TransientError)
    assert error.host == "auth.example"
    assert str(error) == (
        f"token request for {SCOPE}: TLS certificate of token realm auth.example not trusted: "
        f"{SELF_SIGNED}; trust its CA in the system store, SSL_CERT_FILE or SSL_CERT_DIR, or "
        "with --ca-cert (or --insecure)"
    )


async def test_token_server_429_is_rate_limited() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(429, headers={"Retry-After": "3"})
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(RateLimitedError) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert info.value.retry_after == 3


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1.5", 1.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("-1", None), ("nan", None)],
)
async def test_token_server_retry_after_uses_the_one_parser(
    value: str, seconds: float | None
) -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(503, headers={"Retry-After": value})
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(TransientError) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert info.value.retry_after == seconds


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthError), (404, AuthError), (429, RateLimitedError), (502, TransientError)],
)
async def test_token_server_errors_carry_host_and_status(
    status: int, kind: type[Exception]
) -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(status)
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(kind) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert isinstance(info.value, RegistryError)
    assert info.value.host == "auth.example"
    assert info.value.status == status


async def test_malformed_token_answer_names_the_token_server() -> None:
    server = TokenServer()
    server.reply = lambda request: httpx.Response(200, content=b"{}")
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(AuthError) as info:
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)
    assert info.value.host == "auth.example"
    assert info.value.status is None


async def test_401_from_another_origin_starts_no_token_flow() -> None:
    server = TokenServer()
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    for url in (
        "https://cdn.example/blob",
        "http://registry.example/v2/",  # same host, another scheme
        "https://registry.example:8443/v2/",  # same host, another port
    ):
        assert not await registry_auth.handle_unauthorized(_unauthorized(BEARER, url), SCOPE, None)
    assert server.requests == []
    assert await registry_auth.handle_unauthorized(
        _unauthorized(BEARER, "https://registry.example:443/v2/"), SCOPE, None
    )


async def test_oversized_token_body_is_protocol_error() -> None:
    server = TokenServer()
    big = json.dumps({"token": "t", "padding": "x" * MAX_SMALL_BODY}).encode()
    server.reply = lambda request: httpx.Response(200, content=chunks(big, 64 << 10))
    registry_auth = RegistryAuth(httpx.URL(REGISTRY), None, _client(server))
    with pytest.raises(ProtocolError):
        await registry_auth.handle_unauthorized(_unauthorized(BEARER), SCOPE, None)


async def test_gzipped_token_body() -> None:
    server = TokenServer()
    body = gzip.compress(json.dumps({"token": "zipped"}).encode())
    server.reply = lambda request: httpx.Response(
        200, content=chunks(body, 10), headers={"Content-Encoding": "gzip"}
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
