"""Tar members (stdlib tarfile, stream mode) as the layer entries regfs shows.

Names are cleaned as umoci does (the path cleaned as if rooted at `/`, so `./x`, `/x` and
`a/../x` are all `x` and `..` never climbs out); bytes that are not UTF-8 stay as surrogate
escapes (tarfile is opened with errors="surrogateescape"), and so do PAX xattr values, which
tarfile decodes: encoding them back gives the tar's bytes.
"""

from __future__ import annotations

import tarfile
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from ..oci.entry import Entry, EntryKind

ENCODING = "utf-8"
ERRORS = "surrogateescape"
XATTR_PREFIX = "SCHILY.xattr."
# Dropped as umoci drops them on unpack: host-specific, never meant to travel in an image.
IGNORED_XATTRS = frozenset({"security.selinux", "system.nfs4_acl"})

_KINDS = {
    tarfile.REGTYPE: EntryKind.FILE,
    tarfile.AREGTYPE: EntryKind.FILE,
    tarfile.CONTTYPE: EntryKind.FILE,
    tarfile.GNUTYPE_SPARSE: EntryKind.FILE,
    tarfile.DIRTYPE: EntryKind.DIR,
    tarfile.SYMTYPE: EntryKind.SYMLINK,
    tarfile.LNKTYPE: EntryKind.HARDLINK,
    tarfile.CHRTYPE: EntryKind.CHAR_DEVICE,
    tarfile.BLKTYPE: EntryKind.BLOCK_DEVICE,
    tarfile.FIFOTYPE: EntryKind.FIFO,
}


def clean_path(name: str) -> str:
    """umoci's rule: filepath.Clean("/" + name), made relative ('' is the root)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, exactly as a PAX record states it (tarfile parses
    it to a float, which turns 1700000000.123456789 into .123456717), else whole seconds."""
    text = member.pax_headers.get("mtime")
    if text is not None:
        try:
            exact = Decimal(text) * 1_000_000_000
            return int(exact.to_integral_value(rounding=ROUND_FLOOR))
        except (InvalidOperation, ValueError, OverflowError):
            pass
    return int(member.mtime) * 1_000_000_000


def entry_of(member: tarfile.TarInfo) -> Entry | None:
    """The entry for a tar member; None for member types a filesystem cannot show (volume
    headers, unknown types)."""
    kind = _KINDS.get(member.type)
    if kind is None:
        return None
    is_file = kind is EntryKind.FILE
    sparse = getattr(member, "sparse", None)
    xattrs = tuple(
        (key[len(XATTR_PREFIX) :], value.encode(ENCODING, ERRORS))
        for key, value in member.pax_headers.items()
        if key.startswith(XATTR_PREFIX) and key[len(XATTR_PREFIX) :] not in IGNORED_XATTRS
    )
    if kind is EntryKind.HARDLINK:
        linkname = clean_path(member.linkname)
    elif kind is EntryKind.SYMLINK:
        linkname = member.linkname
    else:
        linkname = ""
    return Entry(
        path=clean_path(member.name),
        kind=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=mtime_ns(member),
        size=member.size if is_file else 0,
        linkname=linkname,
        devmajor=member.devmajor if member.ischr() or member.isblk() else 0,
        devminor=member.devminor if member.ischr() or member.isblk() else 0,
        xattrs=xattrs,
        offset=member.offset_data if is_file else 0,
        sparse=tuple((int(a), int(b)) for a, b in sparse) if is_file and sparse else None,
    )
