"""Where regfs keeps its disk cache and its logs by default.

platformdirs knows each system's convention; on Linux these are the XDG base directories:
`$XDG_CACHE_HOME/regfs` (`~/.cache/regfs`) and `$XDG_STATE_HOME/regfs` (`~/.local/state/regfs`).
"""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_path, user_state_path

APP = "regfs"


def default_cache_dir() -> Path:
    # appauthor=False: no vendor level on Windows (`regfs`, not `regfs\regfs`).
    return user_cache_path(APP, appauthor=False)


def state_dir() -> Path:
    return user_state_path(APP, appauthor=False)
