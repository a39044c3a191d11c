"""Inode numbers, kernel lookup counts, and open file and directory handles.

A node gets an inode number when the kernel first hears of it (a lookup or a listing) and
keeps it until the kernel forgets it and no open file holds it; then the number goes, and
the node gets a new one if it is seen again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import NotFoundError
from .nodes import Dir, File, FileHandle, Node, ReleasableHandle

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Every listing begins with these (offsets 0 and 1), as `ls -a` expects; the kernel takes no
# reference to them, so they carry no lookup count, and no node is ever named so.
DOTS = (".", "..")

Listing = list[tuple[str, Node]]


@dataclass
class OpenFile:
    node: File
    handle: FileHandle


@dataclass
class OpenDir:
    node: Dir
    listing: Listing | None = None  # taken at opendir, again on a rewind; kept until release
    unread: bool = True  # the listing taken at opendir has not been read from yet


class InodeTable:
    def __init__(self, root: Dir) -> None:
        self.root = root
        root.inode = ROOT_INODE
        self.nodes: dict[int, Node] = {ROOT_INODE: root}
        self.lookups: dict[int, int] = {}
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, OpenDir] = {}
        self.parents: dict[int, int] = {}  # directory inode → the inode it was found in
        self._open_files: dict[int, int] = {}  # inode → open handles: they keep the inode
        self._next_inode = ROOT_INODE + 1
        self._next_handle = 1

    # -- inodes ---------------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise NotFoundError(f"no inode {inode}") from None

    def directory(self, inode: int) -> Dir:
        node = self.node(inode)
        if not isinstance(node, Dir):
            raise NotFoundError(f"not a directory: inode {inode}")
        return node

    def _register(self, node: Node) -> Node:
        if self.nodes.get(node.inode) is not node:
            node.inode = self._next_inode
            self._next_inode += 1
            self.nodes[node.inode] = node
        return node

    def remember(self, node: Node) -> None:
        """The kernel now holds one more reference to this node."""
        self._register(node)
        if node.inode != ROOT_INODE:
            self.lookups[node.inode] = self.lookups.get(node.inode, 0) + 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped `count` references (0: it never took the one it was offered)."""
        if inode == ROOT_INODE:
            return
        left = self.lookups.get(inode, 0) - count
        if left > 0:
            self.lookups[inode] = left
            return
        self.lookups.pop(inode, None)
        if inode not in self._open_files:
            self.nodes.pop(inode, None)
            self.parents.pop(inode, None)

    async def lookup(self, parent_inode: int, name: str) -> Node:
        parent = self.directory(parent_inode)
        if name in (".", ".."):
            raise NotFoundError(name)
        node = await parent.lookup(name)
        if node is None:
            raise NotFoundError(name)
        self.remember(node)
        self._found_in(node, parent_inode)
        return node

    async def listdir(self, inode: int) -> Listing:
        """The directory's entries by name, each with an inode number (no `.` or `..`)."""
        entries = await self.directory(inode).entries()
        listing = sorted(
            ((name, node) for name, node in entries.items() if name not in DOTS),
            key=lambda item: item[0],
        )
        for _, child in listing:
            self._register(child)
            self._found_in(child, inode)
        return listing

    def _found_in(self, node: Node, parent_inode: int) -> None:
        if isinstance(node, Dir):
            self.parents[node.inode] = parent_inode

    def parent_of(self, directory: Dir) -> Dir:
        """The directory `..` names: the one it was last found in (the root's is itself, as
        is a directory's whose parent the table has let go of: only `ls -ai` shows it)."""
        parent = self.nodes.get(self.parents.get(directory.inode, directory.inode))
        return parent if isinstance(parent, Dir) else directory

    # -- directory handles ----------------------------------------------------------------

    async def opendir(self, inode: int) -> int:
        """Open a directory for reading, listing it now: an error must reach the caller here,
        since readdir's errors do not (glibc takes ENOENT from getdents for the end of the
        directory, so `ls` of a repository that is not there would show it empty)."""
        directory = self.directory(inode)
        listing = await self.listdir(inode)
        fh = self._new_handle()
        self.dirs[fh] = OpenDir(directory, listing)
        return fh

    async def readdir(self, fh: int, start: int) -> Listing:
        """The entries after offset `start` of an open directory: `.` and `..`, then its
        entries by name; offset n is the n-th of them.

        Offsets index a snapshot of the listing taken at opendir (again on a rewind) and kept
        until releasedir, so a directory that changes between two calls (a tag list refreshed
        mid-listing) neither skips nor repeats an entry. Not the child's inode as offset (as
        passthroughfs does): here an entry the kernel did not take loses its inode number and
        gets a higher one when listed again, so inode order is not stable between calls.
        """
        opened = self.dirs[fh]
        if opened.listing is None or (start == 0 and not opened.unread):  # a rewinddir
            opened.listing = await self.listdir(opened.node.inode)
        opened.unread = False
        dots: Listing = [(".", opened.node), ("..", self.parent_of(opened.node))]
        return dots[start:] + opened.listing[max(0, start - len(dots)) :]

    def offer(self, node: Node) -> Node:
        """Number a node about to be sent in a listing: one listed before may have lost its
        inode (the kernel forgot it). Done per entry sent, not for the whole rest of the
        listing on every call, which made a 500-entry directory cost 500²/k registrations."""
        return self._register(node)

    def releasedir(self, fh: int) -> None:
        opened = self.dirs.pop(fh, None)
        for _, child in (opened.listing or []) if opened else []:
            self.forget(child.inode, 0)  # listed but never taken by the kernel: let it go

    # -- file handles ---------------------------------------------------------------------

    async def open(self, inode: int) -> tuple[int, File]:
        node = self.node(inode)
        if not isinstance(node, File):
            raise NotFoundError(f"not a file: inode {inode}")
        handle = await node.open()
        fh = self._new_handle()
        self.files[fh] = OpenFile(node, handle)
        self._open_files[inode] = self._open_files.get(inode, 0) + 1
        return fh, node

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        return await self.files[fh].handle.read(offset, size)

    def release(self, fh: int) -> None:
        opened = self.files.pop(fh, None)
        if opened is None:
            return
        if isinstance(opened.handle, ReleasableHandle):
            try:
                opened.handle.release()
            except Exception:  # the kernel's release cannot fail: the handle is gone anyway
                log.exception("release of %r", opened.node)
        inode = opened.node.inode
        left = self._open_files.get(inode, 0) - 1
        if left > 0:
            self._open_files[inode] = left
            return
        self._open_files.pop(inode, None)
        if inode not in self.lookups:
            self.forget(inode, 0)

    def _new_handle(self) -> int:
        fh = self._next_handle
        self._next_handle += 1
        return fh
