"""What a layer index holds, and its persisted form (the disk cache's derived area).

An index is computed from a blob verified against its digest, so it is keyed by that digest
alone (a base layer shared by a hundred images is indexed once). The file is checked twice
before it is trusted: the disk cache's trailer (length and CRC-32: torn or flipped files) and
here a magic line, the format version and the digest it was made for; anything else is
rebuilt.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from ..oci.entry import Entry, EntryKind
from .toc import Chunk

KIND = "layer-index"  # the disk cache's derived kind
FLAT_KIND = "layer-tar"  # a single-frame zstd layer, decompressed once (see Format.ZSTD)
FORMAT_VERSION = 3  # 2: mtimes in exact nanoseconds; 3: umoci's ignored xattrs dropped
MAGIC = b"regfs layer index\n"


class Format(enum.Enum):
    TAR = "tar"  # reads are byte ranges of the blob
    GZIP = "gzip"  # reads inflate from zran seek points (indexed_gzip)
    ZSTD = "zstd"  # reads decompress from frame starts, or from the flat file if `flat`
    # Indexed from the layer's own TOC (toc.py): reads fetch and check chunks; entries'
    # offsets point into the files' data stream, not the tar; diff_id is not known ("").
    ESTARGZ = "estargz"
    ZSTD_CHUNKED = "zstd:chunked"

    @property
    def from_toc(self) -> bool:
        return self in (Format.ESTARGZ, Format.ZSTD_CHUNKED)


@dataclass(frozen=True, slots=True)
class Span:
    """A piece of the layer that reads start from: uncompressed bytes [start, end) are made
    from compressed bytes [cstart, cend) of the blob (gzip: from the seek point's window), and
    `digest` is the sha256 of those compressed bytes (of the flat file's bytes for a flat
    zstd layer), checked before anything is inflated."""

    start: int
    end: int
    cstart: int
    cend: int
    digest: str


@dataclass(frozen=True)
class LayerIndex:
    digest: str  # the blob's
    entries: tuple[Entry, ...]  # every tar entry in tar order, duplicates kept
    format: Format
    diff_id: str  # sha256 of the uncompressed stream, as computed
    size: int  # of the uncompressed stream
    spans: tuple[Span, ...] = ()  # in order, covering [0, size); none for TAR
    gzip_index: bytes = b""  # indexed_gzip's exported seek points (windows included)
    flat: bool = False  # ZSTD only: read from the decompressed file (one frame, no seek points)
    chunks: tuple[Chunk, ...] = ()  # ESTARGZ, ZSTD_CHUNKED: in order, covering [0, size)

    def __hash__(self) -> int:
        return hash(self.digest)

    @functools.cached_property
    def span_starts(self) -> list[int]:
        """Where each span begins (uncompressed), for bisecting."""
        return [s.start for s in self.spans]

    @functools.cached_property
    def chunk_starts(self) -> list[int]:
        return [c.start for c in self.chunks]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerIndex) and other.digest == self.digest


class DamagedIndex(Exception):
    """A persisted index that is not one of ours, of another version, or of another blob."""


# -- the persisted form -------------------------------------------------------------------
#
#   MAGIC, u32 version, u32 length of the header, zlib(JSON header), gzip_index bytes


def encode(index: LayerIndex) -> bytes:
    header = {
        "digest": index.digest,
        "format": index.format.value,
        "diff_id": index.diff_id,
        "size": index.size,
        "flat": index.flat,
        "spans": [[s.start, s.end, s.cstart, s.cend, s.digest] for s in index.spans],
        "entries": [_entry_fields(e) for e in index.entries],
        "chunks": [[c.start, c.end, c.cstart, c.cend, c.inner, c.digest] for c in index.chunks],
    }
    # ensure_ascii: surrogate escapes (non-UTF-8 names) survive as \udcXX.
    packed = zlib.compress(json.dumps(header, ensure_ascii=True).encode("ascii"), 6)
    return MAGIC + struct.pack("<II", FORMAT_VERSION, len(packed)) + packed + index.gzip_index


def decode(data: bytes, digest: str) -> LayerIndex:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise DamagedIndex("not a layer index")
    version, length = struct.unpack_from("<II", data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise DamagedIndex(f"layer index format {version}, not {FORMAT_VERSION}")
    start = len(MAGIC) + 8
    try:
        header = json.loads(zlib.decompress(data[start : start + length]))
        if header["digest"] != digest:
            raise DamagedIndex(f"index of {header['digest']}, not {digest}")
        return LayerIndex(
            digest=digest,
            entries=tuple(_entry_from(f) for f in header["entries"]),
            format=Format(header["format"]),
            diff_id=str(header["diff_id"]),
            size=int(header["size"]),
            spans=tuple(Span(*s) for s in header["spans"]),
            gzip_index=data[start + length :],
            flat=bool(header["flat"]),
            chunks=tuple(Chunk(*c) for c in header.get("chunks", ())),
        )
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise DamagedIndex(f"unreadable layer index: {e}") from e


def _entry_fields(e: Entry) -> list[Any]:
    return [
        e.path,
        e.kind.value,
        e.mode,
        e.uid,
        e.gid,
        e.mtime_ns,
        e.size,
        e.linkname,
        e.devmajor,
        e.devminor,
        [[name, base64.b64encode(value).decode()] for name, value in e.xattrs],
        e.offset,
        None if e.sparse is None else [list(s) for s in e.sparse],
    ]


_KINDS = {kind.value: kind for kind in EntryKind}


def _entry_from(f: list[Any]) -> Entry:
    # Positional and without the enum's call: a remount's first listing loads every entry.
    path, kind, mode, uid, gid, mtime_ns, size, linkname, major, minor, xattrs, offset, sparse = f
    return Entry(
        path,
        _KINDS[kind],
        mode,
        uid,
        gid,
        mtime_ns,
        size,
        linkname,
        major,
        minor,
        tuple((name, base64.b64decode(value)) for name, value in xattrs) if xattrs else (),
        offset,
        None if sparse is None else tuple((a, b) for a, b in sparse),
    )
