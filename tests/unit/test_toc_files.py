"""LayerFiles over the real TOC layers of tests/unit/toc_blobs.py, through a block cache of
small blocks: the index comes from the TOC (no full pass), reads fetch only their chunks'
blocks and check them, a lying source gives IntegrityError, a blob fetched whole is compared
with the diff_id its config claims, and the TOC index is kept in the disk cache."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import zstandard

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache
from regfs.cache.disk import DiskCache
from regfs.errors import IntegrityError
from regfs.layers import Format, LayerFiles
from regfs.oci.entry import EntryKind
from tests.unit.test_layer_support import Refuses, Source, digest
from tests.unit.test_toc_formats import tar_files
from tests.unit.toc_blobs import (
    ESTARGZ_ANNOTATIONS,
    ESTARGZ_BLOB,
    ZSTD_CHUNKED_ANNOTATIONS,
    ZSTD_CHUNKED_BLOB,
)

BLOCK = 256  # a few blocks per blob: a read touches only some of them

LAYERS = {
    "estargz": (ESTARGZ_BLOB, ESTARGZ_ANNOTATIONS, Format.ESTARGZ),
    "zstd:chunked": (ZSTD_CHUNKED_BLOB, ZSTD_CHUNKED_ANNOTATIONS, Format.ZSTD_CHUNKED),
}


def uncompressed(blob: bytes) -> bytes:
    if blob.startswith(b"\x1f\x8b"):
        return gzip.decompress(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return reader.read()


def setup(kind: str, disk: DiskCache | None = None) -> tuple[LayerFiles, BlobRef, Source]:
    blob, annotations, _ = LAYERS[kind]
    source = Source(blob)
    ref = BlobRef(digest(blob), len(blob), "reg-a", source, annotations)  # type: ignore[arg-type]
    cache = BlockCache(disk=disk, block_size=BLOCK, memory_bytes=1 << 20)
    return LayerFiles(cache, disk, span_bytes=4 << 20, inflated_bytes=1 << 20), ref, source


@pytest.mark.parametrize("kind", LAYERS)
async def test_index_from_the_toc_and_reads_of_every_file(kind: str) -> None:
    files, blob, source = setup(kind)
    async with files.cache.running():
        await check_index_and_reads(kind, files, blob, source)


async def check_index_and_reads(
    kind: str, files: LayerFiles, blob: BlobRef, source: Source
) -> None:
    diff_id = digest(uncompressed(LAYERS[kind][0]))
    index = await files.index(blob, diff_id)
    assert index.format is LAYERS[kind][2]
    assert (files.builds, files.toc_indexes) == (0, 1)
    assert source.sent < blob.size  # the TOC's blocks, not the blob
    expected = tar_files(uncompressed(LAYERS[kind][0]))
    got = {
        e.path: await files.read(blob, index, e, 0, e.size)
        for e in index.entries
        if e.kind is EntryKind.FILE
    }
    assert got == expected
    assert (
        await files.read(blob, index, index.entries[-1], 3, 5)
        == expected[index.entries[-1].path][3:8]
    )


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_lying_source_gives_integrity_error_then_an_honest_one_reads(kind: str) -> None:
    files, blob, source = setup(kind)
    async with files.cache.running():
        await check_lying_source(files, blob, source)


async def check_lying_source(files: LayerFiles, blob: BlobRef, source: Source) -> None:
    index = await files.index(blob, None)
    entry = next(e for e in index.entries if e.path == "etc/os-release")
    chunk = next(c for c in index.chunks if c.start == entry.offset)
    # Early in the chunk's compressed bytes (past a gzip header): what the chunk's own bytes
    # are made from (an eStargz member goes on with the next entries' headers).
    source.lie_at = chunk.cstart + 12
    with pytest.raises(IntegrityError, match="chunk at"):
        await files.read(blob, index, entry, 0, entry.size)
    source.lie_at = None
    assert (await files.read(blob, index, entry, 0, entry.size)).startswith(b'NAME="regfs test"')


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_blob_fetched_whole_is_held_to_the_claimed_diff_id(kind: str) -> None:
    files, blob, _ = setup(kind)
    async with files.cache.running():
        await check_claimed_diff_id(kind, files, blob)


async def check_claimed_diff_id(kind: str, files: LayerFiles, blob: BlobRef) -> None:
    wrong = digest(b"what skopeo's config claims")
    index = await files.index(blob, wrong)
    await files.cache.read(blob, 0, blob.size)  # the whole blob (as a `cat` of the .tar.*)
    assert files.cache.is_verified(blob.digest)
    entry = next(e for e in index.entries if e.kind is EntryKind.FILE and e.size)
    with pytest.raises(IntegrityError, match="diff_id"):
        await files.read(blob, index, entry, 0, 1)
    with pytest.raises(IntegrityError, match="diff_id"):
        await files.index(blob, wrong)
    # The same blob, claimed with its real diff_id (another image's config), reads.
    right = await files.index(blob, digest(uncompressed(LAYERS[kind][0])))
    assert await files.read(blob, right, entry, 0, 1)


async def test_the_toc_index_is_kept_in_the_disk_cache(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    files, blob, _ = setup("zstd:chunked", disk)
    async with files.cache.running():
        first = await files.index(blob, None)
    again, _, _ = setup("zstd:chunked", disk)
    offline = BlobRef(blob.digest, blob.size, "reg-a", Refuses(), blob.annotations)  # type: ignore[arg-type]
    async with again.cache.running():
        loaded = await again.index(offline, None)
    assert loaded.chunks == first.chunks and again.toc_indexes == 0
