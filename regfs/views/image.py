"""Image directories: manifest.json, config.json, layers/, and the views given to the mount.

    <tag or sha256:…>/manifest.json, config.json, layers/<digest>.<ext> (and <n>.<ext>
    links in the manifest's order), referrers/, then whatever the image view builders add
    (image.tar, oci/); for an index: index.json, platforms/<name>/ (runnable images only),
    referrers/ and the entries of the platform asked for.

An artifact (a Helm chart, an SBOM, a signature: `Manifest.is_image` is false) shows its
manifest, config and blobs the same way, and nothing the builders make: it is no image.

Builders are passed in where the mount is wired (`ImageViews(builders=…)`), not registered
by importing them: what an image directory shows is decided in one place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import trio

from ..cache import BlobRef, BlockCache, ReadStream
from ..oci import manifest as mf
from ..oci.platform import choose_platform, platform_names
from ..oci.referrers import attestations_of
from ..vfs.nodes import Attrs, BytesFile, Dir, File, FileHandle, Kind, Node, StaticDir, Symlink
from .referrers import MAX_REFERRER_DEPTH, ReferrersDir
from .store import Store

log = logging.getLogger(__name__)


class BlobFile(File):
    """A blob read lazily through the block cache."""

    __slots__ = ("blob", "cache")

    def __init__(self, name: str, cache: BlockCache, blob: BlobRef, mtime: float) -> None:
        super().__init__(name, blob.size, mtime)
        self.cache = cache
        self.blob = blob

    async def open(self) -> FileHandle:
        return BlobHandle(self.cache, self.blob)

    def keep_cache(self) -> bool:
        # Only bytes checked against the digest may stay in the kernel's page cache.
        return self.cache.is_verified(self.blob.digest)


class BlobHandle:
    """An open blob: its stream tells the cache where the last read ended (readahead)."""

    __slots__ = ("blob", "cache", "stream")

    def __init__(self, cache: BlockCache, blob: BlobRef) -> None:
        self.cache = cache
        self.blob = blob
        self.stream = ReadStream()

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self.cache.read_buffer(self.blob, offset, size, self.stream)

    def release(self) -> None:
        self.cache.close_stream(self.stream)  # its readahead stops (vfs ReleasableHandle)


def config_created(raw: bytes) -> float:
    """The config's `created` as a timestamp (0 when absent or malformed)."""
    try:
        return parse_created(json.loads(raw).get("created"))
    except (ValueError, AttributeError):
        return 0.0


def parse_created(created: object) -> float:
    """An RFC 3339 time (`created`, an artifact's created annotation) as a timestamp, 0 when
    absent or malformed."""
    try:
        text = str(created).replace("Z", "+00:00")
        if "." in text:  # Go writes nanoseconds; Python parses at most microseconds
            head, _, tail = text.partition(".")
            digits = "".join(c for c in tail if c.isdigit())
            tail = tail[len(digits) :]
            text = f"{head}.{digits[:6]}{tail}"
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, TypeError, AttributeError):
        return 0.0


@dataclass(frozen=True)
class ImageName:
    """How an image directory is reached: its name, and its tag when it is a tag directory."""

    dirname: str
    tag: str | None = None


@dataclass(frozen=True)
class ResolvedImage:
    """One image as a builder gets it: the manifest (sizes known), its config, where its
    blobs come from, and how its directory was reached."""

    store: Store
    cache: BlockCache
    repo: str
    manifest: mf.Manifest
    config: bytes
    created: float
    name: ImageName

    def blob(self, descriptor: mf.Descriptor) -> BlobRef:
        return self.store.blob(self.repo, descriptor)


@dataclass(frozen=True)
class ImageView:
    """What a builder adds to an image directory: nodes beside manifest.json (rootfs/) and
    nodes inside layers/ (layers/<digest>/, beside the blob)."""

    beside: Sequence[Node] = ()
    in_layers: Sequence[Node] = ()


