"""regfs.store.RegistryStore over fake clients: mirrors first, the disk cache when the registry is
out of reach, only the disk cache offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from regfs.cache import DiskCache
from regfs.errors import AuthError, NotFoundError, OfflineError, TransientError
from regfs.registry.blobs import BlobSource
from regfs.store import RegistryStore
from tests.unit.fakes import FakeClient, make_image

REPO = "library/hello"


def store_of(registry: FakeClient, *mirrors: FakeClient, **kwargs: Any) -> RegistryStore:
    return RegistryStore(registry, mirrors=mirrors, **kwargs)  # type: ignore[arg-type]


def with_image(host: str, **kwargs: Any) -> tuple[FakeClient, Any]:
    image = make_image(host.encode())
    client = FakeClient(host, tag_lists={REPO: ["latest"]}, **kwargs)
    client.documents[(REPO, "latest")] = image.manifest
    client.documents[(REPO, image.digest)] = image.manifest
    return client, image


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", 1 << 30, 4096)


async def test_a_mirror_that_has_it_answers_first() -> None:
    registry, _ = with_image("registry.example")
    mirror, image = with_image("mirror.example")
    store = store_of(registry, mirror)
    assert (await store.document(REPO, "latest")).digest == image.digest
    assert registry.calls == []


@pytest.mark.parametrize(
    "failure", [None, TransientError("down"), AuthError("no"), NotFoundError("404")]
)
async def test_a_mirror_that_fails_in_any_way_hands_over(failure: Exception | None) -> None:
    registry, image = with_image("registry.example")
    mirror = FakeClient("mirror.example", failure=failure)  # type: ignore[arg-type]
    store = store_of(registry, mirror)
    assert (await store.document(REPO, "latest")).digest == image.digest
    assert await store.tags(REPO) == ["latest"]
    assert mirror.calls and registry.calls


async def test_the_registry_out_of_reach_does_not_hide_a_mirrors_404() -> None:
    registry = FakeClient("registry.example", failure=TransientError("down"))
    store = store_of(registry, FakeClient("mirror.example"))
    with pytest.raises(NotFoundError):
        await store.document(REPO, "latest")
    with pytest.raises(TransientError):
        await store_of(registry).document(REPO, "latest")


async def test_tags_are_sorted_once_each() -> None:
    registry = FakeClient("registry.example", tag_lists={REPO: ["v2", "latest", "v1", "v2"]})
    assert await store_of(registry).tags(REPO) == ["latest", "v1", "v2"]
    with pytest.raises(NotFoundError):
        await store_of(registry).tags("library/other")


async def test_documents_and_tags_are_kept_on_disk(disk: DiskCache) -> None:
    registry, image = with_image("registry.example:5000")
    store = store_of(registry, disk=disk)
    await store.document(REPO, "latest")
    assert disk.get_document(image.digest) == image.manifest.raw
    assert disk.get_tag(store.key, REPO, "latest") == image.digest
    # A digest the disk holds is not asked for again.
    registry.calls.clear()
    assert (await store.document(REPO, image.digest)).raw == image.manifest.raw
    assert registry.calls == []


async def test_an_unreachable_registry_serves_the_cached_resolution(disk: DiskCache) -> None:
    registry, image = with_image("registry.example")
    store = store_of(registry, disk=disk)
    await store.document(REPO, "latest")
    registry.failure = TransientError("connection reset")
    assert (await store.document(REPO, "latest")).digest == image.digest
    with pytest.raises(TransientError):
        await store.document(REPO, "never-seen")
    registry.failure = NotFoundError("deleted")  # only a network failure falls back
    with pytest.raises(NotFoundError):
        await store.document(REPO, "latest")


async def test_offline_is_the_disk_cache_only(disk: DiskCache) -> None:
    online, image = with_image("registry.example")
    online.repos = [REPO]
    await store_of(online, disk=disk).document(REPO, "latest")
    registry = FakeClient("registry.example", failure=AssertionError("offline asks nothing"))  # type: ignore[arg-type]
    store = store_of(registry, disk=disk, offline=True)
    assert (await store.document(REPO, "latest")).digest == image.digest
    assert (await store.document(REPO, image.digest)).digest == image.digest
    with pytest.raises(OfflineError):
        await store.document(REPO, "other")
    assert await store.tags(REPO) == ["latest"]
    assert await store.catalog() == [REPO]
    blob = store.blob(REPO, image.manifest.layers[0])
    assert blob.source is None and blob.digest == image.manifest.layers[0].digest
    assert registry.calls == []
    nothing = store_of(registry, offline=True)  # offline without a disk cache: empty
    assert await nothing.tags(REPO) == [] and await nothing.catalog() == []


async def test_the_catalog_or_none() -> None:
    registry = FakeClient("registry.example", repos=["b/x", "a", "b/x"])
    assert await store_of(registry).catalog() == ["a", "b/x"]
    assert await store_of(FakeClient("registry.example")).catalog() is None  # 404: none
    refused = FakeClient("registry.example", failure=AuthError("401"))
    assert await store_of(refused).catalog() is None


def test_blobs_are_read_through_mirrors_then_the_registry() -> None:
    registry, image = with_image("registry.example:5000")
    mirror = FakeClient("mirror.example")
    store = store_of(registry, mirror)
    blob = store.blob(REPO, image.manifest.layers[0])
    assert isinstance(blob.source, BlobSource)
    assert blob.source.mirrors == [mirror] and blob.source.client is registry
    assert blob.registry == store.key == "registry.example_5000"
    assert store.host == "registry.example:5000"
