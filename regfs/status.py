"""`regfs status MOUNTPOINT`: what a mount has been doing, from its .regfs/stats.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from . import cachectl

EXIT_OK, EXIT_FAILURE = 0, 1


def regfs_mount_at(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            where = fields[1].encode().decode("unicode_escape") if len(fields) > 2 else ""
            if where == target and fields[2] == "fuse.regfs":
                return True
    return False


def render_status(mountpoint: Path, doc: dict[str, object]) -> Group:
    """The stats document as rich tables: they fit the terminal's width, and print as plain
    text without colour when the output is not a terminal."""

    def get(*keys: str) -> object:
        value: object = doc
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def num(value: object) -> int:
        return value if isinstance(value, int) else 0

    # Text(...), not str: a path or host holding "[" must not be read as rich markup.
    summary = Table.grid(padding=(0, 3))
    summary.add_column(no_wrap=True)
    summary.add_column(overflow="fold")
    summary.add_row("mount", Text(str(mountpoint)))
    summary.add_row(
        "registry", Text(f"{get('registry')}" + (" (offline)" if get("offline") else ""))
    )
    mirrors = get("mirrors")
    if isinstance(mirrors, list) and mirrors:
        summary.add_row("mirrors", Text(", ".join(map(str, mirrors))))
    summary.add_row("uptime", Text(f"{get('uptime_seconds')} s"))
    summary.add_row(
        "requests",
        Text(
            f"{num(get('requests'))}   retries {num(get('retries'))}   "
            f"in-flight block fetches {num(get('in_flight_blocks'))}"
        ),
    )
    summary.add_row(
        "blobs",
        Text("   ".join(f"{n} {num(get('blobs', n))}" for n in ("verified", "failed", "purged"))),
    )
    indexes = get("layer_indexes")
    if isinstance(indexes, dict):
        building = indexes.get("building")
        building = building if isinstance(building, list) else []
        summary.add_row(
            "layer indexes",
            Text(
                f"built {num(indexes.get('built'))}   building {len(building)}   "
                f"spans inflated {num(indexes.get('spans_inflated'))}"
            ),
        )
        for build in building:
            if isinstance(build, dict):
                done, size = num(build.get("bytes")), num(build.get("size"))
                rate = cachectl.human(num(build.get("bytes_per_second")))
                summary.add_row(
                    "",
                    Text(
                        f"{str(build.get('digest')).partition(':')[2][:12]}  "
                        f"{cachectl.human(done)} / {cachectl.human(size)}  {rate}/s"
                    ),
                )

    def table(title: str, *columns: str) -> Table:
        return Table(
            Column(title, overflow="fold"),
            *(Column(c, justify="right", no_wrap=True) for c in columns),
            box=box.SIMPLE_HEAD,
            show_edge=False,
        )

    cache = table("cache", "hits", "misses")
    for tier in ("memory", "disk"):
        cache.add_row(
            tier,
            str(num(get("cache", "tiers", tier, "hits"))),
            str(num(get("cache", "tiers", tier, "misses"))),
        )
    cache.caption = f"memory held: {cachectl.human(num(get('cache', 'memory_bytes')))}"
    cache.caption_justify = "left"

    hosts = table("bytes fetched by host", "bytes")
    by_host = get("bytes_fetched_by_host")
    for host, n in sorted(by_host.items()) if isinstance(by_host, dict) else ():
        hosts.add_row(Text(str(host)), cachectl.human(num(n)))
    errors = table("errors", "count")
    error_counts = get("errors")
    for kind, n in sorted(error_counts.items()) if isinstance(error_counts, dict) else ():
        errors.add_row(Text(str(kind)), str(num(n)))
    for empty in (hosts, errors):
        if not empty.row_count:
            empty.add_row("(none)", "")
    parts: list[RenderableType] = [summary, "", cache, "", hosts, "", errors]
    per_registry = get("registries")  # a mount of every registry: each one's own figures
    if isinstance(per_registry, dict):
        registries = table("registry", "requests", "retries", "bytes", "errors")
        for name, figures in sorted(per_registry.items()):
            figures = figures if isinstance(figures, dict) else {}
            fetched = figures.get("bytes_fetched_by_host")
            failed = figures.get("errors")
            registries.add_row(
                Text(f"{name} ({figures.get('address')})"),
                str(num(figures.get("requests"))),
                str(num(figures.get("retries"))),
                cachectl.human(sum(map(num, fetched.values())) if isinstance(fetched, dict) else 0),
                str(sum(map(num, failed.values())) if isinstance(failed, dict) else 0),
            )
        if not registries.row_count:
            registries.add_row("(none used yet)", "", "", "", "")
        parts += ["", registries]
    return Group(*parts)


def show(mountpoint: Path, as_json: bool) -> int:
    """Print the mount's statistics (as tables, or the JSON as served); 1 if it is not one."""
    if not regfs_mount_at(mountpoint):
        print(f"regfs: {mountpoint} is not a regfs mount", file=sys.stderr)
        return EXIT_FAILURE
    try:
        raw = (mountpoint / ".regfs" / "stats.json").read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        print(f"regfs: cannot read {mountpoint}/.regfs/stats.json: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        print(raw.decode().rstrip())
    else:
        Console(highlight=False).print(render_status(mountpoint, doc))
    return EXIT_OK