# A whole-image view (image.tar and oci/ as a list of nodes beside manifest.json; rootfs/
# and layers/<digest>/ as an ImageView); called for images only, never for an artifact.
ImageViewBuilder = Callable[[ResolvedImage], Sequence[Node] | ImageView]


class ImageViews:
    """Makes one registry's image directories and what they hold."""

    def __init__(
        self,
        store: Store,
        cache: BlockCache,
        *,
        platform: mf.Platform,
        builders: Sequence[ImageViewBuilder] = (),
        started: float = 0.0,
        referrers_ttl: float = 60.0,
    ) -> None:
        self.store = store
        self.cache = cache
        self.platform = platform  # the entry of an index its directory shows
        self.builders = tuple(builders)
        self.started = started  # the mtime of a directory before its image's is known
        self.referrers_ttl = referrers_ttl  # referrers/ is listed again after this

    def directory(
        self,
        name: str,
        repo: str,
        doc: mf.Document,
        *,
        mutable: bool = False,
        attached: Sequence[mf.Descriptor] = (),
        depth: int = 0,
    ) -> ImageDir:
        """`attached`: referrers the image's index holds for it (buildx attestations);
        `depth`: how many referrers/ levels down the directory is."""
        return ImageDir(name, self, repo, doc, mutable=mutable, attached=attached, depth=depth)

    async def image_entries(self, repo: str, image: mf.Manifest, name: ImageName) -> list[Node]:
        """manifest.json, config.json, layers/ and, for an image, the builders' views."""
        store, cache = self.store, self.cache
        config = b"{}"
        if image.config is None:
            config = image.schema1_config or config
            created = config_created(config)
            config_node: Node = BytesFile("config.json", config, created)
        else:
            config_ref = store.blob(repo, image.config)
            if image.is_image:
                config = await cache.read_all(config_ref)
                created = config_created(config)
            else:  # an artifact's config may be anything: not read to make the directory
                created = parse_created(image.annotations.get(mf.CREATED_ANNOTATION))
            filename = mf.config_filename(image.config.media_type)
            config_node = BlobFile(filename, cache, config_ref, created)
        image = await self._with_sizes(repo, image)
        beside: list[Node] = []
        in_layers = self._layer_nodes(repo, image, created)
        if image.is_image:
            resolved = ResolvedImage(store, cache, repo, image, config, created, name)
            for build in self.builders:
                view = build(resolved)
                if isinstance(view, ImageView):
                    beside += view.beside
                    in_layers += view.in_layers
                else:
                    beside += view
        layers = StaticDir("layers", in_layers, created)
        return [BytesFile("manifest.json", image.raw, created), config_node, layers, *beside]

    def _layer_nodes(self, repo: str, image: mf.Manifest, created: float) -> list[Node]:
        """Each blob under its digest name, and `<n>.<ext>` links to them in the manifest's
        order (1 is the base layer): the order is visible, and `tar tzf 1.tar.gz` works as
        typed, where GNU tar takes `sha256:….tar.gz` for a remote host:file."""
        nodes: dict[str, Node] = {}
        width = len(str(len(image.layers)))
        links: list[Node] = []
        for number, d in enumerate(image.layers, 1):
            filename = mf.blob_filename(d)
            if filename not in nodes:  # schema 1 repeats empty layers
                nodes[filename] = BlobFile(filename, self.cache, self.store.blob(repo, d), created)
            extension = filename[len(d.digest) :]
            target = filename.encode()
            attrs = Attrs(Kind.SYMLINK, 0o777, size=len(target), mtime=created)
            links.append(Symlink(f"{number:0{width}d}{extension}", target, attrs))
        return [*nodes.values(), *links]

    async def _with_sizes(self, repo: str, image: mf.Manifest) -> mf.Manifest:
        """Schema 1 states no layer sizes: ask the registry (HEAD) for them."""
        if all(d.size >= 0 for d in image.layers):
            return image
        sizes = [await self.store.blob_size(repo, d.digest) for d in image.layers]
        layers = tuple(
            mf.Descriptor(d.media_type, d.digest, s, d.urls)
            for d, s in zip(image.layers, sizes, strict=True)
        )
        return mf.Manifest(
            image.media_type, image.raw, image.digest, None, layers, image.schema1_config
        )


