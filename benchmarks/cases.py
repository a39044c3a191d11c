"""The cases: one function each, run `bench.runs` times, returning its rows of the table.

Each names its reference (curl, skopeo, the FUSE ceiling, a local copy) and its target; the
README's Performance section shows the table they make together.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import MiB, log
from benchmarks.harness import (
    Bench,
    curl_rate,
    drop_from_page_cache,
    read_rate,
    read_size_of,
    timed,
)
from benchmarks.report import Row, med
from benchmarks.rootfs import rootfs
from benchmarks.toc import toc
from benchmarks.world import BIG_REPO, CDN_RATE, TAG

GiB = 1 << 30
BLOCK = 4 * MiB  # regfs's default --block-size; the bytes targets count in these
MEMORY_CACHE = "256M"
RSS_LIMIT = 256 * MiB + 100 * MiB
RANDOM_READS = 100


def size_label(size: int) -> str:
    return f"{size / (1 << 30):.3g} GiB" if size >= 1 << 30 else f"{size / MiB:.3g} MiB"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cold(bench: Bench) -> list[Row]:
    """Sequential reads of the big layer: cold, warm and after a remount. Against curl, the
    FUSE ceiling and a local copy; peak RSS and mount time too. One case because the warm
    read (page cache) and the remount (disk cache) reuse what the cold read fetched."""
    world, runs = bench.world, bench.runs
    big_size = world.big.size
    blob_url = f"{bench.registry.url}/v2/{BIG_REPO}/blobs/{world.big.digest}"

    log("curl of the blob from the registry")
    curl = [curl_rate(blob_url, big_size) for _ in range(runs)]
    log("FUSE ceiling")
    with bench.ceiling() as ceiling_mount:
        ceiling = [read_rate(ceiling_mount.data, big_size) for _ in range(runs)]
    ceiling_read = [read_size_of({}, ceiling_mount.read_sizes)]
    log("local copy (page cache)")
    read_rate(Path(world.big.path), big_size)  # into the page cache
    local = [read_rate(Path(world.big.path), big_size) for _ in range(runs)]

    cold_rates, warm, remount, rss, cold_bytes, remount_bytes, mount_times = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    cold_read: list[float] = []
    cold_cpu: list[float] = []
    remount_cpu: list[float] = []
    remount_read: list[float] = []
    for i in range(runs):
        log(f"regfs sequential reads, run {i + 1}/{runs}")
        cache = bench.fresh("cache")
        started = time.monotonic()
        with bench.mount(cache, "--memory-cache", MEMORY_CACHE) as m:
            mount_times.append(time.monotonic() - started)
            layer = bench.big_in(m.path)
            sizes, cpu = m.read_sizes(), m.cpu_seconds()
            cold_rates.append(read_rate(layer, big_size))
            # Until readahead settles: its bytes were fetched for this read too.
            cold_bytes.append(m.settled_bytes_fetched() / MiB)
            cold_cpu.append((m.cpu_seconds() - cpu) / (big_size / GiB))
            cold_read.append(read_size_of(sizes, m.read_sizes()))
            rss.append(m.peak_rss() / MiB)
            warm.append(read_rate(layer, big_size))
        # The remount reads the disk cache, not block files still in RAM.
        log(f"dropped {drop_from_page_cache(cache)} cache files from the page cache")
        with bench.mount(cache, "--memory-cache", MEMORY_CACHE) as m:
            layer = bench.big_in(m.path)
            layer.stat()  # resolving the tag (a manifest GET) is not part of re-reading bytes
            before, sizes, cpu = m.bytes_fetched(), m.read_sizes(), m.cpu_seconds()
            remount.append(read_rate(layer, big_size))
            remount_cpu.append((m.cpu_seconds() - cpu) / (big_size / GiB))
            remount_read.append(read_size_of(sizes, m.read_sizes()))
            remount_bytes.append((m.settled_bytes_fetched() - before) / MiB)
        shutil.rmtree(cache)

    rows = []
    row = Row(
        f"cold sequential read, {size_label(big_size)} layer",
        "MiB/s",
        cold_rates,
        "lower of curl, FUSE ceiling",
    )
    row.ref = curl if med(curl) <= med(ceiling) else ceiling
    row.reference = "curl" if med(curl) <= med(ceiling) else "FUSE ceiling"
    row.judge(">=", 0.9)
    rows.append(row)
    rows.append(Row("↳ reference: curl of the blob", "MiB/s", curl, "-"))
    rows.append(Row("↳ reference: FUSE ceiling", "MiB/s", ceiling, "-"))
    # Information: the READ size the kernel sends (dd bs=1M), for regfs and for the ceiling;
    # 128 KiB means readahead was not raised after INIT.
    rows.append(Row("↳ READ size, cold read", "KiB", cold_read, "FUSE ceiling", ceiling_read))
    row = Row("↳ CPU of the mount process, cold read", "s/GiB", cold_cpu, "-")
    row.judge("<=", 2.0, absolute=True)
    rows.append(row)
    rows.append(
        Row("↳ bytes fetched for the cold read", "MiB", cold_bytes, "layer size", [big_size / MiB])
    )
    row = Row("warm re-read (page cache)", "MiB/s", warm, "local copy", local)
    row.judge(">=", 0.8)
    rows.append(row)
    row = Row(
        "re-read after remount (disk cache, dropped from page cache)",
        "MiB/s",
        remount,
        "FUSE ceiling",
        ceiling,
    )
    row.judge(">=", 0.8)
    rows.append(row)
    rows.append(
        Row("↳ READ size, after remount", "KiB", remount_read, "FUSE ceiling", ceiling_read)
    )
    rows.append(Row("↳ CPU of the mount process, after remount", "s/GiB", remount_cpu, "-"))
    row = Row("↳ bytes fetched after remount", "MiB", remount_bytes, "none")
    row.judge("<=", 0, absolute=True, worst=True)
    rows.append(row)
    row = Row(f"peak RSS streaming, --memory-cache {MEMORY_CACHE}", "MiB", rss, "-")
    row.judge("<=", RSS_LIMIT / MiB, absolute=True, worst=True)
    rows.append(row)
    rows.append(Row("↳ mount time (until mounted)", "s", mount_times, "-"))
    return rows


def first_mib(bench: Bench) -> list[Row]:
    """The first MiB of the big layer on a fresh mount, against skopeo copying the image."""
    first_time, first_bytes, skopeo = [], [], []
    for i in range(bench.runs):
        log(f"first MiB and skopeo copy, run {i + 1}/{bench.runs}")
        with bench.mount() as m:
            elapsed, _ = timed(
                ["dd", f"if={bench.big_in(m.path)}", "of=/dev/null", "bs=1M", "count=1"]
            )
            first_time.append(elapsed)
            first_bytes.append(m.settled_bytes_fetched() / MiB)
        target = bench.fresh("oci")
        elapsed, _ = timed(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{bench.registry.host}/{BIG_REPO}:{TAG}",
                f"oci:{target}:{TAG}",
            ],
            env=bench.env,
        )
        skopeo.append(elapsed)
        shutil.rmtree(target)
    row = Row("first MiB, fresh mount: time", "s", first_time, "skopeo copy", skopeo)
    row.judge("<=", 0.02)
    bytes_row = Row(
        "first MiB, fresh mount: bytes fetched", "MiB", first_bytes, "one block", [BLOCK / MiB]
    )
    bytes_row.judge("<=", 3)
    return [row, bytes_row]


def random_reads(bench: Bench) -> list[Row]:
    """100 reads of 1 MiB at random offsets of the big layer on a fresh mount."""
    big_size = bench.world.big.size
    per_read, p50, p99 = [], [], []
    rng = random.Random(4)
    for i in range(bench.runs):
        log(f"random reads, run {i + 1}/{bench.runs}")
        with bench.mount() as m:
            fd = os.open(bench.big_in(m.path), os.O_RDONLY)
            try:
                latencies = []
                for _ in range(RANDOM_READS):
                    offset = rng.randrange(0, big_size - MiB)
                    started = time.monotonic()
                    got = os.pread(fd, MiB, offset)
                    latencies.append((time.monotonic() - started) * 1000)
                    if len(got) != MiB:
                        raise RuntimeError(f"short read at {offset}: {len(got)}")
            finally:
                os.close(fd)
            per_read.append(m.settled_bytes_fetched() / RANDOM_READS / MiB)
            p50.append(percentile(latencies, 0.5))
            p99.append(percentile(latencies, 0.99))
    row = Row("100 random 1 MiB reads: bytes per read", "MiB", per_read, "one block", [BLOCK / MiB])
    row.judge("<=", 2)
    return [row, Row("↳ latency p50", "ms", p50, "-"), Row("↳ latency p99", "ms", p99, "-")]


def foreign(bench: Bench) -> list[Row]:
    """A foreign layer from a CDN that limits each connection, against curl's one connection."""
    foreign_size = bench.world.foreign.size
    foreign_url = f"{bench.cdn_url}/cdn/foreign.tar.gz"
    cdn_regfs, cdn_curl = [], []
    for i in range(bench.runs):
        log(f"foreign layer from the rate-limited CDN, run {i + 1}/{bench.runs}")
        cdn_curl.append(curl_rate(foreign_url, foreign_size))
        with bench.mount() as m:
            cdn_regfs.append(read_rate(bench.foreign_in(m.path), foreign_size))
    row = Row(
        f"cold read, {size_label(foreign_size)} foreign layer, CDN {CDN_RATE}/connection",
        "MiB/s",
        cdn_regfs,
        "curl (one connection)",
        cdn_curl,
    )
    row.judge(">=", 3)
    return [row]


