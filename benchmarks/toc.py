"""The `toc` case: images built for lazy pulling, whose layers carry their own table of
contents, against the index pass over the same content as plain gzip.

Its world is the rootfs case's tree layer (about 1 GiB: 20 000 small files, large random
files, one small file written last) as pushed there (gzip), converted by the real producers:
`ctr-remote image convert --estargz --oci` against a containerd started for it
(tests/fixtures/estargz.py) and `skopeo copy --dest-compress-format zstd:chunked` through an
OCI layout (tests/fixtures/zstdchunked.py); both are kept in the bench registry, so later
runs skip the conversion. On a fresh mount and an empty cache each image gets a first
`ls rootfs/` and a first `cat` of the first small file of the layer (far from the TOC at
its end): time and bytes fetched; then the first big file read whole (gzip: from the blocks
its index pass fetched; eStargz, zstd:chunked: its chunks fetched as it reads, ahead of it).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from benchmarks import MiB, log
from benchmarks.harness import Bench, RegfsMount, read_rate, timed
from benchmarks.report import Row
from benchmarks.rootfs import TREE_REPO, load_tree_world, publish_tree
from benchmarks.world import TAG
from tests.fixtures.estargz import containerd
from tests.fixtures.images import OCI_MANIFEST
from tests.fixtures.zstdchunked import zstd_chunked_copy

BLOCK = 4 * MiB
# The first small file of the tree: at the start of the layer, far from its TOC at the end.
FIRST_FILE = "data/files/d000/f00000.txt"
BIG_FILE = "data/blobs/big0.bin"  # after the small files, far from the TOC too
FORMATS = {"estargz": "eStargz", "zstd-chunked": "zstd:chunked"}
ZSTD_POSITION = "io.containers.zstd-chunked.manifest-position"


def _layer(url: str, tag: str) -> dict[str, object] | None:
    answer = httpx.get(f"{url}/v2/{TREE_REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    if answer.status_code != 200:
        return None
    (layer,) = answer.json()["layers"]
    assert isinstance(layer, dict)
    return layer


def _convert(bench: Bench) -> None:
    url, host = bench.registry.url, bench.registry.url.split("://", 1)[1]
    if _layer(url, "estargz") is None:
        log("toc: converting the tree layer to eStargz (ctr-remote)")
        started = time.monotonic()
        with containerd(bench.fresh("containerd")) as daemon:
            daemon.convert(host, TREE_REPO, TAG, "estargz")
        log(f"toc: eStargz made in {time.monotonic() - started:.0f} s")
    if _layer(url, "zstd-chunked") is None:
        log("toc: converting the tree layer to zstd:chunked (skopeo)")
        started = time.monotonic()
        zstd_chunked_copy(host, TREE_REPO, TAG, "zstd-chunked")
        log(f"toc: zstd:chunked made in {time.monotonic() - started:.0f} s")


def toc_bytes(url: str, layer: dict[str, object]) -> int:
    """The TOC's compressed size (eStargz: from its footer to the end of the blob)."""
    annotations = layer.get("annotations")
    assert isinstance(annotations, dict)
    if ZSTD_POSITION in annotations:
        return int(annotations[ZSTD_POSITION].split(":")[1])
    size = int(str(layer["size"]))
    tail = httpx.get(
        f"{url}/v2/{TREE_REPO}/blobs/{layer['digest']}",
        headers={"Range": f"bytes={size - 51}-{size - 1}"},
        follow_redirects=True,
    ).content
    return size - int(tail[16:32], 16)


Sample = tuple[float, int, float, int, float]


def _first_ls_and_cat(bench: Bench, tag: str, expected: str, big: int) -> Sample:
    """(ls seconds, ls bytes, cat seconds, cat bytes, big file MiB/s) on a fresh mount and
    an empty cache."""
    with bench.mount(bench.fresh("cache")) as m:
        image = m.path / TREE_REPO / tag
        (image / "manifest.json").stat()
        (image / "config.json").read_bytes()
        before = _settled(m)
        ls_time, _ = timed(["ls", str(image / "rootfs")])
        after_ls = _settled(m)
        cat_time, out = timed(["cat", str(image / "rootfs" / FIRST_FILE)])
        after_cat = _settled(m)
        if out != expected:
            raise RuntimeError(f"{tag}: rootfs/{FIRST_FILE} read {out[:100]!r}")
        big_rate = read_rate(image / "rootfs" / BIG_FILE, big)
        if tag != TAG and m.stats()["layer_indexes"].get("built"):
            raise RuntimeError(f"{tag}: the layer went through the full pass")
    return ls_time, after_ls - before, cat_time, after_cat - after_ls, big_rate


def _settled(m: RegfsMount) -> int:
    return m.settled_bytes_fetched()


def toc(bench: Bench) -> list[Row]:
    """First ls rootfs/ and first cat on a fresh mount of eStargz and zstd:chunked images of
    the tree layer, against the index pass over the same content as gzip."""
    world = load_tree_world(bench.run_dir.parent, max(bench.world.big.size - 96 * MiB, 64 * MiB))
    publish_tree(bench, world)
    _convert(bench)
    expected = (Path(world.staging) / FIRST_FILE).read_text()
    big = (Path(world.staging) / BIG_FILE).stat().st_size
    samples: dict[str, list[Sample]] = {t: [] for t in (TAG, *FORMATS)}
    for i in range(bench.runs):
        log(f"toc: run {i + 1}/{bench.runs}")
        for tag in samples:
            samples[tag].append(_first_ls_and_cat(bench, tag, expected, big))
    gzip = samples[TAG]
    label = f"{world.layer.size / (1 << 30):.2g} GiB layer"
    rows = []
    for tag, name in FORMATS.items():
        layer = _layer(bench.registry.url, tag)
        assert layer is not None
        toc = toc_bytes(bench.registry.url, layer)
        got = samples[tag]
        row = Row(
            f"first ls rootfs/, {name} {label}",
            "s",
            [s[0] for s in got],
            "the same as gzip (index pass)",
            [s[0] for s in gzip],
        )
        row.judge("<=", 0.2)
        rows.append(row)
        row = Row(
            "↳ bytes fetched by it",
            "MiB",
            [s[1] / MiB for s in got],
            f"TOC ({toc / MiB:.2f} MiB) + 1 block; gzip: the layer",
            [s[1] / MiB for s in gzip],
        )
        row.judge("<=", (toc + BLOCK) / MiB, absolute=True, worst=True)
        rows.append(row)
        row = Row(
            f"first cat of a small file, {name}",
            "ms",
            [s[2] * 1000 for s in got],
            "the same as gzip, after its index pass",
            [s[2] * 1000 for s in gzip],
        )
        rows.append(row)
        row = Row(
            "↳ bytes fetched by it",
            "MiB",
            [s[3] / MiB for s in got],
            "its chunks + 1 block",
            [s[3] / MiB for s in gzip],
        )
        row.judge("<=", 2 * BLOCK / MiB, absolute=True, worst=True)
        rows.append(row)
        row = Row(
            f"read a big file whole ({big / MiB:.0f} MiB), {name}",
            "MiB/s",
            [s[4] for s in got],
            "gzip, from the blocks its index pass fetched",
            [s[4] for s in gzip],
        )
        # Fetching, checking and decompressing its chunks as it reads, against inflating
        # blocks at hand: half of gzip's rate at least (eStargz read at 0.46 x before readahead).
        row.judge(">=", 0.5)
        rows.append(row)
    return rows
