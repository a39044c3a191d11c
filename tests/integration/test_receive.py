"""Bodies received a whole block per worker-thread call (httpclient.RECEIVE, asked for by a
BlockSink), against a real registry and the fault proxy: pieces end at block boundaries, a
cut resumes at the exact next offset, a server that ignores Range is read past, a chunked
body goes through httpx's iteration, a drip ends at the floor, a cancelled receive returns
at once and leaves nothing behind that a later read could see.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest
import trio

from regfs.cache.blob import BlockSink
from regfs.errors import TransientError
from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry
from regfs.registry import httpclient
from regfs.registry.blobs import BlobSource, ForeignURLPolicy
from regfs.registry.client import RegistryClient, RetryPolicy
from regfs.registry.httpclient import RangedInThreads, ThreadedTransport
from tests.fixtures.faultproxy import Fault, FaultProxy
from tests.fixtures.images import Layer
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import Seeded

pytestmark = pytest.mark.registry

BLOCK = 256 * 1024
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=1.0)


@pytest.fixture(autouse=True)
def every_range_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the receive path: small ranges take it too (which requests
    take it is tests/unit/test_http.py's)."""
    monkeypatch.setattr(RangedInThreads, "BULK", 1)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as server:
        yield server


def big_layer(seeded: Seeded) -> Layer:
    layer = max(seeded.hello.layers, key=lambda layer: layer.size)
    assert layer.size > 4 * BLOCK and layer.size % BLOCK  # several blocks, a short last one
    return layer


def client_for(url: str, *, timeout: float = 10.0) -> RegistryClient:
    return RegistryClient(parse_registry(url), timeout=timeout, retry=FAST_RETRY)


def source_for(client: RegistryClient, layer: Layer) -> BlobSource:
    descriptor = mf.Descriptor(layer.media_type, layer.digest, layer.size, layer.urls)
    return BlobSource(client, "library/hello", descriptor, policy=ForeignURLPolicy())


async def pieces(source: BlobSource, start: int, end: int) -> list[bytes]:
    parts: list[bytes] = []

    async def deliver(data: bytes) -> None:
        parts.append(data)

    await source.fetch(start, end, BlockSink(deliver, BLOCK))
    return parts


def ends(start: int, parts: list[bytes]) -> list[int]:
    """Where each piece ended, as offsets in the blob."""
    out = []
    for part in parts:
        start += len(part)
        out.append(start)
    return out


def pool_connections(client: RegistryClient) -> list[object]:
    log = client.http._transport  # RequestLog around RangedInThreads
    split = getattr(log, "inner", None)
    assert isinstance(split, RangedInThreads) and isinstance(split.ranged, ThreadedTransport)
    return list(split.ranged.inner._pool.connections)


