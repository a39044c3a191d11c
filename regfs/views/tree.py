"""What a registry looks like as a filesystem, defined here and only here (no FUSE).

    <mount>/<namespace>/…/<repo>/<tag or sha256:…>/manifest.json, config.json, layers/…,
    index.json and platforms/<os>-<arch>[-<variant>]/ for an index; .regfs/stats.json.

Nodes are plain objects; the Tree gives them inode numbers, counts kernel lookups and
forgets them. Errors are RegfsError subclasses; fs.py turns them into errno.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import trio

from ..cache.blob import BlobRef
from ..cache.blocks import BlockCache, ReadStream
from ..cache.disk import DiskCache
from ..errors import (
    AuthError,
    NotFoundError,
    OfflineError,
    RegfsError,
    TransientError,
)
from ..oci import manifest as mf
from ..oci.platform import choose_platform, host_platform_default, platform_names
from ..oci.reference import is_digest, is_repository, is_repository_component, is_tag, registry_key
from ..registry.blobs import BlobSource, ForeignURLPolicy
from ..registry.client import RegistryClient
from ..registry.fallback import via_mirrors

log = logging.getLogger(__name__)
T = TypeVar("T")

ROOT_INODE = 1


@dataclass
class Options:
    platform: mf.Platform = field(default_factory=host_platform_default)
    tag_ttl: float = 60.0
    offline: bool = False


@dataclass
class Context:
    """Everything nodes need to fetch things."""

    client: RegistryClient
    cache: BlockCache
    disk: DiskCache | None
    policy: ForeignURLPolicy
    options: Options
    mirrors: Sequence[RegistryClient] = ()
    started: float = field(default_factory=time.time)

    @property
    def registry(self) -> str:
        return registry_key(self.client.address)

    def blob(self, repo: str, descriptor: mf.Descriptor) -> BlobRef:
        source = None
        if not self.options.offline:
            source = BlobSource(
                self.client, repo, descriptor, policy=self.policy, mirrors=self.mirrors
            )
        return BlobRef(descriptor.digest, descriptor.size, self.registry, source)

    async def document(self, repo: str, reference: str) -> mf.Document:
        """A manifest or index by tag or digest, through the disk cache."""
        if is_digest(reference):
            raw = await self._cached_document(reference)
            if raw is not None:
                return mf.parse_document(raw, digest=reference)
        if self.options.offline:
            digest = reference if is_digest(reference) else await self._cached_tag(repo, reference)
            raw = await self._cached_document(digest) if digest else None
            if raw is None or digest is None:
                raise OfflineError(f"{repo}:{reference} is not cached")
            return mf.parse_document(raw, digest=digest)
        try:
            doc = await via_mirrors(
                self.mirrors, self.client, lambda c: c.get_manifest(repo, reference)
            )
        except TransientError:
            # A network failure with the tag seen before: serve what it last resolved to.
            digest = None if is_digest(reference) else await self._cached_tag(repo, reference)
            raw = await self._cached_document(digest) if digest else None
            if raw is None or digest is None:
                raise
            log.warning("%s:%s: registry unreachable, using the cached resolution", repo, reference)
            return mf.parse_document(raw, digest=digest)
        if self.disk is not None:
            disk = self.disk
            disk.put_document(doc.digest, doc.raw)  # small files: inline, a thread hop costs more
            if not is_digest(reference):
                disk.put_tag(self.registry, repo, reference, doc.digest)
        return doc

    async def _cached_document(self, digest: str) -> bytes | None:
        if self.disk is None:
            return None
        return self.disk.get_document(digest)

    async def _cached_tag(self, repo: str, tag: str) -> str | None:
        if self.disk is None:
            return None
        return self.disk.get_tag(self.registry, repo, tag)


# -- nodes -------------------------------------------------------------------------------


class Node:
    """A file or directory. `immutable` content may be cached by the kernel indefinitely."""

    is_dir = False
    immutable = True

    def __init__(self, name: str, mtime: float = 0.0) -> None:
        self.name = name
        self.mtime = mtime
        self.inode = 0  # assigned by the Tree

    @property
    def size(self) -> int:
        return 0


class Dir(Node):
    is_dir = True

    async def lookup(self, name: str) -> Node | None:
        for child in await self.children():
            if child.name == name:
                return child
        return None

    async def children(self) -> list[Node]:
        return []


class File(Node):
    direct_io = False  # content computed at open: size unknown in advance

    async def read(self, offset: int, size: int, stream: ReadStream | None) -> bytes:
        raise NotImplementedError

    def keep_cache(self) -> bool:
        return self.immutable


class BytesFile(File):
    def __init__(self, name: str, data: bytes, mtime: float = 0.0, immutable: bool = True) -> None:
        super().__init__(name, mtime)
        self.data = data
        self.immutable = immutable

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, offset: int, size: int, stream: ReadStream | None) -> bytes:
        return self.data[offset : offset + size]


class BlobFile(File):
    """A blob read lazily through the block cache."""

    def __init__(
        self, name: str, ctx: Context, repo: str, descriptor: mf.Descriptor, mtime: float
    ) -> None:
        super().__init__(name, mtime)
        self.ctx = ctx
        self.blob = ctx.blob(repo, descriptor)

    @property
    def size(self) -> int:
        return self.blob.size

    async def read(self, offset: int, size: int, stream: ReadStream | None) -> bytes:
        return await self.ctx.cache.read(self.blob, offset, size, stream)

    def keep_cache(self) -> bool:
        # Only bytes checked against the digest may stay in the kernel's page cache.
        return self.ctx.cache.is_verified(self.blob.digest)


class StaticDir(Dir):
    def __init__(self, name: str, entries: Sequence[Node], mtime: float = 0.0) -> None:
        super().__init__(name, mtime)
        self.entries = list(entries)

    async def children(self) -> list[Node]:
        return self.entries


class GeneratedFile(File):
    """Content made at open time (stats): direct_io, so its size need not be known."""

    immutable = False
    direct_io = True

    def __init__(self, name: str, make: Callable[[], bytes]) -> None:
        super().__init__(name, time.time())
        self.make = make

    async def read(self, offset: int, size: int, stream: ReadStream | None) -> bytes:
        return self.make()[offset : offset + size]


def config_created(raw: bytes) -> float:
    """The config's `created` as a timestamp (0 when absent or malformed)."""
    try:
        created = json.loads(raw).get("created")
        text = str(created).replace("Z", "+00:00")
        if "." in text:  # Go writes nanoseconds; Python parses at most microseconds
            head, _, tail = text.partition(".")
            digits = "".join(c for c in tail if c.isdigit())
            tail = tail[len(digits) :]
            text = f"{head}.{digits[:6]}{tail}"
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, TypeError, AttributeError):
        return 0.0


