"""The tree of DESIGN.md §1 without a mount: build_services + make_tree against the real registry."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from regfs.compose import MountConfig, build_services, make_tree
from regfs.errors import AuthError, NotFoundError
from regfs.oci.platform import parse_platform
from regfs.registry.client import Stats
from regfs.vfs import fuse as fs
from regfs.vfs.nodes import Dir, Node, Symlink
from regfs.vfs.table import ROOT_INODE, InodeTable
from regfs.views.registry import Options
from tests.fixtures.registry import RegistryServer
from tests.fixtures.schema1 import schema1_payload
from tests.fixtures.seed import Seeded


@dataclass
class Built:
    tree: InodeTable
    stats: Stats

    async def walk(self, path: str) -> Node:
        node: Node = self.tree.root
        for name in path.split("/"):
            if name:
                node = await self.tree.lookup(node.inode, name)
        return node

    async def names(self, path: str) -> list[str]:
        node = await self.walk(path)
        return sorted(name for name, _ in await self.tree.listdir(node.inode))

    async def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        node = await self.walk(path)
        fh, file = await self.tree.open(node.inode)
        try:
            return await self.tree.read(fh, offset, file.size if size is None else size)
        finally:
            self.tree.release(fh)


def layer_names(digests: list[str], *, trees: bool = True) -> list[str]:
    """What layers/ lists: each blob by digest, a numbered link per layer, in order, and
    (`trees`: an image with a config) each layer's own tree, layers/<digest>/."""
    numbered = [f"{n:0{len(str(len(digests)))}d}.tar.gz" for n in range(1, len(digests) + 1)]
    own = set(digests) if trees else set()
    return sorted({f"{d}.tar.gz" for d in digests} | set(numbered) | own)


@asynccontextmanager
async def built(
    tmp_path: Path, registry: RegistryServer, platform: str = "linux/amd64"
) -> AsyncIterator[Built]:
    config = MountConfig(
        mountpoint=tmp_path / "unused",
        registry=registry.url,
        options=Options(platform=parse_platform(platform)),
        cache_dir=tmp_path / "cache",
    )
    stats = Stats()
    services = build_services(config, stats)
    try:
        async with services.cache.running():
            yield Built(make_tree(services, config.options), stats)
    finally:
        await services.aclose()


