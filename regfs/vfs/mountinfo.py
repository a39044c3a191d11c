"""What the kernel says of mounts: /proc/self/mountinfo entries on a path, and whether the
process serving a FUSE mount still answers. Nothing here looks at the path itself: a stat
of a dead mount fails, of a hung one never returns, and of our own deadlocks."""

from __future__ import annotations

import errno
import os
import re
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

PROBE_SECONDS = 5.0  # how long a mount's process may take to answer statfs before "hung"


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the fields regfs looks at."""

    mountpoint: str
    fstype: str
    device: str  # major:minor


def _unescape(field: bytes) -> str:
    """A mountinfo field: the kernel writes space, tab, newline and backslash as \\ooo."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def mount_path(path: Path) -> str:
    """The path as mountinfo shows a mount on it: its directory resolved, not the path itself,
    whose lstat would reach the mount's process (a dead one's answer is ENOTCONN, a hung
    one's never comes, and our own, asked from the thread that serves it, deadlocks)."""
    path = path.absolute()  # not abspath: `link/..` is the link's target's parent
    if path.name in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(path.parent), path.name)


def mounts_at(path: Path | str, mountinfo_file: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """The mounts on exactly this path, bottom first: the last is the one a lookup of the
    path reaches. The path itself is not looked at (see mount_path)."""
    target = mount_path(Path(path))
    found = []
    with suppress(OSError), open(mountinfo_file, "rb") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            try:  # id parent major:minor root mountpoint options [optional...] - fstype ...
                fstype = fields[fields.index(b"-", 6) + 1]
            except (ValueError, IndexError):
                continue
            if _unescape(fields[4]) == target:
                found.append(MountEntry(target, _unescape(fstype), fields[2].decode()))
    return found


# What the kernel answers on a FUSE connection whose process is gone: ENOTCONN, or
# ECONNABORTED for a request that was waiting when the connection was torn down (seen with a
# `ls` right after a kill -9, on a loaded machine).
DEAD_CONNECTION = frozenset({errno.ENOTCONN, errno.ECONNABORTED})


def daemon_answers(path: str | Path, timeout: float = PROBE_SECONDS) -> bool | None:
    """Whether the process serving a FUSE mount answers: True, False when the connection is
    gone (DEAD_CONNECTION: the process died), None when it does not answer in time (hung,
    stopped).

    statfs always reaches the process, where a stat of the mount root may be answered from
    the kernel's attribute cache long after the process died. In a thread: a hung mount
    would block the caller for as long as it hangs.
    """
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=probe, name="probe-mount", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return None
    error = outcome[0]
    # Any other answer, an error included, came from a process that is there.
    return not (isinstance(error, OSError) and error.errno in DEAD_CONNECTION)
