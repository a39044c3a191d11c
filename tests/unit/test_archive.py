"""regfs.views.archive and regfs.oci.layout without a mount: image.tar's segments, headers and
reads; the OCI layout."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import re
import tarfile
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from regfs import compose
from regfs.cache import BlockCache
from regfs.oci import layout as oci_layout
from regfs.oci import manifest as mf
from regfs.registry.blobs import ForeignURLPolicy
from regfs.store import RegistryStore
from regfs.vfs.nodes import BytesFile, File, StaticDir
from regfs.views import archive
from regfs.views.image import ImageName, ResolvedImage
from tests.fixtures.images import random_bytes
from tests.unit.mock_http import Recorder, chunks, mock_client

BLOCK = 4096
CREATED = "2023-11-14T22:13:20.123456789Z"
SMALL = random_bytes(700, seed=11)
BIG = random_bytes(300_000 + 17, seed=12)
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
TAGGED = ImageName("latest", "latest")
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps(
    {
        "created": CREATED,
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]},
    }
).encode()
BLOBS = {digest(b): b for b in (CONFIG, SMALL, BIG)}


def manifest(media_types: str = "docker", foreign_urls: tuple[str, ...] = ()) -> mf.Manifest:
    docker = media_types == "docker"
    layer_type = mf.DOCKER_LAYER if docker else mf.OCI_LAYER_GZIP
    big_type = (
        (mf.DOCKER_FOREIGN_LAYER if docker else mf.OCI_NONDIST_GZIP) if foreign_urls else layer_type
    )
    big: dict[str, Any] = {"mediaType": big_type, "digest": digest(BIG), "size": len(BIG)}
    if foreign_urls:
        big["urls"] = list(foreign_urls)
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mf.DOCKER_MANIFEST if docker else mf.OCI_MANIFEST,
            "config": {
                "mediaType": mf.DOCKER_CONFIG if docker else mf.OCI_CONFIG,
                "digest": digest(CONFIG),
                "size": len(CONFIG),
            },
            "layers": [
                {"mediaType": layer_type, "digest": digest(SMALL), "size": len(SMALL)},
                big,
            ],
        },
        indent=3,
    ).encode()
    doc = mf.parse_document(raw)
    assert isinstance(doc, mf.Manifest)
    return doc


def serve_blobs(request: httpx.Request) -> httpx.Response:
    data = BLOBS.get(request.url.path.rsplit("/", 1)[1])
    if data is None:
        return httpx.Response(404)
    match = _RANGE.fullmatch(request.headers.get("range", ""))
    assert match, "regfs asks for ranges"
    start, end = int(match[1]), int(match[2]) + 1
    return httpx.Response(
        206,
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
        content=chunks(data[start:end], 1000),
    )


@dataclass
class Context:
    """A registry's store over the mock server, and the block cache."""

    store: RegistryStore
    cache: BlockCache

    def image(self, repo: str, image: mf.Manifest, name: ImageName) -> ResolvedImage:
        return ResolvedImage(self.store, self.cache, repo, image, CONFIG, 1_700_000_000.5, name)


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Context, Recorder]]:
    client, recorder = mock_client(monkeypatch, serve_blobs, address="http://127.0.0.1:5000")
    cache = BlockCache(disk=None, block_size=BLOCK, readahead_bytes=8 * BLOCK, request_bytes=BLOCK)
    ctx = Context(RegistryStore(client, policy=ForeignURLPolicy([])), cache)
    async with cache.running():
        yield ctx, recorder
    await client.aclose()


def blob_requests(recorder: Recorder, data: bytes) -> list[tuple[int, int]]:
    """[start, end) of every request for one blob."""
    out = []
    for r in recorder.requests:
        if r.url.path.endswith(digest(data)):
            match = _RANGE.fullmatch(r.headers["range"])
            assert match
            out.append((int(match[1]), int(match[2]) + 1))
    return out


