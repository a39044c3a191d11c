"""regfs.registry.client over httpx.MockTransport: the protocol corners a real registry won't produce."""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
import sys
import time
from urllib.parse import parse_qs

import httpx
import pytest
import trio

from regfs.errors import (
    AuthError,
    ForbiddenURLError,
    InvalidReferenceError,
    ManifestError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    TransientError,
    UntrustedCertificateError,
    UntrustedRegistryCertificateError,
)
from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry
from regfs.registry.client import MAX_REDIRECTS, RegistryClient, RetryPolicy
from regfs.registry.http import SmallResponse
from regfs.registry.link import next_link
from tests.unit.certs import SELF_SIGNED, untrusted_connect
from tests.unit.mock_http import (
    MANIFEST,
    MANIFEST_DIGEST,
    NO_WAIT,
    REGISTRY,
    manifest_response,
    mock_client,
)

TOKEN_REALM = "https://auth.example/token"
CHALLENGE = f'Bearer realm="{TOKEN_REALM}",service="registry.example"'


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every trio.sleep the code under test asks for, without waiting."""
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        # Only regfs's waits: pytest-trio sleeps too.
        if sys._getframe(1).f_globals.get("__name__", "").startswith("regfs."):
            asked.append(seconds)
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(trio, "sleep", fake_sleep)
    return asked


# --------------------------------------------------------------------------------------------
# manifests


async def test_manifest_accept_header_names_every_type(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(monkeypatch, lambda r: manifest_response())
    doc = await client.get_manifest("library/hello", "latest")
    assert isinstance(doc, mf.Manifest)
    assert doc.digest == MANIFEST_DIGEST
    (request,) = server.requests
    assert request.url.path == "/v2/library/hello/manifests/latest"
    accepted = {t.strip() for t in request.headers["accept"].split(",")}
    assert accepted >= {
        mf.OCI_INDEX,
        mf.DOCKER_MANIFEST_LIST,
        mf.OCI_MANIFEST,
        mf.DOCKER_MANIFEST,
        mf.DOCKER_SCHEMA1_SIGNED,
        mf.DOCKER_SCHEMA1,
    }
    assert request.headers["accept-encoding"] == "identity"
    assert "authorization" not in request.headers
    await client.aclose()


async def test_manifest_by_digest_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: manifest_response(digest=None))
    doc = await client.get_manifest("library/hello", MANIFEST_DIGEST)
    assert doc.digest == MANIFEST_DIGEST
    with pytest.raises(ManifestError):
        await client.get_manifest("library/hello", "sha256:" + "0" * 64)


async def test_manifest_by_sha512_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: manifest_response(digest=None))
    sha512 = "sha512:" + hashlib.sha512(MANIFEST).hexdigest()
    doc = await client.get_manifest("library/hello", sha512)
    assert doc.digest == sha512
    with pytest.raises(ManifestError):
        await client.get_manifest("library/hello", "sha512:" + "0" * 128)


async def test_manifest_docker_content_digest_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: manifest_response(digest="sha256:" + "1" * 64))
    with pytest.raises(ManifestError):
        await client.get_manifest("library/hello", "latest")


async def test_manifest_odd_docker_content_digest_is_a_regfs_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A header naming an algorithm hashlib lacks must not escape as a bare ValueError.
    client, _ = mock_client(monkeypatch, lambda r: manifest_response(digest="blake9:" + "1" * 64))
    with pytest.raises(ManifestError):
        await client.get_manifest("library/hello", "latest")


async def test_manifest_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    big = b" " * (mf.MAX_MANIFEST_BYTES + 1)
    client, _ = mock_client(monkeypatch, lambda r: manifest_response(body=big, digest=None))
    with pytest.raises(ProtocolError):
        await client.get_manifest("library/hello", "latest")


async def test_invalid_names_make_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(monkeypatch, lambda r: manifest_response())
    for repo, ref in [("Library/x", "latest"), ("a/../b", "latest"), ("x", "../../etc")]:
        with pytest.raises(InvalidReferenceError):
            await client.get_manifest(repo, ref)
    with pytest.raises(InvalidReferenceError):
        await client.list_tags("a//b")
    with pytest.raises(InvalidReferenceError):
        await client.blob_size("x", "sha256:nothex")
    assert server.requests == []


# --------------------------------------------------------------------------------------------
# pagination


async def test_tags_follow_link_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = {
        "": (["a", "b"], '</v2/repo/tags/list?last=b&n=2>; rel="next"'),
        "b": (["c", "d"], '</v2/repo/tags/list?last=d&n=2>; rel="next"'),
        "d": (["e"], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        last = request.url.params.get("last", "")
        tags, link = pages[last]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, headers=headers, json={"name": "repo", "tags": tags})

    client, server = mock_client(monkeypatch, handler)
    assert await client.list_tags("repo") == ["a", "b", "c", "d", "e"]
    assert [r.url.params.get("last") for r in server.requests] == [None, "b", "d"]


async def test_catalog_pages_and_null_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("last") == "x":
            return httpx.Response(200, json={"repositories": None})
        return httpx.Response(
            200,
            headers={"Link": '<https://registry.example/v2/_catalog?last=x>; rel="next"'},
            json={"repositories": ["x", 5]},
        )

    client, server = mock_client(monkeypatch, handler)
    assert await client.catalog() == ["x"]
    assert len(server.requests) == 2


async def test_link_to_another_origin_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"Link": '<https://evil.example/v2/repo/tags/list?last=a>; rel="next"'},
            json={"tags": ["a"]},
        )

    client, server = mock_client(monkeypatch, handler)
    assert await client.list_tags("repo") == ["a"]
    assert [r.url.host for r in server.requests] == ["registry.example"]


async def test_tags_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(200, content=b"<html>"))
    with pytest.raises(ProtocolError):
        await client.list_tags("repo")


# --------------------------------------------------------------------------------------------
# auth


def token_registry(token: str = "T0K3N") -> object:
    """A registry that wants `Bearer <token>` and a token server that hands it out."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": token, "expires_in": 300})
        if request.headers.get("authorization") != f"Bearer {token}":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return manifest_response()

    return handler


