"""regfs.registry.blobs over httpx.MockTransport: ranges, resumption, mirrors, CDN redirects, foreign URLs."""

from __future__ import annotations

import errno
import hashlib
import logging
import re

import httpx
import pytest

from regfs.errors import (
    AuthError,
    ForbiddenURLError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    TransientError,
    UntrustedCertificateError,
)
from regfs.oci import manifest as mf
from regfs.registry.blobs import BlobSource, ForeignURLPolicy
from regfs.registry.client import RegistryClient, RetryPolicy
from regfs.vfs.fuse import errno_for
from tests.fixtures.images import random_bytes
from tests.unit.certs import SELF_SIGNED, untrusted_connect
from tests.unit.mock_http import NO_WAIT, chunks, cut_after, mock_client

DATA = random_bytes(10_000, seed=7)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
BLOB_PATH = f"/v2/repo/blobs/{DIGEST}"
CHALLENGE = 'Bearer realm="https://auth.example/token",service="registry.example"'
FOREIGN = "https://foreign.example/fwlink/?id=1"
ALLOW_FOREIGN = ForeignURLPolicy([r"https://foreign\.example/", r"https://cdn\.example/"])
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def requested(request: httpx.Request) -> tuple[int, int]:
    """[start, end) of a request's closed Range header."""
    match = _RANGE.fullmatch(request.headers["range"])
    assert match, request.headers.get("range")
    return int(match[1]), int(match[2]) + 1


def ranged(request: httpx.Request, data: bytes = DATA, chunk: int = 1000) -> httpx.Response:
    """A correct 206 for the request's Range, streamed in chunks."""
    start, end = requested(request)
    return httpx.Response(
        206,
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
        content=chunks(data[start:end], chunk),
    )


def source(
    client: RegistryClient,
    *,
    urls: tuple[str, ...] = (),
    mirrors: tuple[RegistryClient, ...] = (),
    policy: ForeignURLPolicy = ALLOW_FOREIGN,
    size: int = len(DATA),
) -> BlobSource:
    media_type = mf.DOCKER_FOREIGN_LAYER if urls else mf.DOCKER_LAYER
    descriptor = mf.Descriptor(media_type, DIGEST, size, urls)
    return BlobSource(client, "repo", descriptor, policy=policy, mirrors=list(mirrors))


async def fetch(blob: BlobSource, start: int, end: int) -> bytes:
    got: list[bytes] = []

    async def sink(data: bytes) -> None:
        got.append(data)

    await blob.fetch(start, end, sink)
    return b"".join(got)


# --------------------------------------------------------------------------------------------
# ranges


async def test_fetch_delivers_exact_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(monkeypatch, ranged)
    blob = source(client)
    assert await fetch(blob, 0, len(DATA)) == DATA
    assert await fetch(blob, 123, 4567) == DATA[123:4567]
    assert await fetch(blob, len(DATA) - 1, len(DATA)) == DATA[-1:]
    assert [r.headers["range"] for r in server.requests] == [
        "bytes=0-9999",
        "bytes=123-4566",
        "bytes=9999-9999",
    ]
    assert all(r.headers["accept-encoding"] == "identity" for r in server.requests)
    assert all(r.url.path == BLOB_PATH for r in server.requests)


async def test_fetch_refuses_ranges_outside_the_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(monkeypatch, ranged)
    blob = source(client)
    for start, end in [(0, len(DATA) + 1), (5, 5), (6, 5), (-1, 3)]:
        with pytest.raises(ProtocolError):
            await fetch(blob, start, end)
    assert server.requests == []


@pytest.mark.parametrize(
    "content_range",
    [
        None,
        "bytes 0-99/10000",  # not where we asked
        "bytes 100-300/10000",  # past our end
        "bytes 100-199/9999",  # another blob's size
        "bytes 150-120/10000",
        "bytes */10000",
        "garbage",
    ],
)
async def test_206_with_wrong_content_range(
    monkeypatch: pytest.MonkeyPatch, content_range: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Range": content_range} if content_range else {}
        return httpx.Response(206, headers=headers, content=DATA[100:200])

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(ProtocolError):
        await fetch(source(client), 100, 200)
    assert len(server.requests) == 1  # not worth retrying


async def test_200_ignoring_range_gives_the_right_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(200, content=chunks(DATA, 777)))
    blob = source(client)
    assert await fetch(blob, 0, 10) == DATA[:10]
    assert await fetch(blob, 1500, 7001) == DATA[1500:7001]
    assert await fetch(blob, 9990, 10000) == DATA[9990:]


