"""regfs.store.RegistryStore over fake clients: mirrors first, the disk cache when the registry is
out of reach, only the disk cache offline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from regfs.cache import DiskCache
from regfs.errors import AuthError, NotFoundError, OfflineError, ProtocolError, TransientError
from regfs.registry.blobs import BlobSource
from regfs.store import RegistryStore
from tests.unit.fakes import FakeAuth, FakeClient, make_image

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


# -- re-checking a tag: one HEAD, a GET only when it moved ------------------------------


async def test_a_recheck_of_an_unmoved_tag_is_one_head_and_no_get() -> None:
    registry, _ = with_image("registry.example")
    store = store_of(registry)
    current = await store.document(REPO, "latest")
    registry.calls.clear()
    assert await store.document(REPO, "latest", current=current) is current
    assert registry.calls == [("head", REPO, "latest")]


async def test_a_moved_tag_costs_one_get_after_the_head(disk: DiskCache) -> None:
    registry, image = with_image("registry.example")
    store = store_of(registry, disk=disk)
    current = await store.document(REPO, "latest")
    moved = make_image(b"moved")
    registry.documents[(REPO, "latest")] = moved.manifest
    registry.calls.clear()
    assert (await store.document(REPO, "latest", current=current)).digest == moved.digest
    assert registry.calls == [("head", REPO, "latest"), ("manifest", REPO, "latest")]
    assert disk.get_tag(store.key, REPO, "latest") == moved.digest  # the new resolution kept
    assert image.digest != moved.digest


async def test_a_registry_that_gives_no_digest_is_asked_with_a_get() -> None:
    registry, image = with_image("registry.example", head_digests=False)
    store = store_of(registry)
    current = await store.document(REPO, "latest")
    registry.calls.clear()
    assert (await store.document(REPO, "latest", current=current)).digest == image.digest
    assert registry.calls == [("head", REPO, "latest"), ("manifest", REPO, "latest")]


async def test_a_digest_is_never_rechecked(disk: DiskCache) -> None:
    registry, image = with_image("registry.example")
    store = store_of(registry, disk=disk)
    current = await store.document(REPO, image.digest)
    registry.calls.clear()
    assert (await store.document(REPO, image.digest, current=current)).digest == image.digest
    assert registry.calls == []  # from the disk cache, no HEAD


async def test_the_head_goes_through_the_mirrors_first() -> None:
    registry, _ = with_image("registry.example")
    mirror, _ = with_image("mirror.example")
    store = store_of(registry, mirror)
    current = await store.document(REPO, "latest")
    assert await store.document(REPO, "latest", current=current) is current
    assert registry.calls == []
    assert mirror.count("head") == 1
    empty = FakeClient("empty-mirror.example")  # 404: hands over to the registry
    store = store_of(registry, empty)
    current = await store.document(REPO, "latest")
    registry.calls.clear()
    assert await store.document(REPO, "latest", current=current) is current
    assert empty.count("head") == 1 and registry.calls == [("head", REPO, "latest")]


async def test_a_recheck_out_of_reach_keeps_the_resolution_and_a_deleted_tag_is_gone() -> None:
    registry, _ = with_image("registry.example")
    store = store_of(registry)
    current = await store.document(REPO, "latest")
    registry.failure = TransientError("connection reset")
    assert await store.document(REPO, "latest", current=current) is current
    registry.failure = None
    del registry.documents[(REPO, "latest")]
    with pytest.raises(NotFoundError):
        await store.document(REPO, "latest", current=current)


async def test_offline_a_recheck_asks_nothing(disk: DiskCache) -> None:
    online, image = with_image("registry.example")
    current = await store_of(online, disk=disk).document(REPO, "latest")
    registry = FakeClient("registry.example", failure=AssertionError("offline asks nothing"))  # type: ignore[arg-type]
    store = store_of(registry, disk=disk, offline=True)
    assert (await store.document(REPO, "latest", current=current)).digest == image.digest
    assert registry.calls == []


# -- the catalog: a refusal is remembered ------------------------------------------------


@pytest.mark.parametrize(
    "refusal", [AuthError("401 UNAUTHORIZED"), NotFoundError("404"), ProtocolError("not JSON")]
)
async def test_a_refused_catalog_is_asked_once(refusal: Exception) -> None:
    registry = FakeClient("registry.example", failure=refusal)  # type: ignore[arg-type]
    store = store_of(registry)
    for _ in range(3):
        assert await store.catalog() is None
    assert registry.calls == [("catalog",)]
    assert store.catalog_refused is refusal


async def test_a_catalog_out_of_reach_is_asked_again() -> None:
    registry = FakeClient("registry.example", repos=["a/b"], failure=TransientError("down"))
    store = store_of(registry)
    assert await store.catalog() is None
    registry.failure = None
    assert await store.catalog() == ["a/b"]
    assert registry.count("catalog") == 2 and store.catalog_refused is None


# -- a refusal without credentials: the repository may not exist ------------------------

DENIED = (
    "pull access denied for library/nosuch, repository does not exist or may require 'docker login'"
)


def refusing(host: str = "registry.example", **auth: Any) -> FakeClient:
    """A registry that refuses everything with a 401 of its own."""
    refusal = AuthError(f"{host} answered 401 (UNAUTHORIZED)", host=host, status=401)
    return FakeClient(host, failure=refusal, auth=FakeAuth(**auth))


async def test_without_credentials_an_anonymous_token_refused_is_not_found(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Docker Hub's answer for a repository that does not exist: 401 to an anonymous token.
    store = store_of(refusing(header="Bearer anonymous-token"))
    with caplog.at_level(logging.DEBUG, logger="regfs.store"):
        with pytest.raises(NotFoundError) as raised:
            await store.document("library/nosuch", "latest")
        assert DENIED in str(raised.value) and raised.value.status == 401
        with pytest.raises(NotFoundError):
            await store.tags("library/nosuch")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [f"registry.example: {DENIED}"]  # once
    assert "anonymous-token" not in caplog.text


@pytest.mark.parametrize(
    "auth",
    [
        {"_credentials": object(), "header": "Bearer token-of-alice"},  # refused with them
        {"header": None},  # Basic auth and none to send: login is needed (docker says so too)
        {"header": "Basic eDp5"},
    ],
)
async def test_a_refusal_stays_a_refusal_otherwise(auth: dict[str, Any]) -> None:
    store = store_of(refusing(**auth))
    with pytest.raises(AuthError):
        await store.document("library/nosuch", "latest")
    with pytest.raises(AuthError):
        await store.tags("library/nosuch")


async def test_a_refusal_by_the_token_realm_stays_a_refusal() -> None:
    registry = refusing(header="Bearer anonymous-token")
    registry.failure = AuthError("token server refused anonymous access", host="auth.example")
    with pytest.raises(AuthError):
        await store_of(registry).document("library/nosuch", "latest")


async def test_a_mirrors_refusal_hands_over_and_only_the_registrys_counts() -> None:
    registry, image = with_image("registry.example")
    mirror = refusing("mirror.example", header="Bearer anonymous-token")
    store = store_of(registry, mirror)
    assert (await store.document(REPO, "latest")).digest == image.digest
    with pytest.raises(AuthError):  # the registry has credentials: its refusal stands
        await store_of(refusing(_credentials=object(), header="Bearer t"), mirror).tags(REPO)


# -- the default namespace -----------------------------------------------------------------


def test_docker_hub_has_the_default_namespace_library() -> None:
    assert store_of(FakeClient("docker.io")).default_namespace == "library"
    assert store_of(FakeClient("registry.example")).default_namespace is None
    given = store_of(FakeClient("127.0.0.1:5000"), default_namespace="library")
    assert given.default_namespace == "library"
