"""regfs.views over a fake store: repositories, tags, digests, nested repositories, refusals,
offline, indexes and the image views passed in; mirror fallback through the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import pytest
import trio

from regfs.cache import BlockCache
from regfs.errors import AuthError, NotFoundError, TransientError
from regfs.oci import manifest as mf
from regfs.store import RegistryStore
from regfs.vfs.nodes import BytesFile, Dir, File, Node, StaticDir
from regfs.vfs.table import InodeTable
from regfs.views.image import ImageDir, ImageViewBuilder, ResolvedImage
from regfs.views.registry import Options, RepoDir, RootDir, TagDir
from regfs.views.store import Store
from tests.unit.fakes import FakeClient, FakeStore, make_image, make_index

AMD64 = mf.Platform("linux", "amd64", "")
CREATED = "2024-01-02T03:04:05Z"


@pytest.fixture
async def cache() -> AsyncIterator[BlockCache]:
    async with BlockCache(disk=None, block_size=4096).running() as cache:
        yield cache


class View:
    """A registry's tree over `store`, walked and read the way the adapter does."""

    def __init__(
        self,
        store: Store,
        cache: BlockCache,
        *,
        platform: mf.Platform = AMD64,
        tag_ttl: float = 60.0,
        image_views: Sequence[ImageViewBuilder] = (),
    ) -> None:
        self.control = StaticDir(".regfs", [])
        self.root = RootDir(
            store,
            cache,
            Options(platform=platform, tag_ttl=tag_ttl),
            control=self.control,
            image_views=image_views,
            started=1000.0,
        )
        self.table = InodeTable(self.root)

    async def walk(self, path: str) -> Node:
        node: Node = self.root
        for name in path.split("/"):
            if name:
                node = await self.table.lookup(node.inode, name)
        return node

    async def names(self, path: str) -> list[str]:
        node = await self.walk(path)
        return [name for name, _ in await self.table.listdir(node.inode)]

    async def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """`size` bytes from `offset` (the whole file by default)."""
        node = await self.walk(path)
        assert isinstance(node, File)
        fh, _ = await self.table.open(node.inode)
        try:
            return bytes(await self.table.read(fh, offset, node.size + 1 if size is None else size))
        finally:
            self.table.release(fh)


def hello_store() -> FakeStore:
    store = FakeStore(repos=["library/hello"])
    store.add("library/hello", "latest", make_image(b"hello layer", created=CREATED))
    store.add("library/hello", "v1", make_image(b"v1 layer"))
    return store


async def test_a_tag_is_looked_up_with_one_manifest_request(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache)
    latest = await view.walk("library/hello/latest")
    assert isinstance(latest, TagDir) and not latest.immutable
    assert store.count("tags") == 0, "no tag list first"
    assert store.calls.count(("document", "library/hello", "latest")) == 1
    image = store.documents[("library/hello", "latest")]
    assert await view.names("library/hello/latest") == [
        "config.json",
        "layers",
        "manifest.json",
        "referrers",
    ]
    assert await view.read("library/hello/latest/manifest.json") == image.raw
    layer = f"{mf.sha256_digest(b'hello layer')}.tar.gz"
    assert await view.names("library/hello/latest/layers") == ["1.tar.gz", layer]
    assert await view.read(f"library/hello/latest/layers/{layer}") == b"hello layer"
    # The image's mtime is its config's `created`.
    assert latest.mtime == datetime.fromisoformat("2024-01-02T03:04:05+00:00").timestamp()


async def test_listing_a_repository_resolves_no_tag(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache)
    assert await view.names("library/hello") == ["latest", "v1"]
    assert store.count("document") == 0
    assert await view.names("") == [".regfs", "library"]


async def test_a_digest_is_reachable_immutable_and_not_listed(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache)
    digest = store.documents[("library/hello", "v1")].digest
    node = await view.walk(f"library/hello/{digest}")
    assert isinstance(node, ImageDir) and node.immutable
    assert digest not in await view.names("library/hello")
    assert await view.walk(f"library/hello/{digest}") is node  # resolved once
    assert store.calls.count(("document", "library/hello", digest)) == 1


async def test_nested_repositories_from_the_catalog(cache: BlockCache) -> None:
    store = FakeStore(repos=["team/project/tool", "team/other"])
    store.add("team/project/tool", "3", make_image())
    store.add("team/other", "1", make_image())
    view = View(store, cache)
    assert await view.names("") == [".regfs", "team"]
    assert await view.names("team") == ["other", "project"]
    assert await view.names("team/project/tool") == ["3"]
    assert isinstance(await view.walk("team/project/tool/3"), TagDir)
    # The catalog says team and team/project are namespaces only: no tag list asked for.
    assert ("tags", "team") not in store.calls and ("tags", "team/project") not in store.calls
    with pytest.raises(NotFoundError):
        await view.walk("team/nope")  # not in the catalog, and no such tag
    assert ("tags", "team/nope") not in store.calls


