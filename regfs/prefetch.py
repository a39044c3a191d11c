"""`regfs prefetch PATH...`: warm a mount's cache by reading files through the mount.

Reading through the mount (not around it) means every byte takes the path a later reader
takes: into the block cache, checked against the blob's digest, errors as errno. The data
is thrown away. A few files are read at once, each sequentially in 1 MiB pieces, so the
mount's readahead for sequential readers applies.

What a directory contributes: in an image directory (one holding manifest.json or
index.json) its manifest.json, config.json, index.json and layers/*, and every platform
under platforms/; anywhere else, every subdirectory (a repository's tags, nested
repositories). Views built from the same blobs (image.tar and the like) and .regfs/ are
skipped; a layer reachable by several paths is read once. An image's `rootfs/` is listed
once its layers are read: that builds the layer indexes its files need (a layer shared by
several images is indexed once), so the first `ls` or `cat` inside it costs nothing more.
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
from typing import Protocol, TextIO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

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
    listing: bool = False  # a rootfs/ to list (which builds its layer indexes), not to read


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)  # files to read, then trees to list
    errors: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def files(self) -> list[Item]:
        return [i for i in self.items if not i.listing]


def plan(paths: Sequence[Path]) -> Plan:
    """The files to read for the given paths, in order, each blob once."""
    result = Plan()
    seen: set[str] = set()
    trees: list[Item] = []

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
                    path = directory / "layers" / layer
                    # Not 1.tar.gz -> sha256:…, nor a layer's own tree (sha256:…/).
                    if not os.path.islink(path) and not os.path.isdir(path):
                        add(path)
            if "rootfs" in names:
                trees.append(Item(directory / "rootfs", 0, listing=True))
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
    result.items += trees  # after every file: a tree's index is built from its read layers
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
            if item.listing:
                os.listdir(item.path)
                return
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
        finally:
            item.finished = time.monotonic()

    @property
    def files(self) -> list[Item]:
        return [i for i in self.items if not i.listing]

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


def finished_line(item: Item, name: str) -> str:
    """The line that stays when a file is done: its size, time and rate, or why it failed."""
    if item.error:
        return f"FAILED {name}: {item.error}"
    took = (item.finished or 0.0) - (item.started or 0.0)
    if item.listing:
        return f"indexed {name}  in {took:.1f}s"
    rate, _ = _rate_eta(item.done, item.size, took)
    return f"done   {name}  {human(item.size)} in {took:.1f}s ({rate})"


def summary_line(ok: int, files: int, done: int, wall: float, reading: float) -> str:
    """The last line: bytes over the command's wall time. Finding the files (listing tags,
    resolving manifests) may take most of it: then what reading alone took is said too."""
    rate, _ = _rate_eta(done, done, wall)
    line = f"prefetched {ok} of {files} files, {human(done)} in {wall:.1f}s ({rate})"
    finding = wall - reading
    if finding >= 1.0 and finding >= 0.1 * wall:
        reading_rate, _ = _rate_eta(done, done, reading)
        line += f"; finding them took {finding:.1f}s, reading {reading:.1f}s ({reading_rate})"
    return line + "\n"


class Display(Protocol):
    def finished(self, item: Item) -> None: ...
    def update(self, job: Prefetch, now: float, *, force: bool = False) -> None: ...
    def close(self) -> None: ...


class PlainDisplay:
    """For a pipe or a log: no control codes, a line per file and the total every 5 s."""

    def __init__(self, out: TextIO, names: dict[int, str]) -> None:
        self.out = out
        self.names = names
        self.last = 0.0

    def finished(self, item: Item) -> None:
        self.out.write(finished_line(item, self.names[id(item)]) + "\n")

    def update(self, job: Prefetch, now: float, *, force: bool = False) -> None:
        if force or now - self.last >= 5.0:
            self.last = now
            done, total = job.done_bytes, job.total
            rate, eta = _rate_eta(done, total, now - job.started)
            files = sum(1 for i in job.files if i.finished is not None)
            fraction = done / total if total else 1.0
            bar = "#" * int(fraction * 20)
            self.out.write(
                f"[{bar:<20}] {fraction * 100:3.0f}%  {human(done)} / {human(total)}  {rate}  "
                f"ETA {eta}  ({files}/{len(job.files)} files)\n"
            )
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


class _Tail:
    """A name cut from the left to the width the table gives it, so it never wraps the
    terminal: the end of a path (the digest, the file name) says more than its start."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(len(self.text), 16), len(self.text))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width)
        text = (
            self.text if len(self.text) <= width else "…" + self.text[len(self.text) - width + 1 :]
        )
        yield Text(text, no_wrap=True, overflow="crop")


