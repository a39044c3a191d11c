"""`<image>/rootfs/` (the layers merged) and `<image>/layers/<digest>/` (one layer's own
entries) as vfs nodes.

Nothing is indexed until a tree is first used (a listing or lookup inside it); then rootfs/
has every layer of the image indexed at once, concurrently, and layers/<digest>/ its own,
by the layer reader (regfs.layers.LayerFiles); the trees are made by oci/overlay.py, each tree
node becomes a vfs node when its directory is first listed: one vfs node per tree node, so
a hardlink is one inode under several names. An error from an index (an IntegrityError:
the layer does not match its digest or diff_id) fails the operation that waited for it,
EIO; nothing is kept of a failed build, so the next use tries again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import trio

from ..cache import BlobRef
from ..oci.entry import Entry, EntryKind
from ..oci.overlay import IMPLICIT_MODE, Tree, TreeNode, layer_tree, merge
from ..vfs.nodes import (
    NO_XATTRS,
    Attrs,
    Dir,
    File,
    FileHandle,
    Kind,
    Node,
    Symlink,
    makedev,
)
from .image import ImageView, ResolvedImage

log = logging.getLogger(__name__)


class HasEntries(Protocol):
    @property
    def entries(self) -> tuple[Entry, ...]: ...


IndexT = TypeVar("IndexT", bound=HasEntries)


class LayerReader(Protocol[IndexT]):
    """What the views need of regfs.layers.LayerFiles: a layer's index, and bytes of one of
    its entries (exactly [offset, offset+size) of the file, within its size)."""

    async def index(self, blob: BlobRef, diff_id: str | None) -> IndexT: ...

    async def read(
        self, blob: BlobRef, index: IndexT, entry: Entry, offset: int, size: int
    ) -> bytes: ...


_KINDS = {
    EntryKind.FILE: Kind.FILE,
    EntryKind.DIR: Kind.DIR,
    EntryKind.SYMLINK: Kind.SYMLINK,
    EntryKind.CHAR_DEVICE: Kind.CHAR_DEVICE,
    EntryKind.BLOCK_DEVICE: Kind.BLOCK_DEVICE,
    EntryKind.FIFO: Kind.FIFO,
}


def attrs_of(node: TreeNode) -> Attrs:
    """A tree node's stat attributes: the tar's own mode, owner, mtime and device number."""
    entry = node.entry
    kind = _KINDS[entry.kind]
    size = entry.size if kind is Kind.FILE else 0
    mode = entry.mode & 0o7777
    if kind is Kind.SYMLINK:
        size, mode = len(os.fsencode(entry.linkname)), 0o777  # Linux symlinks have no mode
    rdev = 0
    if kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE):
        rdev = makedev(entry.devmajor, entry.devminor)
    seconds = entry.mtime_ns / 1e9
    return Attrs(kind, mode, size, seconds, node.nlink, entry.uid, entry.gid, rdev, entry.mtime_ns)


def xattrs_of(entry: Entry) -> Mapping[str, bytes]:
    return MappingProxyType(dict(entry.xattrs)) if entry.xattrs else NO_XATTRS


class TreeView:
    """A made tree, with what its files are read from: the layers' blobs and indexes. Makes
    (and keeps) one vfs node per tree node."""

    def __init__(
        self,
        tree: Tree,
        reader: LayerReader[Any],
        blobs: Sequence[BlobRef],
        indexes: Sequence[HasEntries],
    ) -> None:
        self.tree = tree
        self.reader = reader
        self.blobs = blobs
        self.indexes = indexes
        self._nodes: dict[int, Node] = {}  # id(TreeNode) → its vfs node; the tree keeps ids

    def node(self, name: str, tree_node: TreeNode) -> Node:
        made = self._nodes.get(id(tree_node))
        if made is None:
            made = self._make(name, tree_node)
            self._nodes[id(tree_node)] = made
        return made

    def _make(self, name: str, tree_node: TreeNode) -> Node:
        attrs, entry = attrs_of(tree_node), tree_node.entry
        xattrs = xattrs_of(entry)
        if tree_node.children is not None:
            return TreeDir(name, self, tree_node, attrs, xattrs)
        if attrs.kind is Kind.FILE:
            return TreeFile(name, self, tree_node, attrs, xattrs)
        if attrs.kind is Kind.SYMLINK:
            return Symlink(name, os.fsencode(entry.linkname), attrs, xattrs=xattrs)
        return Node(name, attrs, xattrs=xattrs)  # a device or a fifo: attributes only

    def entries_of(self, tree_node: TreeNode) -> dict[str, Node]:
        return {name: self.node(name, child) for name, child in (tree_node.children or {}).items()}

    async def read(self, tree_node: TreeNode, offset: int, size: int) -> bytes:
        entry = tree_node.entry
        size = min(size, entry.size - offset)
        if size <= 0:
            return b""
        layer = tree_node.layer
        return await self.reader.read(self.blobs[layer], self.indexes[layer], entry, offset, size)


class TreeDir(Dir):
    """A directory of a tree; its vfs nodes are made on its first listing or lookup."""

    __slots__ = ("_entries", "tree_node", "view")

    def __init__(
        self,
        name: str,
        view: TreeView,
        tree_node: TreeNode,
        attrs: Attrs,
        xattrs: Mapping[str, bytes],
    ) -> None:
        super().__init__(name)
        self.attrs, self.xattrs = attrs, xattrs
        self.view = view
        self.tree_node = tree_node
        self._entries: dict[str, Node] | None = None

    async def entries(self) -> Mapping[str, Node]:
        if self._entries is None:
            self._entries = self.view.entries_of(self.tree_node)
        return self._entries

    async def lookup(self, name: str) -> Node | None:
        if self._entries is not None:
            return self._entries.get(name)
        child = (self.tree_node.children or {}).get(name)
        return None if child is None else self.view.node(name, child)


class TreeFile(File):
    """A regular file of a tree: reads go to the layer reader, which checks every span."""

    __slots__ = ("tree_node", "view")

    def __init__(
        self,
        name: str,
        view: TreeView,
        tree_node: TreeNode,
        attrs: Attrs,
        xattrs: Mapping[str, bytes],
    ) -> None:
        super().__init__(name, attrs=attrs)
        self.xattrs = xattrs
        self.view = view
        self.tree_node = tree_node

    async def open(self) -> FileHandle:
        return TreeFileHandle(self.view, self.tree_node)


class TreeFileHandle:
    __slots__ = ("tree_node", "view")

    def __init__(self, view: TreeView, tree_node: TreeNode) -> None:
        self.view = view
        self.tree_node = tree_node

    async def read(self, offset: int, size: int) -> bytes:
        return await self.view.read(self.tree_node, offset, size)


class ImageTrees:
    """One image's layers as the reader indexes them, its merged tree and each layer's own
    tree, each made once, on first use."""

    def __init__(
        self,
        reader: LayerReader[Any],
        blobs: Sequence[BlobRef],
        diff_ids: Sequence[str | None],
        created: float,
    ) -> None:
        self.reader = reader
        self.blobs = tuple(blobs)
        self.diff_ids = tuple(diff_ids)
        self.created = created  # the mtime of a directory no entry made
        self._indexes: list[HasEntries | None] = [None] * len(self.blobs)
        self._merged: TreeView | None = None
        self._layers: dict[int, TreeView] = {}
        self._locks: dict[int | None, trio.Lock] = {}  # per tree: None is the merged one

    async def index(self, number: int) -> HasEntries:
        """One layer's index (the reader builds each digest once, whoever asks)."""
        index = self._indexes[number]
        if index is None:
            index = await self.reader.index(self.blobs[number], self.diff_ids[number])
            self._indexes[number] = index
        return index

    async def indexes(self) -> list[HasEntries]:
        """Every layer's index, built concurrently; the first error of any of them is raised
        once all have finished (one layer's failure does not cancel the others' builds)."""
        errors: list[Exception] = []

        async def build(number: int) -> None:
            try:
                await self.index(number)
            except Exception as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for number in range(len(self.blobs)):
                nursery.start_soon(build, number)
        if errors:
            raise errors[0]
        return [index for index in self._indexes if index is not None]

    async def merged(self) -> TreeView:
        async with self._locks.setdefault(None, trio.Lock()):
            if self._merged is None:
                indexes = await self.indexes()
                layers = [index.entries for index in indexes]
                tree = await trio.to_thread.run_sync(
                    lambda: merge(layers, implicit_mtime_ns=round(self.created * 1e9))
                )
                self._merged = TreeView(tree, self.reader, self.blobs, indexes)
            return self._merged

    async def layer(self, number: int) -> TreeView:
        """One layer's own tree: only its index is needed."""
        async with self._locks.setdefault(number, trio.Lock()):
            if number not in self._layers:
                index = await self.index(number)
                tree = await trio.to_thread.run_sync(
                    lambda: layer_tree(index.entries, implicit_mtime_ns=round(self.created * 1e9))
                )
                # It reads from that layer only: every node of it says layer 0.
                self._layers[number] = TreeView(tree, self.reader, [self.blobs[number]], [index])
            return self._layers[number]


