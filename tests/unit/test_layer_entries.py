"""regfs.layers.entries: tar members as entries, from tars stdlib tarfile writes (names umoci
cleans, PAX xattrs with bytes that are not UTF-8, devices, duplicates, long names)."""

from __future__ import annotations

import io
import tarfile

import pytest

from regfs.layers.build import scan_tar
from regfs.layers.entries import clean_path, entry_of
from regfs.oci.entry import EntryKind


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("./etc/passwd", "etc/passwd"),
        ("/etc/passwd", "etc/passwd"),
        ("etc//x/./y/", "etc/x/y"),
        ("../../etc/shadow", "etc/shadow"),  # cannot climb out of the root
        ("a/../../b", "b"),
        ("a/b/..", "a"),
        (".", ""),
        ("./", ""),
        ("/", ""),
        ("..", ""),
    ],
)
def test_names_are_cleaned_as_if_rooted(name: str, clean: str) -> None:
    assert clean_path(name) == clean


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def entries_of(build: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> list:  # type: ignore[type-arg]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, errors="surrogateescape") as tar:
        for info, data in build:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    out.seek(0)
    return list(scan_tar(out))  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_members_become_entries(fmt: int) -> None:
    long_name = "deep/" + "d" * 150 + "/file"
    xattr = member("./with-xattr", mode=0o640)
    if fmt == tarfile.PAX_FORMAT:
        xattr.pax_headers = {
            "SCHILY.xattr.user.bin": b"\xff\x00raw".decode("utf-8", "surrogateescape"),
            "SCHILY.xattr.security.capability": "\x01\x02",
            # umoci leaves these out on unpack (host-specific): so does rootfs/
            "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
            "SCHILY.xattr.system.nfs4_acl": "\x00",
        }
    entries = entries_of(
        [
            (member("/abs/file", mode=0o4755, uid=7, gid=8, mtime=1234567890), b"abc"),
            (xattr, b"x"),
            (member("../escape", mode=0o644), b"e"),
            (member("dup"), b"first"),
            (member("dup"), b"second"),
            (member("./hard", tarfile.LNKTYPE, linkname="./abs/../abs/file"), None),
            (member("sym", tarfile.SYMTYPE, linkname="../../target"), None),
            (member("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
            (member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
            (member("pipe", tarfile.FIFOTYPE), None),
            (member("dir/", tarfile.DIRTYPE, mode=0o1777), None),
            (member(long_name), b"long"),
        ],
        fmt,
    )
    paths = [e.path for e in entries]
    assert paths == [
        "abs/file", "with-xattr", "escape", "dup", "dup", "hard", "sym",
        "dev/null", "dev/sda", "pipe", "dir", long_name,
    ]  # fmt: skip
    first = entries[0]
    assert (first.kind, first.mode, first.uid, first.gid, first.mtime_ns, first.size) == (
        EntryKind.FILE, 0o4755, 7, 8, 1234567890 * 10**9, 3
    )  # fmt: skip
    assert entries[3].size == 5 and entries[4].size == 6  # duplicates kept, in tar order
    assert entries[4].offset > entries[3].offset
    assert entries[5].kind is EntryKind.HARDLINK and entries[5].linkname == "abs/file"
    assert entries[6].kind is EntryKind.SYMLINK and entries[6].linkname == "../../target"
    assert (entries[7].kind, entries[7].devmajor, entries[7].devminor) == (
        EntryKind.CHAR_DEVICE,
        1,
        3,
    )
    assert (entries[8].kind, entries[8].devmajor) == (EntryKind.BLOCK_DEVICE, 8)
    assert entries[9].kind is EntryKind.FIFO
    assert entries[10].kind is EntryKind.DIR and entries[10].mode == 0o1777
    if fmt == tarfile.PAX_FORMAT:
        assert dict(entries[1].xattrs) == {
            "user.bin": b"\xff\x00raw",
            "security.capability": b"\x01\x02",
        }


def test_non_utf8_names_are_kept_as_surrogate_escapes() -> None:
    raw = b"caf\xe9/na\xefve"
    entries = entries_of(
        [(member(raw.decode("utf-8", "surrogateescape")), b"x")], tarfile.GNU_FORMAT
    )
    assert [e.path.encode("utf-8", "surrogateescape") for e in entries] == [raw]


def test_an_empty_stream_is_an_empty_layer() -> None:
    assert scan_tar(io.BytesIO(b"")) == ()  # type: ignore[arg-type]
    assert scan_tar(io.BytesIO(bytes(1024))) == ()  # type: ignore[arg-type]


def test_a_pax_mtime_is_kept_to_the_nanosecond() -> None:
    info = tarfile.TarInfo("f")
    info.pax_headers = {"mtime": "1700000000.123456789"}
    info.mtime = 1700000000
    entry = entry_of(info)
    assert entry is not None and entry.mtime_ns == 1_700_000_000_123_456_789
    info.pax_headers = {"mtime": "-1.5"}  # before 1970: floor, as the seconds field would be
    entry = entry_of(info)
    assert entry is not None and entry.mtime_ns == -1_500_000_000
    info.pax_headers = {"mtime": "garbage"}
    entry = entry_of(info)
    assert entry is not None and entry.mtime_ns == 1_700_000_000 * 10**9
