"""Filesystem nodes: each carries its own attributes, the adapter only copies them.

A node is a name, an `Attrs` value, extended attributes and whether its content may be kept
by the kernel indefinitely (`immutable`). Directories answer `entries()` (name → node) and
`lookup(name)`; files answer `open()` with a handle that reads. Nothing here fetches: the
views subclass these with nodes that do.

The names in `entries()` are the names shown; `Node.name` is only the name a node was made
under (a hardlinked node appears under several names, as one inode).
"""

from __future__ import annotations

import enum
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar, Protocol, runtime_checkable

NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})

# Whoever runs the mount owns what it shows, unless a view says otherwise (a rootfs entry).
# (Windows, where `regfs ls` runs, has no uids: 0 there.)
_OWNER = (getattr(os, "getuid", int)(), getattr(os, "getgid", int)())


def makedev(major: int, minor: int) -> int:
    """A device number: the platform's encoding, or Linux's old 8:8 one where it has none
    (Windows, where `regfs ls -l` still shows a rootfs/ device's numbers)."""
    if hasattr(os, "makedev"):
        return os.makedev(major, minor)
    return (major << 8) | minor


def major_minor(rdev: int) -> tuple[int, int]:
    if hasattr(os, "major"):
        return os.major(rdev), os.minor(rdev)
    return rdev >> 8, rdev & 0xFF


class Kind(enum.IntEnum):
    """What a node is: its value is the file-type bits of st_mode."""

    DIR = stat.S_IFDIR
    FILE = stat.S_IFREG
    SYMLINK = stat.S_IFLNK
    CHAR_DEVICE = stat.S_IFCHR
    BLOCK_DEVICE = stat.S_IFBLK
    FIFO = stat.S_IFIFO


@dataclass(slots=True)
class Attrs:
    """A node's stat attributes as a plain value, never changed once made (replaced whole,
    as set_mtime does; not frozen, whose __init__ costs 2 µs more: a rootfs/ listing makes
    one per file). `mode` holds the permission bits only."""

    kind: Kind
    mode: int
    size: int = 0
    mtime: float = 0.0
    nlink: int = 1
    uid: int = _OWNER[0]
    gid: int = _OWNER[1]
    rdev: int = 0
    # The exact time when a tar states nanoseconds a float cannot hold; else `mtime` is it.
    mtime_ns: int | None = None

    @property
    def st_mode(self) -> int:
        return int(self.kind) | self.mode


def dir_attrs(mtime: float = 0.0) -> Attrs:
    """The default for a directory: read and search for everyone, owned by the mount."""
    return Attrs(Kind.DIR, 0o555, mtime=mtime, nlink=2)


def file_attrs(size: int, mtime: float = 0.0) -> Attrs:
    """The default for a regular file: read-only for everyone, owned by the mount."""
    return Attrs(Kind.FILE, 0o444, size=size, mtime=mtime)


class Node:
    """Anything with attributes; on its own a node that has no content (a device, a fifo).

    `immutable`: its attributes and content never change, so the kernel may cache them for
    as long as it likes. `inode` is assigned by the inode table.
    """

    __slots__ = ("attrs", "immutable", "inode", "name", "xattrs")
    # Looking into it may wait for work that bounds its own wait by progress (a layer index
    # build, which may take longer than the operation bound and still be worth it).
    waits_for_progress: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        attrs: Attrs,
        *,
        immutable: bool = True,
        xattrs: Mapping[str, bytes] = NO_XATTRS,
    ) -> None:
        self.name = name
        self.attrs = attrs
        self.immutable = immutable
        self.xattrs = xattrs
        self.inode = 0

    @property
    def provisional(self) -> bool:
        """Its attributes stand in until its content is made (a rootfs/ before its layers
        are indexed): the kernel is to keep none of them."""
        return False

    @property
    def size(self) -> int:
        return self.attrs.size

    @property
    def mtime(self) -> float:
        return self.attrs.mtime

    def set_mtime(self, mtime: float) -> None:
        self.attrs = replace(self.attrs, mtime=mtime, mtime_ns=None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} inode={self.inode}>"


