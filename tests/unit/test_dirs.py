"""The default cache and state directories: the XDG paths regfs has always used on Linux."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from regfs.dirs import default_cache_dir, state_dir

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="XDG paths are Linux's")


def test_xdg_variables_are_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_cache_dir() == tmp_path / "cache" / "regfs"
    assert state_dir() == tmp_path / "state" / "regfs"


@pytest.mark.parametrize("value", [None, ""])
def test_home_directories_when_xdg_is_unset_or_empty(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert default_cache_dir() == tmp_path / ".cache" / "regfs"
    assert state_dir() == tmp_path / ".local" / "state" / "regfs"
