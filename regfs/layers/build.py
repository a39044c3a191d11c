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
import tarfile
import zlib
from collections.abc import Callable
from typing import IO, BinaryIO

import indexed_gzip
import zstandard

from ..errors import IntegrityError
from ..oci.entry import Entry
from .entries import ENCODING, ERRORS, entry_of
from .index import Format, LayerIndex, Span
from .streams import GZIP_MAGIC, ZSTD_MAGIC, BlobFile, ZstdFrames

TAR_BUFFER = 1 << 20
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


class Tap(io.RawIOBase):
    """The uncompressed stream, hashed and counted as tarfile reads it; `after_read` runs
    after each read (gzip: collect new seek points)."""

    def __init__(self, source: BinaryIO | io.RawIOBase, after_read: Callable[[], None]) -> None:
        self.source = source
        self.after_read = after_read
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.source.read(len(buffer)) or b""
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        self.size += n
        self.after_read()
        return n

    def drain(self) -> None:
        while self.read(TAR_BUFFER):
            pass


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
        tap = Tap(blob_file, lambda: None)
        entries = scan_tar(tap)
        tap.drain()
        return LayerIndex(blob_file.blob.digest, entries, Format.TAR, _digest(tap), tap.size)
    except (zlib.error, zstandard.ZstdError, indexed_gzip.ZranError, EOFError) as e:
        raise IntegrityError(f"layer {blob_file.blob.digest}: {e}") from e


def _build_gzip(blob_file: BlobFile, span_bytes: int) -> LayerIndex:
    hasher = SpanHasher(overlap=1)
    blob_file.on_bytes = hasher.feed
    gz = indexed_gzip.IndexedGzipFile(
        fileobj=blob_file, spacing=span_bytes, readbuf_size=1 << 20, buffer_size=1 << 20
    )
    seen = 1  # zran's first point is the start of the deflate stream: span 0 starts at 0

    def new_points() -> None:
        nonlocal seen
        points = list(gz.seek_points())
        for uncompressed, compressed in points[seen:]:
            hasher.cut(uncompressed, compressed)
        seen = max(seen, len(points))

    with gz:
        tap = Tap(gz, new_points)
        entries = scan_tar(tap)
        tap.drain()
        exported = io.BytesIO()
        gz.export_index(fileobj=exported)
    spans = hasher.finish(tap.size, blob_file.blob.size)
    digest = blob_file.blob.digest
    return LayerIndex(
        digest, entries, Format.GZIP, _digest(tap), tap.size, spans, exported.getvalue()
    )


def _build_zstd(blob_file: BlobFile, span_bytes: int) -> LayerIndex:
    hasher = SpanHasher(overlap=0)
    blob_file.on_bytes = hasher.feed

    def frame(compressed: int, uncompressed: int) -> None:
        if uncompressed - hasher.starts[-1][0] >= span_bytes:
            hasher.cut(uncompressed, compressed)

    tap = Tap(ZstdFrames(blob_file, frame), lambda: None)
    entries = scan_tar(tap)
    tap.drain()
    spans = hasher.finish(tap.size, blob_file.blob.size)
    flat = max((s.end - s.start for s in spans), default=0) > FLAT_FACTOR * span_bytes
    digest = blob_file.blob.digest
    return LayerIndex(digest, entries, Format.ZSTD, _digest(tap), tap.size, spans, flat=flat)


def _digest(tap: Tap) -> str:
    return "sha256:" + tap.sha.hexdigest()


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