async def test_whole_blocks_one_piece_each_on_one_reused_connection(
    registry: RegistryServer, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = big_layer(seeded)
    raw_reads = []
    receive_raw = httpclient._Body._receive_raw

    def counted(body: httpclient._Body, view: memoryview) -> None:
        raw_reads.append(len(view))
        receive_raw(body, view)

    monkeypatch.setattr(httpclient._Body, "_receive_raw", counted)
    client = client_for(registry.url)
    source = source_for(client, layer)
    try:
        parts = await pieces(source, 0, layer.size)
        again = await pieces(source, BLOCK, 3 * BLOCK)
        connections = pool_connections(client)
    finally:
        await client.aclose()
    assert b"".join(parts) == layer.data
    assert all(len(p) == BLOCK for p in parts[:-1]) and len(parts[-1]) == layer.size % BLOCK
    assert again == [layer.data[BLOCK : 2 * BLOCK], layer.data[2 * BLOCK : 3 * BLOCK]]
    # Every body was read to its end: the one connection went back to the pool each time.
    assert len(connections) == 1
    # From the socket into the buffer, not through h11's chunks: the path that was measured.
    assert raw_reads == [len(p) for p in parts + again]


@pytest.mark.parametrize("cut", [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK - 7])
@pytest.mark.parametrize("reset", [False, True])
async def test_cut_mid_block_resumes_at_the_exact_offset(
    proxy: FaultProxy, seeded: Seeded, cut: int, reset: bool
) -> None:
    layer = big_layer(seeded)
    proxy.fault(f"/blobs/{layer.digest}", cut_after=cut, reset=reset)
    client = client_for(proxy.url)
    try:
        parts = await pieces(source_for(client, layer), 0, layer.size)
    finally:
        await client.aclose()
    assert hashlib.sha256(b"".join(parts)).hexdigest() == layer.digest.split(":")[1]
    ranges = proxy.ranges(f"/blobs/{layer.digest}")
    assert len(ranges) == 2
    resumed = int(str(ranges[1]).removeprefix("bytes=").split("-")[0])
    if not reset:
        assert resumed == cut  # the partial piece was delivered, the rest asked for
    else:
        assert 0 <= resumed <= cut  # an RST loses what the kernel had not handed over
    # Pieces end at block boundaries, except the one the cut ended.
    assert {e for e in ends(0, parts) if e % BLOCK and e != layer.size} <= {resumed}


async def test_the_debug_line_counts_what_was_received_into_blocks(
    registry: RegistryServer, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    layer = big_layer(seeded)
    client = client_for(registry.url)
    try:
        with caplog.at_level(logging.DEBUG, logger="regfs.registry.httpclient"):
            parts = await pieces(source_for(client, layer), 0, 2 * BLOCK)
    finally:
        await client.aclose()
    assert b"".join(parts) == layer.data[: 2 * BLOCK]
    lines = [r.getMessage() for r in caplog.records if f"/blobs/{layer.digest}" in r.getMessage()]
    assert len(lines) == 1 and f"-> 206, {2 * BLOCK} bytes in" in lines[0], lines


async def test_server_ignoring_range_is_read_past_in_pieces(
    proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded)
    proxy.fault(f"/blobs/{layer.digest}", ignore_range=True, times=None)
    client = client_for(proxy.url)
    start, end = BLOCK + 7, 3 * BLOCK - 5
    try:
        parts = await pieces(source_for(client, layer), start, end)
    finally:
        await client.aclose()
    assert b"".join(parts) == layer.data[start:end]
    assert ends(start, parts) == [2 * BLOCK, end]


async def test_chunked_206_goes_through_httpx_iteration(proxy: FaultProxy, seeded: Seeded) -> None:
    layer = big_layer(seeded)
    start, end = BLOCK, 3 * BLOCK + 11
    body = layer.data[start:end]
    proxy.add(
        Fault(
            f"/blobs/{layer.digest}",
            status=206,
            headers={"Content-Range": f"bytes {start}-{end - 1}/{layer.size}"},
            body_chunks=lambda: (body[i : i + 10000] for i in range(0, len(body), 10000)),
        )
    )
    client = client_for(proxy.url)
    try:
        parts = await pieces(source_for(client, layer), start, end)
    finally:
        await client.aclose()
    assert b"".join(parts) == body
    assert ends(start, parts) == [2 * BLOCK, 3 * BLOCK, end]


async def test_a_drip_ends_at_the_floor(proxy: FaultProxy, seeded: Seeded) -> None:
    layer = big_layer(seeded)
    proxy.fault(f"/blobs/{layer.digest}", drip=0.5, times=None)
    client = client_for(proxy.url, timeout=2)
    client.retry = RetryPolicy(attempts=2, base_delay=0.01)
    source = source_for(client, layer)
    source.allowance = 3.0
    source.floor = 1 << 30
    try:
        with trio.fail_after(60), pytest.raises(TransientError, match=r"no progress|slower"):
            await pieces(source, 0, layer.size)
    finally:
        await client.aclose()


async def test_a_cancelled_receive_returns_at_once_and_leaves_nothing_behind(
    proxy: FaultProxy, seeded: Seeded
) -> None:
    """Cancelled mid-block (a readahead stopped): the call returns although the worker was
    blocked in recv (its socket is shut down), nothing of the unfinished block is delivered,
    and the next fetch (reusing the receive buffer the worker wrote into) is exact."""
    layer = big_layer(seeded)
    # 1 ms between bytes: the first block takes minutes; some bytes are in the buffer.
    proxy.fault(f"/blobs/{layer.digest}", drip=0.001)
    client = client_for(proxy.url, timeout=60)
    source = source_for(client, layer)
    parts: list[bytes] = []

    async def deliver(data: bytes) -> None:
        parts.append(data)

    try:
        with trio.fail_after(10):
            with trio.move_on_after(1.0) as scope:
                await source.fetch(0, layer.size, BlockSink(deliver, BLOCK))
            assert scope.cancelled_caught
        assert parts == []
        assert proxy.ranges(f"/blobs/{layer.digest}") == [f"bytes=0-{layer.size - 1}"]
        again = await pieces(source, 0, layer.size)
    finally:
        await client.aclose()
    assert b"".join(again) == layer.data
