"""`regfs cache info|prune|clear`: what the disk cache holds, shown; trimming it, also while
mounts use it, is the disk module's (regfs.cache.disk says why that is safe).
"""

from __future__ import annotations

import time
from pathlib import Path

from .cache.disk import CacheSummary, clear, prune
from .cache.disk import scan as summary
from .layers.index import FLAT_KIND
from .layers.index import KIND as INDEX_KIND

# What each kind of derived artifact is, for people.
KIND_NAMES = {INDEX_KIND: "layer indexes", FLAT_KIND: "decompressed single-frame zstd layers"}

__all__ = ["by_kind", "clear", "human", "info_document", "prune", "render_info", "summary"]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render_info(cache_dir: Path, info: CacheSummary, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [
        f"cache {cache_dir}",
        f"blobs: {len(info.blobs)} ({human(info.blob_bytes)} on disk); "
        f"documents: {info.documents} ({human(info.document_bytes)}); tags: {info.tags}; "
        f"derived: {len(info.derived)} ({human(info.derived_bytes)})",
    ]
    for kind, (count, size) in sorted(by_kind(info).items()):
        lines.append(f"  {KIND_NAMES.get(kind, kind)}: {count} ({human(size)})")
    if info.blobs:
        lines.append("")
        lines.append(f"{'DIGEST':<24} {'CACHED':>10} {'OF':>10} {'%':>5}  {'STATE':<24} LAST USE")
        for b in info.blobs:
            fraction = b.fraction
            percent = f"{fraction * 100:.0f}" if fraction is not None else "?"
            total = human(b.size) if b.size is not None else "?"
            state = "verified" if b.verified else f"unverified ({b.registry})"
            lines.append(
                f"{b.digest[:23] + '…':<24} {human(b.data_bytes):>10} {total:>10} {percent:>5}  "
                f"{state:<24} {_ago(now - b.last_used)}"
            )
    return "\n".join(lines)


def info_document(info: CacheSummary) -> dict[str, object]:
    """`regfs cache info --json`."""
    return {
        "blob_bytes": info.blob_bytes,
        "documents": info.documents,
        "document_bytes": info.document_bytes,
        "tags": info.tags,
        "derived": len(info.derived),
        "derived_bytes": info.derived_bytes,
        "derived_kinds": {
            kind: {"count": count, "bytes": size} for kind, (count, size) in by_kind(info).items()
        },
        "blobs": [
            {
                "digest": b.digest,
                "verified": b.verified,
                "registry": b.registry,
                "blocks": b.blocks,
                "cached_bytes": b.data_bytes,
                "disk_bytes": b.disk_bytes,
                "size": b.size,
                "fraction": b.fraction,
                "last_used": b.last_used,
            }
            for b in info.blobs
        ],
    }


def by_kind(info: CacheSummary) -> dict[str, tuple[int, int]]:
    """kind -> (artifacts, bytes on disk) of the derived artifacts (layer indexes, ...)."""
    kinds: dict[str, tuple[int, int]] = {}
    for a in info.derived:
        count, size = kinds.get(a.kind, (0, 0))
        kinds[a.kind] = (count + 1, size + a.disk_bytes)
    return kinds


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
