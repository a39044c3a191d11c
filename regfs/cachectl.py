"""`regfs cache info|prune|clear`: look at and trim the disk cache, also while mounts use it.

Safe next to running mounts: they write every file under a temporary name and rename it
into place, make directories again when one vanishes, and treat a block file that is gone
or damaged as not cached (they fetch it again). So removing a blob's directory at any
moment costs at most a refetch, never a wrong byte.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from .cache.blocks import _TRAILER, SIZE_FILE, DiskCache
from .oci.reference import is_digest

SUBDIRS = ("blobs", "pending", "documents", "tags")


@dataclass(frozen=True)
class CachedBlob:
    """What the disk cache holds of one blob in one place (verified, or pending per registry)."""

    digest: str
    registry: str | None  # None: verified, shared by every registry
    directory: Path
    blocks: int
    data_bytes: int  # blob bytes held (block trailers not counted)
    disk_bytes: int  # bytes on disk, everything in the directory
    size: int | None  # the blob's full size, when known
    last_used: float

    @property
    def verified(self) -> bool:
        return self.registry is None

    @property
    def fraction(self) -> float | None:
        if self.verified:
            return 1.0
        if not self.size:
            return None
        return min(1.0, self.data_bytes / self.size)


def _scan(directory: Path, digest: str, registry: str | None) -> CachedBlob | None:
    blocks = data = disk = 0
    size = None
    newest = 0.0
    try:
        newest = directory.stat().st_mtime
        for entry in directory.iterdir():
            with suppress(OSError):
                st = entry.stat()
                if not entry.is_file():
                    continue
                disk += st.st_size
                newest = max(newest, st.st_mtime)
                if entry.name.isdigit():
                    blocks += 1
                    data += max(0, st.st_size - _TRAILER.size)
                elif entry.name == SIZE_FILE:
                    text = entry.read_text().strip()
                    size = int(text) if text.isdigit() else None
    except OSError:  # removed while we looked
        return None
    return CachedBlob(digest, registry, directory, blocks, data, disk, size, newest)


def cached_blobs(cache_dir: Path) -> list[CachedBlob]:
    """Every blob directory in the cache, verified and pending, most recently used first."""
    root = Path(cache_dir) / "v1"
    found: list[CachedBlob] = []
    blobs = root / "blobs"
    for alg in _subdirs(blobs):
        for hexdir in _subdirs(alg):
            digest = f"{alg.name}:{hexdir.name}"
            if is_digest(digest):
                blob = _scan(hexdir, digest, None)
                if blob is not None:
                    found.append(blob)
    for registry in _subdirs(root / "pending"):
        for alg in _subdirs(registry):
            for hexdir in _subdirs(alg):
                digest = f"{alg.name}:{hexdir.name}"
                if is_digest(digest):
                    blob = _scan(hexdir, digest, registry.name)
                    if blob is not None:
                        found.append(blob)
    return sorted(found, key=lambda b: b.last_used, reverse=True)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def _tree_bytes(path: Path) -> tuple[int, int]:
    """(files, bytes) under a directory."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
    return files, total


@dataclass(frozen=True)
class CacheSummary:
    blobs: list[CachedBlob]
    documents: int
    document_bytes: int
    tags: int

    @property
    def blob_bytes(self) -> int:
        return sum(b.disk_bytes for b in self.blobs)


def summary(cache_dir: Path) -> CacheSummary:
    root = Path(cache_dir) / "v1"
    documents, document_bytes = _tree_bytes(root / "documents")
    tags, _ = _tree_bytes(root / "tags")
    return CacheSummary(cached_blobs(cache_dir), documents, document_bytes, tags)


def prune(cache_dir: Path, to_bytes: int) -> int:
    """Evict least recently used blobs until the blob tier holds at most `to_bytes`."""
    if not (Path(cache_dir) / "v1").is_dir():
        return 0
    return DiskCache(Path(cache_dir), to_bytes).evict(to_bytes)


def clear(cache_dir: Path, digest: str | None = None) -> int:
    """Remove everything (blobs, documents, tags) or one digest (blob or document); bytes freed.

    The top directories stay: running mounts expect them.
    """
    if digest is not None and not is_digest(digest):
        raise ValueError(f"invalid digest {digest!r}")
    root = Path(cache_dir) / "v1"
    if not root.is_dir():
        return 0
    if digest is None:
        freed = 0
        for sub in SUBDIRS:
            for entry in _entries(root / sub):
                freed += _tree_bytes(entry)[1] if entry.is_dir() else _size(entry)
                _remove(entry)
        return freed
    freed = 0
    for blob in cached_blobs(cache_dir):
        if blob.digest == digest:
            freed += blob.disk_bytes
            _remove(blob.directory)
    algorithm, hexpart = digest.split(":", 1)
    document = root / "documents" / algorithm / hexpart
    freed += _size(document)
    _remove(document)
    return freed


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


# -- rendering ------------------------------------------------------------------------------


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
        f"documents: {info.documents} ({human(info.document_bytes)}); tags: {info.tags}",
    ]
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


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