class ImageDir(Dir):
    """One image (manifest) or index, by tag, digest or platform. Immutable once resolved."""

    def __init__(
        self, name: str, ctx: Context, repo: str, doc: mf.Document, *, mutable: bool = False
    ) -> None:
        # The mount's start time until the config's `created` is known (on first listing).
        super().__init__(name, ctx.started)
        self.ctx = ctx
        self.repo = repo
        self.doc = doc
        self.immutable = not mutable
        self.resolved_at = time.monotonic()
        self._entries: list[Node] | None = None
        self._lock = trio.Lock()

    async def children(self) -> list[Node]:
        async with self._lock:
            if self._entries is None:
                self._entries = await self._build()
            return self._entries

    async def _build(self) -> list[Node]:
        doc = self.doc
        if isinstance(doc, mf.Index):
            entries: list[Node] = [
                BytesFile("index.json", doc.raw),
                PlatformsDir("platforms", self.ctx, self.repo, doc),
            ]
            chosen = choose_platform(doc, self.ctx.options.platform)
            if chosen is not None:
                image = await self.ctx.document(self.repo, chosen.digest)
                if isinstance(image, mf.Manifest):
                    entries += await image_entries(self.ctx, self.repo, image, self.image_name)
            for entry in entries:
                entry.mtime = entry.mtime or self.mtime
            return entries
        entries = await image_entries(self.ctx, self.repo, doc, self.image_name)
        self.mtime = max((e.mtime for e in entries), default=0.0) or self.mtime
        return entries

    @property
    def image_name(self) -> ImageName:
        # Only tag directories are mutable (RepoDir._image): digests and platforms are not.
        return ImageName(self.name, None if self.immutable else self.name)


@dataclass(frozen=True)
class ImageName:
    """How an image directory is reached: its name, and its tag when it is a tag directory."""

    dirname: str
    tag: str | None = None


# Hook for whole-image views (image.tar, oci/): archive.py registers itself here, so the
# tree does not import what builds on it.
ImageExtra = Callable[[Context, str, mf.Manifest, bytes, float, ImageName], list[Node]]
IMAGE_EXTRAS: list[ImageExtra] = []


