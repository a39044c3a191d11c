"""Layers made by real producers (GNU tar, gzip, zstd), a block cache over them, and what
stdlib tarfile says each file holds: the reference the layer reads are checked against."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache
from regfs.cache.disk import DiskCache
from regfs.layers import LayerFiles
from tests.fixtures.images import random_bytes

SPAN = 64 << 10
BLOCK = 64 << 10
Sink = Callable[[bytes], Awaitable[None]]


def make_tree(root: Path) -> None:
    """A tree with what a layer can hold: big and small files, a sparse file, a hardlink, a
    symlink, a fifo, an xattr, a setuid file, an empty file, a name that is not UTF-8."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('NAME="Test"\nID=test\n')
    (root / "big").write_bytes(random_bytes(1_300_000, seed=3) + b"z" * 700_000)
    (root / "small").write_bytes(b"hello\n")
    (root / "empty").write_bytes(b"")
    (root / "hard").hardlink_to(root / "small")
    (root / "link").symlink_to("/etc/os-release")
    os.mkfifo(root / "fifo")
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "x").write_bytes(b"with an xattr")
    os.setxattr(root / "x", "user.note", b"\xffvalue\x00")
    os.close(os.open(os.fsencode(root) + b"/caf\xe9", os.O_CREAT | os.O_WRONLY, 0o644))
    with open(root / "sparse", "wb") as f:
        f.seek(300_000)
        f.write(random_bytes(100_000, seed=4))
        f.seek(900_000)
        f.write(b"tail")
        f.truncate(1_200_000)
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    for i in range(40):
        (deep / f"f{i}").write_bytes(random_bytes(1000 + 997 * i, seed=10 + i))


def gnu_tar(root: Path, out: Path, *, fmt: str) -> bytes:
    subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "--xattrs", "-C", str(root), "-cf", str(out), "."],
        check=True,
    )
    return out.read_bytes()


def compress(tar: bytes, how: str, tmp: Path) -> bytes:
    """The layer blob: `how` is "gzip", "gzip-members", "zstd" (one frame), "zstd-frames"
    or "tar"."""
    if how == "tar":
        return tar
    if how == "gzip":
        return subprocess.run(
            ["gzip", "-6", "-c"], input=tar, capture_output=True, check=True
        ).stdout
    if how == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=tar, capture_output=True, check=True
        ).stdout
    # Several frames (zstd) or members (gzip), as chunked producers make: CLI outputs of
    # pieces of the tar, concatenated (each tool reads such a stream as one).
    # "zstd-late-frame": small frames, then one frame of all the rest.
    tool = ["gzip", "-c"] if how == "gzip-members" else ["zstd", "-q", "-c"]
    step = 700_000 if how == "gzip-members" else 100_000  # zstd: frames under 2 spans
    pieces = [tar[i : i + step] for i in range(0, len(tar), step)]
    if how == "zstd-late-frame":
        pieces = [*pieces[:3], b"".join(pieces[3:])]
    return b"".join(
        subprocess.run(tool, input=p, capture_output=True, check=True).stdout for p in pieces
    )


def expected_files(tar: bytes) -> dict[str, bytes]:
    """path (as tarfile names it, surrogate escapes kept) -> content, for regular files."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:", errors="surrogateescape") as t:
        for m in t:
            if m.isreg():
                data = t.extractfile(m)
                assert data is not None
                found[m.name.removeprefix("./")] = data.read()
    return found


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Source:
    """Serves a blob, counting the bytes it sends; `lie_at` flips a byte of what it sends
    (a server that lies after eviction); `gate` holds fetches until it is set."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = 0
        self.lie_at: int | None = None
        self.gate: object | None = None

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        import trio

        if isinstance(self.gate, trio.Event):
            await self.gate.wait()
        chunk = bytearray(self.data[start:end])
        if self.lie_at is not None and start <= self.lie_at < end:
            chunk[self.lie_at - start] ^= 0x01
        self.sent += len(chunk)
        await sink(bytes(chunk))


class Refuses:
    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        raise AssertionError(f"fetched [{start}, {end}) although everything is cached")


def blob_of(data: bytes, source: object) -> BlobRef:
    return BlobRef(digest(data), len(data), "reg-a", source)  # type: ignore[arg-type]


def make_cache(disk: DiskCache | None) -> BlockCache:
    return BlockCache(disk=disk, block_size=BLOCK, memory_bytes=1 << 20)


def layer_files(
    cache: BlockCache, disk: DiskCache | None, *, timeout: float = 60.0, inflated: int = 512 << 10
) -> LayerFiles:
    return LayerFiles(cache, disk, span_bytes=SPAN, inflated_bytes=inflated, timeout=timeout)
