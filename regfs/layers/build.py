"""The one streamed pass that indexes a layer (blocking: run in a worker thread).

The blob is read once, in order, through the block cache (`BlobFile`); its format is told by
its first bytes (gzip 1f8b, zstd 28b52ffd, anything else is tried as a plain tar), whatever the
media type says. The uncompressed stream goes to stdlib tarfile in stream mode for the
entries and to sha256 for the diff_id, in a thread beside the decompressing one (`scan`).
gzip seek points are indexed_gzip's (zran), grown a step behind the stream in a third thread
that reads the blob again from the cache's memory; zstd seek points are frame starts at least
`span_bytes` apart. Each span's compressed bytes are hashed as they go by, so reads check them
later without trusting the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import sys
import tarfile
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any

import indexed_gzip
import trio
import zstandard

from ..errors import IntegrityError
from ..oci.entry import Entry
from .entries import ENCODING, ERRORS, entry_of
from .index import Format, LayerIndex, Span
from .streams import GZIP_MAGIC, ZSTD_MAGIC, BlobFile, GzipMembers, ZstdFrames

# tarfile's stream mode copies what is left of its buffer on every read, a 512-byte header's
# too: with 1 MiB, a layer of small files spent more time there than parsing (measured: 200
# MB of 20 000 files, 3.95 s with 1 MiB, 1.71 s with 64 KiB).
TAR_BUFFER = 64 << 10
# Uncompressed bytes handed from the decompressing thread to tarfile's at a time.
PIECE = 4 << 20
# How far zran's index grows at a time, behind the stream inflated for tarfile: each growth
# inflates again from the last seek point (up to a span), so steps are several spans long.
STEP = 16 << 20
# How far the inflater for tarfile may run ahead of zran's index: the blocks between the two
# readers stay in the memory cache until zran passes them.
MAX_LAG = 4 * STEP
# A zstd span this many times span_bytes (a layer of one frame) is read from a decompressed
# copy instead: one small read would otherwise decompress the whole frame.
FLAT_FACTOR = 2


class SpanHasher:
    """sha256 of each compressed span, fed the blob in order and told where spans end.
    Keeps only bytes that a span end still to come may fall in: `settle(offset)` says none
    will fall below `offset` (zstd: frames start where decompression has got to), the rest is
    hashed as it goes. `overlap`: gzip spans begin one byte before their seek point (zran may
    need bits of that byte), so that byte is in two spans."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self.buffer = bytearray()
        self.buffer_at = 0  # blob offset of buffer[0]; bytes before it are in `sha`
        self.sha = hashlib.sha256()
        self.starts: list[tuple[int, int]] = [(0, 0)]  # (uncompressed, compressed) of each span
        self.digests: list[str] = []
        self.ends: list[int] = []  # compressed end of each span hashed

    def feed(self, offset: int, data: bytes) -> None:
        assert offset == self.buffer_at + len(self.buffer)
        self.buffer += data

    def settle(self, offset: int) -> None:
        self._hash_to(offset - self.overlap)

    def cut(self, uncompressed: int, compressed: int) -> None:
        """A span begins at this seek point: the previous one is complete."""
        start = max(self.starts[-1][1], compressed - self.overlap)
        carried = bytes(self.buffer[start - self.buffer_at : compressed - self.buffer_at])
        self._close_span(compressed)
        self.sha.update(carried)
        self.starts.append((uncompressed, start))

    def finish(self, size: int, compressed_size: int) -> tuple[Span, ...]:
        self._close_span(compressed_size)
        ends = [u for u, _c in self.starts[1:]] + [size]
        return tuple(
            Span(start, end, cstart, cend, digest)
            for (start, cstart), end, cend, digest in zip(
                self.starts, ends, self.ends, self.digests, strict=True
            )
        )

    def _close_span(self, end: int) -> None:
        self._hash_to(end)
        assert self.buffer_at == end, "span end beyond the bytes fed"
        self.digests.append("sha256:" + self.sha.hexdigest())
        self.ends.append(end)
        self.sha = hashlib.sha256()

    def _hash_to(self, offset: int) -> None:
        n = min(len(self.buffer), offset - self.buffer_at)
        if n > 0:
            self.sha.update(memoryview(self.buffer)[:n])
            del self.buffer[:n]
            self.buffer_at += n


