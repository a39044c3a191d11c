"""The rootfs/ test images are what they claim, judged by the real tools: skopeo inspects
them, umoci (as root) unpacks them and its trees hold every promised case, and the tree
comparator finds a planted difference. This also pins down umoci 0.4.7's behaviour, which
`<image>/rootfs/` must reproduce."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.fixtures.rootfs_images import (
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    QUIRKS,
    RootfsFixtures,
    RootfsImage,
)
from tests.fixtures.rootfs_layers import (
    SPARSE_SIZE,
    gnu_sparse_layer,
    merge_base,
    merge_top,
)
from tests.fixtures.treecompare import (
    Expect,
    UmociError,
    UmociUnpacks,
    check,
    compare,
    gnu_tar_extract,
    snapshot,
    umoci_unpack,
)

pytestmark = pytest.mark.registry

UMOCI_IMAGES = ["merge-gzip", "merge-tar", "merge-docker", "diff-v1", "diff-v2"]


def skopeo_raw(registry: RegistryServer, repo: str, reference: str) -> bytes:
    sep = "@" if reference.startswith("sha256:") else ":"
    return subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.host}/{repo}{sep}{reference}",
        ],
        check=True,
        capture_output=True,
    ).stdout


def blob(registry: RegistryServer, repo: str, digest: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30) as resp:
        data: bytes = resp.read()
    return data


def members(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return archive.getmembers()


def uncompressed(data: bytes, media_type: str) -> bytes:
    if media_type == OCI_LAYER_TAR:
        return data
    if media_type == OCI_LAYER_ZSTD:
        return subprocess.run(["zstd", "-dc"], input=data, check=True, capture_output=True).stdout
    return gzip.decompress(data)


def diff_ids(registry: RegistryServer, image: RootfsImage) -> list[str]:
    manifest = json.loads(skopeo_raw(registry, image.repo, image.tag))
    config = json.loads(blob(registry, image.repo, manifest["config"]["digest"]))
    ids: list[str] = config["rootfs"]["diff_ids"]
    return ids


def test_every_image_is_pushed_with_the_promised_layers(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures
) -> None:
    kinds = {
        "gzip": {"tar+gzip"},
        "tar": {"tar"},
        "docker": {"gzip"},  # application/vnd.docker.image.rootfs.diff.tar.gzip
        "zstd": {"tar+zstd"},
        "mixed": {"tar+gzip", "tar", "tar+zstd"},
    }
    for name, image in rootfs_images.images.items():
        raw = skopeo_raw(rootfs_registry, image.repo, image.tag)
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == image.manifest_digest, name
        layer_kinds = {x["mediaType"].rsplit(".", 1)[1] for x in json.loads(raw)["layers"]}
        variant = image.tag if image.repo == "rootfs/merge" else "gzip"
        assert layer_kinds == kinds[variant], name
        assert image.cases or image.umoci_error, name
    merge = rootfs_images.images["merge-gzip"]
    assert len(merge.layers) == 5
    # An empty layer: a tar of no entries (GNU tar writes its end-of-archive blocks).
    empty = uncompressed(blob(rootfs_registry, merge.repo, merge.layers[3][0]), merge.layers[3][1])
    assert empty and members(empty) == []


def test_zstd_and_mixed_variants_hold_the_same_tars(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures
) -> None:
    """So umoci's unpack of the gzip variant is the reference for them: same diff_ids, and
    each layer decompresses (zstd -d, gzip) to the tar its diff_id names."""
    images = rootfs_images.images
    reference = diff_ids(rootfs_registry, images["merge-gzip"])
    for name in ("merge-zstd", "merge-mixed", "merge-tar", "merge-docker"):
        image = images[name]
        assert diff_ids(rootfs_registry, image) == reference, name
        for (digest, media_type), diff_id in zip(image.layers, reference, strict=True):
            tar = uncompressed(blob(rootfs_registry, image.repo, digest), media_type)
            assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id, (name, digest)
    assert {m for _, m in images["merge-zstd"].layers} == {OCI_LAYER_ZSTD}


def test_umoci_cannot_read_zstd(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures, tmp_path: Path
) -> None:
    with pytest.raises(UmociError, match="zstd"):
        umoci_unpack(rootfs_registry.host, "rootfs/merge", "zstd", tmp_path)


@pytest.mark.parametrize("name", UMOCI_IMAGES)
def test_umoci_unpack_holds_every_promised_case(
    rootfs_images: RootfsFixtures, umoci: UmociUnpacks, name: str
) -> None:
    image = rootfs_images.images[name]
    root = umoci.rootfs(image.repo, image.reference_tag)
    assert check(snapshot(root), root, image.expects) == []


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_what_umoci_makes_of_a_corner_case(
    rootfs_images: RootfsFixtures, umoci: UmociUnpacks, quirk: str
) -> None:
    image = rootfs_images.images[f"quirk-{quirk}"]
    if image.umoci_error:
        with pytest.raises(UmociError, match=image.umoci_error):
            umoci.rootfs(image.repo, image.tag)
        return
    root = umoci.rootfs(image.repo, image.reference_tag)
    assert check(snapshot(root), root, image.expects) == []
    # Nothing lands outside the bundle's rootfs, whatever the names say.
    bundle = root.parent
    assert sorted(p.name for p in bundle.iterdir() if not p.name.endswith(".mtree")) == [
        "config.json",
        "rootfs",
        "umoci.json",
    ]


def test_index_platforms_unpack_to_their_own_files(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures, umoci: UmociUnpacks
) -> None:
    repo, tag, _ = rootfs_images.index
    index = json.loads(skopeo_raw(rootfs_registry, repo, tag))
    assert {
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
    } == set(rootfs_images.index_platforms)
    for image in rootfs_images.index_platforms.values():
        root = umoci.rootfs(image.repo, image.manifest_digest)
        assert check(snapshot(root), root, image.expects) == []


def test_two_tags_differ_in_one_file(rootfs_images: RootfsFixtures, umoci: UmociUnpacks) -> None:
    v1, v2 = (rootfs_images.images[f"diff-{t}"] for t in ("v1", "v2"))
    a = snapshot(umoci.rootfs(v1.repo, v1.tag))
    b = snapshot(umoci.rootfs(v2.repo, v2.tag))
    problems = compare(a, b, any_mtime=v1.unpack_time_mtimes)
    assert problems and {p.split(":")[0] for p in problems} == {"etc/app.conf", "etc/version"}


def test_umoci_unpacks_are_reproducible_and_the_comparator_sees_planted_changes(
    rootfs_registry: RegistryServer,
    rootfs_images: RootfsFixtures,
    umoci: UmociUnpacks,
    tmp_path: Path,
) -> None:
    image = rootfs_images.images["merge-gzip"]
    first = umoci.rootfs(image.repo, image.tag)
    second = umoci_unpack(rootfs_registry.host, image.repo, image.tag, tmp_path)
    before = snapshot(first)
    assert compare(before, snapshot(second), any_mtime=image.unpack_time_mtimes) == []
    # umoci keeps nanoseconds (PAX mtimes), so two unpacks agree to the nanosecond.
    assert (
        compare(before, snapshot(second), mtime_ns=True, any_mtime=image.unpack_time_mtimes) == []
    )
    # The paths it stamps with the time of the unpack really are recent (the others are 2023).
    for path in image.unpack_time_mtimes:
        assert before[path].mtime > time.time() - 3600, path

    (second / "etc/hostname").write_bytes(b"changed\n")
    os.chmod(second / "modes/setuid", 0o755)
    os.chown(second / "modes/owned", 1000, 1001)
    (second / "links/rel").unlink()
    os.symlink("b", second / "links/rel")
    (second / "links/a-hard2").unlink()
    shutil.copy2(first / "links/a", second / "links/a-hard2")  # same bytes, not a hardlink
    os.setxattr(second / "xattr/file", "user.comment", b"other")
    mtime_ns = before[b"etc/os-release"].mtime_ns
    os.utime(second / "etc/os-release", ns=(mtime_ns, mtime_ns + 1))
    (second / "opt/kept").unlink()
    (second / "new-file").write_bytes(b"")
    problems = compare(
        before,
        snapshot(second),
        labels=("umoci", "changed"),
        mtime_ns=True,
        any_mtime=image.unpack_time_mtimes,
    )
    text = "\n".join(problems)
    for expected in (
        "etc/hostname: sha256",
        "etc/hostname: size",
        "modes/setuid: mode umoci='0o4755' changed='0o755'",
        "modes/owned: gid umoci=1000 changed=1001",
        "links/rel: target umoci=b'a' changed=b'b'",
        "links/a: nlink umoci=3 changed=2",
        "links/a-hard2: nlink umoci=3 changed=1",
        "hardlink group only in umoci: ['links/a', 'links/a-hard', 'links/a-hard2']",
        "hardlink group only in changed: ['links/a', 'links/a-hard']",
        "xattr/file: xattrs",
        "etc/os-release: mtime_ns",
        "opt/kept: only in umoci (file)",
        "new-file: only in changed (file)",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    # Whole seconds by default: a 1 ns change of mtime is not a difference then.
    assert not [
        p
        for p in compare(before, snapshot(second), any_mtime=image.unpack_time_mtimes)
        if "os-release" in p
    ]


def test_umoci_fails_on_old_gnu_sparse_which_gnu_tar_extracts(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures, tmp_path: Path
) -> None:
    image = rootfs_images.images["gnu-sparse"]
    with pytest.raises(UmociError, match=image.umoci_error):
        umoci_unpack(rootfs_registry.host, image.repo, image.tag, tmp_path / "umoci")
    tar = gzip.decompress(blob(rootfs_registry, image.repo, image.layers[0][0]))
    (entry,) = (x for x in members(tar) if x.name == "./gnu-sparse")
    assert entry.type == tarfile.GNUTYPE_SPARSE and entry.sparse and entry.size == SPARSE_SIZE
    out = tmp_path / "tar"
    assert gnu_tar_extract(tar, out) == []
    assert check(snapshot(out), out, image.expects) == []


def test_big_image_unpacks_with_its_200_mib_file(
    rootfs_registry: RegistryServer,
    rootfs_big: dict[str, RootfsImage],
    umoci: UmociUnpacks,
    tmp_path: Path,
) -> None:
    image = rootfs_big["big-gzip"]
    root = umoci.rootfs(image.repo, image.tag)
    assert check(snapshot(root), root, image.expects) == []
    # Both zstd variants hold the same tar; skopeo's is one frame, pzstd's many.
    frames = {}
    for name in ("big-zstd", "big-zstd-frames"):
        zstd_image = rootfs_big[name]
        assert zstd_image.layers[0][1] == OCI_LAYER_ZSTD
        assert diff_ids(rootfs_registry, zstd_image) == diff_ids(rootfs_registry, image)
        layer = tmp_path / f"{name}.zst"  # zstd --list reads no stdin
        layer.write_bytes(blob(rootfs_registry, zstd_image.repo, zstd_image.layers[0][0]))
        listing = subprocess.run(["zstd", "-lv", str(layer)], capture_output=True, text=True)
        frames[name] = int(listing.stdout.split("Zstandard Frames:")[1].split()[0])
    assert frames["big-zstd"] == 1 and frames["big-zstd-frames"] > 10, frames


def test_rootless_umoci_is_no_reference(
    rootfs_images: RootfsFixtures, umoci: UmociUnpacks, tmp_path: Path
) -> None:
    """Why the reference is `umoci unpack` as root: --rootless makes device nodes empty
    files and every owner the caller (root here), keeping the owner only in a
    user.rootlesscontainers xattr; nothing else differs."""
    image = rootfs_images.images["merge-gzip"]
    as_root = umoci.rootfs(image.repo, image.tag)
    layout = as_root.parent.parent / "layout"
    bundle = tmp_path / "rootless"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:{image.tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    problems = compare(
        snapshot(as_root),
        snapshot(bundle / "rootfs"),
        labels=("root", "rootless"),
        any_mtime=image.unpack_time_mtimes,
    )
    differing = {tuple(p.split(" ", 2)[:2]) for p in problems}
    devices = {
        (f"{path}:", name)
        for path in ("dev/null", "dev/loop7")
        for name in ("kind", "size", "rdev", "sha256")
    }
    owners = {
        ("dev/loop7:", "gid"),
        ("modes/owned:", "uid"),
        ("modes/owned:", "gid"),
        ("modes/nobody:", "uid"),
        ("modes/nobody:", "gid"),
        ("modes/shared:", "gid"),
    }
    owner_xattrs = {(path, "xattrs") for path, _ in owners}
    assert differing == devices | owners | owner_xattrs, problems
    assert "dev/null: kind root='char' rootless='file'" in problems
    assert all("user.rootlesscontainers" in p for p in problems if " xattrs " in p)


def test_one_layer_as_gnu_tar_extracts_it_shows_its_markers(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures, tmp_path: Path
) -> None:
    """The reference for `layers/<digest>/`: a layer's own entries, whiteouts as plain files."""
    image = rootfs_images.images["merge-tar"]
    digest, media_type = image.layers[1]
    complaints = gnu_tar_extract(
        uncompressed(blob(rootfs_registry, image.repo, digest), media_type), tmp_path
    )
    root = tmp_path
    # A hardlink to a lower layer's file has no target within the layer; GNU tar also does
    # not know tarfile's PAX hdrcharset record (its non-UTF-8 name is still extracted).
    assert any("links/cross-hard: Cannot hard link" in line for line in complaints), complaints
    snap = snapshot(root)
    expects = [
        Expect("layer-whiteout", b"etc/.wh.motd", kind="file", size=0),
        Expect("layer-whiteout", b"opt/.wh.gone", kind="file", size=0),
        Expect("layer-whiteout", b".wh.reborn", kind="file"),
        Expect("layer-opaque", b"var/cache", children=(b".wh..wh..opq", b"new")),
        Expect("layer-duplicate", b"dup/file", data=b"second copy wins\n"),
        Expect("layer-hardlink", b"links/cross-hard", kind="absent"),
        Expect("layer-non-utf8", b"names/tarfile-\xff\xfe", kind="file"),
    ]
    assert check(snap, root, expects) == []


