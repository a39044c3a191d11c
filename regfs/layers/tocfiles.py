"""Layers read through their own TOC (toc.py): the index made from the TOC alone, and file
bytes made from their own chunks, each checked before a byte of it is returned.

Indexing fetches the TOC (eStargz: the footer, then the TOC member; zstd:chunked: the
manifest at its annotated position) through the block cache like any read: the blocks
holding it, so a layer whose TOC lies in its last block costs that one block. A read
fetches the compressed ranges of the chunks it covers (one cache read for a run of them),
decompresses each in a worker thread and compares it with its digest; a mismatch purges the
blob's blocks (so the next read fetches them again), logs which check failed and raises
IntegrityError (EIO). A TOC once checked is trusted for its blob's digest, as any index is.

A sequential reader of a file (each read beginning where the last one of that layer ended,
AHEAD_AFTER bytes in order) gets the file's next chunks fetched, decompressed and checked
ahead of it, AHEAD_BYTES at most, by a task of their own (a read of such a chunk waits for
it), and the blocks of its chunks further on, up to FETCH_AHEAD, fetched into the block
cache by tasks of their own (one per advance of that window: a few requests in flight);
neither goes past the file's end. A chunk fetched ahead that fails its check is only
dropped: the read that reaches it fetches it again itself, and that read gives the error.
"""

from __future__ import annotations

import bisect
import io
import logging
import zlib
from dataclasses import dataclass

import trio
import zstandard
from cachetools import LRUCache

from ..cache.blob import BlobRef
from ..cache.blocks import BlockCache
from ..errors import IntegrityError
from . import estargz, zstdchunked
from .index import Format, LayerIndex
from .toc import Chunk, FullPassNeeded, TocError, TocLayout, sha256, toc_kind

log = logging.getLogger(__name__)

# A random 1 MiB read, which the kernel may split into in-order requests, is not a stream.
AHEAD_AFTER = 2 << 20
AHEAD_BYTES = 4 << 20  # decompressed ahead of a sequential reader, at most
FETCH_AHEAD = 16 << 20  # of chunks whose blocks are fetched ahead (kept by the block cache)
AHEAD_GROUP = 1 << 20  # chunks decompressed ahead in one thread call (then readers may go on)
READERS = 64  # sequential readers followed at once (least recently read forgotten)


@dataclass
class _Reader:
    """A sequential reader of a TOC layer, as far as its reads show it."""

    in_order: int = 0  # bytes read in order
    chunks_to: int = 0  # chunks below this were looked at for decompressing ahead
    fetch_chunks_to: int = 0  # chunks below this were looked at for fetching ahead
    blocks_to: int = 0  # blocks below this were asked for ahead


