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


KILLED_BUILD = """
import sys, time, trio
from pathlib import Path
from regfs.cache.disk import DiskCache
from tests.unit.test_layer_support import Source, blob_of, layer_files, make_cache

class Slow(Source):
    async def fetch(self, start, end, sink):
        await trio.sleep(0.05)
        await super().fetch(start, end, sink)

async def main():
    data = Path(sys.argv[1]).read_bytes()
    disk = DiskCache(Path(sys.argv[2]), max_bytes=1 << 30)
    cache = make_cache(disk)
    async with cache.running():
        files = layer_files(cache, disk)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(files.index, blob_of(data, Slow(data)), None)
            while not files.progress() or files.progress()[0].done == 0:
                await trio.sleep(0.01)
            print("building", flush=True)

trio.run(main)
"""


async def test_a_build_killed_halfway_leaves_nothing_that_is_used(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    make_tree(tmp_path / "tree")
    tar = gnu_tar(tmp_path / "tree", tmp_path / "l.tar", fmt="gnu")
    for how in ("gzip", "zstd"):
        data = compress(tar, how, tmp_path)
        (tmp_path / "layer").write_bytes(data)
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_BUILD, str(tmp_path / "layer"), str(tmp_path / "c")],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert child.stdout is not None and child.stdout.readline() == b"building\n"
        child.send_signal(signal.SIGKILL)
        child.wait()
        disk = DiskCache(tmp_path / "c", max_bytes=1 << 30)
        digest = blob_of(data, None).digest
        assert [a for a in disk.artifacts() if a.digest == digest] == []  # none half-written
        assert disk.get_derived("layer-index", blob_of(data, None).digest) is None
        half_written = list((disk.root / "derived").rglob("*.tmp-*"))
        assert len(half_written) == (how == "zstd")  # the copy being written as it went
        # The next mount builds the index again, and a half-written copy goes with it.
        cache = make_cache(disk)
        async with cache.running():
            files = layer_files(cache, disk)
            index = await files.index(blob_of(data, Source(data)), None)
        assert files.builds == 1 and index.entries
        leftovers = list((disk.root / "derived").rglob("*.tmp-*"))
        assert leftovers == []
