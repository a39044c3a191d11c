"""Closing a file stops its readahead: the block cache over a source that holds bytes past an
offset (as a slow link does when the reader closes), then the handles that tell the cache
(a blob file, image.tar) and the inode table that tells them. The same through a real mount:
tests/integration/test_readahead_stop.py."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache, ReadStream
from regfs.oci import layout as oci
from regfs.oci import manifest as mf
from regfs.vfs.nodes import File, FileHandle, StaticDir
from regfs.vfs.table import ROOT_INODE, InodeTable
from regfs.views.archive import SegmentedFile
from regfs.views.image import BlobFile
from tests.fixtures.images import random_bytes

BLOCK = 16
DATA = random_bytes(100, seed=3)  # 7 blocks: six of 16 bytes and one of 4
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()

Sink = Callable[[bytes], Awaitable[None]]


@dataclass
class Call:
    start: int
    end: int
    delivered: int = 0
    outcome: str = "running"  # then "complete" or "cancelled"


class HeldSource:
    """Delivers bytes below `hold_from` at once; the rest once `opened` is set."""

    def __init__(self, hold_from: int) -> None:
        self.hold_from = hold_from
        self.opened = trio.Event()
        self.calls: list[Call] = []

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        call = Call(start, end)
        self.calls.append(call)
        try:
            for at in range(start, end, 4):
                if at >= self.hold_from:
                    await self.opened.wait()
                chunk = DATA[at : min(end, at + 4)]
                await sink(chunk)
                call.delivered += len(chunk)
            call.outcome = "complete"
        except trio.Cancelled:
            call.outcome = "cancelled"
            raise

    def running(self) -> list[Call]:
        return [c for c in self.calls if c.outcome == "running"]


def make_cache() -> BlockCache:
    # A window of 4 blocks, asked for 2 blocks per request.
    return BlockCache(disk=None, block_size=BLOCK, readahead_bytes=4 * BLOCK, request_bytes=32)


def blob(source: HeldSource) -> BlobRef:
    return BlobRef(DIGEST, len(DATA), "reg-a", source)


async def test_closing_the_stream_stops_the_readahead_it_started() -> None:
    source = HeldSource(hold_from=BLOCK)  # block 0 comes; the readahead after it waits
    cache, ref, stream = make_cache(), blob(source), ReadStream()
    async with cache.running():
        assert await cache.read(ref, 0, BLOCK, stream) == DATA[:BLOCK]
        await trio.testing.wait_all_tasks_blocked()
        assert [(c.start, c.end) for c in source.running()] == [(16, 48)]  # blocks 1-2
        cache.close_stream(stream)
        await trio.testing.wait_all_tasks_blocked()
        outcomes = {(c.start, c.end): c.outcome for c in source.calls}
        assert outcomes == {(0, 16): "complete", (16, 48): "cancelled"}
        assert cache.in_flight() == 0 and cache.stats.readahead_stopped == 1
        # Nothing was kept of it; a reader who wants it later gets it, fetched afresh.
        assert (DIGEST, 1, "reg-a") not in cache.memory
        source.opened.set()
        assert await cache.read(ref, 16, 32) == DATA[16:48]
    assert source.calls[-1].outcome == "complete"


async def test_blocks_that_arrived_before_the_close_stay() -> None:
    source = HeldSource(hold_from=2 * BLOCK)  # block 1 of the readahead comes, block 2 waits
    cache, ref, stream = make_cache(), blob(source), ReadStream()
    async with cache.running():
        await cache.read(ref, 0, BLOCK, stream)
        await trio.testing.wait_all_tasks_blocked()
        cache.close_stream(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert (DIGEST, 1, "reg-a") in cache.memory and (DIGEST, 2, "reg-a") not in cache.memory
        calls = len(source.calls)
        assert await cache.read(ref, BLOCK, BLOCK) == DATA[BLOCK : 2 * BLOCK]
        assert len(source.calls) == calls  # block 1 from memory, not fetched again


async def test_readahead_another_open_reader_shares_goes_on_until_it_closes_too() -> None:
    source = HeldSource(hold_from=BLOCK)
    cache, ref = make_cache(), blob(source)
    first, second = ReadStream(), ReadStream()
    async with cache.running():
        await cache.read(ref, 0, BLOCK, first)
        await cache.read(ref, 0, BLOCK, second)  # its window holds the same blocks
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.running()) == 1  # one request for both
        cache.close_stream(first)
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.running()) == 1 and cache.stats.readahead_stopped == 0
        cache.close_stream(second)
        await trio.testing.wait_all_tasks_blocked()
        assert source.running() == [] and cache.stats.readahead_stopped == 1


async def test_readahead_a_reader_waits_on_goes_on_after_its_starter_closed() -> None:
    source = HeldSource(hold_from=BLOCK)
    cache, ref, stream = make_cache(), blob(source), ReadStream()
    got: list[bytes] = []

    async def random_reader() -> None:  # no stream: it only wants block 2, now
        got.append(await cache.read(ref, 2 * BLOCK, 5))

    async with cache.running(), trio.open_nursery() as nursery:
        await cache.read(ref, 0, BLOCK, stream)
        nursery.start_soon(random_reader)
        await trio.testing.wait_all_tasks_blocked()
        cache.close_stream(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.running()) == 1 and cache.stats.readahead_stopped == 0
        source.opened.set()
    assert got == [DATA[32:37]]
    assert [c.outcome for c in source.calls] == ["complete", "complete"]
    assert len(source.calls) == 2  # the waiting reader was served by that request


async def test_a_closed_stream_takes_no_new_readahead() -> None:
    source = HeldSource(hold_from=BLOCK)
    cache, ref, stream = make_cache(), blob(source), ReadStream()
    async with cache.running():
        await cache.read(ref, 0, BLOCK, stream)
        cache.close_stream(stream)
        other = ReadStream()
        await cache.read(ref, 0, BLOCK, other)  # starts the readahead again, for itself
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.running()) == 1
        assert stream.owned.runs == set() and len(other.owned.runs) == 1
        cache.close_stream(other)
        await trio.testing.wait_all_tasks_blocked()
        assert source.running() == []


# -- the handles that tell the cache, and the table that tells them --------------------------


async def open_read_release(table: InodeTable, name: str, size: int) -> bytes:
    node = await table.lookup(ROOT_INODE, name)
    fh, _ = await table.open(node.inode)
    data = await table.read(fh, 0, size)
    table.release(fh)
    return data


@pytest.mark.parametrize("view", ["blob file", "image.tar"])
async def test_releasing_a_file_stops_the_readahead_of_its_blobs(view: str) -> None:
    source = HeldSource(hold_from=BLOCK)
    cache, ref = make_cache(), blob(source)
    node: File
    if view == "blob file":
        node = BlobFile("layer.tar", cache, ref, 0.0)
    else:
        header = b"h" * 7  # some bytes of the archive's own, then the blob
        descriptor = mf.Descriptor("application/octet-stream", DIGEST, len(DATA))
        segments = [oci.Segment(0, 7, data=header), oci.Segment(7, len(DATA), blob=descriptor)]
        node = SegmentedFile("image.tar", segments, [ref], cache, 0.0)
    table = InodeTable(StaticDir("", [node]))
    async with cache.running():
        data = await open_read_release(
            table, node.name, 7 + BLOCK if view != "blob file" else BLOCK
        )
        assert bytes(data).endswith(DATA[:BLOCK])
        await trio.testing.wait_all_tasks_blocked()
        assert source.running() == [] and cache.stats.readahead_stopped >= 1
        assert table.files == {}


class FailingRelease:
    async def read(self, offset: int, size: int) -> bytes:
        return b"x"

    def release(self) -> None:
        raise RuntimeError("broken")


class Plain(File):
    async def open(self) -> FileHandle:
        return FailingRelease()


async def test_a_handle_whose_release_fails_is_released_all_the_same() -> None:
    table = InodeTable(StaticDir("", [Plain("f", 1)]))
    assert await open_read_release(table, "f", 1) == b"x"  # no exception reaches the kernel
    assert table.files == {}