async def image_entries(
    ctx: Context, repo: str, image: mf.Manifest, image_name: ImageName | None = None
) -> list[Node]:
    """manifest.json, config.json, layers/ (and whatever IMAGE_EXTRAS add) of one image."""
    if image.config is not None:
        config_ref = ctx.blob(repo, image.config)
        config = await ctx.cache.read_all(config_ref)
        created = config_created(config)
        config_node: Node = BlobFile("config.json", ctx, repo, image.config, created)
    else:
        config = image.schema1_config or b"{}"
        created = config_created(config)
        config_node = BytesFile("config.json", config, created)
    layers = list(image.layers)
    if any(d.size < 0 for d in layers):  # schema 1: sizes from HEAD
        sizes = [await ctx.client.blob_size(repo, d.digest) for d in layers]
        layers = [
            mf.Descriptor(d.media_type, d.digest, s, d.urls)
            for d, s in zip(layers, sizes, strict=True)
        ]
        image = mf.Manifest(
            image.media_type, image.raw, image.digest, None, tuple(layers), image.schema1_config
        )
    layer_nodes: list[Node] = []
    seen = set()
    for d in layers:
        name = f"{d.digest}.{mf.layer_extension(d.media_type)}"
        if name not in seen:  # schema 1 repeats empty layers
            seen.add(name)
            layer_nodes.append(BlobFile(name, ctx, repo, d, created))
    entries: list[Node] = [
        BytesFile("manifest.json", image.raw, created),
        config_node,
        StaticDir("layers", layer_nodes, created),
    ]
    for extra in IMAGE_EXTRAS:
        entries += extra(ctx, repo, image, config, created, image_name or ImageName(""))
    return entries


class PlatformsDir(Dir):
    def __init__(self, name: str, ctx: Context, repo: str, index: mf.Index) -> None:
        super().__init__(name)
        self.ctx = ctx
        self.repo = repo
        self.index = index
        self._nodes: dict[str, Node] = {}

    async def children(self) -> list[Node]:
        return [
            n
            for n in [await self.lookup(name) for name, _ in platform_names(self.index)]
            if n is not None
        ]

    async def lookup(self, name: str) -> Node | None:
        if name in self._nodes:
            return self._nodes[name]
        for entry_name, d in platform_names(self.index):
            if entry_name == name:
                doc = await self.ctx.document(self.repo, d.digest)
                node = ImageDir(name, self.ctx, self.repo, doc)
                self._nodes[name] = node
                return node
        return None


