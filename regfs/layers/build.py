"""The one streamed pass that indexes a layer (blocking: run in a worker thread).

The blob is read once, in order, through the block cache (`BlobFile`); its format is told by
its first bytes (gzip 1f8b, zstd 28b52ffd, anything else is tried as a plain tar), whatever the
media type says. The uncompressed stream goes to stdlib tarfile in stream mode for the
entries and to sha256 for the diff_id; gzip seek points are indexed_gzip's (zran), made as
the stream is read; zstd seek points are frame starts at least `span_bytes` apart. Each span's
compressed bytes are hashed as they go by, so later reads check them without trusting the
cache.
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

TAR_BUFFER = 1 << 20
# Uncompressed bytes handed from the decompressing thread to tarfile's at a time.
PIECE = 4 << 20
# How far zran's index grows at a time, behind the stream inflated for tarfile: each growth
# inflates again from the last seek point (up to a span), so steps are several spans long.
STEP = 16 << 20
# A zstd span this many times span_bytes (a layer of one frame) is read from a decompressed
# copy instead: one small read would otherwise decompress the whole frame.
FLAT_FACTOR = 2


class SpanHasher:
    """sha256 of each compressed span, fed the blob in order and told where spans end.
    Keeps only the bytes of the span in progress. `overlap`: gzip spans begin one byte before
    their seek point (zran may need bits of that byte), so that byte is in two spans."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self.buffer = bytearray()
        self.buffer_at = 0
        self.starts: list[tuple[int, int]] = [(0, 0)]  # (uncompressed, compressed) of each span
        self.digests: list[str] = []
        self.ends: list[int] = []  # compressed end of each span hashed

    def feed(self, offset: int, data: bytes) -> None:
        assert offset == self.buffer_at + len(self.buffer)
        self.buffer += data

    def cut(self, uncompressed: int, compressed: int) -> None:
        """A span begins at this seek point: the previous one is complete."""
        cstart = self.starts[-1][1]
        self._hash(cstart, compressed)
        self.ends.append(compressed)
        start = max(cstart, compressed - self.overlap)
        del self.buffer[: start - self.buffer_at]
        self.buffer_at = start
        self.starts.append((uncompressed, start))

    def finish(self, size: int, compressed_size: int) -> tuple[Span, ...]:
        self._hash(self.starts[-1][1], compressed_size)
        self.ends.append(compressed_size)
        ends = [u for u, _c in self.starts[1:]] + [size]
        return tuple(
            Span(start, end, cstart, cend, digest)
            for (start, cstart), end, cend, digest in zip(
                self.starts, ends, self.ends, self.digests, strict=True
            )
        )

    def _hash(self, start: int, end: int) -> None:
        view = memoryview(self.buffer)[start - self.buffer_at : end - self.buffer_at]
        self.digests.append("sha256:" + hashlib.sha256(view).hexdigest())
        view.release()


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


def build(blob_file: BlobFile, span_bytes: int) -> LayerIndex:
    """Index the blob `blob_file` reads. Raises IntegrityError if it is not a tar."""
    head = blob_file.peek_start(4)
    try:
        if head.startswith(GZIP_MAGIC):
            return _build_gzip(blob_file, span_bytes)
        if head.startswith(ZSTD_MAGIC):
            return _build_zstd(blob_file, span_bytes)
        entries, diff_id, size = scan(lambda: blob_file.read(PIECE) or b"")
        return LayerIndex(blob_file.blob.digest, entries, Format.TAR, diff_id, size)
    except (zlib.error, zstandard.ZstdError, indexed_gzip.ZranError, EOFError) as e:
        raise IntegrityError(f"layer {blob_file.blob.digest}: {e}") from e


def _build_gzip(blob_file: BlobFile, span_bytes: int) -> LayerIndex:
    """Two inflations side by side: stdlib zlib for the stream tarfile and sha256 read
    (this thread and scan's), and zran growing its seek points a step behind it (a thread of
    its own, reading the blob again from the block cache's memory). zran made to produce
    the data itself inflates each piece twice, once to grow the index up to it and once to
    read it: measured 2.5x the time of this."""
    hasher = SpanHasher(overlap=1)
    members = GzipMembers(blob_file)
    token = trio.from_thread.run_sync(trio.lowlevel.current_trio_token)
    trailing = BlobFile(blob_file.cache, blob_file.blob, on_bytes=hasher.feed, token=token)
    indexer = ZranIndexer(trailing, hasher, span_bytes, lambda: members.produced)
    indexer.start()
    try:
        entries, diff_id, size = scan(lambda: members.read(PIECE) or b"")
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

    def run(self) -> None:
        try:
            gz = indexed_gzip.IndexedGzipFile(
                fileobj=self.file, spacing=self.span_bytes, readbuf_size=1 << 20
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
            grown = ahead if total is not None else ahead - ahead % STEP
            gz.seek(grown)
            points = list(gz.seek_points())
            for uncompressed, compressed in points[seen:]:
                self.hasher.cut(uncompressed, compressed)
            seen = max(seen, len(points))
            if total is not None:
                return


def _build_zstd(blob_file: BlobFile, span_bytes: int) -> LayerIndex:
    hasher = SpanHasher(overlap=0)
    blob_file.on_bytes = hasher.feed

    def frame(compressed: int, uncompressed: int) -> None:
        if uncompressed - hasher.starts[-1][0] >= span_bytes:
            hasher.cut(uncompressed, compressed)

    frames = ZstdFrames(blob_file, frame)
    entries, diff_id, size = scan(lambda: frames.read(PIECE) or b"")
    spans = hasher.finish(size, blob_file.blob.size)
    flat = max((s.end - s.start for s in spans), default=0) > FLAT_FACTOR * span_bytes
    digest = blob_file.blob.digest
    return LayerIndex(digest, entries, Format.ZSTD, diff_id, size, spans, flat=flat)


# -- a flat copy of a single-frame zstd layer ---------------------------------------------


def flat_chunks(size: int, span_bytes: int) -> list[tuple[int, int]]:
    return [(at, min(size, at + span_bytes)) for at in range(0, size, span_bytes)] or [(0, 0)]


def write_flat(blob_file: BlobFile, target: IO[bytes], span_bytes: int) -> list[str]:
    """Decompress the layer into `target`; the sha256 of each `span_bytes` chunk written,
    which reads check (the copy is a file on disk, so it is checked like anything else)."""
    frames = ZstdFrames(blob_file)
    digests = []
    while True:
        chunk = frames.read(span_bytes) or b""
        while chunk and len(chunk) < span_bytes:
            more = frames.read(span_bytes - len(chunk))
            if not more:
                break
            chunk += more
        if not chunk:
            break
        target.write(chunk)
        digests.append("sha256:" + hashlib.sha256(chunk).hexdigest())
    target.flush()
    os.fsync(target.fileno())
    return digests
