"""regfs.vfs without a mount: nodes' own attributes, symlinks, xattrs, hardlinks, and readdir
over a directory that changes between two calls."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from typing import Any

import pyfuse3
import pytest

from regfs.errors import NotFoundError
from regfs.vfs.fuse import Operations
from regfs.vfs.nodes import (
    Attrs,
    BytesFile,
    Dir,
    GeneratedFile,
    Kind,
    Node,
    StaticDir,
    Symlink,
    static_tree,
)
from regfs.vfs.table import ROOT_INODE, InodeTable


class Recorder:
    """Stands in for pyfuse3.readdir_reply: takes `room` entries, then says the buffer is full."""

    def __init__(self, room: int = 10**6) -> None:
        self.room = room
        self.entries: list[tuple[str, int, int]] = []

    def __call__(self, token: Any, name: bytes, attr: Any, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((name.decode("utf-8", "surrogateescape"), attr.st_ino, next_id))
        return True


async def readdir(
    ops: Operations, fh: int, start: int, room: int, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, int, int]]:
    recorder = Recorder(room)
    monkeypatch.setattr(pyfuse3, "readdir_reply", recorder)
    await ops.readdir(fh, start, None)
    return recorder.entries


def without_dots(entries: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [entry for entry in entries if entry[0] not in (".", "..")]


class ChangingDir(Dir):
    """A directory whose entries the test changes (a tag list refreshed mid-listing)."""

    def __init__(self, name: str, names: list[str]) -> None:
        super().__init__(name, immutable=False)
        self.current = {n: BytesFile(n, n.encode()) for n in names}

    async def entries(self) -> Mapping[str, Node]:
        return dict(self.current)


def tags(n: int) -> list[str]:
    return [f"t{i:03d}" for i in range(n)]


# -- attributes ----------------------------------------------------------------------------


async def test_the_adapter_copies_each_nodes_attributes() -> None:
    device = Node("null", Attrs(Kind.CHAR_DEVICE, 0o666, uid=0, gid=5, rdev=os.makedev(1, 3)))
    fifo = Node("pipe", Attrs(Kind.FIFO, 0o600, uid=1000, gid=1000, mtime=12.5))
    root = StaticDir("", [device, fifo, BytesFile("f", b"abc", 3.0), StaticDir("d", [])])
    ops = Operations(InodeTable(root))
    dev = await ops.lookup(ROOT_INODE, b"null")
    assert stat.S_ISCHR(dev.st_mode) and stat.S_IMODE(dev.st_mode) == 0o666
    assert (dev.st_uid, dev.st_gid, dev.st_rdev) == (0, 5, os.makedev(1, 3))
    pipe = await ops.lookup(ROOT_INODE, b"pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and pipe.st_uid == 1000
    assert pipe.st_mtime_ns == 12_500_000_000
    # The defaults are what `ls -l` showed before nodes had attributes of their own.
    f = await ops.lookup(ROOT_INODE, b"f")
    assert f.st_mode == stat.S_IFREG | 0o444 and f.st_nlink == 1 and f.st_size == 3
    assert (f.st_uid, f.st_gid) == (os.getuid(), os.getgid())
    d = await ops.lookup(ROOT_INODE, b"d")
    assert d.st_mode == stat.S_IFDIR | 0o555 and d.st_nlink == 2
    assert (d.st_uid, d.st_gid) == (os.getuid(), os.getgid())


async def test_immutable_and_mutable_nodes_get_their_timeouts() -> None:
    root = StaticDir("", [BytesFile("fixed", b"x"), GeneratedFile("live", lambda: b"y")])
    ops = Operations(InodeTable(root), tag_ttl=7.0)
    assert (await ops.lookup(ROOT_INODE, b"fixed")).entry_timeout == 86400.0
    live = await ops.lookup(ROOT_INODE, b"live")
    assert live.entry_timeout == live.attr_timeout == 7.0
    info = await ops.open(live.st_ino, os.O_RDONLY, None)
    assert info.direct_io and not info.keep_cache
    assert await ops.read(info.fh, 0, 10) == b"y"


async def test_nodes_are_cheap() -> None:
    # Thousands of entries in a rootfs directory: no per-instance dict.
    for node in (BytesFile("f", b""), StaticDir("d", []), Symlink("l", b"t")):
        assert not hasattr(node, "__dict__")


# -- symlinks and xattrs ---------------------------------------------------------------------


async def test_readlink_answers_the_target_verbatim() -> None:
    target = b"../lib/\xff-not-utf8"
    root = StaticDir("", [Symlink("link", target), BytesFile("file", b"x")])
    ops = Operations(InodeTable(root))
    link = await ops.lookup(ROOT_INODE, b"link")
    assert stat.S_ISLNK(link.st_mode) and link.st_size == len(target)
    assert await ops.readlink(link.st_ino, None) == target
    file = await ops.lookup(ROOT_INODE, b"file")
    for inode in (file.st_ino, ROOT_INODE):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.readlink(inode, None)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.readlink(99999, None)
    assert info.value.errno == errno.ENOENT


async def test_xattrs_come_from_the_node() -> None:
    xattrs = {"user.mime": b"text/plain", "security.capability": b"\x01\x00\x00\x02"}
    tagged = Node("tagged", Attrs(Kind.FILE, 0o644), xattrs=xattrs)
    root = StaticDir("", [tagged, BytesFile("plain", b"x")])
    ops = Operations(InodeTable(root))
    inode = (await ops.lookup(ROOT_INODE, b"tagged")).st_ino
    assert sorted(await ops.listxattr(inode, None)) == [b"security.capability", b"user.mime"]
    assert await ops.getxattr(inode, b"user.mime", None) == b"text/plain"
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(inode, b"user.other", None)
    assert info.value.errno == errno.ENODATA
    plain = (await ops.lookup(ROOT_INODE, b"plain")).st_ino
    assert list(await ops.listxattr(plain, None)) == []
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(plain, b"user.mime", None)
    assert info.value.errno == errno.ENODATA


async def test_selinux_labels_and_acls_are_not_supported_unless_a_node_has_one() -> None:
    # ENOTSUP, not ENODATA: `ls -l` then stops asking for them on this filesystem (it asks
    # for both on every file, and the kernel keeps no answer).
    acl = b"\x02\x00\x00\x00"
    with_acl = Node("acl", Attrs(Kind.FILE, 0o644), xattrs={"system.posix_acl_access": acl})
    ops = Operations(InodeTable(StaticDir("", [with_acl, BytesFile("plain", b"x")])))
    plain = (await ops.lookup(ROOT_INODE, b"plain")).st_ino
    for name in (b"security.selinux", b"system.posix_acl_access", b"system.posix_acl_default"):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getxattr(plain, name, None)
        assert info.value.errno == errno.ENOTSUP, name
    inode = (await ops.lookup(ROOT_INODE, b"acl")).st_ino
    assert await ops.getxattr(inode, b"system.posix_acl_access", None) == acl


async def test_a_hardlinked_node_is_one_inode_under_two_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = BytesFile("original", b"shared")
    data.attrs = Attrs(Kind.FILE, 0o644, size=6, nlink=2)

    class Linked(Dir):
        async def entries(self) -> Mapping[str, Node]:
            return {"original": data, "link": data}

    ops = Operations(InodeTable(Linked("")))
    entries = without_dots(
        await readdir(ops, await ops.opendir(ROOT_INODE, None), 0, 100, monkeypatch)
    )
    assert {name for name, _, _ in entries} == {"original", "link"}
    assert len({ino for _, ino, _ in entries}) == 1
    one = await ops.lookup(ROOT_INODE, b"link")
    assert one.st_ino == entries[0][1] and one.st_nlink == 2


def test_static_tree_makes_the_directories_between() -> None:
    tree = static_tree(
        "oci",
        [("a", BytesFile("a", b"")), ("x/y/b", BytesFile("b", b"")), ("x/c", BytesFile("c", b""))],
    )
    assert list(tree._entries) == ["a", "x"]
    x = tree._entries["x"]
    assert isinstance(x, StaticDir) and list(x._entries) == ["c", "y"]


# -- readdir across a changing directory ----------------------------------------------------


@pytest.mark.parametrize("room", [1, 5, 10])
@pytest.mark.parametrize(
    ("removed", "added"),
    [
        ({"t000", "t001", "t015"}, {"t0105", "u"}),  # fewer before the cut: would skip
        ({"t019"}, {"a", "b", "t0025"}),  # more before the cut: would repeat
    ],
)
async def test_readdir_survives_the_directory_changing_between_calls(
    monkeypatch: pytest.MonkeyPatch, room: int, removed: set[str], added: set[str]
) -> None:
    directory = ChangingDir("", tags(20))
    ops = Operations(InodeTable(directory))
    fh = await ops.opendir(ROOT_INODE, None)
    first = await readdir(ops, fh, 0, room, monkeypatch)
    assert len(first) == room
    # The tag list is refreshed between two calls: some tags go, some come.
    for gone in removed:
        del directory.current[gone]
    for new in added:
        directory.current[new] = BytesFile(new, b"")
    names = [name for name, _, _ in first]
    start = first[-1][2]
    while True:
        more = await readdir(ops, fh, start, room, monkeypatch)
        if not more:
            break
        names += [name for name, _, _ in more]
        start = more[-1][2]
    await ops.releasedir(fh)
    assert len(names) == len(set(names)), "an entry was repeated"
    throughout = set(tags(20)) - removed
    assert throughout <= set(names), "an entry was skipped"


async def test_a_new_listing_and_a_rewind_see_the_change(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = ChangingDir("", tags(4))
    ops = Operations(InodeTable(directory))
    fh = await ops.opendir(ROOT_INODE, None)
    assert len(await readdir(ops, fh, 0, 100, monkeypatch)) == 2 + 4  # `.`, `..` and 4 tags
    directory.current["t999"] = BytesFile("t999", b"")
    assert await readdir(ops, fh, 6, 100, monkeypatch) == []  # the same reader: its snapshot
    other = await ops.opendir(ROOT_INODE, None)
    assert [n for n, _, _ in await readdir(ops, other, 0, 100, monkeypatch)][-1] == "t999"
    rewound = await readdir(ops, fh, 0, 100, monkeypatch)  # rewinddir: offset 0 again
    assert len(rewound) == 2 + 5
    await ops.releasedir(fh)
    await ops.releasedir(other)
    assert ops.tree.dirs == {}


async def test_entries_the_kernel_did_not_take_come_back_with_an_inode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = ChangingDir("", tags(6))
    ops = Operations(InodeTable(directory))
    fh = await ops.opendir(ROOT_INODE, None)
    first = await readdir(ops, fh, 0, 3, monkeypatch)
    rest = await readdir(ops, fh, first[-1][2], 100, monkeypatch)
    assert [n for n, _, _ in first + rest] == [".", "..", *tags(6)]
    for name, inode, _ in without_dots(first + rest):
        assert ops.tree.node(inode).name == name
        assert (await ops.lookup(ROOT_INODE, name.encode())).st_ino == inode


async def test_a_name_that_is_not_utf8_is_found_as_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = b"caf\xe9.txt"  # Latin-1, as an old tar may hold it
    name = raw.decode("utf-8", "surrogateescape")
    ops = Operations(InodeTable(StaticDir("", [BytesFile(name, b"x")])))
    [(listed, inode, _)] = without_dots(
        await readdir(ops, await ops.opendir(ROOT_INODE, None), 0, 10, monkeypatch)
    )
    assert listed.encode("utf-8", "surrogateescape") == raw
    assert (await ops.lookup(ROOT_INODE, raw)).st_ino == inode


# -- `.` and `..` -----------------------------------------------------------------------------


def nested() -> StaticDir:
    return StaticDir("", [StaticDir("sub", [StaticDir("inner", [BytesFile("f", b"x")])])])


async def test_every_listing_begins_with_dot_and_dotdot(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = Operations(InodeTable(nested()))
    root = await readdir(ops, await ops.opendir(ROOT_INODE, None), 0, 100, monkeypatch)
    assert [(name, ino) for name, ino, _ in root[:2]] == [(".", ROOT_INODE), ("..", ROOT_INODE)]
    sub = (await ops.lookup(ROOT_INODE, b"sub")).st_ino
    inner = (await ops.lookup(sub, b"inner")).st_ino
    listed = await readdir(ops, await ops.opendir(inner, None), 0, 100, monkeypatch)
    assert [(name, ino) for name, ino, _ in listed[:2]] == [(".", inner), ("..", sub)]
    assert [name for name, _, _ in listed] == [".", "..", "f"]
    assert ops.tree.node(listed[2][1]).name == "f"
    assert [next_id for _, _, next_id in listed] == [1, 2, 3]


async def test_dot_entries_take_no_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = Operations(InodeTable(nested()))
    sub = (await ops.lookup(ROOT_INODE, b"sub")).st_ino
    inner = (await ops.lookup(sub, b"inner")).st_ino
    before = dict(ops.tree.lookups)
    for room in (1, 2, 100):  # the kernel's buffer full after `.`, after `..`, never
        fh = await ops.opendir(inner, None)
        await readdir(ops, fh, 0, room, monkeypatch)
        await ops.releasedir(fh)
    counts = dict(ops.tree.lookups)
    f_inode = next(i for i, n in ops.tree.nodes.items() if n.name == "f")
    assert counts.pop(f_inode) == 1  # `f`, taken once (room 100): one reference
    assert counts == before  # `inner` (the `.`) and `sub` (the `..`) as they were
    # The kernel forgets what it looked up: nothing is left over from the listings.
    await ops.forget([(f_inode, 1), (inner, 1), (sub, 1)])
    assert set(ops.tree.nodes) == {ROOT_INODE} and ops.tree.lookups == {}
    assert ops.tree.parents == {}


async def test_dotdot_of_a_directory_found_by_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = Operations(InodeTable(nested()))
    [sub] = without_dots(await readdir(ops, await ops.opendir(ROOT_INODE, None), 0, 9, monkeypatch))
    [inner] = without_dots(await readdir(ops, await ops.opendir(sub[1], None), 0, 9, monkeypatch))
    listed = await readdir(ops, await ops.opendir(inner[1], None), 0, 9, monkeypatch)
    assert [(n, ino) for n, ino, _ in listed[:2]] == [(".", inner[1]), ("..", sub[1])]


async def test_a_view_naming_an_entry_dot_does_not_list_it_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Odd(Dir):
        async def entries(self) -> Mapping[str, Node]:
            return {".": BytesFile(".", b""), "..": BytesFile("..", b""), "a": BytesFile("a", b"")}

    ops = Operations(InodeTable(Odd("")))
    listed = await readdir(ops, await ops.opendir(ROOT_INODE, None), 0, 9, monkeypatch)
    assert [(n, ino) for n, ino, _ in listed[:2]] == [(".", ROOT_INODE), ("..", ROOT_INODE)]
    assert [n for n, _, _ in listed] == [".", "..", "a"]


class MissingDir(Dir):
    """A directory the registry says is not there once it is listed (a repository that
    does not exist, reached by name on a registry without a catalog)."""

    async def entries(self) -> Mapping[str, Node]:
        raise NotFoundError("no such repository")


async def test_a_listing_that_fails_fails_opendir_not_readdir() -> None:
    # glibc takes ENOENT from getdents for the end of the directory: ls would show the
    # missing repository as empty. The error must come from opendir.
    ops = Operations(InodeTable(StaticDir("", [MissingDir("nosuch")])))
    inode = (await ops.lookup(ROOT_INODE, b"nosuch")).st_ino
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.opendir(inode, None)
    assert info.value.errno == errno.ENOENT
    assert ops.tree.dirs == {}
