"""regfs ls/cat/cp without a network: the reference grammar, the CLI's wiring, and cp of a
tree of plain vfs nodes (symlinks, hardlinks, fifos, devices, a read that fails)."""

from __future__ import annotations

import io
import os
import stat
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from regfs import cli
from regfs.commands import Walker, long_line
from regfs.copy import Copy, copy_one
from regfs.errors import IntegrityError, RegfsError
from regfs.oci.reference import DOCKER_HUB_HOST
from regfs.targets import EXIT_USAGE, CommandError, Target, parse_target
from regfs.vfs.nodes import (
    Attrs,
    BytesFile,
    File,
    FileHandle,
    Kind,
    Node,
    StaticDir,
    Symlink,
)
from regfs.vfs.table import InodeTable

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "path"),
    [
        ("alpine", "docker.io", "library/alpine", None, None, ()),
        (
            "alpine:3.20/rootfs/etc/os-release",
            "docker.io",
            "library/alpine",
            "3.20",
            None,
            ("rootfs", "etc", "os-release"),
        ),
        ("docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20", None, ()),
        ("docker.io/alpine:3.20", "docker.io", "library/alpine", "3.20", None, ()),
        ("bitnami/nginx:1.27", "docker.io", "bitnami/nginx", "1.27", None, ()),
        (
            "mcr.microsoft.com/windows/servercore:ltsc2019-amd64/image.tar",
            "mcr.microsoft.com",
            "windows/servercore",
            "ltsc2019-amd64",
            None,
            ("image.tar",),
        ),
        (
            "mcr.microsoft.com/windows/servercore",
            "mcr.microsoft.com",
            "windows/servercore",
            None,
            None,
            (),
        ),
        ("mcr.microsoft.com", "mcr.microsoft.com", "", None, None, ()),
        ("mcr.microsoft.com/", "mcr.microsoft.com", "", None, None, ()),
        ("127.0.0.1:5000", "127.0.0.1:5000", "", None, None, ()),
        ("localhost:5000/a/b:c/layers", "localhost:5000", "a/b", "c", None, ("layers",)),
        ("localhost/foo", "localhost", "foo", None, None, ()),
        ("foo:5000/bar", "foo:5000", "bar", None, None, ()),  # a port makes it a host
        ("alpine:3.20/etc", "docker.io", "library/alpine", "3.20", None, ("etc",)),  # a tag
        ("my.host:443/a:1/x", "my.host:443", "a", "1", None, ("x",)),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None, ()),  # no host: no '/'
        (
            f"ghcr.io/acme/tool@{DIGEST}/config.json",
            "ghcr.io",
            "acme/tool",
            None,
            DIGEST,
            ("config.json",),
        ),
        (f"acme/tool:v1@{DIGEST}", "docker.io", "acme/tool", "v1", DIGEST, ()),
        (
            "http://127.0.0.1:5000/library/hello:latest/rootfs//etc/./x/",
            "http://127.0.0.1:5000",
            "library/hello",
            "latest",
            None,
            ("rootfs", "etc", "x"),
        ),
        ("quay.io/a/b:1/rootfs/usr/../etc", "quay.io", "a/b", "1", None, ("rootfs", "etc")),
    ],
)
def test_references_as_docker_spells_them(
    text: str,
    registry: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    path: tuple[str, ...],
) -> None:
    target = parse_target(text)
    assert (target.registry, target.repository, target.tag, target.digest, target.path) == (
        registry,
        repository,
        tag,
        digest,
        path,
    )


def test_tree_path_and_the_name_shown() -> None:
    target = parse_target(f"alpine:3.20@{DIGEST}/rootfs/etc")
    assert target.tree_path() == ["library", "alpine", DIGEST, "rootfs", "etc"]  # digest wins
    assert target.host == DOCKER_HUB_HOST
    assert target.image() == f"docker.io/library/alpine@{DIGEST}"
    assert parse_target("mcr.microsoft.com/a:1").image() == "mcr.microsoft.com/a:1"
    assert parse_target("mcr.microsoft.com").tree_path() == []


@pytest.mark.parametrize(
    "text",
    [
        "Alpine:1",
        "library/hello:bad tag",
        "library/hello:-x",
        ":1",
        "@" + DIGEST,
        "a/b@sha256:abc",
        "a//b:1",
        "a/b:1/../../x",
        "a/b:1/rootfs/../..",
        "http://[/a:1",
        "a/b:1@" + DIGEST + "x",
    ],
)
def test_bad_references_are_usage_errors_naming_the_argument(text: str) -> None:
    with pytest.raises(CommandError) as raised:
        parse_target(text)
    assert raised.value.code == EXIT_USAGE
    assert text in str(raised.value)


