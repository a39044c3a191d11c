"""regfs.vfs without a mount: errno mapping, and Operations over a tiny in-memory inode table."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from typing import Any

import pyfuse3
import pytest
import trio

from regfs.errors import (
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
    RegistryError,
    TransientError,
)
from regfs.vfs import fuse as fs
from regfs.vfs.fuse import Operations, errno_for
from regfs.vfs.nodes import Attrs, BytesFile, Dir, File, FileHandle, Node, StaticDir
from regfs.vfs.table import ROOT_INODE, InodeTable

HELLO = b"hello, world\n" * 100


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFoundError("x"), errno.ENOENT),
        (InvalidReferenceError("x"), errno.ENOENT),
        (OfflineError("x"), errno.ENOENT),
        (AuthError("x"), errno.EACCES),
        (ForbiddenURLError("x"), errno.EACCES),
        (IntegrityError("x"), errno.EIO),
        (ManifestError("x"), errno.EIO),
        (ProtocolError("x"), errno.EIO),
        (TransientError("x"), errno.EIO),
        (RateLimitedError("x", 3.0), errno.EAGAIN),
        (RegistryError("x"), errno.EIO),
        (RegfsError("x"), errno.EIO),
        (RuntimeError("x"), errno.EIO),
        (KeyError("x"), errno.EIO),
        (OSError(errno.ENOSPC, "full"), errno.EIO),
    ],
)
def test_errno_for(exc: BaseException, code: int) -> None:
    assert errno_for(exc) == code


def test_errno_for_covers_every_error_class() -> None:
    import regfs.errors as errors_module

    classes = [
        c for c in vars(errors_module).values() if isinstance(c, type) and issubclass(c, RegfsError)
    ]
    assert len(classes) >= 12
    for cls in classes:
        exc = cls("x", 1.0) if issubclass(cls, TransientError) else cls("x")
        assert errno_for(exc) in (errno.ENOENT, errno.EACCES, errno.EIO, errno.EAGAIN)


# --------------------------------------------------------------------------------------------
# a tiny tree


class Broken(File):
    """A file whose read fails with `exc`."""

    def __init__(self, name: str, exc: BaseException) -> None:
        super().__init__(name, 10)
        self.exc = exc

    async def open(self) -> FileHandle:
        return self

    async def read(self, offset: int, size: int) -> bytes:
        raise self.exc


class Hanging(File):
    def __init__(self, name: str) -> None:
        super().__init__(name, 10)

    async def open(self) -> FileHandle:
        return self

    async def read(self, offset: int, size: int) -> bytes:
        await trio.sleep_forever()
        raise AssertionError


class BadDir(Dir):
    """A directory whose lookup and listing fail with `exc`."""

    def __init__(self, name: str, exc: BaseException) -> None:
        super().__init__(name)
        self.exc = exc

    async def lookup(self, name: str) -> Node | None:
        raise self.exc

    async def entries(self) -> Mapping[str, Node]:
        raise self.exc


class BadSize(File):
    """A node whose attributes cannot be computed."""

    @property  # type: ignore[override]
    def attrs(self) -> Attrs:
        raise RuntimeError("no size")

    @attrs.setter
    def attrs(self, value: Attrs) -> None:
        pass


def make_ops(*extra: Node, op_timeout: float = 60.0) -> Operations:
    root = StaticDir(
        "",
        [
            BytesFile("hello.txt", HELLO, mtime=1_700_000_000.5),
            StaticDir("sub", [BytesFile("b", b"bee"), BytesFile("a", b"ay")]),
            *[BytesFile(f"f{i:02d}", bytes([i])) for i in range(20)],
            *extra,
        ],
    )
    return Operations(InodeTable(root), op_timeout=op_timeout)


class ReaddirRecorder:
    """Stands in for pyfuse3.readdir_reply: takes `room` entries, then says the buffer is full."""

    def __init__(self, room: int = 10**6) -> None:
        self.room = room
        self.entries: list[tuple[str, int, int]] = []

    def __call__(self, token: Any, name: bytes, attr: Any, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((name.decode(), attr.st_ino, next_id))
        return True


async def list_all(
    ops: Operations, inode: int, monkeypatch: pytest.MonkeyPatch, room: int
) -> list[str]:
    """readdir the way the kernel does: again from the last next_id until nothing comes."""
    names: list[str] = []
    start = 0
    fh = await ops.opendir(inode, None)
    while True:
        recorder = ReaddirRecorder(room)
        monkeypatch.setattr(pyfuse3, "readdir_reply", recorder)
        await ops.readdir(fh, start, None)
        if not recorder.entries:
            return names
        names += [name for name, _, _ in recorder.entries]
        start = recorder.entries[-1][2]


async def test_lookup_and_getattr() -> None:
    ops = make_ops()
    entry = await ops.lookup(ROOT_INODE, b"hello.txt")
    assert entry.st_size == len(HELLO)
    assert stat.S_ISREG(entry.st_mode)
    assert stat.S_IMODE(entry.st_mode) == 0o444
    assert entry.st_mtime_ns == 1_700_000_000_500_000_000
    again = await ops.getattr(entry.st_ino)
    assert again.st_ino == entry.st_ino and again.st_size == len(HELLO)
    sub = await ops.lookup(ROOT_INODE, b"sub")
    assert stat.S_ISDIR(sub.st_mode) and stat.S_IMODE(sub.st_mode) == 0o555
    assert (await ops.lookup(sub.st_ino, b"a")).st_size == 2
    root = await ops.getattr(ROOT_INODE)
    assert stat.S_ISDIR(root.st_mode)


@pytest.mark.parametrize("name", [b"missing", b".", b"..", b"\xff\xfe", b"hello.txt/x", b""])
async def test_lookup_missing_is_enoent(name: bytes) -> None:
    ops = make_ops()
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(ROOT_INODE, name)
    assert info.value.errno == errno.ENOENT


async def test_lookup_under_a_file_and_unknown_inodes() -> None:
    ops = make_ops()
    file = await ops.lookup(ROOT_INODE, b"hello.txt")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(file.st_ino, b"x")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getattr(987654)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.opendir(file.st_ino, None)
    assert info.value.errno == errno.ENOTDIR


async def test_a_listing_in_small_pieces_numbers_each_entry_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Entries the kernel has not taken yet keep their numbers between its calls: numbering
    # the whole rest of a listing on every call made a 500-entry directory cost 500²/k.
    many = StaticDir("many", [BytesFile(f"f{i:03d}", b"") for i in range(300)])
    ops = make_ops(many)
    inode = (await ops.lookup(ROOT_INODE, b"many")).st_ino
    before = ops.tree._next_inode
    names = await list_all(ops, inode, monkeypatch, room=7)
    assert len(names) == 302
    assert ops.tree._next_inode - before == 300


async def test_entries_listed_but_not_taken_are_let_go_at_releasedir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    many = StaticDir("many", [BytesFile(f"f{i:03d}", b"") for i in range(50)])
    ops = make_ops(many)
    inode = (await ops.lookup(ROOT_INODE, b"many")).st_ino
    recorder = ReaddirRecorder(room=12)  # . and .. and ten files
    monkeypatch.setattr(pyfuse3, "readdir_reply", recorder)
    fh = await ops.opendir(inode, None)
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    taken = {ino for name, ino, _ in recorder.entries if name not in (".", "..")}
    held = {node.inode for node in ops.tree.nodes.values() if node.name.startswith("f")}
    assert len(taken) == 10 and held == taken


@pytest.mark.parametrize("room", [1, 3, 7, 1000])
async def test_readdir_offsets_stable(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    ops = make_ops()
    names = await list_all(ops, ROOT_INODE, monkeypatch, room)
    expected = sorted(["hello.txt", "sub", *[f"f{i:02d}" for i in range(20)]])
    assert names == [".", "..", *expected]  # each entry exactly once, however small the buffer


async def test_readdir_inodes_match_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = make_ops()
    recorder = ReaddirRecorder()
    monkeypatch.setattr(pyfuse3, "readdir_reply", recorder)
    await ops.readdir(await ops.opendir(ROOT_INODE, None), 0, None)
    by_name = {name: ino for name, ino, _ in recorder.entries}
    assert (await ops.lookup(ROOT_INODE, b"sub")).st_ino == by_name["sub"]
    assert (await ops.lookup(ROOT_INODE, b"f07")).st_ino == by_name["f07"]
    next_ids = [next_id for _, _, next_id in recorder.entries]
    assert next_ids == list(range(1, len(next_ids) + 1))


@pytest.mark.parametrize(
    "flags",
    [
        os.O_WRONLY,
        os.O_RDWR,
        os.O_RDONLY | os.O_APPEND,
        os.O_RDONLY | os.O_TRUNC,
        os.O_WRONLY | os.O_CREAT,
    ],
)
async def test_open_for_writing_is_erofs(flags: int) -> None:
    ops = make_ops()
    inode = (await ops.lookup(ROOT_INODE, b"hello.txt")).st_ino
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(inode, flags, None)
    assert info.value.errno == errno.EROFS


async def test_write_like_operations_are_erofs() -> None:
    ops = make_ops()
    for call in (
        ops.setattr(ROOT_INODE, None, None, None, None),
        ops.create(ROOT_INODE, b"new", 0o644, os.O_WRONLY, None),
        ops.mkdir(ROOT_INODE, b"d", 0o755, None),
        ops.mknod(ROOT_INODE, b"n", 0o644, 0, None),
        ops.unlink(ROOT_INODE, b"hello.txt", None),
        ops.rmdir(ROOT_INODE, b"sub", None),
        ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 0, None),
        ops.symlink(ROOT_INODE, b"l", b"t", None),
        ops.link(2, ROOT_INODE, b"l", None),
        ops.write(1, 0, b"x"),
        ops.setxattr(ROOT_INODE, b"user.x", b"1", None),
        ops.removexattr(ROOT_INODE, b"user.x", None),
    ):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == errno.EROFS
    assert await ops.access(ROOT_INODE, os.R_OK | os.X_OK, None)
    assert not await ops.access(ROOT_INODE, os.W_OK, None)


async def test_read_returns_exact_bytes() -> None:
    ops = make_ops()
    inode = (await ops.lookup(ROOT_INODE, b"hello.txt")).st_ino
    info = await ops.open(inode, os.O_RDONLY, None)
    assert info.keep_cache and not info.direct_io
    fh = info.fh
    assert await ops.read(fh, 0, 5) == HELLO[:5]
    assert await ops.read(fh, 7, 100) == HELLO[7:107]
    assert await ops.read(fh, len(HELLO) - 3, 4096) == HELLO[-3:]  # short only at the end
    assert await ops.read(fh, len(HELLO), 4096) == b""
    await ops.release(fh)
    with pytest.raises(pyfuse3.FUSEError) as info_err:
        await ops.read(fh, 0, 1)  # released handle: EIO, not a KeyError out of the loop
    assert info_err.value.errno == errno.EIO


async def test_open_a_directory_fails_cleanly() -> None:
    ops = make_ops()
    with pytest.raises(pyfuse3.FUSEError):
        await ops.open(ROOT_INODE, os.O_RDONLY, None)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFoundError("gone"), errno.ENOENT),
        (AuthError("no"), errno.EACCES),
        (IntegrityError("bad"), errno.EIO),
        (TransientError("down"), errno.EIO),
        (RuntimeError("bug"), errno.EIO),
        (ValueError("bug"), errno.EIO),
        (KeyError("bug"), errno.EIO),
        (AssertionError("bug"), errno.EIO),
        (OSError(errno.ENOSPC, "full"), errno.EIO),
    ],
)
async def test_errors_become_fuse_errors(exc: BaseException, code: int) -> None:
    ops = make_ops(Broken("broken", exc), BadDir("baddir", exc))
    inode = (await ops.lookup(ROOT_INODE, b"broken")).st_ino
    fh = (await ops.open(inode, os.O_RDONLY, None)).fh
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.read(fh, 0, 10)
    assert info.value.errno == code
    bad = (await ops.lookup(ROOT_INODE, b"baddir")).st_ino
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(bad, b"anything")
    assert info.value.errno == code
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.readdir(await ops.opendir(bad, None), 0, None)
    assert info.value.errno == code


async def test_attributes_that_fail_become_eio(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = make_ops(BadSize("badsize"))
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(ROOT_INODE, b"badsize")
    assert info.value.errno == errno.EIO
    recorder = ReaddirRecorder()
    monkeypatch.setattr(pyfuse3, "readdir_reply", recorder)
    fh = await ops.opendir(ROOT_INODE, None)
    # The entries before it are given; the kernel's next call, starting at it, fails.
    await ops.readdir(fh, 0, None)
    assert [name for name, _, _ in recorder.entries] == [".", ".."]
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.readdir(fh, recorder.entries[-1][2], None)
    assert info.value.errno == errno.EIO


async def test_hanging_read_is_eio_not_a_short_read(autojump_clock: Any) -> None:
    ops = make_ops(Hanging("hang"), op_timeout=5.0)
    inode = (await ops.lookup(ROOT_INODE, b"hang")).st_ino
    fh = (await ops.open(inode, os.O_RDONLY, None)).fh
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.read(fh, 0, 10)
    assert info.value.errno == errno.EIO


async def test_hanging_lookup_times_out(autojump_clock: Any) -> None:
    class SlowDir(Dir):
        async def lookup(self, name: str) -> Node | None:
            await trio.sleep_forever()
            return None

    ops = make_ops(SlowDir("slow"), op_timeout=5.0)
    slow = (await ops.lookup(ROOT_INODE, b"slow")).st_ino
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(slow, b"x")
    assert info.value.errno == errno.ETIMEDOUT


async def test_forget_never_raises() -> None:
    ops = make_ops()
    inode = (await ops.lookup(ROOT_INODE, b"hello.txt")).st_ino
    await ops.forget([(inode, 1), (inode, 5), (123456, 1), (ROOT_INODE, 1)])
    with pytest.raises(pyfuse3.FUSEError):
        await ops.getattr(inode)  # forgotten: its inode is gone
    # Looked up again, it is back.
    assert (await ops.lookup(ROOT_INODE, b"hello.txt")).st_size == len(HELLO)


async def test_open_file_survives_forget() -> None:
    ops = make_ops()
    inode = (await ops.lookup(ROOT_INODE, b"hello.txt")).st_ino
    fh = (await ops.open(inode, os.O_RDONLY, None)).fh
    await ops.forget([(inode, 1)])
    assert await ops.read(fh, 0, 5) == HELLO[:5]
    await ops.release(fh)


async def test_statfs() -> None:
    data = await make_ops().statfs(None)
    assert data.f_namemax == 255


def test_fs_is_importable_without_mounting() -> None:
    assert issubclass(fs.Operations, pyfuse3.Operations)


def test_a_rate_limited_read_is_eio_not_eagain() -> None:
    # A buffered reader (Python's io) takes EAGAIN from read(2) for "no data yet" and may end
    # a copy early; every other operation may say EAGAIN.
    exc = RateLimitedError("toomanyrequests", 3600.0)
    assert fs.errno_for(exc) == errno.EAGAIN
    assert fs.errno_for(exc, reading=True) == errno.EIO


async def test_reads_are_counted_by_the_size_the_kernel_asked_for() -> None:
    ops = make_ops()
    fh = (await ops.open(await _inode(ops, b"hello.txt"), os.O_RDONLY, None)).fh
    for size in (131072, 1 << 20, 1 << 20):
        await ops.read(fh, 0, size)
    assert ops.read_sizes == {131072: 1, 1 << 20: 2}


async def test_init_says_the_kernel_s_init_arrived() -> None:
    ops = make_ops()
    assert not ops.initialized.is_set()
    ops.init()  # what pyfuse3 calls while it handles INIT, before the reply
    with trio.fail_after(1):
        await ops.initialized.wait()


async def _inode(ops: Operations, name: bytes) -> int:
    return int((await ops.lookup(ROOT_INODE, name)).st_ino)
