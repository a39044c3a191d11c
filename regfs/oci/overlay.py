"""The merge of layers' entries into one tree, as the OCI image spec's layer changesets say
and as `umoci unpack` (0.4.7, oci/layer/tar_extract.go) applies them; and one layer's own
tree for `layers/<digest>/`.

Per layer, bottom to top, each entry in tar order:
- `.wh.<name>` removes `<name>` and `.wh..wh..opq` empties its directory, but only of what
  lower layers put there: whatever this layer itself has added (and the ancestors of it) is
  kept, so a whiteout acts on the layers below whether it comes before or after the layer's
  own entries. Markers never show.
- A directory over a directory merges (the later attributes win, xattrs included); anything
  else replaces what was at the path (file over directory and back); a later duplicate
  within a layer wins the same way.
- The directories above an entry are found as umoci's securejoin finds them: a symlink on
  the way is followed inside the root (`..` and absolute targets never leave it), so
  `lib/x` under a `lib -> usr/lib` link lands in `usr/lib/x`. A directory no entry made
  (an implicit parent) is 0755 root:root, as umoci's MkdirAll makes it.
- A hardlink names the entry it shares an inode with in the merged state at that moment:
  the same TreeNode under both names; it keeps its target's attributes (umoci applies none
  of the hardlink's header). A lower file later replaced keeps its other names on the old
  inode. Where umoci refuses the whole image (a hardlink to a missing path or to a
  directory, an entry under a path that is a file, a root entry that is not a directory,
  a symlink loop), the entry is left out and logged: the rest of the tree still shows.

Pure: no trio, httpx or file access; `Entry` comes from the layer index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .entry import Entry, EntryKind

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
MAX_SYMLINKS = 255  # securejoin's bound before ELOOP
IMPLICIT_MODE = 0o755  # MkdirAll(dir, 0777) under umask 022


class TreeNode:
    """One inode of a tree. `entry` holds its attributes (a hardlink's node is its target's,
    so `entry.kind` is never HARDLINK) and where its data is; `layer` is the number (0 the
    base) of the layer whose bytes it reads, -1 for an implicit directory; `children` is a
    directory's names, None for anything else; `nlink` is counted once the tree is made."""

    __slots__ = ("children", "entry", "layer", "nlink")

    def __init__(self, entry: Entry, layer: int) -> None:
        self.entry = entry
        self.layer = layer
        self.children: dict[str, TreeNode] | None = {} if entry.kind is EntryKind.DIR else None
        self.nlink = 1

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def __repr__(self) -> str:
        return f"<TreeNode {self.entry.path!r} {self.entry.kind.value} layer={self.layer}>"


@dataclass(frozen=True)
class Tree:
    """A merged (or one layer's) tree: `root` and its descendants, nlink counted."""

    root: TreeNode

    def lookup(self, path: str) -> TreeNode | None:
        """The node at a relative '/'-separated path ('' is the root), symlinks not followed."""
        node: TreeNode | None = self.root
        for name in path.split("/") if path else ():
            if node is None or node.children is None:
                return None
            node = node.children.get(name)
        return node

    def walk(self) -> Iterator[tuple[str, TreeNode]]:
        """Every (path, node) below the root, parents before their children."""
        stack: list[tuple[str, TreeNode]] = [("", self.root)]
        while stack:
            path, node = stack.pop()
            for name, child in (node.children or {}).items():
                child_path = f"{path}/{name}" if path else name
                yield child_path, child
                if child.children is not None:
                    stack.append((child_path, child))


def merge(layers: Sequence[Iterable[Entry]], *, implicit_mtime_ns: int = 0) -> Tree:
    """The root filesystem of an image whose layers (bottom first) hold these entries."""
    builder = _Builder(implicit_mtime_ns, whiteouts=True)
    for number, entries in enumerate(layers):
        builder.apply_layer(number, entries)
    return builder.finish()


def layer_tree(entries: Iterable[Entry], *, implicit_mtime_ns: int = 0) -> Tree:
    """One layer's own entries as its tar holds them: the same rules as one layer of a
    merge, except that whiteouts and opaque markers are plain entries (visible as such)."""
    builder = _Builder(implicit_mtime_ns, whiteouts=False)
    builder.apply_layer(0, entries)
    return builder.finish()


