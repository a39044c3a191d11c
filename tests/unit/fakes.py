"""In-memory registries for the views' and the store's unit tests: no network, no httpx.

- `FakeStore` is what the views see (regfs.views.store.Store), recording every call.
- `FakeClient` stands in for a RegistryClient (what regfs.store.RegistryStore calls).
- `make_image` / `make_index` build small documents with real digests.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from regfs.cache import BlobRef
from regfs.errors import NotFoundError, RegfsError
from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry


class MemorySource:
    """A blob's bytes, served from memory (the block cache's Source)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetches = 0

    async def fetch(self, start: int, end: int, sink: Callable[[bytes], Awaitable[None]]) -> None:
        self.fetches += 1
        await sink(self.data[start:end])


@dataclass
class FakeImage:
    manifest: mf.Manifest
    blobs: dict[str, bytes]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def make_image(
    layer: bytes = b"layer", *, created: str = "2024-01-02T03:04:05Z", arch: str = "amd64"
) -> FakeImage:
    config = json.dumps({"created": created, "os": "linux", "architecture": arch}).encode()
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mf.OCI_MANIFEST,
            "config": {
                "mediaType": mf.OCI_CONFIG,
                "digest": mf.sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": mf.OCI_LAYER_GZIP,
                    "digest": mf.sha256_digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    doc = mf.parse_document(raw)
    assert isinstance(doc, mf.Manifest)
    return FakeImage(doc, {mf.sha256_digest(config): config, mf.sha256_digest(layer): layer})


def make_index(*images: tuple[FakeImage, str]) -> mf.Index:
    """An index of (image, "os/arch[/variant]") entries."""
    entries = []
    for image, platform in images:
        os_name, arch, *variant = platform.split("/")
        entries.append(
            {
                "mediaType": mf.OCI_MANIFEST,
                "digest": image.digest,
                "size": len(image.manifest.raw),
                "platform": {
                    "os": os_name,
                    "architecture": arch,
                    **({"variant": variant[0]} if variant else {}),
                },
            }
        )
    raw = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": entries})
    doc = mf.parse_document(raw.encode())
    assert isinstance(doc, mf.Index)
    return doc


@dataclass
class FakeStore:
    """A registry as the views see it. `tag_lists[repo]` may be an exception to raise."""

    host: str = "fake.example"
    offline: bool = False
    default_namespace: str | None = None  # "library": one-component names are short names
    repos: list[str] | None = None  # the catalog; None: the registry offers none
    tag_lists: dict[str, list[str] | RegfsError] = field(default_factory=dict)
    documents: dict[tuple[str, str], mf.Document | RegfsError] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, repo: str, tag: str | None, image: FakeImage | mf.Index) -> None:
        """`image` in `repo`, by its digest and (when given) by `tag`, which is listed."""
        doc = image if isinstance(image, mf.Index) else image.manifest
        self.documents[(repo, doc.digest)] = doc
        if tag is not None:
            self.documents[(repo, tag)] = doc
            listed = self.tag_lists.setdefault(repo, [])
            assert isinstance(listed, list)
            if tag not in listed:
                listed.append(tag)
                listed.sort()
        if isinstance(image, FakeImage):
            self.blobs.update(image.blobs)

    def count(self, what: str) -> int:
        return sum(1 for call in self.calls if call[0] == what)

    async def document(
        self, repo: str, reference: str, *, current: mf.Document | None = None
    ) -> mf.Document:
        if current is not None:  # a re-check: the real store's HEAD
            self.calls.append(("recheck", repo, reference))
            now = self.documents.get((repo, reference))
            if now is not None and not isinstance(now, RegfsError) and now.digest == current.digest:
                return current
        self.calls.append(("document", repo, reference))
        found = self.documents.get((repo, reference))
        if found is None:
            raise NotFoundError(f"{repo}:{reference}")
        if isinstance(found, RegfsError):
            raise found
        return found

    async def tags(self, repo: str) -> list[str]:
        self.calls.append(("tags", repo))
        found = self.tag_lists.get(repo)
        if found is None:
            raise NotFoundError(repo)
        if isinstance(found, RegfsError):
            raise found
        return list(found)

    async def catalog(self) -> list[str] | None:
        self.calls.append(("catalog",))
        return None if self.repos is None else sorted(self.repos)

    def blob(self, repo: str, descriptor: mf.Descriptor) -> BlobRef:
        data = self.blobs.get(descriptor.digest)
        source = None if data is None or self.offline else MemorySource(data)
        return BlobRef(descriptor.digest, descriptor.size, "fake", source)

    async def blob_size(self, repo: str, digest: str) -> int:
        self.calls.append(("blob_size", repo, digest))
        return len(self.blobs[digest])


@dataclass
class FakeAuth:
    """What RegistryStore reads of a client's RegistryAuth: whether it has credentials, and
    the Authorization it would send (None: nothing, as with Basic and no credentials)."""

    _credentials: object | None = None
    header: str | None = None

    async def authorization(self, scope: str) -> str | None:
        return self.header


@dataclass
class FakeClient:
    """What RegistryStore asks of a RegistryClient. `failure`: every call raises it.
    `head_digests`: whether a HEAD of a manifest says its digest (Docker-Content-Digest)."""

    host: str
    documents: dict[tuple[str, str], mf.Document] = field(default_factory=dict)
    tag_lists: dict[str, list[str]] = field(default_factory=dict)
    repos: list[str] | None = None
    failure: RegfsError | None = None
    head_digests: bool = True
    auth: FakeAuth = field(default_factory=FakeAuth)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.address = parse_registry(self.host)

    def count(self, what: str) -> int:
        return sum(1 for call in self.calls if call[0] == what)

    async def head_manifest(self, repo: str, reference: str) -> str | None:
        self._check("head", repo, reference)
        found = self.documents.get((repo, reference))
        if found is None:
            raise NotFoundError(f"{self.host}: {repo}:{reference}")
        return found.digest if self.head_digests else None

    def _check(self, *call: str) -> None:
        self.calls.append(call)
        if self.failure is not None:
            raise self.failure

    async def get_manifest(self, repo: str, reference: str) -> mf.Document:
        self._check("manifest", repo, reference)
        found = self.documents.get((repo, reference))
        if found is None:
            raise NotFoundError(f"{self.host}: {repo}:{reference}")
        return found

    async def list_tags(self, repo: str) -> list[str]:
        self._check("tags", repo)
        if repo not in self.tag_lists:
            raise NotFoundError(f"{self.host}: {repo}")
        return self.tag_lists[repo]

    async def catalog(self) -> list[str]:
        self._check("catalog")
        if self.repos is None:
            raise NotFoundError(f"{self.host}: no catalog")
        return self.repos

    async def blob_size(self, repo: str, digest: str) -> int:
        self._check("blob_size", repo, digest)
        return 0
