"""regfs.mount: reading /proc/self/mountinfo to tell a regfs mount from any other (the
lifecycle with real mounts: tests/integration/test_mount.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from regfs.vfs import mountinfo
from regfs.vfs.mountinfo import MountEntry, mount_path, mounts_at

MOUNTINFO = (
    # id parent major:minor root mountpoint options [optional fields] - fstype source super
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:40 / /mnt/a\\040b rw,nosuid,nodev shared:20 master:3 - fuse.regfs regfs ro\n"
    "41 22 0:41 / /mnt/reg rw,nosuid - fuse.regfs regfs ro,user_id=0\n"
    "42 41 0:42 / /mnt/reg rw - tmpfs tmpfs rw\n"
    "43 22 0:43 / /mnt/reg/inner rw - fuse.regfs regfs ro\n"
    "44 22 0:44 / /mnt/back\\134slash\\011tab rw - fuse.sshfs host:/ rw\n"
    "garbage without a separator\n"
)


def write(tmp_path: Path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return str(path)


def test_escaped_names_and_optional_fields(tmp_path: Path) -> None:
    info = write(tmp_path)
    assert mounts_at("/mnt/a b", info) == [MountEntry("/mnt/a b", "fuse.regfs", "0:40")]
    assert mounts_at("/mnt/back\\slash\ttab", info) == [
        MountEntry("/mnt/back\\slash\ttab", "fuse.sshfs", "0:44")
    ]


def test_stacked_mounts_are_listed_bottom_first(tmp_path: Path) -> None:
    entries = mounts_at("/mnt/reg", write(tmp_path))
    assert [e.fstype for e in entries] == ["fuse.regfs", "tmpfs"]  # a lookup reaches tmpfs


def test_only_the_exact_path_matches(tmp_path: Path) -> None:
    info = write(tmp_path)
    assert mounts_at("/mnt", info) == []
    assert mounts_at("/mnt/re", info) == []
    assert [e.device for e in mounts_at("/mnt/reg/inner", info)] == ["0:43"]
    assert [e.device for e in mounts_at("/mnt/reg/inner/", info)] == ["0:43"]


def test_no_mountinfo_is_no_mounts(tmp_path: Path) -> None:
    assert mounts_at("/", str(tmp_path / "missing")) == []


def test_mount_path_resolves_the_directory_not_the_mountpoint(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    # The last component is never looked at: a symlink there stays (as does a dead mount).
    (real / "last").symlink_to("/nonexistent")
    assert mount_path(tmp_path / "link" / "last") == str(real / "last")
    assert mount_path(tmp_path / "link" / "new") == str(real / "new")
    (real / "sub").mkdir()
    (tmp_path / "sublink").symlink_to(real / "sub")
    assert mount_path(tmp_path / "sublink" / ".." / "x") == str(real / "x")  # as the kernel does
    cwd = os.getcwd()
    try:
        os.chdir(real)
        assert mount_path(Path("mnt")) == str(real / "mnt")
        assert mount_path(Path(".")) == str(real)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    ("errno_value", "answers"),
    [(errno.ENOTCONN, False), (errno.ECONNABORTED, False), (errno.EACCES, True), (None, True)],
)
def test_a_dead_connection_is_either_errno_the_kernel_gives_for_it(
    monkeypatch: pytest.MonkeyPatch, errno_value: int | None, answers: bool
) -> None:
    def statvfs(path: object) -> object:
        if errno_value is not None:
            raise OSError(errno_value, os.strerror(errno_value))
        return object()

    monkeypatch.setattr(mountinfo.os, "statvfs", statvfs)
    assert mountinfo.daemon_answers("/mnt/x", timeout=5) is answers