class LazyTreeDir(Dir):
    """rootfs/ or layers/<digest>/: the tree is made when the directory is first looked
    into. Until then it shows what umoci gives a root no tar describes (0755 root:root, the
    image's created time), provisionally (the kernel keeps none of it); then the tar root's."""

    __slots__ = ("_root", "make")
    waits_for_progress = True  # LayerFiles fails a build only after --timeout of no progress

    def __init__(self, name: str, make: Callable[[], Awaitable[TreeView]], mtime: float) -> None:
        super().__init__(name, mtime, immutable=False)
        self.attrs = Attrs(Kind.DIR, IMPLICIT_MODE, mtime=mtime, nlink=2, uid=0, gid=0)
        self.make = make
        self._root: TreeDir | None = None

    async def root(self) -> TreeDir:
        if self._root is None:
            view = await self.make()
            root = view.node(self.name, view.tree.root)
            assert isinstance(root, TreeDir)
            self.attrs, self.xattrs, self.immutable = root.attrs, root.xattrs, True
            self._root = root
        return self._root

    @property
    def provisional(self) -> bool:
        return self._root is None

    async def entries(self) -> Mapping[str, Node]:
        return await (await self.root()).entries()

    async def lookup(self, name: str) -> Node | None:
        return await (await self.root()).lookup(name)


