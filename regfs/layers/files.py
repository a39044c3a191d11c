"""LayerFiles: the indexes of a mount's layers, and reads of the files inside them.

An index is loaded from the disk cache's derived area or built by one streamed pass
(build.py) in a worker thread, once per digest however many ask; the build runs as a trio
system task so a reader that gives up (interrupted, or timed out) does not stop it for the
others. A waiter fails only after no build has made progress for `timeout` seconds: a large
layer over a slow link may take much longer than that, and still be worth waiting for.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import trio
from cachetools import LRUCache

from .. import fileio
from ..cache.blob import BlobRef
from ..cache.blocks import BlockCache
from ..cache.disk import DiskCache
from ..cache.readahead import ReadStream
from ..errors import IntegrityError, TransientError
from ..oci.entry import Entry
from . import build as builder
from .index import FLAT_KIND, KIND, DamagedIndex, Format, LayerIndex, Span, decode, encode
from .spans import Spans, pread
from .streams import BlobFile
from .toc import FullPassNeeded
from .tocfiles import TocFiles

log = logging.getLogger(__name__)

# Indexes kept in memory, by approximate size (an index dropped is loaded again from disk).
INDEX_BYTES = 128 << 20
BUILD_THREADS = 8  # index builds at once (mostly waiting on the network)


@dataclass(frozen=True)
class BuildProgress:
    digest: str
    done: int  # compressed bytes read
    total: int  # the blob's size
    rate: float  # bytes per second since the build began


class _Build:
    def __init__(self, blob: BlobRef) -> None:
        self.blob = blob
        self.began = time.monotonic()
        self.file: BlobFile | None = None
        self.finished = trio.Event()
        self.result: LayerIndex | None = None
        self.error: Exception | None = None

    @property
    def done(self) -> int:
        return self.file.furthest if self.file is not None else 0


_copies = itertools.count()


@dataclass
class _CopyFile:
    copy: builder.FlatCopy
    temporary: Path | None  # None: an anonymous temporary file (no disk cache)
    path: Path | None
    digest: str  # the layer's

    def discard(self) -> None:
        self.copy.target.close()
        if self.temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)


def _footprint(index: LayerIndex) -> int:
    return len(index.gzip_index) + 300 * len(index.entries) + 100 * len(index.spans)


def _remove_orphans(path: Path) -> None:
    """Copies half-written by a process that is gone (killed during a build): nothing else
    would remove them, since the cache's scan only knows complete artifacts."""
    for stale in path.parent.glob(f"{path.name}.tmp-*"):
        pid = stale.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and someone else's
    return True


