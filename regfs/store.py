"""One registry as the views see it: documents, tags, the catalog and blobs, with fallbacks.

The store is where a registry's client, its pull-through mirrors and the disk cache meet,
and the one place that decides where an answer comes from: mirrors first, then the registry
(`via_mirrors`, the rule blobs follow too, inside `BlobSource`); the disk cache when the
registry is out of reach for a tag seen before; only the disk cache when offline.

It also spends as few pulls as docker does: a tag seen before is re-checked with one HEAD
(Docker Hub counts manifest GETs as pulls), a refused catalog is not asked for again, and a
refusal to a mount without credentials is taken as docker takes it: the repository may not
exist (ENOENT, logged in docker's words), not a permission problem.

It lives beside the views, not in them: views know it through `regfs.views.store.Store` (a
Protocol), so they are tested with a fake; one store per registry, so a mount of several
registries is several stores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import trio

from .cache import BlobRef, DiskCache
from .errors import (
    AuthError,
    NotFoundError,
    OfflineError,
    RegfsError,
    RegistryError,
    TransientError,
)
from .oci import manifest as mf
from .oci import referrers as oci_referrers
from .oci.reference import default_namespace as registry_default_namespace
from .oci.reference import is_digest, registry_key
from .registry.blobs import BlobSource, ForeignURLPolicy
from .registry.client import RegistryClient, pull_scope
from .registry.fallback import via_mirrors
from .registry.registries_conf import RegistriesConf, RegistrySettings

log = logging.getLogger(__name__)

MAX_DENIALS_LOGGED = 1024  # repositories whose "pull access denied" was logged at warning


class RegistryStore:
    def __init__(
        self,
        client: RegistryClient,
        *,
        mirrors: Sequence[RegistryClient] = (),
        disk: DiskCache | None = None,
        policy: ForeignURLPolicy | None = None,
        offline: bool = False,
        default_namespace: str | None = None,
        tag_ttl: float = 60.0,
    ) -> None:
        self.client = client
        self.mirrors = list(mirrors)
        self.disk = disk
        self.policy = policy if policy is not None else ForeignURLPolicy()
        self.offline = offline
        self.key = registry_key(client.address)  # its area in the disk cache
        # Docker Hub's `library`, from the address unless given (tests give it to loopback).
        self.default_namespace = default_namespace or registry_default_namespace(client.address)
        # Why the catalog was refused, for the mount's life: a refusal (401, 403, 404, a
        # broken answer) does not change with time, and asking again costs a token too.
        self.catalog_refused: RegfsError | None = None
        self._denials_logged: set[str] = set()
        # The tag list referrers are looked up in, per repository, for `tag_ttl`: `ls -R`
        # lists referrers/ of every image of a repository, one tag list is enough for all.
        self.tag_ttl = tag_ttl
        self._tag_lists: dict[str, tuple[float, set[str]]] = {}
        # A registry that answered once that it has no referrers API (OCI 1.1: one that has
        # it answers 200 even for an unknown digest) is not asked again for each image.
        self.has_referrers_api = True

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
        return BlobRef(descriptor.digest, descriptor.size, self.key, source, descriptor.annotations)

    async def blob_size(self, repo: str, digest: str) -> int:
        """A blob's size from the registry (schema 1 manifests do not state it)."""
        return await self.client.blob_size(repo, digest)

    async def document(
        self, repo: str, reference: str, *, current: mf.Document | None = None
    ) -> mf.Document:
        """A manifest or index by tag or digest, through the disk cache.

        With `current` (what the tag resolved to before), one HEAD asks whether the tag
        still resolves to it, and `current` comes back if so; a GET only when it moved or
        the registry says no digest. A refusal without credentials is NotFoundError.
        """
        try:
            if current is not None and not is_digest(reference) and not self.offline:
                digest = await self._head(repo, reference, current)
                if digest == current.digest:
                    return current
                log.debug("%s:%s: now %s, was %s", repo, reference, digest, current.digest)
            return await self._document(repo, reference)
        except AuthError as exc:
            raise await self._as_docker_sees_it(exc, repo) from exc

    async def _head(self, repo: str, tag: str, current: mf.Document) -> str | None:
        """The digest `repo:tag` is served with now (None: not said). Out of reach: the
        current resolution's digest, as a GET out of reach serves the cached one."""
        try:
            return await via_mirrors(
                self.mirrors, self.client, lambda c: c.head_manifest(repo, tag)
            )
        except TransientError:
            log.warning("%s:%s: registry unreachable, keeping the current resolution", repo, tag)
            return current.digest

    async def _document(self, repo: str, reference: str) -> mf.Document:
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

        NotFoundError and AuthError are the caller's to interpret (no repository, refused);
        a refusal without credentials is NotFoundError, as for `document`.
        """
        if self.offline:
            if self.disk is None:
                return []
            return await trio.to_thread.run_sync(self.disk.cached_tags, self.key, repo)
        try:
            listed = await via_mirrors(self.mirrors, self.client, lambda c: c.list_tags(repo))
        except AuthError as exc:
            raise await self._as_docker_sees_it(exc, repo) from exc
        return sorted(set(listed))

    async def catalog(self) -> list[str] | None:
        """Every repository, sorted, where /v2/_catalog is allowed; None where it is not.

        A refusal is remembered for the mount's life (no request after it); a failure to
        reach the registry is not, the next call asks again.
        """
        if self.offline:
            if self.disk is None:
                return []
            return await trio.to_thread.run_sync(self.disk.cached_repos, self.key)
        if self.catalog_refused is not None:
            return None
        try:
            return sorted(set(await self.client.catalog()))
        except TransientError as exc:
            log.info("catalog not available now (%s); asked again later", exc)
            return None
        except RegfsError as exc:
            log.info("catalog refused (%s); repositories are reachable by name", exc)
            self.catalog_refused = exc
            return None

    async def _as_docker_sees_it(self, exc: AuthError, repo: str) -> RegistryError:
        """A registry's refusal of `repo`, as docker reports it to a user not logged in.

        Docker Hub answers 401 for a repository that does not exist: with no credentials
        and an anonymous token the registry still refuses, the repository may as well not
        exist ("pull access denied … does not exist or may require 'docker login'"), so
        NotFoundError (ENOENT). A refusal stays AuthError (EACCES) with credentials, when
        the registry lets nobody in anonymously (Basic auth: docker's "no basic auth
        credentials") and when it is not the registry's own (a token realm, TLS).
        """
        if not is_anonymous(self.client) or exc.host != self.host:
            return exc
        try:
            # Cached since the refused request: a bearer token means we were let in.
            sent = await self.client.auth.authorization(pull_scope(repo))
        except RegfsError:
            return exc
        if sent is None or not sent.lower().startswith("bearer "):
            return exc
        message = (
            f"{self.host}: pull access denied for {repo}, repository does not exist or may "
            "require 'docker login'"
        )
        if repo in self._denials_logged:
            log.debug("%s", message)
        else:
            if len(self._denials_logged) < MAX_DENIALS_LOGGED:
                self._denials_logged.add(repo)
            log.warning("%s", message)
        return NotFoundError(message, host=exc.host, status=exc.status, codes=exc.codes)

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
        if not self.offline and self.has_referrers_api:
            try:
                listed = await self.client.referrers(repo, digest)
                self.has_referrers_api = listed is not None
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
        listed = self._tag_lists.get(repo)
        if listed is not None and time.monotonic() - listed[0] < self.tag_ttl:
            present = listed[1]
        else:
            try:
                present = set(await self.tags(repo))
            except (NotFoundError, AuthError):
                return wanted  # no list to look in: ask for each
            self._tag_lists[repo] = (time.monotonic(), present)
        return [tag for tag in wanted if tag in present]


def is_anonymous(client: RegistryClient) -> bool:
    """Whether the mount has no credentials for the registry. RegistryAuth keeps them to
    itself (they are secrets); only whether there are any is read here."""
    return client.auth._credentials is None


class ConfiguredStore:
    """A registry as registries.conf configures it, in a mount of every registry: its
    blocked repositories are ENOENT without a request (left out of the catalog too), its
    location's path is put in front of repository names, and each mirror is asked only what
    its `pull-from-mirror` allows: `by_tag` holds the mirrors for tags (all, tag-only),
    `by_digest` those for digests and blobs (all, digest-only); often one store for both."""

    def __init__(
        self,
        by_tag: RegistryStore,
        by_digest: RegistryStore,
        settings: RegistrySettings,
        conf: RegistriesConf,
    ) -> None:
        self.by_tag = by_tag
        self.by_digest = by_digest
        self.settings = settings
        self.conf = conf

    @property
    def client(self) -> RegistryClient:
        return self.by_digest.client

    @property
    def mirrors(self) -> list[RegistryClient]:
        return list({id(m): m for m in (*self.by_digest.mirrors, *self.by_tag.mirrors)}.values())

    @property
    def host(self) -> str:
        return self.by_digest.host

    @property
    def offline(self) -> bool:
        return self.by_digest.offline

    @property
    def default_namespace(self) -> str | None:
        return self.by_digest.default_namespace

    def _remote(self, repo: str) -> str:
        if self.conf.repository_blocked(self.settings.name, repo):
            raise NotFoundError(f"{self.settings.name}/{repo} is blocked by registries.conf")
        return self.settings.remote(repo)

    async def document(
        self, repo: str, reference: str, *, current: mf.Document | None = None
    ) -> mf.Document:
        store = self.by_digest if is_digest(reference) else self.by_tag
        return await store.document(self._remote(repo), reference, current=current)

    async def tags(self, repo: str) -> list[str]:
        return await self.by_tag.tags(self._remote(repo))

    async def catalog(self) -> list[str] | None:
        repos = await self.by_digest.catalog()
        if repos is None:
            return None
        below = f"{self.settings.namespace}/" if self.settings.namespace else ""
        ours = [r[len(below) :] for r in repos if r.startswith(below)]
        return [r for r in ours if not self.conf.repository_blocked(self.settings.name, r)]

    def blob(self, repo: str, descriptor: mf.Descriptor) -> BlobRef:
        return self.by_digest.blob(self._remote(repo), descriptor)

    async def blob_size(self, repo: str, digest: str) -> int:
        return await self.by_digest.blob_size(self._remote(repo), digest)

    async def referrers(self, repo: str, digest: str) -> list[mf.Descriptor]:
        return await self.by_digest.referrers(self._remote(repo), digest)