async def test_without_a_catalog_names_are_found_by_asking(cache: BlockCache) -> None:
    store = hello_store()
    store.repos = None
    view = View(store, cache)
    assert await view.names("") == [".regfs"]
    assert isinstance(await view.walk("library"), RepoDir)
    assert isinstance(await view.walk("library/hello"), RepoDir)
    assert isinstance(await view.walk("library/hello/latest"), TagDir)
    # No tag of that name: it may still be a repository; its tag list says it is none.
    assert isinstance(await view.walk("library/hello/nope"), RepoDir)
    with pytest.raises(NotFoundError):  # ENOENT, not an empty directory
        await view.names("library/hello/nope")
    # What was reached by name is listed: nothing else says what is there.
    assert await view.names("library") == ["hello"]
    assert await view.names("") == [".regfs", "library"]


async def test_invalid_names_ask_nothing(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache)
    hello = await view.walk("library/hello")
    before = len(store.calls)
    for name in ["..", "Library!", "sha256:abc", "a%2Fb", "x" * 300]:
        with pytest.raises(NotFoundError):
            await view.table.lookup(hello.inode, name)
    assert [c for c in store.calls[before:] if c[0] != "catalog"] == []


async def test_a_refused_tag_list_without_a_catalog_is_the_refusal(cache: BlockCache) -> None:
    store = FakeStore(repos=None)
    refused = AuthError("401 from fake.example")
    store.tag_lists["library/hello"] = refused
    store.tag_lists["library/hello/latest"] = refused
    store.documents[("library/hello", "latest")] = refused
    view = View(store, cache)
    hello = await view.walk("library/hello")
    with pytest.raises(AuthError):  # not an empty directory: EACCES in the adapter
        await view.table.listdir(hello.inode)
    with pytest.raises(AuthError):  # neither ENOENT
        await view.walk("library/hello/latest")


async def test_a_refused_tag_list_with_a_catalog_lists_what_the_catalog_shows(
    cache: BlockCache,
) -> None:
    store = hello_store()
    store.repos = ["library/hello", "library/hello/sub"]
    store.tag_lists["library/hello"] = AuthError("tags refused")
    view = View(store, cache)
    assert await view.names("library/hello") == ["sub"]
    assert isinstance(await view.walk("library/hello/latest"), TagDir)  # its manifest answers


async def test_offline_lookups_go_by_the_cached_tags(cache: BlockCache) -> None:
    store = hello_store()
    store.offline = True
    store.repos = ["library/hello", "library/hello/sub"]
    store.add("library/hello/sub", "1", make_image())
    view = View(store, cache)
    assert isinstance(await view.walk("library/hello/latest"), TagDir)
    first = store.calls.index(("tags", "library/hello"))
    assert first < store.calls.index(("document", "library/hello", "latest"))
    # Not a cached tag, but a cached nested repository: no manifest is asked for it.
    assert isinstance(await view.walk("library/hello/sub"), RepoDir)
    assert ("document", "library/hello", "sub") not in store.calls


async def test_a_moved_tag_is_a_new_directory(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache, tag_ttl=0.0)  # every lookup resolves the tag again
    old = await view.walk("library/hello/latest")
    assert isinstance(old, TagDir)
    old_digest = (await old.image()).doc.digest
    moved = make_image(b"new layer")
    store.add("library/hello", "latest", moved)
    new = await view.walk("library/hello/latest")
    assert new is not old and new.inode != old.inode  # the kernel's entries under old stay old
    assert await view.read("library/hello/latest/manifest.json") == moved.manifest.raw
    same = await view.walk("library/hello/latest")
    assert same is new  # re-resolved to the same image: the same directory
    assert (await view.walk(f"library/hello/{old_digest}")).immutable


async def test_an_index_shows_the_platform_asked_for(cache: BlockCache) -> None:
    amd, arm = make_image(b"amd", arch="amd64"), make_image(b"arm", arch="arm64")
    store = FakeStore(repos=["multi/arch"])
    store.add("multi/arch", None, amd)
    store.add("multi/arch", None, arm)
    index = make_index((amd, "linux/amd64"), (arm, "linux/arm64/v8"))
    store.add("multi/arch", "1.0", index)
    view = View(store, cache, platform=mf.Platform("linux", "arm64", "v8"))
    assert await view.names("multi/arch/1.0") == [
        "config.json",
        "index.json",
        "layers",
        "manifest.json",
        "platforms",
        "referrers",
    ]
    assert await view.read("multi/arch/1.0/index.json") == index.raw
    assert await view.read("multi/arch/1.0/manifest.json") == arm.manifest.raw
    assert await view.names("multi/arch/1.0/platforms") == ["linux-amd64", "linux-arm64-v8"]
    amd_dir = "multi/arch/1.0/platforms/linux-amd64"
    assert await view.read(f"{amd_dir}/manifest.json") == amd.manifest.raw
    assert (await view.walk(amd_dir)).immutable
    other = View(store, cache, platform=mf.Platform("linux", "s390x", ""))
    assert await other.names("multi/arch/1.0") == ["index.json", "platforms", "referrers"]


