"""Blocking file objects for the worker threads that index and inflate layers.

- `BlobFile`: a blob read through the block cache from a worker thread (each refill is one
  `trio.from_thread.run(cache.read, ...)`), so what an index is built from is verified
  against the blob's digest as any read of it.
- `WindowFile`: only the compressed bytes of spans already checked against their digests;
  indexed_gzip seekers read through it, so nothing unchecked is ever inflated.
- `ZstdFrames`: zstd frames one after another (skippable frames skipped), noting where each
  frame begins, compressed and uncompressed.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import trio
import zstandard

from ..cache.blob import BlobRef
from ..cache.blocks import BlockCache
from ..cache.readahead import ReadStream

CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


class _Seekable(io.RawIOBase):
    """A readable file of `size` bytes whose reads start at `position`."""

    size = 0
    position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position


class BlobFile(_Seekable):
    def __init__(
        self,
        cache: BlockCache,
        blob: BlobRef,
        *,
        on_bytes: Callable[[int, bytes], None] | None = None,
        token: trio.lowlevel.TrioToken | None = None,
        stream: ReadStream | None = None,
        release: bool = False,
    ) -> None:
        self.cache = cache
        # A stream: the cache reads ahead of this reader (fetches overlap the inflation).
        self.stream = stream
        # Release: each block read is dropped from the cache's memory once passed (the disk
        # tier keeps it), so one pass over a big layer does not fill the memory LRU.
        self.release = release
        self.token = token  # given: read from a thread trio did not start
        self.blob = blob
        self.size = blob.size
        self.position = 0
        self.furthest = 0  # bytes of the blob read so far (progress)
        self.on_bytes = on_bytes  # (offset, bytes) of each refill, in order
        self._buffer = b""
        self._buffer_at = 0
        # Refills go block by block: one cache call each, no block split over two.
        self._refill = max(CHUNK, cache.block_size)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.position >= self.blob.size:
            return 0
        at = self.position - self._buffer_at
        if not 0 <= at < len(self._buffer):
            self._fill()
            at = self.position - self._buffer_at
        n = min(len(buffer), len(self._buffer) - at)
        buffer[:n] = self._buffer[at : at + n]
        self.position += n
        return n

    def peek_start(self, n: int) -> bytes:
        """The blob's first bytes, without counting them as read (on_bytes sees them later)."""
        head = trio.from_thread.run(self.cache.read, self.blob, 0, n)
        return bytes(head)

    def read_to_end(self) -> None:
        """Read on to the end of the blob (on_bytes sees every byte)."""
        while self.furthest < self.blob.size:
            self.position = self.furthest
            self._fill()

    def _fill(self) -> None:
        start = self.position - self.position % self._refill
        size = min(self._refill, self.blob.size - start)
        data = self._call(self._read, start, size)
        if len(data) != size:
            raise OSError(f"short read of {self.blob.digest} at {start}")
        if self.on_bytes is not None and start + size > self.furthest:
            skip = max(0, self.furthest - start)
            self.on_bytes(start + skip, data[skip:])
        self.furthest = max(self.furthest, start + size)
        self._buffer, self._buffer_at = data, start

    def close_stream(self) -> None:
        """Stop what the cache fetches ahead of this reader (called once the pass ends)."""
        if self.stream is not None:
            self._call(self._close_stream)

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.token is None:
            return trio.from_thread.run(function, *args)
        return trio.from_thread.run(function, *args, trio_token=self.token)

    async def _read(self, start: int, size: int) -> bytes:
        if self.release and self._buffer:  # the buffer's blocks have been passed
            block = self.cache.block_size
            first = self._buffer_at // block
            for index in range(first, (self._buffer_at + len(self._buffer) - 1) // block + 1):
                self.cache.release(self.blob, index)
        return await self.cache.read(self.blob, start, size, self.stream)

    async def _close_stream(self) -> None:
        assert self.stream is not None
        self.cache.close_stream(self.stream)


class WindowFile(_Seekable):
    """A blob of which only [start, start+len(data)) is readable; below it is an error, above
    it the end of the file (a span's end is where its inflation stops)."""

    def __init__(self, size: int) -> None:
        self.size = size  # the blob's: what zran is told the file's size is
        self.data = b""
        self.start = 0
        self.position = 0

    def show(self, start: int, data: bytes) -> None:
        self.start, self.data = start, data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        at = self.position - self.start
        if at < 0:
            raise OSError(f"read at {self.position}, outside the checked span")
        n = max(0, min(len(buffer), len(self.data) - at))
        buffer[:n] = self.data[at : at + n]
        self.position += n
        return n


class GzipMembers(io.RawIOBase):
    """The uncompressed bytes of the gzip members in `raw`, one after another (stdlib zlib:
    the build's sequential pass, while zran makes the seek points beside it)."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(31)
        self.pending = b""
        self.produced = 0  # uncompressed bytes so far

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            if not self.pending:
                self.pending = self.raw.read(CHUNK) or b""
                if not self.pending:
                    if not self.inflater.eof:
                        raise EOFError("gzip stream ends inside a member")
                    return 0
            out = self.inflater.decompress(self.pending, len(buffer))
            if self.inflater.eof:
                self.pending = self.inflater.unused_data
                if self.pending:  # another member follows
                    self.inflater = zlib.decompressobj(31)
            else:
                self.pending = self.inflater.unconsumed_tail
            if out:
                buffer[: len(out)] = out
                self.produced += len(out)
                return len(out)


class ZstdFrames(io.RawIOBase):
    """The uncompressed bytes of the zstd frames in `raw`, in order. `on_frame(compressed,
    uncompressed)` hears where each frame begins."""

    def __init__(self, raw: io.RawIOBase, on_frame: Callable[[int, int], None] | None = None):
        self.raw = raw
        self.on_frame = on_frame
        self.pending = b""  # compressed bytes read, not yet decompressed
        self.pending_at = 0  # their offset in `raw`
        self.produced = 0
        self.output = b""
        self.decompressor: zstandard.ZstdDecompressionObj | None = None
        self.raw_done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self.output:
            if not self._step():
                return 0
        n = min(len(buffer), len(self.output))
        buffer[:n] = self.output[:n]
        self.output = self.output[n:]
        return n

    def _more(self, need: int) -> bool:
        """Read until `pending` holds `need` bytes; False at the end of `raw`."""
        while len(self.pending) < need and not self.raw_done:
            data = self.raw.read(CHUNK)
            if not data:
                self.raw_done = True
            self.pending += data or b""
        return len(self.pending) >= need

    def _step(self) -> bool:
        if self.decompressor is None:
            if not self._more(1):
                return False
            if not self._more(8):
                raise zstandard.ZstdError("truncated zstd frame")
            magic = struct.unpack_from("<I", self.pending)[0]
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame: 8 + its length bytes
                skip = 8 + struct.unpack_from("<I", self.pending, 4)[0]
                if not self._more(skip):
                    raise zstandard.ZstdError("truncated skippable frame")
                self.pending, self.pending_at = self.pending[skip:], self.pending_at + skip
                return True
            if self.on_frame is not None:
                self.on_frame(self.pending_at, self.produced)
            self.decompressor = zstandard.ZstdDecompressor().decompressobj()
        if not self.pending and not self._more(1):
            raise zstandard.ZstdError("truncated zstd frame")
        fed, self.pending = self.pending, b""
        out = self.decompressor.decompress(fed)
        if self.decompressor.eof:
            unused = self.decompressor.unused_data
            self.pending = unused
            self.pending_at += len(fed) - len(unused)
            self.decompressor = None
        else:
            self.pending_at += len(fed)
        self.produced += len(out)
        self.output = out
        return True


def decompress_frames(data: bytes) -> bytes:
    """Whole zstd frames, one after another, decompressed."""
    return ZstdFrames(io.BytesIO(data)).read()  # type: ignore[arg-type]