class _NameColumn(ProgressColumn):
    def render(self, task: Task) -> RenderableType:
        if task.fields.get("path"):
            return _Tail(task.description)
        return Text(task.description, no_wrap=True, overflow="ellipsis")


class _SpeedColumn(ProgressColumn):
    """rich's recent-rate estimate in the binary units the rest of regfs prints."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?/s" if speed is None else f"{human(speed)}/s", style="progress.data.speed")


class LiveDisplay:
    """On a terminal: rich redraws the total and a bar per file being read in place;
    finished files print above it. The caller's clock drives it (`now`), not rich's."""

    def __init__(self, out: TextIO, names: dict[int, str]) -> None:
        self.names = names
        self.now = time.monotonic()
        self.progress = Progress(
            # The one column rich may narrow (wrappable) when the line is too long; _Tail
            # then cuts the name instead of wrapping it.
            _NameColumn(table_column=Column(no_wrap=False)),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            _SpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(compact=True),
            console=Console(file=out, force_terminal=True, highlight=False),
            auto_refresh=False,  # update() refreshes: one clock, no drawing thread
            get_time=lambda: self.now,
        )
        self.total = self.progress.add_task("total", total=0)
        self.tasks: dict[int, TaskID] = {}
        self.started = False

    def finished(self, item: Item) -> None:
        self.progress.console.print(
            finished_line(item, self.names[id(item)]), markup=False, soft_wrap=True
        )
        task = self.tasks.pop(id(item), None)
        if task is not None:
            self.progress.remove_task(task)

    def update(self, job: Prefetch, now: float, *, force: bool = False) -> None:
        self.now = now
        files = sum(1 for i in job.files if i.finished is not None)
        self.progress.update(
            self.total,
            total=job.total,
            completed=job.done_bytes,
            description=f"total ({files}/{len(job.files)} files)",
        )
        for item in job.files:
            if item.started is None or item.finished is not None:
                continue
            task = self.tasks.get(id(item))
            if task is None:
                task = self.tasks[id(item)] = self.progress.add_task(
                    self.names[id(item)], total=item.size, path=True
                )
            self.progress.update(task, completed=item.done)
        if not self.started:  # the first frame has the totals in it
            self.started = True
            self.progress.start()
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()  # leaves the last frame on screen; a second call does nothing


def display_names(items: Iterable[Item]) -> dict[int, str]:
    return {id(i): str(i.path) for i in items}


def _follow(job: Prefetch, display: Display, poll: float) -> None:
    """Start the readers and show each file as it finishes until all have."""
    reported: set[int] = set()
    job.start()
    remaining = len(job.items)
    while remaining:
        if job.finished.acquire(timeout=poll):
            remaining -= 1
        for item in job.items:
            if item.finished is not None and id(item) not in reported:
                reported.add(id(item))
                display.finished(item)
        display.update(job, time.monotonic())


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
    started = time.monotonic()  # the summary is the user's wait: walking the mount included
    work = plan(paths)
    for path, why in work.errors:
        err.write(f"regfs prefetch: {path}: {why}\n")
    job = Prefetch(work.items, jobs)
    names = display_names(work.items)
    display: Display = LiveDisplay(out, names) if tty else PlainDisplay(out, names)
    interrupted = False
    try:
        _follow(job, display, poll=0.25 if tty else 1.0)
    except KeyboardInterrupt:
        job.stop.set()
        interrupted = True
    finally:  # the live display ends before any other line is written
        now = time.monotonic()
        display.update(job, now, force=True)
        display.close()
    if interrupted:
        out.write(
            f"interrupted: {human(job.done_bytes)} read stays in the cache; "
            "run the same command again to go on\n"
        )
        out.flush()
        return EXIT_INTERRUPTED
    failed = [i for i in work.items if i.error]
    for item in failed:
        err.write(f"regfs prefetch: {item.path}: {item.error}\n")
    files, trees = len(work.files), len(work.items) - len(work.files)
    ok = files - len([i for i in failed if not i.listing])
    line = summary_line(ok, files, job.done_bytes, now - started, now - job.started)
    if trees:
        indexed = trees - len([i for i in failed if i.listing])
        line = line.rstrip("\n") + f"; indexed {indexed} of {trees} image trees (rootfs/)\n"
    out.write(line)
    out.flush()
    return EXIT_FAILURE if failed or work.errors else EXIT_OK