class TocFiles:
    """Indexes from TOCs, and checked chunk reads, for one mount."""

    def __init__(self, cache: BlockCache, inflated_bytes: int, limiter: trio.CapacityLimiter):
        self.cache = cache
        self.limiter = limiter
        self.memory: LRUCache[tuple[str, int], bytes] = LRUCache(
            maxsize=max(1, inflated_bytes), getsizeof=len
        )
        self.chunks_read = 0  # chunks decompressed and checked
        self.chunks_ahead = 0  # of them, decompressed ahead of a sequential reader
        # (digest, where a reader's last read ended) -> the reader: the next read beginning
        # there continues it.
        self._readers: LRUCache[tuple[str, int], _Reader] = LRUCache(maxsize=READERS)
        self._ahead: dict[tuple[str, int], trio.Event] = {}  # chunks on their way ahead
        self.ahead_after, self.ahead_bytes = AHEAD_AFTER, AHEAD_BYTES  # (tests lower them)
        self.fetch_bytes = FETCH_AHEAD

    @staticmethod
    def has_toc(blob: BlobRef) -> bool:
        return toc_kind(blob.annotations) is not None

    async def index(self, blob: BlobRef) -> LayerIndex:
        """The layer's index from its TOC. Raises IntegrityError when the TOC does not match
        its digest or cannot be read (logged); FullPassNeeded when it cannot stand for the
        tar (no chunk digests, names not UTF-8): the caller indexes the layer by a full pass."""
        kind = toc_kind(blob.annotations)
        try:
            if kind == "estargz":
                layout, fmt = await self._estargz(blob), Format.ESTARGZ
            else:
                layout, fmt = await self._zstd_chunked(blob), Format.ZSTD_CHUNKED
        except FullPassNeeded:
            raise
        except TocError as e:
            log.error("layer %s: its %s TOC is not used: %s", blob.digest, kind, e)
            raise IntegrityError(f"layer {blob.digest}: {e}", digest=blob.digest) from e
        return LayerIndex(blob.digest, layout.entries, fmt, "", layout.size, chunks=layout.chunks)

    async def _estargz(self, blob: BlobRef) -> TocLayout:
        if blob.size < estargz.LEGACY_FOOTER_SIZE:
            raise TocError("the blob is too small to end with a stargz footer")
        # The footer alone, then the TOC's range: what is fetched is the blocks holding
        # [TOC, end of blob), however the TOC and the block boundaries fall.
        footer_at = max(0, blob.size - estargz.FOOTER_SIZE)
        tail = await self.cache.read(blob, footer_at, blob.size - footer_at)
        toc_offset, footer = estargz.parse_footer(tail)
        end = blob.size - footer
        if not 0 <= toc_offset < end:
            raise TocError(f"the stargz footer points at {toc_offset}, outside the blob")
        member = await self.cache.read(blob, toc_offset, end - toc_offset)
        return await trio.to_thread.run_sync(
            estargz.parse,
            member,
            toc_offset,
            blob.size,
            footer,
            blob.annotations,
            limiter=self.limiter,
        )

    async def _zstd_chunked(self, blob: BlobRef) -> TocLayout:
        offset, length, uncompressed = zstdchunked.position(blob.annotations, blob.size)
        manifest = await self.cache.read(blob, offset, length)
        return await trio.to_thread.run_sync(
            zstdchunked.parse, manifest, blob.annotations, uncompressed, limiter=self.limiter
        )

    async def read(
        self, blob: BlobRef, index: LayerIndex, start: int, end: int, until: int | None = None
    ) -> bytes:
        """Bytes [start, end) of the layer's data stream, every chunk used checked; `until`:
        where the file being read ends in that stream (how far its readahead may go)."""
        first = bisect.bisect_right(index.chunk_starts, start) - 1
        last = bisect.bisect_left(index.chunk_starts, end) - 1
        numbers = range(max(0, first), last + 1)
        self._read_ahead(blob, index, start, end, last + 1, end if until is None else until)
        pieces = {k: await self._held(blob.digest, k) for k in numbers}
        missing = [k for k, piece in pieces.items() if piece is None]
        if missing:
            for k, piece in zip(missing, await self._fetch(blob, index, missing), strict=True):
                pieces[k] = piece
                self._keep(blob.digest, k, piece)
        parts = []
        for k in numbers:
            chunk, held = index.chunks[k], pieces[k]
            assert held is not None
            parts.append(held[max(0, start - chunk.start) : min(end, chunk.end) - chunk.start])
        return b"".join(parts)

    def _keep(self, digest: str, k: int, piece: bytes) -> None:
        if len(piece) <= self.memory.maxsize:
            self.memory[(digest, k)] = piece

    async def _held(self, digest: str, k: int) -> bytes | None:
        """Chunk k if it is decompressed (waiting for it if it is on its way ahead)."""
        while True:
            piece = self.memory.get((digest, k))
            if piece is not None:
                return piece
            flight = self._ahead.get((digest, k))
            if flight is None:
                return None
            await flight.wait()  # and look again: if it failed, the reader fetches it

    async def _fetch(self, blob: BlobRef, index: LayerIndex, numbers: list[int]) -> list[bytes]:
        try:
            return await self._unpacked(blob, index, numbers)
        except TocError as e:
            log.error("layer %s: %s", blob.digest, e)
            # Blocks that do not give what the TOC says: fetch them again next time.
            await self.cache.purge(blob.digest, blob.registry)
            raise IntegrityError(f"layer {blob.digest}: {e}", digest=blob.digest) from e

    async def _unpacked(self, blob: BlobRef, index: LayerIndex, numbers: list[int]) -> list[bytes]:
        """Chunks' bytes, fetched, decompressed and checked (TocError if one is not right)."""
        chunks = [index.chunks[k] for k in numbers]
        with_data = [c for c in chunks if c.digest]
        compressed, base = b"", 0
        if with_data:
            base = min(c.cstart for c in with_data)
            compressed = await self.cache.read(blob, base, max(c.cend for c in with_data) - base)
        pieces = await trio.to_thread.run_sync(
            _unpack_all, index.format, chunks, compressed, base, limiter=self.limiter
        )
        self.chunks_read += len(pieces)
        return pieces

    # -- readahead ----------------------------------------------------------------------

    def _read_ahead(
        self, blob: BlobRef, index: LayerIndex, start: int, end: int, after: int, until: int
    ) -> None:
        """Follow the reader; once it is a stream, start what it will want from chunk `after`
        on: not past `until`, nor past ahead_bytes (chunks) and fetch_bytes (their blocks)
        beyond `end`."""
        reader = self._readers.pop((blob.digest, start), None) or _Reader()
        self._readers[(blob.digest, end)] = reader
        reader.in_order += end - start
        if reader.in_order >= self.ahead_after:
            self._start_chunks(blob, index, reader, after, min(until, end + self.ahead_bytes))
            self._start_blocks(blob, index, reader, after, min(until, end + self.fetch_bytes))

    def _start_chunks(
        self, blob: BlobRef, index: LayerIndex, reader: _Reader, after: int, stop_at: int
    ) -> None:
        """Chunks beginning before `stop_at` that are neither held nor on their way."""
        digest, k = blob.digest, max(after, reader.chunks_to)
        wanted = []
        while k < len(index.chunks) and index.chunks[k].start < stop_at:
            if (digest, k) not in self.memory and (digest, k) not in self._ahead:
                wanted.append(k)
            k += 1
        reader.chunks_to = k
        if wanted:
            for k in wanted:
                self._ahead[(digest, k)] = trio.Event()
            trio.lowlevel.spawn_system_task(self._fetch_ahead, blob, index, wanted)

    def _start_blocks(
        self, blob: BlobRef, index: LayerIndex, reader: _Reader, after: int, stop_at: int
    ) -> None:
        """The blocks of the chunks beginning before `stop_at` not looked at yet (those with
        data: a run of zeros has none), past the blocks asked for already."""
        last = bisect.bisect_left(index.chunk_starts, stop_at)
        ranges = [
            (c.cstart, c.cend)
            for c in index.chunks[max(after, reader.fetch_chunks_to) : last]
            if c.digest
        ]
        reader.fetch_chunks_to = max(reader.fetch_chunks_to, last)
        if ranges:
            block = self.cache.block_size
            first = max(reader.blocks_to, min(a for a, _ in ranges) // block)
            stop = (max(b for _, b in ranges) - 1) // block + 1
            if first < stop:
                reader.blocks_to = stop
                trio.lowlevel.spawn_system_task(self._fetch_blocks, blob, first, stop)

    async def _fetch_blocks(self, blob: BlobRef, first: int, stop: int) -> None:
        """Blocks [first, stop) into the block cache, for chunks a reader will want: they are
        checked when they are decompressed. A system task: it must not raise."""
        try:
            for k in range(first, stop):
                await self.cache.block(blob, k, want_through=stop - 1)
        except Exception as e:
            log.debug("layer %s: fetching ahead stopped: %s", blob.digest, e)

    async def _fetch_ahead(self, blob: BlobRef, index: LayerIndex, numbers: list[int]) -> None:
        """Chunks for a reader to come, a group at a time (each group's waiters go on as it is
        kept). A failure stops it quietly: the reader that reaches the chunk fetches it again
        and hears the error then. A system task: it must not raise."""
        try:
            for group in _groups(index, numbers):
                pieces = await self._unpacked(blob, index, group)
                self.chunks_ahead += len(pieces)
                for k, piece in zip(group, pieces, strict=True):
                    self._keep(blob.digest, k, piece)
                    self._ahead.pop((blob.digest, k)).set()
        except Exception as e:
            log.debug("layer %s: reading ahead stopped: %s", blob.digest, e)
        finally:
            for k in numbers:
                flight = self._ahead.pop((blob.digest, k), None)
                if flight is not None:
                    flight.set()


def _groups(index: LayerIndex, numbers: list[int]) -> list[list[int]]:
    """Runs of consecutive chunk numbers, each AHEAD_GROUP bytes or one chunk."""
    groups: list[list[int]] = []
    size = 0
    for k in numbers:
        length = index.chunks[k].end - index.chunks[k].start
        if groups and groups[-1][-1] == k - 1 and size + length <= AHEAD_GROUP:
            groups[-1].append(k)
            size += length
        else:
            groups.append([k])
            size = length
    return groups


def _unpack_all(fmt: Format, chunks: list[Chunk], compressed: bytes, base: int) -> list[bytes]:
    return [_unpack(fmt, c, compressed[c.cstart - base : c.cend - base]) for c in chunks]


def _unpack(fmt: Format, chunk: Chunk, compressed: bytes) -> bytes:
    """A chunk's bytes from its compressed range, checked against the TOC's digest."""
    length = chunk.end - chunk.start
    if not chunk.digest:
        return bytes(length)  # zeros the TOC states (zstd:chunked "zeros" chunks)
    try:
        if fmt is Format.ESTARGZ:
            data = zlib.decompressobj(31).decompress(compressed, chunk.inner + length)
        else:
            # At most what the chunk needs (frames after it, and skippable ones, are passed
            # over by zstd's streaming reader): a chunk cannot make more than its bytes.
            with zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(compressed), read_across_frames=True
            ) as reader:
                data = _read_exactly(reader, chunk.inner + length)
    except (zlib.error, zstandard.ZstdError, OSError) as e:
        raise TocError(f"chunk at {chunk.cstart} does not decompress: {e}") from e
    piece = data[chunk.inner : chunk.inner + length]
    if len(piece) != length or sha256(piece) != chunk.digest:
        raise TocError(
            f"chunk at {chunk.cstart} ({length} bytes) does not match its TOC digest {chunk.digest}"
        )
    return piece


def _read_exactly(reader: zstandard.ZstdDecompressionReader, size: int) -> bytes:
    """Up to `size` bytes (fewer only at the end of the stream)."""
    parts, left = [], size
    while left > 0:
        piece = reader.read(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)
