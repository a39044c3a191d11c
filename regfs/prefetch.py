"""`regfs prefetch PATH...`: warm a mount's cache by reading files through the mount.

Reading through the mount (not around it) means every byte takes the path a later reader
takes: into the block cache, checked against the blob's digest, errors as errno. The data
is thrown away. A few files are read at once, each sequentially in 1 MiB pieces, so the
mount's readahead for sequential readers applies.

What a directory contributes: in an image directory (one holding manifest.json or
index.json) its manifest.json, config.json, index.json and layers/*, and every platform
under platforms/; anywhere else, every subdirectory (a repository's tags, nested
repositories). Views built from the same blobs (image.tar and the like) and .regfs/ are
skipped; a layer reachable by several paths is read once.
"""

from __future__ import annotations

import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .cachectl import human

PIECE = 1 << 20
IMAGE_FILES = ("manifest.json", "config.json", "index.json")
EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Item:
    path: Path
    size: int
    done: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)


def plan(paths: Sequence[Path]) -> Plan:
    """The files to read for the given paths, in order, each blob once."""
    result = Plan()
    seen: set[str] = set()

    def add(path: Path) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            result.errors.append((path, exc.strerror or str(exc)))
            return
        if not stat.S_ISREG(st.st_mode):
            result.errors.append((path, "not a regular file"))
            return
        key = _blob_key(path)
        if key in seen:
            return
        seen.add(key)
        result.items.append(Item(path, st.st_size))

    def walk(directory: Path) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            result.errors.append((directory, exc.strerror or str(exc)))
            return
        if any(n in names for n in ("manifest.json", "index.json")):
            for name in IMAGE_FILES:
                if name in names:
                    add(directory / name)
            if "layers" in names:
                for layer in _listdir(directory / "layers", result):
                    add(directory / "layers" / layer)
            if "platforms" in names:
                for platform in _listdir(directory / "platforms", result):
                    walk(directory / "platforms" / platform)
            return
        for name in names:
            if name.startswith("."):
                continue  # .regfs/ and the like
            path = directory / name
            if os.path.isdir(path):
                walk(path)

    for path in paths:
        if os.path.isdir(path):
            walk(Path(path))
        else:
            add(Path(path))
    return result


def _listdir(directory: Path, result: Plan) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as exc:
        result.errors.append((directory, exc.strerror or str(exc)))
        return []


def _blob_key(path: Path) -> str:
    """Layer files are named by digest: the same layer under two images is one blob."""
    name = path.name
    if name.startswith("sha") and ":" in name and path.parent.name == "layers":
        return name.split(".", 1)[0]
    return str(path)


class Prefetch:
    """Reads the planned items with `jobs` threads; the caller's thread shows progress."""

    def __init__(self, items: list[Item], jobs: int) -> None:
        self.items = items
        self.jobs = max(1, jobs)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.todo: queue.SimpleQueue[Item] = queue.SimpleQueue()
        for item in items:
            self.todo.put(item)
        self.finished = threading.Semaphore(0)
        self.started = time.monotonic()

    def start(self) -> None:
        # Daemon threads: on Ctrl-C we leave without waiting for a read stuck in the mount.
        for n in range(min(self.jobs, len(self.items))):
            threading.Thread(target=self._work, name=f"prefetch-{n}", daemon=True).start()

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.todo.get_nowait()
            except queue.Empty:
                return
            self._read(item)
            self.finished.release()

    def _read(self, item: Item) -> None:
        item.started = time.monotonic()
        try:
            fd = os.open(item.path, os.O_RDONLY)
            try:
                while not self.stop.is_set():
                    data = os.pread(fd, PIECE, item.done)
                    if not data:
                        break
                    with self.lock:
                        item.done += len(data)
            finally:
                os.close(fd)
            if not self.stop.is_set() and item.done != item.size:
                item.error = f"read {item.done} of {item.size} bytes"
        except OSError as exc:
            item.error = exc.strerror or str(exc)
        item.finished = time.monotonic()

    @property
    def total(self) -> int:
        return sum(i.size for i in self.items)

    @property
    def done_bytes(self) -> int:
        return sum(i.done for i in self.items)


def _rate_eta(done: int, size: int, elapsed: float) -> tuple[str, str]:
    rate = done / elapsed if elapsed > 0 else 0.0
    if done >= size:
        eta = "0:00"
    elif rate <= 0:
        eta = "--:--"
    else:
        left = int((size - done) / rate)
        eta = (
            f"{left // 60}:{left % 60:02d}"
            if left < 3600
            else f"{left // 3600}h{left // 60 % 60:02d}"
        )
    return f"{human(rate)}/s", eta


