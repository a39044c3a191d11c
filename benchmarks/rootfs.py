"""The `rootfs` case: files inside an image, against what a user would do instead.

Its world is one image with one ~1 GiB gzip layer made by GNU tar and gzip from a staging
directory kept beside it (the "local unpacked copy"): 20 000 small files, large random
files, and one small file written last, deep in the tree. The case measures the index build
(the first `ls rootfs/`), one small file read after the index, `find` and `ls -lR` from an
index on disk, `cp -r` out of the image and a remount's first listing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import MiB, log
from benchmarks.harness import Bench, RegfsMount, timed
from benchmarks.report import Row
from benchmarks.world import TAG, LayerFile, layer_config, layer_manifest, upload_file
from tests.fixtures.images import (
    DOCKER_MANIFEST,
    push_blob,
    put_manifest,
    registry_client,
    sha256_digest,
)

TREE_REPO = "bench/tree"
SMALL_FILES = 20_000
BIG_FILES = 8
DEEP_FILE = "data/deep/a/b/c/d/small.txt"
SPAN = 4 * MiB  # regfs's default distance between gzip seek points (uncompressed)
BLOCK = 4 * MiB
MEMORY_CACHE = 256 * MiB


@dataclass
class TreeWorld:
    layer: LayerFile
    staging: str  # the local unpacked copy

    @property
    def config(self) -> bytes:
        return layer_config(self.layer)

    @property
    def manifest(self) -> bytes:
        return layer_manifest(self.config, self.layer)


def _stage(staging: Path, big_bytes: int) -> None:
    rng = random.Random(13)
    words = [f"{rng.getrandbits(40):x}" for _ in range(4096)]
    files = staging / "data" / "files"
    for i in range(SMALL_FILES):
        path = files / f"d{i // 500:03d}" / f"f{i:05d}.txt"
        if i % 500 == 0:
            path.parent.mkdir(parents=True)
        count = rng.randrange(10, 1000)
        path.write_text(" ".join(rng.choices(words, k=count)) + "\n")
    blobs = staging / "data" / "blobs"
    blobs.mkdir(parents=True)
    each = big_bytes // BIG_FILES
    for n in range(BIG_FILES):
        with (blobs / f"big{n}.bin").open("wb") as out:
            left = each
            while left:
                chunk = rng.randbytes(min(left, 16 * MiB))
                left -= len(chunk)
                out.write(chunk)
    deep = staging / DEEP_FILE
    deep.parent.mkdir(parents=True)
    deep.write_text("the file at the end of the layer\n")


def _pack(staging: Path, out: Path) -> LayerFile:
    """GNU tar of the staging directory (the deep file last) piped through gzip -1; the tar
    stream's sha256 is the diff_id."""
    tmp = out.with_suffix(".partial")
    tar_hash = hashlib.sha256()
    members = ["data/files", "data/blobs", "data/deep"]
    with tmp.open("wb") as sink:
        tar = subprocess.Popen(
            ["tar", "-C", str(staging), "--sort=name", "--mtime=@1700000000", "--owner=0",
             "--group=0", "--numeric-owner", "--format=posix", "-cf", "-", *members],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        gzip = subprocess.Popen(["gzip", "-1", "-n"], stdin=subprocess.PIPE, stdout=sink)
        assert tar.stdout is not None and gzip.stdin is not None
        while chunk := tar.stdout.read(MiB):
            tar_hash.update(chunk)
            gzip.stdin.write(chunk)
        gzip.stdin.close()
        if tar.wait() != 0 or gzip.wait() != 0:
            raise RuntimeError("tar | gzip failed")
    blob_hash = hashlib.sha256()
    with tmp.open("rb") as packed:
        while chunk := packed.read(16 * MiB):
            blob_hash.update(chunk)
    tmp.rename(out)
    return LayerFile(
        str(out),
        out.stat().st_size,
        "sha256:" + blob_hash.hexdigest(),
        "sha256:" + tar_hash.hexdigest(),
    )


def load_tree_world(base: Path, big_bytes: int) -> TreeWorld:
    """The tree layer kept under `base`, generated on the first run."""
    directory = base / f"tree-{big_bytes}"
    index = directory / "tree.json"
    if index.is_file():
        saved = json.loads(index.read_text())
        world = TreeWorld(LayerFile(**saved["layer"]), saved["staging"])
        if Path(world.layer.path).is_file() and Path(world.staging).is_dir():
            return world
    log(f"tree world: staging {SMALL_FILES} small files and {big_bytes / MiB:.0f} MiB of big ones")
    started = time.monotonic()
    shutil.rmtree(directory, ignore_errors=True)
    staging = directory / "staging"
    staging.mkdir(parents=True)
    _stage(staging, big_bytes)
    layer = _pack(staging, directory / "tree.tar.gz")
    world = TreeWorld(layer, str(staging))
    index.write_text(json.dumps({"layer": asdict(layer), "staging": str(staging)}, indent=2))
    log(f"tree world: made in {time.monotonic() - started:.1f} s")
    return world


def publish_tree(bench: Bench, world: TreeWorld) -> None:
    manifest = world.manifest
    with registry_client(bench.registry.url) as client:
        head = client.head(f"/v2/{TREE_REPO}/manifests/{TAG}", headers={"Accept": DOCKER_MANIFEST})
        if head.headers.get("Docker-Content-Digest") == sha256_digest(manifest):
            return
        log(f"registry: pushing the {world.layer.size / MiB:.0f} MiB tree layer")
        push_blob(client, TREE_REPO, world.config)
        upload_file(client, TREE_REPO, world.layer)
        put_manifest(client, TREE_REPO, TAG, manifest, DOCKER_MANIFEST)


def _layer_bytes(m: RegfsMount) -> int:
    return m.settled_bytes_fetched()


def _drop_layer_blocks(cache: Path, digest: str) -> None:
    """Keep the index (derived/) and documents; forget the layer's blocks, verified or not."""
    algorithm, hexpart = digest.split(":", 1)
    shutil.rmtree(cache / "v1" / "blobs" / algorithm / hexpart, ignore_errors=True)
    for pending in (cache / "v1" / "pending").glob(f"*/{algorithm}/{hexpart}"):
        shutil.rmtree(pending, ignore_errors=True)


def rootfs(bench: Bench) -> list[Row]:
    """Files inside an image: the index build, a small file after it, find and ls -lR from
    an index on disk, cp -r out of the image and a remount's first listing."""
    world = load_tree_world(bench.run_dir.parent, max(bench.world.big.size - 96 * MiB, 64 * MiB))
    publish_tree(bench, world)
    layer = world.layer
    blob_url = f"{bench.registry.url}/v2/{TREE_REPO}/blobs/{layer.digest}"
    pipeline = f"curl -sS --fail {blob_url} | gzip -dc | tar t >/dev/null"
    build, build_ref, rss, small_time, small_bytes = [], [], [], [], []
    find_t, find_ref, lslr_t, lslr_ref, walk_bytes = [], [], [], [], []
    copy_t, copy_ref, remount_bytes = [], [], []
    staging = Path(world.staging)
    for i in range(bench.runs):
        log(f"rootfs: run {i + 1}/{bench.runs}")
        elapsed, _ = timed(["sh", "-c", pipeline])
        build_ref.append(layer.size / MiB / elapsed)
        cache = bench.fresh("cache")
        with bench.mount(cache, "--memory-cache", f"{MEMORY_CACHE // MiB}M") as m:
            image = bench.image_dir(m.path, TREE_REPO)
            (image / "manifest.json").stat()
            elapsed, _ = timed(["ls", str(image / "rootfs")])
            build.append(layer.size / MiB / elapsed)
            rss.append(m.peak_rss() / MiB)
        # The index on disk, the layer's blocks gone: one small file costs a span and a block.
        small_cache = bench.fresh("cache")
        shutil.copytree(cache, small_cache, dirs_exist_ok=True)
        _drop_layer_blocks(small_cache, layer.digest)
        with bench.mount(small_cache) as m:
            image = bench.image_dir(m.path, TREE_REPO)
            (image / "manifest.json").stat()
            (image / "config.json").read_bytes()
            os.listdir(image / "rootfs")  # the index loaded from disk: the read comes after
            before = _layer_bytes(m)
            elapsed, out = timed(["cat", str(image / "rootfs" / DEEP_FILE)])
            small_time.append(elapsed * 1000)
            small_bytes.append((_layer_bytes(m) - before) / MiB)
            if out != (staging / DEEP_FILE).read_text():
                raise RuntimeError(f"rootfs/{DEEP_FILE} read {out!r}")
        shutil.rmtree(small_cache)
        # A fresh mount over the whole cache: walking costs no byte.
        with bench.mount(cache) as m:
            image = bench.image_dir(m.path, TREE_REPO)
            (image / "manifest.json").stat()
            (image / "config.json").read_bytes()
            before = _layer_bytes(m)
            elapsed, listed = timed(["find", str(image / "rootfs")])
            find_t.append(elapsed)
            elapsed, _ = timed(["ls", "-lR", str(image / "rootfs")])
            lslr_t.append(elapsed)
            walk_bytes.append((_layer_bytes(m) - before) / MiB)
            found = len(listed.splitlines())
            target = bench.fresh("copy")
            elapsed, _ = timed(["cp", "-r", str(image / "rootfs" / "data"), str(target)])
            copy_t.append(elapsed)
        elapsed, local = timed(["find", str(staging)])
        find_ref.append(elapsed)
        if len(local.splitlines()) != found:
            raise RuntimeError(
                f"find rootfs/ listed {found} entries, the local copy {len(local.splitlines())}"
            )
        elapsed, _ = timed(["ls", "-lR", str(staging)])
        lslr_ref.append(elapsed)
        untar = bench.fresh("untar")
        elapsed, _ = timed(["tar", "-xzf", layer.path, "-C", str(untar)])
        copy_ref.append(elapsed)
        shutil.rmtree(untar)
        shutil.rmtree(target)
        with bench.mount(cache) as m:
            image = bench.image_dir(m.path, TREE_REPO)
            (image / "manifest.json").stat()  # the tag checked (a HEAD): not the layer's
            before = _layer_bytes(m)
            timed(["ls", str(image / "rootfs")])
            remount_bytes.append((_layer_bytes(m) - before) / MiB)
        shutil.rmtree(cache)

    label = f"{layer.size / (1 << 30):.2g} GiB gzip layer"
    rows = []
    row = Row(
        f"index build, {label} (first ls rootfs/)",
        "MiB/s",
        build,
        "pipeline curl, gzip -dc, tar t",
        build_ref,
    )
    row.judge(">=", 0.8)
    rows.append(row)
    row = Row("↳ peak RSS during the build", "MiB", rss, "-")
    row.judge("<=", MEMORY_CACHE / MiB + 150, absolute=True, worst=True)
    rows.append(row)
    row = Row("cat of a small file deep in it, index on disk", "ms", small_time, "-")
    row.judge("<=", 50, absolute=True)
    rows.append(row)
    row = Row("↳ bytes fetched for it", "MiB", small_bytes, "1 span + 1 block")
    row.judge("<=", (SPAN + BLOCK) / MiB * 1.01, absolute=True, worst=True)
    rows.append(row)
    row = Row(
        f"find rootfs/ ({found} entries), index on disk", "s", find_t, "find, local copy", find_ref
    )
    row.judge("<=", 1 / 0.3)
    rows.append(row)
    row = Row("ls -lR rootfs/, index on disk", "s", lslr_t, "ls -lR, local copy", lslr_ref)
    row.judge("<=", 1 / 0.3)
    rows.append(row)
    row = Row("↳ layer bytes fetched by find + ls -lR", "MiB", walk_bytes, "none")
    row.judge("<=", 0, absolute=True, worst=True)
    rows.append(row)
    row = Row("cp -r rootfs/data, blocks on disk", "s", copy_t, "tar xzf, local file", copy_ref)
    row.judge("<=", 1 / 0.5)
    rows.append(row)
    row = Row("remount: first ls rootfs/, bytes fetched", "MiB", remount_bytes, "none")
    row.judge("<=", 0, absolute=True, worst=True)
    rows.append(row)
    return rows
