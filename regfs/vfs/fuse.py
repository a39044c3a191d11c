"""pyfuse3 Operations over the inode table: a thin adapter, and the one place errors become
errno. Attributes are the nodes' own (`Attrs`), copied; nothing here decides a mode.

Only FUSEError may leave a handler (anything else stops pyfuse3's loop), and every handler
returns within the operation bound rather than hanging its caller.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from ..errors import (
    AuthError,
    ForbiddenURLError,
    IntegrityError,
    InvalidReferenceError,
    ManifestError,
    NotFoundError,
    OfflineError,
    ProtocolError,
    RateLimitedError,
    RegfsError,
    TransientError,
)
from .nodes import Dir, Node, Symlink
from .table import DOTS, InodeTable

log = logging.getLogger(__name__)
T = TypeVar("T")

IMMUTABLE_TIMEOUT = 86400.0


def errno_for(exc: BaseException, *, reading: bool = False) -> int:
    """The errno a caller sees for an error: the single mapping in regfs. `reading`: the
    error ends a read(2), where EAGAIN is no answer (a buffered reader takes it for "no data
    yet" and may stop early, leaving a short copy that looks whole): EIO instead."""
    if isinstance(exc, NotFoundError | InvalidReferenceError):
        return errno.ENOENT
    if isinstance(exc, OfflineError):
        return errno.ENOENT
    if isinstance(exc, AuthError | ForbiddenURLError):
        # An untrusted certificate of the registry or its realm is an AuthError; of a CDN or
        # a foreign host (UntrustedCertificateError alone) the blob cannot be read: EIO.
        return errno.EACCES
    if isinstance(exc, RateLimitedError):
        # A sustained 429: the registry says "later", as EAGAIN does (not to a read).
        return errno.EIO if reading else errno.EAGAIN
    if isinstance(
        exc, IntegrityError | ManifestError | ProtocolError | TransientError | RegfsError
    ):
        return errno.EIO
    return errno.EIO


# What this filesystem does not support, so says ENOTSUP of (ENODATA would be "not on this
# file"): SELinux labels (dropped from layers, as umoci drops them) and POSIX ACLs (unless a
# layer's PAX records hold one for a file). `ls -l` asks for both on every file, and the
# kernel keeps no answer; on ENOTSUP ls stops asking for the rest of the device.
UNSUPPORTED_XATTRS = frozenset(
    {"security.selinux", "system.posix_acl_access", "system.posix_acl_default", "system.nfs4_acl"}
)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: InodeTable,
        *,
        op_timeout: float = 60.0,
        tag_ttl: float = 60.0,
        read_sizes: Counter[int] | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.op_timeout = op_timeout
        self.tag_ttl = tag_ttl  # how long the kernel may trust what can change (a tag)
        # READs by the size the kernel asked for: shows whether readahead took (1 MiB READs
        # rather than 128 KiB ones). One dict increment a READ.
        self.read_sizes: Counter[int] = Counter() if read_sizes is None else read_sizes
        # Set when the kernel's INIT reaches us; it is answered right after init() returns,
        # possibly with a refusal (see vfs.kernel.when_serving).
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    async def _guard(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        timeout_errno: int = errno.ETIMEDOUT,
        reading: bool = False,
        patient: bool = False,
    ) -> T:
        """`patient`: the work bounds its own wait (Node.waits_for_progress): no deadline."""
        deadline = math.inf if patient else trio.current_time() + self.op_timeout
        try:
            # A bare CancelScope: fail_after's generator costs show on every 128 KiB read.
            with trio.CancelScope(deadline=deadline):
                return await call()
        except pyfuse3.FUSEError:
            raise
        except RegfsError as exc:
            code = errno_for(exc, reading=reading)
            level = logging.DEBUG if code == errno.ENOENT else logging.WARNING
            log.log(level, "%s: %s", what, exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("%s: unexpected error", what)
            raise pyfuse3.FUSEError(errno.EIO) from None
        # Only a cancelled scope (the deadline passed) gets here.
        log.warning("%s: no answer within %.0fs", what, self.op_timeout)
        raise pyfuse3.FUSEError(timeout_errno)

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.inode
        entry.generation = 0
        timeout = IMMUTABLE_TIMEOUT if node.immutable else self.tag_ttl
        entry.entry_timeout = timeout
        entry.attr_timeout = 0.0 if node.provisional else timeout
        attrs = node.attrs
        entry.st_mode = attrs.st_mode
        entry.st_nlink = attrs.nlink
        entry.st_size = attrs.size
        entry.st_uid = attrs.uid
        entry.st_gid = attrs.gid
        entry.st_rdev = attrs.rdev
        entry.st_blksize = 1 << 20
        entry.st_blocks = (attrs.size + 511) // 512
        ns = attrs.mtime_ns if attrs.mtime_ns is not None else mtime_ns(attrs.mtime)
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = ns
        return entry

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)

        async def looked_up() -> pyfuse3.EntryAttributes:
            return self.attrs(await self.tree.lookup(parent_inode, text))

        patient = self._patient(self.tree.nodes.get(parent_inode))
        return await self._guard(f"lookup {text!r}", looked_up, patient=patient)

    @staticmethod
    def _patient(node: Node | None) -> bool:
        return node is not None and node.waits_for_progress

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        # No network, no await: the guard's deadline is not needed, its error mapping is.
        return await self._guard(f"getattr {inode}", lambda: _as(self._attrs_of, inode))

    def _attrs_of(self, inode: int) -> pyfuse3.EntryAttributes:
        return self.attrs(self.tree.node(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            try:
                self.tree.forget(inode, count)
            except Exception:  # forget must never raise
                log.exception("forget %d", inode)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = await self._guard(f"readlink {inode}", lambda: _as(self.tree.node, inode))
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        # No guard: a dict lookup that cannot hang or raise.
        node = self.tree.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        text = _name(name)
        value = node.xattrs.get(text)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENOTSUP if text in UNSUPPORTED_XATTRS else errno.ENODATA)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        node = await self._guard(f"listxattr {inode}", lambda: _as(self.tree.node, inode))
        return [_encoded(name) for name in node.xattrs]

    async def opendir(self, inode: int, ctx: Any) -> int:
        node = await self._guard("opendir", lambda: _as(self.tree.node, inode))
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return await self._guard(
            f"opendir {inode}", lambda: self.tree.opendir(inode), patient=self._patient(node)
        )

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        opened = self.tree.dirs.get(fh)
        patient = self._patient(opened.node if opened else None)
        entries = await self._guard(
            f"readdir {fh}", lambda: self.tree.readdir(fh, start_id), patient=patient
        )
        for position, (name, child) in enumerate(entries, start=start_id + 1):
            try:
                attrs = self.attrs(self.tree.offer(child))
            except Exception:
                if position > start_id + 1:
                    return  # the entries given so far go; the kernel's next call fails here
                log.exception("readdir %d: attributes of %r", fh, name)
                raise pyfuse3.FUSEError(errno.EIO) from None
            if not pyfuse3.readdir_reply(token, _encoded(name), attrs, position):
                # The kernel's buffer is full: it asks again from here. An entry it did not
                # take holds no reference (releasedir lets the untaken ones go).
                return
            # `.` and `..` take no reference: the kernel makes no entry of them (pyfuse3's
            # readdir: "must not increase the lookup count" for them).
            if name not in DOTS:
                self.tree.remember(child)

    async def releasedir(self, fh: int) -> None:
        self.tree.releasedir(fh)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
            raise pyfuse3.FUSEError(errno.EROFS)

        async def opened() -> pyfuse3.FileInfo:
            fh, node = await self.tree.open(inode)
            info = pyfuse3.FileInfo(fh=fh)
            info.direct_io = node.direct_io
            info.keep_cache = node.keep_cache()
            return info

        return await self._guard("open", opened)

    # pyfuse3's stub says bytes; its reply takes any buffer (PyObject_GetBuffer in
    # fuse_read_async), so a view of a cached block is answered without a copy.
    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        self.read_sizes[size] += 1
        # A read that runs out of time is EIO: a short read would look like end of file.
        return await self._guard(
            f"read fh={fh} at {offset}",
            lambda: self.tree.read(fh, offset, size),
            timeout_errno=errno.EIO,
            reading=True,
        )

    async def release(self, fh: int) -> None:
        self.tree.release(fh)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return not mode & os.W_OK

    # Everything that writes: read-only filesystem.
    async def setattr(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, *args: Any) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)


def mtime_ns(mtime: float) -> int:
    """A timestamp in nanoseconds: whole seconds and the fraction apart, since `mtime * 1e9`
    rounds to a multiple of 256 ns (a tar's .25 s would show as .249999872)."""
    seconds = math.floor(mtime)
    return seconds * 1_000_000_000 + round((mtime - seconds) * 1e9)


# Names are str in the nodes, bytes for the kernel: a name that is not UTF-8 (a tar may hold
# one) maps through surrogateescape both ways, so what readdir shows, lookup finds. No such
# name passes the registry's grammar: there it is ENOENT without a request.


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encoded(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


async def _as(get: Callable[[int], T], inode: int) -> T:
    return get(inode)