class Symlink(Node):
    """A symbolic link; its target is returned verbatim by readlink."""

    __slots__ = ("target",)

    def __init__(
        self,
        name: str,
        target: bytes,
        attrs: Attrs | None = None,
        *,
        xattrs: Mapping[str, bytes] = NO_XATTRS,
    ) -> None:
        attrs = attrs or Attrs(Kind.SYMLINK, 0o777, size=len(target))
        super().__init__(name, attrs, xattrs=xattrs)
        self.target = target


class Dir(Node):
    """A directory: `entries()` lists it, `lookup()` finds one name (by default in entries)."""

    __slots__ = ()

    def __init__(self, name: str, mtime: float = 0.0, *, immutable: bool = True) -> None:
        super().__init__(name, dir_attrs(mtime), immutable=immutable)

    async def entries(self) -> Mapping[str, Node]:
        return {}

    async def lookup(self, name: str) -> Node | None:
        return (await self.entries()).get(name)

    async def children(self) -> list[Node]:
        return list((await self.entries()).values())


class StaticDir(Dir):
    """A directory whose entries are fixed when it is made."""

    __slots__ = ("_entries",)

    def __init__(
        self, name: str, entries: Iterable[Node], mtime: float = 0.0, *, immutable: bool = True
    ) -> None:
        super().__init__(name, mtime, immutable=immutable)
        self._entries: dict[str, Node] = {node.name: node for node in entries}

    async def entries(self) -> Mapping[str, Node]:
        return self._entries


def static_tree(name: str, files: Iterable[tuple[str, Node]], mtime: float = 0.0) -> StaticDir:
    """A directory holding each node at its relative path (`a/b/name`, the node's name
    last), with the directories between made as needed, in the order first seen."""
    here: list[Node] = []
    below: dict[str, list[tuple[str, Node]]] = {}
    for path, node in files:
        head, slash, rest = path.partition("/")
        if slash:
            below.setdefault(head, []).append((rest, node))
        else:
            here.append(node)
    subdirs = [static_tree(sub, entries, mtime) for sub, entries in below.items()]
    return StaticDir(name, [*here, *subdirs], mtime)


class FileHandle(Protocol):
    """An open file: what the inode table keeps per open() until release()."""

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """Exactly [offset, offset+size), short only at the end of the file (a view where
        that saves a copy: the FUSE reply takes any buffer)."""
        ...


@runtime_checkable
class ReleasableHandle(Protocol):
    """A handle that wants to hear when its file is closed (the kernel's release: no read
    follows), to stop work done on its behalf, such as readahead. Must not block or raise."""

    def release(self) -> None: ...


class File(Node):
    """A regular file. `direct_io`: its size is not known before open (content made then)."""

    __slots__ = ()
    direct_io: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        size: int = 0,
        mtime: float = 0.0,
        *,
        immutable: bool = True,
        attrs: Attrs | None = None,
    ) -> None:
        super().__init__(name, attrs or file_attrs(size, mtime), immutable=immutable)

    async def open(self) -> FileHandle:
        raise NotImplementedError

    def keep_cache(self) -> bool:
        """Whether the kernel may keep this file's pages from an earlier open."""
        return self.immutable


class BytesHandle:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]


class BytesFile(File):
    """A file whose content is held in memory."""

    __slots__ = ("data",)

    def __init__(
        self, name: str, data: bytes, mtime: float = 0.0, *, immutable: bool = True
    ) -> None:
        super().__init__(name, len(data), mtime, immutable=immutable)
        self.data = data

    async def open(self) -> FileHandle:
        return BytesHandle(self.data)


class GeneratedFile(File):
    """Content made at open time (stats): direct_io, so its size need not be known."""

    __slots__ = ("make",)
    direct_io = True

    def __init__(self, name: str, make: Callable[[], bytes]) -> None:
        super().__init__(name, 0, time.time(), immutable=False)
        self.make = make

    async def open(self) -> FileHandle:
        return BytesHandle(self.make())  # one snapshot per open: reads of it agree
