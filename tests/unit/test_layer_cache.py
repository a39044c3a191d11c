"""Layer indexes in the disk cache as `regfs cache info/prune/clear` see them: counted by
kind, evicted after blocks, cleared with their blob."""

from __future__ import annotations

from pathlib import Path

from regfs import cachectl
from regfs.cache.disk import DiskCache
from tests.unit.test_layer_support import (
    Refuses,
    Source,
    blob_of,
    compress,
    gnu_tar,
    layer_files,
    make_cache,
    make_tree,
)


async def test_info_prune_and_clear_know_layer_indexes(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree")
    tar = gnu_tar(tmp_path / "tree", tmp_path / "l.tar", fmt="posix")
    gz, zst = compress(tar, "gzip", tmp_path), compress(tar, "zstd", tmp_path)
    disk = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        for data in (gz, zst):
            await files.index(blob_of(data, Source(data)), None)

    info = cachectl.summary(tmp_path / "cache")
    kinds = cachectl.by_kind(info)
    assert kinds["layer-index"][0] == 2
    assert kinds["layer-tar"] == (1, len(tar))  # the single-frame zstd layer, decompressed
    text = cachectl.render_info(tmp_path / "cache", info)
    assert "layer indexes: 2" in text and "decompressed single-frame zstd layers: 1" in text
    assert cachectl.info_document(info)["derived_kinds"]["layer-index"]["count"] == 2  # type: ignore[index]

    # Pruning to what the derived artifacts take drops every block and keeps the indexes:
    # a remount still lists the layer without a byte fetched.
    cachectl.prune(tmp_path / "cache", info.derived_bytes)
    after = cachectl.summary(tmp_path / "cache")
    assert after.blobs == [] and len(after.derived) == 3
    cache = make_cache(DiskCache(tmp_path / "cache", max_bytes=1 << 30))
    async with cache.running():
        assert (await layer_files(cache, disk).index(blob_of(gz, Refuses()), None)).entries

    # Clearing a layer's digest removes what was derived from it.
    cachectl.clear(tmp_path / "cache", blob_of(zst, None).digest)
    assert {a.kind for a in cachectl.summary(tmp_path / "cache").derived} == {"layer-index"}
