"""image.tar and oci/ on a real mount, read by tar, skopeo and umoci."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cdn import CDNServer
from tests.fixtures.images import PushedImage
from tests.fixtures.mounting import Mount, mounted
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import HELLO_SCRIPT, Seeded

pytestmark = [pytest.mark.mount, pytest.mark.registry]

TIMEOUT = 300


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hexof(digest: str) -> str:
    return digest.split(":", 1)[1]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result


def fetched(m: Mount) -> int:
    by_host: dict[str, int] = m.stats()["bytes_fetched_by_host"]  # type: ignore[assignment]
    return sum(by_host.values())


def host_of(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


def read_layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / hexof(digest)).read_bytes()


def layout_image(layout: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config of the image named `ref` in an OCI layout on disk."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    manifest = json.loads(read_layout_blob(layout, entry["digest"]))
    config = json.loads(read_layout_blob(layout, manifest["config"]["digest"]))
    return manifest, config


def assert_same_layers(layout: Path, ref: str, image: PushedImage) -> None:
    """Copied layers have the registry's digests and bytes."""
    manifest, config = layout_image(layout, ref)
    assert [d["digest"] for d in manifest["layers"]] == [x.digest for x in image.layers]
    for layer in image.layers:
        assert read_layout_blob(layout, layer.digest) == layer.data
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)


def assert_same_diff_ids(layout: Path, ref: str, image: PushedImage) -> None:
    """Layers (perhaps recompressed) uncompress to the registry's layers' contents."""
    manifest, config = layout_image(layout, ref)
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert len(manifest["layers"]) == len(image.layers)
    for descriptor, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
        data = read_layout_blob(layout, descriptor["digest"])
        assert sha256(data) == descriptor["digest"]
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert sha256(data) == diff_id


@pytest.fixture
def hello_mount(tmp_path: Path, registry: RegistryServer) -> Any:
    with mounted(tmp_path, registry.url) as m:
        yield m


