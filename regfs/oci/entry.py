"""One entry of a layer's tar, as a layer index records it: what `rootfs/` and
`layers/<digest>/` show, and where the entry's bytes are in the uncompressed tar stream.

Pure data: the layer index (regfs.layers) makes these from the tar, the overlay merge
(oci/overlay.py) combines them, the views show them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"  # `linkname` names the entry it shares an inode with
    CHAR_DEVICE = "char"
    BLOCK_DEVICE = "block"
    FIFO = "fifo"


@dataclass(slots=True)
class Entry:
    """A tar entry, a value never changed once made (not frozen: a frozen dataclass's
    __init__ costs 2.2 µs, a plain one 0.3, and an index load makes 20 000 of them). `path` is normalised: relative, '/'-separated, without '.', '..' or
    empty components ('' is the layer's root directory); bytes that are not UTF-8 are kept
    as surrogate escapes (`os.fsencode(path)` gives the tar's bytes back)."""

    path: str
    kind: EntryKind
    mode: int  # permission bits, setuid/setgid/sticky included (0o7777)
    uid: int
    gid: int
    mtime_ns: int  # exact: PAX records give nanoseconds a float cannot hold
    size: int = 0  # a file's size (a sparse file's apparent size)
    linkname: str = ""  # a symlink's target verbatim; a hardlink's target, normalised
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()  # from PAX SCHILY.xattr.* records
    offset: int = 0  # where the file's data begins in the uncompressed tar stream
    # A sparse file's data segments as (offset in the file, length), stored one after
    # another from `offset`; the rest of the file reads as zeros. None: not sparse.
    sparse: tuple[tuple[int, int], ...] | None = None
