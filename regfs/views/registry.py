"""A registry as directories: namespaces and repositories, their tags, images by digest.

    <root>/<namespace>/…/<repo>/<tag>/ | sha256:<hex>/     (and the mount's control dir)

Repositories come from the catalog where the registry allows one; where it does not, any
valid name may be a repository, found by asking, and a directory lists the repositories
reached below it so far. A tag is listed from the tag list and resolved to its image only
when its directory is used (a repository may have thousands); after the tag TTL the store
re-checks it (one HEAD). A path known to be a repository is not probed again for being a
tag of its parent. On a registry with a default namespace (Docker Hub's `library`), a
one-component name at the top is short for a repository there: `alpine` is
`library/alpine`, as docker spells it, and is not listed (the full name is).
Everything registry-side is asked of a `Store`, one per registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from ..cache import BlockCache
from ..errors import AuthError, NotFoundError, RegistryError
from ..oci import manifest as mf
from ..oci.platform import host_platform_default
from ..oci.reference import (
    expand_short_name,
    is_digest,
    is_repository,
    is_repository_component,
    is_tag,
)
from ..vfs.nodes import Dir, Node
from .image import ImageDir, ImageViewBuilder, ImageViews
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class Options:
    """How a registry is shown: the platform an index's directory shows, how long a tag's
    resolution (and the tag list, the catalog) holds, and whether only the cache is used."""

    platform: mf.Platform = field(default_factory=host_platform_default)
    tag_ttl: float = 60.0
    offline: bool = False  # given to the store, which enforces it


class Catalog:
    """/v2/_catalog through the store, kept for the tag TTL (None: names are looked up)."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._repos: list[str] | None = None
        self._at = -1e18
        self._lock = trio.Lock()

    async def repos(self) -> list[str] | None:
        async with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._repos = await self.store.catalog()
                self._at = time.monotonic()
            return self._repos

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
    """A registry's top: the namespaces the catalog shows (others by name), and `control`."""

    def __init__(
        self,
        store: Store,
        cache: BlockCache,
        options: Options | None = None,
        *,
        control: Node | None = None,
        image_views: Sequence[ImageViewBuilder] = (),
        started: float | None = None,
    ) -> None:
        options = options or Options()
        started = time.time() if started is None else started
        super().__init__("", started, immutable=False)
        self.store = store
        self.tag_ttl = options.tag_ttl
        self.started = started
        self.catalog = Catalog(store, options.tag_ttl)
        self.images = ImageViews(
            store,
            cache,
            platform=options.platform,
            builders=image_views,
            started=started,
            referrers_ttl=options.tag_ttl,  # referrers are found through tags: same freshness
        )
        self.control = control
        self._subdirs: dict[str, RepoDir] = {}

    async def entries(self) -> Mapping[str, Node]:
        found: dict[str, Node] = {} if self.control is None else {self.control.name: self.control}
        for component in await self.catalog.children_of(""):
            found.setdefault(component, self._subdir(component))
        if await self.catalog.repos() is None:
            for name, sub in self._subdirs.items():
                if sub.reached(listed_as_repository=sub.repository == sub.path):
                    found.setdefault(name, sub)  # a short name is listed by its full name
        return found

    async def lookup(self, name: str) -> Node | None:
        if self.control is not None and name == self.control.name:
            return self.control
        if not is_repository_component(name):
            return None
        repository = expand_short_name(name, self.store.default_namespace)
        if await self.catalog.might_exist(name) or await self.catalog.might_exist(repository):
            return self._subdir(name)
        return None

    def _subdir(self, name: str) -> RepoDir:
        node = self._subdirs.get(name)
        if node is None:
            repository = expand_short_name(name, self.store.default_namespace)
            node = self._subdirs[name] = RepoDir(self, name, name, repository)
        return node