def test_image_tar_is_a_docker_save_archive_with_every_blob(
    hello_mount: Mount, registry: RegistryServer, seeded: Seeded
) -> None:
    image_dir = hello_mount.path / "library" / "hello" / "latest"
    assert {"image.tar", "oci"} <= set(os.listdir(image_dir))
    hello = seeded.hello
    with tarfile.open(image_dir / "image.tar") as tar:
        names = tar.getnames()
        assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
        for member in tar.getmembers():
            assert member.mode in (0o644, 0o755)
            assert member.mtime == 1_700_000_000  # the config's created
        [item] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert item["RepoTags"] == [f"{host_of(registry.url)}/library/hello:latest"]
        assert item["Config"] == f"blobs/sha256/{hexof(hello.config_digest)}"
        assert item["Layers"] == [f"blobs/sha256/{hexof(x.digest)}" for x in hello.layers]
        for digest, data in hello.blobs.items():
            member = tar.extractfile(f"blobs/sha256/{hexof(digest)}")
            assert member is not None and member.read() == data
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        [entry] = index["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
        manifest = tar.extractfile(f"blobs/sha256/{hexof(entry['digest'])}").read()  # type: ignore[union-attr]
        assert sha256(manifest) == entry["digest"]
        # Docker media types are restated as OCI ones; the blobs are the registry's.
        doc = json.loads(manifest)
        assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert [d["digest"] for d in doc["layers"]] == [x.digest for x in hello.layers]
    listed = run("tar", "tf", image_dir / "image.tar").stdout.split()
    assert [n.rstrip("/") for n in listed] == names


def test_tar_tf_reads_headers_not_layers(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    # Small blocks, so that touching a layer's edge fetches a little of it, not all of it.
    with mounted(tmp_path, registry.url, "--block-size", "64K") as m:
        image_tar = m.path / "library" / "hello" / "latest" / "image.tar"
        size = image_tar.stat().st_size  # known before any layer is read
        layers = sum(x.size for x in seeded.hello.layers)
        assert size > layers
        before = fetched(m)
        listed = run("tar", "tf", image_tar).stdout.split()
        assert f"blobs/sha256/{hexof(seeded.hello.layers[1].digest)}" in listed
        during = fetched(m) - before
        big = max(x.size for x in seeded.hello.layers)
        assert big > 2 << 20
        assert during < big // 4, f"tar tf fetched {during} bytes of a {size}-byte archive"


def test_skopeo_reads_image_tar_as_docker_archive_and_oci_archive(
    hello_mount: Mount, seeded: Seeded, tmp_path: Path
) -> None:
    image_tar = hello_mount.path / "library" / "hello" / "latest" / "image.tar"
    docker_copy = tmp_path / "from-docker-archive"
    run("skopeo", "copy", f"docker-archive:{image_tar}", f"oci:{docker_copy}:hello")
    # The docker-archive path hands out uncompressed layers: compare what they hold.
    assert_same_diff_ids(docker_copy, "hello", seeded.hello)

    oci_copy = tmp_path / "from-oci-archive"
    run("skopeo", "copy", f"oci-archive:{image_tar}", f"oci:{oci_copy}:hello")
    assert_same_layers(oci_copy, "hello", seeded.hello)


def test_oci_image_keeps_its_manifest_digest(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    app = seeded.oci_app
    with mounted(tmp_path, registry.url) as m:
        image_dir = m.path / "oci" / "app" / "1.0"
        index = json.loads((image_dir / "oci" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == app.manifest_digest
        copy = tmp_path / "copy"
        run(
            "skopeo",
            "copy",
            "--preserve-digests",
            f"oci-archive:{image_dir / 'image.tar'}",
            f"oci:{copy}:app",
        )
        assert_same_layers(copy, "app", app)
        copied = json.loads((copy / "index.json").read_text())["manifests"][0]["digest"]
        assert copied == app.manifest_digest
        layout_copy = tmp_path / "layout-copy"
        run(
            "skopeo",
            "copy",
            "--preserve-digests",
            f"oci:{image_dir / 'oci'}:1.0",
            f"oci:{layout_copy}:app",
        )
        assert_same_layers(layout_copy, "app", app)


def test_oci_directory_is_a_layout_skopeo_copies(
    hello_mount: Mount, seeded: Seeded, tmp_path: Path
) -> None:
    oci = hello_mount.path / "library" / "hello" / "latest" / "oci"
    assert json.loads((oci / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    blobs = set(os.listdir(oci / "blobs" / "sha256"))
    assert {hexof(d) for d in seeded.hello.blobs} < blobs
    assert len(blobs) == len(seeded.hello.blobs) + 1  # and the manifest
    for layer in seeded.hello.layers:
        assert read_layout_blob(oci, layer.digest) == layer.data
    copy = tmp_path / "copy"
    run("skopeo", "copy", f"oci:{oci}:latest", f"oci:{copy}:hello")
    assert_same_layers(copy, "hello", seeded.hello)


def test_umoci_unpacks_hello_with_links_and_whiteouts(
    hello_mount: Mount, seeded: Seeded, tmp_path: Path
) -> None:
    oci = hello_mount.path / "library" / "hello" / "latest" / "oci"
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{oci}:latest", bundle)
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "hello").read_bytes() == HELLO_SCRIPT
    assert os.readlink(rootfs / "bin" / "hi") == "hello"
    assert os.readlink(rootfs / "etc" / "absolute-link") == "/etc/hostname"
    assert (rootfs / "etc" / "hostname").read_bytes() == b"hello-v2\n"
    assert not (rootfs / "etc" / "motd").exists()  # whiteout
    assert os.listdir(rootfs / "var" / "cache") == ["new.txt"]  # opaque whiteout
    assert (rootfs / "README").read_bytes() == b"regfs test image\n"
    big = rootfs / "data" / "big.bin"
    assert big.read_bytes() == seeded.big_file
    assert os.stat(big).st_ino == os.stat(rootfs / "data" / "big-hardlink.bin").st_ino
    assert not any(name.startswith(".wh.") for _, _, files in os.walk(rootfs) for name in files)


def test_image_tar_holds_the_foreign_layer_fetched_without_credentials(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, cdn: CDNServer
) -> None:
    windows = seeded.windows
    [foreign] = [x for x in windows.layers if x.foreign]
    seen = len(cdn.requests)
    with mounted(tmp_path, registry.url) as m:
        image_dir = m.path / "windows" / "servercore" / "ltsc2019-amd64"
        with tarfile.open(image_dir / "image.tar") as tar:
            [item] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            assert f"blobs/sha256/{hexof(foreign.digest)}" in item["Layers"]
            source = item["LayerSources"][foreign.diff_id]
            assert source["urls"] == list(foreign.urls)
            member = tar.extractfile(f"blobs/sha256/{hexof(foreign.digest)}")
            assert member is not None and sha256(member.read()) == foreign.digest
        assert read_layout_blob(image_dir / "oci", foreign.digest) == foreign.data
        copy = tmp_path / "copy"
        run("skopeo", "copy", f"docker-archive:{image_dir / 'image.tar'}", f"oci:{copy}:win")
        assert_same_diff_ids(copy, "win", windows)
    requests = cdn.requests[seen:]
    assert any(r.path.startswith("/fwlink/") for r in requests), requests
    assert any(r.path.startswith("/cdn/") for r in requests), requests
    assert not any(r.has_authorization for r in requests)


def test_schema1_images_have_no_archive(tmp_path: Path, registry: RegistryServer) -> None:
    with mounted(tmp_path, registry.url) as m:
        names = set(os.listdir(m.path / "legacy" / "schema1" / "1"))
        assert "manifest.json" in names
        assert not names & {"image.tar", "oci"}


def test_platform_and_digest_directories_have_archives(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    with mounted(tmp_path, registry.url) as m:
        arm = m.path / "multi" / "arch" / "1.0" / "platforms" / "linux-arm64-v8"
        with tarfile.open(arm / "image.tar") as tar:
            [item] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            assert item["RepoTags"] == []  # a platform is not what the tag names
        index = json.loads((arm / "oci" / "index.json").read_text())
        assert index["manifests"][0]["platform"]["architecture"] == "arm64"
        by_digest = m.path / "library" / "hello" / seeded.hello.manifest_digest
        with tarfile.open(by_digest / "image.tar") as tar:
            names = set(tar.getnames())
        assert {f"blobs/sha256/{hexof(d)}" for d in seeded.hello.blobs} <= names
