"""regfs.cache.blockfiles: block files written in part with O_DIRECT keep the one file format
(data, then the length and CRC-32 trailer), files of an older regfs read the same, and the
index of what the disk tier holds stays right while others change the directory."""

from __future__ import annotations

import fcntl
import hashlib
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from regfs.cache import blockfiles
from regfs.cache.blob import BlobRef
from regfs.cache.blockfiles import DIRECT_MIN, PAGE, TRAILER, read_checked, write_atomic
from regfs.cache.blocks import BlockCache
from regfs.cache.disk import DiskCache, clear, prune
from tests.fixtures.images import random_bytes

BIG = random_bytes(4 * DIRECT_MIN + 5, seed=3)  # a page-aligned bulk and a tail
BIG_DIGEST = "sha256:" + hashlib.sha256(BIG).hexdigest()
SIZES = [0, 1, PAGE, DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 4 * DIRECT_MIN + 5]


def old_format(data: bytes) -> bytes:
    """What every regfs has written: the data, then the trailer."""
    return data + TRAILER.pack(len(data), zlib.crc32(data))


@pytest.mark.parametrize("size", SIZES)
def test_the_file_format_is_unchanged(tmp_path: Path, size: int) -> None:
    data = BIG[:size]
    path = tmp_path / "v1" / "blobs" / "0"
    write_atomic(path, data, trailer=True)
    assert path.read_bytes() == old_format(data)
    assert read_checked(path) == data
    assert [p.name for p in path.parent.iterdir()] == ["0"]  # no temporary left


@pytest.mark.parametrize("size", SIZES)
def test_files_written_the_old_way_read(tmp_path: Path, size: int) -> None:
    path = tmp_path / "0"
    path.write_bytes(old_format(BIG[:size]))
    assert read_checked(path) == BIG[:size]


@pytest.mark.parametrize("at", [0, PAGE - 1, DIRECT_MIN + 7, len(BIG) - 1, len(BIG) + 3])
def test_damage_in_a_large_file_is_found(tmp_path: Path, at: int) -> None:
    path = tmp_path / "0"
    write_atomic(path, BIG, trailer=True)
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))
    assert read_checked(path) is None
    assert not path.exists()


def test_a_truncated_large_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "0"
    write_atomic(path, BIG, trailer=True)
    os.truncate(path, 2 * DIRECT_MIN)
    assert read_checked(path) is None


def test_without_o_direct_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system (or system) without O_DIRECT: ordinary writes and reads, same file."""
    monkeypatch.setattr(blockfiles, "_O_DIRECT", 0)
    path = tmp_path / "0"
    write_atomic(path, BIG, trailer=True)
    assert path.read_bytes() == old_format(BIG)
    assert read_checked(path) == BIG


def test_o_direct_refused_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fcntl = fcntl.fcntl

    def refuse_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return int(real_fcntl(fd, cmd, arg))

    monkeypatch.setattr(fcntl, "fcntl", refuse_direct)
    path = tmp_path / "0"
    write_atomic(path, BIG, trailer=True)
    assert path.read_bytes() == old_format(BIG)
    assert read_checked(path) == BIG


def test_a_large_file_is_read_with_o_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bulk comes by DMA into the aligned buffer, not through the page cache; the bytes
    and the trailer check are the same as a buffered read's."""
    direct_reads = []
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        direct_reads.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    path = tmp_path / "0"
    write_atomic(path, BIG, trailer=True)
    assert read_checked(path) == BIG
    assert direct_reads == [True]
    raw = bytearray(path.read_bytes())
    raw[DIRECT_MIN + 3] ^= 1
    path.write_bytes(bytes(raw))
    assert read_checked(path) is None  # damage is found the same way


def test_threads_writing_at_once_each_keep_their_bytes(tmp_path: Path) -> None:
    """The aligned buffers are shared by the worker threads: never two at once."""
    blocks = [random_bytes(DIRECT_MIN * 2 + i, seed=i) for i in range(8)]

    def write(i: int) -> None:
        write_atomic(tmp_path / str(i), blocks[i], trailer=True)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(len(blocks)):
                nursery.start_soon(trio.to_thread.run_sync, write, i)

    trio.run(main)
    assert [read_checked(tmp_path / str(i)) for i in range(8)] == blocks