class LayerFiles:
    """Indexes of layers and reads of the files inside them, for one mount."""

    def __init__(
        self,
        cache: BlockCache,
        disk: DiskCache | None,
        *,
        span_bytes: int = 4 << 20,
        inflated_bytes: int = 64 << 20,
        timeout: float = 60.0,
    ) -> None:
        self.cache = cache
        self.disk = disk
        self.span_bytes = span_bytes
        self.timeout = timeout
        self.spans = Spans(cache, inflated_bytes)
        self._indexes: LRUCache[str, LayerIndex] = LRUCache(
            maxsize=INDEX_BYTES, getsizeof=_footprint
        )
        self._builds: dict[str, _Build] = {}
        self._builds_finished = 0
        self._build_limiter = trio.CapacityLimiter(BUILD_THREADS)
        self._flat_locks: dict[str, trio.Lock] = {}
        self._flat_files: dict[str, IO[bytes]] = {}  # without a disk cache: temporary files
        self.builds = 0  # indexes built (not loaded) by a full pass
        self.tocs = TocFiles(cache, inflated_bytes, self.spans.limiter)
        self.toc_indexes = 0  # indexes made from a layer's own TOC
        # TOC layers fetched whole (and verified) anyway: their uncompressed streams' sha256.
        self._whole_diff_ids: dict[str, str] = {}
        self._diff_locks: dict[str, trio.Lock] = {}

    # -- indexes ------------------------------------------------------------------------

    async def index(self, blob: BlobRef, diff_id: str | None) -> LayerIndex:
        """The layer's index: loaded from the disk cache, or built by one streamed pass
        through the block cache (one build per digest however many ask; concurrent layers
        build concurrently). Raises IntegrityError if the uncompressed stream does not match
        diff_id (logged), or if the blob is not a tar (gzip, zstd or plain)."""
        index = self._indexes.get(blob.digest)
        if index is None:
            index = await self._wait(self._build_for(blob))
        if index.format.from_toc:
            # Its diff_id is not known until the blob has been fetched whole: the index
            # given out carries the one the config claims, which reads compare then.
            index = replace(index, diff_id=diff_id or "")
            await self._check_whole(blob, index.diff_id)
            return index
        if diff_id is not None and index.diff_id != diff_id:
            log.error(
                "layer %s: its uncompressed stream is %s, not the diff_id %s the config says",
                blob.digest,
                index.diff_id,
                diff_id,
            )
            raise IntegrityError(
                f"layer {blob.digest} does not match its diff_id {diff_id}", digest=blob.digest
            )
        return index

    def progress(self) -> list[BuildProgress]:
        """Builds in progress: digest, bytes done, total, rate."""
        now = time.monotonic()
        return [
            BuildProgress(d, b.done, b.blob.size, b.done / max(1e-3, now - b.began))
            for d, b in self._builds.items()
        ]

    def _build_for(self, blob: BlobRef) -> _Build:
        build = self._builds.get(blob.digest)
        if build is None:
            build = self._builds[blob.digest] = _Build(blob)
            trio.lowlevel.spawn_system_task(self._run_build, build)
        return build

    async def _wait(self, build: _Build) -> LayerIndex:
        seen, quiet_since = -1, time.monotonic()
        while not build.finished.is_set():
            with trio.move_on_after(min(1.0, self.timeout)):
                await build.finished.wait()
            progress = self._builds_finished + sum(b.done for b in self._builds.values())
            now = time.monotonic()
            if progress != seen:
                seen, quiet_since = progress, now
            elif now - quiet_since >= self.timeout and not build.finished.is_set():
                log.error(
                    "layer %s: its index made no progress for %ss", build.blob.digest, self.timeout
                )
                raise TransientError(
                    f"indexing layer {build.blob.digest}: no progress for {self.timeout:g}s",
                    digest=build.blob.digest,
                )
        if build.error is not None:
            raise build.error
        assert build.result is not None
        return build.result

    async def _run_build(self, build: _Build) -> None:
        digest = build.blob.digest
        try:
            index = await self._load(digest)
            if index is None and TocFiles.has_toc(build.blob):
                index = await self._from_toc(build.blob)
            if index is None:
                index = await trio.to_thread.run_sync(
                    self._build_blocking, build, limiter=self._build_limiter
                )
                self.builds += 1
                if self.disk is not None:
                    await trio.to_thread.run_sync(
                        self.disk.put_derived, KIND, digest, encode(index)
                    )
            build.result = index
            if _footprint(index) <= self._indexes.maxsize:
                self._indexes[digest] = index
        except Exception as e:  # a system task must not raise: the waiters get it
            log.warning("layer %s could not be indexed: %s", digest, e)
            build.error = e
        finally:
            del self._builds[digest]
            self._builds_finished += 1
            build.finished.set()

    async def _from_toc(self, blob: BlobRef) -> LayerIndex | None:
        """The index from the layer's own TOC; None when the TOC cannot stand for the tar
        (toc.FullPassNeeded: chunks without digests, names not UTF-8): then the full pass
        indexes it."""
        try:
            index = await self.tocs.index(blob)
        except FullPassNeeded as e:
            log.info(
                "layer %s: its TOC is not used (%s); indexing it by a full pass", blob.digest, e
            )
            return None
        self.toc_indexes += 1
        if self.disk is not None:
            await trio.to_thread.run_sync(self.disk.put_derived, KIND, blob.digest, encode(index))
        return index

    async def _check_whole(self, blob: BlobRef, claimed: str) -> None:
        """A TOC layer whose blob has been fetched whole (and verified against its digest)
        is decompressed once more from the cache and compared with the diff_id its config
        claims, as any layer is: a TOC can disagree with the tar it describes. A mismatch
        fails that use of the layer (IntegrityError, logged)."""
        digest = blob.digest
        computed = self._whole_diff_ids.get(digest)
        if not claimed or (computed is None and not self.cache.is_verified(digest)):
            return
        if computed is None:
            async with self._diff_locks.setdefault(digest, trio.Lock()):
                computed = self._whole_diff_ids.get(digest)
                if computed is None:
                    made = await trio.to_thread.run_sync(
                        self._build_blocking, _Build(blob), limiter=self._build_limiter
                    )
                    computed = self._whole_diff_ids[digest] = made.diff_id
        if computed != claimed:
            log.error(
                "layer %s: fetched whole, its uncompressed stream is %s, not the diff_id %s "
                "the config says (its TOC may disagree with its tar)",
                digest,
                computed,
                claimed,
            )
            raise IntegrityError(f"layer {digest} does not match its diff_id", digest=digest)

    async def _load(self, digest: str) -> LayerIndex | None:
        if self.disk is None:
            return None
        data = await trio.to_thread.run_sync(self.disk.get_derived, KIND, digest)
        if data is None:
            return None
        try:
            return decode(data, digest)
        except DamagedIndex as e:
            log.warning("layer %s: persisted index not used (%s); building it again", digest, e)
            return None

    def _build_blocking(self, build: _Build) -> LayerIndex:
        # Read ahead of: the fetches overlap the inflation (one block at a time otherwise).
        # Only over a disk tier: there a block fetched ahead and evicted from memory before
        # the pass reaches it is still at hand, not fetched again.
        stream = ReadStream() if self.disk is not None else None
        build.file = BlobFile(self.cache, build.blob, stream=stream)
        copies: list[_CopyFile] = []

        def flat_copy() -> builder.FlatCopy:
            copies.append(self._new_copy(build.blob))
            return copies[-1].copy

        try:
            index = builder.build(build.file, self.span_bytes, flat_copy)
            if index.flat:
                if copies and not copies[0].copy.abandoned:
                    spans = self._keep(copies.pop(), index.size)
                else:  # it had seek points early on, then a frame too big to read from
                    spans = self._write_flat(build.blob, index.size)
                index = replace(index, spans=spans)
        finally:
            for unused in copies:
                unused.discard()
        return index

    # -- single-frame zstd layers: a decompressed copy ------------------------------------

    def _new_copy(self, blob: BlobRef) -> _CopyFile:
        """Where a copy is written: beside its place in the disk cache's derived area, or an
        anonymous temporary file without a disk cache."""
        if self.disk is None:
            target: IO[bytes] = tempfile.TemporaryFile(prefix="regfs-layer-")  # noqa: SIM115
            return _CopyFile(builder.FlatCopy(target, self.span_bytes), None, None, blob.digest)
        path = self.disk.derived_path(FLAT_KIND, blob.digest)
        _remove_orphans(path)
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{next(_copies)}")
        target = open(temporary, "wb")  # noqa: SIM115 (closed by _keep or discard)
        return _CopyFile(builder.FlatCopy(target, self.span_bytes), temporary, path, blob.digest)

    def _keep(self, made: _CopyFile, size: int) -> tuple[Span, ...]:
        digests = made.copy.close()
        if made.path is None or made.temporary is None:
            self._flat_files[made.digest] = made.copy.target
        else:
            made.copy.target.close()
            os.replace(made.temporary, made.path)
        chunks = builder.flat_chunks(size, self.span_bytes)
        return tuple(Span(a, b, 0, 0, d) for (a, b), d in zip(chunks, digests, strict=True))

    def _write_flat(self, blob: BlobRef, size: int) -> tuple[Span, ...]:
        """Decompress the layer again (a second pass, over the now cached blob)."""
        made = self._new_copy(blob)
        try:
            builder.write_flat(BlobFile(self.cache, blob), made.copy)
            return self._keep(made, size)
        except BaseException:
            made.discard()
            raise

    async def _read_flat(self, blob: BlobRef, index: LayerIndex, k: int) -> bytes:
        span = index.spans[k]
        while True:
            if self.disk is None and blob.digest in self._flat_files:
                fd = self._flat_files[blob.digest].fileno()
                return await trio.to_thread.run_sync(
                    fileio.pread, fd, span.end - span.start, span.start
                )
            if self.disk is not None:
                path = self.disk.derived_path(FLAT_KIND, blob.digest)
                with contextlib.suppress(FileNotFoundError):
                    return await trio.to_thread.run_sync(
                        pread, path, span.start, span.end - span.start
                    )
            await self._remake_flat(blob, index)

    async def _remake_flat(self, blob: BlobRef, index: LayerIndex) -> None:
        """The copy was evicted or cleared: make it again, once however many read."""
        lock = self._flat_locks.setdefault(blob.digest, trio.Lock())
        async with lock:
            if self.disk is not None and self.disk.derived_path(FLAT_KIND, blob.digest).exists():
                return  # made again while this reader waited
            log.info("layer %s: making its decompressed copy again", blob.digest)
            spans = await trio.to_thread.run_sync(
                self._write_flat, blob, index.size, limiter=self._build_limiter
            )
            if spans != index.spans:
                raise IntegrityError(f"layer {blob.digest}: its copy differs from its index")

    # -- reads --------------------------------------------------------------------------

    async def read(
        self, blob: BlobRef, index: LayerIndex, entry: Entry, offset: int, size: int
    ) -> bytes:
        """Exactly bytes [offset, offset+size) of the file `entry` (short only at its end);
        sparse holes read as zeros. Every compressed byte used is checked against the span
        digest recorded at index time before it is inflated (IntegrityError otherwise)."""
        end = min(entry.size, offset + max(0, size))
        if offset >= end:
            return b""
        if entry.sparse is None:
            until = entry.offset + entry.size
            return await self._stream(blob, index, entry.offset + offset, entry.offset + end, until)
        until = entry.offset + sum(length for _, length in entry.sparse)  # its data, stored
        parts: list[bytes] = []
        at, stored = offset, entry.offset  # `stored`: where the next segment's data is
        for start, length in entry.sparse:
            if start + length <= at:
                stored += length
                continue
            if start >= end:
                break
            if start > at:
                parts.append(bytes(start - at))
                at = start
            stop = min(end, start + length)
            first = stored + (at - start)
            parts.append(await self._stream(blob, index, first, first + stop - at, until))
            at = stop
            stored += length
        parts.append(bytes(end - at))
        return b"".join(parts)

    async def _stream(
        self, blob: BlobRef, index: LayerIndex, start: int, end: int, until: int
    ) -> bytes:
        """Bytes [start, end) of the layer's uncompressed stream (of a TOC layer: of its
        files' data stream); the file read ends at `until` there (a TOC reader's readahead
        stops at it)."""
        if index.format.from_toc:
            await self._check_whole(blob, index.diff_id)
            data = await self.tocs.read(blob, index, start, end, until)
            # This read may have fetched the blob's last missing block.
            await self._check_whole(blob, index.diff_id)
            return data
        if index.format is Format.TAR:
            return await self.cache.read(blob, start, end - start)
        k = bisect.bisect_right(index.span_starts, start) - 1
        parts = []
        while start < end:
            span = index.spans[k]
            data = await self.spans.span(blob, index, k, self._read_flat)
            parts.append(data[start - span.start : min(end, span.end) - span.start])
            start = span.end
            k += 1
        return b"".join(parts)
