"""Readahead of TOC layers (tocfiles.py) over the real layers of tests/unit/toc_blobs.py,
read as one file across their chunks (the data stream from 0 on) through a block cache of
small blocks: a sequential reader gets the next chunks fetched and checked before it asks
for them, a random one gets nothing ahead, and a chunk that lies is an error only for the
read that reaches it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache
from regfs.errors import IntegrityError
from regfs.layers import LayerFiles, LayerIndex
from regfs.oci.entry import EntryKind
from tests.unit.test_layer_support import Sink, Source, digest
from tests.unit.test_toc_files import BLOCK, LAYERS, uncompressed
from tests.unit.test_toc_formats import tar_files

STEP = 10  # bytes per read: several reads per chunk


class Asked(Source):
    """A Source that records every range it is asked for, when it is asked (before its gate)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[tuple[int, int]] = []
        self.by_index: list[tuple[int, int]] = []  # what indexing asked for

    def cached_by_index(self, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.by_index)

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        self.asked.append((start, end))
        await super().fetch(start, end, sink)

    def asked_for(self, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.asked)


def data_stream(kind: str, index: LayerIndex) -> bytes:
    """The layer's files' bytes in the TOC's order: what its chunks make, end to end."""
    files = tar_files(uncompressed(LAYERS[kind][0]))
    return b"".join(files[e.path] for e in index.entries if e.kind is EntryKind.FILE and e.size)


def setup(kind: str) -> tuple[LayerFiles, BlobRef, Asked]:
    data, annotations, _ = LAYERS[kind]
    source = Asked(data)
    blob = BlobRef(digest(data), len(data), "reg-a", source, annotations)  # type: ignore[arg-type]
    cache = BlockCache(disk=None, block_size=BLOCK, memory_bytes=1 << 20)
    files = LayerFiles(cache, None, inflated_bytes=1 << 20)
    files.tocs.ahead_after = 2 * STEP  # a stream from its second read in order
    return files, blob, source


async def index_of(kind: str, files: LayerFiles, blob: BlobRef, source: Asked) -> LayerIndex:
    index = await files.index(blob, None)
    assert len(index.chunks) >= 4  # several chunks to read ahead
    source.by_index, source.asked = source.asked, []  # the TOC's blocks, cached from now on
    return index


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_random_reader_gets_nothing_ahead(kind: str) -> None:
    files, blob, source = setup(kind)
    async with files.cache.running():
        index = await index_of(kind, files, blob, source)
        expected = data_stream(kind, index)
        size = len(expected)
        for offset in (size - STEP, 0, size // 2, 3 * STEP):  # reads that do not follow
            got = await files.tocs.read(blob, index, offset, offset + STEP, size)
            assert got == expected[offset : offset + STEP]
        await trio.testing.wait_all_tasks_blocked()
        assert files.tocs.chunks_ahead == 0


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_sequential_reader_gets_the_next_chunks_fetched_before_it_asks(kind: str) -> None:
    files, blob, source = setup(kind)
    async with files.cache.running():
        index = await index_of(kind, files, blob, source)
        expected = data_stream(kind, index)
        tocs, size = files.tocs, len(expected)
        assert await tocs.read(blob, index, 0, STEP, size) == expected[:STEP]
        source.gate = trio.Event()  # what is fetched from now on waits here
        assert await tocs.read(blob, index, STEP, 2 * STEP, size) == expected[STEP : 2 * STEP]
        await trio.testing.wait_all_tasks_blocked()
        later = [c for c in index.chunks if c.start >= 2 * STEP]
        # The blocks of the chunks after the one being read are asked for already.
        assert later and all(
            source.asked_for(c.cstart) or source.cached_by_index(c.cstart) for c in later
        )
        assert any(source.asked_for(c.cstart) for c in later)
        source.gate.set()
        asked = len(source.asked)
        for offset in range(2 * STEP, size, STEP):
            got = await tocs.read(blob, index, offset, offset + STEP, size)
            assert got == expected[offset : offset + STEP], offset
        assert len(source.asked) == asked  # nothing fetched for the reads themselves
        assert tocs.chunks_ahead == len(later)
        assert tocs.chunks_read == len(index.chunks)  # each chunk decompressed once


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_lying_chunk_fetched_ahead_fails_only_the_read_that_reaches_it(kind: str) -> None:
    files, blob, source = setup(kind)
    async with files.cache.running():
        index = await index_of(kind, files, blob, source)
        expected = data_stream(kind, index)
        size = len(expected)
        # The last chunk in blocks indexing did not fetch (those would not be fetched again).
        lying = [c for c in index.chunks if not source.cached_by_index(c.cstart + 12)][-1]
        assert lying.start >= 2 * STEP  # reached once the reader is a stream
        source.lie_at = lying.cstart + 12  # past the gzip header, into what makes its bytes
        offset = 0
        while offset + STEP <= lying.start:
            got = await files.tocs.read(blob, index, offset, offset + STEP, size)
            assert got == expected[offset : offset + STEP], offset
            offset += STEP
        await trio.testing.wait_all_tasks_blocked()
        assert source.asked_for(source.lie_at)  # fetched ahead, and no error so far
        with pytest.raises(IntegrityError):
            await files.tocs.read(blob, index, offset, offset + STEP, size)
        source.lie_at = None  # an honest server: the same read now gives the right bytes
        got = await files.tocs.read(blob, index, offset, offset + STEP, size)
        assert got == expected[offset : offset + STEP]


@pytest.mark.parametrize("kind", LAYERS)
async def test_blocks_further_on_are_fetched_before_their_chunks_are_decompressed(
    kind: str,
) -> None:
    files, blob, source = setup(kind)
    files.tocs.ahead_bytes = 1  # decompressed ahead: at most the chunk that begins next
    async with files.cache.running():
        index = await index_of(kind, files, blob, source)
        expected = data_stream(kind, index)
        tocs, size = files.tocs, len(expected)
        for offset in (0, STEP):
            assert await tocs.read(blob, index, offset, offset + STEP, size)
        await trio.testing.wait_all_tasks_blocked()
        later = [c for c in index.chunks if c.start >= 3 * STEP]
        assert all(source.asked_for(c.cstart) or source.cached_by_index(c.cstart) for c in later)
        assert tocs.chunks_ahead < len(index.chunks) - 1  # not all of them decompressed
        asked = len(source.asked)
        for offset in range(2 * STEP, size, STEP):
            got = await tocs.read(blob, index, offset, offset + STEP, size)
            assert got == expected[offset : offset + STEP], offset
        assert len(source.asked) == asked
