"""scripts/demo as a newcomer runs it: the tour, and --keep leaving the mount to explore."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.mounting import is_mounted

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.mount


def iter_queue(lines: queue.SimpleQueue[str]) -> Iterator[str]:
    while True:
        try:
            yield lines.get_nowait()
        except queue.Empty:
            return


def test_demo_keep_leaves_the_mount_until_interrupted() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--keep"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert demo.stdout is not None
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    stdout = demo.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    # Read in a thread: a demo that never prints the line must fail the test, not hang it.
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    output: list[str] = []
    mountpoint = None
    try:
        deadline = time.monotonic() + 180
        while mountpoint is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert demo.poll() is None, "".join(output)
                continue
            output.append(line)
            found = re.search(r"stays mounted at (\S+) until", line)
            if found:
                mountpoint = Path(found.group(1))
        assert mountpoint is not None, "".join(output)
        # The tour ran, and the mount it leaves answers like the tour's.
        text = "".join(output)
        assert "library/hello" in text
        assert 'PRETTY_NAME="regfs demo 1"' in text  # cat of rootfs/etc/os-release
        assert "bin -> usr/bin" in text and "> workers = 4" in text  # ls -l and diff
        assert "etc/.wh.motd" in text  # find of one layer's own entries
        assert is_mounted(mountpoint)
        assert "latest" in os.listdir(mountpoint / "library" / "hello")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, text
        reader.join(timeout=10)  # it ends at the demo's end of output
        rest = "".join(iter_queue(lines))
        assert "demo done" in rest
        assert not is_mounted(mountpoint)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