def nodes(
    ctx: Context, image: mf.Manifest, name: ImageName = TAGGED
) -> tuple[archive.SegmentedFile, StaticDir]:
    tar, oci = archive.archive_entries(ctx.image("library/hello", image, name))
    assert isinstance(tar, archive.SegmentedFile) and isinstance(oci, StaticDir)
    return tar, oci


async def read_all(file: File, chunk: int) -> bytes:
    parts = []
    handle = await file.open()
    for offset in range(0, file.size, chunk):
        parts.append(await handle.read(offset, chunk))
    return b"".join(parts)


async def read_at(file: File, offset: int, size: int) -> bytes:
    """One read on a handle of its own (no earlier reads to continue: no readahead)."""
    return await (await file.open()).read(offset, size)


def test_the_archives_are_wired_into_image_directories() -> None:
    assert archive.archive_entries in compose.IMAGE_VIEWS


async def test_image_tar_is_a_docker_archive_and_an_oci_archive(
    world: tuple[Context, Recorder],
) -> None:
    ctx, recorder = world
    image = manifest()
    tar_file, _ = nodes(ctx, image)
    size = tar_file.size
    assert not recorder.requests, "the size is known before any blob is read"
    data = await read_all(tar_file, 7919)  # reads that straddle every boundary
    assert len(data) == size and size % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for member in members.values():
            assert member.mtime == 1_700_000_000
            assert member.uid == member.gid == 0
            assert member.mode == (0o755 if member.isdir() else 0o644)

        def content(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None
            return f.read()

        for blob in BLOBS.values():
            assert content(oci_layout.blob_path(digest(blob))) == blob
        assert json.loads(content("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        [item] = json.loads(content("manifest.json"))
        assert item == {
            "Config": oci_layout.blob_path(digest(CONFIG)),
            "RepoTags": ["127.0.0.1:5000/library/hello:latest"],
            "Layers": [oci_layout.blob_path(digest(SMALL)), oci_layout.blob_path(digest(BIG))],
        }
        [entry] = json.loads(content("index.json"))["manifests"]
        assert entry["annotations"] == {
            oci_layout.REF_NAME: "latest",
            oci_layout.CONTAINERD_NAME: "127.0.0.1:5000/library/hello:latest",
        }
        assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
        oci = content(oci_layout.blob_path(entry["digest"]))
        assert digest(oci) == entry["digest"] and len(oci) == entry["size"]
    # Headers are plain ustar: what every tar reader takes.
    assert data[257:263] == b"ustar\x00"


async def test_a_read_fetches_only_the_blocks_under_it(world: tuple[Context, Recorder]) -> None:
    ctx, recorder = world
    tar_file, _ = nodes(ctx, manifest())
    big = next(s for s in tar_file.segments if s.blob is not None and s.size == len(BIG))
    header = big.offset - 512
    info = tarfile.TarInfo.frombuf(await read_at(tar_file, header, 512), "utf-8", "strict")
    assert info.name == oci_layout.blob_path(digest(BIG)) and info.size == len(BIG)
    assert blob_requests(recorder, BIG) == [], "a header is not in any blob"
    middle = big.offset + 150_000
    assert await read_at(tar_file, middle, 100) == BIG[150_000:150_100]
    first = 150_000 // BLOCK * BLOCK
    assert blob_requests(recorder, BIG) == [(first, first + BLOCK)]
    # Straddling the end of the big layer: its last bytes, the padding, the next header.
    tail = await read_at(tar_file, big.offset + len(BIG) - 10, 600)
    assert tail[:10] == BIG[-10:]
    assert tail[10 : 10 + (-len(BIG) % 512)] == bytes(-len(BIG) % 512)
    assert blob_requests(recorder, SMALL) == []


async def test_reads_match_at_any_offset(world: tuple[Context, Recorder]) -> None:
    ctx, _ = world
    tar_file, _ = nodes(ctx, manifest())
    whole = await read_all(tar_file, 1 << 20)
    for offset, size in [(0, 1), (511, 2), (1000, 5000), (tar_file.size - 3, 100), (7, 400_000)]:
        assert await read_at(tar_file, offset, size) == whole[offset : offset + size]
    assert await read_at(tar_file, tar_file.size, 10) == b""


async def test_sequential_reads_get_readahead_and_jumps_do_not(
    world: tuple[Context, Recorder],
) -> None:
    ctx, _ = world
    tar_file, _ = nodes(ctx, manifest())
    big = next(s for s in tar_file.segments if s.blob is not None and s.size == len(BIG))
    handle = await tar_file.open()
    stream = handle.stream
    await handle.read(big.offset - 512, BLOCK)
    assert stream.window == 0  # not where the last read ended: no readahead
    await handle.read(big.offset - 512 + BLOCK, BLOCK)
    assert stream.window > 0 and stream.next_offset == big.offset - 512 + 2 * BLOCK
    await handle.read(big.offset + 200_000, BLOCK)
    assert stream.window == 0


async def test_docker_manifest_restated_with_oci_media_types(
    world: tuple[Context, Recorder],
) -> None:
    image = manifest(foreign_urls=("https://cdn.example/base.tar.gz",))
    restated = json.loads(oci_layout.oci_manifest(image))
    assert restated["mediaType"] == mf.OCI_MANIFEST
    assert restated["config"]["mediaType"] == mf.OCI_CONFIG
    assert [d["mediaType"] for d in restated["layers"]] == [mf.OCI_LAYER_GZIP, mf.OCI_NONDIST_GZIP]
    assert restated["layers"][1]["urls"] == ["https://cdn.example/base.tar.gz"]
    assert [d["digest"] for d in restated["layers"]] == [d.digest for d in image.layers]
    # docker save names a foreign layer's origin by its diff ID.
    ctx, _ = world
    layout = archive.layout_of(ctx.image("windows/servercore", image, ImageName("x", "x")))
    [item] = json.loads(layout.docker_manifest)
    assert item["LayerSources"] == {
        "sha256:" + "2" * 64: {
            "mediaType": mf.DOCKER_FOREIGN_LAYER,
            "size": len(BIG),
            "digest": digest(BIG),
            "urls": ["https://cdn.example/base.tar.gz"],
        }
    }


async def test_an_oci_manifest_is_kept_byte_for_byte(world: tuple[Context, Recorder]) -> None:
    ctx, _ = world
    image = manifest("oci")
    assert oci_layout.oci_manifest(image) == image.raw
    layout = archive.layout_of(ctx.image("oci/app", image, ImageName("1.0", "1.0")))
    assert layout.manifest_digest == image.digest


async def test_names_of_tags_digests_and_platforms(
    world: tuple[Context, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, _ = world
    image = manifest()
    digest_dir = archive.layout_of(ctx.image("library/hello", image, ImageName(image.digest)))
    assert json.loads(digest_dir.docker_manifest)[0]["RepoTags"] == []
    [entry] = json.loads(digest_dir.index)["manifests"]
    assert entry["annotations"] == {oci_layout.REF_NAME: image.digest}
    from regfs.oci.reference import parse_registry

    monkeypatch.setattr(ctx.store.client, "address", parse_registry("docker.io"))
    assert oci_layout.repo_tag(ctx.store.host, "library/alpine", "3") == "alpine:3"
    assert oci_layout.repo_tag(ctx.store.host, "bitnami/redis", "7") == "bitnami/redis:7"
    hub = archive.layout_of(ctx.image("library/alpine", image, ImageName("3", "3")))
    assert json.loads(hub.docker_manifest)[0]["RepoTags"] == ["alpine:3"]


async def test_oci_directory_holds_manifest_config_and_layers(
    world: tuple[Context, Recorder],
) -> None:
    ctx, recorder = world
    _, oci = nodes(ctx, manifest())
    entries = {n.name: n for n in await oci.children()}
    assert set(entries) == {"oci-layout", "index.json", "blobs"}
    index_file = entries["index.json"]
    assert isinstance(index_file, File)
    index = json.loads(await read_all(index_file, 1 << 20))
    blobs = entries["blobs"]
    assert isinstance(blobs, StaticDir)
    [sha256] = await blobs.children()
    assert isinstance(sha256, StaticDir) and sha256.name == "sha256"
    files = {n.name: n for n in await sha256.children()}
    manifest_hex = index["manifests"][0]["digest"].split(":")[1]
    assert set(files) == {manifest_hex} | {d.split(":")[1] for d in BLOBS}
    assert isinstance(files[manifest_hex], BytesFile)
    for d, data in BLOBS.items():
        node = files[d.split(":")[1]]
        assert isinstance(node, File)
        assert node.size == len(data)
        assert await read_all(node, 65536) == data
    assert recorder.requests


def test_schema1_images_get_no_archive() -> None:
    raw = json.dumps(
        {
            "schemaVersion": 1,
            "name": "legacy/schema1",
            "tag": "1",
            "fsLayers": [{"blobSum": digest(SMALL)}],
            "history": [{"v1Compatibility": "{}"}],
        }
    ).encode()
    image = mf.parse_document(raw)
    assert isinstance(image, mf.Manifest)
    ctx: Any = object()  # nothing may be asked of it
    resolved = ResolvedImage(ctx, ctx, "legacy/schema1", image, b"{}", 0.0, ImageName("1"))
    assert archive.archive_entries(resolved) == []


@pytest.mark.parametrize(
    ("config_type", "layer_type", "extra"),
    [
        ("application/vnd.cncf.helm.config.v1+json", HELM_CHART, {}),
        (mf.OCI_EMPTY, "application/spdx+json", {"artifactType": "application/spdx+json"}),
        (mf.OCI_CONFIG, "application/vnd.dev.cosign.simplesigning.v1+json", {}),
    ],
)
def test_artifacts_get_no_archive(config_type: str, layer_type: str, extra: dict[str, Any]) -> None:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mf.OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": digest(b"{}"), "size": 2},
            "layers": [{"mediaType": layer_type, "digest": digest(SMALL), "size": len(SMALL)}],
            **extra,
        }
    ).encode()
    artifact = mf.parse_document(raw)
    assert isinstance(artifact, mf.Manifest) and not artifact.is_image
    ctx: Any = object()  # nothing may be asked of it
    resolved = ResolvedImage(ctx, ctx, "charts/x", artifact, b"{}", 0.0, TAGGED)
    assert archive.archive_entries(resolved) == []


def test_long_names_get_a_pax_header() -> None:
    builder = oci_layout.TarBuilder(0)
    name = "blobs/sha512/" + "a" * 128
    builder.file(name, b"data")
    data = b"".join(s.data or b"" for s in builder.finish())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [name]
        f = tar.extractfile(name)
        assert f is not None and f.read() == b"data"


async def test_each_handle_keeps_one_stream_per_blob(world: tuple[Context, Recorder]) -> None:
    # The cache keeps per-blob state in a handle's stream (failed verifications it has seen):
    # it must outlive one read, and go with the handle.
    ctx, _ = world
    tar_file, _ = nodes(ctx, manifest())
    big = next(s for s in tar_file.segments if s.blob is not None and s.size == len(BIG))
    assert big.blob is not None
    handle = await tar_file.open()
    await handle.read(big.offset, 100)
    local = handle.blob_streams[big.blob.digest]
    await handle.read(big.offset + 5000, 100)
    assert handle.blob_streams[big.blob.digest] is local
    other = await tar_file.open()
    await other.read(big.offset, 100)
    assert other.blob_streams[big.blob.digest] is not local
    gone = weakref.ref(local)
    del handle, local
    gc.collect()
    assert gone() is None  # nothing but the handle held it
