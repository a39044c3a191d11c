"""The kernel's side of a FUSE mount once pyfuse3 mounted it: the INIT handshake answered, the
root answering, the backing device's readahead raised, and what libfuse said meanwhile.

Shared by regfs's mount and scripts/bench_ceiling.py, so the ceiling is measured as regfs is
served. Readahead must be raised *after* INIT has been answered: the INIT reply sets the
device's readahead to at most what libfuse echoes (128 KiB in libfuse 3.14), undoing any
value written before it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 30.0  # how long the kernel's INIT and the first statfs may take
# What the kernel answers for a connection whose INIT failed or whose process is gone.
REFUSED = {errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNABORTED}


class HandshakeError(Exception):
    """The kernel's INIT was refused, or the mount did not answer after it."""


@dataclass(frozen=True)
class Serving:
    """A mount answering: its device (major:minor) and read_ahead_kb as read back."""

    device: str
    read_ahead_kb: int | None


def read_ahead_file(device: str) -> Path:
    return Path(f"/sys/class/bdi/{device}/read_ahead_kb")


def raise_read_ahead(device: str, kb: int) -> int | None:
    """Write read_ahead_kb and read it back: the value in force, None if unreadable. Fails
    soft (a log line): not root, or no such knob, and the kernel's default stays."""
    knob = read_ahead_file(device)
    try:
        knob.write_text(str(kb))
    except OSError as exc:
        log.info("read_ahead_kb of %s not raised to %d: %s", device, kb, exc.strerror)
    try:
        now = int(knob.read_text())
    except (OSError, ValueError) as exc:
        log.debug("read_ahead_kb of %s unreadable: %s", device, exc)
        return None
    log.debug("read_ahead_kb of %s reads back %d (asked %d)", device, now, kb)
    return now


async def when_serving(
    mountpoint: Path,
    initialized: trio.Event,
    *,
    device_of: Callable[[Path], str | None],
    read_ahead_kb: int,
    timeout: float = HANDSHAKE_SECONDS,
) -> Serving:
    """Wait for the kernel's INIT (`initialized`, set from Operations.init()) and for the root
    to answer statfs, then raise readahead on the mount's device (`device_of`: major:minor from
    mountinfo; not a stat, whose answer the kernel would cache and give even once the process
    is dead). Raises HandshakeError when INIT fails.

    Must run in the trio loop that serves the mount, beside pyfuse3.main(): the probes run in
    a worker thread, since a stat of our own mountpoint from the thread serving it deadlocks.
    init() is called before libfuse checks the negotiated options (a refused INIT calls it
    too), so the probe is what says the handshake succeeded: the kernel holds every request
    until INIT is answered and refuses them all (ECONNREFUSED) when INIT failed.
    """

    def probe() -> None:
        try:
            os.statvfs(mountpoint)  # reaches the process's root: never answered from a cache
        except OSError as exc:
            if exc.errno in REFUSED:
                raise
            # Any other error is an answer (a filesystem without statfs says ENOSYS).

    with trio.move_on_after(timeout) as scope:
        await initialized.wait()
        try:
            await trio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except OSError as exc:
            raise HandshakeError(
                f"the kernel's FUSE handshake failed: {exc.strerror or exc}"
            ) from None
    if scope.cancelled_caught:
        raise HandshakeError(f"the mount did not answer within {timeout:.0f}s of mounting")
    device = device_of(mountpoint)  # the FUSE connection's device names its bdi
    if device is None:
        raise HandshakeError(f"{mountpoint} is not in /proc/self/mountinfo after mounting")
    now = await trio.to_thread.run_sync(raise_read_ahead, device, read_ahead_kb)
    return Serving(device, now)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """What is written to fd 2 meanwhile (libfuse reports a refused INIT there, only there),
    as lines in the list yielded, filled on exit; then written to the real fd 2 as well."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read()
            with contextlib.suppress(OSError):
                os.write(2, text)
            lines += text.decode(errors="replace").splitlines()