class RepoDir(Dir):
    """A repository and/or a namespace: tags, and nested repositories the catalog lists."""

    immutable = False

    def __init__(self, name: str, ctx: Context, path: str, catalog: Catalog) -> None:
        super().__init__(name, ctx.started)
        self.ctx = ctx
        self.path = path
        self.catalog = catalog
        self._tags: list[str] | None = None
        self._tags_at = 0.0
        self._images: dict[str, ImageDir] = {}
        self._subdirs: dict[str, RepoDir] = {}
        self._tag_dirs: dict[str, TagDir] = {}
        self._lock = trio.Lock()
        self._denied: AuthError | None = None  # the tag list was refused to us

    async def _may_have_tags(self) -> bool:
        """False when the catalog lists repositories below this path but not this path."""
        repos = await self.catalog.repos()
        return repos is None or self.path in repos or self.ctx.options.offline

    def _tags_fresh(self) -> bool:
        return (
            self._tags is not None and time.monotonic() - self._tags_at < self.ctx.options.tag_ttl
        )

    async def tags(self) -> list[str]:
        async with self._lock:
            tags = self._tags
            if tags is None or not self._tags_fresh():
                tags = self._tags = await self._fetch_tags()
                self._tags_at = time.monotonic()
            return tags

    async def _fetch_tags(self) -> list[str]:
        disk = self.ctx.disk
        self._denied = None
        if self.ctx.options.offline:
            return (
                await trio.to_thread.run_sync(disk.cached_tags, self.ctx.registry, self.path)
                if disk
                else []
            )
        try:
            return sorted(
                set(
                    await via_mirrors(
                        self.ctx.mirrors, self.ctx.client, lambda c: c.list_tags(self.path)
                    )
                )
            )
        except (NotFoundError, AuthError) as exc:
            log.debug("tags of %s: %s", self.path, exc)
            if isinstance(exc, AuthError):
                self._denied = exc
            return []

    async def _unlistable(self) -> bool:
        """Refused the tag list, and no catalog to say what is here: only the registry knows."""
        return self._denied is not None and await self.catalog.repos() is None

    async def children(self) -> list[Node]:
        nodes: list[Node] = []
        names = set()
        tags = await self.tags() if await self._may_have_tags() else []
        if self._denied is not None and await self._unlistable():
            raise self._denied  # an empty listing would hide the refusal (EACCES instead)
        for tag in tags:  # not resolved here: a repository may have thousands of tags
            nodes.append(self._tag_dir(tag))
            names.add(tag)
        for component in await self.catalog.children_of(self.path):
            if component not in names:
                nodes.append(self._subdir(component))
        return nodes

    async def lookup(self, name: str) -> Node | None:
        if is_digest(name):
            return await self._image(name)
        if not await self._may_have_tags():
            pass  # a namespace the catalog knows is no repository: only nested repos below
        elif is_tag(name) and not self.ctx.options.offline and not self._tags_fresh():
            # Ask for the manifest straight away: one request instead of the tag list first
            # (a tag wins over a nested repository of the same name anyway).
            try:
                node = await self._tag(name)
            except AuthError:
                node = None  # decided below, where a refused tag list is handled
            if node is not None:
                return node
        # Offline, tags() lists the tags the cache knows; a name outside it may still be a
        # cached nested repository (library/hello under library), so it is not a tag yet.
        if is_tag(name) and await self._may_have_tags() and name in await self.tags():
            return await self._tag(name)
        if not is_repository_component(name) or not is_repository(f"{self.path}/{name}"):
            return None
        if await self.catalog.might_exist(f"{self.path}/{name}"):
            if is_tag(name) and await self._unlistable():
                return await self._tag_or_repo(name)
            return self._subdir(name)
        if is_tag(name):
            return await self._tag(name)  # a tag the list did not show (yet)
        return None

    def _subdir(self, name: str) -> RepoDir:
        node = self._subdirs.get(name)
        if node is None:
            node = self._subdirs[name] = RepoDir(
                name, self.ctx, f"{self.path}/{name}", self.catalog
            )
        return node

    async def _tag_or_repo(self, name: str) -> Node:
        """An image if its manifest answers, a nested repo if its tags do, else the refusal:
        without credentials a protected registry is EACCES, not an empty directory."""
        try:
            node = await self._tag(name)
        except AuthError:
            sub = self._subdir(name)
            await sub.tags()
            if sub._denied is not None:
                raise
            return sub
        return node if node is not None else self._subdir(name)

    async def _tag(self, tag: str) -> TagDir | None:
        """The directory of a tag, resolved now (a lookup must know whether it exists)."""
        image = await self._image(tag)
        return None if image is None else self._tag_dir(tag, image)

    def _tag_dir(self, tag: str, image: ImageDir | None = None) -> TagDir:
        """One TagDir per tag and image: when the tag moves, a new one (a new inode), so the
        kernel's cached entries under the old one are not taken for the new image's."""
        node = self._tag_dirs.get(tag)
        if node is None or (image is not None and node.bound not in (None, image)):
            node = self._tag_dirs[tag] = TagDir(self, tag)
        if image is not None:
            node.bound = image
        return node

    async def _image(self, reference: str) -> ImageDir | None:
        node = self._images.get(reference)
        mutable = not is_digest(reference)
        if node is not None and (
            not mutable or time.monotonic() - node.resolved_at < self.ctx.options.tag_ttl
        ):
            return node
        try:
            doc = await self.ctx.document(self.path, reference)
        except NotFoundError:
            self._images.pop(reference, None)
            return None
        if node is not None and node.doc.digest == doc.digest:
            node.resolved_at = time.monotonic()
            return node
        node = ImageDir(reference, self.ctx, self.path, doc, mutable=mutable)
        self._images[reference] = node
        return node


class TagDir(Dir):
    """A tag: listed from the tag list, resolved to its image (manifest) only when used."""

    immutable = False

    def __init__(self, repo: RepoDir, tag: str) -> None:
        super().__init__(tag, repo.ctx.started)
        self.repo = repo
        self.bound: ImageDir | None = None

    async def image(self) -> ImageDir:
        image = await self.repo._image(self.name)  # re-resolved after the tag TTL
        if image is None:
            raise NotFoundError(f"{self.repo.path}:{self.name}")
        self.bound = image
        return image

    async def children(self) -> list[Node]:
        image = await self.image()
        entries = await image.children()
        self.mtime = image.mtime
        return entries

    async def lookup(self, name: str) -> Node | None:
        return await (await self.image()).lookup(name)


