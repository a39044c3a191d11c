"""referrers/: what refers to an image or index — signatures, SBOMs, attestations.

    referrers/index.json          the referrers as an OCI index (the referrers API's shape)
    referrers/sha256:<hex>/       each referrer by digest: manifest.json, config.json,
                                  layers/ (its blobs), its own referrers/

The list is the store's (the referrers API, its fallback tag, cosign's tags) and the
attestations the image's index holds for it; it is asked for again after `ttl`, since
signatures are added to an image long after it was pushed. Nothing is asked until the
directory is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import trio

from ..errors import NotFoundError
from ..oci import manifest as mf
from ..oci.referrers import merged, referrers_index
from ..vfs.nodes import BytesFile, Dir, Node

if TYPE_CHECKING:
    from .image import ImageDir, ImageViews

log = logging.getLogger(__name__)

INDEX = "index.json"
# referrers/ inside a referrer's directory, down to this depth: tags can point in a loop.
MAX_REFERRER_DEPTH = 3


class ReferrersDir(Dir):
    def __init__(
        self,
        views: ImageViews,
        repo: str,
        digest: str,
        attached: Sequence[mf.Descriptor] = (),
        depth: int = 0,
    ) -> None:
        super().__init__("referrers", views.started, immutable=False)
        self.views = views
        self.repo = repo
        self.digest = digest
        self.attached = tuple(attached)
        self.depth = depth
        self._listed: list[mf.Descriptor] = []
        self._listed_at: float | None = None
        self._index: BytesFile | None = None
        self._dirs: dict[str, ImageDir] = {}
        self._lock = trio.Lock()

    async def entries(self) -> Mapping[str, Node]:
        index, listed = await self._current()
        found: dict[str, Node] = {INDEX: index}
        for d in listed:
            node = await self._referrer(d)
            if node is not None:
                found[d.digest] = node
        return found

    async def lookup(self, name: str) -> Node | None:
        index, listed = await self._current()
        if name == INDEX:
            return index
        for d in listed:
            if d.digest == name:
                return await self._referrer(d)
        return None

    async def _current(self) -> tuple[BytesFile, list[mf.Descriptor]]:
        async with self._lock:
            at = self._listed_at
            if (
                self._index is None
                or at is None
                or time.monotonic() - at >= self.views.referrers_ttl
            ):
                listed = merged(
                    await self.views.store.referrers(self.repo, self.digest), self.attached
                )
                if self._index is None or listed != self._listed:
                    data = referrers_index(listed)
                    self._index = BytesFile(INDEX, data, self.mtime, immutable=False)
                self._listed, self._listed_at = listed, time.monotonic()
            return self._index, self._listed

    async def _referrer(self, d: mf.Descriptor) -> ImageDir | None:
        node = self._dirs.get(d.digest)
        if node is None:
            try:
                doc = await self.views.store.document(self.repo, d.digest)
            except NotFoundError:
                # A referrers list may outlive what it lists (a deleted signature).
                log.info("%s: referrer %s of %s is gone", self.repo, d.digest, self.digest)
                return None
            node = self.views.directory(d.digest, self.repo, doc, depth=self.depth + 1)
            self._dirs[d.digest] = node
        return node
