"""rootfs/ of eStargz (ctr-remote) and zstd:chunked (skopeo) images on real mounts: the tree
equals `umoci unpack` of the same image (zstd:chunked: of its gzip recompression), it is
made from the layers' TOCs with no full pass, a first `ls` and `cat` fetch only the TOC and
the file's chunks, and a lying server (a chunk's bytes, a TOC that is not the annotated one,
a TOC that disagrees with the config's diff_id) gives EIO with a log line naming the check.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.mounting import Mount, mounted
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.toc_images import SMALL, TocImage, big_tar, manifest_of, push_toc_images
from tests.fixtures.treecompare import UmociUnpacks, compare, snapshot

pytestmark = [pytest.mark.mount, pytest.mark.registry]

BLOCK = 4 << 20  # the block cache's block
ESTARGZ_KEY = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_POSITION = "io.containers.zstd-chunked.manifest-position"


@pytest.fixture(scope="module")
def toc_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with start_registry(tmp_path_factory.mktemp("toc-registry")) as server:
        yield server


@pytest.fixture(scope="module")
def toc_images(
    toc_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TocImage]:
    return push_toc_images(toc_registry.url, tmp_path_factory.mktemp("toc-staging"))


@pytest.fixture(scope="module")
def mnt(tmp_path_factory: pytest.TempPathFactory, toc_registry: RegistryServer) -> Iterator[Mount]:
    with mounted(tmp_path_factory.mktemp("toc-mount"), toc_registry.url) as mount:
        yield mount


def fetched(mount: Mount) -> int:
    by_host = mount.stats()["bytes_fetched_by_host"]
    assert isinstance(by_host, dict)
    return sum(by_host.values())


def indexes(mount: Mount) -> dict[str, int]:
    found = mount.stats()["layer_indexes"]
    assert isinstance(found, dict)
    return {k: v for k, v in found.items() if isinstance(v, int)}


def layers_of(url: str, image: TocImage) -> list[dict[str, object]]:
    layers: list[dict[str, object]] = manifest_of(url, image.repo, image.tag)["layers"]
    return layers


def toc_bytes(url: str, repo: str, layer: dict[str, object]) -> int:
    """The compressed size of a layer's TOC, as its producer placed it."""
    annotations = layer["annotations"]
    assert isinstance(annotations, dict)
    if ZSTD_POSITION in annotations:
        return int(annotations[ZSTD_POSITION].split(":")[1])
    size = int(str(layer["size"]))
    tail = httpx.get(
        f"{url}/v2/{repo}/blobs/{layer['digest']}",
        headers={"Range": f"bytes={size - 51}-{size - 1}"},
        follow_redirects=True,
    ).content
    return size - int(tail[16:32], 16)


@pytest.mark.parametrize(
    "name",
    [
        "toc-estargz",
        "toc-zstd-chunked",
        "toc-ctr-zstd-chunked",
        "tocbig-estargz",
        "tocbig-zstd-chunked",
    ],
)
def test_rootfs_equals_umoci_unpack(
    name: str,
    toc_images: dict[str, TocImage],
    toc_registry: RegistryServer,
    mnt: Mount,
    tmp_path: Path,
) -> None:
    image = toc_images[name]
    kinds = {ZSTD_POSITION if "zstd" in name else ESTARGZ_KEY}
    layers = layers_of(toc_registry.url, image)
    for layer in layers:  # the producer did make TOC layers
        assert kinds <= set(layer["annotations"])  # type: ignore[arg-type]
    reference = UmociUnpacks(toc_registry.host, tmp_path).rootfs(image.repo, image.reference_tag)
    before = indexes(mnt)
    rootfs = mnt.path / image.repo / image.tag / "rootfs"
    problems = compare(
        snapshot(rootfs),  # every file's sha256 too
        snapshot(reference),
        labels=("regfs", "umoci"),
        any_mtime=image.unpack_time_mtimes,
    )
    assert problems == [], "\n".join(problems)
    after = indexes(mnt)
    # Layers 1 and 2 of rootfs/toc hold names that are not UTF-8, which a TOC cannot state
    # (Go writes U+FFFD): those two go through the full pass, the others are read by TOC.
    full = 2 if image.repo == "rootfs/toc" else 0
    assert after["built"] - before["built"] == full
    assert after["from_toc"] - before["from_toc"] == len(layers) - full
    if full:
        assert "not the tar's bytes (not UTF-8)" in mnt.log()
    # umoci shows the TOC as a file, and so does rootfs/ (eStargz only).
    assert (rootfs / "stargz.index.json").exists() == name.endswith("-estargz")


