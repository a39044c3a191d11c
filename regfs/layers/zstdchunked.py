"""zstd:chunked (containers/storage pkg/chunked): the TOC ("manifest") and the chunks it
lists, as a toc.TocLayout.

The layer is zstd frames: each regular file's bytes are frames of their own at
`[offset, endOffset)` of the blob (a big file's chunks each a frame, from its `offset` to the
next chunk's), and the TOC is zstd-compressed JSON inside a skippable frame, which a plain
zstd reader passes over. The layer's annotations say where it is:

    …zstd-chunked.manifest-position  "<offset>:<compressed length>:<uncompressed length>:1"
    …zstd-chunked.manifest-checksum  sha256 of the compressed bytes at that position

under `io.github.containers.` (containers/storage since 1.45) or `io.containers.` (skopeo 1.9).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import zstandard

from ..oci.entry import Entry
from .toc import (
    MAX_TOC_BYTES,
    ZSTD_CHECKSUM,
    ZSTD_POSITION,
    LayoutBuilder,
    TocError,
    TocLayout,
    check_digest,
    entries_json,
    first_of,
)

MANIFEST_TYPE_CRFS = 1  # the only type containers/storage writes
SKIPPABLE_HEADER = 8  # a skippable frame's magic and size, before the manifest


def position(annotations: Mapping[str, str], blob_size: int) -> tuple[int, int, int]:
    """(offset, compressed length, uncompressed length) of the TOC in the blob."""
    text = first_of(annotations, ZSTD_POSITION)
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError as e:
        raise TocError(f"zstd:chunked manifest position {text!r} is not numbers") from e
    if len(parts) != 4 or parts[3] != MANIFEST_TYPE_CRFS:
        raise TocError(f"zstd:chunked manifest position {text!r}: not offset:size:size:1")
    offset, length, uncompressed, _ = parts
    if offset < 0 or length <= 0 or offset + length > blob_size:
        raise TocError(f"zstd:chunked manifest position {text!r} lies outside the blob")
    if not 0 < uncompressed <= MAX_TOC_BYTES:
        raise TocError(f"zstd:chunked manifest of {uncompressed} bytes: refused")
    return offset, length, uncompressed


def parse(manifest: bytes, annotations: Mapping[str, str], uncompressed: int) -> TocLayout:
    """The layout from the compressed manifest, checked against its annotated checksum."""
    check_digest(manifest, first_of(annotations, ZSTD_CHECKSUM), "the zstd:chunked manifest")
    try:
        raw = zstandard.ZstdDecompressor().decompress(manifest, max_output_size=uncompressed)
    except zstandard.ZstdError as e:
        raise TocError(f"the zstd:chunked manifest does not decompress: {e}") from e
    offset = _manifest_offset(annotations)
    return _chunks(entries_json(raw, "the zstd:chunked manifest"), offset)


def _manifest_offset(annotations: Mapping[str, str]) -> int:
    return int(first_of(annotations, ZSTD_POSITION).split(":")[0])  # checked by position()


def _chunks(fields: list[dict[str, Any]], manifest_at: int) -> TocLayout:
    layout = LayoutBuilder.new()
    # Where frames with file data begin: a piece without an end of its own (stargz-
    # snapshotter's zstd:chunked, which writes the eStargz TOC fields: no endOffset; its
    # frames go on with the next entries' headers) ends where the next one begins.
    # The last such piece ends where the manifest's skippable frame begins (its 8-byte
    # header: magic, size).
    frame_at = max(0, manifest_at - SKIPPABLE_HEADER)
    starts = sorted({int(f["offset"]) for f in fields if f.get("offset")} | {frame_at})

    def next_start(at: int) -> int:
        k = bisect.bisect_right(starts, at)
        return starts[k] if k < len(starts) else frame_at

    # The chunks of the file being read (entry fields) until the next file; each chunk's
    # frames end where the next one's begin, the last one's at the file's endOffset.
    pending: list[dict[str, Any]] = []
    file: tuple[Entry, dict[str, Any]] | None = None

    def close() -> None:
        if file is None:
            return
        entry, own = file
        if entry.size == 0:
            return
        end = int(own.get("endOffset", 0))
        if not pending:  # one piece: the file's digest checks it
            digest = str(own.get("digest", ""))
            if not digest:
                raise TocError(f"zstd:chunked entry {entry.path!r} has no digest")
            cstart = int(own.get("offset", 0))
            cend = end or next_start(cstart)
            layout.chunk(entry, 0, entry.size, cstart, cend, _inner(own), digest)
            return
        for i, c in enumerate(pending):
            at = int(c.get("chunkOffset", 0))
            later = pending[i + 1] if i + 1 < len(pending) else None
            length = int(c.get("chunkSize", 0)) or entry.size - at
            cstart = int(c.get("offset", 0))
            if later is not None and int(later["offset"]) > cstart:
                cend = int(later["offset"])
            else:
                cend = end or next_start(cstart)
            zeros = c.get("chunkType") == "zeros"
            digest = "" if zeros else str(c.get("chunkDigest", ""))
            if not zeros and not digest:
                raise TocError(f"zstd:chunked chunk of {entry.path!r} has no chunkDigest")
            layout.chunk(entry, at, length, cstart, cend, _inner(c), digest)

    for f in fields:
        kind = f.get("type")
        if kind == "chunk":
            if file is None or f.get("name") != file[1].get("name"):
                raise TocError(f"a zstd:chunked chunk of {f.get('name')!r} follows no file")
            pending.append(f)
            continue
        close()
        pending, file = [], None
        made = layout.file(f)
        if made is not None and kind == "reg":
            file = (made, f)
            if "chunkSize" in f or "chunkDigest" in f:
                pending.append(f)  # the file's first chunk is described by its own entry
    close()
    return layout.finish()


def _inner(fields: Mapping[str, Any]) -> int:
    return int(fields.get("innerOffset", 0))