class _Builder:
    def __init__(self, implicit_mtime_ns: int, *, whiteouts: bool) -> None:
        self.implicit_mtime_ns = implicit_mtime_ns
        self.whiteouts = whiteouts
        self.root = self._implicit_dir("")
        self.upper: set[str] = set()  # paths this layer has added, and their ancestors
        # A directory path as a tar names it → its real path and node. Valid while nodes are
        # only added (most entries): cleared when one is replaced, removed or a root changes.
        self.parents: dict[str, tuple[list[str], TreeNode]] = {}

    def _implicit_dir(self, path: str) -> TreeNode:
        entry = Entry(path, EntryKind.DIR, IMPLICIT_MODE, 0, 0, self.implicit_mtime_ns)
        return TreeNode(entry, -1)

    def apply_layer(self, number: int, entries: Iterable[Entry]) -> None:
        self.upper = set()
        self.parents.clear()
        for entry in entries:
            self._apply(number, entry)

    def _parent(self, above: str) -> tuple[list[str], TreeNode | None] | None:
        """The real path and directory node of an entry's parent, as tar names it; None: a
        symlink loop. The node is None when a non-directory is in the way."""
        known = self.parents.get(above)
        if known is not None:
            return known
        real = self._resolve(above.split("/") if above else [])
        if real is None:
            return None
        parent = self._make_dirs(real)
        if parent is None:
            return real, None
        self.parents[above] = (real, parent)
        return real, parent

    def _apply(self, layer: int, entry: Entry) -> None:
        if not entry.path:  # the root itself: umoci takes only a directory's attributes
            if entry.kind is EntryKind.DIR:
                self.root.entry, self.root.layer = entry, layer
            else:
                log.warning("layer %d: a root entry of type %s left out", layer, entry.kind.value)
            return
        above, _, name = entry.path.rpartition("/")
        if self.whiteouts and name.startswith(WHITEOUT_PREFIX):
            real = self._resolve(above.split("/") if above else [])
            if real is None:
                log.warning("layer %d: %r: symlink loop above it, left out", layer, entry.path)
                return
            self.parents.clear()
            self._white_out(real, name)
            return
        found = self._parent(above)
        if found is None:
            log.warning("layer %d: %r: symlink loop above it, left out", layer, entry.path)
            return
        real, parent = found
        if parent is None or parent.children is None:
            log.warning("layer %d: %r: a non-directory above it, left out", layer, entry.path)
            return
        existing = parent.children.get(name)
        if existing is not None and existing.is_dir and entry.kind is EntryKind.DIR:
            existing.entry, existing.layer = entry, layer  # merged: the later attributes win
        else:
            if parent.children.pop(name, None) is not None:
                self.parents.clear()  # a path through what was replaced may resolve anew
            if entry.kind is EntryKind.HARDLINK:
                target = self._link_target(entry.linkname)
                if target is None:
                    log.warning(
                        "layer %d: hardlink %r to %r: no such file, left out",
                        layer,
                        entry.path,
                        entry.linkname,
                    )
                    return
                parent.children[name] = target
            else:
                parent.children[name] = TreeNode(entry, layer)
        path = "/".join([*real, name])
        # It and its ancestors are this layer's now: its whiteouts spare them. An ancestor
        # already marked has its own ancestors marked.
        while path and path not in self.upper:
            self.upper.add(path)
            path = path.rpartition("/")[0]

    def _resolve(self, parts: Sequence[str]) -> list[str] | None:
        """The real path of a directory path: symlinks on the way followed within the root,
        as securejoin does (a missing component is taken as it is). None: a loop."""
        real: list[str] = []
        pending = list(reversed(parts))
        followed = 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if real:
                    real.pop()
                continue
            node = self._node_at([*real, name])
            if node is None or node.entry.kind is not EntryKind.SYMLINK:
                real.append(name)
                continue
            followed += 1
            if followed > MAX_SYMLINKS:
                return None
            target = node.entry.linkname
            if target.startswith("/"):
                real = []
            pending.extend(reversed(target.split("/")))
        return real

    def _node_at(self, real: Sequence[str]) -> TreeNode | None:
        node: TreeNode | None = self.root
        for name in real:
            if node is None or node.children is None:
                return None
            node = node.children.get(name)
        return node

    def _make_dirs(self, real: Sequence[str]) -> TreeNode | None:
        """The directory at a real path, implicit directories made on the way; None when a
        non-directory is in the way (umoci's MkdirAll fails there)."""
        node = self.root
        for depth, name in enumerate(real):
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                child = self._implicit_dir("/".join(real[: depth + 1]))
                node.children[name] = child
            node = child
        return node if node.is_dir else None

    def _white_out(self, real: list[str], marker: str) -> None:
        directory = self._node_at(real)
        if directory is None or directory.children is None:
            return  # nothing there to remove
        base = "/".join(real)
        if marker == OPAQUE_MARKER:
            for name in list(directory.children):
                self._purge(directory, name, f"{base}/{name}" if base else name)
        else:
            name = marker[len(WHITEOUT_PREFIX) :]
            if name in directory.children:
                self._purge(directory, name, f"{base}/{name}" if base else name)

    def _purge(self, parent: TreeNode, name: str, path: str) -> None:
        """Remove what lower layers put at `path`, sparing what this layer added."""
        assert parent.children is not None
        node = parent.children[name]
        if path not in self.upper:
            del parent.children[name]
        elif node.children is not None:
            for child in list(node.children):
                self._purge(node, child, f"{path}/{child}")

    def _link_target(self, linkname: str) -> TreeNode | None:
        """What a hardlink shares: the node at its target (its directory part resolved, the
        last component not followed), if it is there and not a directory."""
        *above, name = linkname.split("/")
        real = self._resolve(above)
        if real is None or not name:
            return None
        node = self._node_at([*real, name])
        return None if node is None or node.is_dir else node

    def finish(self) -> Tree:
        tree = Tree(self.root)
        nodes = [node for _, node in tree.walk()]
        for node in nodes:
            node.nlink = 0
        self.root.nlink = 2
        for node in [self.root, *nodes]:
            if node.children is not None:
                node.nlink = 2 + sum(1 for c in node.children.values() if c.is_dir)
            else:
                node.nlink += 1
        return tree
