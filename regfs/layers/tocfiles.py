"""Layers read through their own TOC (toc.py): the index made from the TOC alone, and file
bytes made from their own chunks, each checked before a byte of it is returned.

Indexing fetches the TOC (eStargz: the footer, then the TOC member; zstd:chunked: the
manifest at its annotated position) through the block cache like any read: the blocks
holding it, so a layer whose TOC lies in its last block costs that one block. A read
fetches the compressed ranges of the chunks it covers (one cache read for a run of them),
decompresses each in a worker thread and compares it with its digest; a mismatch purges the
blob's blocks (so the next read fetches them again), logs which check failed and raises
IntegrityError (EIO). A TOC once checked is trusted for its blob's digest, as any index is.
"""

from __future__ import annotations

import bisect
import io
import logging
import zlib

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


class TocFiles:
    """Indexes from TOCs, and checked chunk reads, for one mount."""

    def __init__(self, cache: BlockCache, inflated_bytes: int, limiter: trio.CapacityLimiter):
        self.cache = cache
        self.limiter = limiter
        self.memory: LRUCache[tuple[str, int], bytes] = LRUCache(
            maxsize=max(1, inflated_bytes), getsizeof=len
        )
        self.chunks_read = 0  # chunks decompressed and checked

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

    async def read(self, blob: BlobRef, index: LayerIndex, start: int, end: int) -> bytes:
        """Bytes [start, end) of the layer's data stream, every chunk used checked."""
        first = bisect.bisect_right(index.chunk_starts, start) - 1
        last = bisect.bisect_left(index.chunk_starts, end) - 1
        numbers = range(max(0, first), last + 1)
        pieces = {k: self.memory.get((blob.digest, k)) for k in numbers}
        missing = [k for k, piece in pieces.items() if piece is None]
        if missing:
            for k, piece in zip(missing, await self._fetch(blob, index, missing), strict=True):
                pieces[k] = piece
                if len(piece) <= self.memory.maxsize:
                    self.memory[(blob.digest, k)] = piece
        parts = []
        for k in numbers:
            chunk, held = index.chunks[k], pieces[k]
            assert held is not None
            parts.append(held[max(0, start - chunk.start) : min(end, chunk.end) - chunk.start])
        return b"".join(parts)

    async def _fetch(self, blob: BlobRef, index: LayerIndex, numbers: list[int]) -> list[bytes]:
        chunks = [index.chunks[k] for k in numbers]
        with_data = [c for c in chunks if c.digest]
        compressed, base = b"", 0
        if with_data:
            base = min(c.cstart for c in with_data)
            compressed = await self.cache.read(blob, base, max(c.cend for c in with_data) - base)
        try:
            pieces = await trio.to_thread.run_sync(
                _unpack_all, index.format, chunks, compressed, base, limiter=self.limiter
            )
        except TocError as e:
            log.error("layer %s: %s", blob.digest, e)
            # Blocks that do not give what the TOC says: fetch them again next time.
            await self.cache.purge(blob.digest, blob.registry)
            raise IntegrityError(f"layer {blob.digest}: {e}", digest=blob.digest) from e
        self.chunks_read += len(pieces)
        return pieces


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
