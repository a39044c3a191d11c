"""The eStargz and zstd:chunked TOC parsers over real layers (tests/unit/toc_blobs.py), and
the corners a real producer does not make: a TOC that is not the annotated one, damaged
annotations, chunks that leave gaps, Go's times."""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any

import pytest
import zstandard

from regfs.layers import estargz, zstdchunked
from regfs.layers.index import Format, LayerIndex, decode, encode
from regfs.layers.toc import (
    FullPassNeeded,
    LayoutBuilder,
    TocError,
    TocLayout,
    entry_from_toc,
    parse_time_ns,
    sha256,
    toc_kind,
)
from regfs.layers.tocfiles import _unpack
from regfs.oci.entry import EntryKind
from tests.unit.toc_blobs import (
    CTR_ZSTD_CHUNKED_ANNOTATIONS,
    CTR_ZSTD_CHUNKED_BLOB,
    ESTARGZ_ANNOTATIONS,
    ESTARGZ_BLOB,
    ZSTD_CHUNKED_ANNOTATIONS,
    ZSTD_CHUNKED_BLOB,
)


def tar_files(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {
            m.name.removeprefix("./"): t.extractfile(m).read()  # type: ignore[union-attr]
            for m in t
            if m.isfile()
        }


def estargz_layout(annotations: dict[str, str] = ESTARGZ_ANNOTATIONS) -> TocLayout:
    blob = ESTARGZ_BLOB
    offset, footer = estargz.parse_footer(blob[-estargz.FOOTER_SIZE :])
    return estargz.parse(blob[offset : len(blob) - footer], offset, len(blob), footer, annotations)


def zstd_layout(
    annotations: dict[str, str] = ZSTD_CHUNKED_ANNOTATIONS, blob: bytes = ZSTD_CHUNKED_BLOB
) -> TocLayout:
    offset, length, size = zstdchunked.position(annotations, len(blob))
    return zstdchunked.parse(blob[offset : offset + length], annotations, size)


def files_of(layout: TocLayout, fmt: Format, blob: bytes) -> dict[str, bytes]:
    """Every file's bytes as a read makes them: its chunks, each checked."""
    stream = b"".join(_unpack(fmt, c, blob[c.cstart : c.cend]) for c in layout.chunks)
    return {
        e.path: stream[e.offset : e.offset + e.size]
        for e in layout.entries
        if e.kind is EntryKind.FILE
    }


def test_the_estargz_footer_of_a_real_blob() -> None:
    offset, size = estargz.parse_footer(ESTARGZ_BLOB[-64:])
    assert size == estargz.FOOTER_SIZE
    assert ESTARGZ_BLOB[offset : offset + 2] == b"\x1f\x8b"  # a gzip member begins there
    assert 0 < offset < len(ESTARGZ_BLOB) - size


def test_the_legacy_stargz_footer_layout() -> None:
    """No producer of legacy stargz is installable here: its 47-byte footer is made from the
    real eStargz footer by dropping the 'SG' subfield header and setting XLEN to 22, as
    stargz-snapshotter's estargz/types.go describes it."""
    footer = ESTARGZ_BLOB[-estargz.FOOTER_SIZE :]
    legacy = footer[:10] + b"\x16\x00" + footer[16:]
    assert len(legacy) == estargz.LEGACY_FOOTER_SIZE
    assert estargz.parse_footer(b"junk" + legacy) == (
        estargz.parse_footer(footer)[0],
        estargz.LEGACY_FOOTER_SIZE,
    )
    with pytest.raises(TocError, match="footer"):
        estargz.parse_footer(footer[:-1] + b"\x01")  # no footer: the last byte changed


def test_estargz_entries_and_bytes_match_the_tar() -> None:
    layout = estargz_layout()
    tar = gzip.decompress(ESTARGZ_BLOB)
    assert files_of(layout, Format.ESTARGZ, ESTARGZ_BLOB) == tar_files(tar)
    by_path = {e.path: e for e in layout.entries}
    assert by_path["long/gnu-long-target"].kind is EntryKind.SYMLINK
    assert by_path["long/gnu-long-target"].linkname.startswith("../target-")
    assert by_path["reborn"].kind is EntryKind.DIR and by_path["reborn"].mode == 0o755
    # The TOC itself is a file of the layer, as umoci shows it; the landmark too.
    assert {"stargz.index.json", ".no.prefetch.landmark"} <= set(by_path)


def test_an_estargz_toc_that_is_not_the_annotated_one_is_refused() -> None:
    wrong = {**ESTARGZ_ANNOTATIONS}
    wrong[estargz.ESTARGZ_TOC_DIGEST] = sha256(b"another TOC")
    with pytest.raises(TocError, match=r"stargz.index.json does not match its digest"):
        estargz_layout(wrong)
    with pytest.raises(FullPassNeeded):  # nothing to check it against: the full pass
        estargz_layout({})


def test_zstd_chunked_entries_and_bytes_match_the_tar() -> None:
    layout = zstd_layout()
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(ZSTD_CHUNKED_BLOB), read_across_frames=True
    )
    tar = reader.read()
    assert files_of(layout, Format.ZSTD_CHUNKED, ZSTD_CHUNKED_BLOB) == tar_files(tar)
    assert len(layout.chunks) == 4


