"""Spans of indexed layers, inflated for reads: each one's compressed bytes are fetched through
the block cache and checked against the span digest recorded at index time before anything
is inflated (a server that lies after eviction gives IntegrityError, never wrong bytes), then
inflated in a worker thread under this module's own CapacityLimiter (so zran work never holds
the threads the cache's disk work needs) and kept in a memory LRU, so a sequential reader
inflates each span once.

gzip spans are inflated by indexed_gzip seekers: each one an IndexedGzipFile with the layer's
imported seek points, reading a `WindowFile` that shows only checked bytes. A small pool per
layer lets parallel readers of one layer inflate in parallel.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Awaitable, Callable

import indexed_gzip
import trio
from cachetools import LRUCache

from .. import fileio
from ..cache.blob import BlobRef
from ..cache.blocks import BlockCache
from ..errors import IntegrityError
from .index import Format, LayerIndex, Span
from .streams import WindowFile, decompress_frames

log = logging.getLogger(__name__)

SEEKERS_PER_LAYER = 3
# Memory for seekers: each holds its layer's seek point windows (32 KiB per point: 8 MiB for
# a 1 GiB layer with 4 MiB spans), so pools are kept by size, least recently used dropped.
SEEKER_BYTES = 96 << 20


class Seeker:
    """One IndexedGzipFile over checked windows of one layer (used by one thread at a time)."""

    def __init__(self, blob_size: int, gzip_index: bytes) -> None:
        self.window = WindowFile(blob_size)
        self.gz = indexed_gzip.IndexedGzipFile(
            fileobj=self.window, readbuf_size=64 << 10, buffer_size=64 << 10
        )
        self.gz.import_index(fileobj=io.BytesIO(gzip_index))

    def inflate(self, span: Span, compressed: bytes) -> bytes:
        self.window.show(span.cstart, compressed)
        self.gz.seek(span.start)
        return bytes(self.gz.read(span.end - span.start))


class SeekerPool:
    def __init__(self, blob_size: int, gzip_index: bytes, limiter: trio.CapacityLimiter):
        self.blob_size = blob_size
        self.gzip_index = gzip_index
        self.limiter = limiter
        self.idle: list[Seeker] = []
        self.slots = trio.Semaphore(SEEKERS_PER_LAYER)

    @property
    def footprint(self) -> int:
        """What its seekers may hold, at most (a pool bigger than the budget is not kept)."""
        return max(1, len(self.gzip_index) * SEEKERS_PER_LAYER)

    async def inflate(self, span: Span, compressed: bytes) -> bytes:
        async with self.slots:
            seeker = self.idle.pop() if self.idle else None
            if seeker is None:
                seeker = await trio.to_thread.run_sync(
                    Seeker, self.blob_size, self.gzip_index, limiter=self.limiter
                )
            data = await trio.to_thread.run_sync(
                seeker.inflate, span, compressed, limiter=self.limiter
            )
            self.idle.append(seeker)  # not one that failed: it may be in any state
            return data


# Reads a flat copy's chunk: (blob, index, span number) -> the chunk's bytes, unchecked.
FlatReader = Callable[[BlobRef, LayerIndex, int], Awaitable[bytes]]


class Spans:
    def __init__(self, cache: BlockCache, inflated_bytes: int, threads: int = 2) -> None:
        self.cache = cache
        self.limiter = trio.CapacityLimiter(threads)
        self.memory: LRUCache[tuple[str, int], bytes] = LRUCache(
            maxsize=max(1, inflated_bytes), getsizeof=len
        )
        self.flights: dict[tuple[str, int], trio.Event] = {}
        self.pools: LRUCache[str, SeekerPool] = LRUCache(
            maxsize=SEEKER_BYTES, getsizeof=lambda pool: pool.footprint
        )
        self.inflated = 0  # spans inflated (a sequential reader inflates each once)

    async def span(self, blob: BlobRef, index: LayerIndex, k: int, flat: FlatReader) -> bytes:
        """Uncompressed bytes [spans[k].start, spans[k].end) of the layer, checked."""
        key = (index.digest, k)
        while True:
            data = self.memory.get(key)
            if data is not None:
                return data
            flight = self.flights.get(key)
            if flight is None:
                break
            await flight.wait()  # and look again: if it failed, this reader tries itself
        flight = self.flights[key] = trio.Event()
        try:
            data = await self._make(blob, index, k, flat)
            if len(data) <= self.memory.maxsize:
                self.memory[key] = data
            self.inflated += 1
            return data
        finally:
            del self.flights[key]
            flight.set()

    async def _make(self, blob: BlobRef, index: LayerIndex, k: int, flat: FlatReader) -> bytes:
        span = index.spans[k]
        if index.flat:
            data = await flat(blob, index, k)
            await self._check(data, span, f"decompressed copy of {blob.digest}")
            return data
        compressed = await self.cache.read(blob, span.cstart, span.cend - span.cstart)
        try:
            await self._check(compressed, span, f"layer {blob.digest}")
        except IntegrityError:
            # Blocks that do not hash to what the index recorded: drop them, so the next
            # read fetches them again rather than failing on the same bytes forever.
            await self.cache.purge(blob.digest, blob.registry)
            raise
        if index.format is Format.GZIP:
            pool = self.pools.get(index.digest)
            if pool is None:
                pool = SeekerPool(blob.size, index.gzip_index, self.limiter)
                if pool.footprint <= self.pools.maxsize:
                    self.pools[index.digest] = pool
            data = await pool.inflate(span, compressed)
        else:
            data = await trio.to_thread.run_sync(
                decompress_frames, compressed, limiter=self.limiter
            )
        if len(data) != span.end - span.start:
            raise IntegrityError(
                f"layer {blob.digest}: span at {span.start} inflated to {len(data)} bytes, "
                f"not {span.end - span.start}",
                digest=blob.digest,
            )
        return data

    async def _check(self, data: bytes, span: Span, what: str) -> None:
        digest = await trio.to_thread.run_sync(_sha256, data, limiter=self.limiter)
        if digest != span.digest:
            log.error("%s: bytes at %d do not match the span digest recorded", what, span.cstart)
            raise IntegrityError(f"{what}: span at {span.cstart} does not match its digest")

    def forget(self, digest: str) -> None:
        for key in [k for k in self.memory if k[0] == digest]:
            self.memory.pop(key, None)
        self.pools.pop(digest, None)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pread(path: str | os.PathLike[str], offset: int, size: int) -> bytes:
    fd = fileio.open_for_reading(path)
    try:
        return fileio.pread(fd, size, offset)
    finally:
        os.close(fd)
