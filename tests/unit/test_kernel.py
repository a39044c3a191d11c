"""regfs.vfs.kernel without a mount: readahead written and read back, libfuse's stderr."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from regfs.vfs import kernel


def test_read_ahead_is_written_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    knob = tmp_path / "read_ahead_kb"
    knob.write_text("128\n")
    monkeypatch.setattr(kernel, "read_ahead_file", lambda device: knob)
    assert kernel.raise_read_ahead("0:42", 16384) == 16384
    assert knob.read_text() == "16384"


def test_read_ahead_not_writable_fails_soft_with_a_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    knob = tmp_path / "missing" / "read_ahead_kb"  # writing it fails as for a non-root user
    monkeypatch.setattr(kernel, "read_ahead_file", lambda device: knob)
    with caplog.at_level(logging.INFO, logger="regfs.vfs.kernel"):
        assert kernel.raise_read_ahead("0:42", 16384) is None
    assert "not raised" in caplog.text


def test_stderr_is_captured_and_passed_on(capfd: pytest.CaptureFixture[str]) -> None:
    with kernel.captured_stderr() as said:
        os.write(2, b"fuse: error: init() refused\n")
        assert said == []  # filled on exit
    assert said == ["fuse: error: init() refused"]
    assert capfd.readouterr().err == "fuse: error: init() refused\n"