class Catalog:
    """/v2/_catalog, where the registry allows it (None: not available, names are looked up)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._repos: list[str] | None = None
        self._at = -1e18
        self._lock = trio.Lock()

    async def repos(self) -> list[str] | None:
        async with self._lock:
            if time.monotonic() - self._at > self.ctx.options.tag_ttl:
                self._repos = await self._fetch()
                self._at = time.monotonic()
            return self._repos

    async def _fetch(self) -> list[str] | None:
        if self.ctx.options.offline:
            disk = self.ctx.disk
            return (
                await trio.to_thread.run_sync(disk.cached_repos, self.ctx.registry) if disk else []
            )
        try:
            return sorted(set(await self.ctx.client.catalog()))
        except (NotFoundError, AuthError, RegfsError) as exc:
            log.info("catalog not available (%s); repositories are reachable by name", exc)
            return None

    async def children_of(self, path: str) -> list[str]:
        repos = await self.repos() or []
        prefix = f"{path}/" if path else ""
        return sorted(
            {r[len(prefix) :].split("/", 1)[0] for r in repos if r.startswith(prefix) and r != path}
        )

    async def might_exist(self, path: str) -> bool:
        repos = await self.repos()
        if repos is None:
            return True
        return any(r == path or r.startswith(f"{path}/") for r in repos)


class RootDir(Dir):
    immutable = False

    def __init__(self, ctx: Context, control: Dir) -> None:
        super().__init__("", ctx.started)
        self.ctx = ctx
        self.catalog = Catalog(ctx)
        self.control = control
        self._subdirs: dict[str, RepoDir] = {}

    async def children(self) -> list[Node]:
        return [self.control, *[self._subdir(c) for c in await self.catalog.children_of("")]]

    async def lookup(self, name: str) -> Node | None:
        if name == self.control.name:
            return self.control
        if not is_repository_component(name):
            return None
        if await self.catalog.might_exist(name):
            return self._subdir(name)
        return None

    def _subdir(self, name: str) -> RepoDir:
        node = self._subdirs.get(name)
        if node is None:
            node = self._subdirs[name] = RepoDir(name, self.ctx, name, self.catalog)
        return node


# -- the tree: inodes and lookup counts ------------------------------------------------------


@dataclass
class Handle:
    node: File
    stream: ReadStream
    data: bytes | None = None  # snapshot for direct_io files


class Tree:
    def __init__(self, root: Dir) -> None:
        self.root = root
        root.inode = ROOT_INODE
        self.nodes: dict[int, Node] = {ROOT_INODE: root}
        self.lookups: dict[int, int] = {}
        self._by_identity: dict[int, int] = {id(root): ROOT_INODE}
        self._next_inode = ROOT_INODE + 1
        self.handles: dict[int, Handle] = {}
        self._next_handle = 1

    def node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise NotFoundError(f"no inode {inode}") from None

    def _register(self, node: Node) -> Node:
        inode = self._by_identity.get(id(node))
        if inode is None or self.nodes.get(inode) is not node:
            inode = self._next_inode
            self._next_inode += 1
            node.inode = inode
            self.nodes[inode] = node
            self._by_identity[id(node)] = inode
        return node

    def remember(self, node: Node) -> None:
        """The kernel now holds one more reference to this node."""
        self._register(node)
        if node.inode != ROOT_INODE:
            self.lookups[node.inode] = self.lookups.get(node.inode, 0) + 1

    def forget(self, inode: int, count: int) -> None:
        if inode == ROOT_INODE:
            return
        left = self.lookups.get(inode, 0) - count
        if left > 0:
            self.lookups[inode] = left
            return
        self.lookups.pop(inode, None)
        if not any(h.node.inode == inode for h in self.handles.values()):
            node = self.nodes.pop(inode, None)
            if node is not None:
                self._by_identity.pop(id(node), None)

    async def lookup(self, parent_inode: int, name: str) -> Node:
        parent = self.node(parent_inode)
        if not isinstance(parent, Dir):
            raise NotFoundError(f"not a directory: inode {parent_inode}")
        if name in (".", ".."):
            raise NotFoundError(name)
        node = await parent.lookup(name)
        if node is None:
            raise NotFoundError(name)
        self.remember(node)
        return node

    async def listdir(self, inode: int) -> list[Node]:
        node = self.node(inode)
        if not isinstance(node, Dir):
            raise NotFoundError(f"not a directory: inode {inode}")
        children = await node.children()
        for child in children:
            self._register(child)
        return children

    async def open(self, inode: int) -> tuple[int, File]:
        node = self.node(inode)
        if not isinstance(node, File):
            raise NotFoundError(f"not a file: inode {inode}")
        handle = Handle(node, ReadStream())
        if isinstance(node, GeneratedFile):
            handle.data = node.make()
        fh = self._next_handle
        self._next_handle += 1
        self.handles[fh] = handle
        return fh, node

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles[fh]
        if handle.data is not None:
            return handle.data[offset : offset + size]
        return await handle.node.read(offset, size, handle.stream)

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None and handle.node.inode not in self.lookups:
            self.forget(handle.node.inode, 0)