def test_fetch_options_are_the_mounts(tmp_path: Path) -> None:
    parser = cli.build_parser()
    fetch = [
        "--platform",
        "linux/arm64/v8",
        "--cache-dir",
        str(tmp_path),
        "--cache-size",
        "2G",
        "--memory-cache",
        "64M",
        "--offline",
        "--timeout",
        "7",
        "--insecure",
        "--mirror",
        "http://127.0.0.1:1",
        "--foreign-url-allow",
        "https://cdn\\.example/",
        "--tag-ttl",
        "5",
    ]
    for argv in (["ls", "-l", "alpine"], ["cat", "alpine:1/x"], ["cp", "-r", "a:1/rootfs", "d"]):
        config = cli.config_from(parser.parse_args([*argv, *fetch]))
        assert config.options.platform.architecture == "arm64"
        assert config.options.offline and config.insecure
        assert config.cache_dir == tmp_path and config.cache_size == 2 << 30
        assert config.memory_cache == 64 << 20 and config.op_timeout == 7.0
        assert config.mirrors == ["http://127.0.0.1:1"]
        assert config.foreign_url_allow == ["https://cdn\\.example/"]
        assert config.options.tag_ttl == 5.0
    mount = cli.config_from(parser.parse_args(["mount", *fetch, "/mnt/x"]))
    assert mount.options.platform.architecture == "arm64" and mount.mirrors == config.mirrors
    assert not cli.is_helper_form(["cp", "a", "b"])  # a subcommand, not mount(8)'s helper form


def test_mount_elsewhere_than_linux_points_at_cp(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.sys, "platform", "darwin")
    assert cli.main(["mount", "/mnt/x"]) == 1
    said = capsys.readouterr().err
    assert "needs Linux" in said and "WSL2" in said and "regfs cp" in said


def test_long_line_shows_mode_size_mtime_and_link_target() -> None:
    attrs = Attrs(Kind.FILE, 0o4755, size=1234, mtime=0.0, nlink=2, uid=0, gid=42)
    line = long_line("tool", Node("tool", attrs))
    assert line.startswith("-rwsr-xr-x   2     0    42         1234 ")
    assert line.endswith(" tool")
    link = long_line("bin", Symlink("bin", b"usr/bin"))
    assert link.startswith("lrwxrwxrwx") and link.endswith(" bin -> usr/bin")
    device = Node("null", Attrs(Kind.CHAR_DEVICE, 0o666, rdev=os.makedev(1, 3)))
    assert long_line("null", device).startswith("crw-rw-rw-")
    assert long_line("null", device).endswith("null (1,3)")


# -- cp over a tree of vfs nodes ---------------------------------------------------------


class FailingHandle:
    async def read(self, offset: int, size: int) -> bytes:
        if offset >= 3:
            raise IntegrityError("blob sha256:… does not match its digest")
        return b"abc"


class LyingFile(File):
    """Serves three bytes, then what a mismatched blob gives: IntegrityError."""

    async def open(self) -> FileHandle:
        return FailingHandle()


def tree_of(*nodes: Node) -> InodeTable:
    return InodeTable(StaticDir("", [StaticDir("img", list(nodes))]))


def target(path: str) -> Target:
    return Target(path, "example.test", "", None, None, tuple(path.split("/")))


def quiet() -> Copy:
    return Copy(io.StringIO(), None, {})


def file_node(name: str, data: bytes, mode: int, mtime: float) -> BytesFile:
    node = BytesFile(name, data, mtime)
    node.attrs = Attrs(Kind.FILE, mode, size=len(data), mtime=mtime, nlink=1)
    return node


