"""regfs.registry.http: bounded bodies (read_capped and its inflater), Retry-After,
Content-Range, errors (an untrusted certificate by who presented it); httpclient.py's
--debug request lines."""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from regfs.errors import (
    AuthError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    TransientError,
    UntrustedCertificateError,
    UntrustedRegistryCertificateError,
)
from regfs.registry.http import (
    Peer,
    SmallResponse,
    describe,
    error_codes,
    in_context,
    parse_content_range,
    parse_retry_after,
    read_capped,
    same_origin,
    status_error,
    transport_error,
    tune_read_size,
    url_host,
)
from regfs.registry.httpclient import RangedInThreads, make_http_client
from tests.unit.certs import SELF_SIGNED, untrusted_connect
from tests.unit.mock_http import chunks

# --------------------------------------------------------------------------------------------
# read_capped


async def _capped(
    body: bytes, limit: int, *, encoding: str | None = None, chunk: int | None = None
) -> bytes:
    headers = {"content-encoding": encoding} if encoding else {}

    def handler(request: httpx.Request) -> httpx.Response:
        # An async iterator keeps MockTransport from reading (and decoding) the body eagerly.
        return httpx.Response(200, headers=headers, content=chunks(body, chunk or 64 << 10))

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
# Retry-After: the one parser


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("3", 3.0), ("1.5", 1.5), (" 0.25 ", 0.25), ("86400", 86400.0)],
)
def test_retry_after_seconds_and_fractions(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_http_dates() -> None:
    now = 1_700_000_000.0
    for formatted in (
        email.utils.formatdate(now + 90, usegmt=True),  # IMF-fixdate
        time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(now + 90)),  # RFC 850
        time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(now + 90)),  # asctime
    ):
        assert parse_retry_after(formatted, now=now) == pytest.approx(90.0), formatted
    past = email.utils.formatdate(now - 3600, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0  # a date gone by: no wait, never negative


@pytest.mark.parametrize(
    "value",
    [
        "-5",  # negative
        "-0.5",
        "inf",
        "Infinity",
        "nan",
        "1e3",  # not delay-seconds, though float() takes it
        "1_000",
        "+5",
        "5s",
        "1.",
        ".5",
        "\uff11\uff12",  # digits, but not ASCII ones
        "soon",
        "Mon, 99 Foo 2024 25:61:61 GMT",
        "Mon, 01 Jan 99999 00:00:00 GMT",
    ],
)
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


def test_status_error_takes_a_fractional_retry_after() -> None:
    # The one parser: test_token checks the token flow reads "1.5" the same way.
    answer = SmallResponse(
        503, httpx.Headers({"Retry-After": "1.5"}), httpx.URL("https://r.example/v2/"), b""
    )
    error = status_error(answer, "ping")
    assert isinstance(error, TransientError)
    assert error.retry_after == 1.5


# --------------------------------------------------------------------------------------------
# status_error: the fields an error carries


def _answer(status: int, body: bytes = b"", **headers: str) -> SmallResponse:
    url = httpx.URL("https://registry.example:5000/v2/repo/blobs/sha256:abc")
    return SmallResponse(status, httpx.Headers(headers), url, body)


def _errors_body(*codes: object) -> bytes:
    return json.dumps(
        {"errors": [{"code": c, "message": "secret-ish text"} for c in codes]}
    ).encode()


def test_status_error_fields() -> None:
    digest = "sha256:" + "a" * 64
    error = status_error(_answer(404, _errors_body("BLOB_UNKNOWN")), "blob x", digest=digest)
    assert isinstance(error, NotFoundError)
    assert error.host == "registry.example:5000"
    assert error.status == 404
    assert error.digest == digest
    assert error.codes == ("BLOB_UNKNOWN",)
    assert "BLOB_UNKNOWN" in str(error)
    assert "secret-ish" not in str(error)  # the server's free text stays out of messages


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (408, TransientError),
        (429, RateLimitedError),
        (500, TransientError),
        (503, TransientError),
        (400, ProtocolError),
        (416, ProtocolError),
    ],
)
def test_status_error_kind_for_each_status(status: int, kind: type[Exception]) -> None:
    error = status_error(_answer(status), "thing")
    assert type(error) is kind
    assert error.status == status
    assert error.codes == ()
    assert error.digest is None


def test_status_error_rate_limited_with_codes_and_retry_after() -> None:
    answer = _answer(429, _errors_body("TOOMANYREQUESTS"), **{"Retry-After": "7"})
    error = status_error(answer, "manifest x")
    assert isinstance(error, RateLimitedError)
    assert error.codes == ("TOOMANYREQUESTS",)
    assert error.retry_after == 7.0


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        (b"", ()),
        (b"<html>nope</html>", ()),
        (b"[1, 2]", ()),
        (b'{"errors": null}', ()),
        (b'{"errors": 5}', ()),
        (b'{"errors": [{"code": 5}, "x", {"nocode": 1}]}', ()),
        (_errors_body("DENIED", "UNAUTHORIZED"), ("DENIED", "UNAUTHORIZED")),
        (_errors_body("NAME\nINJECTED", "x" * 65, "OK_1"), ("OK_1",)),
        (b"\xff\xfe", ()),
    ],
)
def test_error_codes(body: bytes, codes: tuple[str, ...]) -> None:
    assert error_codes(body) == codes


# --------------------------------------------------------------------------------------------
# names, origins, read size


def test_url_host_keeps_the_port() -> None:
    assert url_host(httpx.URL("https://ghcr.io/v2/")) == "ghcr.io"
    assert url_host(httpx.URL("http://127.0.0.1:5000/v2/")) == "127.0.0.1:5000"
    assert url_host(httpx.URL("https://[::1]:8443/")) == "[::1]:8443"


def test_same_origin() -> None:
    base = httpx.URL("https://registry.example")
    assert same_origin(base, httpx.URL("https://registry.example:443/v2/x?y=1"))
    assert same_origin(base, httpx.URL("https://REGISTRY.example/"))
    assert not same_origin(base, httpx.URL("http://registry.example/"))
    assert not same_origin(base, httpx.URL("https://registry.example:8443/"))
    assert not same_origin(base, httpx.URL("https://cdn.example/"))


def test_read_size_is_tuned_only_when_asked() -> None:
    # In a fresh interpreter: importing the registry package leaves httpcore alone.
    script = (
        "import httpcore, regfs.registry.client, regfs.registry.blobs;"
        "from regfs.registry.http import tune_read_size;"
        "c = httpcore._async.http11.AsyncHTTP11Connection;"
        "before = c.READ_NUM_BYTES; tune_read_size();"
        "print(before, c.READ_NUM_BYTES)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(64 * 1024), str(256 * 1024)]
    assert callable(tune_read_size)


# --------------------------------------------------------------------------------------------
# Content-Range


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 0-99/100", (0, 99, 100)),
        ("bytes 10-10/*", (10, 10, None)),
        (" bytes 5-9/1000 ", (5, 9, 1000)),
        ("bytes 99-0/100", None),  # last before first
        ("bytes 0-100/100", None),  # last at the complete length
        ("bytes */100", None),  # the 416 form: no range
        ("bytes 0-99", None),
        ("items 0-99/100", None),
        ("bytes -1-5/10", None),
        ("bytes 0-99/100, bytes 0-1/2", None),
        ("bytes \uff10-\uff19/10", None),  # digits, but not ASCII ones
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, parsed: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(value) == parsed


# --------------------------------------------------------------------------------------------
# Messages: never an empty "()", never the request's name twice


def test_describe_finds_the_message_under_an_empty_connect_error() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    error = httpx.ConnectError("")
    error.__cause__ = OSError()
    error.__cause__.__cause__ = refused
    assert describe(error) == "ConnectError: [Errno 111] Connection refused"
    assert describe(httpx.ReadTimeout("")) == "ReadTimeout"


def test_in_context_does_not_double_the_prefix() -> None:
    exc = NotFoundError("manifest a/b:1: registry.example answered 404")
    assert in_context("manifest a/b:1", exc) == str(exc)
    assert in_context("blob sha256:ab", exc) == f"blob sha256:ab: {exc}"
    assert in_context("ping", TransientError()) == "ping: TransientError"


@pytest.mark.parametrize(
    ("peer", "kind", "hint"),
    [
        (Peer.REGISTRY, UntrustedRegistryCertificateError, "--ca-cert"),
        (Peer.REALM, UntrustedRegistryCertificateError, "--ca-cert"),
        (Peer.CDN, UntrustedCertificateError, "--ca-cert"),
        (Peer.FOREIGN, UntrustedCertificateError, "--foreign-ca-cert"),
    ],
)
def test_untrusted_certificate_by_peer(peer: Peer, kind: type[Exception], hint: str) -> None:
    error = transport_error(untrusted_connect(), "blob sha256:ab", host="h.example:443", peer=peer)
    assert type(error) is kind
    assert isinstance(error, UntrustedCertificateError)
    assert error.reason == SELF_SIGNED
    assert error.host == "h.example:443"
    text = str(error)
    assert text.startswith(f"blob sha256:ab: TLS certificate of {peer.value} h.example:443 ")
    assert f"not trusted: {SELF_SIGNED}; " in text
    assert hint in text and "SSL_CERT_FILE" in text
    assert "()" not in text and "\n" not in text and "_ssl.c" not in text
    assert (hint == "--foreign-ca-cert") == ("--insecure" not in text)  # registry-side only


def test_other_connect_failures_stay_transient_and_say_why() -> None:
    error = httpx.ConnectError("")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    mapped = transport_error(error, "manifest a/b:1", host="registry.example")
    assert type(mapped) is TransientError
    assert str(mapped) == (
        "manifest a/b:1: registry.example: ConnectError: [Errno 111] Connection refused"
    )
    assert "()" not in str(transport_error(httpx.ConnectError(""), "ping", host="r.example"))


# --------------------------------------------------------------------------------------------
# --debug: one line per request, no query string, no header value


async def test_request_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="regfs.registry.httpclient")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            location = {"Location": "https://cdn.example/b?sig=SIGNED"}
            # Streamed, as the network's are: MockTransport closes a bytes body at once.
            return httpx.Response(307, headers=location, content=chunks(b"", 1))
        return httpx.Response(206, content=chunks(b"x" * 3000, 1000))

    client = make_http_client(insecure=False, timeout=5, transport=httpx.MockTransport(handler))
    try:
        headers = {"Authorization": "Bearer T0K3N", "Range": "bytes=0-2999"}
        blob = "https://registry.example/v2/r/blobs/sha256:ab"
        async with client.stream("GET", blob, headers=headers) as first:
            assert first.status_code == 307
        async with client.stream("GET", "https://cdn.example/b?sig=SIGNED&expires=1") as second:
            assert len(await second.aread()) == 3000
    finally:
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "regfs.registry.httpclient"]
    assert len(lines) == 2
    assert lines[0].startswith("GET registry.example /v2/r/blobs/sha256:ab -> 307, 0 bytes in ")
    assert lines[1].startswith("GET cdn.example /b -> 206, 3000 bytes in ")
    assert "SIGNED" not in caplog.text and "T0K3N" not in caplog.text
    assert "bytes=0-2999" not in caplog.text


