"""Issue 5's protocol corners that a real server cannot produce, over httpx.MockTransport.

The real-server side of the same rows is tests/integration/test_faults.py.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache, ReadStream
from regfs.errors import AuthError, ForbiddenURLError, IntegrityError, NotFoundError
from regfs.oci import manifest as mf
from regfs.registry.blobs import BlobSource, ForeignURLPolicy
from regfs.store import RegistryStore
from regfs.vfs.fuse import errno_for
from regfs.vfs.nodes import StaticDir
from regfs.vfs.table import InodeTable
from regfs.views.registry import RootDir
from tests.fixtures.images import random_bytes
from tests.unit.mock_http import chunks, mock_client

DATA = random_bytes(64_000, seed=11)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
CHALLENGE = 'Bearer realm="https://auth.example/token",service="registry.example"'


def blob_source(
    client: object, urls: tuple[str, ...] = (), policy: ForeignURLPolicy | None = None
) -> BlobSource:
    media_type = mf.DOCKER_FOREIGN_LAYER if urls else mf.DOCKER_LAYER
    descriptor = mf.Descriptor(media_type, DIGEST, len(DATA), urls)
    return BlobSource(client, "repo", descriptor, policy=policy or ForeignURLPolicy())  # type: ignore[arg-type]


async def fetch(source: BlobSource, start: int, end: int) -> bytes:
    got: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        got.append(chunk)

    await source.fetch(start, end, sink)
    return b"".join(got)


def ranged(request: httpx.Request) -> httpx.Response:
    first, last = request.headers["range"].removeprefix("bytes=").split("-")
    start, end = int(first), int(last) + 1
    return httpx.Response(
        206,
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"},
        content=chunks(DATA[start:end], 1000),  # streamed, as the blob reader expects
    )


# -- foreign URLs and their redirects --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://127.1/x",  # inet_aton shorthand for 127.0.0.1
        "https://2130706433/x",  # 127.0.0.1 as one number
        "https://0.0.0.0/x",
        "https://0/x",
        "https://10.1.2.3/x",
        "https://172.16.0.1/x",
        "https://192.168.0.1/x",
        "https://100.64.0.1/x",  # carrier-grade NAT
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x",
        "https://[::]/x",
        "https://[fe80::1]/x",
        "https://[fc00::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:169.254.169.254]/x",
        "https://localhost/x",  # a DNS name resolving to loopback
        "http://93.184.216.34/x",  # public, but not https
    ],
)
async def test_policy_refuses_non_public_foreign_urls(url: str) -> None:
    with pytest.raises(ForbiddenURLError):
        await ForeignURLPolicy().check(httpx.URL(url))


async def test_allow_list_admits_what_it_names_only() -> None:
    policy = ForeignURLPolicy([r"http://127\.0\.0\.1:5000/"])
    await policy.check(httpx.URL("http://127.0.0.1:5000/blob"))
    with pytest.raises(ForbiddenURLError):
        await policy.check(httpx.URL("http://127.0.0.1:5001/blob"))
    await ForeignURLPolicy().check(httpx.URL("https://93.184.216.34/layer"))


@pytest.mark.parametrize(
    "target",
    [
        "https://localhost/secret",
        "http://169.254.169.254/latest/meta-data/",
        "https://[::1]:8443/x",
        "https://0.0.0.0/x",
        "file:///etc/passwd",
    ],
)
async def test_foreign_redirect_to_a_forbidden_place_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            return httpx.Response(404)
        return httpx.Response(302, headers={"Location": target})

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(ForbiddenURLError):
        await fetch(blob_source(client, ("https://93.184.216.34/layer",)), 0, 10)
    assert {r.url.host for r in server.requests} == {"registry.example", "93.184.216.34"}
    assert errno_for(ForbiddenURLError("x")) == errno.EACCES


# -- credentials stay at the registry --------------------------------------------------------


async def test_no_credentials_or_cookies_at_cross_host_targets_or_foreign_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "auth.example":
            return httpx.Response(200, json={"token": "T0K3N"}, headers={"Set-Cookie": "a=1"})
        if host == "registry.example":
            if request.headers.get("authorization") != "Bearer T0K3N":
                return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
            return httpx.Response(
                307,
                headers={"Location": "https://cdn.example/blob?sig=1", "Set-Cookie": "s=2"},
            )
        if host == "93.184.216.34":
            # A foreign host asking for a token: no token flow, no credentials.
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://evil.example/token"'}
            )
        return ranged(request)

    from regfs.registry.credentials import Credentials

    client, server = mock_client(monkeypatch, handler, credentials=Credentials("alice", "pw"))
    assert await fetch(blob_source(client), 0, 1000) == DATA[:1000]
    for request in server.requests:
        if request.url.host != "registry.example":
            assert "cookie" not in request.headers
        if request.url.host not in ("registry.example", "auth.example"):
            assert "authorization" not in request.headers
    assert server.to("cdn.example")

    # The foreign URL: the registry does not have the blob, the foreign host answers 401.
    def without_blob(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example" and "/blobs/" in request.url.path:
            return httpx.Response(404)
        return handler(request)

    server.handler = without_blob
    policy = ForeignURLPolicy([r"https://93\.184\.216\.34/"])
    with pytest.raises(AuthError):
        await fetch(blob_source(client, ("https://93.184.216.34/layer",), policy), 0, 10)
    assert server.to("evil.example") == []
    assert all("authorization" not in r.headers for r in server.to("93.184.216.34"))


# -- token expiring mid-read, 50 parallel readers ----------------------------------------------


async def test_token_expiring_mid_read_with_50_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    issued: list[str] = []
    in_flight = 0
    most_in_flight = 0
    served_with = {"Bearer t1": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most_in_flight
        if request.url.host == "auth.example":
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            await trio.sleep(0.01)  # widens the window in which a second request could start
            in_flight -= 1
            issued.append(f"t{len(issued) + 1}")
            return httpx.Response(200, json={"token": issued[-1]})
        sent = request.headers.get("authorization")
        valid = f"Bearer {issued[-1]}" if issued else None
        if sent == "Bearer t1":
            served_with["Bearer t1"] += 1
            if served_with["Bearer t1"] > 60:  # t1 expires while the readers are busy
                # 40 s after it was issued: past the window in which a refusal of a fresh
                # token is taken as final (a scope problem), short of its 60 s lifetime.
                now[0] = 40.0
                valid = "Bearer t2"
        if sent is None or sent != valid:
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return ranged(request)

    now = [0.0]
    client, _server = mock_client(monkeypatch, handler, clock=lambda: now[0])  # type: ignore[arg-type]
    results: dict[int, bytes] = {}
    step = len(DATA) // 50

    async def reader(i: int) -> None:
        source = blob_source(client)
        parts = []
        for start in range(i * step, (i + 1) * step, 320):  # several requests per reader
            parts.append(await fetch(source, start, min(start + 320, (i + 1) * step)))
        results[i] = b"".join(parts)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(reader, i)
    assert b"".join(results[i] for i in range(50)) == DATA[: 50 * step]
    assert issued == ["t1", "t2"]  # one request per scope at a time, one renewal
    assert most_in_flight == 1


async def test_repeated_401_is_eacces(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "refused-anyway"})
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})

    client, server = mock_client(monkeypatch, handler)
    with pytest.raises(AuthError) as info:
        await fetch(blob_source(client), 0, 10)
    assert errno_for(info.value) == errno.EACCES
    assert len(server.to("registry.example")) <= 3  # no loop of token requests


# -- invalid names -----------------------------------------------------------------------------


async def test_invalid_names_are_enoent_without_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/_catalog":
            return httpx.Response(200, json={"repositories": ["library/hello"]})
        if request.url.path == "/v2/library/hello/tags/list":
            return httpx.Response(200, json={"name": "library/hello", "tags": ["latest"]})
        return httpx.Response(404)

    client, server = mock_client(monkeypatch, handler)
    async with BlockCache(disk=None).running() as cache:
        store = RegistryStore(client, policy=ForeignURLPolicy())
        tree = InodeTable(RootDir(store, cache, control=StaticDir(".regfs", [])))
        library = await tree.lookup(1, "library")
        hello = await tree.lookup(library.inode, "hello")
        bad = [
            "..",
            "a\x00b",
            "a%2Fb",
            "Library",
            "x" * 300,
            "sha256:xyz",
            "sha256:" + "A" * 64,
            "sha256:" + "a" * 63,
            "md5:" + "a" * 32,
            "t" * 129,
        ]
        before = len(server.requests)
        for parent in (1, library.inode, hello.inode):
            for name in bad:
                with pytest.raises(NotFoundError) as info:
                    await tree.lookup(parent, name)
                assert errno_for(info.value) == errno.ENOENT
    for request in server.requests[before:]:
        # Inside a repository "Library" is a valid tag (tags may hold upper case): asking for
        # its manifest (404, so ENOENT) is right. Nothing else may reach a URL.
        if request.url.path == "/v2/library/hello/manifests/Library":
            continue
        assert not any(name in request.url.path for name in bad if len(name) > 2), request.url


# -- a handle that lived through a failed verification ------------------------------------------


class CorruptSource:
    """Serves DATA with one byte flipped in every response."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, start: int, end: int, sink: Callable[[bytes], Awaitable[None]]) -> None:
        self.fetches += 1
        data = bytearray(DATA[start:end])
        data[0] ^= 0xFF
        await sink(bytes(data))


async def test_kernel_order_reads_never_complete_a_wrong_whole_file() -> None:
    block = 8000
    blocks = len(DATA) // block
    assert blocks * block == len(DATA)
    blob = BlobRef(DIGEST, len(DATA), "r", CorruptSource())
    async with BlockCache(disk=None, block_size=block).running() as cache:
        stream = ReadStream()
        # The kernel's readahead may fetch the end first, then the rest.
        order = [blocks - 1, *range(blocks - 1)]
        failed_at = None
        for position, index in enumerate(order):
            try:
                await cache.read(blob, index * block, block, stream)
            except IntegrityError:
                failed_at = position
                break
        # The read that completed the blob (itself or by readahead) was EIO.
        assert failed_at is not None
        # Whatever the kernel re-reads on that handle now, it gets EIO, not purged bytes.
        for index in range(blocks):
            with pytest.raises(IntegrityError):
                await cache.read(blob, index * block, block, stream)
        assert not cache.is_verified(DIGEST)
        # A new open starts afresh (and fails again against a server that stays wrong).
        fresh = ReadStream()
        await cache.read(blob, 0, block, fresh)
