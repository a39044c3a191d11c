"""rootfs/ and layers/<digest>/ over a fake store and a fake layer reader (uncompressed tars
made by stdlib tarfile, indexed with tarfile: what regfs.layers does for real, without the
seek points), walked through the inode table the way the adapter walks it. No mount."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from regfs.cache import BlobRef, BlockCache
from regfs.errors import IntegrityError
from regfs.layers.entries import entry_of
from regfs.oci import manifest as mf
from regfs.oci.entry import Entry
from regfs.vfs.fuse import Operations, errno_for
from regfs.vfs.nodes import Dir, Kind, Node, StaticDir, Symlink
from regfs.vfs.table import ROOT_INODE, InodeTable
from regfs.views.rootfs import diff_ids_of, rootfs_views
from tests.unit.fakes import FakeImage, FakeStore
from tests.unit.test_views import View

AMD64 = mf.Platform("linux", "amd64", "")
CREATED = 1700000000.0


@dataclass(frozen=True)
class FakeIndex:
    digest: str
    entries: tuple[Entry, ...]


class FakeLayers:
    """A LayerReader over uncompressed tars read whole through the block cache."""

    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache
        self.indexed: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail: set[str] = set()
        self.delay = 0.01

    async def index(self, blob: BlobRef, diff_id: str | None) -> FakeIndex:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)  # the others start meanwhile if builds are concurrent
            data = await self.cache.read_all(blob)
            if blob.digest in self.fail or (diff_id and diff_id != mf.sha256_digest(data)):
                raise IntegrityError("diff_id mismatch", digest=blob.digest)
            self.indexed.append(blob.digest)
            # The index's own entry conversion: this fake stands in for the pass, not for it.
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:", errors="surrogateescape") as tar:
                entries = [e for e in map(entry_of, tar) if e is not None]
            return FakeIndex(blob.digest, tuple(entries))
        finally:
            self.in_flight -= 1

    async def read(
        self, blob: BlobRef, index: FakeIndex, entry: Entry, offset: int, size: int
    ) -> bytes:
        assert index.digest == blob.digest
        start = entry.offset + offset
        return await self.cache.read(blob, start, size)


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    link: str = "",
    uid: int = 0,
    **extra: object,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.mtime = kind, mode, link, uid, 1234
    for key, value in extra.items():
        setattr(info, key, value)
    return info, data


def layered_image(layers: list[bytes], *, diff_ids: list[str] | None = None) -> FakeImage:
    config = json.dumps(
        {
            "created": "2023-11-14T22:13:20Z",
            "os": "linux",
            "architecture": "amd64",
            "rootfs": {
                "type": "layers",
                "diff_ids": diff_ids or [mf.sha256_digest(layer) for layer in layers],
            },
        }
    ).encode()

    def descriptor(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": mf.sha256_digest(data), "size": len(data)}

    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mf.OCI_MANIFEST,
            "config": descriptor(mf.OCI_CONFIG, config),
            "layers": [descriptor(mf.OCI_LAYER_TAR, layer) for layer in layers],
        }
    ).encode()
    doc = mf.parse_document(raw)
    assert isinstance(doc, mf.Manifest)
    blobs = {mf.sha256_digest(b): b for b in [config, *layers]}
    return FakeImage(doc, blobs)


BASE = tar_of(
    member("./", tarfile.DIRTYPE, mode=0o755),
    member("etc/", tarfile.DIRTYPE, mode=0o755),
    member("etc/os-release", data=b"ID=fake\n"),
    member("etc/gone", data=b"x"),
    member("bin/", tarfile.DIRTYPE, mode=0o755),
    member("bin/su", data=b"#!su", mode=0o4755, uid=0),
    member("bin/sudo", tarfile.LNKTYPE, link="bin/su"),
    member("lib", tarfile.SYMTYPE, link="/usr/lib"),
    member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    member("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    member("tmp/", tarfile.DIRTYPE, mode=0o1777),
)
TOP = tar_of(
    member("etc/.wh.gone"),
    member("etc/motd", data=b"hello\n", pax_headers={"SCHILY.xattr.user.note": "hi"}),
    member("usr/lib/libc.so", data=b"\x7fELF" + bytes(5000)),
)


@pytest.fixture
async def cache() -> AsyncIterator[BlockCache]:
    async with BlockCache(disk=None, block_size=4096).running() as cache:
        yield cache


class Tree(View):
    """One image, app:v1, with rootfs/ and layers/<digest>/ over the fake layer reader."""

    def __init__(self, cache: BlockCache, image: FakeImage) -> None:
        store = FakeStore(repos=["app"])
        store.add("app", "v1", image)
        self.image = image
        self.layers = FakeLayers(cache)
        super().__init__(store, cache, image_views=[rootfs_views(self.layers)])


def digest_of(layer: bytes) -> str:
    return "sha256:" + hashlib.sha256(layer).hexdigest()


async def test_image_directory_lists_rootfs_without_indexing(cache: BlockCache) -> None:
    tree = Tree(cache, layered_image([BASE, TOP]))
    names = await tree.names("app/v1")
    assert "rootfs" in names
    layers = await tree.names("app/v1/layers")
    assert digest_of(BASE) in layers and f"{digest_of(BASE)}.tar" in layers and "1.tar" in layers
    assert tree.layers.indexed == []


async def test_rootfs_is_the_merge_with_the_tars_attributes(cache: BlockCache) -> None:
    tree = Tree(cache, layered_image([BASE, TOP]))
    assert await tree.names("app/v1/rootfs") == ["bin", "dev", "etc", "lib", "run", "tmp", "usr"]
    assert sorted(tree.layers.indexed) == sorted([digest_of(BASE), digest_of(TOP)])
    assert tree.layers.most_in_flight == 2, "layers of an image are indexed concurrently"
    assert await tree.names("app/v1/rootfs/etc") == ["motd", "os-release"]
    assert await tree.read("app/v1/rootfs/etc/os-release") == b"ID=fake\n"
    su = await tree.walk("app/v1/rootfs/bin/su")
    assert su.attrs.kind is Kind.FILE and su.attrs.mode == 0o4755 and su.attrs.mtime == 1234
    sudo = await tree.walk("app/v1/rootfs/bin/sudo")
    assert sudo is su and su.attrs.nlink == 2 and sudo.inode == su.inode
    lib = await tree.walk("app/v1/rootfs/lib")
    assert isinstance(lib, Symlink) and lib.target == b"/usr/lib"
    null = await tree.walk("app/v1/rootfs/dev/null")
    assert null.attrs.kind is Kind.CHAR_DEVICE and null.attrs.rdev == os.makedev(1, 3)
    fifo = await tree.walk("app/v1/rootfs/run/fifo")
    assert stat.S_ISFIFO(fifo.attrs.st_mode) and fifo.attrs.mode == 0o600
    tmp = await tree.walk("app/v1/rootfs/tmp")
    assert tmp.attrs.mode == 0o1777 and tmp.attrs.kind is Kind.DIR
    motd = await tree.walk("app/v1/rootfs/etc/motd")
    assert dict(motd.xattrs) == {"user.note": b"hi"}
    usr = await tree.walk("app/v1/rootfs/usr")  # no entry of its own: implicit
    assert (usr.attrs.mode, usr.attrs.uid, usr.attrs.gid) == (0o755, 0, 0)


async def test_reads_return_exactly_the_bytes_asked_for(cache: BlockCache) -> None:
    tree = Tree(cache, layered_image([BASE, TOP]))
    lib = b"\x7fELF" + bytes(5000)
    assert await tree.read("app/v1/rootfs/usr/lib/libc.so") == lib
    assert await tree.read("app/v1/rootfs/usr/lib/libc.so", 4090, 20) == lib[4090:4110]
    assert await tree.read("app/v1/rootfs/usr/lib/libc.so", 5000, 100) == lib[5000:]
    assert await tree.read("app/v1/rootfs/usr/lib/libc.so", 9000, 100) == b""


async def test_a_layer_directory_shows_its_whiteouts(cache: BlockCache) -> None:
    tree = Tree(cache, layered_image([BASE, TOP]))
    top = f"app/v1/layers/{digest_of(TOP)}"
    assert await tree.names(top) == ["etc", "usr"]
    assert await tree.names(f"{top}/etc") == [".wh.gone", "motd"]
    assert await tree.read(f"{top}/etc/motd") == b"hello\n"
    base = f"app/v1/layers/{digest_of(BASE)}"
    assert "gone" in await tree.names(f"{base}/etc")
    assert await tree.read(f"{base}/bin/sudo") == b"#!su"


async def test_an_integrity_error_makes_the_tree_eio_and_is_tried_again(
    cache: BlockCache,
) -> None:
    tree = Tree(cache, layered_image([BASE, TOP]))
    tree.layers.fail.add(digest_of(TOP))
    rootfs = await tree.walk("app/v1/rootfs")
    with pytest.raises(IntegrityError) as caught:
        await tree.table.listdir(rootfs.inode)
    assert errno_for(caught.value) == errno.EIO
    tree.layers.fail.clear()
    assert "usr" in await tree.names("app/v1/rootfs")


async def test_a_diff_id_mismatch_fails_the_tree(cache: BlockCache) -> None:
    image = layered_image([BASE, TOP], diff_ids=[digest_of(BASE), digest_of(BASE)])
    tree = Tree(cache, image)
    with pytest.raises(IntegrityError):
        await tree.names("app/v1/rootfs")


def test_diff_ids_that_do_not_match_the_layers_are_not_used() -> None:
    config = json.dumps({"rootfs": {"diff_ids": ["sha256:a"]}}).encode()
    assert diff_ids_of(config, 1) == ["sha256:a"]
    assert diff_ids_of(config, 2) == [None, None]
    assert diff_ids_of(b"not json", 1) == [None]


async def test_non_utf8_names_round_trip(cache: BlockCache) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    layer = tar_of(member(name, data=b"latin-1"))
    tree = Tree(cache, layered_image([layer]))
    assert await tree.names("app/v1/rootfs") == [name]
    assert await tree.read(f"app/v1/rootfs/{name}") == b"latin-1"


def test_the_mount_is_nosuid_nodev_unless_lifted() -> None:
    from regfs.mount import mount_options

    default = mount_options([], as_root=True)
    assert {"nosuid", "nodev", "ro", "allow_other"} <= default
    assert not {"suid", "dev"} & default
    lifted = mount_options(["suid,dev", "max_read=131072"], as_root=False)
    assert {"suid", "dev", "max_read=131072"} <= lifted
    assert not {"nosuid", "nodev", "allow_other"} & lifted
    assert mount_options(["dev"], as_root=False) >= {"nosuid", "dev"}


def test_mtimes_reach_the_kernel_to_the_nanosecond_where_a_float_holds_them() -> None:
    from regfs.vfs.fuse import mtime_ns

    assert mtime_ns(1700000000.25) == 1700000000_250000000
    assert mtime_ns(0.0) == 0
    assert mtime_ns(-1.5) == -1_500000000
    assert abs(mtime_ns(1700000000.123456789) - 1700000000_123456789) < 1000


async def test_a_layer_directory_needs_only_its_own_index(cache: BlockCache) -> None:
    tree = Tree(cache, layered_image([BASE, TOP]))
    tree.layers.fail.add(digest_of(TOP))
    base = f"app/v1/layers/{digest_of(BASE)}"
    assert await tree.read(f"{base}/etc/os-release") == b"ID=fake\n"
    assert tree.layers.indexed == [digest_of(BASE)]
    with pytest.raises(IntegrityError):
        await tree.names(f"app/v1/layers/{digest_of(TOP)}")


class SlowDir(Dir):
    async def lookup(self, name: str) -> Node | None:
        await trio.sleep(0.3)
        return None


async def test_waiting_for_an_index_outlasts_the_operation_bound(cache: BlockCache) -> None:
    """The index build bounds its own wait by progress (LayerFiles): a slow first listing
    of rootfs/ is no ETIMEDOUT, where any other slow lookup is."""
    tree = Tree(cache, layered_image([BASE, TOP]))
    tree.layers.delay = 0.3
    slow = SlowDir("slow")
    root = StaticDir("", [slow, await tree.walk("app/v1/rootfs")])
    ops = Operations(InodeTable(root), op_timeout=0.1)
    rootfs = await ops.lookup(ROOT_INODE, b"rootfs")
    etc = await ops.lookup(rootfs.st_ino, b"etc")
    assert stat.S_ISDIR(etc.st_mode)
    slow_entry = await ops.lookup(ROOT_INODE, b"slow")
    with pytest.raises(pyfuse3.FUSEError) as timed_out:
        await ops.lookup(slow_entry.st_ino, b"x")
    assert timed_out.value.errno == errno.ETIMEDOUT