async def test_request_log_names_a_failed_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="regfs.registry.httpclient")

    def handler(request: httpx.Request) -> httpx.Response:
        raise untrusted_connect()

    client = make_http_client(insecure=False, timeout=5, transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(httpx.ConnectError):
            await client.get("https://realm.example/token?scope=repository:a:pull")
    finally:
        await client.aclose()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "regfs.registry.httpclient"]
    assert line.startswith("GET realm.example /token failed: ConnectError: ")
    assert SELF_SIGNED in line and "scope" not in line


async def test_request_log_is_silent_without_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="regfs.registry.httpclient")
    client = make_http_client(
        insecure=False, timeout=5, transport=httpx.MockTransport(lambda r: httpx.Response(200))
    )
    try:
        assert (await client.get("https://registry.example/v2/")).status_code == 200
    finally:
        await client.aclose()
    assert not [r for r in caplog.records if r.name == "regfs.registry.httpclient"]


async def test_only_ranged_requests_go_through_the_threaded_transport() -> None:
    """Blob ranges of a MiB or more (nearly every byte) through worker threads; small
    ranges, manifests, tags and tokens, where latency counts, on the async transport."""
    seen: list[tuple[str, str]] = []

    def recorder(name: str) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            seen.append((name, request.url.path))
            return httpx.Response(200, content=b"x")

        return httpx.MockTransport(handler)

    split = RangedInThreads(ranged=recorder("ranged"), other=recorder("other"))
    async with httpx.AsyncClient(transport=split) as client:
        big = f"bytes=0-{RangedInThreads.BULK - 1}"
        await client.get("http://127.0.0.1/v2/a/blobs/sha256:1", headers={"Range": big})
        await client.get("http://127.0.0.1/v2/a/blobs/sha256:2", headers={"Range": "bytes=0-9"})
        await client.get("http://127.0.0.1/v2/a/manifests/latest")
        await client.post("http://127.0.0.1/token", data={"scope": "repository:a:pull"})
    assert seen == [
        ("ranged", "/v2/a/blobs/sha256:1"),
        ("other", "/v2/a/blobs/sha256:2"),  # a config: small, latency counts
        ("other", "/v2/a/manifests/latest"),
        ("other", "/token"),
    ]
