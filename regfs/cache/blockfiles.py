"""Block files: which ones each blob directory holds (an index, so `has_block` and readahead
need no stat per block), and their writes without a fresh page-cache page per 4 KiB.

The file format is disk.py's: the block's bytes, then the 12-byte trailer (length, CRC-32).
Only how the bytes get there changes: the page-aligned bulk of a large block goes with
O_DIRECT from a reused, page-aligned buffer, the tail and trailer with an ordinary write, so
a file written either way (or by an older regfs) reads the same.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Hashable
from contextlib import suppress
from pathlib import Path

from ..fileio import open_for_reading, pread

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
DIRECT_MIN = 256 << 10  # smaller blocks: one ordinary write costs less than the extra calls

try:
    import fcntl
except ImportError:  # Windows, where `regfs cp` runs: no O_DIRECT there either
    fcntl = None  # type: ignore[assignment]
_O_DIRECT = getattr(os, "O_DIRECT", 0) if fcntl is not None else 0


TRAILER = struct.Struct("<QI")  # length, CRC-32


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
            try:
                tail = TRAILER.pack(len(data), zlib.crc32(data)) if trailer else b""
                write_file(fd, data, tail)
            finally:
                os.close(fd)
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
    """A checked file's data if its trailer matches; a damaged file is removed."""
    try:
        data, tail = read_file(path, TRAILER.size)
    except OSError:
        return None
    if len(tail) == TRAILER.size:
        length, crc = TRAILER.unpack(tail)
        if length == len(data) and zlib.crc32(data) == crc:
            return data
    log.warning("damaged cache file %s removed", path)
    with suppress(OSError):
        path.unlink()
    return None


# -- which block files a directory holds ------------------------------------------------------


class BlockIndex:
    """The block files of blob directories, as this process last saw them, by a cheap key
    (building a directory's path costs more than the stat it would save).

    Other processes (another mount of the same cache directory, `regfs cache prune/clear`)
    change the directories behind it, and both ways are safe. A block believed present whose
    file is gone fails its read (None, as a damaged file does): the reader drops it here and
    fetches it again. A block written elsewhere is seen when the directory is listed again,
    at most every RELIST seconds on a miss; until then it costs a refetch, never a wrong byte.
    """

    RELIST = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Hashable, set[int]] = {}
        self._listed_at: dict[Hashable, float] = {}
        self._keys: dict[Path, Hashable] = {}  # directory -> key, for forget()

    def has(self, key: Hashable, index: int, directory: Callable[[], Path]) -> bool:
        with self._lock:
            held = self._held.get(key)
            if held is not None and (
                index in held or time.monotonic() - self._listed_at[key] < self.RELIST
            ):
                return index in held
            # Listed under the lock: a block this process writes meanwhile is not lost to
            # a listing taken before its rename.
            path = directory()
            self._held[key] = held = _listed_blocks(path)
            self._listed_at[key] = time.monotonic()
            self._keys[path] = key
            return index in held

    def add(self, key: Hashable, index: int) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is not None:  # not listed yet: the listing will find it
                held.add(index)

    def discard(self, key: Hashable, index: int) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                held.discard(index)

    def forget(self, directory: Path | None = None) -> None:
        """The directory (None: every one) was removed or moved: list it again when asked."""
        with self._lock:
            if directory is None:
                self._held.clear()
                self._listed_at.clear()
                self._keys.clear()
            elif (key := self._keys.pop(directory, None)) is not None:
                self._held.pop(key, None)
                self._listed_at.pop(key, None)


def _listed_blocks(directory: Path) -> set[int]:
    try:
        return {int(name) for name in os.listdir(directory) if name.isdigit()}
    except OSError:  # not made yet, or removed under us
        return set()


# -- aligned buffers --------------------------------------------------------------------------


class _Buffers:
    """Page-aligned buffers (anonymous mmaps), reused: a fresh one per block would fault in
    its pages every time, which is what O_DIRECT is here to avoid. A few are kept; more are
    made while more threads write at once."""

    KEEP = 2  # each is a block's size, counted in the mount's RSS

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    def take(self, size: int) -> mmap.mmap:
        size = _round_up(max(size, 1))
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, size)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.KEEP:
                self._free.append(buf)
                return
        buf.close()


_buffers = _Buffers()


def _round_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


# -- writes and reads -------------------------------------------------------------------------


def write_file(fd: int, data: bytes, trailer: bytes) -> None:
    """Write `data` then `trailer` to the new, empty file `fd` (as one buffered write would)."""
    aligned = len(data) // PAGE * PAGE if len(data) >= DIRECT_MIN and _O_DIRECT else 0
    if aligned:
        # One extent: the direct bulk and the buffered tail allocated apart made two, and
        # a remount read them slower.
        with suppress(OSError):
            os.posix_fallocate(fd, 0, len(data) + len(trailer))
    if aligned and _write_direct(fd, memoryview(data)[:aligned]):
        rest = memoryview(data)[aligned:]
    else:
        rest = memoryview(data)
    _write_all(fd, rest)
    _write_all(fd, memoryview(trailer))


def _write_direct(fd: int, data: memoryview) -> bool:
    """The page-aligned bulk with O_DIRECT; False (nothing written) where the file system
    refuses it, and the caller writes it all the ordinary way."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False
    buf = _buffers.take(len(data))
    try:
        view = memoryview(buf)
        try:
            view[: len(data)] = data
            done = 0
            while done < len(data):
                done += os.write(fd, view[done : len(data)])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            return False
        finally:
            view.release()
    finally:
        _buffers.give(buf)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # the tail is not page-sized
    return True


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def read_file(path: Path, tail: int) -> tuple[bytes, bytes]:
    """The whole file, split before its last `tail` bytes (the trailer). A large file is
    read with O_DIRECT into a reused aligned buffer and copied once into the bytes returned:
    its pages come from the disk by DMA, not through the page cache. With the block files
    not in RAM (the bench's remount row drops them) the remount cost 1.67 s CPU/GiB instead
    of 1.93 at the same rate; a buffered pread of a 1 GiB file not in RAM cost 0.5-1.9 s
    CPU/GiB here, O_DIRECT and the copy 0.16-0.18. Otherwise two preads."""
    fd = open_for_reading(path)
    try:
        size = os.fstat(fd).st_size
        cut = max(0, size - tail)
        if size >= DIRECT_MIN and _O_DIRECT and (read := _read_direct(fd, size, cut)) is not None:
            return read
        # A block file never changes once renamed into place: a short read is a damaged
        # file (the trailer check says so), never one still being written.
        return _pread_all(fd, cut, 0), pread(fd, tail, cut)
    finally:
        os.close(fd)


def _read_direct(fd: int, size: int, cut: int) -> tuple[bytes, bytes] | None:
    """The file's `size` bytes read with O_DIRECT, split at `cut`; None where the file
    system refuses it or the read came up short, and the caller reads the ordinary way."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return None
    buf = _buffers.take(size)
    try:
        view = memoryview(buf)
        try:
            # Whole pages, as O_DIRECT reads them: the last one comes back short.
            got = os.preadv(fd, [view[: _round_up(size)]], 0)
            if got != size:
                return None
            return bytes(view[:cut]), bytes(view[cut:size])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return None
        finally:
            view.release()
    finally:
        _buffers.give(buf)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    data = pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size and (chunk := pread(fd, size - got, offset + got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