async def test_image_views_are_the_builders_passed_in(cache: BlockCache) -> None:
    seen: list[ResolvedImage] = []

    def extra(image: ResolvedImage) -> list[Node]:
        seen.append(image)
        return [BytesFile("extra.txt", image.repo.encode(), image.created)]

    store = hello_store()
    assert await View(store, cache).names("library/hello/latest") == [
        "config.json",
        "layers",
        "manifest.json",
        "referrers",
    ]
    view = View(store, cache, image_views=[extra])
    assert "extra.txt" in await view.names("library/hello/latest")
    assert await view.read("library/hello/latest/extra.txt") == b"library/hello"
    digest = store.documents[("library/hello", "v1")].digest
    assert "extra.txt" in await view.names(f"library/hello/{digest}")
    by_tag, by_digest = seen
    assert (by_tag.name.dirname, by_tag.name.tag) == ("latest", "latest")
    assert (by_digest.name.dirname, by_digest.name.tag) == (digest, None)
    assert by_tag.config == store.blobs[by_tag.manifest.config.digest]  # type: ignore[union-attr]


async def test_the_control_directory_is_at_the_root(cache: BlockCache) -> None:
    view = View(hello_store(), cache)
    assert await view.walk(".regfs") is view.control
    assert isinstance(view.control, Dir)


# -- the real store's fallbacks, seen through the views ----------------------------------


async def test_mirror_fallback_through_the_store(cache: BlockCache) -> None:
    image = make_image()
    registry = FakeClient("registry.example", failure=TransientError("connection refused"))
    empty_mirror = FakeClient("empty-mirror.example")  # 404 for everything
    mirror = FakeClient("mirror.example", tag_lists={"library/hello": ["latest"]})
    mirror.documents[("library/hello", "latest")] = image.manifest
    store = RegistryStore(registry, mirrors=[empty_mirror, mirror])  # type: ignore[arg-type, list-item]
    view = View(store, cache)
    assert await view.names("library/hello") == ["latest"]
    latest = await view.walk("library/hello/latest")
    assert isinstance(latest, TagDir)
    assert (await latest.image()).doc.digest == image.digest
    assert ("manifest", "library/hello", "latest") in empty_mirror.calls
    assert ("manifest", "library/hello", "latest") not in registry.calls  # the mirror answered
    # Nobody has it: the registry out of reach does not hide the mirrors' 404.
    with pytest.raises(NotFoundError):
        await store.document("library/hello", "gone")
    assert isinstance(await view.walk("library/hello/gone"), RepoDir)  # not a tag, then


# -- spending as few pulls as docker does ---------------------------------------------------


async def test_a_tag_past_its_ttl_is_rechecked_not_fetched(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache, tag_ttl=0.0)  # every lookup re-checks
    first = await view.walk("library/hello/latest")
    assert store.calls.count(("document", "library/hello", "latest")) == 1
    store.calls.clear()
    assert await view.walk("library/hello/latest") is first  # the same image, same inode
    assert await view.read("library/hello/latest/manifest.json") == (await first.image()).doc.raw
    assert store.count("document") == 0 and store.count("recheck") >= 2
    assert store.count("tags") == 0
    # Moved: the re-check finds out, and the new image is fetched once.
    moved = make_image(b"moved layer")
    store.add("library/hello", "latest", moved)
    store.calls.clear()
    new = await view.walk("library/hello/latest")
    assert new is not first
    assert [c for c in store.calls if c[0] != "catalog"] == [
        ("recheck", "library/hello", "latest"),
        ("document", "library/hello", "latest"),
    ]


