"""HTTP helpers shared by every request regfs makes."""

from __future__ import annotations

import httpcore

READ_NUM_BYTES = 256 * 1024


def tune_read_size() -> None:
    """Read sockets 256 KiB at a time instead of httpcore's 64 KiB: fewer trips through the
    event loop for multi-megabyte ranges (measured in scripts/bench). Called by the mount."""
    httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = READ_NUM_BYTES
