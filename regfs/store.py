"""One registry as the views see it: documents, tags, the catalog and blobs, with fallbacks.

The store is where a registry's client, its pull-through mirrors and the disk cache meet,
and the one place that decides where an answer comes from: mirrors first, then the registry
(`via_mirrors`, the rule blobs follow too, inside `BlobSource`); the disk cache when the
registry is out of reach for a tag seen before; only the disk cache when offline.

It lives beside the views, not in them: views know it through `regfs.views.store.Store` (a
Protocol), so they are tested with a fake; one store per registry, so a mount of several
registries is several stores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from .cache import BlobRef, DiskCache
from .errors import AuthError, NotFoundError, OfflineError, RegfsError, TransientError
from .oci import manifest as mf
from .oci import referrers as oci_referrers
from .oci.reference import is_digest, registry_key
from .registry.blobs import BlobSource, ForeignURLPolicy
from .registry.client import RegistryClient
from .registry.fallback import via_mirrors

log = logging.getLogger(__name__)


class RegistryStore:
    def __init__(
        self,
        client: RegistryClient,
        *,
        mirrors: Sequence[RegistryClient] = (),
        disk: DiskCache | None = None,
        policy: ForeignURLPolicy | None = None,
        offline: bool = False,
    ) -> None:
        self.client = client
        self.mirrors = list(mirrors)
        self.disk = disk
        self.policy = policy if policy is not None else ForeignURLPolicy()
        self.offline = offline
        self.key = registry_key(client.address)  # its area in the disk cache

    @property
    def host(self) -> str:
        return self.client.address.host

    def blob(self, repo: str, descriptor: mf.Descriptor) -> BlobRef:
        """A blob to read through the block cache; offline, one with nowhere to fetch from."""
        source = None
        if not self.offline:
            source = BlobSource(
                self.client, repo, descriptor, policy=self.policy, mirrors=self.mirrors
            )
        return BlobRef(descriptor.digest, descriptor.size, self.key, source)

    async def blob_size(self, repo: str, digest: str) -> int:
        """A blob's size from the registry (schema 1 manifests do not state it)."""
        return await self.client.blob_size(repo, digest)

    async def document(self, repo: str, reference: str) -> mf.Document:
        """A manifest or index by tag or digest, through the disk cache."""
        if is_digest(reference):
            raw = self._cached_document(reference)
            if raw is not None:
                return mf.parse_document(raw, digest=reference)
        if self.offline:
            digest = reference if is_digest(reference) else self._cached_tag(repo, reference)
            raw = self._cached_document(digest) if digest else None
            if raw is None or digest is None:
                raise OfflineError(f"{repo}:{reference} is not cached")
            return mf.parse_document(raw, digest=digest)
        try:
            doc = await via_mirrors(
                self.mirrors, self.client, lambda c: c.get_manifest(repo, reference)
            )
        except TransientError:
            # A network failure with the tag seen before: serve what it last resolved to.
            digest = None if is_digest(reference) else self._cached_tag(repo, reference)
            raw = self._cached_document(digest) if digest else None
            if raw is None or digest is None:
                raise
            log.warning("%s:%s: registry unreachable, using the cached resolution", repo, reference)
            return mf.parse_document(raw, digest=digest)
        if self.disk is not None:
            # Small files: written inline, a thread hop costs more.
            self.disk.put_document(doc.digest, doc.raw)
            if not is_digest(reference):
                self.disk.put_tag(self.key, repo, reference, doc.digest)
        return doc

    async def tags(self, repo: str) -> list[str]:
        """The repository's tags, sorted; offline, those the cache has resolutions for.

        NotFoundError and AuthError are the caller's to interpret (no repository, refused).
        """
        if self.offline:
            if self.disk is None:
                return []
            return await trio.to_thread.run_sync(self.disk.cached_tags, self.key, repo)
        listed = await via_mirrors(self.mirrors, self.client, lambda c: c.list_tags(repo))
        return sorted(set(listed))

    async def catalog(self) -> list[str] | None:
        """Every repository, sorted, where /v2/_catalog is allowed; None where it is not."""
        if self.offline:
            if self.disk is None:
                return []
            return await trio.to_thread.run_sync(self.disk.cached_repos, self.key)
        try:
            return sorted(set(await self.client.catalog()))
        except RegfsError as exc:
            log.info("catalog not available (%s); repositories are reachable by name", exc)
            return None

    def _cached_document(self, digest: str) -> bytes | None:
        return None if self.disk is None else self.disk.get_document(digest)

    def _cached_tag(self, repo: str, tag: str) -> str | None:
        return None if self.disk is None else self.disk.get_tag(self.key, repo, tag)

    # -- referrers: signatures, SBOMs, attestations ------------------------------------------

    async def referrers(self, repo: str, digest: str) -> list[mf.Descriptor]:
        """What refers to the manifest `digest`, each digest once: the referrers API's list,
        or where the registry has none (and offline) the fallback tag's index; then cosign's
        `.sig`/`.att`/`.sbom` tags. Those tags are looked for in the tag list (one request,
        no manifest request for a tag that is not there); where the list is refused, each
        is asked for."""
        listed = None
        if not self.offline:
            try:
                listed = await self.client.referrers(repo, digest)
            except TransientError:
                if not self.mirrors:
                    raise
                # Out of reach: the tags below may still come from a mirror.
                log.info("%s@%s: referrers API out of reach, looking at tags", repo, digest)
        fallback = oci_referrers.fallback_tag(digest)
        wanted = ([] if listed is not None else [fallback]) + oci_referrers.cosign_tags(digest)
        by_tag: list[mf.Descriptor] = []
        for tag in await self._present_tags(repo, wanted):
            try:
                doc = await self.document(repo, tag)
            except (NotFoundError, OfflineError):
                continue
            if tag != fallback:
                by_tag.append(oci_referrers.tag_descriptor(doc, tag))
            elif isinstance(doc, mf.Index):
                listed = list(doc.manifests)
            else:
                log.info("%s:%s is not an index: no referrers there", repo, tag)
        return oci_referrers.merged(listed or [], by_tag)

    async def _present_tags(self, repo: str, wanted: list[str]) -> list[str]:
        try:
            present = set(await self.tags(repo))
        except (NotFoundError, AuthError):
            return wanted  # no list to look in: ask for each
        return [tag for tag in wanted if tag in present]