@pytest.mark.parametrize("tag", ["estargz", "zstd-chunked"])
def test_first_ls_and_cat_fetch_the_toc_and_the_files_chunks(
    tag: str, toc_images: dict[str, TocImage], toc_registry: RegistryServer, tmp_path: Path
) -> None:
    image = toc_images[f"tocbig-{tag}"]
    (layer,) = layers_of(toc_registry.url, image)
    size = int(str(layer["size"]))
    assert size > 5 * BLOCK  # the blob spans several blocks: a full pass would show
    toc = toc_bytes(toc_registry.url, image.repo, layer)
    with mounted(tmp_path, toc_registry.url) as mount:
        rootfs = mount.path / image.repo / image.tag / "rootfs"
        start = fetched(mount)
        assert sorted(os.listdir(rootfs / "data")) == ["big", "small", "z"]
        listing = fetched(mount) - start
        assert listing <= toc + BLOCK, (listing, toc)
        assert (rootfs / "data/small").read_bytes() == SMALL
        cat = fetched(mount) - start - listing
        assert 0 < cat <= BLOCK, cat  # its chunk is a few bytes: the block holding it
        assert indexes(mount)["built"] == 0
        assert listing + cat < size / 2


def test_the_big_file_reads_whole_and_at_random_offsets(
    toc_images: dict[str, TocImage], mnt: Mount
) -> None:

    with tarfile.open(fileobj=io.BytesIO(big_tar())) as tar:
        member = tar.extractfile("data/big")
        assert member is not None
        expected = member.read()
    for tag in ("estargz", "zstd-chunked"):
        path = mnt.path / "rootfs/tocbig" / tag / "rootfs/data/big"
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset, length in (
                (0, 10),
                ((1 << 20) - 5, 10),
                (7_000_001, 300_000),
                (len(expected) - 3, 10),
            ):
                assert os.pread(fd, length, offset) == expected[offset : offset + length], (
                    tag,
                    offset,
                )
        finally:
            os.close(fd)
        assert path.read_bytes() == expected


def _small_chunk_offset(url: str, image: TocImage) -> int:
    """Where data/small's compressed chunk begins in the layer (from the TOC the producer
    wrote: eStargz `offset`, zstd:chunked `offset`), read here with httpx and the stdlib."""

    (layer,) = layers_of(url, image)
    blob = httpx.get(
        f"{url}/v2/{image.repo}/blobs/{layer['digest']}", follow_redirects=True
    ).content
    annotations = layer["annotations"]
    assert isinstance(annotations, dict)
    if ZSTD_POSITION in annotations:
        offset, length, size, _ = map(int, annotations[ZSTD_POSITION].split(":"))
        raw = zstandard.ZstdDecompressor().decompress(
            blob[offset : offset + length], max_output_size=size
        )
    else:
        start = int(blob[-51:][16:32], 16)
        raw = gzip.decompress(blob[start:-51])
        raw = raw[512 : raw.index(b"\0", 512)]
    entries = json.loads(raw)["entries"]
    (entry,) = [e for e in entries if e["name"].endswith("data/small")]
    return int(entry["offset"])