async def test_cp_r_keeps_links_modes_and_mtimes_and_skips_devices(tmp_path: Path) -> None:
    shared = file_node("big", b"x" * 5000, 0o640, 1_600_000_000.0)
    shared.attrs = Attrs(Kind.FILE, 0o640, size=5000, mtime=1_600_000_000.0, nlink=2)
    sub = StaticDir(
        "sub", [file_node("script", b"#!/bin/sh\n", 0o755, 1_500_000_000.0)], 1_400_000_000.0
    )
    sub.attrs = Attrs(Kind.DIR, 0o750, mtime=1_400_000_000.0, nlink=2)
    rootfs = StaticDir(
        "rootfs",
        [
            sub,
            shared,
            Symlink("link", b"sub/script"),
            Symlink("abs", b"/etc/passwd"),
            Node("fifo", Attrs(Kind.FIFO, 0o644)),
            Node("null", Attrs(Kind.CHAR_DEVICE, 0o666, rdev=os.makedev(1, 3))),
        ],
    )
    tree = InodeTable(StaticDir("", [StaticDir("img", [rootfs])]))
    # The hardlink: the same node under a second name.
    rootfs._entries["big-link"] = shared  # type: ignore[attr-defined]
    run = quiet()
    await copy_one(Walker(tree, (), 10.0), target("img/rootfs"), tmp_path / "out", True, run)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["abs", "big", "big-link", "fifo", "link", "sub"]
    assert (out / "sub" / "script").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(os.stat(out / "sub" / "script").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "sub").st_mode) == 0o750
    assert os.stat(out / "sub").st_mtime == 1_400_000_000.0
    assert os.stat(out / "big").st_ino == os.stat(out / "big-link").st_ino
    assert os.stat(out / "big").st_nlink == 2 and os.stat(out / "big").st_mtime == 1.6e9
    assert os.readlink(out / "link") == "sub/script" and os.readlink(out / "abs") == "/etc/passwd"
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    said = run.err.getvalue()  # type: ignore[attr-defined]
    assert "skipped device node img/rootfs/null (char 1,3)" in said
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left


async def test_a_failed_read_leaves_no_destination(tmp_path: Path) -> None:
    lying = LyingFile("layer.tar.gz", 10)
    tree = tree_of(lying, StaticDir("dir", [BytesFile("ok", b"fine"), LyingFile("bad", 10)]))
    walker = Walker(tree, (), 10.0)
    with pytest.raises(IntegrityError):
        await copy_one(walker, target("img/layer.tar.gz"), tmp_path, False, quiet())
    with pytest.raises(IntegrityError):
        await copy_one(walker, target("img/dir"), tmp_path, True, quiet())
    assert os.listdir(tmp_path) == []  # neither the file, the tree, nor a temporary
    # An existing file is kept as it was when the copy over it fails.
    (tmp_path / "layer.tar.gz").write_bytes(b"old")
    with pytest.raises(IntegrityError):
        await copy_one(walker, target("img/layer.tar.gz"), tmp_path, False, quiet())
    assert os.listdir(tmp_path) == ["layer.tar.gz"]
    assert (tmp_path / "layer.tar.gz").read_bytes() == b"old"


async def test_cp_of_a_directory_needs_r_and_a_file_replaces(tmp_path: Path) -> None:
    tree = tree_of(BytesFile("manifest.json", b"{}"), StaticDir("layers", []))
    walker = Walker(tree, (), 10.0)
    with pytest.raises(CommandError, match="is a directory"):
        await copy_one(walker, target("img/layers"), tmp_path, False, quiet())
    (tmp_path / "m").write_bytes(b"older")
    await copy_one(walker, target("img/manifest.json"), tmp_path / "m", False, quiet())
    assert (tmp_path / "m").read_bytes() == b"{}"
    await copy_one(walker, target("img/layers"), tmp_path, True, quiet())
    with pytest.raises(CommandError, match="exists"):
        await copy_one(walker, target("img/layers"), tmp_path, True, quiet())


async def test_symlinks_on_the_way_are_followed_inside_the_tree(tmp_path: Path) -> None:
    tree = tree_of(
        StaticDir("usr", [StaticDir("bin", [BytesFile("tool", b"T")])]),
        Symlink("bin", b"usr/bin"),
        Symlink("loop", b"loop"),
    )
    walker = Walker(tree, (), 10.0)
    found = await walker.resolve(target("img/bin/tool"), follow=True)
    assert isinstance(found.node, BytesFile) and found.shown == "img/usr/bin/tool"
    assert isinstance((await walker.resolve(target("img/bin"), follow=False)).node, Symlink)
    with pytest.raises(CommandError, match="too many levels"):
        await walker.resolve(target("img/loop"), follow=True)
    with pytest.raises(RegfsError, match="no such file"):
        await walker.resolve(target("img/usr/nope"), follow=True)


def test_pyfuse3_is_a_linux_only_dependency() -> None:
    # Where pyfuse3 cannot be installed (Windows, macOS), regfs installs without it.
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    with open(pyproject, "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    [fuse] = [Requirement(d) for d in dependencies if d.startswith("pyfuse3")]
    assert fuse.marker is not None
    for platform, wanted in (("linux", True), ("darwin", False), ("win32", False)):
        assert fuse.marker.evaluate({"sys_platform": platform}) is wanted