def test_layers_are_reproducible(tmp_path: Path) -> None:
    """Built twice, byte for byte the same (fixed mtimes, sorted names, no pid in names)."""
    first = [
        merge_base(tmp_path / "a"),
        *merge_top(tmp_path / "a"),
        gnu_sparse_layer(tmp_path / "a"),
    ]
    again = [
        merge_base(tmp_path / "b"),
        *merge_top(tmp_path / "b"),
        gnu_sparse_layer(tmp_path / "b"),
    ]
    assert first == again


def test_windows_layer_is_its_tar_as_gnu_tar_extracts_it(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures, tmp_path: Path
) -> None:
    """umoci refuses Windows images; `rootfs/` shows the layer's Files/ and Hives/ as the tar
    holds them, so GNU tar's extraction is the reference (it skips the MSWINDOWS records)."""
    image = rootfs_images.images["windows"]
    with pytest.raises(UmociError, match=image.umoci_error):
        umoci_unpack(rootfs_registry.host, image.repo, image.tag, tmp_path / "umoci")
    tar = gzip.decompress(blob(rootfs_registry, image.repo, image.layers[0][0]))
    assert any("MSWINDOWS.rawsd" in x.pax_headers for x in members(tar))
    complaints = gnu_tar_extract(tar, tmp_path / "tar")
    assert all("MSWINDOWS" in line or "LIBARCHIVE" in line for line in complaints), complaints
    assert check(snapshot(tmp_path / "tar"), tmp_path / "tar", image.expects) == []