@pytest.mark.parametrize("tag", ["estargz", "zstd-chunked"])
def test_a_chunk_whose_bytes_differ_gives_eio_and_says_so(
    tag: str, toc_images: dict[str, TocImage], toc_registry: RegistryServer, tmp_path: Path
) -> None:
    image = toc_images[f"tocbig-{tag}"]
    (layer,) = layers_of(toc_registry.url, image)
    offset = _small_chunk_offset(toc_registry.url, image)
    assert offset < BLOCK  # in the first block: its range request begins at 0
    with FaultProxy(toc_registry.url) as proxy, mounted(tmp_path, proxy.url) as mount:
        rootfs = mount.path / image.repo / image.tag / "rootfs"
        assert "small" in os.listdir(rootfs / "data")
        proxy.fault(f"/blobs/{layer['digest']}$", times=None, flip_at=offset + 12)
        with pytest.raises(OSError) as reading:
            (rootfs / "data/small").read_bytes()
        assert reading.value.errno == errno.EIO
        log = mount.log()
        assert f"layer {layer['digest']}: chunk at" in log, log[-2000:]
        # Its blocks were dropped: an honest answer now reads.
        proxy.clear()
        assert (rootfs / "data/small").read_bytes() == SMALL


def test_a_toc_that_is_not_the_annotated_one_gives_eio(
    toc_images: dict[str, TocImage], toc_registry: RegistryServer, tmp_path: Path
) -> None:
    with mounted(tmp_path, toc_registry.url) as mount:
        with pytest.raises(OSError) as listing:
            os.listdir(mount.path / "rootfs/toc/estargz-wrong-toc/rootfs")
        assert listing.value.errno == errno.EIO
        assert "stargz.index.json does not match its digest" in mount.log()


def test_a_zstd_chunked_manifest_with_other_bytes_gives_eio(
    toc_images: dict[str, TocImage], toc_registry: RegistryServer, tmp_path: Path
) -> None:
    image = toc_images["tocbig-zstd-chunked"]
    (layer,) = layers_of(toc_registry.url, image)
    annotations = layer["annotations"]
    assert isinstance(annotations, dict)
    offset = int(annotations[ZSTD_POSITION].split(":")[0])
    with FaultProxy(toc_registry.url) as proxy, mounted(tmp_path, proxy.url) as mount:
        proxy.fault(f"/blobs/{layer['digest']}$", times=None, flip_at=offset % BLOCK + 20)
        with pytest.raises(OSError) as listing:
            os.listdir(mount.path / image.repo / image.tag / "rootfs")
        assert listing.value.errno == errno.EIO
        assert "the zstd:chunked manifest does not match its digest" in mount.log()


def test_a_toc_layer_fetched_whole_is_checked_against_its_diff_id(
    toc_images: dict[str, TocImage], mnt: Mount
) -> None:
    """skopeo's own config keeps the gzip image's diff_ids: each small layer is fetched whole
    by the first listing (one block), so the mismatch is found then."""
    with pytest.raises(OSError) as listing:
        os.listdir(mnt.path / "rootfs/toc/zstd-chunked-raw/rootfs")
    assert listing.value.errno == errno.EIO
    assert "fetched whole, its uncompressed stream is" in mnt.log()
    # The fixed image (same layers, the real diff_ids) reads.
    assert "etc" in os.listdir(mnt.path / "rootfs/toc/zstd-chunked/rootfs")


def test_a_big_toc_layer_is_checked_once_it_has_been_fetched_whole(
    toc_images: dict[str, TocImage], toc_registry: RegistryServer, tmp_path: Path
) -> None:
    """Listing and a small read fetch a few blocks of the 24 MiB layer: its diff_id is not
    known yet, so they work; once the whole blob has been read (its layers/ file), the
    mismatch with the config's diff_id is found and reads from the layer fail."""
    image = TocImage("rootfs/tocbig", "zstd-chunked-wrong-diff-id", "", ())
    (layer,) = layers_of(toc_registry.url, image)
    with mounted(tmp_path, toc_registry.url) as mount:
        top = mount.path / image.repo / image.tag
        assert (top / "rootfs/data/small").read_bytes() == SMALL
        assert fetched(mount) < int(str(layer["size"])) / 2
        (blob,) = [
            p
            for p in (top / "layers").iterdir()
            if p.name.startswith(str(layer["digest"])) and p.is_file()
        ]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == str(layer["digest"]).split(":")[1]
        with pytest.raises(OSError) as reading:
            (top / "rootfs/data/z").read_bytes()
        assert reading.value.errno == errno.EIO
        assert "fetched whole, its uncompressed stream is" in mount.log()
