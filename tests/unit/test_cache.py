"""regfs.cache.blocks: the block cache over a fake Source, with and without a disk tier
(the disk tier on its own: test_disk.py)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache, ReadStream
from regfs.cache.disk import DiskCache, read_checked
from regfs.errors import IntegrityError, OfflineError, TransientError
from tests.fixtures.images import random_bytes

BLOCK = 16
DATA = random_bytes(100, seed=1)  # 7 blocks: six of 16 bytes and one of 4
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()

Sink = Callable[[bytes], Awaitable[None]]


class FakeSource:
    """Serves `data` (as if it were the blob), in odd-sized chunks, recording each range."""

    def __init__(self, data: bytes = DATA, *, chunk: int = 7) -> None:
        self.data = data
        self.chunk = chunk
        self.calls: list[tuple[int, int]] = []
        self.started = trio.Event()
        self.gate: trio.Event | None = None  # when set, fetches wait for it
        self.error: Exception | None = None

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        self.calls.append((start, end))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        for at in range(start, end, self.chunk):
            await sink(self.data[at : min(end, at + self.chunk)])


def corrupted(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def blob(source: FakeSource | None, registry: str = "reg-a", digest: str = DIGEST) -> BlobRef:
    return BlobRef(digest, len(DATA), registry, source)


def make_cache(disk: DiskCache | None = None, **kwargs: object) -> BlockCache:
    return BlockCache(disk=disk, block_size=BLOCK, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", max_bytes=1 << 30)


def fetched_once_each(calls: list[tuple[int, int]], size: int = len(DATA)) -> bool:
    """The ranges cover [0, size) with no byte fetched twice."""
    position = 0
    for start, end in sorted(calls):
        if start != position:
            return False
        position = end
    return position == size


def memory_keys(cache: BlockCache, digest: str = DIGEST) -> list[tuple[str, int]]:
    return [k for k in cache.memory if k[0] == digest]


# --------------------------------------------------------------------------------------------
# reads


@pytest.mark.parametrize("with_disk", [False, True])
async def test_reads_at_odd_offsets(disk: DiskCache, with_disk: bool) -> None:
    source = FakeSource()
    cache = make_cache(disk if with_disk else None)
    ref = blob(source)
    async with cache.running():
        for offset, size in [(5, 30), (15, 2), (16, 16), (31, 1), (0, 1), (17, 70), (47, 50)]:
            assert await cache.read(ref, offset, size) == DATA[offset : offset + size]
        assert await cache.read(ref, 0, 100) == DATA


async def test_end_of_file() -> None:
    source = FakeSource()
    cache = make_cache()
    ref = blob(source)
    async with cache.running():
        assert await cache.read(ref, 95, 100) == DATA[95:]  # short only at the end
        assert await cache.read(ref, 99, 1) == DATA[99:]
        assert await cache.read(ref, 100, 10) == b""
        assert await cache.read(ref, 1000, 10) == b""
        assert await cache.read(ref, 10, 0) == b""
    assert all(end <= len(DATA) for _, end in source.calls)


async def test_empty_blob() -> None:
    empty = BlobRef("sha256:" + hashlib.sha256(b"").hexdigest(), 0, "reg-a", FakeSource(b""))
    cache = make_cache()
    async with cache.running():
        assert await cache.read(empty, 0, 10) == b""


async def test_cached_blocks_are_not_fetched_again(disk: DiskCache) -> None:
    source = FakeSource()
    cache = make_cache(disk)
    ref = blob(source)
    async with cache.running():
        await cache.read(ref, 20, 5)
        await cache.read(ref, 18, 10)
        await cache.read(ref, 16, 16)
    assert source.calls == [(16, 32)]
    assert cache.stats.misses == 1


async def test_single_flight() -> None:
    source = FakeSource()
    source.gate = trio.Event()
    cache = make_cache()
    ref = blob(source)
    results: list[bytes] = []

    async def reader(offset: int) -> None:
        results.append(await cache.read(ref, offset, 3))

    async with cache.running(), trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(reader, 32 + i)
        await source.started.wait()
        await trio.testing.wait_all_tasks_blocked()  # every reader waits on the one fetch
        assert len(source.calls) == 1
        source.gate.set()
    assert source.calls == [(32, 48)]
    assert sorted(results) == sorted(DATA[32 + i : 35 + i] for i in range(10))


async def test_fetch_error_reaches_every_waiter_then_retries() -> None:
    source = FakeSource()
    source.gate = trio.Event()
    source.error = TransientError("registry down")
    cache = make_cache()
    ref = blob(source)
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await cache.read(ref, 40, 4)
        except TransientError as exc:
            errors.append(exc)

    async with cache.running():
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(reader)
            await source.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert len(errors) == 5
        assert len(source.calls) == 1
        assert cache.in_flight() == 0
        source.error = None
        assert await cache.read(ref, 40, 4) == DATA[40:44]
    assert len(source.calls) == 2


async def test_readahead_for_sequential_reads() -> None:
    source = FakeSource()
    cache = make_cache(readahead_bytes=64)
    ref = blob(source)
    stream = ReadStream()
    async with cache.running():
        assert await cache.read(ref, 0, BLOCK, stream) == DATA[:BLOCK]
        # The first sequential read already asked for the next blocks in the background.
        assert any(start >= BLOCK for start, _ in source.calls)
        for offset in range(BLOCK, len(DATA), BLOCK):
            assert await cache.read(ref, offset, BLOCK, stream) == DATA[offset : offset + BLOCK]
    assert fetched_once_each(source.calls)
    assert cache.stats.misses < cache.blocks(len(DATA))  # some blocks were there in time


async def test_no_readahead_for_random_reads() -> None:
    source = FakeSource()
    cache = make_cache(readahead_bytes=64)
    ref = blob(source)
    stream = ReadStream()
    async with cache.running():
        await cache.read(ref, 70, 3, stream)
        await cache.read(ref, 20, 3, stream)
        await cache.read(ref, 50, 3, stream)
    assert sorted(source.calls) == [(16, 32), (48, 64), (64, 80)]


# --------------------------------------------------------------------------------------------
# verification


async def test_whole_read_verifies_and_promotes(disk: DiskCache) -> None:
    source = FakeSource()
    cache = make_cache(disk)
    ref = blob(source)
    async with cache.running():
        assert not cache.is_verified(DIGEST)
        assert await cache.read(ref, 0, 60) == DATA[:60]
        assert not cache.is_verified(DIGEST)
        assert disk.pending_dir(DIGEST, "reg-a").is_dir()
        assert await cache.read(ref, 60, 40) == DATA[60:]
        assert cache.is_verified(DIGEST)
    assert cache.stats.verified == 1
    assert disk.is_verified(DIGEST)
    pending = disk.pending_dir(DIGEST, "reg-a")
    assert not pending.exists(), sorted(p.name for p in pending.iterdir())
    for index in range(cache.blocks(len(DATA))):
        assert (
            disk.read_block(DIGEST, index, "some-other-registry")
            == DATA[index * BLOCK : (index + 1) * BLOCK]
        )


async def test_read_all(disk: DiskCache) -> None:
    cache = make_cache(disk)
    async with cache.running():
        assert await cache.read_all(blob(FakeSource())) == DATA
    assert disk.is_verified(DIGEST)


def blocks_of(calls: list[tuple[int, int]]) -> set[int]:
    return {i for start, end in calls for i in range(start // BLOCK, (end - 1) // BLOCK + 1)}


def assert_purged(cache: BlockCache, disk: DiskCache | None, refetched: set[int]) -> None:
    """Nothing of the failed attempt is left: only blocks fetched again since may be cached."""
    assert {index for _, index in memory_keys(cache)} <= refetched
    assert not cache.is_verified(DIGEST)
    if disk is not None:
        assert not disk.verified_dir(DIGEST).exists()
        pending = disk.pending_dir(DIGEST, "reg-a")
        on_disk = (
            {int(p.name) for p in pending.iterdir() if p.name.isdigit()}
            if pending.exists()
            else set()
        )
        assert on_disk <= refetched


@pytest.mark.parametrize("with_disk", [False, True])
@pytest.mark.parametrize("bad_byte", [0, 50, 99])
async def test_wrong_bytes_fail_the_last_read_of_a_sequential_read(
    disk: DiskCache, with_disk: bool, bad_byte: int
) -> None:
    store = disk if with_disk else None
    source = FakeSource(corrupted(DATA, bad_byte))
    cache = make_cache(store)
    ref = blob(source)
    async with cache.running():
        for offset in range(0, len(DATA) - BLOCK, BLOCK):
            await cache.read(ref, offset, BLOCK)  # not yet known to be wrong
        assert len(source.calls) == 6
        with pytest.raises(IntegrityError):
            await cache.read(ref, 96, BLOCK)
        await trio.testing.wait_all_tasks_blocked()
        # The failing read may have asked again for its own block, as a new attempt.
        assert_purged(cache, store, refetched=blocks_of(source.calls[7:]))
        source.data = DATA
        assert await cache.read_all(ref) == DATA
    assert cache.stats.failed == 1
    assert cache.stats.verified == 1


@pytest.mark.parametrize("with_disk", [False, True])
@pytest.mark.parametrize("readahead", [False, True])
async def test_wrong_bytes_fail_a_whole_file_read(
    disk: DiskCache, with_disk: bool, readahead: bool
) -> None:
    store = disk if with_disk else None
    source = FakeSource(corrupted(DATA, 33))
    cache = make_cache(store, readahead_bytes=64, request_bytes=BLOCK)
    ref = blob(source)
    stream = ReadStream() if readahead else None
    async with cache.running():
        with pytest.raises(IntegrityError):
            for offset in range(0, len(DATA), 10):
                await cache.read(ref, offset, 10, stream)
        await trio.testing.wait_all_tasks_blocked()
        assert not cache.is_verified(DIGEST)
        assert cache.stats.failed >= 1
        with pytest.raises(IntegrityError):
            await cache.read_all(ref)
        # Once the source serves the right bytes, the blob reads and verifies: a block of
        # the broken source fetched again after the purge is at worst caught once more.
        source.data = DATA
        try:
            data = await cache.read_all(ref)
        except IntegrityError:
            data = await cache.read_all(ref)
        assert data == DATA
        assert cache.is_verified(DIGEST)


async def test_wrong_bytes_in_one_big_read(disk: DiskCache) -> None:
    source = FakeSource(corrupted(DATA, 70))
    cache = make_cache(disk)
    ref = blob(source)
    async with cache.running():
        with pytest.raises(IntegrityError):
            await cache.read(ref, 0, len(DATA))
        await trio.testing.wait_all_tasks_blocked()
        assert_purged(cache, disk, refetched=blocks_of(source.calls[1:]))


class ServesInTurn(FakeSource):
    """Serves each fetch the next of `attempts` (the last one from then on)."""

    def __init__(self, *attempts: bytes) -> None:
        super().__init__(attempts[0])
        self.attempts = attempts

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        self.data = self.attempts[min(len(self.calls), len(self.attempts) - 1)]
        await super().fetch(start, end, sink)


@pytest.mark.parametrize("with_disk", [False, True])
async def test_blocks_of_a_purged_attempt_are_neither_served_nor_kept(
    disk: DiskCache, with_disk: bool
) -> None:
    store = disk if with_disk else None
    bad = corrupted(DATA, 20)
    source = ServesInTurn(DATA, bad, DATA)
    cache = make_cache(store, readahead_bytes=64)
    ref = blob(source)
    async with cache.running():
        assert await cache.read(ref, 0, BLOCK) == DATA[:BLOCK]
        source.gate, source.started = trio.Event(), trio.Event()
        await cache.read(ref, 0, BLOCK, ReadStream())  # readahead of blocks 1-2 sets out
        await source.started.wait()
        assert source.calls[1] == (BLOCK, 3 * BLOCK)
        await cache.purge(DIGEST, "reg-a")  # the next generation begins while it is on its way
        source.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert memory_keys(cache) == []
        if store is not None:
            assert store.read_block(DIGEST, 1, "reg-a") is None
        assert await cache.read(ref, BLOCK, 2 * BLOCK) == DATA[BLOCK : 3 * BLOCK]
    assert source.calls[2:] == [(BLOCK, 3 * BLOCK)]


# --------------------------------------------------------------------------------------------
# with a disk tier: blocks that were there before, other registries, other mounts


async def test_damaged_disk_block_is_refetched(disk: DiskCache) -> None:
    first = make_cache(disk)
    async with first.running():
        await first.read_all(blob(FakeSource()))
    block_file = disk.verified_dir(DIGEST) / "2"
    raw = bytearray(block_file.read_bytes())
    raw[3] ^= 0x10
    block_file.write_bytes(bytes(raw))

    source = FakeSource()
    second = make_cache(disk)  # a new mount: empty memory
    async with second.running():
        assert await second.read(blob(source), 0, len(DATA)) == DATA
    assert source.calls == [(32, 48)]
    assert read_checked(block_file) == DATA[32:48]


async def test_unverified_blocks_stay_with_their_registry(disk: DiskCache) -> None:
    source_a = FakeSource()
    cache_a = make_cache(disk)
    async with cache_a.running():
        await cache_a.read(blob(source_a, "reg-a"), 0, 40)  # blocks 0-2, not verified

    source_b = FakeSource()
    cache_b = make_cache(disk)
    async with cache_b.running():
        assert await cache_b.read(blob(source_b, "reg-b"), 0, 40) == DATA[:40]
    assert source_b.calls == [(0, 48)]  # registry B did not see A's unverified blocks

    source_a2 = FakeSource()
    cache_a2 = make_cache(disk)
    async with cache_a2.running():
        assert await cache_a2.read_all(blob(source_a2, "reg-a")) == DATA
    assert source_a2.calls == [(48, 100)]  # A's own pending blocks served A

    source_c = FakeSource()
    cache_c = make_cache(disk)
    async with cache_c.running():
        assert await cache_c.read_all(blob(source_c, "reg-c")) == DATA
    assert source_c.calls == []  # verified blocks serve every registry


async def test_offline_reads_only_the_cache(disk: DiskCache) -> None:
    cache = make_cache(disk)
    async with cache.running():
        await cache.read(blob(FakeSource()), 0, 20)  # blocks 0 and 1
    offline = make_cache(disk, offline=True)
    async with offline.running():
        assert await offline.read(blob(None), 0, 32) == DATA[:32]
        with pytest.raises(OfflineError):
            await offline.read(blob(None), 32, 1)


async def test_a_verified_blob_that_lost_blocks_is_verified_again(disk: DiskCache) -> None:
    async with make_cache(disk).running() as cache:
        assert await cache.read(blob(FakeSource()), 0, len(DATA)) == DATA
        assert cache.is_verified(DIGEST)
        # Its cached copy is gone (evicted, pruned by another process) while this mount still
        # remembers the verdict; the next fetch serves one flipped byte.
        shutil.rmtree(disk.verified_dir(DIGEST))
        cache.memory.clear()
        bad = blob(FakeSource(corrupted(DATA, 20)))
        with pytest.raises(IntegrityError):
            await cache.read(bad, 0, len(DATA))
        assert not cache.is_verified(DIGEST)
        assert not disk.is_verified(DIGEST)


async def test_a_verified_blob_missing_one_block_checks_the_refetched_bytes(
    disk: DiskCache,
) -> None:
    async with make_cache(disk).running() as cache:
        assert await cache.read(blob(FakeSource()), 0, len(DATA)) == DATA
        (disk.verified_dir(DIGEST) / "1").unlink()  # one block lost, the marker still there
        cache.memory.clear()
        bad = blob(FakeSource(corrupted(DATA, BLOCK + 3)))
        with pytest.raises(IntegrityError):
            await cache.read(bad, 0, len(DATA))
        assert not cache.is_verified(DIGEST)
        # The refetched block never reached the verified directory every registry reads.
        assert not (disk.verified_dir(DIGEST) / "1").exists()