async def test_200_of_the_wrong_length_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(200, content=DATA[:-1]))
    with pytest.raises(ProtocolError):
        await fetch(source(client), 0, 10)


async def test_unexpected_success_status_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(204))
    with pytest.raises(ProtocolError):
        await fetch(source(client), 0, 10)


# --------------------------------------------------------------------------------------------
# resumption


@pytest.mark.parametrize(
    "failure",
    [None, httpx.RemoteProtocolError("peer closed"), httpx.ReadError("reset")],
    ids=["eof", "remote-protocol-error", "read-error"],
)
async def test_cut_mid_body_resumes_at_the_next_offset(
    monkeypatch: pytest.MonkeyPatch, failure: Exception | None
) -> None:
    cuts = [1234, 1]  # the first response stops after 1234 bytes, the second after 1

    def handler(request: httpx.Request) -> httpx.Response:
        start, end = requested(request)
        if cuts:
            body = cut_after(DATA[start:end], cuts.pop(0), failure)
            return httpx.Response(
                206, headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"}, content=body
            )
        return ranged(request)

    client, server = mock_client(monkeypatch, handler)
    assert await fetch(source(client), 500, 9000) == DATA[500:9000]
    assert [requested(r) for r in server.requests] == [
        (500, 9000),
        (500 + 1234, 9000),
        (500 + 1234 + 1, 9000),
    ]


async def test_resume_with_a_server_that_ignores_range(monkeypatch: pytest.MonkeyPatch) -> None:
    cut = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        if cut:
            cut.pop()
            return httpx.Response(200, content=cut_after(DATA, 3000))
        return httpx.Response(200, content=chunks(DATA, 999))

    client, server = mock_client(monkeypatch, handler)
    assert await fetch(source(client), 1000, 8000) == DATA[1000:8000]
    assert [requested(r) for r in server.requests] == [(1000, 8000), (3000, 8000)]


async def test_no_progress_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        start, end = requested(request)
        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"},
            content=cut_after(b"", 0),
        )

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(TransientError):
        await fetch(source(client), 0, 100)
    assert len(server.requests) == NO_WAIT.attempts


# --------------------------------------------------------------------------------------------
# foreign URLs