async def test_401_token_flow_then_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(monkeypatch, token_registry())  # type: ignore[arg-type]
    doc = await client.get_manifest("library/hello", "latest")
    assert doc.digest == MANIFEST_DIGEST
    first, token_request, retry = server.requests
    assert "authorization" not in first.headers
    assert str(token_request.url).startswith(TOKEN_REALM)
    query = parse_qs(token_request.url.query.decode())
    assert query == {"service": ["registry.example"], "scope": ["repository:library/hello:pull"]}
    assert retry.headers["authorization"] == "Bearer T0K3N"
    # The token is cached for the scope: the next request carries it straight away.
    await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 4
    assert server.requests[3].headers["authorization"] == "Bearer T0K3N"


async def test_repeated_401_is_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "useless"})
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(AuthError):
        await client.get_manifest("library/hello", "latest")
    to_registry = server.to("registry.example")
    assert len(to_registry) == 2  # the first try and one retry with a token, not a loop
    assert to_registry[1].headers["authorization"] == "Bearer useless"


async def test_401_without_challenge_and_403_are_auth_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for status in (401, 403):
        client, server = mock_client(monkeypatch, lambda r, s=status: httpx.Response(s))
        with pytest.raises(AuthError):
            await client.get_manifest("library/hello", "latest")
        assert len(server.requests) == 1


# --------------------------------------------------------------------------------------------
# redirects


async def test_authorization_not_sent_across_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T0K3N"})
        if request.url.host == "cdn.example":
            return manifest_response()
        if request.headers.get("authorization") != "Bearer T0K3N":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        if request.url.path.startswith("/v2/library/hello/manifests/"):
            # Same origin first (auth stays), then off to a CDN (auth must go).
            return httpx.Response(307, headers={"Location": "/hop"})
        return httpx.Response(307, headers={"Location": "https://cdn.example/m?sig=1"})

    client, server = mock_client(monkeypatch, handler)
    doc = await client.get_manifest("library/hello", "latest")
    assert doc.digest == MANIFEST_DIGEST
    hop = [r for r in server.requests if r.url.path == "/hop"]
    assert hop and hop[0].headers["authorization"] == "Bearer T0K3N"
    (cdn,) = server.to("cdn.example")
    assert "authorization" not in cdn.headers
    assert cdn.url.params["sig"] == "1"


