"""What the views need of a registry: the interface `regfs.store.RegistryStore` provides.

Views depend on this, never on a client: where answers come from (mirrors, the disk cache,
offline) is the store's business, and tests give the views a fake.
"""

from __future__ import annotations

from typing import Protocol

from ..cache import BlobRef
from ..oci import manifest as mf


class Store(Protocol):
    @property
    def host(self) -> str:
        """The registry's host[:port], as image names (`docker load`) carry it."""
        ...

    @property
    def offline(self) -> bool:
        """Only what the disk cache holds is there: nothing is asked of the network."""
        ...

    @property
    def default_namespace(self) -> str | None:
        """Where a one-component name lives (`library` on Docker Hub), or None: `alpine` is
        then `library/alpine`, as docker spells it."""
        ...

    async def document(
        self, repo: str, reference: str, *, current: mf.Document | None = None
    ) -> mf.Document:
        """A manifest or index by tag or digest. NotFoundError when there is none (also for
        a refusal the mount has no credentials to argue with: a repository that may not
        exist). `current`: what the tag resolved to before; it comes back as it is when the
        tag still resolves to it, checked without fetching the manifest again."""
        ...

    async def tags(self, repo: str) -> list[str]:
        """Sorted tags. NotFoundError: no such repository (with status 401/403: refused to a
        mount without credentials, which may be that); AuthError: the list is refused."""
        ...

    async def catalog(self) -> list[str] | None:
        """Every repository, sorted; None when the registry does not say (no catalog)."""
        ...

    def blob(self, repo: str, descriptor: mf.Descriptor) -> BlobRef:
        """The blob, to read through the block cache."""
        ...

    async def blob_size(self, repo: str, digest: str) -> int:
        """A blob's size, for manifests that do not state it (schema 1)."""
        ...

    async def referrers(self, repo: str, digest: str) -> list[mf.Descriptor]:
        """Descriptors of the manifests that refer to `digest` (signatures, SBOMs,
        attestations), from the referrers API, its fallback tag or cosign's tags."""
        ...
