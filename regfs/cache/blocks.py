"""The block cache: memory LRU over a persistent disk tier, single-flight fetches, readahead
and verification of whole blobs.

Blocks are fixed-size pieces of a blob, keyed by (digest, index). A block is fetched once
however many readers want it; a sequential reader gets readahead that grows with it, split
into several ranged requests in flight at once (a CDN that throttles each connection still
gives several times one connection's rate).

Disk layout under the cache directory (shared safely by concurrent mounts: every file is
written to a temporary name and renamed into place; each block file ends with a 12-byte
trailer of its length and CRC-32, so a torn or flipped block is detected and refetched):

    v1/blobs/<alg>/<hex>/<index>            blocks of blobs verified against their digest
    v1/pending/<registry>/<alg>/<hex>/<index>  blocks of blobs not yet verified; per registry,
                                            so one registry's unverified bytes never serve another
    v1/documents/<alg>/<hex>                manifests and configs by digest
    v1/tags/<registry>/<repo>/<tag>         the digest a tag last resolved to (for --offline)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio
from cachetools import LRUCache

from ..errors import IntegrityError, OfflineError, RegfsError
from ..oci.reference import is_digest

log = logging.getLogger(__name__)

_TRAILER = struct.Struct("<QI")  # length, CRC-32
SIZE_FILE = "size"  # in a blob's directory: the blob's full size, as decimal text
DEFAULT_BLOCK_SIZE = 4 << 20
T = TypeVar("T")


class Source(Protocol):
    """Where a blob's bytes come from (blobs.BlobSource)."""

    async def fetch(
        self, start: int, end: int, sink: Callable[[bytes], Awaitable[None]]
    ) -> None: ...


@dataclass(frozen=True)
class BlobRef:
    """What the cache needs to know of a blob."""

    digest: str
    size: int
    registry: str  # registry key: unverified blocks are kept per registry
    source: Source | None  # None: offline, cache only

    def __hash__(self) -> int:
        return hash(self.digest)


# -- the disk tier ---------------------------------------------------------------------


def _split(digest: str) -> tuple[str, str]:
    if not is_digest(digest):
        raise ValueError(f"invalid digest {digest!r}")
    algorithm, hexpart = digest.split(":", 1)
    return algorithm, hexpart