class FlatCopy:
    """A decompressed copy of a layer being written, with the sha256 of each `span_bytes`
    chunk (reads check the copy: it is a file on disk like any other)."""

    def __init__(self, target: IO[bytes], span_bytes: int) -> None:
        self.target = target
        self.span_bytes = span_bytes
        self.sha = hashlib.sha256()
        self.filled = 0  # bytes in the chunk being hashed
        self.digests: list[str] = []
        self.abandoned = False  # the layer has seek points: no copy needed

    def write(self, data: bytes) -> None:
        if self.abandoned:
            return
        self.target.write(data)
        view = memoryview(data)
        while view:
            n = min(len(view), self.span_bytes - self.filled)
            self.sha.update(view[:n])
            self.filled += n
            view = view[n:]
            if self.filled == self.span_bytes:
                self._next_chunk()

    def close(self) -> list[str]:
        if self.filled or not self.digests:
            self._next_chunk()
        self.target.flush()
        os.fsync(self.target.fileno())
        return self.digests

    def _next_chunk(self) -> None:
        self.digests.append("sha256:" + self.sha.hexdigest())
        self.sha, self.filled = hashlib.sha256(), 0


class Pieces(io.RawIOBase):
    """The uncompressed stream as the decompressing thread hands it over (tarfile reads
    this in the other thread), hashed a piece at a time for the diff_id."""

    def __init__(self, pieces: queue.Queue[bytes], abort: threading.Event) -> None:
        self.pieces = pieces
        self.abort = abort
        self.piece = memoryview(b"")
        self.sha = hashlib.sha256()
        self.size = 0
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self.piece:
            if self.ended:
                return 0
            try:
                data = self.pieces.get(timeout=0.1)
            except queue.Empty:
                if self.abort.is_set():
                    raise Aborted from None
                continue
            self.ended = not data
            self.sha.update(data)
            self.size += len(data)
            self.piece = memoryview(data)
        n = min(len(buffer), len(self.piece))
        buffer[:n] = self.piece[:n]
        self.piece = self.piece[n:]
        return n


class Aborted(Exception):
    """The decompressing side failed: the tar side stops."""