def browse(bench: Bench) -> list[Row]:
    """`ls -R` of an image and its manifest.json on a fresh mount, against skopeo inspect."""
    browsing, inspect = [], []
    for i in range(bench.runs):
        log(f"ls -R and manifest.json against skopeo inspect, run {i + 1}/{bench.runs}")
        with bench.mount() as m:
            image = bench.image_dir(m.path)
            elapsed, _ = timed(
                [
                    "sh",
                    "-c",
                    # The files inside layers are the rootfs case's: skopeo inspect reads none.
                    'ls -R -I rootfs -I "sha256:*[0-9a-f]" "$1" >/dev/null'
                    ' && cat "$1/manifest.json" >/dev/null',
                    "sh",
                    str(image),
                ]
            )
            browsing.append(elapsed)
        elapsed, _ = timed(
            [
                "skopeo",
                "inspect",
                "--tls-verify=false",
                f"docker://{bench.registry.host}/{BIG_REPO}:{TAG}",
            ],
            env=bench.env,
        )
        inspect.append(elapsed)
    row = Row(
        "ls -R (not rootfs/) + cat manifest.json, fresh mount",
        "s",
        browsing,
        "skopeo inspect",
        inspect,
    )
    row.judge("<=", 1)
    return [row]


Case = Callable[[Bench], list[Row]]

# In the table's order; `--only` picks from these names.
CASES: dict[str, Case] = {
    "cold": cold,
    "first-mib": first_mib,
    "random": random_reads,
    "foreign": foreign,
    "browse": browse,
    "rootfs": rootfs,
    "toc": toc,
}


def summary(case: Case) -> str:
    """The first sentence of a case's docstring, for --list."""
    doc = " ".join((case.__doc__ or "").split())
    return doc.split(". ")[0].rstrip(".")