def diff_ids_of(config: bytes, layers: int) -> list[str | None]:
    """The config's `rootfs.diff_ids`, one per layer (None for each when they do not match
    the layers one to one: then nothing is compared)."""
    try:
        found = json.loads(config).get("rootfs", {}).get("diff_ids", [])
    except (ValueError, AttributeError):
        found = []
    if not isinstance(found, list) or len(found) != layers:
        return [None] * layers
    return [d if isinstance(d, str) else None for d in found]


def rootfs_views(reader: LayerReader[Any]) -> Callable[[ResolvedImage], ImageView]:
    """An image view builder: rootfs/ beside manifest.json and layers/<digest>/ beside
    each layer's blob."""

    def build(image: ResolvedImage) -> ImageView:
        manifest = image.manifest
        if manifest.config is None or not manifest.is_image:
            return ImageView()  # schema 1 or an artifact: no layers to merge
        if any(d.size < 0 for d in manifest.layers):
            return ImageView()
        blobs = [image.blob(d) for d in manifest.layers]
        diff_ids = diff_ids_of(image.config, len(blobs))
        trees = ImageTrees(reader, blobs, diff_ids, image.created)
        rootfs = LazyTreeDir("rootfs", trees.merged, image.created)
        layer_dirs: dict[str, Node] = {}
        for number, d in enumerate(manifest.layers):
            if d.digest not in layer_dirs:  # the same blob twice: one directory

                async def own(number: int = number) -> TreeView:
                    return await trees.layer(number)

                layer_dirs[d.digest] = LazyTreeDir(d.digest, own, image.created)
        return ImageView(beside=[rootfs], in_layers=list(layer_dirs.values()))

    return build