def test_stargz_snapshotters_zstd_chunked_matches_the_tar() -> None:
    """Both annotation sets, the eStargz TOC fields (no endOffset) in a skippable frame."""
    annotations = CTR_ZSTD_CHUNKED_ANNOTATIONS
    assert toc_kind(annotations) == "zstd:chunked"
    layout = zstd_layout(annotations, CTR_ZSTD_CHUNKED_BLOB)
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(CTR_ZSTD_CHUNKED_BLOB), read_across_frames=True
    )
    files = files_of(layout, Format.ZSTD_CHUNKED, CTR_ZSTD_CHUNKED_BLOB)
    assert files == tar_files(reader.read())
    assert "etc/os-release" in files and ".no.prefetch.landmark" in files


def test_zstd_chunked_under_the_newer_annotation_names() -> None:
    newer = {
        k.replace("io.containers.", "io.github.containers."): v
        for k, v in ZSTD_CHUNKED_ANNOTATIONS.items()
    }
    assert toc_kind(newer) == "zstd:chunked"
    assert zstd_layout(newer) == zstd_layout()


@pytest.mark.parametrize(
    "position",
    ["740:490:2013", "740:490:2013:2", "x:490:2013:1", "1000:490:2013:1", "740:490:0:1"],
)
def test_zstd_chunked_positions_that_do_not_hold(position: str) -> None:
    annotations = {**ZSTD_CHUNKED_ANNOTATIONS}
    annotations["io.containers.zstd-chunked.manifest-position"] = position
    with pytest.raises(TocError, match=r"position|refused"):
        zstd_layout(annotations)


def test_a_zstd_chunked_manifest_that_is_not_the_annotated_one_is_refused() -> None:
    annotations = {**ZSTD_CHUNKED_ANNOTATIONS}
    annotations["io.containers.zstd-chunked.manifest-checksum"] = sha256(b"other")
    with pytest.raises(TocError, match="manifest does not match its digest"):
        zstd_layout(annotations)


def test_a_chunk_with_other_bytes_is_refused() -> None:
    layout = zstd_layout()
    chunk = layout.chunks[0]
    good = ZSTD_CHUNKED_BLOB[chunk.cstart : chunk.cend]
    other = zstandard.ZstdCompressor(write_checksum=False).compress(
        b"X" * (chunk.end - chunk.start)
    )
    assert _unpack(Format.ZSTD_CHUNKED, chunk, good)
    with pytest.raises(TocError, match="does not match its TOC digest"):
        _unpack(Format.ZSTD_CHUNKED, chunk, other)


def test_toc_kind() -> None:
    assert toc_kind(ESTARGZ_ANNOTATIONS) == "estargz"
    assert toc_kind(ZSTD_CHUNKED_ANNOTATIONS) == "zstd:chunked"
    # A position without its checksum cannot be verified: not a TOC layer for regfs.
    assert toc_kind({"io.containers.zstd-chunked.manifest-position": "1:2:3:1"}) is None
    assert toc_kind({}) is None


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000 * 10**9),
        ("2023-11-14T22:13:20.123456789Z", 1_700_000_000 * 10**9 + 123_456_789),
        ("2023-11-14T23:13:20.5+01:00", 1_700_000_000 * 10**9 + 500_000_000),
        ("0001-01-01T00:00:00Z", 0),  # Go's zero time
        ("", 0),
    ],
)
def test_go_times(text: str, ns: int) -> None:
    assert parse_time_ns(text) == ns


def test_a_name_that_json_could_not_hold_asks_for_the_full_pass() -> None:
    with pytest.raises(FullPassNeeded, match="not UTF-8"):
        entry_from_toc({"type": "reg", "name": "caf\ufffd", "size": 1}, 0)


def test_entry_fields() -> None:
    fields: dict[str, Any] = {
        "type": "char",
        "name": "./dev/null",
        "mode": 0o20666,
        "uid": 5,
        "gid": 6,
        "devMajor": 1,
        "devMinor": 3,
        "modtime": "1970-01-01T00:00:01Z",
        "xattrs": {"user.a": "AP8="},
    }
    entry = entry_from_toc(fields, 0)
    assert entry is not None
    assert (entry.path, entry.kind, entry.mode, entry.uid, entry.gid) == (
        "dev/null",
        EntryKind.CHAR_DEVICE,
        0o666,
        5,
        6,
    )
    assert (entry.devmajor, entry.devminor, entry.mtime_ns) == (1, 3, 10**9)
    assert entry.xattrs == (("user.a", b"\x00\xff"),)
    hardlink = entry_from_toc({"type": "hardlink", "name": "b", "linkName": "./a/../x"}, 0)
    assert hardlink is not None and hardlink.linkname == "x"
    assert entry_from_toc({"type": "chunk", "name": "b"}, 0) is None


def test_chunks_must_cover_every_file_byte() -> None:
    layout = LayoutBuilder.new()
    entry = layout.file({"type": "reg", "name": "f", "size": 10})
    assert entry is not None
    layout.chunk(entry, 0, 4, 100, 120, 0, sha256(b"x"))
    layout.chunk(entry, 6, 4, 120, 140, 0, sha256(b"y"))
    with pytest.raises(TocError, match="gap"):
        layout.finish()
    with pytest.raises(TocError, match="outside"):
        layout.chunk(entry, 8, 4, 140, 160, 0, sha256(b"z"))


def test_a_toc_index_persists_with_its_chunks() -> None:
    layout = zstd_layout()
    index = LayerIndex(
        "sha256:" + "a" * 64,
        layout.entries,
        Format.ZSTD_CHUNKED,
        "",
        layout.size,
        chunks=layout.chunks,
    )
    again = decode(encode(index), index.digest)
    assert again.chunks == index.chunks and again.entries == index.entries
    assert again.format is Format.ZSTD_CHUNKED and again.format.from_toc
