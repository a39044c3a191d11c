"""A mount is ready once the kernel's INIT was answered and the root answers: a refused INIT
is a one-line error and a non-zero exit, and readahead, raised after INIT, stays raised."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from regfs.mount import READ_AHEAD_KB
from tests.fixtures.images import Layer, push_image, random_bytes
from tests.fixtures.mounting import force_unmount, is_mounted, mounted, run_regfs
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.mount, pytest.mark.registry]

MiB = 1 << 20
REPO = "ready/big"
as_root = pytest.mark.skipif(os.getuid() != 0, reason="read_ahead_kb is root's to raise")


@pytest.fixture(scope="module")
def layer(registry: RegistryServer) -> Layer:
    return push_image(registry.url, REPO, "v1", [random_bytes(16 * MiB, seed=12)]).layers[0]


@pytest.mark.parametrize("foreground", [False, True], ids=["detached", "foreground"])
def test_a_refused_init_is_a_one_line_error(
    tmp_path: Path, registry: RegistryServer, foreground: bool
) -> None:
    """libfuse refuses INIT when -o max_read differs from what init() negotiated; the mount
    used to report success and vanish right after."""
    path = tmp_path / "mnt"
    path.mkdir()
    args = ["mount", "--registry", registry.url, "--cache-dir", str(tmp_path / "cache")]
    args += [*(["--foreground"] if foreground else []), "-o", "max_read=1048576", str(path)]
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path))
    try:
        result = run_regfs(args, env=env, timeout=60)
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("regfs:")]
        assert len(lines) == 1, result.stderr
        assert "maximum read size" in lines[0], result.stderr
        assert not is_mounted(path)
    finally:
        force_unmount(path)


def bdi_read_ahead_kb(path: Path) -> int:
    device = os.stat(path).st_dev  # the FUSE connection's device names its bdi
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    return int(knob.read_text())


@as_root
def test_read_ahead_reads_back_raised_and_reads_arrive_as_1_mib(
    tmp_path: Path, registry: RegistryServer, layer: Layer
) -> None:
    with mounted(tmp_path, registry.url) as m:
        assert bdi_read_ahead_kb(m.path) == READ_AHEAD_KB  # not lowered again by INIT's reply
        blob = m.path / REPO / "v1" / "layers" / f"{layer.digest}.tar.gz"
        subprocess.run(
            ["dd", f"if={blob}", "of=/dev/null", "bs=1M"], check=True, capture_output=True
        )
        sizes = {int(size): count for size, count in m.stats()["fuse_read_sizes"].items()}  # type: ignore[attr-defined]
        # At 128 KiB readahead the kernel splits each 1 MiB read(2) into 8 READs.
        assert sizes.get(MiB, 0) * MiB >= 15 * MiB, sizes
        assert f"read_ahead_kb {READ_AHEAD_KB}" in m.log()