def scan(next_piece: Callable[[], bytes]) -> tuple[tuple[Entry, ...], str, int]:
    """Entries, sha256 and size of the uncompressed stream `next_piece` gives (b"" at its
    end). Decompressing (this thread) and tarfile plus sha256 (another) run side by side:
    zran and hashlib release the GIL, so two cores do the work of a `gzip -dc | tar t`."""
    pieces: queue.Queue[bytes] = queue.Queue(maxsize=2)
    abort, done = threading.Event(), threading.Event()
    found: dict[str, Any] = {}

    def consume() -> None:
        try:
            stream = Pieces(pieces, abort)
            found["entries"] = scan_tar(stream)
            while stream.read(TAR_BUFFER):  # the rest of the stream, for its digest
                pass
            found["stream"] = stream
        except BaseException as e:  # handed to the building thread
            found["error"] = e
        finally:
            done.set()

    consumer = threading.Thread(target=consume, name="regfs-layer-tar", daemon=True)
    consumer.start()
    try:
        while not done.is_set():
            piece = next_piece()
            while not done.is_set():
                try:
                    pieces.put(piece, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not piece:
                break
    finally:
        if not done.is_set() and sys.exc_info()[0] is not None:
            abort.set()
        consumer.join()
    if "error" in found:
        raise found["error"]
    stream = found["stream"]
    return found["entries"], "sha256:" + stream.sha.hexdigest(), stream.size


def scan_tar(stream: io.RawIOBase) -> tuple[Entry, ...]:
    entries: list[Entry] = []
    try:
        with tarfile.open(
            fileobj=stream,
            mode="r|",
            bufsize=TAR_BUFFER,
            encoding=ENCODING,
            errors=ERRORS,
        ) as tar:
            for member in tar:
                entry = entry_of(member)
                if entry is not None:
                    entries.append(entry)
    except tarfile.ReadError as e:
        if str(e) != "empty file":  # an empty stream is an empty layer
            raise IntegrityError(f"not a tar: {e}") from e
    return tuple(entries)


def build(
    blob_file: BlobFile, span_bytes: int, flat_copy: Callable[[], FlatCopy] | None = None
) -> LayerIndex:
    """Index the blob `blob_file` reads. Raises IntegrityError if it is not a tar. A zstd
    layer is also decompressed into `flat_copy()` as it goes, in case it is one frame."""
    head = blob_file.peek_start(4)
    try:
        if head.startswith(GZIP_MAGIC):
            return _build_gzip(blob_file, span_bytes)
        blob_file.release = True  # the one reader of the blob: nothing reads it again
        if head.startswith(ZSTD_MAGIC):
            return _build_zstd(blob_file, span_bytes, flat_copy() if flat_copy else None)
        entries, diff_id, size = scan(lambda: blob_file.read(PIECE) or b"")
        return LayerIndex(blob_file.blob.digest, entries, Format.TAR, diff_id, size)
    except (zlib.error, zstandard.ZstdError, indexed_gzip.ZranError, EOFError) as e:
        raise IntegrityError(f"layer {blob_file.blob.digest}: {e}") from e
    finally:
        blob_file.close_stream()


def _build_gzip(blob_file: BlobFile, span_bytes: int) -> LayerIndex:
    """Two inflations side by side: stdlib zlib for the stream tarfile and sha256 read
    (this thread and scan's), and zran growing its seek points a step behind it (a thread of
    its own, reading the blob again from the block cache's memory). zran made to produce
    the data itself inflates each piece twice, once to grow the index up to it and once to
    read it: measured 2.5x the time of this."""
    hasher = SpanHasher(overlap=1)
    members = GzipMembers(blob_file)
    token = trio.from_thread.run_sync(trio.lowlevel.current_trio_token)
    # The trailing reader is the blocks' last: it drops them from memory as it passes.
    trailing = BlobFile(
        blob_file.cache, blob_file.blob, on_bytes=hasher.feed, token=token, release=True
    )
    indexer = ZranIndexer(trailing, hasher, span_bytes, lambda: members.produced)
    indexer.start()

    def next_piece() -> bytes:
        indexer.wait_within(MAX_LAG, members.produced)
        return members.read(PIECE) or b""

    try:
        entries, diff_id, size = scan(next_piece)
    except BaseException:
        indexer.stop.set()
        indexer.join()
        raise
    indexer.total = size
    indexer.join()
    if indexer.error is not None:
        raise indexer.error
    spans = hasher.finish(size, blob_file.blob.size)
    digest = blob_file.blob.digest
    return LayerIndex(digest, entries, Format.GZIP, diff_id, size, spans, indexer.exported)


class ZranIndexer(threading.Thread):
    """Grows an indexed_gzip index by seeking a step behind the stream already inflated
    (`produced()`), cutting the span hasher at each new seek point; at `total` it goes to
    the end, reads the rest of the blob for the last span's digest and exports the index."""

    def __init__(
        self, file: BlobFile, hasher: SpanHasher, span_bytes: int, produced: Callable[[], int]
    ) -> None:
        super().__init__(name="regfs-layer-zran", daemon=True)
        self.file = file
        self.hasher = hasher
        self.span_bytes = span_bytes
        self.produced = produced
        self.total: int | None = None  # set when the stream has been read to its end
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.exported = b""
        self.grown = 0  # how far the index has grown (uncompressed)
        self.moved = threading.Condition()

    def wait_within(self, lag: int, produced: int) -> None:
        """Wait while the index is more than `lag` behind `produced` (and still growing):
        on a busy machine this thread falls behind, and the blocks in between pile up."""
        with self.moved:
            while produced - self.grown > lag and self.is_alive() and not self.stop.is_set():
                self.moved.wait(0.1)

    def run(self) -> None:
        try:
            # Only seeks: no buffer of uncompressed data wanted (its default is 4 spans).
            gz = indexed_gzip.IndexedGzipFile(
                fileobj=self.file,
                spacing=self.span_bytes,
                readbuf_size=1 << 20,
                buffer_size=1 << 16,
            )
            with gz:
                self._grow(gz)
                exported = io.BytesIO()
                gz.export_index(fileobj=exported)
                self.exported = exported.getvalue()
            self.file.read_to_end()
        except BaseException as e:  # handed to the building thread
            self.error = e

    def _grow(self, gz: indexed_gzip.IndexedGzipFile) -> None:
        grown, seen = 0, 1  # zran's first point is the stream's start: span 0 starts at 0
        while not self.stop.is_set():
            total = self.total
            ahead = self.produced() if total is None else total
            if total is None and ahead - grown < STEP:
                self.stop.wait(0.02)
                continue
            # A step at a time, however far behind: the span hasher keeps a seek's compressed
            # bytes until its points are cut, and one seek to the front, after this thread
            # had fallen behind on a busy machine, kept hundreds of MiB (peak RSS 820 MiB).
            grown = min(grown + STEP, ahead if total is not None else ahead - ahead % STEP)
            gz.seek(grown)
            points = list(gz.seek_points())
            for uncompressed, compressed in points[seen:]:
                self.hasher.cut(uncompressed, compressed)
            seen = max(seen, len(points))
            with self.moved:
                self.grown = grown
                self.moved.notify_all()
            if total is not None and grown >= total:
                return


def _build_zstd(blob_file: BlobFile, span_bytes: int, copy: FlatCopy | None) -> LayerIndex:
    """Seek points at frame starts at least `span_bytes` apart. A decompressed copy is
    written as the pass goes until the first seek point shows it is not needed (a layer of
    one frame keeps it, and is read from it)."""
    hasher = SpanHasher(overlap=0)
    blob_file.on_bytes = hasher.feed

    def frame(compressed: int, uncompressed: int) -> None:
        if uncompressed - hasher.starts[-1][0] >= span_bytes:
            hasher.cut(uncompressed, compressed)
            if copy is not None:
                copy.abandoned = True

    frames = ZstdFrames(blob_file, frame)

    def next_piece() -> bytes:
        piece = frames.read(PIECE) or b""
        hasher.settle(frames.pending_at)  # no frame starts before what was decompressed
        if copy is not None:
            copy.write(piece)
        return piece

    entries, diff_id, size = scan(next_piece)
    spans = hasher.finish(size, blob_file.blob.size)
    flat = max((s.end - s.start for s in spans), default=0) > FLAT_FACTOR * span_bytes
    digest = blob_file.blob.digest
    return LayerIndex(digest, entries, Format.ZSTD, diff_id, size, spans, flat=flat)


# -- a flat copy of a single-frame zstd layer ---------------------------------------------


def flat_chunks(size: int, span_bytes: int) -> list[tuple[int, int]]:
    return [(at, min(size, at + span_bytes)) for at in range(0, size, span_bytes)] or [(0, 0)]


def write_flat(blob_file: BlobFile, copy: FlatCopy) -> list[str]:
    """Decompress the layer into the copy (a second pass, when the first could not keep
    one); the digests of its chunks."""
    frames = ZstdFrames(blob_file)
    while piece := frames.read(PIECE):
        copy.write(piece)
    return copy.close()
