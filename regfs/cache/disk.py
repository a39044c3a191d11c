"""The disk tier of the cache, and the one description of its layout: every path below a
cache directory is made here, for the mounts and for `regfs cache` alike.

A cache directory is shared by concurrent mounts and by `regfs cache prune/clear`, safely:
every file is written to a temporary name and renamed into place, a directory removed under
a writer is made again, and each checked file ends with a 12-byte trailer of its length and
CRC-32, so a torn or flipped file is found, removed and fetched (or computed) again. Removing
anything at any moment costs at most a refetch, never a wrong byte.

    v1/block-size                            the block size of every block file here
    v1/blobs/<alg>/<hex>/<index>             blocks of blobs verified against their digest
    v1/blobs/<alg>/<hex>/verified            marker: these blocks matched the digest
    v1/blobs/<alg>/<hex>/size                the blob's full size, as decimal text
    v1/pending/<registry>/<alg>/<hex>/...    the same for blobs not yet verified, per registry
                                             so one registry's unverified bytes never serve
                                             another; promote() moves them to blobs/
    v1/documents/<alg>/<hex>                 manifests and configs by digest
    v1/tags/<registry>/<repo>/_tags/<tag>    the digest a tag last resolved to (for --offline)
    v1/derived/<kind>/<alg>/<hex>            an artifact computed from the blob <alg>:<hex>,
                                             e.g. a layer index; <kind> names what it is

Block, document, tag and derived files carry the trailer; the marker and size files do not.
Eviction (and `regfs cache prune`) removes whole blob directories, least recently used first
(the newest mtime in the directory), then derived artifacts the same way; documents and tags
are small and stay until `regfs cache clear`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegfsError
from ..oci.reference import is_digest
from . import blockfiles

# The checked files live with the other block-file code; imported from here as before.
from .blockfiles import TRAILER
from .blockfiles import read_checked as read_checked
from .blockfiles import write_atomic as write_atomic

LAYOUT = "v1"
AREAS = ("blobs", "pending", "documents", "tags", "derived")  # the top directories of LAYOUT
SIZE_FILE = "size"
VERIFIED_MARKER = "verified"
BLOCK_SIZE_FILE = "block-size"
_KIND = re.compile(r"[a-z0-9][a-z0-9._-]*")


class BlockSizeMismatch(RegfsError):
    """A cache directory made with another --block-size."""


# -- what a scan finds ------------------------------------------------------------------


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


@dataclass(frozen=True)
class CachedArtifact:
    """One derived artifact on disk."""

    kind: str
    digest: str  # of the blob it was derived from
    path: Path
    disk_bytes: int
    last_used: float


@dataclass(frozen=True)
class CacheSummary:
    blobs: list[CachedBlob]  # most recently used first
    derived: list[CachedArtifact]  # most recently used first
    documents: int
    document_bytes: int
    tags: int

    @property
    def blob_bytes(self) -> int:
        return sum(b.disk_bytes for b in self.blobs)

    @property
    def derived_bytes(self) -> int:
        return sum(a.disk_bytes for a in self.derived)


# -- the disk tier -----------------------------------------------------------------------


class DiskCache:
    """The persistent tier. Every method is blocking: call it through trio.to_thread (or
    inline for small files, where the hop costs more than the work)."""

    def __init__(self, root: Path, max_bytes: int, block_size: int | None = None) -> None:
        self.root = Path(root) / LAYOUT
        self.max_bytes = max_bytes
        self.written_since_evict = 0
        self.index = blockfiles.BlockIndex()  # has_block without a stat per block
        for area in AREAS:
            (self.root / area).mkdir(parents=True, exist_ok=True)
        if block_size is not None:
            self._check_block_size(block_size)

    def _check_block_size(self, block_size: int) -> None:
        """Block files are named by index: one cache directory holds one block size only, or
        block 1 of a 1M mount would be read from a 4M mount's block 1."""
        path = self.root / BLOCK_SIZE_FILE
        with suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(str(block_size))
        recorded = path.read_text().strip()
        if recorded != str(block_size):
            raise BlockSizeMismatch(
                f"cache {self.root.parent} holds blocks of {recorded} bytes, not {block_size}: "
                "use the same --block-size or another --cache-dir"
            )

    # -- paths --------------------------------------------------------------------------

    def verified_dir(self, digest: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "blobs" / algorithm / hexpart

    def pending_dir(self, digest: str, registry: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "pending" / _safe_component(registry) / algorithm / hexpart

    def _blob_places(self, digest: str, registry: str | None) -> list[Path]:
        """Where a blob's blocks may be: verified, and pending for `registry` (None: any)."""
        algorithm, hexpart = _split(digest)
        pending = self.root / "pending"
        registries = [_safe_component(registry)] if registry else _names(pending)
        return [self.verified_dir(digest)] + [pending / r / algorithm / hexpart for r in registries]

    def _document_path(self, digest: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "documents" / algorithm / hexpart

    def _tag_path(self, registry: str, repo: str, tag: str) -> Path:
        return self.root / "tags" / _safe_component(registry) / repo / "_tags" / tag

    def _derived_path(self, kind: str, digest: str) -> Path:
        if not _KIND.fullmatch(kind):
            raise ValueError(f"invalid kind of derived artifact {kind!r}")
        algorithm, hexpart = _split(digest)
        return self.root / "derived" / kind / algorithm / hexpart

    # -- blocks -------------------------------------------------------------------------

    def is_verified(self, digest: str) -> bool:
        return (self.verified_dir(digest) / VERIFIED_MARKER).exists()

    # Pending first, then verified: promote() moves files in that direction, so a block in
    # transit is found in one of the two and never taken for missing.

    def read_block(self, digest: str, index: int, registry: str) -> bytes | None:
        pending = ((registry, digest), self.pending_dir(digest, registry))
        for key, directory in (pending, (digest, self.verified_dir(digest))):
            data = read_checked(directory / str(index))
            if data is not None:
                self.index.add(key, index)
                return data
            self.index.discard(key, index)  # gone (pruned, damaged): fetched again
        return None

    def has_block(self, digest: str, index: int, registry: str) -> bool:
        """From the index (blockfiles.BlockIndex says why that is safe): a guess that a
        read_block confirms, never a promise. Keys: (registry, digest) pending, digest."""
        return self.index.has(
            (registry, digest), index, lambda: self.pending_dir(digest, registry)
        ) or self.index.has(digest, index, lambda: self.verified_dir(digest))

    def unverify(self, digest: str) -> None:
        """A verified blob lost a block: what is fetched again must be checked again."""
        with suppress(OSError):
            (self.verified_dir(digest) / VERIFIED_MARKER).unlink()

    def write_block(
        self, digest: str, index: int, registry: str, data: bytes, blob_size: int | None = None
    ) -> None:
        # Always pending: only promote(), after the digest matched, puts blocks where every
        # registry may read them.
        directory = self.pending_dir(digest, registry)
        write_atomic(directory / str(index), data, trailer=True)
        self.index.add((registry, digest), index)
        if blob_size is not None and not (directory / SIZE_FILE).exists():
            # Lets `regfs cache info` say how much of the blob is cached.
            write_atomic(directory / SIZE_FILE, str(blob_size).encode(), trailer=False)
        self.written_since_evict += len(data)
        if self.written_since_evict > max(self.max_bytes // 20, 64 << 20):
            self.evict()

    def promote(self, digest: str, registry: str) -> None:
        """Move a verified blob's pending blocks where every registry may use them."""
        source = self.pending_dir(digest, registry)
        target = self.verified_dir(digest)
        target.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            for entry in source.iterdir():
                if entry.name.isdigit() or entry.name == SIZE_FILE:
                    with suppress(OSError):
                        os.replace(entry, target / entry.name)
                        if entry.name.isdigit():
                            self.index.add(digest, int(entry.name))
            shutil.rmtree(source, ignore_errors=True)
        self.index.forget(source)
        write_atomic(target / VERIFIED_MARKER, b"", trailer=False)

    def purge(self, digest: str, registry: str | None = None) -> None:
        for directory in self._blob_places(digest, registry):
            shutil.rmtree(directory, ignore_errors=True)
            self.index.forget(directory)

    def touch(self, digest: str, registry: str) -> None:
        """Mark a blob as used now: eviction goes by last use (newest mtime in its directory)."""
        for directory in (self.verified_dir(digest), self.pending_dir(digest, registry)):
            with suppress(OSError):
                os.utime(directory)

    # -- documents and tags (small, content-addressed or advisory) ----------------------

    def put_document(self, digest: str, raw: bytes) -> None:
        write_atomic(self._document_path(digest), raw, trailer=True)

    def get_document(self, digest: str) -> bytes | None:
        return read_checked(self._document_path(digest))

    def put_tag(self, registry: str, repo: str, tag: str, digest: str) -> None:
        write_atomic(self._tag_path(registry, repo, tag), digest.encode(), trailer=True)

    def get_tag(self, registry: str, repo: str, tag: str) -> str | None:
        data = read_checked(self._tag_path(registry, repo, tag))
        text = data.decode(errors="replace") if data else None
        return text if text and is_digest(text) else None

    def cached_tags(self, registry: str, repo: str) -> list[str]:
        with suppress(OSError):
            return sorted(os.listdir(self._tag_path(registry, repo, "x").parent))
        return []

    def cached_repos(self, registry: str) -> list[str]:
        base = self.root / "tags" / _safe_component(registry)
        return (
            sorted(str(p.parent.relative_to(base)) for p in base.rglob("_tags"))
            if base.is_dir()
            else []
        )

    # -- derived artifacts ----------------------------------------------------------------

    def put_derived(self, kind: str, digest: str, data: bytes) -> None:
        """Keep an artifact computed from the blob `digest` (`kind`: lowercase, e.g. a
        "gzip-index"); it is evicted after blocks, since making it again reads the blob."""
        write_atomic(self._derived_path(kind, digest), data, trailer=True)

    def get_derived(self, kind: str, digest: str) -> bytes | None:
        path = self._derived_path(kind, digest)
        data = read_checked(path)
        if data is not None:
            with suppress(OSError):
                os.utime(path)  # used now: eviction goes by last use
        return data

    def derived_path(self, kind: str, digest: str) -> Path:
        """Where a derived artifact too big for memory lives (e.g. a decompressed layer), for
        the caller to write to a temporary name beside it and rename into place; such files
        carry no trailer (their maker checks them) and are evicted and cleared as any other."""
        path = self._derived_path(kind, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- what the cache holds: scan, eviction, clear --------------------------------------

    def blobs(self) -> list[CachedBlob]:
        """Every blob directory, verified and pending, most recently used first."""
        found: list[CachedBlob] = []
        places: list[tuple[str | None, Path]] = [(None, a) for a in _subdirs(self.root / "blobs")]
        places += [
            (registry.name, alg)
            for registry in _subdirs(self.root / "pending")
            for alg in _subdirs(registry)
        ]
        for registry, alg in places:
            for hexdir in _subdirs(alg):
                digest = f"{alg.name}:{hexdir.name}"
                blob = _scan_blob(hexdir, digest, registry) if is_digest(digest) else None
                if blob is not None:
                    found.append(blob)
        return sorted(found, key=lambda b: b.last_used, reverse=True)

    def artifacts(self) -> list[CachedArtifact]:
        """Every derived artifact, most recently used first."""
        found: list[CachedArtifact] = []
        for kind in _subdirs(self.root / "derived"):
            for alg in _subdirs(kind):
                for path in _files(alg):
                    digest = f"{alg.name}:{path.name}"
                    if is_digest(digest):
                        with suppress(OSError):  # removed while we looked
                            st = path.stat()
                            found.append(
                                CachedArtifact(kind.name, digest, path, st.st_size, st.st_mtime)
                            )
        return sorted(found, key=lambda a: a.last_used, reverse=True)

    def scan(self) -> CacheSummary:
        documents, document_bytes = _tree_usage(self.root / "documents")
        tags, _ = _tree_usage(self.root / "tags")
        return CacheSummary(self.blobs(), self.artifacts(), documents, document_bytes, tags)

    def _eviction_order(self) -> list[tuple[Path, int]]:
        """(path, bytes) of what eviction may remove, first to go first: blob directories,
        least recently used first, then derived artifacts (making one again reads a blob)."""
        order = [(b.directory, b.disk_bytes) for b in reversed(self.blobs())]
        return order + [(a.path, a.disk_bytes) for a in reversed(self.artifacts())]

    def usage(self) -> int:
        """Bytes that eviction counts: blob directories and derived artifacts."""
        return sum(size for _path, size in self._eviction_order())

    def evict(self, max_bytes: int | None = None) -> int:
        """Remove blob directories, then derived artifacts, until under the limit; bytes removed."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        self.written_since_evict = 0
        oldest_first = self._eviction_order()
        total = sum(size for _path, size in oldest_first)
        removed = 0
        for path, size in oldest_first:
            if total <= limit:
                break
            _remove(path)
            self.index.forget(path)
            total -= size
            removed += size
        return removed

    def clear(self, digest: str | None = None) -> int:
        """Remove everything, or all that is kept of one digest (its blocks wherever they
        are, its document, what was derived from it); bytes freed. The top directories stay:
        running mounts expect them."""
        if digest is None:
            doomed = [
                self.root / area / name for area in AREAS for name in _names(self.root / area)
            ]
        else:
            kinds = _names(self.root / "derived")
            doomed = [*self._blob_places(digest, None), self._document_path(digest)]
            doomed += [self._derived_path(kind, digest) for kind in kinds if _KIND.fullmatch(kind)]
        freed = 0
        for path in doomed:
            freed += _tree_usage(path)[1]
            _remove(path)
        self.index.forget()
        return freed


# -- `regfs cache`: the same, on a directory that may hold no cache -----------------------


def open_existing(cache_dir: Path) -> DiskCache | None:
    """The cache in `cache_dir`, or None where there is none (and none is made)."""
    if not (Path(cache_dir) / LAYOUT).is_dir():
        return None
    return DiskCache(Path(cache_dir), max_bytes=0)


def scan(cache_dir: Path) -> CacheSummary:
    disk = open_existing(cache_dir)
    return disk.scan() if disk is not None else CacheSummary([], [], 0, 0, 0)


def prune(cache_dir: Path, to_bytes: int) -> int:
    """Evict least recently used blobs (then derived artifacts) until at most `to_bytes`."""
    disk = open_existing(cache_dir)
    return disk.evict(to_bytes) if disk is not None else 0


def clear(cache_dir: Path, digest: str | None = None) -> int:
    """Remove everything, or one digest (blob, document, derived artifacts); bytes freed."""
    if digest is not None and not is_digest(digest):
        raise ValueError(f"invalid digest {digest!r}")
    disk = open_existing(cache_dir)
    return disk.clear(digest) if disk is not None else 0


# -- helpers ------------------------------------------------------------------------------


def _split(digest: str) -> tuple[str, str]:
    if not is_digest(digest):
        raise ValueError(f"invalid digest {digest!r}")
    algorithm, hexpart = digest.split(":", 1)
    return algorithm, hexpart


def _safe_component(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _scan_blob(directory: Path, digest: str, registry: str | None) -> CachedBlob | None:
    blocks = data = disk = 0
    size = None
    try:
        newest = directory.stat().st_mtime
        for entry in _files(directory):
            with suppress(OSError):
                st = entry.stat()
                disk += st.st_size
                newest = max(newest, st.st_mtime)
                if entry.name.isdigit():
                    blocks += 1
                    data += max(0, st.st_size - TRAILER.size)
                elif entry.name == SIZE_FILE:
                    text = entry.read_text().strip()
                    size = int(text) if text.isdigit() else None
    except OSError:  # removed while we looked
        return None
    return CachedBlob(digest, registry, directory, blocks, data, disk, size, newest)


def _listing(path: Path) -> Iterator[os.DirEntry[str]]:
    # Gone or not a directory (removed under us): nothing there.
    with suppress(OSError), os.scandir(path) as entries:
        yield from entries


def _subdirs(path: Path) -> list[Path]:
    return sorted(Path(e.path) for e in _listing(path) if e.is_dir(follow_symlinks=False))


def _files(path: Path) -> list[Path]:
    return [Path(e.path) for e in _listing(path) if e.is_file()]


def _names(path: Path) -> list[str]:
    return [e.name for e in _listing(path)]


def _tree_usage(path: Path) -> tuple[int, int]:
    """(files, bytes) of a file, or of everything under a directory; (0, 0) if it is gone."""
    if not path.is_dir():
        with suppress(OSError):
            return 1, path.lstat().st_size
        return 0, 0
    files = total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
    return files, total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()
