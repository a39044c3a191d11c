"""Referrers without a registry: regfs.oci.referrers, RegistryClient.referrers against
httpx.MockTransport (the OCI 1.1 referrers API, which docker-registry 2.8 cannot produce),
RegistryStore.referrers (API, fallback tag, cosign tags, offline) and the referrers/ view."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from regfs.cache import BlockCache, DiskCache
from regfs.errors import AuthError, ManifestError, NotFoundError, TransientError
from regfs.oci import manifest as mf
from regfs.oci import referrers as oci
from regfs.registry.client import RegistryClient
from regfs.store import RegistryStore
from regfs.vfs.nodes import BytesFile, Node, Symlink
from regfs.views.image import ResolvedImage
from regfs.views.referrers import MAX_REFERRER_DEPTH
from tests.unit.fakes import FakeImage, FakeStore, make_image
from tests.unit.mock_http import mock_client
from tests.unit.test_views import View

REPO = "signed/app"
SPDX = "application/spdx+json"
SIGNATURE = "application/vnd.dev.cosign.simplesigning.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def make_manifest(
    config_type: str,
    config: bytes,
    layers: list[tuple[str, bytes]],
    *,
    subject: mf.Manifest | None = None,
    **extra: Any,
) -> FakeImage:
    """An OCI manifest with real digests; `extra` goes into the document (artifactType…)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": {
            "mediaType": config_type,
            "digest": mf.sha256_digest(config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": t, "digest": mf.sha256_digest(data), "size": len(data)}
            for t, data in layers
        ],
        **extra,
    }
    if subject is not None:
        doc["subject"] = {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": len(subject.raw),
        }
    parsed = mf.parse_document(json.dumps(doc).encode())
    assert isinstance(parsed, mf.Manifest)
    blobs = {mf.sha256_digest(config): config} | {mf.sha256_digest(d): d for _, d in layers}
    return FakeImage(parsed, blobs)


def sbom_of(image: FakeImage) -> FakeImage:
    return make_manifest(
        mf.OCI_EMPTY,
        b"{}",
        [(SPDX, b'{"spdxVersion": "SPDX-2.3"}')],
        subject=image.manifest,
        artifactType=SPDX,
    )


def signature_of(image: FakeImage) -> FakeImage:
    # cosign: the image config's media type, a JSON layer: an artifact all the same.
    payload = json.dumps({"critical": {"image": {"docker-manifest-digest": image.digest}}})
    return make_manifest(mf.OCI_CONFIG, b'{"os":""}', [(SIGNATURE, payload.encode())])


def listed(doc: FakeImage, artifact_type: str = "") -> mf.Descriptor:
    return mf.Descriptor(
        doc.manifest.media_type, doc.digest, len(doc.manifest.raw), artifact_type=artifact_type
    )


def index_bytes(*descriptors: mf.Descriptor) -> bytes:
    return oci.referrers_index(descriptors)


# --------------------------------------------------------------------------------------------
# regfs.oci.referrers


def test_fallback_and_cosign_tags() -> None:
    sha256 = "sha256:" + "ab" * 32
    assert oci.fallback_tag(sha256) == "sha256-" + "ab" * 32
    assert oci.cosign_tags(sha256) == [f"sha256-{'ab' * 32}{s}" for s in (".sig", ".att", ".sbom")]
    sha512 = "sha512:" + "cd" * 64
    assert oci.fallback_tag(sha512) == "sha512-" + "cd" * 32  # the spec's truncation
    assert oci.cosign_tags(sha512) == []  # 135 characters: no valid tag


def test_tag_descriptor_and_index() -> None:
    image = make_image()
    signature = signature_of(image)
    sbom = sbom_of(image)
    by_tag = oci.tag_descriptor(signature.manifest, "sha256-x.sig")
    assert (by_tag.digest, by_tag.size) == (signature.digest, len(signature.manifest.raw))
    assert by_tag.artifact_type == mf.OCI_CONFIG  # the config's type, as the API says
    assert by_tag.annotations == {oci.REF_NAME: "sha256-x.sig"}
    assert oci.tag_descriptor(sbom.manifest, "t").artifact_type == SPDX
    # Each digest once, the first listing kept.
    first = listed(sbom, SPDX)
    merged = oci.merged([first, by_tag], [listed(sbom)])
    assert merged == [first, by_tag]
    # The index is one a client of the referrers API would take.
    parsed = mf.parse_document(oci.referrers_index(merged))
    assert isinstance(parsed, mf.Index) and parsed.media_type == mf.OCI_INDEX
    assert parsed.manifests == tuple(merged)