class RepoDir(Dir):
    """A repository and/or a namespace: tags, and nested repositories the catalog lists.

    `path` is where it is in the tree (nested repositories are `path/<name>`), `repository`
    the registry's name for its tags and images: the same but for a short name at the top
    (`alpine`, short for `library/alpine` where that is the default namespace).
    """

    def __init__(self, root: RootDir, name: str, path: str, repository: str | None = None) -> None:
        super().__init__(name, root.started, immutable=False)
        self.root = root
        self.store = root.store
        self.path = path
        self.repository = repository or path
        self._tags: list[str] | None = None
        self._tags_at = 0.0
        self._images: dict[str, ImageDir] = {}
        self._resolving: dict[str, trio.Lock] = {}  # one resolution of a reference at a time
        self._subdirs: dict[str, RepoDir] = {}
        self._tag_dirs: dict[str, TagDir] = {}
        self._lock = trio.Lock()
        self._denied: AuthError | None = None  # the tag list was refused to us
        self._missing: NotFoundError | None = None  # the tag list said: no such repository
        self.confirmed = False  # the registry answered for it: a tag list or a manifest

    def reached(self, *, listed_as_repository: bool = True) -> bool:
        """Known to hold something: a repository that answered, or one reached below it.
        Without a catalog, this is what a directory can list of what is below it."""
        if self.confirmed and listed_as_repository:
            return True
        return any(sub.reached() for sub in self._subdirs.values())

    async def _may_have_tags(self) -> bool:
        """False when the catalog lists repositories below this path but not this path."""
        repos = await self.root.catalog.repos()
        return repos is None or self.repository in repos or self.store.offline

    def _tags_fresh(self) -> bool:
        return self._tags is not None and time.monotonic() - self._tags_at < self.root.tag_ttl

    async def tags(self) -> list[str]:
        async with self._lock:
            tags = self._tags
            if tags is None or not self._tags_fresh():
                tags = self._tags = await self._fetch_tags()
                self._tags_at = time.monotonic()
            return tags

    async def _fetch_tags(self) -> list[str]:
        self._denied = self._missing = None
        try:
            tags = await self.store.tags(self.repository)
        except (NotFoundError, AuthError) as exc:
            log.debug("tags of %s: %s", self.repository, exc)
            if isinstance(exc, AuthError):
                self._denied = exc
            else:
                self._missing = exc
            return []
        self.confirmed = True
        return tags

    def _list_refusal(self) -> RegistryError | None:
        """Why the tag list was refused, if it was: AuthError (EACCES), or for a mount without
        credentials the store's NotFoundError of a refusal (status 401/403: ENOENT, as docker
        says "does not exist or may require 'docker login'")."""
        if self._denied is not None:
            return self._denied
        if self._missing is not None and self._missing.status in (401, 403):
            return self._missing
        return None

    async def _unlistable(self) -> bool:
        """Refused the tag list, and no catalog to say what is here: only the registry knows."""
        return self._list_refusal() is not None and await self.root.catalog.repos() is None

    async def entries(self) -> Mapping[str, Node]:
        found: dict[str, Node] = {}
        tags = await self.tags() if await self._may_have_tags() else []
        if await self.root.catalog.repos() is None:
            # Nothing says what is below but what was reached by name: list that, and when
            # there is nothing, the refusal (EACCES) or the absence (ENOENT), not emptiness.
            for name, sub in self._subdirs.items():
                if sub.reached():
                    found[name] = sub
            failure = self._denied or self._missing
            if failure is not None and not found:
                raise failure
        for tag in tags:  # not resolved here: a repository may have thousands of tags
            found[tag] = self._tag_dir(tag)  # a tag wins
        for component in await self.root.catalog.children_of(self.path):
            found.setdefault(component, self._subdir(component))
        return found

    async def lookup(self, name: str) -> Node | None:
        if is_digest(name):
            return await self._image(name)
        known = self._subdirs.get(name)
        if known is not None and known.confirmed and not self.confirmed:
            # A repository below a path that is none (so far): no probe for a tag of ours.
            return known
        probed = False  # the manifest of `name` as our tag was asked for: no such tag
        if not await self._may_have_tags():
            pass  # a namespace the catalog knows is no repository: only nested repos below
        elif is_tag(name) and not self.store.offline and not self._tags_fresh():
            # Ask for the manifest straight away: one request instead of the tag list first
            # (a tag wins over a nested repository of the same name anyway).
            try:
                node = await self._tag(name)
            except AuthError:
                node = None  # decided below, where a refused tag list is handled
            if node is not None:
                return node
            probed = True
        # Offline, tags() lists the tags the cache knows; a name outside it may still be a
        # cached nested repository (library/hello under library), so it is not a tag yet.
        if is_tag(name) and await self._may_have_tags() and name in await self.tags():
            return await self._tag(name)
        if not is_repository_component(name) or not is_repository(f"{self.path}/{name}"):
            return None
        if await self.root.catalog.might_exist(f"{self.path}/{name}"):
            if is_tag(name) and await self._unlistable():
                return await self._tag_or_repo(name, probed)
            return self._subdir(name)
        if is_tag(name):
            return await self._tag(name)  # a tag the list did not show (yet)
        return None

    def _subdir(self, name: str) -> RepoDir:
        node = self._subdirs.get(name)
        if node is None:
            node = self._subdirs[name] = RepoDir(self.root, name, f"{self.path}/{name}")
        return node

    async def _tag_or_repo(self, name: str, probed: bool) -> Node:
        """Our tag list was refused and no catalog says what is here: an image if its manifest
        answers, a nested repository if its tags do (or one was reached below it), else the
        refusal, not an empty directory: EACCES, or ENOENT for a mount without credentials.
        `probed`: the manifest was asked for already."""
        if not probed:
            try:
                node = await self._tag(name)
            except AuthError:
                node = None
            if node is not None:
                return node
        sub = self._subdir(name)
        await sub.tags()
        failure = sub._list_refusal()
        if failure is not None and not sub.reached():
            raise failure
        return sub

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

    def _resolved(self, reference: str) -> ImageDir | None:
        """The image `reference` resolved to, while that holds: a digest for ever, a tag for
        the tag TTL."""
        node = self._images.get(reference)
        if node is not None and (
            is_digest(reference) or time.monotonic() - node.resolved_at < self.root.tag_ttl
        ):
            return node
        return None

    async def _image(self, reference: str) -> ImageDir | None:
        node = self._resolved(reference)
        if node is not None:
            return node
        lock = self._resolving.setdefault(reference, trio.Lock())
        async with lock:  # parallel lookups of one tag: one request, not one each
            node = self._resolved(reference)
            if node is not None:
                return node
            return await self._resolve(reference)

    async def _resolve(self, reference: str) -> ImageDir | None:
        node = self._images.get(reference)  # a tag's past resolution, to re-check
        try:
            doc = await self.store.document(
                self.repository, reference, current=None if node is None else node.doc
            )
        except NotFoundError:
            self._images.pop(reference, None)
            return None
        self.confirmed = True
        if node is not None and node.doc.digest == doc.digest:
            node.resolved_at = time.monotonic()
            return node
        mutable = not is_digest(reference)
        node = self.root.images.directory(reference, self.repository, doc, mutable=mutable)
        self._images[reference] = node
        return node


class TagDir(Dir):
    """A tag: listed from the tag list, resolved to its image (manifest) only when used."""

    def __init__(self, repo: RepoDir, tag: str) -> None:
        super().__init__(tag, repo.root.started, immutable=False)
        self.repo = repo
        self.bound: ImageDir | None = None

    async def image(self) -> ImageDir:
        image = await self.repo._image(self.name)  # re-resolved after the tag TTL
        if image is None:
            raise NotFoundError(f"{self.repo.repository}:{self.name}")
        self.bound = image
        return image

    async def entries(self) -> Mapping[str, Node]:
        image = await self.image()
        entries = await image.entries()
        self.set_mtime(image.mtime)
        return entries

    async def lookup(self, name: str) -> Node | None:
        return await (await self.image()).lookup(name)