class Display:
    """A live block of lines on a terminal; plain lines (no control codes) otherwise."""

    def __init__(self, out: TextIO, tty: bool, names: dict[int, str]) -> None:
        self.out = out
        self.tty = tty
        self.names = names
        self.drawn = 0
        self.last_plain = 0.0

    def _label(self, item: Item, width: int = 40) -> str:
        name = self.names[id(item)]
        return name if len(name) <= width else "…" + name[-(width - 1) :]

    def item_line(self, item: Item, now: float) -> str:
        elapsed = now - (item.started or now)
        rate, eta = _rate_eta(item.done, item.size, elapsed)
        return (
            f"  {self._label(item):<40} {human(item.done):>10} / {human(item.size):<10} "
            f"{rate:>12}  ETA {eta}"
        )

    def total_line(self, job: Prefetch, now: float) -> str:
        done, total = job.done_bytes, job.total
        rate, eta = _rate_eta(done, total, now - job.started)
        files = sum(1 for i in job.items if i.finished is not None)
        fraction = done / total if total else 1.0
        bar = "#" * int(fraction * 20)
        return (
            f"[{bar:<20}] {fraction * 100:3.0f}%  {human(done)} / {human(total)}  {rate}  "
            f"ETA {eta}  ({files}/{len(job.items)} files)"
        )

    def finished(self, item: Item) -> None:
        took = (item.finished or 0.0) - (item.started or 0.0)
        if item.error:
            line = f"FAILED {self.names[id(item)]}: {item.error}"
        else:
            rate, _ = _rate_eta(item.done, item.size, took)
            line = f"done   {self.names[id(item)]}  {human(item.size)} in {took:.1f}s ({rate})"
        self._clear()
        self.out.write(line + "\n")

    def update(self, job: Prefetch, now: float, *, force: bool = False) -> None:
        if self.tty:
            self._clear()
            active = [i for i in job.items if i.started is not None and i.finished is None]
            lines = [self.item_line(i, now) for i in active] + [self.total_line(job, now)]
            self.out.write("".join(line[:200] + "\x1b[K\n" for line in lines))
            self.drawn = len(lines)
        elif force or now - self.last_plain >= 5.0:
            self.last_plain = now
            self.out.write(self.total_line(job, now) + "\n")
        self.out.flush()

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0


def display_names(items: Iterable[Item]) -> dict[int, str]:
    return {id(i): str(i.path) for i in items}


def run(
    paths: Sequence[Path],
    *,
    jobs: int = 4,
    out: TextIO | None = None,
    err: TextIO | None = None,
    tty: bool | None = None,
) -> int:
    """Prefetch; 0 when every file was read, 1 on errors (each named), 130 on Ctrl-C."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    tty = out.isatty() if tty is None else tty
    work = plan(paths)
    for path, why in work.errors:
        err.write(f"regfs prefetch: {path}: {why}\n")
    job = Prefetch(work.items, jobs)
    display = Display(out, tty, display_names(work.items))
    reported: set[int] = set()
    try:
        job.start()
        remaining = len(work.items)
        while remaining:
            if job.finished.acquire(timeout=0.25 if tty else 1.0):
                remaining -= 1
            now = time.monotonic()
            for item in work.items:
                if item.finished is not None and id(item) not in reported:
                    reported.add(id(item))
                    display.finished(item)
            display.update(job, now)
    except KeyboardInterrupt:
        job.stop.set()
        display.update(job, time.monotonic(), force=True)
        out.write(
            f"interrupted: {human(job.done_bytes)} read stays in the cache; "
            "run the same command again to go on\n"
        )
        out.flush()
        return EXIT_INTERRUPTED
    now = time.monotonic()
    display.update(job, now, force=True)
    failed = [i for i in work.items if i.error]
    for item in failed:
        err.write(f"regfs prefetch: {item.path}: {item.error}\n")
    ok = len(work.items) - len(failed)
    rate, _ = _rate_eta(job.done_bytes, job.total, now - job.started)
    out.write(
        f"prefetched {ok} of {len(work.items)} files, {human(job.done_bytes)} "
        f"in {now - job.started:.1f}s ({rate})\n"
    )
    out.flush()
    return EXIT_FAILURE if failed or work.errors else EXIT_OK