# --------------------------------------------------------------------------------------------
# RegistryClient.referrers: the OCI 1.1 API


def _client(
    monkeypatch: pytest.MonkeyPatch, handler: Callable[[httpx.Request], httpx.Response]
) -> tuple[RegistryClient, Any]:
    return mock_client(monkeypatch, handler)


def _index_response(body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": mf.OCI_INDEX, **headers}, content=body)


async def test_referrers_api_every_page_unfiltered(monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image()
    sbom, signature = sbom_of(image), signature_of(image)
    path = f"/v2/{REPO}/referrers/{image.digest}"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "2":
            return _index_response(index_bytes(listed(signature, mf.OCI_CONFIG)))
        return _index_response(index_bytes(listed(sbom, SPDX)), Link=f'<{path}?page=2>; rel="next"')

    client, server = _client(monkeypatch, handler)
    found = await client.referrers(REPO, image.digest)
    assert found == [listed(sbom, SPDX), listed(signature, mf.OCI_CONFIG)]
    first, second = server.requests
    assert first.url.path == path and not first.url.query  # no artifactType filter
    assert mf.OCI_INDEX in first.headers["accept"]
    assert second.url.params["page"] == "2"
    await client.aclose()


@pytest.mark.parametrize("status", [400, 404, 405, 501])
async def test_no_referrers_api_is_none(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    client, server = _client(
        monkeypatch, lambda r: httpx.Response(status, text="404 page not found")
    )
    assert await client.referrers(REPO, make_image().digest) is None
    assert len(server.requests) == 1
    await client.aclose()


async def test_referrers_api_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = make_image().digest
    client, _ = _client(monkeypatch, lambda r: httpx.Response(403))
    with pytest.raises(AuthError):
        await client.referrers(REPO, digest)
    # A 200 that is not an index is a lying server, not "no referrers".
    manifest = make_image().manifest.raw
    client, _ = _client(
        monkeypatch,
        lambda r: httpx.Response(200, headers={"Content-Type": mf.OCI_MANIFEST}, content=manifest),
    )
    with pytest.raises(ManifestError):
        await client.referrers(REPO, digest)
    client, _ = _client(monkeypatch, lambda r: _index_response(b"<html>"))
    with pytest.raises(ManifestError):
        await client.referrers(REPO, digest)

    # A later page that is gone is an error, not the end of the list.
    def paged(request: httpx.Request) -> httpx.Response:
        if request.url.query:
            return httpx.Response(404)
        return _index_response(index_bytes(), Link=f'<{request.url.path}?n=1>; rel="next"')

    client, _ = _client(monkeypatch, paged)
    with pytest.raises(NotFoundError):
        await client.referrers(REPO, digest)


# --------------------------------------------------------------------------------------------
# RegistryStore.referrers over a mock registry


@dataclass
class MockRegistry:
    """A registry of manifests by reference and a tag list; `api`: its referrers answers
    (None: no referrers API, 404). Records every request path."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    tags: list[str] | None = field(default_factory=list)  # None: the tag list is refused
    api: dict[str, bytes] | None = None
    paths: list[str] = field(default_factory=list)

    def add(self, doc: FakeImage | mf.Index, *tags: str) -> None:
        manifest = doc.manifest if isinstance(doc, FakeImage) else doc
        for reference in (manifest.digest, *tags):
            self.manifests[reference] = manifest.raw
        if self.tags is not None:
            self.tags += tags

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        prefix = f"/v2/{REPO}/"
        kind, _, reference = path.removeprefix(prefix).partition("/")
        if kind == "referrers" and self.api is not None:
            return _index_response(self.api.get(reference, index_bytes()))
        if kind == "tags":
            if self.tags is None:
                return httpx.Response(403)
            return httpx.Response(200, json={"name": REPO, "tags": self.tags})
        if kind == "manifests" and reference in self.manifests:
            raw = self.manifests[reference]
            media_type = json.loads(raw)["mediaType"]
            return httpx.Response(200, headers={"Content-Type": media_type}, content=raw)
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})

    def manifest_requests(self) -> list[str]:
        return [p.rsplit("/", 1)[1] for p in self.paths if "/manifests/" in p]


@pytest.fixture
def signed() -> tuple[FakeImage, FakeImage, FakeImage]:
    image = make_image(b"signed image")
    return image, sbom_of(image), signature_of(image)


def _store(monkeypatch: pytest.MonkeyPatch, registry: MockRegistry, **kwargs: Any) -> RegistryStore:
    client, _ = mock_client(monkeypatch, registry)
    return RegistryStore(client, **kwargs)


async def test_store_uses_the_referrers_api_and_cosign_tags(
    monkeypatch: pytest.MonkeyPatch, signed: tuple[FakeImage, FakeImage, FakeImage]
) -> None:
    image, sbom, signature = signed
    registry = MockRegistry(api={image.digest: index_bytes(listed(sbom, SPDX))})
    sig_tag = oci.cosign_tags(image.digest)[0]
    registry.add(image, "1.0")
    registry.add(sbom)
    registry.add(signature, sig_tag)
    found = await _store(monkeypatch, registry).referrers(REPO, image.digest)
    assert [d.digest for d in found] == [sbom.digest, signature.digest]
    assert found[0].artifact_type == SPDX
    assert found[1].annotations[oci.REF_NAME] == sig_tag
    # With the API there, the fallback tag is not asked for; cosign's .att/.sbom, absent from
    # the tag list, are not asked for either.
    assert registry.manifest_requests() == [sig_tag]


async def test_store_falls_back_to_the_referrers_tag(
    monkeypatch: pytest.MonkeyPatch,
    signed: tuple[FakeImage, FakeImage, FakeImage],
    tmp_path: Path,
) -> None:
    image, sbom, signature = signed
    registry = MockRegistry()  # no referrers API: docker-registry 2.8
    fallback = oci.fallback_tag(image.digest)
    sig_tag = oci.cosign_tags(image.digest)[0]
    registry.add(image, "1.0")
    registry.add(sbom)
    registry.add(signature, sig_tag)
    registry.manifests[fallback] = index_bytes(listed(sbom, SPDX))
    registry.tags = [*(registry.tags or []), fallback]
    disk = DiskCache(tmp_path / "cache", 1 << 30, 4096)
    found = await _store(monkeypatch, registry, disk=disk).referrers(REPO, image.digest)
    assert [d.digest for d in found] == [sbom.digest, signature.digest]
    assert registry.manifest_requests() == [fallback, sig_tag]
    # Offline: the same list from the cache, without a request.
    registry.paths.clear()
    offline = _store(monkeypatch, registry, disk=disk, offline=True)
    assert await offline.referrers(REPO, image.digest) == found
    assert registry.paths == []


async def test_store_asks_for_each_tag_when_the_list_is_refused(
    monkeypatch: pytest.MonkeyPatch, signed: tuple[FakeImage, FakeImage, FakeImage]
) -> None:
    image, _, signature = signed
    registry = MockRegistry(tags=None)
    sig_tag = oci.cosign_tags(image.digest)[0]
    registry.add(image, "1.0")
    registry.add(signature, sig_tag)
    found = await _store(monkeypatch, registry).referrers(REPO, image.digest)
    assert [d.digest for d in found] == [signature.digest]
    assert registry.manifest_requests() == [
        oci.fallback_tag(image.digest),
        *oci.cosign_tags(image.digest),
    ]


async def test_store_with_the_registry_out_of_reach_looks_at_a_mirrors_tags(
    monkeypatch: pytest.MonkeyPatch, signed: tuple[FakeImage, FakeImage, FakeImage]
) -> None:
    image, _, signature = signed
    mirror = MockRegistry()
    sig_tag = oci.cosign_tags(image.digest)[0]
    mirror.add(image, "1.0")
    mirror.add(signature, sig_tag)
    registry, _ = mock_client(monkeypatch, lambda r: httpx.Response(503))
    mirror_client, _ = mock_client(monkeypatch, mirror, address="https://mirror.example")
    store = RegistryStore(registry, mirrors=[mirror_client])
    found = await store.referrers(REPO, image.digest)
    assert [d.digest for d in found] == [signature.digest]
    # Without a mirror, the registry's failure is the answer.
    with pytest.raises(TransientError):
        await RegistryStore(registry).referrers(REPO, image.digest)


async def test_store_without_referrers_asks_for_no_manifest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = MockRegistry()
    image = make_image()
    registry.add(image, "1.0")
    assert await _store(monkeypatch, registry).referrers(REPO, image.digest) == []
    assert registry.manifest_requests() == []


async def test_store_lists_a_repositorys_tags_once_for_its_images_referrers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `ls -R` lists referrers/ of every image: one tag list within --tag-ttl serves them all.
    registry = MockRegistry()
    images = [make_image(b"one"), make_image(b"two")]
    for tag, image in zip(("1.0", "2.0"), images, strict=True):
        registry.add(image, tag)
    store = _store(monkeypatch, registry, tag_ttl=60.0)
    for image in images:
        assert await store.referrers(REPO, image.digest) == []
    assert sum("/tags/list" in p for p in registry.paths) == 1
    # Nor is a registry without the referrers API (its first 404 says so) asked again.
    assert sum("/referrers/" in p for p in registry.paths) == 1
    expired = _store(monkeypatch, registry, tag_ttl=0.0)
    registry.paths.clear()
    for image in images:
        await expired.referrers(REPO, image.digest)
    assert sum("/tags/list" in p for p in registry.paths) == 2


# --------------------------------------------------------------------------------------------
# the referrers/ view


@dataclass
class ReferrerStore(FakeStore):
    """A FakeStore that answers referrers from `referrer_lists[digest]`."""

    referrer_lists: dict[str, list[mf.Descriptor]] = field(default_factory=dict)

    async def referrers(self, repo: str, digest: str) -> list[mf.Descriptor]:
        self.calls.append(("referrers", repo, digest))
        return list(self.referrer_lists.get(digest, []))


@pytest.fixture
async def cache() -> AsyncIterator[BlockCache]:
    async with BlockCache(disk=None, block_size=4096).running() as cache:
        yield cache


def archive_like(image: ResolvedImage) -> list[Node]:
    """Stands in for image.tar: a builder's view, made for images only."""
    return [BytesFile("image.tar", b"", image.created)]


def signed_store() -> tuple[ReferrerStore, FakeImage, FakeImage, FakeImage]:
    image = make_image(b"signed image")
    sbom, signature = sbom_of(image), signature_of(image)
    store = ReferrerStore(repos=[REPO])
    store.add(REPO, "1.0", image)
    store.add(REPO, None, sbom)
    store.add(REPO, None, signature)
    store.referrer_lists[image.digest] = [listed(sbom, SPDX), listed(signature, mf.OCI_CONFIG)]
    return store, image, sbom, signature


async def test_referrers_dir_shows_each_artifact_and_no_archive(cache: BlockCache) -> None:
    store, _, sbom, signature = signed_store()
    view = View(store, cache, image_views=[archive_like])
    names = await view.names(f"{REPO}/1.0")
    assert names == ["config.json", "image.tar", "layers", "manifest.json", "referrers"]
    assert store.count("referrers") == 0, "nothing asked until referrers/ is used"
    referrers = f"{REPO}/1.0/referrers"
    assert await view.names(referrers) == ["index.json", *sorted([sbom.digest, signature.digest])]
    index = json.loads(await view.read(f"{referrers}/index.json"))
    assert [(m["digest"], m.get("artifactType")) for m in index["manifests"]] == [
        (sbom.digest, SPDX),
        (signature.digest, mf.OCI_CONFIG),
    ]
    for artifact in (sbom, signature):
        base = f"{referrers}/{artifact.digest}"
        assert await view.names(base) == ["config.json", "layers", "manifest.json", "referrers"]
        assert await view.read(f"{base}/manifest.json") == artifact.manifest.raw
        (layer,) = artifact.manifest.layers
        assert await view.names(f"{base}/layers") == ["1.json", f"{layer.digest}.json"]
        assert await view.read(f"{base}/layers/{layer.digest}.json") == artifact.blobs[layer.digest]
    # The artifact's config is not read to make its directory, only when read.
    assert await view.read(f"{referrers}/{sbom.digest}/config.json") == b"{}"


async def test_an_artifact_by_tag_is_no_image(cache: BlockCache) -> None:
    chart = make_manifest(
        HELM_CONFIG,
        b'{"name":"mychart","version":"0.1.0"}',
        [(HELM_CHART, b"chart bytes")],
        annotations={mf.CREATED_ANNOTATION: "2024-05-06T07:08:09Z"},
    )
    store = ReferrerStore(repos=["charts/mychart"])
    store.add("charts/mychart", "0.1.0", chart)
    view = View(store, cache, image_views=[archive_like])
    base = "charts/mychart/0.1.0"
    assert await view.names(base) == ["config.json", "layers", "manifest.json", "referrers"]
    (layer,) = chart.manifest.layers
    assert await view.names(f"{base}/layers") == ["1.tar.gz", f"{layer.digest}.tar.gz"]
    link = await view.walk(f"{base}/layers/1.tar.gz")
    assert isinstance(link, Symlink) and link.target == f"{layer.digest}.tar.gz".encode()
    assert (await view.walk(base)).mtime == 1714979289.0  # its created annotation


async def test_layer_links_are_numbered_in_manifest_order(cache: BlockCache) -> None:
    layers = [(mf.OCI_LAYER_GZIP, f"layer {i}".encode()) for i in range(12)]
    layers.append((mf.OCI_LAYER_GZIP, b"layer 3"))  # the same blob twice: one file, two links
    image = make_manifest(mf.OCI_CONFIG, b'{"os":"linux","architecture":"amd64"}', layers)
    store = ReferrerStore(repos=["big/image"])
    store.add("big/image", "1", image)
    view = View(store, cache)
    targets = {}
    for name in await view.names("big/image/1/layers"):
        node = await view.walk(f"big/image/1/layers/{name}")
        if isinstance(node, Symlink):
            targets[name] = node.target.decode()
    assert list(targets) == [f"{n:02d}.tar.gz" for n in range(1, 14)]
    expected = [f"{d.digest}.tar.gz" for d in image.manifest.layers]
    assert [targets[f"{n:02d}.tar.gz"] for n in range(1, 14)] == expected
    assert targets["04.tar.gz"] == targets["13.tar.gz"]


def attestation_for(image: FakeImage) -> FakeImage:
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": image.digest})
    config = b'{"architecture":"unknown","os":"unknown"}'
    return make_manifest(mf.OCI_CONFIG, config, [(IN_TOTO, statement.encode())])


def buildx_index(*entries: tuple[FakeImage, dict[str, Any]]) -> mf.Index:
    manifests = [
        {
            "mediaType": mf.OCI_MANIFEST,
            "digest": image.digest,
            "size": len(image.manifest.raw),
            **extra,
        }
        for image, extra in entries
    ]
    raw = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": manifests})
    doc = mf.parse_document(raw.encode())
    assert isinstance(doc, mf.Index)
    return doc


def attests(image: FakeImage) -> dict[str, Any]:
    return {
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {
            mf.REFERENCE_TYPE: "attestation-manifest",
            mf.REFERENCE_DIGEST: image.digest,
        },
    }


async def test_buildx_attestations_are_referrers_not_platforms(cache: BlockCache) -> None:
    amd, arm = make_image(b"amd", arch="amd64"), make_image(b"arm", arch="arm64")
    amd_att, arm_att = attestation_for(amd), attestation_for(arm)
    chart = make_manifest(HELM_CONFIG, b"{}", [(HELM_CHART, b"x")])  # an artifact in the list
    index = buildx_index(
        (amd, {"platform": {"os": "linux", "architecture": "amd64"}}),
        (arm, {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}),
        (amd_att, attests(amd)),
        (arm_att, attests(arm)),
        (chart, {"platform": {"os": "linux", "architecture": "s390x"}}),
    )
    store = ReferrerStore(repos=["multi/app"])
    for doc in (amd, arm, amd_att, arm_att, chart):
        store.add("multi/app", None, doc)
    store.add("multi/app", "1.0", index)
    view = View(store, cache, image_views=[archive_like])
    base = "multi/app/1.0"
    assert await view.names(f"{base}/platforms") == ["linux-amd64", "linux-arm64-v8"]
    with pytest.raises(NotFoundError):  # named like a platform, but a Helm chart
        await view.walk(f"{base}/platforms/linux-s390x")
    # The index's referrers/: every attestation it holds; a platform's: its own.
    assert set(await view.names(f"{base}/referrers")) == {
        "index.json",
        amd_att.digest,
        arm_att.digest,
    }
    amd_referrers = f"{base}/platforms/linux-amd64/referrers"
    assert await view.names(amd_referrers) == ["index.json", amd_att.digest]
    (entry,) = json.loads(await view.read(f"{amd_referrers}/index.json"))["manifests"]
    assert entry["annotations"][mf.REFERENCE_DIGEST] == amd.digest
    attestation = f"{amd_referrers}/{amd_att.digest}"
    assert "image.tar" not in await view.names(attestation)
    (layer,) = amd_att.manifest.layers
    assert (
        await view.read(f"{attestation}/layers/{layer.digest}.json") == amd_att.blobs[layer.digest]
    )
    assert "image.tar" in await view.names(f"{base}/platforms/linux-amd64")


async def test_an_artifact_entry_of_an_index_is_no_platform(cache: BlockCache) -> None:
    chart = make_manifest(HELM_CONFIG, b"{}", [(HELM_CHART, b"x")])
    index = buildx_index((chart, {"platform": {"os": "linux", "architecture": "amd64"}}))
    store = ReferrerStore(repos=["odd/index"])
    store.add("odd/index", None, chart)
    store.add("odd/index", "1", index)
    view = View(store, cache)
    assert await view.names("odd/index/1/platforms") == []
    # Chosen by --platform, but no image: the index's directory shows no image files.
    assert await view.names("odd/index/1") == ["index.json", "platforms", "referrers"]


async def test_referrers_are_listed_again_after_their_ttl(cache: BlockCache) -> None:
    store, image, sbom, signature = signed_store()
    store.referrer_lists[image.digest] = [listed(sbom, SPDX)]
    view = View(store, cache)
    referrers = f"{REPO}/1.0/referrers"
    assert await view.names(referrers) == ["index.json", sbom.digest]
    store.referrer_lists[image.digest].append(listed(signature))
    assert await view.names(referrers) == ["index.json", sbom.digest], "within the TTL"
    view.root.images.referrers_ttl = 0.0
    assert await view.names(referrers) == ["index.json", *sorted([sbom.digest, signature.digest])]
    assert signature.digest in (await view.read(f"{referrers}/index.json")).decode()


async def test_a_referrer_that_is_gone_is_left_out(cache: BlockCache) -> None:
    store, _, sbom, signature = signed_store()
    del store.documents[(REPO, signature.digest)]
    view = View(store, cache)
    referrers = f"{REPO}/1.0/referrers"
    assert await view.names(referrers) == ["index.json", sbom.digest]
    assert signature.digest in (await view.read(f"{referrers}/index.json")).decode()
    with pytest.raises(NotFoundError):
        await view.walk(f"{referrers}/{signature.digest}")
    with pytest.raises(NotFoundError):
        await view.walk(f"{referrers}/{make_image(b'never').digest}")


async def test_referrers_that_loop_stop_at_a_depth(cache: BlockCache) -> None:
    # Tags can make two manifests each other's "signature": ls -R must end.
    store, image, sbom, _ = signed_store()
    store.referrer_lists[image.digest] = [listed(sbom)]
    store.referrer_lists[sbom.digest] = [listed(image)]
    view = View(store, cache)
    path = f"{REPO}/1.0"
    chain = [sbom.digest, image.digest] * MAX_REFERRER_DEPTH
    for depth, digest in enumerate(chain[:MAX_REFERRER_DEPTH]):
        assert "referrers" in await view.names(path), depth
        path = f"{path}/referrers/{digest}"
    assert "referrers" not in await view.names(path)
    assert await view.read(f"{path}/manifest.json") in (image.manifest.raw, sbom.manifest.raw)