class ImageDir(Dir):
    """One image, artifact or index, by tag, digest, platform or as a referrer. Immutable
    once resolved (its referrers/ is not: referrers come and go)."""

    def __init__(
        self,
        name: str,
        views: ImageViews,
        repo: str,
        doc: mf.Document,
        *,
        mutable: bool = False,
        attached: Sequence[mf.Descriptor] = (),
        depth: int = 0,
    ) -> None:
        # The mount's start time until the config's `created` is known (on first listing).
        super().__init__(name, views.started, immutable=not mutable)
        self.views = views
        self.repo = repo
        self.doc = doc
        self.attached = tuple(attached)
        self.depth = depth
        self.resolved_at = time.monotonic()
        self._entries: dict[str, Node] | None = None
        self._lock = trio.Lock()

    async def entries(self) -> Mapping[str, Node]:
        async with self._lock:
            if self._entries is None:
                self._entries = {node.name: node for node in await self._build()}
            return self._entries

    async def _build(self) -> list[Node]:
        doc, views = self.doc, self.views
        if isinstance(doc, mf.Index):
            entries: list[Node] = [
                BytesFile("index.json", doc.raw),
                PlatformsDir("platforms", views, self.repo, doc),
                *self._referrers(attestations_of(doc)),
            ]
            chosen = choose_platform(doc, views.platform)
            if chosen is not None:
                image = await views.store.document(self.repo, chosen.digest)
                if isinstance(image, mf.Manifest) and image.is_image:
                    entries += await views.image_entries(self.repo, image, self.image_name)
            for entry in entries:
                entry.set_mtime(entry.mtime or self.mtime)
            return entries
        entries = await views.image_entries(self.repo, doc, self.image_name)
        self.set_mtime(max((e.mtime for e in entries), default=0.0) or self.mtime)
        return entries + self._referrers(self.attached)

    def _referrers(self, attached: Sequence[mf.Descriptor]) -> list[Node]:
        """referrers/, unless this is a referrer of a referrer of a … (a chain of tags may
        loop: the depth bounds what `ls -R` walks)."""
        if self.depth >= MAX_REFERRER_DEPTH:
            return []
        referrers = ReferrersDir(self.views, self.repo, self.doc.digest, attached, self.depth)
        referrers.set_mtime(self.mtime)
        return [referrers]

    @property
    def image_name(self) -> ImageName:
        # Only tag directories are mutable (RepoDir._image): digests and platforms are not.
        return ImageName(self.name, None if self.immutable else self.name)


class PlatformsDir(Dir):
    """platforms/: each runnable image of an index under its os-arch[-variant] name (an
    entry whose manifest turns out to be an artifact is left out)."""

    def __init__(self, name: str, views: ImageViews, repo: str, index: mf.Index) -> None:
        super().__init__(name)
        self.views = views
        self.repo = repo
        self.index = index
        self._named = dict(platform_names(index))
        self._nodes: dict[str, Node | None] = {}

    async def entries(self) -> Mapping[str, Node]:
        found = {name: await self.lookup(name) for name in self._named}
        return {name: node for name, node in found.items() if node is not None}

    async def lookup(self, name: str) -> Node | None:
        if name in self._nodes or name not in self._named:
            return self._nodes.get(name)
        entry = self._named[name]
        doc = await self.views.store.document(self.repo, entry.digest)
        node = None
        if isinstance(doc, mf.Index) or doc.is_image:
            attached = attestations_of(self.index, entry.digest)
            node = self.views.directory(name, self.repo, doc, attached=attached)
        self._nodes[name] = node
        return node
