"""Layer indexes against the fixture registry: an image with a 64 MiB gzip layer (GNU tar and
gzip) and a zstd layer pushed under a gzip media type, indexed and read through BlobSource and
a real BlockCache; the bytes are what tarfile reads from the same tar, a remount fetches
nothing, a small file costs at most a span and a block, and a lying server gives errors."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache
from regfs.cache.disk import DiskCache
from regfs.errors import IntegrityError
from regfs.layers import Format, LayerFiles
from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry
from regfs.registry.blobs import BlobSource, ForeignURLPolicy
from regfs.registry.client import RegistryClient, RetryPolicy
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import Layer, PushedImage, push_image, random_bytes
from tests.fixtures.registry import RegistryServer
from tests.unit.test_layer_support import expected_files

pytestmark = pytest.mark.registry

BLOCK = 1 << 20
SPAN = 1 << 20
Sink = Callable[[bytes], Awaitable[None]]


@pytest.fixture(scope="module")
def image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    base = tmp_path_factory.mktemp("layer-index")
    tars = []
    for name, files in [
        ("big", {"data/big.bin": random_bytes(56 << 20, seed=5) + b"text " * (2 << 20)}),
        ("small", {"etc/os-release": b"ID=fixture\n", "usr/share/doc/x": b"y" * 300_000}),
    ]:
        root = base / name
        for path, content in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc" / "os-release").write_bytes(b"ID=fixture\n")
        subprocess.run(["tar", "-C", str(root), "-cf", str(base / f"{name}.tar"), "."], check=True)
        tars.append((base / f"{name}.tar").read_bytes())
    big = subprocess.run(["gzip", "-c"], input=tars[0], capture_output=True, check=True).stdout
    small = subprocess.run(["zstd", "-q", "-c"], input=tars[1], capture_output=True, check=True)
    assert len(big) >= 50 << 20
    # push_image names every layer `tar.gzip`: the zstd one is told by its first bytes.
    return push_image(registry.url, "layers/big", "v1", [big, small.stdout])


class Counting:
    def __init__(self, source: BlobSource) -> None:
        self.source = source
        self.fetched = 0

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        async def count(chunk: bytes) -> None:
            self.fetched += len(chunk)
            await sink(chunk)

        await self.source.fetch(start, end, count)


def blob_for(url: str, layer: Layer) -> tuple[BlobRef, Counting, RegistryClient]:
    client = RegistryClient(
        parse_registry(url), timeout=10.0, retry=RetryPolicy(attempts=3, base_delay=0.01)
    )
    descriptor = mf.Descriptor(layer.media_type, layer.digest, layer.size, layer.urls)
    source = Counting(BlobSource(client, "layers/big", descriptor, policy=ForeignURLPolicy([])))
    return BlobRef(layer.digest, layer.size, "r", source), source, client


def tar_of(layer: Layer) -> bytes:
    out = subprocess.run(
        ["gzip", "-dc"] if layer.data[:2] == b"\x1f\x8b" else ["zstd", "-dc"],
        input=layer.data, capture_output=True, check=True,
    )  # fmt: skip
    return out.stdout


async def test_a_big_layer_indexed_and_read_from_the_registry(
    registry: RegistryServer, image: PushedImage, tmp_path: Path
) -> None:
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 32)
    for layer, fmt in zip(image.layers, (Format.GZIP, Format.ZSTD), strict=True):
        # (push_image's config names a zstd layer's compressed digest: the real diff_id here.)
        diff_id = "sha256:" + hashlib.sha256(tar_of(layer)).hexdigest()
        blob, counting, client = blob_for(registry.url, layer)
        cache = BlockCache(disk=disk, block_size=BLOCK)
        async with cache.running():
            files = LayerFiles(cache, disk, span_bytes=SPAN)
            index = await files.index(blob, diff_id)
            assert index.format is fmt
            assert counting.fetched == layer.size  # one pass
            entries = {e.path: e for e in index.entries}
            for path, content in expected_files(tar_of(layer)).items():
                got = await files.read(blob, index, entries[path], 0, entries[path].size)
                assert hashlib.sha256(got).digest() == hashlib.sha256(content).digest(), path
        await client.aclose()

    # A remount: the index from disk, not a byte fetched; then, with every block evicted, one
    # small file deep in the big layer costs at most one span and one block.
    big = image.layers[0]
    for blob_dir in disk.blobs():
        disk.purge(blob_dir.digest)
    blob, counting, client = blob_for(registry.url, big)
    cache = BlockCache(disk=disk, block_size=BLOCK)
    async with cache.running():
        files = LayerFiles(cache, disk, span_bytes=SPAN)
        index = await files.index(blob, image.diff_ids[0])
        assert counting.fetched == 0 and files.builds == 0
        entry = next(e for e in index.entries if e.path == "data/big.bin")
        at, phase = (56 << 20) + 12347, 12347 % 5  # in the text after the random bytes
        assert await files.read(blob, index, entry, at, 5) == (b"text " * 2)[phase : phase + 5]
        span = next(s for s in index.spans if s.start <= entry.offset + at < s.end)
        assert counting.fetched <= (span.cend - span.cstart) + 2 * BLOCK
    await client.aclose()


async def test_a_lying_registry_after_eviction_is_an_error_never_bytes(
    registry: RegistryServer, image: PushedImage, tmp_path: Path
) -> None:
    big = image.layers[0]
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 32)
    with FaultProxy(registry.url) as proxy:
        blob, _counting, client = blob_for(proxy.url, big)
        # Small blocks, one request each: the proxy flips a byte of every one.
        small = 64 << 10
        cache = BlockCache(disk=disk, block_size=small, request_bytes=small)
        async with cache.running():
            index = await LayerFiles(cache, disk, span_bytes=SPAN).index(blob, None)
        for blob_dir in disk.blobs():
            disk.purge(blob_dir.digest)
        proxy.fault(f"/blobs/{big.digest}", flip_at=1000, times=None)
        entry = next(e for e in index.entries if e.path == "data/big.bin")
        cache = BlockCache(disk=disk, block_size=small, request_bytes=small, readahead_bytes=0)
        async with cache.running():
            files = LayerFiles(cache, disk, span_bytes=SPAN)
            index = await files.index(blob, None)
            with pytest.raises(IntegrityError):
                await files.read(blob, index, entry, 30 << 20, 4096)
        await client.aclose()
