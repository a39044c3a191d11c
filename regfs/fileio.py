"""Reading files by position on every system regfs runs on.

`regfs ls/cat/cp` run where FUSE does not, Windows included: there os.pread and O_CLOEXEC do
not exist, and os.open translates line ends unless asked for O_BINARY.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)

_seek_lock = threading.Lock()  # a descriptor has one offset: a seek and its read go together


def open_for_reading(path: str | os.PathLike[str]) -> int:
    return os.open(path, READ_FLAGS)


def _seek_and_read(fd: int, size: int, offset: int) -> bytes:
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)


pread: Callable[[int, int, int], bytes] = getattr(os, "pread", _seek_and_read)
