"""The FUSE ceiling for scripts/bench: one read-only file served from memory by pyfuse3.

    python scripts/bench_ceiling.py MOUNTPOINT SIZE

Shows MOUNTPOINT/data, SIZE bytes long, with the mount options and kernel read-ahead that
regfs uses (raised after INIT, as regfs does: regfs.vfs.kernel), so the gap between it and
regfs is what regfs itself costs. Prints "ready" once mounted; SIGTERM/SIGINT unmount, and
then it prints "read sizes: {size: count}" (the READs the kernel sent, JSON). The page cache
is dropped on every open (keep_cache off), so every read crosses FUSE.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from regfs.mount import READ_AHEAD_KB, mount_device
from regfs.vfs.kernel import when_serving

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"data"
# A repeated random pattern: the bytes' values do not matter to FUSE, only their number.
PATTERN = os.urandom(16 << 20)


class Ceiling(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.read_sizes: Counter[int] = Counter()
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_uid = attrs.st_gid = 0
        attrs.attr_timeout = attrs.entry_timeout = 3600
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
        elif inode == FILE_INODE:
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = self.size
            attrs.st_blksize = 4096
            attrs.st_blocks = (self.size + 511) // 512
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return attrs

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, await self.getattr(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        self.read_sizes[size] += 1
        size = max(0, min(size, self.size - offset))
        start = offset % len(PATTERN)
        if start + size <= len(PATTERN):
            return PATTERN[start : start + size]
        head = PATTERN[start:]
        return head + PATTERN[: size - len(head)]


async def serve(mountpoint: Path, size: int) -> None:
    options = set(pyfuse3.default_options)
    options |= {"fsname=regfs-ceiling", "subtype=regfs-ceiling", "ro"}
    if os.getuid() == 0:
        options.add("allow_other")
    ceiling = Ceiling(size)
    pyfuse3.init(ceiling, str(mountpoint), options)
    try:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

            async def ready_when_serving() -> None:
                serving = await when_serving(
                    mountpoint,
                    ceiling.initialized,
                    device_of=mount_device,
                    read_ahead_kb=READ_AHEAD_KB,
                )
                print("ready", flush=True)  # the first line: what its callers wait for
                print(f"read_ahead_kb {serving.read_ahead_kb}", file=sys.stderr, flush=True)

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(ready_when_serving)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        sizes = {n: ceiling.read_sizes[n] for n in sorted(ceiling.read_sizes)}
        print(f"read sizes: {json.dumps(sizes)}", flush=True)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    trio.run(serve, Path(sys.argv[1]).absolute(), int(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
