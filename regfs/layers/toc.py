"""Layers that carry their own table of contents (eStargz, zstd:chunked): the model both
formats are turned into, and what they share.

A TOC lists every tar entry and, for each regular file, where its compressed chunks are in
the blob and the sha256 of each chunk's uncompressed bytes. The layer index made from it
(index.py, Format.ESTARGZ / Format.ZSTD_CHUNKED) holds the entries as for any layer, and
`Chunk`s instead of spans: the files' bytes laid one after another in a *data stream* that
exists only in regfs (an entry's `offset` points into it), each chunk mapping a piece of it
to a compressed range of the blob. A read fetches only its chunks' ranges and checks each
chunk's bytes against the TOC's digest before returning any of them.
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..oci.entry import Entry, EntryKind
from .entries import IGNORED_XATTRS, clean_path

ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_POSITION = (
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
)
ZSTD_CHECKSUM = (
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
)

# A TOC is JSON in memory: one far bigger than any real layer's is refused, not parsed.
MAX_TOC_BYTES = 256 << 20


class TocError(Exception):
    """A TOC that is missing, malformed or does not match its digest (the message says which
    check failed)."""


class FullPassNeeded(TocError):
    """A TOC that cannot stand for its tar: chunks without digests (legacy stargz) cannot be
    checked, and a name the producer could not write in JSON (Go writes bytes that are not
    UTF-8 as U+FFFD) is not the tar's. Such a layer is indexed by the full pass instead."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes [start, end) of the layer's data stream: made by decompressing blob bytes
    [cstart, cend) and taking `end - start` bytes from `inner` on; `digest` is the sha256 of
    those bytes ("" for a run of zeros the TOC states without data)."""

    start: int
    end: int
    cstart: int
    cend: int
    inner: int
    digest: str


@dataclass(frozen=True)
class TocLayout:
    entries: tuple[Entry, ...]
    chunks: tuple[Chunk, ...]  # in data-stream order, covering [0, size)
    size: int  # of the data stream


def toc_kind(annotations: Mapping[str, str]) -> str | None:
    """'estargz' or 'zstd:chunked' when the layer descriptor's annotations announce a TOC.
    zstd:chunked first: stargz-snapshotter's zstd:chunked layers carry the eStargz TOC digest
    annotation too, but no gzip footer."""
    if any(k in annotations for k in ZSTD_POSITION) and any(
        k in annotations for k in ZSTD_CHECKSUM
    ):
        return "zstd:chunked"
    if ESTARGZ_TOC_DIGEST in annotations:
        return "estargz"
    return None


def first_of(annotations: Mapping[str, str], keys: Sequence[str]) -> str:
    for key in keys:
        if key in annotations:
            return annotations[key]
    raise TocError(f"no annotation {keys[0]}")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, expected: str, what: str) -> None:
    algorithm, _, _ = expected.partition(":")
    if algorithm != "sha256":
        raise TocError(f"{what}: digest {expected!r} is not sha256")
    if sha256(data) != expected:
        raise TocError(f"{what} does not match its digest {expected}")


_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


@functools.lru_cache(maxsize=4096)  # a layer's entries share a few mtimes
def parse_time_ns(text: str) -> int:
    """RFC 3339 (Go's time.Time in JSON, to the nanosecond) as nanoseconds since the epoch;
    Go's zero time and an empty string are 0."""
    if not text:
        return 0
    m = _TIME.match(text)
    if m is None:
        raise TocError(f"a TOC time {text!r} is not RFC 3339")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year == 1:  # Go's zero time: no mtime
        return 0
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    fraction = (m.group(7) or "").ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction)


_KINDS = {
    "reg": EntryKind.FILE,
    "dir": EntryKind.DIR,
    "symlink": EntryKind.SYMLINK,
    "hardlink": EntryKind.HARDLINK,
    "char": EntryKind.CHAR_DEVICE,
    "block": EntryKind.BLOCK_DEVICE,
    "fifo": EntryKind.FIFO,
}


def entry_from_toc(fields: Mapping[str, Any], offset: int) -> Entry | None:
    """A TOC entry ("reg", "dir", ... ; both formats use the same field names) as the entry
    a tar member would give; None for types without one ("chunk"). `offset`: where the
    file's bytes begin in the data stream."""
    kind = _KINDS.get(str(fields.get("type", "")))
    if kind is None:
        return None
    name = str(fields.get("name", ""))
    link = str(fields.get("linkName", ""))
    if "\ufffd" in name or "\ufffd" in link:
        raise FullPassNeeded(f"the TOC names {name!r}: not the tar's bytes (not UTF-8)")
    xattrs = tuple(
        (str(key), base64.b64decode(value))
        for key, value in sorted((fields.get("xattrs") or {}).items())
        if key not in IGNORED_XATTRS
    )
    is_device = kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE)
    return Entry(
        path=clean_path(name),
        kind=kind,
        mode=int(fields.get("mode", 0)) & 0o7777,
        uid=int(fields.get("uid", 0)),
        gid=int(fields.get("gid", 0)),
        mtime_ns=parse_time_ns(str(fields.get("modtime", ""))),
        size=int(fields.get("size", 0)) if kind is EntryKind.FILE else 0,
        linkname=(
            clean_path(link)
            if kind is EntryKind.HARDLINK
            else link
            if kind is EntryKind.SYMLINK
            else ""
        ),
        devmajor=int(fields.get("devMajor", 0)) if is_device else 0,
        devminor=int(fields.get("devMinor", 0)) if is_device else 0,
        xattrs=xattrs,
        offset=offset,
    )


def entries_json(raw: bytes, what: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(raw)
        entries = document["entries"] or []  # an empty layer's: null (Go's nil slice)
        if not isinstance(entries, list):
            raise TypeError("entries is not a list")
        return entries
    except (ValueError, KeyError, TypeError) as e:
        raise TocError(f"{what}: not a TOC ({e})") from e


@dataclass
class LayoutBuilder:
    """Lays the files of a TOC one after another in the data stream, and their chunks."""

    entries: list[Entry]
    chunks: list[Chunk]
    size: int = 0

    @classmethod
    def new(cls) -> LayoutBuilder:
        return cls([], [])

    def file(self, fields: Mapping[str, Any]) -> Entry | None:
        """The entry, its data placed at the end of the data stream so far."""
        entry = entry_from_toc(fields, self.size)
        if entry is not None:
            self.entries.append(entry)
            if entry.kind is EntryKind.FILE:
                self.size += entry.size
        return entry

    def chunk(
        self, file: Entry, at: int, length: int, cstart: int, cend: int, inner: int, digest: str
    ) -> None:
        """Bytes [at, at+length) of `file` come from blob bytes [cstart, cend)."""
        if length <= 0:
            return
        if at < 0 or at + length > file.size or (cend <= cstart and digest):
            raise TocError(f"a TOC chunk of {file.path!r} lies outside it ({at}+{length})")
        start = file.offset + at
        self.chunks.append(Chunk(start, start + length, cstart, cend, inner, digest))

    def finish(self) -> TocLayout:
        chunks = sorted(self.chunks, key=lambda c: c.start)
        at = 0
        for c in chunks:
            if c.start != at:
                raise TocError(f"the TOC's chunks leave a gap or overlap at {at}")
            at = c.end
        if at != self.size:
            raise TocError(f"the TOC's chunks cover {at} bytes of the files' {self.size}")
        return TocLayout(tuple(self.entries), tuple(chunks), self.size)