# -- the index ------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", max_bytes=1 << 30)


def test_has_block_needs_no_stat_once_listed(
    disk: DiskCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk.write_block(BIG_DIGEST, 0, "reg", b"x")
    assert disk.has_block(BIG_DIGEST, 0, "reg")
    calls: list[str] = []

    def recorded(name: str) -> Callable[..., list[str]]:
        def call(*args: object, **kwargs: object) -> list[str]:
            calls.append(name)
            return []

        return call

    monkeypatch.setattr(os, "listdir", recorded("listdir"))
    monkeypatch.setattr(Path, "stat", recorded("stat"))
    monkeypatch.setattr(Path, "exists", recorded("exists"))
    for _ in range(100):
        assert disk.has_block(BIG_DIGEST, 0, "reg")
        disk.has_block(BIG_DIGEST, 1, "reg")  # a miss: listed again at most every RELIST
    assert len(calls) <= 2, calls


def test_a_block_removed_under_the_index_is_missing_then(tmp_path: Path) -> None:
    """`regfs cache prune/clear` from another process: the file is gone, the index still
    says present; the read finds nothing (never wrong bytes) and the index learns it."""
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    disk.write_block(BIG_DIGEST, 0, "reg", BIG)
    disk.promote(BIG_DIGEST, "reg")
    assert disk.has_block(BIG_DIGEST, 0, "reg")
    assert clear(tmp_path / "cache", BIG_DIGEST) > 0  # another process's DiskCache
    assert disk.has_block(BIG_DIGEST, 0, "reg")  # stale, until read
    assert disk.read_block(BIG_DIGEST, 0, "reg") is None
    assert not disk.has_block(BIG_DIGEST, 0, "reg")


def test_blocks_another_mount_writes_are_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    other = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    assert not mine.has_block(BIG_DIGEST, 0, "reg")
    other.write_block(BIG_DIGEST, 0, "reg", b"x")
    monkeypatch.setattr(blockfiles.BlockIndex, "RELIST", 0.0)
    assert mine.has_block(BIG_DIGEST, 0, "reg")
    assert mine.read_block(BIG_DIGEST, 0, "reg") == b"x"


def test_eviction_clear_and_purge_forget_what_they_removed(disk: DiskCache) -> None:
    for index in range(3):
        disk.write_block(BIG_DIGEST, index, "reg", b"x")
    assert disk.has_block(BIG_DIGEST, 2, "reg")
    disk.evict(0)
    assert not disk.has_block(BIG_DIGEST, 2, "reg")
    disk.write_block(BIG_DIGEST, 0, "reg", b"x")
    disk.promote(BIG_DIGEST, "reg")
    assert disk.has_block(BIG_DIGEST, 0, "other-registry")  # verified: every registry's
    disk.purge(BIG_DIGEST)
    assert not disk.has_block(BIG_DIGEST, 0, "reg")
    disk.write_block(BIG_DIGEST, 0, "reg", b"x")
    disk.clear()
    assert not disk.has_block(BIG_DIGEST, 0, "reg")


class WholeSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetched = 0

    async def fetch(self, start: int, end: int, sink: object) -> None:
        self.fetched += end - start
        await sink(self.data[start:end])  # type: ignore[operator]


async def test_a_mount_reads_again_what_prune_removed_under_it(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    source = WholeSource(BIG)
    ref = BlobRef(BIG_DIGEST, len(BIG), "reg", source)
    async with BlockCache(disk=disk, block_size=DIRECT_MIN, memory_bytes=0).running() as cache:
        assert await cache.read(ref, 0, len(BIG)) == BIG
        assert source.fetched == len(BIG)
        cache.memory.clear()
        assert prune(tmp_path / "cache", 0) > 0
        assert await cache.read(ref, 0, len(BIG)) == BIG  # fetched again, and right
        assert source.fetched == 2 * len(BIG)
