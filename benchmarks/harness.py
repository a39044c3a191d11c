"""What the cases run against and measure with: regfs mounts and the FUSE ceiling as
subprocesses this program owns, each in a fresh directory of the run, and the timed
commands (dd, curl) that measure them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import MiB, log
from benchmarks.world import BIG_REPO, FOREIGN_REPO, TAG, World, spawn
from tests.fixtures._net import stop_process, wait_until
from tests.fixtures.mounting import LOOPBACK_ALLOW, force_unmount, is_mounted
from tests.fixtures.registry import RegistryServer

CEILING = Path(__file__).resolve().parent.parent / "scripts" / "bench_ceiling.py"


@dataclass
class RegfsMount:
    path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.path / ".regfs" / "stats.json").read_text())
        return result

    def bytes_fetched(self) -> int:
        return int(sum(self.stats()["bytes_fetched_by_host"].values()))

    def settled_bytes_fetched(self, timeout: float = 60) -> int:
        """Bytes fetched once readahead has finished (no block in flight, count unchanged)."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            stats = self.stats()
            now = int(sum(stats["bytes_fetched_by_host"].values()))
            if not stats.get("in_flight_blocks") and now == last:
                return now
            last = now
            time.sleep(0.2)
        return last

    def read_sizes(self) -> dict[int, int]:
        """The READs the kernel sent so far, by size in bytes (the adapter's count)."""
        sizes = self.stats().get("fuse_read_sizes", {})
        return {int(size): int(count) for size, count in sizes.items()}

    def cpu_seconds(self) -> float:
        """User + system CPU the mount process has used so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")


@dataclass
class CeilingMount:
    """The FUSE ceiling's one file, and the READs the kernel sent it (known once stopped)."""

    data: Path
    read_sizes: dict[int, int]


def drop_from_page_cache(directory: Path) -> int:
    """Drop every file under `directory` from the page cache (after a sync, so none is
    dirty): a re-read then measures the disk, not RAM. How many files were dropped."""
    os.sync()
    dropped = 0
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            dropped += 1
        finally:
            os.close(fd)
    return dropped


def read_size_of(before: dict[int, int], after: dict[int, int]) -> float:
    """The READ size (KiB) that carried most bytes between two counts: what the kernel sent
    for a sequential read (a stats.json read or a file's tail is a small READ too)."""
    carried = {size: (after[size] - before.get(size, 0)) * size for size in after}
    size = max(carried, key=lambda s: carried[s], default=0)
    return size / 1024 if carried.get(size, 0) > 0 else 0.0


class Bench:
    """One run: its world and servers, how often each case repeats, and a directory where
    every mount, cache and copy gets a fresh subdirectory."""

    def __init__(
        self, run_dir: Path, world: World, registry: RegistryServer, cdn_url: str, runs: int
    ) -> None:
        self.run_dir = run_dir
        self.world = world
        self.registry = registry
        self.cdn_url = cdn_url
        self.runs = runs
        self.env = dict(os.environ)
        home = run_dir / "home"
        home.mkdir()
        # No credentials of this machine, no state outside the run directory.
        self.env.update(
            HOME=str(home),
            XDG_STATE_HOME=str(home / "state"),
            XDG_CACHE_HOME=str(home / "cache"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_RUNTIME_DIR=str(home / "run"),
        )
        self.env.pop("REGISTRY_AUTH_FILE", None)
        self.env.pop("DOCKER_CONFIG", None)
        self.counter = 0

    def fresh(self, prefix: str) -> Path:
        self.counter += 1
        path = self.run_dir / f"{prefix}-{self.counter}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def mount(self, cache_dir: Path | None = None, *extra: str) -> Iterator[RegfsMount]:
        """`regfs mount --foreground` of the bench registry; unmounted on the way out."""
        path = self.fresh("mnt")
        cache = cache_dir or self.fresh("cache")
        log_path = self.run_dir / f"regfs-{self.counter}.log"
        proc = spawn(
            [
                sys.executable,
                "-m",
                "regfs.cli",
                "mount",
                "--foreground",
                "--registry",
                self.registry.url,
                "--cache-dir",
                str(cache),
                "--foreign-url-allow",
                LOOPBACK_ALLOW,
                *extra,
                str(path),
            ],
            log_path,
            self.env,
        )
        try:
            # Polled every 10 ms: the mount time is a row of the table, and the default
            # backoff rounded it up to its next step (a 0.32 s mount read as 0.56 s).
            wait_until(
                lambda: proc.poll() is not None or is_mounted(path),
                timeout=60,
                what="regfs mount",
                max_delay=0.01,
            )
            if proc.poll() is not None:
                raise RuntimeError(f"regfs mount exited: {log_path.read_text(errors='replace')}")
            yield RegfsMount(path, proc, log_path)
        finally:
            if is_mounted(path):
                result = subprocess.run(
                    ["fusermount3", "-u", str(path)], capture_output=True, text=True, check=False
                )
                if result.returncode == 0:  # then regfs exits by itself
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=30)
                else:
                    log(f"fusermount3 -u {path}: {result.stderr.strip()}; stopping regfs by pid")
            stop_process(proc)  # regfs unmounts itself on SIGTERM; not mounted yet: it just exits
            force_unmount(path)

    @contextlib.contextmanager
    def ceiling(self) -> Iterator[CeilingMount]:
        """scripts/bench_ceiling.py mounted; yields its one file, as big as the big layer, and
        once stopped, the READ sizes it printed."""
        path = self.fresh("ceiling")
        out = self.run_dir / "ceiling.log"
        proc = spawn(
            [sys.executable, str(CEILING), str(path), str(self.world.big.size)], out, self.env
        )
        try:
            wait_until(
                lambda: proc.poll() is not None or "ready" in out.read_text(errors="replace"),
                timeout=60,
                what="the FUSE ceiling",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"ceiling exited: {out.read_text(errors='replace')}")
            mount = CeilingMount(path / "data", {})
            yield mount
        finally:
            stop_process(proc)
            force_unmount(path)
        said = re.search(r"^read sizes: (.*)$", out.read_text(errors="replace"), re.MULTILINE)
        if said:
            mount.read_sizes = {int(k): int(v) for k, v in json.loads(said.group(1)).items()}

    def image_dir(self, mnt: Path, repo: str = BIG_REPO) -> Path:
        return mnt / repo / TAG

    def big_in(self, mnt: Path) -> Path:
        return self.image_dir(mnt) / "layers" / f"{self.world.big.digest}.tar.gz"

    def foreign_in(self, mnt: Path) -> Path:
        return self.image_dir(mnt, FOREIGN_REPO) / "layers" / f"{self.world.foreign.digest}.tar.gz"


def timed(args: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command; its wall time and output. Fails loudly."""
    started = time.monotonic()
    result = subprocess.run(list(args), capture_output=True, env=env, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed, result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


def read_rate(path: Path, size: int) -> float:
    """dd the whole file to /dev/null; MiB/s. Checks that every byte arrived."""
    elapsed, out = timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])
    copied = re.search(r"^(\d+) bytes", out, re.MULTILINE)
    if not copied or int(copied.group(1)) != size:
        raise RuntimeError(
            f"dd of {path} read {copied and copied.group(1)} bytes, not {size}: {out}"
        )
    return size / MiB / elapsed


def curl_rate(url: str, size: int) -> float:
    elapsed, out = timed(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url]
    )
    if int(out.strip() or 0) != size:
        raise RuntimeError(f"curl {url} got {out.strip()} bytes, not {size}")
    return size / MiB / elapsed