async def test_parallel_lookups_of_a_tag_resolve_it_once(cache: BlockCache) -> None:
    store = hello_store()
    view = View(store, cache)
    hello = await view.walk("library/hello")
    found: list[Node] = []

    async def look() -> None:
        found.append(await view.table.lookup(hello.inode, "latest"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(look)
    assert len(found) == 8 and all(node is found[0] for node in found)
    assert store.calls.count(("document", "library/hello", "latest")) == 1


def hub_store() -> FakeStore:
    """Docker Hub as the views see it: no catalog, `library` answers nothing (401 there,
    the ENOENT of a repository that does not exist), library/hello is a repository."""
    store = FakeStore(repos=None)
    store.add("library/hello", "latest", make_image(b"hello layer"))
    return store


async def test_no_namespace_probe_for_a_path_known_to_be_a_repository(
    cache: BlockCache,
) -> None:
    store = hub_store()
    view = View(store, cache, tag_ttl=0.0)
    await view.read("library/hello/latest/manifest.json")
    assert ("document", "library", "hello") in store.calls  # the first time: is it a tag?
    store.calls.clear()
    await view.read("library/hello/latest/manifest.json")
    assert [c for c in store.calls if c[0] != "catalog"] == [
        ("recheck", "library/hello", "latest")
    ] * store.count("recheck")
    assert store.count("recheck") >= 1


async def test_a_refused_probe_is_not_asked_twice(cache: BlockCache) -> None:
    # With credentials on Docker Hub, `library` is refused (EACCES), library/hello answers.
    store = hub_store()
    store.tag_lists["library"] = AuthError("401")
    store.documents[("library", "hello")] = AuthError("401")
    view = View(store, cache)
    assert isinstance(await view.walk("library/hello"), RepoDir)
    assert store.calls.count(("document", "library", "hello")) == 1
    assert await view.names("library") == ["hello"]  # reached, though the list is refused


async def test_without_a_catalog_a_missing_repository_is_enoent_a_refusal_eacces(
    cache: BlockCache,
) -> None:
    store = hub_store()
    store.tag_lists["private/thing"] = AuthError("401")
    view = View(store, cache)
    with pytest.raises(NotFoundError):
        await view.names("nosuch")
    with pytest.raises(NotFoundError):
        await view.names("library/nosuch")
    with pytest.raises(AuthError):
        await view.names("private/thing")
    assert await view.names("") == [".regfs"]  # nothing reached yet


async def test_a_short_name_is_the_default_namespace_s_repository(cache: BlockCache) -> None:
    store = hello_store()
    store.default_namespace = "library"
    store.repos = ["library/hello", "someone/tool"]
    store.add("someone/tool", "1", make_image(b"tool"))
    view = View(store, cache)
    assert await view.names("") == [".regfs", "library", "someone"]  # by their full names
    short = await view.walk("hello")
    assert isinstance(short, RepoDir) and short.repository == "library/hello"
    assert await view.names("hello") == ["latest", "v1"]
    image = store.documents[("library/hello", "latest")]
    assert await view.read("hello/latest/manifest.json") == image.raw
    assert await view.read("library/hello/latest/manifest.json") == image.raw
    # Two components are literal, as docker takes them: someone/tool, not library/someone/….
    assert await view.names("someone") == ["tool"]
    assert isinstance(await view.walk("someone/tool/1"), TagDir)
    assert ("tags", "library/someone") not in store.calls
    with pytest.raises(NotFoundError):
        await view.walk("nosuch")  # neither nosuch/… nor library/nosuch in the catalog
    # Without the default namespace a short name is only itself.
    plain = hello_store()
    with pytest.raises(NotFoundError):
        await View(plain, cache).walk("hello")


async def test_a_short_name_without_a_catalog(cache: BlockCache) -> None:
    store = hub_store()
    store.default_namespace = "library"
    view = View(store, cache)
    assert isinstance(await view.walk("hello/latest"), TagDir)
    assert ("document", "library/hello", "latest") in store.calls
    assert ("document", "hello", "latest") not in store.calls
    assert await view.names("") == [".regfs"]  # a short name is not listed
    await view.walk("library/hello/latest")
    assert await view.names("") == [".regfs", "library"]


async def test_a_refusal_to_a_mount_without_credentials_is_enoent_where_eacces_was(
    cache: BlockCache,
) -> None:
    # What the store makes of Docker Hub's 401s when the mount has no credentials.
    def refusal(repo: str) -> NotFoundError:
        return NotFoundError(f"pull access denied for {repo}", status=401)

    store = hub_store()
    for repo in ("library", "library/nosuch"):
        store.tag_lists[repo] = refusal(repo)
    store.documents[("library", "nosuch")] = refusal("library")
    store.documents[("library", "hello")] = refusal("library")
    view = View(store, cache)
    with pytest.raises(NotFoundError, match="library/nosuch"):
        await view.walk("library/nosuch")  # at the lookup: an empty directory would hide it
    with pytest.raises(NotFoundError):
        await view.names("library")
    assert isinstance(await view.walk("library/hello/latest"), TagDir)  # what exists, works
    assert await view.names("library") == ["hello"]
