"""eStargz (stargz-snapshotter's docs/estargz.md) and legacy stargz: the footer, the TOC
(`stargz.index.json`) and the chunks it lists, as a toc.TocLayout.

An eStargz blob is gzip members one after another: each regular file's chunk begins a new
member at the TOC's `offset` (its bytes from `innerOffset` of what that member inflates to),
the TOC is a tar entry in a member of its own, and the blob ends with a footer, an empty
gzip member whose Extra field says where the TOC's member begins:

    51 bytes (eStargz): header, XLEN=26, subfield 'S''G' LEN=22, "%016xSTARGZ", empty deflate
    47 bytes (legacy stargz): header, XLEN=22, "%016xSTARGZ", empty deflate
"""

from __future__ import annotations

import bisect
import io
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..oci.entry import Entry
from .entries import ENCODING, ERRORS, entry_of
from .toc import (
    ESTARGZ_TOC_DIGEST,
    MAX_TOC_BYTES,
    FullPassNeeded,
    LayoutBuilder,
    TocError,
    TocLayout,
    check_digest,
    entries_json,
)

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
TOC_NAME = "stargz.index.json"
_HEADER = b"\x1f\x8b\x08\x04"  # gzip magic, deflate, FEXTRA
_EMPTY = b"\x01\x00\x00\xff\xff" + bytes(8)  # an empty final stored block, CRC 0, size 0


def parse_footer(tail: bytes) -> tuple[int, int]:
    """(where the TOC's gzip member begins, the footer's size) from the blob's last bytes."""
    f = tail[-FOOTER_SIZE:]
    if (
        len(f) == FOOTER_SIZE
        and f[:4] == _HEADER
        and f[10:16] == b"\x1a\x00SG\x16\x00"
        and f[32:38] == b"STARGZ"
        and f[38:] == _EMPTY
    ):
        return _hex_offset(f[16:32]), FOOTER_SIZE
    f = tail[-LEGACY_FOOTER_SIZE:]
    if (
        len(f) == LEGACY_FOOTER_SIZE
        and f[:4] == _HEADER
        and f[10:12] == b"\x16\x00"
        and f[28:34] == b"STARGZ"
        and f[34:] == _EMPTY
    ):
        return _hex_offset(f[12:28]), LEGACY_FOOTER_SIZE
    raise TocError("the blob does not end with an eStargz or stargz footer")


def _hex_offset(text: bytes) -> int:
    try:
        return int(text.decode("ascii"), 16)
    except (UnicodeDecodeError, ValueError) as e:
        raise TocError(f"the stargz footer's offset {text!r} is not hex") from e


def inflate_member(data: bytes, limit: int) -> bytes:
    """The first gzip member of `data`, inflated, at most `limit` bytes of it."""
    try:
        return zlib.decompressobj(31).decompress(data, limit)
    except zlib.error as e:
        raise TocError(f"not gzip: {e}") from e


def parse(
    toc_member: bytes,
    toc_offset: int,
    blob_size: int,
    footer_size: int,
    annotations: Mapping[str, str],
) -> TocLayout:
    """The layout of an eStargz layer from its TOC member (blob bytes [toc_offset, blob_size -
    footer_size)), checked against the layer's `containerd.io/snapshot/stargz/toc.digest`."""
    raw = inflate_member(toc_member, MAX_TOC_BYTES + (64 << 10))
    try:
        with tarfile.open(
            fileobj=io.BytesIO(raw), mode="r:", encoding=ENCODING, errors=ERRORS
        ) as tar:
            member = tar.next()
    except tarfile.TarError as e:
        raise TocError(f"the stargz TOC member is not a tar: {e}") from e
    if member is None or member.name != TOC_NAME or not member.isfile():
        raise TocError(f"the stargz TOC member does not begin with {TOC_NAME}")
    toc_json = raw[member.offset_data : member.offset_data + member.size]
    if len(toc_json) != member.size:
        raise TocError(f"{TOC_NAME} is cut short")
    toc_digest = annotations.get(ESTARGZ_TOC_DIGEST, "")
    if not toc_digest:
        raise FullPassNeeded(f"no {ESTARGZ_TOC_DIGEST} annotation to check {TOC_NAME} against")
    check_digest(toc_json, toc_digest, TOC_NAME)
    layout = _chunks(entries_json(toc_json, TOC_NAME), toc_offset)
    # The TOC is a tar entry like any other (umoci shows it): its bytes are the ones just
    # checked, so its chunk's digest is the TOC digest.
    own = entry_of(member)
    assert own is not None
    own = replace(own, offset=layout.size)
    layout.entries.append(own)
    layout.size += own.size
    end = blob_size - footer_size
    layout.chunk(own, 0, own.size, toc_offset, end, member.offset_data, toc_digest)
    return layout.finish()


def _chunks(fields: list[dict[str, Any]], toc_offset: int) -> LayoutBuilder:
    # A chunk's gzip member ends where the next one with data begins (or the TOC's).
    starts = sorted({int(f.get("offset", 0)) for f in fields if f.get("offset")} | {toc_offset})
    layout = LayoutBuilder.new()
    current: tuple[Entry, object] | None = None  # the last file, and its TOC name
    for f in fields:
        kind = f.get("type")
        if kind == "chunk":
            if current is None or f.get("name") != current[1]:
                raise TocError(f"a TOC chunk of {f.get('name')!r} follows no file of that name")
        elif kind == "reg":
            made = layout.file(f)
            current = None if made is None else (made, f.get("name"))
        else:
            layout.file(f)
            continue
        assert current is not None
        entry = current[0]
        at = int(f.get("chunkOffset", 0))
        length = int(f.get("chunkSize", 0)) or entry.size - at
        if entry.size == 0:
            continue
        offset = int(f.get("offset", 0))
        digest = f.get("chunkDigest")
        if not digest or not offset:
            raise FullPassNeeded(f"{entry.path!r}: a chunk without chunkDigest or offset")
        k = bisect.bisect_right(starts, offset)
        cend = starts[k] if k < len(starts) else toc_offset
        layout.chunk(entry, at, length, offset, cend, int(f.get("innerOffset", 0)), str(digest))
    return layout
