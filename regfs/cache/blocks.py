"""The block cache: memory LRU over the disk tier (disk.py), single-flight fetches, readahead
(readahead.py decides the window) and verification of whole blobs.

Blocks are fixed-size pieces of a blob, keyed by (digest, index, registry): until the blob
is verified, one registry's bytes are never another's (state.block_key). A block is fetched once
however many readers want it; a sequential reader gets readahead that grows with it, split
into several ranged requests in flight at once (a CDN that throttles each connection still
gives several times one connection's rate).

A readahead request is owned by the streams (open files) it was started for, or that found
it in their window; when the last of them closes and no reader waits on a block of it, it is
cancelled (flights.py): closing a file stops fetching ahead of it.

Each blob read through the cache is hashed as its blocks go by in order. A digest mismatch
purges every block of that attempt (memory and disk) and begins the blob's next generation:
a block read or fetched for an older generation is dropped, never served or kept.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from cachetools import LRUCache

from ..errors import IntegrityError, OfflineError
from .blob import SMALL_BLOB, BlobRef, BlockSink, blocking
from .disk import DiskCache
from .flights import Flight, Run
from .readahead import Readahead
from .readahead import ReadStream as ReadStream  # where it was before: imported from here
from .state import BlobState, BlobStates, BlockKey, CacheStats, block_key

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 4 << 20


# -- the cache ---------------------------------------------------------------------------


class BlockCache:
    def __init__(
        self,
        *,
        disk: DiskCache | None,
        memory_bytes: int = 256 << 20,
        block_size: int = DEFAULT_BLOCK_SIZE,
        readahead_bytes: int = 32 << 20,
        request_bytes: int = 8 << 20,
        max_background: int = 4,
        offline: bool = False,
    ) -> None:
        self.disk = disk
        self.block_size = block_size
        self.memory: LRUCache[BlockKey, bytes] = LRUCache(
            maxsize=max(memory_bytes, block_size), getsizeof=len
        )
        self.readahead = Readahead(readahead_bytes, block_size)
        self.request_blocks = max(1, request_bytes // block_size)
        self.max_background = max_background
        self.offline = offline
        self.flights: dict[BlockKey, Flight] = {}
        self.states = BlobStates(disk)
        self.stats = CacheStats()
        self._nursery: trio.Nursery | None = None
        self._touched: set[str] = set()  # blobs whose last use was recorded on disk

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BlockCache]:
        """Background fetches (readahead, fetches outliving a cancelled reader) live here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    # -- queries ----------------------------------------------------------------------

    def blocks(self, size: int) -> int:
        return (size + self.block_size - 1) // self.block_size

    def block_range(self, size: int, index: int) -> tuple[int, int]:
        start = index * self.block_size
        return start, min(size, start + self.block_size)

    def is_verified(self, digest: str) -> bool:
        return self.states.is_verified(digest)

    def in_flight(self) -> int:
        return len(self.flights)

    def _state(self, blob: BlobRef) -> BlobState:
        return self.states.of(blob)

    def _cached(self, blob: BlobRef, index: int) -> bool:
        if block_key(blob, index) in self.memory:
            return True
        return self.disk is not None and self.disk.has_block(blob.digest, index, blob.registry)

    # -- reads ------------------------------------------------------------------------

    async def read(
        self, blob: BlobRef, offset: int, size: int, stream: ReadStream | None = None
    ) -> bytes:
        """Exactly the bytes [offset, offset+size) of the blob, short only at its end."""
        data = await self.read_buffer(blob, offset, size, stream)
        return data if isinstance(data, bytes) else bytes(data)

    def release(self, blob: BlobRef, index: int) -> None:
        """A one-pass reader (an index build) is done with this block: drop it from memory if
        the disk holds it, so a layer streamed once does not fill the memory LRU."""
        key = block_key(blob, index)
        if (
            self.disk is not None
            and key not in self.flights
            and self.disk.has_block(blob.digest, index, blob.registry)
        ):
            self.memory.pop(key, None)

    async def read_buffer(
        self, blob: BlobRef, offset: int, size: int, stream: ReadStream | None = None
    ) -> bytes | memoryview:
        """As read(), but a read within one block is a view of the cached block, not a copy:
        for the FUSE reply, which takes any buffer (1 MiB READs made a copy each, and peak
        RSS rose by 20 MiB)."""
        end = min(offset + size, blob.size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        failures_before = self.states.failures(blob)
        if stream is not None:
            if stream.failures_seen is None:
                stream.failures_seen = self.states.failures(blob)
            self._check_failures(blob, stream)
            self._read_ahead(blob, stream, offset, end)
        parts = []
        for index in range(first, last + 1):
            parts.append(await self.block(blob, index, want_through=last))
        # Not only at the last block: the kernel reads in parallel and out of order, so the
        # read that completes the blob may be any one; it must wait for the verdict.
        await self.verify_if_complete(blob, reads_end=last == self.blocks(blob.size) - 1)
        # Any read that overlapped a failed verification may hold purged bytes; reads that
        # begin after it start clean (no flag left for whoever comes next).
        if self.states.failures(blob) > failures_before:
            raise IntegrityError(f"blob {blob.digest} does not match its digest")
        if stream is not None:
            self._check_failures(blob, stream)
        base = first * self.block_size
        if len(parts) == 1:
            return memoryview(parts[0])[offset - base : end - base]
        return b"".join(parts)[offset - base : end - base]

    async def block(self, blob: BlobRef, index: int, *, want_through: int | None = None) -> bytes:
        """One block, from memory, disk or the network (one fetch however many ask)."""
        key = block_key(blob, index)
        failures_before = self.states.failures(blob)
        for _attempt in range(4):
            data = self.memory.get(key)
            if data is not None:
                self.stats.memory_hits += 1
                return data
            flight = self.flights.get(key)
            if flight is not None:
                await flight.wait()
                if flight.error is not None:
                    raise flight.error
                if self.states.failures(blob) > failures_before:
                    # The blob failed verification (and was purged) while we waited: fetching
                    # the broken source again would only leave its bytes for the next reader.
                    raise IntegrityError(f"blob {blob.digest} does not match its digest")
                continue
            # The disk index first: a cold block costs no thread hop and no failed opens.
            if self.disk is not None and self.disk.has_block(blob.digest, index, blob.registry):
                generation = self._state(blob).generation
                data = await blocking(
                    blob.size <= SMALL_BLOB, self.disk.read_block, blob.digest, index, blob.registry
                )
                if self.states.superseded(blob, generation):
                    continue  # purged while we read: the file may be from the failed attempt
                if data is not None and len(data) == self._block_length(blob, index):
                    self.stats.disk_hits += 1
                    self.memory[key] = data
                    if blob.digest not in self._touched:
                        self._touched.add(blob.digest)
                        await blocking(
                            blob.size <= SMALL_BLOB, self.disk.touch, blob.digest, blob.registry
                        )
                    return data
                if key in self.memory or key in self.flights:
                    continue  # someone else got there while we looked
            if blob.source is None or self.offline:
                raise OfflineError(f"block {index} of {blob.digest} is not cached")
            self.stats.misses += 1
            through = index if want_through is None else want_through
            self._start_fetch(
                blob, index, min(through + 1, index + max(self.request_blocks, 1)), background=False
            )
        raise IntegrityError(f"block {index} of {blob.digest} could not be kept in the cache")

    def _block_length(self, blob: BlobRef, index: int) -> int:
        start, end = self.block_range(blob.size, index)
        return end - start

    def _start_fetch(self, blob: BlobRef, first: int, stop: int, *, background: bool) -> Run | None:
        """Fetch blocks [first, stop) — those not already cached or on their way — in one
        request; a background (readahead) one is returned as the Run that can stop it."""
        indexes = []
        for index in range(first, stop):
            if block_key(blob, index) in self.flights or (
                index > first and self._cached(blob, index)
            ):
                break
            indexes.append(index)
        if not indexes:
            return None
        if self._nursery is None:
            raise RuntimeError("BlockCache used outside running()")
        state = self._state(blob)
        if state.verified:
            # A verified blob lost blocks (evicted, damaged, pruned): bytes fetched again are
            # checked again, from the first block, before it counts as verified once more.
            log.info("blob %s lost cached blocks; verifying it again", blob.digest[:19])
            self.states.next_generation(blob.digest, blob.registry)
            if self.disk is not None:
                self.disk.unverify(blob.digest)
        run = Run(blob.digest, blob.registry) if background else None
        flights = {i: Flight(run=run) for i in indexes}
        for i, flight in flights.items():
            self.flights[block_key(blob, i)] = flight
        if run is not None:
            run.flights = flights
            self._state(blob).background += 1
        self._nursery.start_soon(self._fetch_run, blob, indexes[0], indexes[-1] + 1, flights, run)
        return run

    async def _fetch_run(
        self, blob: BlobRef, first: int, stop: int, flights: dict[int, Flight], run: Run | None
    ) -> None:
        state = self._state(blob)
        index = first
        pending: list[bytes] = []
        pending_bytes = 0
        assert blob.source is not None

        async def sink(chunk: bytes) -> None:
            nonlocal index, pending_bytes
            pending.append(chunk)
            pending_bytes += len(chunk)
            while index < stop and pending_bytes >= self._block_length(blob, index):
                # A whole block in one piece (BlockSink) is neither joined nor sliced: both
                # give back the same bytes object.
                joined = b"".join(pending)
                length = self._block_length(blob, index)
                data, rest = joined[:length], joined[length:]
                pending[:] = [rest] if rest else []
                pending_bytes = len(rest)
                # A purge (digest mismatch) since this run began: its bytes belong to the
                # failed attempt and must not outlive it; the waiters fetch afresh.
                if not self.states.superseded(blob, state.generation):
                    await self._store(blob, index, data)
                    if self.states.superseded(blob, state.generation):  # purged while we wrote
                        self.memory.pop(block_key(blob, index), None)
                        if self.disk is not None:
                            # Shielded: a readahead stopped now must not leave the block.
                            with trio.CancelScope(shield=True):
                                await trio.to_thread.run_sync(
                                    self.disk.purge, blob.digest, blob.registry
                                )
                self._land(block_key(blob, index), flights[index], None)
                index += 1
                await self._hash_in_order(blob)

        start = first * self.block_size
        end = min(blob.size, stop * self.block_size)
        try:
            # A readahead run stops when its readers closed (flights.Run.disown): the block
            # it was receiving is dropped, those before it stay.
            with trio.CancelScope() if run is None else run.scope:
                await blob.source.fetch(start, end, BlockSink(sink, self.block_size))
        except Exception as exc:
            for i in range(index, stop):
                self._land(block_key(blob, i), flights[i], exc)
            if run is None:
                return  # the waiting readers raise it
            log.info("readahead of %s stopped: %s", blob.digest[:19], exc)
        finally:
            for i in range(index, stop):  # cancelled: readers will try again
                self._land(block_key(blob, i), flights[i], None)
            if run is not None:
                run.finished = True
                state.background -= 1

    def _land(self, key: BlockKey, flight: Flight, error: BaseException | None) -> None:
        if self.flights.get(key) is flight:
            del self.flights[key]
        if not flight.done.is_set():
            flight.error = error
            flight.done.set()

    async def _store(self, blob: BlobRef, index: int, data: bytes) -> None:
        # Memory last: a block counts as cached (and the blob may be verified and promoted)
        # only once its disk write is done, or that write lands in pending after the promote.
        try:
            await self._store_on_disk(blob, index, data)
        finally:
            self.memory[block_key(blob, index)] = data

    async def _store_on_disk(self, blob: BlobRef, index: int, data: bytes) -> None:
        if self.disk is not None:
            try:
                await blocking(
                    blob.size <= SMALL_BLOB,
                    self.disk.write_block,
                    *(blob.digest, index, blob.registry, data, blob.size),
                )
            except OSError as exc:  # disk full, cache cleared under us: memory still serves
                log.warning("block %d of %s not written to disk: %s", index, blob.digest[:19], exc)

    async def _hash_in_order(self, blob: BlobRef) -> None:
        state = self._state(blob)
        # Whoever holds the lock is already feeding the hasher and will reach this block.
        if state.verified:
            return
        if state.lock.locked():
            state.landed = True
        else:
            await self._advance_hash(blob, state, fetch_missing=False)

    # -- readahead ----------------------------------------------------------------------

    def _read_ahead(self, blob: BlobRef, stream: ReadStream, offset: int, end: int) -> None:
        ahead = self.readahead.after_read(stream, offset, end, blob.size)
        if ahead is None or blob.source is None or self.offline:
            return
        state = self._state(blob)
        index = ahead.start
        while index < ahead.stop and state.background < self.max_background:
            key = block_key(blob, index)
            flight = self.flights.get(key)
            if flight is not None or key in self.memory:
                if flight is not None and flight.run is not None:
                    stream.owned.adopt(flight.run)  # another's readahead, in this window too
                index += 1
                continue
            if self.disk is not None and self.disk.has_block(blob.digest, index, blob.registry):
                self._start_load(blob, index)  # from disk into memory ahead of the reader
                index += 1
                continue
            if state.verified:
                break  # a verified blob missing a block: only a reader's need refetches it
            chunk_stop = min(ahead.stop, index + self.request_blocks)
            whole = min(self.request_blocks, max(1, stream.window // self.block_size))
            if chunk_stop - index < whole and chunk_stop < self.blocks(blob.size):
                # The window moves a block at a time: wait until a whole request fits, or
                # every request is one block (twice the requests; the registry's CPU per
                # GiB rises as its ranges shrink).
                break
            run = self._start_fetch(blob, index, chunk_stop, background=True)
            if run is not None:
                stream.owned.adopt(run)
            index = chunk_stop
        self.readahead.looked_at(stream, index)

    def close_stream(self, stream: ReadStream) -> None:
        """Its file was closed: readahead requests started for it (or adopted) that no other
        open stream's window holds and no reader waits on stop; what arrived stays."""
        stopped = stream.owned.close()
        for run in stopped:
            for index, flight in run.flights.items():  # a reader after this fetches afresh
                self._land((run.digest, index, run.registry), flight, None)
        if stopped:
            self.stats.readahead_stopped += len(stopped)
            log.debug("a reader closed: %d readahead request(s) stopped", len(stopped))

    def _start_load(self, blob: BlobRef, index: int) -> None:
        assert self._nursery is not None
        flight = self.flights[block_key(blob, index)] = Flight()
        self._state(blob).background += 1
        self._nursery.start_soon(self._load_run, blob, index, flight)

    async def _load_run(self, blob: BlobRef, index: int, flight: Flight) -> None:
        """Read one block from disk into memory; readers of it wait on its flight."""
        state = self._state(blob)
        try:
            assert self.disk is not None
            data = await trio.to_thread.run_sync(
                self.disk.read_block, blob.digest, index, blob.registry
            )
            # Not after a purge: the file may be from the failed attempt.
            fits = data is not None and len(data) == self._block_length(blob, index)
            if fits and data is not None and not self.states.superseded(blob, state.generation):
                self.stats.disk_hits += 1
                self.memory[block_key(blob, index)] = data
        finally:
            state.background -= 1
            self._land(block_key(blob, index), flight, None)  # a miss: readers look again

    # -- verification -------------------------------------------------------------------

    async def _advance_hash(self, blob: BlobRef, state: BlobState, *, fetch_missing: bool) -> None:
        """Feed the blob's blocks to its hasher in order, as far as they are at hand."""
        total = self.blocks(blob.size)
        async with state.lock:
            if self.states.superseded(blob, state.generation):
                return  # judged (and purged) while we waited for the lock: judge it once
            while not state.verified and state.hashed_blocks < total:
                index = state.hashed_blocks
                data = self.memory.get(block_key(blob, index))
                if data is None and self.disk is not None:
                    data = await blocking(
                        blob.size <= SMALL_BLOB,
                        self.disk.read_block,
                        blob.digest,
                        index,
                        blob.registry,
                    )
                if data is None:
                    if state.landed:  # it may have landed while we looked on disk
                        state.landed = False
                        continue
                    if not fetch_missing:
                        return
                    data = await self.block(blob, index)
                if len(data) != self._block_length(blob, index):
                    return
                await blocking(len(data) <= SMALL_BLOB, state.hasher.update, data)
                state.hashed_blocks += 1
            if not state.verified and state.hashed_blocks == total:
                await self._finish(blob, state)

    async def _finish(self, blob: BlobRef, state: BlobState) -> None:
        actual = f"{state.algorithm}:{state.hasher.hexdigest()}"
        if actual == blob.digest:
            state.verified = True
            self.stats.verified += 1
            if self.disk is not None:
                # Shielded: a readahead stopped (or an unmount) now must not lose the verdict.
                with trio.CancelScope(shield=True):
                    await blocking(
                        blob.size <= SMALL_BLOB, self.disk.promote, blob.digest, blob.registry
                    )
            log.debug("verified %s", blob.digest)
            return
        log.error("blob %s does not match its digest (got %s): purged", blob.digest, actual)
        self.stats.failed += 1
        self.states.failed(blob)
        await self.purge(blob.digest, blob.registry)

    def _check_failures(self, blob: BlobRef, stream: ReadStream) -> None:
        if self.states.failures(blob) > (stream.failures_seen or 0):
            raise IntegrityError(f"blob {blob.digest} failed verification while open")

    async def verify_if_complete(self, blob: BlobRef, *, reads_end: bool = True) -> None:
        """Called by every read: if every block has been read, check the digest before that
        read returns, so a whole-file read never ends with wrong bytes."""
        state = self._state(blob)
        if state.verified:
            return
        total = self.blocks(blob.size)
        # Hash what is at hand; a partial (random) reader does not pay for the rest. The fetch
        # task hashes blocks as they land, so a blob whose next block to hash is not in memory
        # is not complete yet (or was read in another mount): the full check, with its stat
        # calls, runs only when the end of the blob is read then. A mismatch found here (or
        # by any task) shows as a failure count that read() compares.
        next_at_hand = block_key(blob, state.hashed_blocks) in self.memory
        if (next_at_hand or reads_end) and all(
            self._cached(blob, i) for i in range(state.hashed_blocks, total)
        ):
            await self._advance_hash(blob, state, fetch_missing=True)

    async def purge(self, digest: str, registry: str | None = None) -> None:
        """Drop every block of the blob (memory, and disk for `registry` or all) and begin its
        next generation, so nothing still on its way for this attempt is kept."""
        self.stats.purges += 1
        for key in [k for k in self.memory if k[0] == digest and registry in (None, k[2])]:
            self.memory.pop(key, None)
        if self.disk is not None:
            # Not in a thread: no other task may see the failed attempt's files half-removed
            # (rare: only after a digest mismatch).
            self.disk.purge(digest, registry)
        self.states.next_generation(digest, registry)
        await trio.lowlevel.checkpoint()

    # -- whole small blobs (configs) ----------------------------------------------------

    async def read_all(self, blob: BlobRef) -> bytes:
        data = await self.read(blob, 0, blob.size)
        if not self.is_verified(blob.digest):
            raise IntegrityError(f"blob {blob.digest} could not be verified")
        return data
