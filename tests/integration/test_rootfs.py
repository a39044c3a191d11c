"""rootfs/ and layers/<digest>/ on a real mount of a registry holding images that exercise
every merge rule (tests/fixtures/rootfs_images.py), compared entry by entry with `umoci
unpack` as root of the same image (tests/fixtures/treecompare.py), read with cat and
sha256sum, and the mount's nosuid,nodev as the kernel reports it."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import Dir, File, Hardlink, Symlink, Whiteout, make_tar
from tests.fixtures.images import Entry as TarEntry
from tests.fixtures.mounting import Mount, mounted
from tests.fixtures.registry import RegistryServer
from tests.fixtures.rootfs_images import RootfsFixtures, RootfsImage, push_oci
from tests.fixtures.rootfs_layers import big_text
from tests.fixtures.treecompare import (
    UmociUnpacks,
    check,
    compare,
    gnu_tar_extract,
    snapshot,
)

pytestmark = [pytest.mark.mount, pytest.mark.registry]


STARTED = time.time()


@pytest.fixture(scope="module")
def mnt(
    tmp_path_factory: pytest.TempPathFactory, rootfs_registry: RegistryServer
) -> Iterator[Mount]:
    with mounted(tmp_path_factory.mktemp("rootfs-mount"), rootfs_registry.url) as mount:
        yield mount


def image_dir(mnt: Mount, image: RootfsImage) -> Path:
    return mnt.path / image.repo / image.tag


def test_rootfs_equals_umoci_unpack_of_every_image_umoci_reads(
    rootfs_images: RootfsFixtures, mnt: Mount, umoci: UmociUnpacks
) -> None:
    compared = [image for image in rootfs_images.images.values() if image.reference_tag]
    assert {"merge-gzip", "merge-zstd", "merge-mixed", "merge-docker"} <= {i.name for i in compared}
    problems = []
    for image in compared:
        rootfs = image_dir(mnt, image) / "rootfs"
        # rootfs/'s own attributes are the tar root's once the tree is made (a listing);
        # before, what umoci gives a root no tar describes.
        os.listdir(rootfs)
        ours = snapshot(rootfs)
        theirs = snapshot(umoci.rootfs(image.repo, image.reference_tag))
        # umoci stamps the directories it makes for entries without parents with the time
        # of the unpack: recent, where every mtime of these images is from 2023 or before.
        stamped = {p for p, f in theirs.items() if f.kind == "dir" and f.mtime > STARTED - 3600}
        free = {*image.unpack_time_mtimes, *stamped}
        differences = compare(ours, theirs, labels=("regfs", "umoci"), any_mtime=free)
        problems += [f"{image.name}: {p}" for p in differences + check(ours, rootfs, image.expects)]
    assert problems == [], "\n".join(problems[:80])


def test_mtimes_to_the_nanosecond(
    rootfs_images: RootfsFixtures, mnt: Mount, umoci: UmociUnpacks
) -> None:
    """A PAX mtime of 1700000000.123456789 is that to the nanosecond (a float would give
    .123456717)."""
    image = rootfs_images.images["merge-gzip"]
    ours = snapshot(image_dir(mnt, image) / "rootfs", contents=False)
    theirs = snapshot(umoci.rootfs(image.repo, image.reference_tag), contents=False)
    assert ours[b"mtime/fraction"].mtime_ns == theirs[b"mtime/fraction"].mtime_ns


def test_images_umoci_refuses_hold_what_they_promise(
    rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    """The GNU-sparse and the Windows image (umoci refuses both) against their facts."""
    problems = []
    for image in rootfs_images.images.values():
        if not image.reference_tag and image.expects:
            rootfs = image_dir(mnt, image) / "rootfs"
            problems += [
                f"{image.name}: {p}" for p in check(snapshot(rootfs), rootfs, image.expects)
            ]
    assert problems == [], "\n".join(problems)


def test_gnu_sparse_files_read_as_the_tar_headers_say(
    rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    image = rootfs_images.images["gnu-sparse"]
    rootfs = image_dir(mnt, image) / "rootfs"
    assert check(snapshot(rootfs), rootfs, image.expects) == []


def test_cat_and_sha256sum_of_every_file(
    rootfs_images: RootfsFixtures, mnt: Mount, umoci: UmociUnpacks
) -> None:
    image = rootfs_images.images["merge-gzip"]
    rootfs = image_dir(mnt, image) / "rootfs"
    reference = umoci.rootfs(image.repo, image.reference_tag)
    files = [
        path for path, facts in snapshot(reference, contents=False).items() if facts.kind == "file"
    ]
    assert len(files) > 20
    sums = subprocess.run(
        ["sha256sum", "--", *(os.fsdecode(p) for p in files)],
        cwd=rootfs,
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    for path, line in zip(files, sums, strict=True):
        expected = hashlib.sha256((reference / os.fsdecode(path)).read_bytes()).hexdigest()
        assert line.split()[0].decode() == expected, path
    cat = subprocess.run(["cat", rootfs / "etc/os-release"], capture_output=True, check=True)
    assert cat.stdout == (reference / "etc/os-release").read_bytes()
    assert b"LAYER=3" in cat.stdout


def clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def test_a_layer_directory_holds_what_its_tar_holds_whiteouts_included(
    rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    image = rootfs_images.images["merge-gzip"]
    top = image_dir(mnt, image) / "layers"
    for digest, _ in image.layers:
        with tarfile.open(top / f"{digest}.tar.gz", errors="surrogateescape") as tar:
            members = tar.getmembers()
        names = {clean(m.name) for m in members if not m.islnk()} - {""}
        # A hardlink to a file of a lower layer has no bytes in this one: left out.
        names |= {clean(m.name) for m in members if m.islnk() and clean(m.linkname) in names}
        shown = {os.fsdecode(p) for p in snapshot(top / digest, contents=False) if p != b"."}
        every = {clean(m.name) for m in members}
        parents = {n.rsplit("/", k)[0] for n in every for k in range(1, n.count("/") + 1)}
        assert names <= shown and shown <= names | parents, digest
    layer2 = top / image.layers[1][0]
    assert (layer2 / "etc/.wh.motd").is_file()
    assert (layer2 / "var/cache/.wh..wh..opq").is_file()
    assert not (image_dir(mnt, image) / "rootfs/etc/.wh.motd").exists()


def test_the_tag_directory_of_an_index_shows_the_chosen_platforms_rootfs(
    rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    repo, tag, _ = rootfs_images.index
    tag_dir = mnt.path / repo / tag
    for platform, image in rootfs_images.index_platforms.items():
        rootfs = tag_dir / "platforms" / platform.replace("/", "-") / "rootfs"
        assert check(snapshot(rootfs), rootfs, image.expects) == [], platform
    chosen = tag_dir / "rootfs"  # the host's platform: the mount is amd64 here
    amd64 = rootfs_images.index_platforms["linux/amd64"]
    assert check(snapshot(chosen), chosen, amd64.expects) == []


def test_diff_of_a_file_between_two_tags(rootfs_images: RootfsFixtures, mnt: Mount) -> None:
    v1 = image_dir(mnt, rootfs_images.images["diff-v1"]) / "rootfs/etc/app.conf"
    v2 = image_dir(mnt, rootfs_images.images["diff-v2"]) / "rootfs/etc/app.conf"
    diff = subprocess.run(["diff", v1, v2], capture_output=True, text=True, check=False)
    assert diff.returncode == 1
    assert "< log_level = info" in diff.stdout and "> log_level = debug" in diff.stdout


def mount_options_of(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == str(path):
                return set(fields[5].split(","))
    raise AssertionError(f"{path} not in mountinfo")


def test_the_mount_is_nosuid_nodev_and_setuid_bits_stay_visible(
    rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    assert {"ro", "nosuid", "nodev"} <= mount_options_of(mnt.path)
    setuid = image_dir(mnt, rootfs_images.images["merge-gzip"]) / "rootfs/modes/setuid"
    assert os.stat(setuid).st_mode & 0o7777 == 0o4755


def test_suid_dev_lift_it(tmp_path: Path, rootfs_registry: RegistryServer) -> None:
    with mounted(tmp_path, rootfs_registry.url, "-o", "suid,dev") as mount:
        options = mount_options_of(mount.path)
        assert "ro" in options and not {"nosuid", "nodev"} & options


def test_a_200_mib_file_reads_whole_and_at_odd_offsets_across_seek_points(
    tmp_path: Path, rootfs_registry: RegistryServer, rootfs_big: dict[str, RootfsImage]
) -> None:
    # A mount of its own: the module's listed the registry's catalog before this push.
    with mounted(tmp_path, rootfs_registry.url) as mnt:
        big_reads(rootfs_big, mnt)


def big_reads(rootfs_big: dict[str, RootfsImage], mnt: Mount) -> None:
    text = big_text()
    for name in ("big-gzip", "big-zstd"):
        image = rootfs_big[name]
        rootfs = image_dir(mnt, image) / "rootfs"
        assert check(snapshot(rootfs), rootfs, image.expects) == [], name
        pieces = [((4 << 20) * k - 7, (1 << 20) + 13) for k in range(1, 50, 7)]
        pieces += [(len(text) - 5, 100), (12345, 1)]
        fd = os.open(rootfs / "big/text.bin", os.O_RDONLY)
        try:
            with ThreadPoolExecutor(4) as pool:  # parallel readers of one file
                offsets, sizes = zip(*pieces, strict=True)
                got = list(pool.map(os.pread, [fd] * len(pieces), sizes, offsets))
        finally:
            os.close(fd)
        for (offset, size), data in zip(pieces, got, strict=True):
            assert data == text[offset : offset + size], (name, offset)


def fetched(mount: Mount) -> int:
    by_host = mount.stats()["bytes_fetched_by_host"]
    assert isinstance(by_host, dict)
    return sum(by_host.values())


def test_a_remount_lists_and_stats_rootfs_without_fetching_a_byte(
    tmp_path: Path, rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures
) -> None:
    image = rootfs_images.images["merge-mixed"]  # gzip, tar and zstd layers
    cache = tmp_path / "cache"
    with mounted(tmp_path, rootfs_registry.url, cache_dir=cache, name="first") as first:
        os.listdir(image_dir(first, image))
        start = fetched(first)
        before = snapshot(image_dir(first, image) / "rootfs", contents=False)
        assert fetched(first) > start, "the first listing reads the layers"
    with mounted(tmp_path, rootfs_registry.url, cache_dir=cache, name="second") as second:
        os.listdir(image_dir(second, image))  # the manifest and config: not what is measured
        start = fetched(second)
        after = snapshot(image_dir(second, image) / "rootfs", contents=False)
        assert fetched(second) == start
    assert compare(before, after) == []


def test_a_corrupting_server_gives_eio_in_rootfs_never_a_clean_copy(
    tmp_path: Path, rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures
) -> None:
    image = rootfs_images.images["diff-v2"]
    top = image.layers[-1][0]
    with FaultProxy(rootfs_registry.url) as proxy:
        proxy.fault(f"/blobs/{top}$", times=None, flip_at=40)
        with mounted(tmp_path, proxy.url) as mount:
            rootfs = image_dir(mount, image) / "rootfs"
            with pytest.raises(OSError) as listing:
                os.listdir(rootfs)
            assert listing.value.errno == errno.EIO
            with pytest.raises(OSError) as reading:
                (rootfs / "etc/app.conf").read_bytes()
            assert reading.value.errno == errno.EIO
            # The layer's own directory fails the same way; the base layer's is whole.
            with pytest.raises(OSError):
                os.listdir(image_dir(mount, image) / "layers" / top)
            base = image_dir(mount, image) / "layers" / image.layers[0][0]
            assert (base / "etc/os-release").read_bytes().startswith(b'NAME="regfs test"')


# Layers that walk through symlinked directories and hardlink to files of lower layers that
# are later whited out, replaced or linked again: the cases where the merged state, not the
# tar, decides (umoci's securejoin of parents, links made against what is there).
THROUGH_LINKS: list[list[TarEntry]] = [
    [
        Dir("usr"),
        Dir("usr/lib"),
        File("usr/lib/old", b"whited out through the link\n"),
        Symlink("lib", "usr/lib"),
        Symlink("abs", "/usr/lib"),
        Symlink("up", "../../usr"),
        File("a", b"first inode\n"),
        Hardlink("b", "a"),
    ],
    [
        File("lib/new", b"written through lib -> usr/lib\n"),
        File("abs/absolute", b"through /usr/lib, inside the image\n"),
        File("up/lib/dotdot", b"through ../../usr, clamped at the root\n"),
        Whiteout("lib/old"),
        File("a", b"a new inode\n"),
        Hardlink("c", "b"),
    ],
    [Whiteout("b"), Hardlink("d", "lib/new")],
]


def test_symlinked_parents_and_links_to_lower_files_match_umoci(
    tmp_path: Path, rootfs_registry: RegistryServer, umoci: UmociUnpacks
) -> None:
    layers = [(make_tar(entries), "gzip") for entries in THROUGH_LINKS]
    push_oci(rootfs_registry.url, "rootfs/through", "1", layers)
    with mounted(tmp_path, rootfs_registry.url) as mnt:  # after the push: in the catalog
        ours = snapshot(mnt.path / "rootfs/through/1/rootfs")
    theirs = snapshot(umoci.rootfs("rootfs/through", "1"))
    assert compare(ours, theirs, labels=("regfs", "umoci"), mtime_ns=True, any_mtime=[b"."]) == []
    assert ours[b"usr/lib/new"].inode == ours[b"d"].inode
    assert {b"usr/lib/absolute", b"usr/lib/dotdot", b"c"} <= ours.keys()
    assert b"usr/lib/old" not in ours and b"b" not in ours


def test_each_layer_directory_equals_gnu_tar_extracting_that_layer(
    tmp_path: Path, rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    problems, compared = [], 0
    for name in ("merge-gzip", "windows"):
        image = rootfs_images.images[name]
        layers = image_dir(mnt, image) / "layers"
        for digest, _ in image.layers:
            reference = tmp_path / name / digest
            tar = gzip.decompress((layers / f"{digest}.tar.gz").read_bytes())
            gnu_tar_extract(tar, reference)
            os.listdir(layers / digest)  # its own attributes come with its tree
            ours, theirs = snapshot(layers / digest), snapshot(reference)
            # GNU tar makes missing parents now, and gives its top the time of the run.
            stamped = {p for p, f in theirs.items() if f.kind == "dir" and f.mtime > STARTED - 3600}
            found = compare(ours, theirs, labels=("regfs", "tar"), any_mtime=stamped | {b"."})
            problems += [f"{name} {digest[:19]}: {p}" for p in found]
            compared += len(theirs)
    assert problems == [], "\n".join(problems[:60])
    assert compared > 100, "the layers were extracted"


def test_stats_count_the_index_builds(rootfs_images: RootfsFixtures, mnt: Mount) -> None:
    """.regfs/stats.json (and so `regfs status`) counts the layer indexes the mount built;
    none is left in progress once every listing has returned, and listing again builds none
    (the indexes are kept)."""

    def list_every_rootfs() -> None:
        for image in rootfs_images.images.values():
            with contextlib.suppress(OSError):  # a quirk image may refuse an entry
                os.listdir(image_dir(mnt, image) / "rootfs")

    list_every_rootfs()
    first = mnt.stats()["layer_indexes"]
    assert isinstance(first, dict)
    assert first["built"] > 0 and first["building"] == []
    list_every_rootfs()
    again = mnt.stats()["layer_indexes"]
    assert isinstance(again, dict)
    assert again["built"] == first["built"]


def test_ls_l_sees_no_selinux_label_or_acl_and_xattrs_stay(
    rootfs_images: RootfsFixtures, mnt: Mount
) -> None:
    image = rootfs_images.images["merge-gzip"]
    file = image_dir(mnt, image) / "rootfs/xattr/file"
    assert os.getxattr(file, "user.comment") == b"hello xattr"
    for name in ("security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as info:
            os.getxattr(file, name, follow_symlinks=False)
        assert info.value.errno == errno.ENOTSUP, name
    listing = subprocess.run(
        ["ls", "-ln", str(file.parent)], capture_output=True, text=True, check=True
    ).stdout
    # no "+" (an ACL) or "." (an SELinux label) after the mode
    assert re.search(r"^-rw-r--r-- 1 \d+ \d+ +\d+ .* file$", listing, re.M), listing