def registry_with_auth(registry_blob: object, foreign: object = None) -> object:
    """A token-auth registry whose blob endpoint is `registry_blob`; other hosts `foreign`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T0K3N"})
        if request.url.host == "registry.example":
            if request.headers.get("authorization") != "Bearer T0K3N":
                return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
            return registry_blob(request)  # type: ignore[operator, no-any-return]
        return foreign(request)  # type: ignore[operator, no-any-return]

    return handler


async def test_registry_404_falls_back_to_foreign_url_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def foreign(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/fwlink/"):
            return httpx.Response(302, headers={"Location": "https://cdn.example/layer"})
        return ranged(request)

    handler = registry_with_auth(lambda r: httpx.Response(404), foreign)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    assert await fetch(source(client, urls=(FOREIGN,)), 10, 5000) == DATA[10:5000]
    registry = server.to("registry.example")
    assert registry[-1].headers["authorization"] == "Bearer T0K3N"
    elsewhere = server.to("foreign.example") + server.to("cdn.example")
    assert len(elsewhere) == 2
    assert all("authorization" not in r.headers for r in elsewhere)
    assert all(r.headers["range"] == "bytes=10-4999" for r in elsewhere)


async def test_each_foreign_url_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def foreign(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/gone":
            return httpx.Response(404)
        return ranged(request)

    handler = registry_with_auth(lambda r: httpx.Response(404), foreign)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    urls = ("https://foreign.example/gone", "https://cdn.example/layer")
    assert await fetch(source(client, urls=urls), 0, 100) == DATA[:100]
    assert [r.url.path for r in server.requests if r.url.host != "registry.example"][-2:] == [
        "/gone",
        "/layer",
    ]


async def test_registry_404_without_urls_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = mock_client(monkeypatch, lambda r: httpx.Response(404))
    with pytest.raises(NotFoundError):
        await fetch(source(client), 0, 10)
    assert len(server.requests) == 1


async def test_foreign_urls_only_stand_in_for_a_missing_blob(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, server = mock_client(monkeypatch, lambda r: httpx.Response(403))
    with pytest.raises(AuthError):
        await fetch(source(client, urls=(FOREIGN,)), 0, 10)
    assert server.to("foreign.example") == []


async def test_foreign_401_starts_no_token_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    def foreign(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/token"'}
        )

    handler = registry_with_auth(lambda r: httpx.Response(404), foreign)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        await fetch(source(client, urls=(FOREIGN,)), 0, 10)
    assert len(server.to("auth.example")) == 1  # the registry's own token, nothing for foreign
    assert len(server.to("foreign.example")) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://foreign.example/x",  # not https
        "https://127.0.0.1/x",
        "https://10.0.0.8/x",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/x",
        "https://[::1]/x",
        "https://192.168.1.1/x",
    ],
)
async def test_foreign_url_policy_refuses_before_connecting(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    handler = registry_with_auth(lambda r: httpx.Response(404), ranged)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    with pytest.raises(ForbiddenURLError):
        await fetch(source(client, urls=(url,), policy=ForeignURLPolicy()), 0, 10)
    assert {r.url.host for r in server.requests} <= {"registry.example", "auth.example"}


async def test_foreign_redirect_checked_on_every_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    def foreign(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://169.254.169.254/secret"})

    handler = registry_with_auth(lambda r: httpx.Response(404), foreign)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    policy = ForeignURLPolicy([r"https://foreign\.example/"])
    with pytest.raises(ForbiddenURLError):
        await fetch(source(client, urls=(FOREIGN,), policy=policy), 0, 10)
    assert server.to("169.254.169.254") == []


async def test_policy_public_address_and_allow_list() -> None:
    await ForeignURLPolicy().check(httpx.URL("https://93.184.216.34/layer"))
    await ForeignURLPolicy([r"http://127\.0\.0\.1:\d+/"]).check(
        httpx.URL("http://127.0.0.1:8080/x")
    )
    # Patterns match from the start of the URL: a later occurrence does not admit it.
    with pytest.raises(ForbiddenURLError):
        await ForeignURLPolicy([r"http://127\.0\.0\.1"]).check(
            httpx.URL("http://10.0.0.1/?http://127.0.0.1")
        )


# --------------------------------------------------------------------------------------------
# mirrors


@pytest.mark.parametrize("status", [404, 429, 500, 401])
async def test_mirror_failure_falls_through(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    mirror, mirror_server = mock_client(
        monkeypatch, lambda r: httpx.Response(status), address="https://mirror.example"
    )
    client, server = mock_client(monkeypatch, ranged)
    blob = source(client, mirrors=(mirror,))
    assert await fetch(blob, 0, 100) == DATA[:100]
    assert len(mirror_server.requests) == 1
    assert mirror_server.requests[0].url.path == BLOB_PATH
    assert len(server.requests) == 1


async def test_mirror_connection_failure_falls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    mirror, _ = mock_client(monkeypatch, down, address="https://mirror.example")
    client, _ = mock_client(monkeypatch, ranged)
    assert await fetch(source(client, mirrors=(mirror,)), 5, 50) == DATA[5:50]


async def test_mirror_that_has_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    mirror, mirror_server = mock_client(monkeypatch, ranged, address="https://mirror.example")
    client, server = mock_client(monkeypatch, ranged)
    assert await fetch(source(client, mirrors=(mirror,)), 0, 100) == DATA[:100]
    assert len(mirror_server.requests) == 1
    assert server.requests == []


# --------------------------------------------------------------------------------------------
# remembered CDN redirects


@pytest.mark.parametrize("expired", [403, 400, 410, 500])
async def test_redirect_remembered_and_re_resolved_after_it_fails(
    monkeypatch: pytest.MonkeyPatch, expired: int
) -> None:
    signature = {"current": 1}

    def registry_blob(request: httpx.Request) -> httpx.Response:
        location = f"https://cdn.example/blob?sig={signature['current']}"
        return httpx.Response(307, headers={"Location": location})

    def cdn(request: httpx.Request) -> httpx.Response:
        if request.url.params["sig"] != str(signature["current"]):
            return httpx.Response(expired)  # the signed URL expired (each CDN says it its way)
        return ranged(request)

    handler = registry_with_auth(registry_blob, cdn)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    blob = source(client)

    assert await fetch(blob, 0, 1000) == DATA[:1000]
    assert blob.redirect_cache == httpx.URL("https://cdn.example/blob?sig=1")
    seen = len(server.requests)

    # Remembered: straight to the CDN, no registry round trip.
    assert await fetch(blob, 1000, 2000) == DATA[1000:2000]
    assert [r.url.host for r in server.requests[seen:]] == ["cdn.example"]
    seen = len(server.requests)

    # Expired: the CDN refuses, the registry is asked again, the new URL remembered.
    signature["current"] = 2
    assert await fetch(blob, 2000, 3000) == DATA[2000:3000]
    hosts = [(r.url.host, r.url.params.get("sig")) for r in server.requests[seen:]]
    assert hosts == [("cdn.example", "1"), ("registry.example", None), ("cdn.example", "2")]
    assert blob.redirect_cache == httpx.URL("https://cdn.example/blob?sig=2")
    assert all("authorization" not in r.headers for r in server.to("cdn.example"))


async def test_no_redirect_nothing_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = mock_client(monkeypatch, ranged)
    blob = source(client)
    await fetch(blob, 0, 10)
    assert blob.redirect_cache is None


async def test_mirror_redirect_refused_by_policy_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    mirror, _ = mock_client(
        monkeypatch,
        lambda r: httpx.Response(302, headers={"Location": "file:///etc/passwd"}),
        address="https://mirror.example",
    )
    client, server = mock_client(monkeypatch, ranged)
    with pytest.raises(ForbiddenURLError):
        await fetch(source(client, mirrors=(mirror,)), 0, 100)
    assert server.requests == []  # a refusal by policy does not hand over to the registry


# --------------------------------------------------------------------------------------------
# what the errors carry


async def test_blob_errors_carry_digest_host_status_and_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]}
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(404, json=body))
    with pytest.raises(NotFoundError) as info:
        await fetch(source(client), 0, 100)
    assert info.value.digest == DIGEST
    assert info.value.host == "registry.example"
    assert info.value.status == 404
    assert info.value.codes == ("BLOB_UNKNOWN",)


async def test_bad_content_range_error_carries_digest_and_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _ = mock_client(monkeypatch, lambda r: httpx.Response(206, content=DATA[:100]))
    with pytest.raises(ProtocolError) as info:
        await fetch(source(client), 0, 100)
    assert (info.value.digest, info.value.status, info.value.host) == (
        DIGEST,
        206,
        "registry.example",
    )


async def test_refused_token_for_a_blob_is_auth_error_with_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    denied = {"errors": [{"code": "DENIED", "message": "requested access is denied"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "useless"})
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE}, json=denied)

    client, _ = mock_client(monkeypatch, handler)
    with pytest.raises(AuthError) as info:
        await fetch(source(client), 0, 100)
    assert info.value.status == 401
    assert info.value.codes == ("DENIED",)
    assert info.value.host == "registry.example"


# --------------------------------------------------------------------------------------------
# a dead foreign URL, asked once


async def test_a_dead_first_foreign_url_is_asked_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="regfs.registry.blobs")

    def foreign(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/gone":
            return httpx.Response(404)
        return ranged(request)

    handler = registry_with_auth(lambda r: httpx.Response(404), foreign)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    blob = source(client, urls=("https://foreign.example/gone", "https://cdn.example/layer"))
    for start in range(0, len(DATA), 2500):  # four ranges, as four blocks would be
        assert await fetch(blob, start, start + 2500) == DATA[start : start + 2500]
    paths = [r.url.path for r in server.requests if r.url.host != "auth.example"]
    assert paths.count("/gone") == 1
    (dead,) = [r.getMessage() for r in caplog.records if "not asking" in r.getMessage()]
    assert dead.endswith("; not asking foreign URL foreign.example/gone again")
    assert dead.count(DIGEST[:19]) == 1
    assert paths.count("/layer") == 4
    assert paths.count(BLOB_PATH) <= 2  # the registry's 404 (and its 401) once: it is foreign


class CountingPolicy(ForeignURLPolicy):
    def __init__(self, allow: list[str]) -> None:
        super().__init__(allow)
        self.checked: list[str] = []

    async def check(self, url: httpx.URL) -> None:
        self.checked.append(str(url))
        await super().check(url)


async def test_a_foreign_url_refused_by_policy_hands_over_and_is_not_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = registry_with_auth(lambda r: httpx.Response(404), ranged)
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    policy = CountingPolicy([r"https://cdn\.example/"])
    refused = "http://plain.example/layer"
    blob = source(client, urls=(refused, "https://cdn.example/layer"), policy=policy)
    assert await fetch(blob, 0, 100) == DATA[:100]
    assert await fetch(blob, 100, 200) == DATA[100:200]
    assert policy.checked.count(refused) == 1
    assert server.to("plain.example") == []
    assert isinstance(blob.dead_urls[refused], ForbiddenURLError)


async def test_every_foreign_url_dead_is_the_last_answer_without_asking_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = registry_with_auth(lambda r: httpx.Response(404), lambda r: httpx.Response(404))
    client, server = mock_client(monkeypatch, handler)  # type: ignore[arg-type]
    urls = ("https://foreign.example/a", "https://cdn.example/b")
    blob = source(client, urls=urls)
    for _ in range(3):
        with pytest.raises(NotFoundError):
            await fetch(blob, 0, 100)
    foreign_asked = [r for r in server.requests if r.url.host in ("foreign.example", "cdn.example")]
    assert len(foreign_asked) == 2


# --------------------------------------------------------------------------------------------
# a sustained rate limit, untrusted certificates: no retries


async def test_a_sustained_429_on_a_blob_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.0, max_delay=30.0)
    client, server = mock_client(
        monkeypatch, lambda r: httpx.Response(429, headers={"Retry-After": "3600"}), retry=policy
    )
    with pytest.raises(RateLimitedError) as info:
        await fetch(source(client), 0, 100)
    assert len(server.requests) == 1
    assert errno_for(info.value) == errno.EAGAIN
    assert "rate limit reached, it resets in 1h00m" in str(info.value)
    assert client.stats.retries == 0


@pytest.mark.parametrize("foreign", [False, True], ids=["CDN", "foreign host"])
async def test_an_untrusted_cdn_or_foreign_host_is_eio_and_not_retried(
    monkeypatch: pytest.MonkeyPatch, foreign: bool
) -> None:
    def registry_blob(request: httpx.Request) -> httpx.Response:
        if foreign:
            return httpx.Response(404)
        return httpx.Response(307, headers={"Location": "https://cdn.example/signed?sig=1"})

    def elsewhere(request: httpx.Request) -> httpx.Response:
        raise untrusted_connect()

    client, server = mock_client(monkeypatch, registry_with_auth(registry_blob, elsewhere))  # type: ignore[arg-type]
    blob = source(client, urls=("https://cdn.example/layer",) if foreign else ())
    with pytest.raises(UntrustedCertificateError) as info:
        await fetch(blob, 0, 100)
    assert errno_for(info.value) == errno.EIO
    assert len(server.to("cdn.example")) == 1
    assert info.value.reason == SELF_SIGNED
    hint = "--foreign-ca-cert" if foreign else "--ca-cert"
    assert hint in str(info.value) and "cdn.example" in str(info.value)


async def test_resume_logs_name_the_blob_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="regfs.registry.blobs")
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        start, end = requested(request)
        if calls == 1:
            body = cut_after(DATA[start:end], 1000, httpx.ReadError("connection reset"))
            headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"}
            return httpx.Response(206, headers=headers, content=body)
        return ranged(request)

    client, _ = mock_client(monkeypatch, handler)
    assert await fetch(source(client), 0, 5000) == DATA[:5000]
    lines = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert lines and all(line.count(DIGEST[:19]) == 1 for line in lines), lines