def _safe_component(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def write_atomic(path: Path, data: bytes, *, trailer: bool) -> None:
    # `regfs cache prune/clear` may remove the directory under us: make it again, once.
    for attempt in (1, 2):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if trailer:
                    f.write(_TRAILER.pack(len(data), zlib.crc32(data)))
            os.replace(tmp, path)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise


def read_checked(path: Path) -> bytes | None:
    """A block file's data if its trailer matches; a damaged file is removed."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) >= _TRAILER.size:
        length, crc = _TRAILER.unpack_from(raw, len(raw) - _TRAILER.size)
        data = raw[: -_TRAILER.size]
        if length == len(data) and zlib.crc32(data) == crc:
            return data
    log.warning("damaged cache file %s removed", path)
    with suppress(OSError):
        path.unlink()
    return None


class BlockSizeMismatch(RegfsError):
    """A cache directory made with another --block-size."""


class DiskCache:
    """The persistent tier. Every method is blocking: call it through trio.to_thread."""

    def __init__(self, root: Path, max_bytes: int, block_size: int | None = None) -> None:
        self.root = Path(root) / "v1"
        self.max_bytes = max_bytes
        self.written_since_evict = 0
        for sub in ("blobs", "pending", "documents", "tags"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if block_size is not None:
            self._check_block_size(block_size)

    def _check_block_size(self, block_size: int) -> None:
        """Block files are named by index: one cache directory holds one block size only, or
        block 1 of a 1M mount would be read from a 4M mount's block 1."""
        path = self.root / "block-size"
        with suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(str(block_size))
        recorded = path.read_text().strip()
        if recorded != str(block_size):
            raise BlockSizeMismatch(
                f"cache {self.root.parent} holds blocks of {recorded} bytes, not {block_size}: "
                "use the same --block-size or another --cache-dir"
            )

    def verified_dir(self, digest: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "blobs" / algorithm / hexpart

    def pending_dir(self, digest: str, registry: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "pending" / _safe_component(registry) / algorithm / hexpart

    def is_verified(self, digest: str) -> bool:
        return (self.verified_dir(digest) / "verified").exists()

    # Pending first, then verified: promote() moves files in that direction, so a block in
    # transit is found in one of the two and never taken for missing.

    def read_block(self, digest: str, index: int, registry: str) -> bytes | None:
        for directory in (self.pending_dir(digest, registry), self.verified_dir(digest)):
            data = read_checked(directory / str(index))
            if data is not None:
                return data
        return None

    def has_block(self, digest: str, index: int, registry: str) -> bool:
        return (self.pending_dir(digest, registry) / str(index)).exists() or (
            self.verified_dir(digest) / str(index)
        ).exists()

    def unverify(self, digest: str) -> None:
        """A verified blob lost a block: what is fetched again must be checked again."""
        with suppress(OSError):
            (self.verified_dir(digest) / "verified").unlink()

    def write_block(
        self, digest: str, index: int, registry: str, data: bytes, blob_size: int | None = None
    ) -> None:
        # Always pending: only promote(), after the digest matched, puts blocks where every
        # registry may read them.
        directory = self.pending_dir(digest, registry)
        write_atomic(directory / str(index), data, trailer=True)
        if blob_size is not None and not (directory / SIZE_FILE).exists():
            # Lets `regfs cache info` say how much of the blob is cached.
            write_atomic(directory / SIZE_FILE, str(blob_size).encode(), trailer=False)
        self.written_since_evict += len(data)
        if self.written_since_evict > max(self.max_bytes // 20, 64 << 20):
            self.evict()

    def promote(self, digest: str, registry: str) -> None:
        """Move a verified blob's pending blocks where every registry may use them."""
        source = self.pending_dir(digest, registry)
        target = self.verified_dir(digest)
        target.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            for entry in source.iterdir():
                if entry.name.isdigit() or entry.name == SIZE_FILE:
                    with suppress(OSError):
                        os.replace(entry, target / entry.name)
            shutil.rmtree(source, ignore_errors=True)
        write_atomic(target / "verified", b"", trailer=False)

    def purge(self, digest: str, registry: str | None = None) -> None:
        shutil.rmtree(self.verified_dir(digest), ignore_errors=True)
        pending = self.root / "pending"
        registries = (
            [_safe_component(registry)] if registry else [p.name for p in pending.iterdir()]
        )
        algorithm, hexpart = _split(digest)
        for reg in registries:
            shutil.rmtree(pending / reg / algorithm / hexpart, ignore_errors=True)

    # -- documents and tags (small, content-addressed or advisory) ----------------------

    def put_document(self, digest: str, raw: bytes) -> None:
        algorithm, hexpart = _split(digest)
        write_atomic(self.root / "documents" / algorithm / hexpart, raw, trailer=True)

    def get_document(self, digest: str) -> bytes | None:
        algorithm, hexpart = _split(digest)
        return read_checked(self.root / "documents" / algorithm / hexpart)

    def _tag_path(self, registry: str, repo: str, tag: str) -> Path:
        return self.root / "tags" / _safe_component(registry) / repo / "_tags" / tag

    def put_tag(self, registry: str, repo: str, tag: str, digest: str) -> None:
        write_atomic(self._tag_path(registry, repo, tag), digest.encode(), trailer=True)

    def get_tag(self, registry: str, repo: str, tag: str) -> str | None:
        data = read_checked(self._tag_path(registry, repo, tag))
        text = data.decode(errors="replace") if data else None
        return text if text and is_digest(text) else None

    def cached_tags(self, registry: str, repo: str) -> list[str]:
        with suppress(OSError):
            return sorted(os.listdir(self._tag_path(registry, repo, "x").parent))
        return []

    def cached_repos(self, registry: str) -> list[str]:
        base = self.root / "tags" / _safe_component(registry)
        return (
            sorted(str(p.parent.relative_to(base)) for p in base.rglob("_tags"))
            if base.is_dir()
            else []
        )

    # -- size accounting ----------------------------------------------------------------

    def blob_dirs(self) -> list[Path]:
        dirs = [d for alg in (self.root / "blobs").glob("*") for d in alg.iterdir() if d.is_dir()]
        dirs += [d for d in (self.root / "pending").glob("*/*/*") if d.is_dir()]
        return dirs

    def usage(self) -> int:
        return sum(f.stat().st_size for d in self.blob_dirs() for f in d.iterdir() if f.is_file())

    def evict(self, max_bytes: int | None = None) -> int:
        """Remove least recently used blob directories until under the limit; bytes removed."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        self.written_since_evict = 0
        entries = []
        total = 0
        for directory in self.blob_dirs():
            with suppress(OSError):
                files = [f.stat() for f in directory.iterdir() if f.is_file()]
                size = sum(s.st_size for s in files)
                used = max([s.st_mtime for s in files] + [directory.stat().st_mtime])
                entries.append((used, size, directory))
                total += size
        removed = 0
        for _used, size, directory in sorted(entries):
            if total <= limit:
                break
            shutil.rmtree(directory, ignore_errors=True)
            total -= size
            removed += size
        return removed

    def touch(self, digest: str, registry: str) -> None:
        """Mark a blob as used now: eviction goes by last use (newest mtime in its directory)."""
        for directory in (self.verified_dir(digest), self.pending_dir(digest, registry)):
            with suppress(OSError):
                os.utime(directory)


SMALL_BLOB = 256 * 1024


async def blocking(small: bool, call: Callable[..., T], *args: Any) -> T:
    """Run blocking disk or hashing work: inline for small blobs and documents (configs,
    manifests), where a hop to a worker thread costs more than the work; else in a thread."""
    if small:
        return call(*args)
    return await trio.to_thread.run_sync(call, *args)


# -- the cache ---------------------------------------------------------------------------


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    verified: int = 0
    failed: int = 0
    purges: int = 0


@dataclass
class _Flight:
    """One block on its way: readers wait on `done`; `error` says why it did not come."""

    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


@dataclass
class _BlobState:
    """Verification of one blob as its blocks go by in order."""

    algorithm: str
    hasher: hashlib._Hash
    hashed_blocks: int = 0
    verified: bool = False
    mismatch: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)
    background: int = 0  # readahead requests in flight
    landed: bool = False  # a block landed while the hasher held the lock: look again


@dataclass
class ReadStream:
    """Per open file: where the last read ended, and how far ahead to fetch."""

    next_offset: int = 0
    window: int = 0
    scheduled: int = 0  # readahead has looked at blocks below this index already
    # Failed verifications of the blob when this handle first read it: a handle that lived
    # through a failure gets EIO from then on, so the kernel cannot re-read the purged part
    # and complete a whole-file read with bytes that were never checked.
    failures_seen: int | None = None


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
        self.memory: LRUCache[tuple[str, int], bytes] = LRUCache(
            maxsize=max(memory_bytes, block_size), getsizeof=len
        )
        self.readahead_bytes = readahead_bytes
        self.request_blocks = max(1, request_bytes // block_size)
        self.max_background = max_background
        self.offline = offline
        self.flights: dict[tuple[str, int], _Flight] = {}
        self.states: dict[str, _BlobState] = {}
        self.stats = CacheStats()
        self.failures: dict[str, int] = {}  # digest -> failed verifications
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
        state = self.states.get(digest)
        if state is not None:
            return state.verified
        return self.disk is not None and self.disk.is_verified(digest)

    def in_flight(self) -> int:
        return len(self.flights)

    def _state(self, blob: BlobRef) -> _BlobState:
        state = self.states.get(blob.digest)
        if state is None:
            algorithm = blob.digest.split(":", 1)[0]
            state = _BlobState(algorithm, hashlib.new(algorithm))
            state.verified = self.disk is not None and self.disk.is_verified(blob.digest)
            self.states[blob.digest] = state
        return state

    def _cached(self, blob: BlobRef, index: int) -> bool:
        if (blob.digest, index) in self.memory:
            return True
        return self.disk is not None and self.disk.has_block(blob.digest, index, blob.registry)

    # -- reads ------------------------------------------------------------------------

    async def read(
        self, blob: BlobRef, offset: int, size: int, stream: ReadStream | None = None
    ) -> bytes:
        """Exactly the bytes [offset, offset+size) of the blob, short only at its end."""
        end = min(offset + size, blob.size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        failures_before = self.failures.get(blob.digest, 0)
        if stream is not None:
            if stream.failures_seen is None:
                stream.failures_seen = self.failures.get(blob.digest, 0)
            self._check_failures(blob, stream)
            self._read_ahead(blob, stream, offset, end, last)
        parts = []
        for index in range(first, last + 1):
            parts.append(await self.block(blob, index, want_through=last))
        # Not only at the last block: the kernel reads in parallel and out of order, so the
        # read that completes the blob may be any one; it must wait for the verdict.
        await self.verify_if_complete(blob, reads_end=last == self.blocks(blob.size) - 1)
        # Any read that overlapped a failed verification may hold purged bytes; reads that
        # begin after it start clean (no flag left for whoever comes next).
        if self.failures.get(blob.digest, 0) > failures_before:
            raise IntegrityError(f"blob {blob.digest} does not match its digest")
        if stream is not None:
            self._check_failures(blob, stream)
        base = first * self.block_size
        if len(parts) == 1:
            return parts[0][offset - base : end - base]
        return b"".join(parts)[offset - base : end - base]

    async def block(self, blob: BlobRef, index: int, *, want_through: int | None = None) -> bytes:
        """One block, from memory, disk or the network (one fetch however many ask)."""
        key = (blob.digest, index)
        failures_before = self.failures.get(blob.digest, 0)
        for _attempt in range(4):
            data = self.memory.get(key)
            if data is not None:
                self.stats.memory_hits += 1
                return data
            flight = self.flights.get(key)
            if flight is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                if self.failures.get(blob.digest, 0) > failures_before:
                    # The blob failed verification (and was purged) while we waited: fetching
                    # the broken source again would only leave its bytes for the next reader.
                    raise IntegrityError(f"blob {blob.digest} does not match its digest")
                continue
            if self.disk is not None:
                generation = self.states.get(blob.digest)
                data = await blocking(
                    blob.size <= SMALL_BLOB, self.disk.read_block, blob.digest, index, blob.registry
                )
                if self.states.get(blob.digest) is not generation:
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

    def _start_fetch(self, blob: BlobRef, first: int, stop: int, *, background: bool) -> None:
        """Fetch blocks [first, stop) — those not already cached or on their way — in one request."""
        indexes = []
        for index in range(first, stop):
            if (blob.digest, index) in self.flights or (
                index > first and self._cached(blob, index)
            ):
                break
            indexes.append(index)
        if not indexes:
            return
        if self._nursery is None:
            raise RuntimeError("BlockCache used outside running()")
        state = self._state(blob)
        if state.verified:
            # A verified blob lost blocks (evicted, damaged, pruned): bytes fetched again are
            # checked again, from the first block, before it counts as verified once more.
            log.info("blob %s lost cached blocks; verifying it again", blob.digest[:19])
            self.states[blob.digest] = _BlobState(state.algorithm, hashlib.new(state.algorithm))
            if self.disk is not None:
                self.disk.unverify(blob.digest)
        flights = {i: _Flight() for i in indexes}
        for i, flight in flights.items():
            self.flights[(blob.digest, i)] = flight
        if background:
            self._state(blob).background += 1
        self._nursery.start_soon(
            self._fetch_run, blob, indexes[0], indexes[-1] + 1, flights, background
        )

    async def _fetch_run(
        self, blob: BlobRef, first: int, stop: int, flights: dict[int, _Flight], background: bool
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
                joined = b"".join(pending)
                length = self._block_length(blob, index)
                data, rest = joined[:length], joined[length:]
                pending[:] = [rest] if rest else []
                pending_bytes = len(rest)
                # A purge (digest mismatch) since this run began: its bytes belong to the
                # failed attempt and must not outlive it; the waiters fetch afresh.
                if self.states.get(blob.digest) is state:
                    await self._store(blob, index, data)
                    if self.states.get(blob.digest) is not state:  # purged while we wrote
                        self.memory.pop((blob.digest, index), None)
                        if self.disk is not None:
                            await trio.to_thread.run_sync(
                                self.disk.purge, blob.digest, blob.registry
                            )
                self._land(blob.digest, index, flights[index], None)
                index += 1
                await self._hash_in_order(blob)

        start = first * self.block_size
        end = min(blob.size, stop * self.block_size)
        try:
            await blob.source.fetch(start, end, sink)
        except Exception as exc:
            for i in range(index, stop):
                self._land(blob.digest, i, flights[i], exc)
            if not background:
                return  # the waiting readers raise it
            log.info("readahead of %s stopped: %s", blob.digest[:19], exc)
        finally:
            for i in range(index, stop):  # cancelled: readers will try again
                self._land(blob.digest, i, flights[i], None)
            if background:
                state.background -= 1

    def _land(self, digest: str, index: int, flight: _Flight, error: BaseException | None) -> None:
        if self.flights.get((digest, index)) is flight:
            del self.flights[(digest, index)]
        if not flight.done.is_set():
            flight.error = error
            flight.done.set()

    async def _store(self, blob: BlobRef, index: int, data: bytes) -> None:
        # Memory last: a block counts as cached (and the blob may be verified and promoted)
        # only once its disk write is done, or that write lands in pending after the promote.
        try:
            await self._store_on_disk(blob, index, data)
        finally:
            self.memory[(blob.digest, index)] = data

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

    def _read_ahead(
        self, blob: BlobRef, stream: ReadStream, offset: int, end: int, last: int
    ) -> None:
        # The window grows by twice the bytes read in order, not per request: the kernel splits
        # one read (the first MiB, a random 1 MiB pread) into several in-order requests, and
        # that is not yet a stream. Readahead starts once a whole block was read in order.
        if offset == stream.next_offset:
            stream.window = min(self.readahead_bytes, stream.window + 2 * (end - offset))
        else:
            stream.window = 0
            stream.scheduled = 0
        stream.next_offset = end
        if stream.window < 2 * self.block_size or blob.source is None or self.offline:
            return
        state = self._state(blob)
        stop = min(self.blocks(blob.size), last + 1 + stream.window // self.block_size)
        # Start past what earlier reads of this stream already looked at: checking each block
        # of the window again on every 128 KiB read cost two stat calls per block.
        index = max(last + 1, stream.scheduled)
        while index < stop and state.background < self.max_background:
            key = (blob.digest, index)
            if key in self.flights or key in self.memory:
                index += 1
                continue
            if self.disk is not None and self.disk.has_block(blob.digest, index, blob.registry):
                self._start_load(blob, index)  # from disk into memory ahead of the reader
                index += 1
                continue
            if state.verified:
                break  # a verified blob missing a block: only a reader's need refetches it
            chunk_stop = min(stop, index + self.request_blocks)
            self._start_fetch(blob, index, chunk_stop, background=True)
            index = chunk_stop
        stream.scheduled = index

    def _start_load(self, blob: BlobRef, index: int) -> None:
        assert self._nursery is not None
        flight = self.flights[(blob.digest, index)] = _Flight()
        self._state(blob).background += 1
        self._nursery.start_soon(self._load_run, blob, index, flight)

    async def _load_run(self, blob: BlobRef, index: int, flight: _Flight) -> None:
        """Read one block from disk into memory; readers of it wait on its flight."""
        state = self._state(blob)
        try:
            assert self.disk is not None
            data = await trio.to_thread.run_sync(
                self.disk.read_block, blob.digest, index, blob.registry
            )
            # Not after a purge: the file may be from the failed attempt.
            fits = data is not None and len(data) == self._block_length(blob, index)
            if fits and data is not None and self.states.get(blob.digest) is state:
                self.stats.disk_hits += 1
                self.memory[(blob.digest, index)] = data
        finally:
            state.background -= 1
            self._land(blob.digest, index, flight, None)  # a miss: readers look again

    # -- verification -------------------------------------------------------------------

    async def _advance_hash(self, blob: BlobRef, state: _BlobState, *, fetch_missing: bool) -> None:
        """Feed the blob's blocks to its hasher in order, as far as they are at hand."""
        total = self.blocks(blob.size)
        async with state.lock:
            if self.states.get(blob.digest) is not state:
                return  # judged (and purged) while we waited for the lock: judge it once
            while not state.verified and state.hashed_blocks < total:
                index = state.hashed_blocks
                data = self.memory.get((blob.digest, index))
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

    async def _finish(self, blob: BlobRef, state: _BlobState) -> None:
        actual = f"{state.algorithm}:{state.hasher.hexdigest()}"
        if actual == blob.digest:
            state.verified = True
            self.stats.verified += 1
            if self.disk is not None:
                await blocking(
                    blob.size <= SMALL_BLOB, self.disk.promote, blob.digest, blob.registry
                )
            log.debug("verified %s", blob.digest)
            return
        log.error("blob %s does not match its digest (got %s): purged", blob.digest, actual)
        self.stats.failed += 1
        self.failures[blob.digest] = self.failures.get(blob.digest, 0) + 1
        state.mismatch = True  # readers holding this state see it while the purge runs
        await self.purge(blob.digest, blob.registry)
        self.states[blob.digest] = _BlobState(state.algorithm, hashlib.new(state.algorithm))

    def _check_failures(self, blob: BlobRef, stream: ReadStream) -> None:
        if self.failures.get(blob.digest, 0) > (stream.failures_seen or 0):
            raise IntegrityError(f"blob {blob.digest} failed verification while open")

    async def verify_if_complete(self, blob: BlobRef, *, reads_end: bool = True) -> None:
        """Called by every read: if every block has been read, check the digest before that
        read returns, so a whole-file read never ends with wrong bytes."""
        state = self._state(blob)
        if state.verified:
            return
        if not state.mismatch:
            total = self.blocks(blob.size)
            # Hash what is at hand; a partial (random) reader does not pay for the rest. The
            # fetch task hashes blocks as they land, so a blob whose next block to hash is
            # not in memory is not complete yet (or was read in another mount): the full
            # check, with its stat calls, runs only when the end of the blob is read then.
            next_at_hand = (blob.digest, state.hashed_blocks) in self.memory
            if (next_at_hand or reads_end) and all(
                self._cached(blob, i) for i in range(state.hashed_blocks, total)
            ):
                await self._advance_hash(blob, state, fetch_missing=True)
            state = self._state(blob)
        if state.mismatch:
            state.mismatch = False
            raise IntegrityError(f"blob {blob.digest} does not match its digest")

    async def purge(self, digest: str, registry: str | None = None) -> None:
        self.stats.purges += 1
        for key in [k for k in self.memory if k[0] == digest]:
            self.memory.pop(key, None)
        if self.disk is not None:
            # Not in a thread: no other task may see the failed attempt's files half-removed
            # (rare: only after a digest mismatch).
            self.disk.purge(digest, registry)
        self.states.pop(digest, None)
        await trio.lowlevel.checkpoint()

    # -- whole small blobs (configs) ----------------------------------------------------

    async def read_all(self, blob: BlobRef) -> bytes:
        data = await self.read(blob, 0, blob.size)
        if not self.is_verified(blob.digest):
            raise IntegrityError(f"blob {blob.digest} could not be verified")
        return data