async def test_root_lists_namespaces_and_control_dir(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    async with built(tmp_path, registry) as b:
        top = {repo.split("/")[0] for repo in seeded.repos}
        assert top | {".regfs"} <= set(await b.names(""))
        assert await b.names("library/hello") == ["latest", "v1"]
        assert "stats.json" in await b.names(".regfs")


async def test_image_by_tag_is_byte_exact(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    hello = seeded.hello
    async with built(tmp_path, registry) as b:
        # (whole-image views such as image.tar may sit beside these)
        assert {"config.json", "layers", "manifest.json"} <= set(
            await b.names("library/hello/latest")
        )
        assert await b.read("library/hello/latest/manifest.json") == hello.manifest_bytes
        assert await b.read("library/hello/latest/config.json") == hello.config_bytes
        assert await b.names("library/hello/latest/layers") == layer_names(
            [layer.digest for layer in hello.layers]
        )
        for number, layer in enumerate(hello.layers, 1):
            path = f"library/hello/latest/layers/{layer.digest}.tar.gz"
            node = await b.walk(path)
            assert node.size == layer.size
            assert await b.read(path) == layer.data
            link = await b.walk(f"library/hello/latest/layers/{number}.tar.gz")
            assert isinstance(link, Symlink) and link.target == f"{layer.digest}.tar.gz".encode()


async def test_digest_dir_is_reachable_but_not_listed(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    hello = seeded.hello
    async with built(tmp_path, registry) as b:
        assert hello.manifest_digest not in await b.names("library/hello")
        by_digest = f"library/hello/{hello.manifest_digest}"
        assert await b.read(f"{by_digest}/manifest.json") == hello.manifest_bytes
        assert await b.read(f"{by_digest}/config.json") == hello.config_bytes
        node = await b.walk(by_digest)
        assert node.immutable


async def test_oci_image_layers_have_tar_gz_names(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    app = seeded.oci_app
    async with built(tmp_path, registry) as b:
        assert await b.read("oci/app/1.0/manifest.json") == app.manifest_bytes
        assert await b.names("oci/app/1.0/layers") == layer_names([x.digest for x in app.layers])


@pytest.mark.parametrize("ref", ["multi/arch:1.0", "multi/oci:2.0"])
async def test_index_shows_the_matching_platform(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, ref: str
) -> None:
    index = seeded.multi_arch if ref == "multi/arch:1.0" else seeded.multi_oci
    path = ref.replace(":", "/")
    async with built(tmp_path, registry, platform="linux/arm64/v8") as b:
        assert await b.read(f"{path}/index.json") == index.manifest_bytes
        assert set(await b.names(path)) >= {
            "index.json",
            "platforms",
            "manifest.json",
            "config.json",
            "layers",
        }
        arm = next(img for img, p in index.entries if p["architecture"] == "arm64")
        assert await b.read(f"{path}/manifest.json") == arm.manifest_bytes
        assert await b.read(f"{path}/config.json") == arm.config_bytes
        expected_dirs = {
            "-".join(p[k] for k in ("os", "architecture", "variant") if k in p)
            for _, p in index.entries
        }
        assert set(await b.names(f"{path}/platforms")) == expected_dirs
        for image, p in index.entries:
            name = "-".join(p[k] for k in ("os", "architecture", "variant") if k in p)
            assert await b.read(f"{path}/platforms/{name}/manifest.json") == image.manifest_bytes
            (layer,) = image.layers
            assert (
                await b.read(f"{path}/platforms/{name}/layers/{layer.digest}.tar.gz") == layer.data
            )
        # The index by digest is the same directory.
        by_digest = f"{index.repo}/{index.manifest_digest}"
        assert await b.read(f"{by_digest}/index.json") == index.manifest_bytes


async def test_index_without_a_matching_platform_shows_index_and_platforms_only(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    async with built(tmp_path, registry, platform="linux/s390x") as b:
        assert await b.names("multi/arch/1.0") == ["index.json", "platforms", "referrers"]
        with pytest.raises(NotFoundError):
            await b.walk("multi/arch/1.0/manifest.json")


async def test_schema1_layers_come_from_fslayers(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    s1 = seeded.schema1
    async with built(tmp_path, registry) as b:
        served = await b.read("legacy/schema1/1/manifest.json")
        assert schema1_payload(served) == s1.payload
        assert await b.names("legacy/schema1/1/layers") == layer_names(
            [d for d, _ in s1.layers], trees=False
        )
        for digest, data in s1.layers:
            path = f"legacy/schema1/1/layers/{digest}.tar.gz"
            assert (await b.walk(path)).size == len(data)
            assert await b.read(path) == data
        assert b'"architecture"' in await b.read("legacy/schema1/1/config.json")


async def test_nested_repositories(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    async with built(tmp_path, registry) as b:
        assert "project" in await b.names("team")
        assert "tool" in await b.names("team/project")
        assert await b.names("team/project/tool") == ["3"]
        assert await b.read("team/project/tool/3/manifest.json") == seeded.nested.manifest_bytes


INVALID_AT_ROOT = ["..", ".", "Library", "a%2Fb", "x" * 256, "\x00", "-lead", "a..b"]
INVALID_UNDER_REPO = [
    "..",
    "a%2Fb",
    "x" * 300,
    "sha256:abc",
    "sha256:" + "g" * 64,
    "sha256:" + "A" * 64,
    "sha512:" + "a" * 64,
    "md5:" + "a" * 32,
    "\x00",
    ".hidden",
]


async def test_invalid_names_are_enoent_without_a_request(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    async with built(tmp_path, registry) as b:
        await b.names("")  # the catalog and the tag list are fetched now, not below
        await b.names("library/hello")
        hello = await b.walk("library/hello")
        image = await b.walk("library/hello/latest")
        await b.names("library/hello/latest")
        before = b.stats.requests
        for name in INVALID_AT_ROOT:
            with pytest.raises(NotFoundError):
                await b.tree.lookup(ROOT_INODE, name)
        for name in INVALID_UNDER_REPO:
            with pytest.raises(NotFoundError):
                await b.tree.lookup(hello.inode, name)
            assert isinstance(hello, Dir)
            assert await hello.lookup(name) is None
        for name in ["..", "nope.json", "%2e%2e"]:
            with pytest.raises(NotFoundError):
                await b.tree.lookup(image.inode, name)
        assert b.stats.requests == before


async def test_lookup_counts_and_forget(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    async with built(tmp_path, registry) as b:
        image = await b.walk("library/hello/latest")
        first = await b.tree.lookup(image.inode, "manifest.json")
        again = await b.tree.lookup(image.inode, "manifest.json")
        assert first is again
        inode = first.inode
        assert b.tree.lookups[inode] == 2
        b.tree.forget(inode, 1)
        assert b.tree.node(inode) is first
        # An open handle keeps the node alive past the last forget.
        fh, _ = await b.tree.open(inode)
        b.tree.forget(inode, 1)
        assert b.tree.node(inode) is first
        assert await b.tree.read(fh, 0, 5) == seeded.hello.manifest_bytes[:5]
        b.tree.release(fh)
        with pytest.raises(NotFoundError):
            b.tree.node(inode)
        # Forgetting more than was looked up, or an unknown inode, never raises.
        b.tree.forget(inode, 3)
        b.tree.forget(999_999, 1)
        b.tree.forget(ROOT_INODE, 1)
        assert b.tree.node(ROOT_INODE) is b.tree.root
        # Looked up again after being forgotten: usable again.
        node = await b.tree.lookup(image.inode, "manifest.json")
        assert b.tree.lookups[node.inode] == 1
        assert await b.read("library/hello/latest/manifest.json") == seeded.hello.manifest_bytes


async def test_reads_are_exact_and_short_only_at_eof(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    big = max(seeded.hello.layers, key=lambda layer: layer.size)
    path = f"library/hello/latest/layers/{big.digest}.tar.gz"
    async with built(tmp_path, registry) as b:
        node = await b.walk(path)
        fh, _ = await b.tree.open(node.inode)
        try:
            for offset, size in [
                (0, 1),
                (4 << 20, 10),
                (1_000_001, 3_333_333),
                (big.size - 7, 100),
            ]:
                want = big.data[offset : offset + size]
                assert await b.tree.read(fh, offset, size) == want
            assert await b.tree.read(fh, big.size, 10) == b""
            assert await b.tree.read(fh, big.size + 12345, 10) == b""
        finally:
            b.tree.release(fh)


class _Collector:
    """Stands in for pyfuse3.readdir_reply: takes `room` entries, then says the buffer is full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.entries: list[tuple[str, int]] = []

    def __call__(self, token: Any, name: bytes, attrs: Any, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((name.decode(), next_id))
        return True


async def test_readdir_offsets_are_stable(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with built(tmp_path, registry) as b:
        ops = fs.Operations(b.tree)
        full = _Collector(1000)
        monkeypatch.setattr(pyfuse3, "readdir_reply", full)
        await ops.readdir(await ops.opendir(ROOT_INODE, None), 0, None)
        names = [name for name, _ in full.entries]
        assert names == sorted(names) and len(names) >= 4
        # Two entries at a time, resuming from the offset the last reply carried.
        seen: list[str] = []
        start = 0
        fh = await ops.opendir(ROOT_INODE, None)
        while True:
            part = _Collector(2)
            monkeypatch.setattr(pyfuse3, "readdir_reply", part)
            await ops.readdir(fh, start, None)
            if not part.entries:
                break
            seen += [name for name, _ in part.entries]
            start = part.entries[-1][1]
        assert seen == names
        # Entries handed to the kernel were counted as lookups.
        hello = await b.walk("library")
        assert b.tree.lookups[hello.inode] >= 2


async def test_writes_are_erofs_in_the_adapter(tmp_path: Path, registry: RegistryServer) -> None:
    async with built(tmp_path, registry) as b:
        ops = fs.Operations(b.tree)
        image = await b.walk("library/hello/latest")
        manifest = await b.tree.lookup(image.inode, "manifest.json")
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await ops.open(manifest.inode, os.O_WRONLY, None)
        assert raised.value.errno == errno.EROFS
        for call in (ops.mkdir, ops.unlink, ops.rmdir, ops.create, ops.rename, ops.setattr):
            with pytest.raises(pyfuse3.FUSEError) as raised:
                await call(image.inode, b"x")
            assert raised.value.errno == errno.EROFS


async def test_protected_registry_without_credentials_is_auth_error(
    tmp_path: Path, htpasswd_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "nothing-here"))
    monkeypatch.setenv("HOME", str(tmp_path))
    async with built(tmp_path, htpasswd_registry) as b:
        assert await b.names("") == [".regfs"]  # no catalog without credentials
        library = await b.walk("library")
        # Neither an empty directory nor ENOENT: the refusal itself (EACCES in vfs/fuse.py).
        with pytest.raises(AuthError) as raised:
            await b.walk("library/hello/latest")
        assert htpasswd_registry.host in str(raised.value)
        assert fs.errno_for(raised.value) == errno.EACCES
        with pytest.raises(AuthError):
            await b.tree.listdir(library.inode)


async def test_listing_a_repository_fetches_no_manifest(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    # A repository may have thousands of tags: listing it uses the tag list alone; a tag is
    # resolved (its manifest fetched) only when its directory is used.
    async with built(tmp_path, registry) as b:
        repo = await b.walk("library/hello")
        before = b.stats.requests
        assert sorted(name for name, _ in await b.tree.listdir(repo.inode)) == ["latest", "v1"]
        assert b.stats.requests - before == 1  # GET /v2/library/hello/tags/list
        manifest = await b.read("library/hello/latest/manifest.json")
        assert manifest == seeded.hello.manifest_bytes


async def test_referrers_cost_no_manifest_request_where_there_are_none(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    # docker-registry 2.8 has no referrers API: one 404 for it, one tag list to look for the
    # fallback and cosign tags, and no manifest GET (each a pull on Docker Hub) for tags
    # that are not there. Listing the image asks nothing.
    async with built(tmp_path, registry) as b:
        assert "referrers" in await b.names("library/hello/latest")
        before = b.stats.requests
        assert await b.names("library/hello/latest/referrers") == ["index.json"]
        assert b.stats.requests - before == 2
        index = json.loads(await b.read("library/hello/latest/referrers/index.json"))
        assert index == {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }
