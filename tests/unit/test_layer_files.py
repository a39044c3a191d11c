"""regfs.layers: layers made by GNU tar, gzip and zstd, indexed and read through a real
BlockCache; every file's bytes compared with what stdlib tarfile reads from the same tar."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from regfs.cache.blocks import BlockCache
from regfs.cache.disk import DiskCache
from regfs.errors import IntegrityError
from regfs.layers import Format, LayerFiles, LayerIndex
from regfs.layers.streams import CHUNK
from regfs.oci.entry import Entry, EntryKind
from tests.unit.test_layer_support import (
    BLOCK,
    SPAN,
    Source,
    blob_of,
    compress,
    digest,
    expected_files,
    gnu_tar,
    layer_files,
    make_cache,
    make_tree,
)

HOW = ["gzip", "gzip-members", "zstd", "zstd-frames", "zstd-late-frame", "tar"]


@pytest.fixture(scope="module")
def tars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("layers")
    make_tree(base / "tree")
    return {fmt: gnu_tar(base / "tree", base / f"{fmt}.tar", fmt=fmt) for fmt in ("posix", "gnu")}


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", max_bytes=1 << 30)


def by_path(index: LayerIndex) -> dict[str, Entry]:
    return {e.path: e for e in index.entries}


async def read_all_ways(files: LayerFiles, blob: object, index: LayerIndex, entry: Entry) -> bytes:
    """The whole file, and pieces at odd offsets and sizes that cross seek points."""
    whole = await files.read(blob, index, entry, 0, entry.size + 10)  # type: ignore[arg-type]
    for offset, size in [(SPAN - 3, 7), (SPAN * 5 + 1, SPAN * 2 + 13), (entry.size - 1, 5)]:
        if 0 <= offset < entry.size:
            piece = await files.read(blob, index, entry, offset, size)  # type: ignore[arg-type]
            assert piece == whole[offset : offset + size], (entry.path, offset, size)
    return whole


@pytest.mark.parametrize("with_disk", [True, False])
@pytest.mark.parametrize("fmt", ["posix", "gnu"])
@pytest.mark.parametrize("how", HOW)
async def test_every_file_reads_as_tarfile_does(
    tars: dict[str, bytes], tmp_path: Path, how: str, fmt: str, with_disk: bool
) -> None:
    tar = tars[fmt]
    data = compress(tar, how, tmp_path)
    blob = blob_of(data, Source(data))
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30) if with_disk else None
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        index = await files.index(blob, digest(tar))
        assert index.format is Format(how.split("-")[0])
        assert index.flat == (how in ("zstd", "zstd-late-frame"))  # a frame too big to read from
        if how not in ("zstd", "tar"):
            assert len(index.spans) > 10  # seek points every 64 KiB or so
        expected = expected_files(tar)
        entries = by_path(index)
        for path, content in expected.items():
            entry = entries[path]
            assert entry.kind is EntryKind.FILE
            assert entry.size == len(content)
            assert await read_all_ways(files, blob, index, entry) == content, path
        assert entries["sparse"].sparse is not None and entries["sparse"].size == 1_200_000


async def test_entries_are_what_the_tar_holds(tars: dict[str, bytes], disk: DiskCache) -> None:
    tar = tars["posix"]
    blob = blob_of(tar, Source(tar))
    cache = make_cache(disk)
    async with cache.running():
        index = await layer_files(cache, disk).index(blob, None)
    entries = by_path(index)
    assert entries[""].kind is EntryKind.DIR  # "./" is the root
    assert entries["link"].kind is EntryKind.SYMLINK
    assert entries["link"].linkname == "/etc/os-release"  # verbatim
    hard, small = entries["hard"], entries["small"]
    # GNU tar stores the second name of an inode as a hardlink to the first it met.
    assert {hard.kind, small.kind} == {EntryKind.HARDLINK, EntryKind.FILE}
    link = hard if hard.kind is EntryKind.HARDLINK else small
    assert link.linkname in ("hard", "small") and link.linkname != link.path
    assert entries["fifo"].kind is EntryKind.FIFO
    assert entries["suid"].mode == 0o4755
    assert ("user.note", b"\xffvalue\x00") in entries["x"].xattrs
    name = next(p for p in entries if p.startswith("caf"))
    assert os.fsencode(name) == b"caf\xe9"
    assert entries["a/b/c/f3"].size == 1000 + 997 * 3


@pytest.mark.parametrize("how", ["gzip", "tar", "zstd-frames"])
async def test_diff_id_mismatch_is_an_integrity_error(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache, how: str
) -> None:
    data = compress(tars["gnu"], how, tmp_path)
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        with pytest.raises(IntegrityError, match="diff_id"):
            await files.index(blob_of(data, Source(data)), digest(b"another layer"))
        # The index is of the blob, good for an image whose config has the right diff_id.
        assert (await files.index(blob_of(data, Source(data)), digest(tars["gnu"]))).entries


@pytest.mark.parametrize(
    "data", [os.urandom(300_000), b"\x1f\x8b" + os.urandom(5000), b"\x28\xb5\x2f\xfd" + b"x" * 64]
)
async def test_what_is_not_a_tar_is_an_integrity_error(disk: DiskCache, data: bytes) -> None:
    cache = make_cache(disk)
    async with cache.running():
        with pytest.raises(IntegrityError):
            await layer_files(cache, disk).index(blob_of(data, Source(data)), None)


@pytest.mark.parametrize("how", ["gzip", "zstd-frames", "zstd"])
async def test_a_server_lying_after_eviction_gives_integrity_errors(
    tars: dict[str, bytes], tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    tar = tars["gnu"]
    data = compress(tar, how, tmp_path)
    disk = DiskCache(tmp_path / "c", max_bytes=1 << 30)
    source = Source(data)
    blob = blob_of(data, source)
    cache = make_cache(disk)
    async with cache.running():
        index = await layer_files(cache, disk).index(blob, None)
    entry = by_path(index)["big"]
    span = next(s for s in index.spans if s.start > entry.offset + 300_000)
    # Every block evicted; the index stays. Now the server flips a byte of that span.
    for blob_dir in disk.blobs():
        disk.purge(blob_dir.digest)
    if how == "zstd":  # flat: the decompressed copy on disk is what gets damaged
        path = disk.derived_path("layer-tar", blob.digest)
        with open(path, "r+b") as f:
            f.seek(span.start + 5)
            f.write(b"\x00\x01")
    else:
        source.lie_at = span.cstart + (span.cend - span.cstart) // 2
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        index = await files.index(blob, None)
        inside = span.start - entry.offset + 10
        with pytest.raises(IntegrityError):
            await files.read(blob, index, entry, inside, 100)
        # Spans the lie does not touch still read.
        assert await files.read(blob, index, entry, 0, 10) == expected_files(tar)["big"][:10]
    assert "do not match the span digest" in caplog.text


async def test_damaged_or_stale_persisted_index_is_rebuilt(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache
) -> None:
    data = compress(tars["gnu"], "gzip", tmp_path)
    blob = blob_of(data, Source(data))
    cache = make_cache(disk)
    async with cache.running():
        first = await layer_files(cache, disk).index(blob, None)
        [artifact] = [a for a in disk.artifacts() if a.kind == "layer-index"]
        raw = disk.get_derived("layer-index", blob.digest)
        assert raw is not None
        for damage in ("flip", "truncate", "version"):
            if damage == "flip":
                body = bytearray(artifact.path.read_bytes())
                body[len(body) // 2] ^= 0x40
                artifact.path.write_bytes(bytes(body))
            elif damage == "truncate":
                artifact.path.write_bytes(artifact.path.read_bytes()[:100])
            else:  # a well-formed file of another format version
                stale = bytearray(raw)
                stale[len(b"regfs layer index\n")] += 1
                disk.put_derived("layer-index", blob.digest, bytes(stale))
            files = layer_files(cache, disk)
            again = await files.index(blob, None)
            assert files.builds == 1, damage
            assert again.entries == first.entries and again.spans == first.spans


@pytest.mark.parametrize("how", ["gzip", "zstd", "tar"])
async def test_a_remount_loads_the_index_without_fetching(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache, how: str
) -> None:
    data = compress(tars["posix"], how, tmp_path)
    cache = make_cache(disk)
    async with cache.running():
        built = await layer_files(cache, disk).index(blob_of(data, Source(data)), None)
    from tests.unit.test_layer_support import Refuses

    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        loaded = await files.index(blob_of(data, Refuses()), digest(tars["posix"]))
    assert files.builds == 0
    assert loaded.entries == built.entries and loaded.spans == built.spans


@pytest.mark.parametrize("how", ["gzip", "zstd-frames", "zstd"])
async def test_parallel_readers_get_identical_bytes(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache, how: str
) -> None:
    tar = tars["gnu"]
    data = compress(tar, how, tmp_path)
    blob = blob_of(data, Source(data))
    expected = expected_files(tar)
    cache = make_cache(disk)
    got: dict[tuple[str, int], bytes] = {}
    async with cache.running():
        files = layer_files(cache, disk, inflated=64 << 20)  # room for every span
        index = await files.index(blob, None)
        entries = by_path(index)

        async def reader(path: str, n: int) -> None:
            entry = entries[path]
            step = 50_000 + n * 777
            parts = [
                await files.read(blob, index, entry, at, step) for at in range(0, entry.size, step)
            ]
            got[(path, n)] = b"".join(parts)

        async with trio.open_nursery() as nursery:
            for n in range(4):
                for path in ("big", "sparse", "a/b/c/f39"):
                    nursery.start_soon(reader, path, n)
    for (path, _n), content in got.items():
        assert content == expected[path], path
    assert files.spans.inflated <= len(index.spans)  # each span inflated once, for all readers


async def test_concurrent_asks_build_once_and_progress_is_shown(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache
) -> None:
    data = compress(tars["gnu"], "gzip", tmp_path)
    source = Source(data)
    source.gate = trio.Event()
    blob = blob_of(data, source)
    cache = make_cache(disk)
    results: list[LayerIndex] = []
    async with cache.running():
        files = layer_files(cache, disk)

        async def ask() -> None:
            results.append(await files.index(blob, None))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask)
            await trio.sleep(0.2)
            [progress] = files.progress()
            assert progress.digest == blob.digest and progress.total == len(data)
            assert progress.done == 0
            source.gate.set()  # type: ignore[attr-defined]
    assert files.builds == 1 and len(results) == 5 and files.progress() == []
    assert source.sent == len(data)


async def test_a_waiter_fails_only_after_no_progress_for_the_timeout(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache
) -> None:
    from regfs.errors import TransientError

    data = compress(tars["gnu"], "gzip", tmp_path)
    source = Source(data)
    source.gate = trio.Event()
    blob = blob_of(data, source)
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk, timeout=0.5)
        with trio.fail_after(5):
            with pytest.raises(TransientError, match="no progress"):
                await files.index(blob, None)
        source.gate.set()  # type: ignore[attr-defined]
        # The build went on without the waiter that gave up.
        with trio.fail_after(10):
            assert (await files.index(blob, None)).entries


async def test_an_evicted_copy_is_made_again_and_orphans_are_removed(
    tars: dict[str, bytes], tmp_path: Path, disk: DiskCache
) -> None:
    tar = tars["posix"]
    data = compress(tar, "zstd", tmp_path)
    blob = blob_of(data, Source(data))
    copy = disk.derived_path("layer-tar", blob.digest)
    orphan = copy.with_name(copy.name + ".tmp-999999999-0")  # of a process killed mid-build
    orphan.write_bytes(b"half a copy")
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        index = await files.index(blob, None)
        assert index.flat and copy.stat().st_size == index.size and not orphan.exists()
        copy.unlink()  # evicted
        entry = by_path(index)["big"]
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(files.read, blob, index, entry, 1000, 200_000)
        assert await files.read(blob, index, entry, 0, entry.size) == expected_files(tar)["big"]
        assert copy.exists()


@pytest.mark.parametrize("how", ["gzip", "zstd-frames", "tar"])
async def test_the_build_leaves_the_layer_on_disk_not_in_memory(
    tars: dict[str, bytes], tmp_path: Path, how: str
) -> None:
    """One pass over a layer: each block fetched once, then dropped from the memory LRU (the
    disk tier has it), however much memory the cache has."""
    data = compress(tars["posix"], how, tmp_path)
    source = Source(data)
    blob = blob_of(data, source)
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    cache = BlockCache(disk=disk, block_size=BLOCK, memory_bytes=64 << 20)
    async with cache.running():
        await layer_files(cache, disk).index(blob, digest(tars["posix"]))
        kept = sum(len(v) for k, v in cache.memory.items() if k[0] == blob.digest)
        assert kept <= CHUNK < len(data) // 2  # the last refill's blocks at most
        assert source.sent == len(data)
        assert cache.is_verified(blob.digest)
        assert disk.has_block(blob.digest, 0, blob.registry)


async def test_the_inflater_waits_for_a_slow_zran_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy machine zran's thread falls behind the inflater tarfile reads from; the
    blocks between the two stay in memory until zran passes them, so the inflater waits once
    it is MAX_LAG ahead (a build had reached 820 MiB of RSS with a 256 MiB memory cache)."""
    import gzip
    import io
    import tarfile
    import time

    from regfs.layers import build

    payload = os.urandom(12 << 20)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("big")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    data = gzip.compress(tar.getvalue(), 1)
    monkeypatch.setattr(build, "STEP", 1 << 20)
    monkeypatch.setattr(build, "MAX_LAG", 2 << 20)
    monkeypatch.setattr(build, "PIECE", 256 << 10)
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    readahead = 1 << 20
    cache = BlockCache(
        disk=disk, block_size=BLOCK, memory_bytes=64 << 20, readahead_bytes=readahead
    )
    held: list[int] = []
    cut = build.SpanHasher.cut

    def slow_cut(self: build.SpanHasher, uncompressed: int, compressed: int) -> None:
        time.sleep(0.02)  # zran's thread, slowed as on a loaded machine
        held.append(cache.memory.currsize)
        cut(self, uncompressed, compressed)

    monkeypatch.setattr(build.SpanHasher, "cut", slow_cut)
    blob = blob_of(data, Source(data))
    async with cache.running():
        index = await layer_files(cache, disk).index(blob, digest(tar.getvalue()))
        (entry,) = index.entries
        assert await layer_files(cache, disk).read(blob, index, entry, 0, entry.size) == payload
    assert len(held) >= 8  # the index grew in many steps
    # what zran has not passed: the lag, a step, the inflater's readahead and refill
    bound = (2 << 20) + (1 << 20) + readahead + CHUNK + 2 * BLOCK
    assert max(held) <= bound, [h >> 20 for h in held]