async def test_same_host_other_port_or_scheme_is_another_origin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets = iter(["https://registry.example:8443/x", "http://registry.example/y"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T0K3N"})
        if request.url.path in ("/x", "/y"):
            return manifest_response()
        if request.headers.get("authorization") != "Bearer T0K3N":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(302, headers={"Location": next(targets)})

    client, server = mock_client(monkeypatch, handler)
    await client.get_manifest("library/hello", "latest")
    await client.get_manifest("library/hello", "latest")
    elsewhere = [r for r in server.requests if r.url.path in ("/x", "/y")]
    assert len(elsewhere) == 2
    assert all("authorization" not in r.headers for r in elsewhere)


@pytest.mark.parametrize("hops", [MAX_REDIRECTS, MAX_REDIRECTS + 1])
async def test_redirect_limit(monkeypatch: pytest.MonkeyPatch, hops: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("n", "0"))
        if n < hops:
            return httpx.Response(302, headers={"Location": f"https://hop{n}.example/?n={n + 1}"})
        return manifest_response()

    client, server = mock_client(monkeypatch, handler)
    if hops <= MAX_REDIRECTS:
        await client.get_manifest("library/hello", "latest")
        assert len(server.requests) == hops + 1
    else:
        with pytest.raises(ProtocolError, match="redirects"):
            await client.get_manifest("library/hello", "latest")
        assert len(server.requests) == MAX_REDIRECTS + 1  # refused, and not retried


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://registry.example/x", "gopher://x/"]
)
async def test_redirect_to_other_schemes_refused(
    monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    client, server = mock_client(
        monkeypatch, lambda r: httpx.Response(302, headers={"Location": location})
    )
    with pytest.raises(ForbiddenURLError):
        await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 1


async def test_redirect_without_location_is_protocol_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, server = mock_client(monkeypatch, lambda r: httpx.Response(302, content=MANIFEST))
    with pytest.raises(ProtocolError):
        await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 1


# --------------------------------------------------------------------------------------------
# retries


def flaky(*failures: httpx.Response) -> object:
    """Answer with each failure in turn, then with the manifest."""
    queue = list(failures)

    def handler(request: httpx.Request) -> httpx.Response:
        return queue.pop(0) if queue else manifest_response()

    return handler


async def test_retries_5xx_and_429(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    handler = flaky(httpx.Response(500), httpx.Response(503), httpx.Response(429))
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 4
    assert client.stats.retries == 3
    assert client.stats.errors["TransientError"] == 2
    assert client.stats.errors["RateLimitedError"] == 1
    assert len(sleeps) == 3
    assert all(0 <= s <= NO_WAIT.max_delay for s in sleeps)


async def test_retry_after_seconds_and_date_capped(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    late = email.utils.formatdate(time.time() + 86400, usegmt=True)
    handler = flaky(
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503, headers={"Retry-After": "3600"}),
        httpx.Response(429, headers={"Retry-After": soon}),
        httpx.Response(503, headers={"Retry-After": late}),
    )
    policy = RetryPolicy(attempts=5, base_delay=0.0, max_delay=60.0)
    client, _ = mock_client(monkeypatch, handler, retry=policy)  # type: ignore[arg-type]
    await client.get_manifest("library/hello", "latest")
    assert sleeps[0] == 3.0
    assert sleeps[1] == 60.0  # capped
    assert 10.0 < sleeps[2] <= 20.0  # from the date, less whatever time has passed
    assert sleeps[3] == 60.0


async def test_retries_give_up(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    client, server = mock_client(
        monkeypatch, lambda r: httpx.Response(429, headers={"Retry-After": "0.01"})
    )
    with pytest.raises(RateLimitedError) as info:
        await client.get_manifest("library/hello", "latest")
    assert info.value.retry_after == 0.01
    assert len(server.requests) == NO_WAIT.attempts
    assert sleeps == [0.01] * (NO_WAIT.attempts - 1)


SUSTAINED = re.compile(
    r"toomanyrequests: the rate limit of registry\.example was reached; it resets in 1h00m "
    r"\(at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\): failing now instead of waiting"
)


async def test_a_sustained_429_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit"}]}
    client, server = mock_client(
        monkeypatch,
        lambda r: httpx.Response(429, json=body, headers={"Retry-After": "3600"}),
        retry=RetryPolicy(attempts=5, base_delay=0.0, max_delay=30.0),
    )
    with pytest.raises(RateLimitedError) as info:
        await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 1 and sleeps == []
    assert client.stats.retries == 0
    error = info.value
    assert (error.retry_after, error.status, error.host) == (3600.0, 429, "registry.example")
    assert error.codes == ("TOOMANYREQUESTS",)
    assert str(error).startswith(
        "manifest library/hello:latest: registry.example answered 429 (TOOMANYREQUESTS): "
        "rate limit reached, it resets in 1h00m (at "
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and SUSTAINED.fullmatch(warnings[0]), warnings


async def test_a_429_longer_than_the_operation_has_left_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    """Within the policy's cap but past the caller's trio deadline: waiting would only run
    into the deadline (ETIMEDOUT); the rate limit is the answer."""
    policy = RetryPolicy(attempts=5, base_delay=0.0, max_delay=60.0)
    client, server = mock_client(
        monkeypatch,
        flaky(httpx.Response(429, headers={"Retry-After": "20"})),
        retry=policy,  # type: ignore[arg-type]
    )
    with trio.move_on_after(5), pytest.raises(RateLimitedError) as info:
        await client.get_manifest("library/hello", "latest")
    assert info.value.retry_after == 20.0
    assert len(server.requests) == 1 and sleeps == []


async def test_a_429_within_the_operation_s_time_is_waited_out(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.0, max_delay=60.0)
    client, server = mock_client(
        monkeypatch,
        flaky(httpx.Response(429, headers={"Retry-After": "2"})),
        retry=policy,  # type: ignore[arg-type]
    )
    with trio.fail_after(5):
        doc = await client.get_manifest("library/hello", "latest")
    assert doc.digest == MANIFEST_DIGEST
    assert sleeps == [2.0] and len(server.requests) == 2


async def test_a_503_asking_for_long_is_still_waited_capped(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    """Only a rate limit fails fast: a 503's Retry-After stays a capped wait, as before."""
    client, server = mock_client(
        monkeypatch,
        flaky(httpx.Response(503, headers={"Retry-After": "3600"})),  # type: ignore[arg-type]
    )
    await client.get_manifest("library/hello", "latest")
    assert sleeps == [NO_WAIT.max_delay] and len(server.requests) == 2


async def test_retry_log_names_the_request_once(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="regfs.registry.client")
    client, _ = mock_client(monkeypatch, flaky(httpx.Response(503)))  # type: ignore[arg-type]
    await client.get_manifest("library/nginx", "latest")
    (line,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert line.startswith("manifest library/nginx:latest: registry.example answered 503; ")
    assert line.count("library/nginx") == 1


async def test_an_untrusted_registry_certificate_is_final(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise untrusted_connect()

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(UntrustedRegistryCertificateError) as info:
        await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 1 and sleeps == []  # not retried as if transient
    assert isinstance(info.value, AuthError)
    assert info.value.reason == SELF_SIGNED
    assert str(info.value).startswith(
        "manifest library/hello:latest: TLS certificate of registry registry.example "
        f"not trusted: {SELF_SIGNED}; "
    )


async def test_an_untrusted_cdn_certificate_is_not_an_auth_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            raise untrusted_connect()
        return httpx.Response(307, headers={"Location": "https://cdn.example/blob"})

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(UntrustedCertificateError) as info:
        await client.send(client.url("/v2/r/blobs/sha256:ab"), scope=None, what="blob sha256:ab")
    assert not isinstance(info.value, AuthError)
    assert info.value.host == "cdn.example"
    assert "TLS certificate of CDN cdn.example not trusted" in str(info.value)
    assert len(server.to("cdn.example")) == 1


@pytest.mark.parametrize(
    ("header", "path"),
    [
        ('</v2/r/tags/list?last=a&n=2>; rel="next"', "/v2/r/tags/list?last=a&n=2"),
        ("</v2/r/tags/list?last=a>;rel=next", "/v2/r/tags/list?last=a"),
        (
            '</v2/r/tags/list?n=1>; rel="prev", </v2/r/tags/list?last=b>; rel="next"',
            "/v2/r/tags/list?last=b",
        ),
        ('</v2/r/tags/list?last=a;b>; title="x, y"; rel="last next"', "/v2/r/tags/list?last=a;b"),
        ('</v2/r/tags/list?last=a>; rel="nextpage"', None),
        ('</v2/r/tags/list?last=a>; rel="prev"', None),
        ('/v2/r/tags/list?last=a; rel="next"', None),  # no <...>
        ('<https://other.example/v2/r/tags/list>; rel="next"', None),
        ('<http://registry.example/v2/r/tags/list>; rel="next"', None),  # another scheme
        ('<//registry.example:99/x>; rel="next"', None),
        ('<http://[>; rel="next"', None),
        (";rel=next", None),
        # Hostile: scanned in one pass (a regular expression took for ever on these).
        ("<a>; a=" + " " * 20000 + '"', None),
        ("<a>" + "; a" * 10000 + '"', None),
        ("<x>, " * 10000 + "</v2/r/tags/list?last=z>; rel=next", "/v2/r/tags/list?last=z"),
        ("", None),
        (None, None),
    ],
)
def testnext_link(header: str | None, path: str | None) -> None:
    assert next_link(header, httpx.URL(REGISTRY)) == path


async def test_connection_errors_are_retried(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if calls == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return manifest_response()

    client, _ = mock_client(monkeypatch, handler)
    await client.get_manifest("library/hello", "latest")
    assert calls == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [404, 400, 405])
async def test_client_errors_are_not_retried(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], status: int
) -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "nope"}]}
    client, server = mock_client(monkeypatch, lambda r: httpx.Response(status, json=body))
    expected = NotFoundError if status == 404 else ProtocolError
    with pytest.raises(expected):
        await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 1
    assert sleeps == []


def test_retry_policy_delay() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=4.0)
    assert policy.delay(0, 2.0) == 2.0
    assert policy.delay(0, 100.0) == 4.0
    assert policy.delay(0, -5.0) == 0.0
    for attempt in range(10):
        assert 0.0 <= policy.delay(attempt, None) <= min(4.0, 0.5 * 2**attempt)


# --------------------------------------------------------------------------------------------
# cookies, ping, HEAD


async def test_cookies_never_stored_or_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        cookie = "session=abc; Path=/; Domain=registry.example"
        if request.url.host == "cdn.example":
            return manifest_response(**{"Set-Cookie": "cdn=1; Path=/"})
        if request.url.path == "/v2/":
            return httpx.Response(200, headers={"Set-Cookie": cookie})
        return httpx.Response(
            307,
            headers={"Location": "https://cdn.example/m", "Set-Cookie": cookie},
        )

    client, server = mock_client(monkeypatch, handler)
    await client.ping()
    await client.get_manifest("library/hello", "latest")
    await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 5
    assert all("cookie" not in r.headers for r in server.requests)
    assert len(client.http.cookies.jar) == 0
    assert len(client.foreign_http.cookies.jar) == 0


@pytest.mark.parametrize("status", [200, 401])
async def test_ping_accepts_200_and_401(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    client, server = mock_client(monkeypatch, lambda r: httpx.Response(status))
    await client.ping()
    assert server.requests[0].url.path == "/v2/"


async def test_ping_404_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(404))
    with pytest.raises(NotFoundError):
        await client.ping()


async def test_blob_size_from_head(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "sha256:" + "a" * 64

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "HEAD"
        if request.url.path.startswith("/v2/nolength/"):
            return httpx.Response(200)
        return httpx.Response(200, headers={"Content-Length": "12345"})

    client, _ = mock_client(monkeypatch, handler)
    assert await client.blob_size("repo", digest) == 12345
    with pytest.raises(ProtocolError):
        await client.blob_size("nolength", digest)


async def test_http_registry_url(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(
        monkeypatch, lambda r: manifest_response(), address="http://127.0.0.1:5000"
    )
    await client.get_manifest("library/hello", "latest")
    assert str(server.requests[0].url) == "http://127.0.0.1:5000/v2/library/hello/manifests/latest"


async def test_transient_error_class_for_each_status(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    for status, error in [(408, TransientError), (502, TransientError), (504, TransientError)]:
        client, server = mock_client(monkeypatch, lambda r, s=status: httpx.Response(s))
        with pytest.raises(error):
            await client.get_manifest("library/hello", "latest")
        assert len(server.requests) == NO_WAIT.attempts


# --------------------------------------------------------------------------------------------
# constructor injection, small responses, error fields


async def test_transport_and_clock_are_constructor_arguments() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url.host))
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": f"t{len(asked)}", "expires_in": 60})
        if request.url.host == "foreign.example":
            return httpx.Response(200, content=b"foreign")
        if not request.headers.get("authorization"):
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return manifest_response()

    now = [0.0]
    client = RegistryClient(
        parse_registry(REGISTRY),
        retry=NO_WAIT,
        transport=httpx.MockTransport(handler),
        clock=lambda: now[0],
    )
    await client.get_manifest("library/hello", "latest")
    await client.get_manifest("library/hello", "latest")
    assert asked.count("auth.example") == 1  # the token is fresh by the injected clock
    now[0] = 1000.0
    await client.get_manifest("library/hello", "latest")
    assert asked.count("auth.example") == 2  # and expired by it
    # The foreign client goes through the same transport.
    async with client.open_url(
        httpx.URL("https://foreign.example/x"), scope=None, headers={}, check=None, foreign=True
    ) as response:
        assert await response.aread() == b"foreign"
    await client.aclose()


async def test_get_small_returns_the_capped_body_in_its_own_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _ = mock_client(monkeypatch, lambda r: manifest_response())
    small = await client.get_small(
        "/v2/library/hello/manifests/latest", scope=None, what="manifest", limit=1 << 20
    )
    assert isinstance(small, SmallResponse)
    assert (small.status, small.body, small.host) == (200, MANIFEST, "registry.example")
    assert small.url.path == "/v2/library/hello/manifests/latest"
    assert small.headers["docker-content-digest"] == MANIFEST_DIGEST
    assert client.stats.bytes_by_host["registry.example"] == len(MANIFEST)


async def test_manifest_errors_carry_host_status_digest_and_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
    client, _ = mock_client(
        monkeypatch, lambda r: httpx.Response(404, json=body), address="http://127.0.0.1:5000"
    )
    with pytest.raises(NotFoundError) as info:
        await client.get_manifest("library/hello", MANIFEST_DIGEST)
    error = info.value
    assert (error.host, error.status, error.digest) == ("127.0.0.1:5000", 404, MANIFEST_DIGEST)
    assert error.codes == ("MANIFEST_UNKNOWN",)
    with pytest.raises(NotFoundError) as info:
        await client.get_manifest("library/hello", "latest")
    assert info.value.digest is None  # a tag names no digest
    with pytest.raises(NotFoundError) as info:
        await client.list_tags("library/hello")
    assert info.value.codes == ("MANIFEST_UNKNOWN",)


async def test_rate_limit_codes_and_retry_after(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
    client, _ = mock_client(
        monkeypatch, lambda r: httpx.Response(429, json=body, headers={"Retry-After": "0.5"})
    )
    with pytest.raises(RateLimitedError) as info:
        await client.get_manifest("library/hello", "latest")
    assert info.value.codes == ("TOOMANYREQUESTS",)
    assert info.value.retry_after == 0.5
    # 0.5 s is more than this policy ever waits (0.01 s): a sustained limit, not retried.
    assert sleeps == []
    assert "rate limit reached, it resets in 0.5s" in str(info.value)


async def test_refused_401_carries_the_drained_body_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "useless"})
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE}, json=body)

    client, _ = mock_client(monkeypatch, handler)
    with pytest.raises(AuthError) as info:
        await client.get_manifest("library/hello", "latest")
    assert (info.value.status, info.value.host) == (401, "registry.example")
    assert info.value.codes == ("UNAUTHORIZED",)


async def test_blob_size_errors_carry_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "sha256:" + "a" * 64
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(404))
    with pytest.raises(NotFoundError) as info:
        await client.blob_size("repo", digest)
    assert (info.value.digest, info.value.status) == (digest, 404)


async def test_transport_failures_carry_the_host(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, _ = mock_client(monkeypatch, down, address="http://127.0.0.1:5000")
    with pytest.raises(TransientError) as info:
        await client.ping()
    assert info.value.host == "127.0.0.1:5000"
    assert info.value.status is None


async def test_redirect_errors_carry_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(302))
    with pytest.raises(ProtocolError) as info:
        await client.get_manifest("library/hello", "latest")
    assert (info.value.host, info.value.status) == ("registry.example", 302)
    client, _ = mock_client(
        monkeypatch, lambda r: httpx.Response(302, headers={"Location": "ftp://x.example/"})
    )
    with pytest.raises(ForbiddenURLError) as info2:
        await client.get_manifest("library/hello", "latest")
    assert info2.value.host == "registry.example"  # who sent us there
