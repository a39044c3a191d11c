"""A registry's rate limit (429 with Retry-After), through a real mount over a fault proxy in
front of a real registry: a limit that resets later than regfs may wait fails the operation
at once (EAGAIN, or EIO for a read(2), where EAGAIN would read as "no data yet") and a log
line saying when it resets; a short one is waited out."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import Layer, PushedImage
from tests.fixtures.mounting import mounted
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import Seeded

pytestmark = [pytest.mark.registry, pytest.mark.mount]

TOO_MANY = json.dumps(
    {"errors": [{"code": "TOOMANYREQUESTS", "message": "You have reached your pull rate limit."}]}
).encode()
# Without the fast failure, the wait would run into this bound: EIO or ETIMEDOUT, not EAGAIN.
TIMEOUT = ["--timeout", "20"]


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as server:
        yield server


def big_layer(image: PushedImage) -> Layer:
    return max(image.layers, key=lambda layer: layer.size)


def layer_file(image_dir: Path, digest: str) -> Path:
    layers = (image_dir / "layers").iterdir()  # the blob, not the layer's tree beside it
    (found,) = [p for p in layers if p.name.startswith(digest) and p.name != digest]
    return found


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return "sha256:" + out.stdout.split()[0]


def read_errno(path: Path) -> int:
    """The errno of the first read(2) of `path`. Raw, not Python's buffered read: that
    returns None for EAGAIN (it takes it for a non-blocking file with no data yet)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    assert info.value.errno is not None
    return info.value.errno


def rate_limit_lines(log: str, host: str) -> list[str]:
    pattern = re.compile(
        rf"toomanyrequests: the rate limit of {re.escape(host)} was reached; it resets in "
        r"(\d+h\d\dm|\d+m\d\ds|[\d.]+s) \(at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"
    )
    return [line for line in log.splitlines() if pattern.search(line)]


def test_sustained_429_on_a_blob_read_is_eio_at_once(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    with mounted(tmp_path, proxy.url, *TIMEOUT) as m:
        image_dir = m.path / "library/hello/latest"
        path = layer_file(image_dir, layer.digest)  # the image resolved before the limit
        proxy.fault(
            f"/blobs/{layer.digest}",
            status=429,
            headers={"Retry-After": "3600", "Content-Type": "application/json"},
            body=TOO_MANY,
            times=None,
        )
        code = read_errno(path)
        stats = m.stats()
        log = m.log()
    assert code == errno.EIO  # not EAGAIN: Python's buffered read would end a copy early
    host = proxy.url.removeprefix("http://")
    lines = rate_limit_lines(log, host)
    assert lines and "resets in 1h00m" in lines[0], log
    assert stats["retries"] == 0  # the hour was not waited in 30 s steps
    assert stats["errors"].get("RateLimitedError", 0) >= 1  # type: ignore[attr-defined]


def test_sustained_429_on_a_manifest_is_eagain_at_once(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    proxy.fault(
        "/manifests/",
        status=429,
        headers={"Retry-After": "3600"},
        body=TOO_MANY,
        times=None,
    )
    with mounted(tmp_path, proxy.url, *TIMEOUT) as m:
        with pytest.raises(OSError) as info:
            (m.path / "library/hello/latest/manifest.json").read_bytes()
        log = m.log()
    assert info.value.errno == errno.EAGAIN
    assert rate_limit_lines(log, proxy.url.removeprefix("http://")), log
    manifest_gets = [r for r in proxy.requests if "/manifests/" in r.path]
    assert len(manifest_gets) == 1  # asked once: no retry would come before the reset


def test_short_429_is_waited_out_and_the_read_succeeds(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    with mounted(tmp_path, proxy.url, *TIMEOUT) as m:
        image_dir = m.path / "library/hello/latest"
        path = layer_file(image_dir, layer.digest)
        fault = proxy.fault(
            f"/blobs/{layer.digest}", status=429, headers={"Retry-After": "1"}, times=1
        )
        assert sha256sum(path) == layer.digest
        stats = m.stats()
        log = m.log()
    assert fault.hits == 1
    assert stats["retries"] >= 1
    assert not rate_limit_lines(log, proxy.url.removeprefix("http://"))
    # The range refused with 429 was asked again, and the bytes came.
    ranges = proxy.ranges(f"/blobs/{layer.digest}")
    assert len(ranges) >= 2 and ranges[0] == ranges[1]
