"""Readahead stops when the reader closes the file: `head -c N` of a big layer through a real
mount fetches N and what was already on its way, not the readahead window after it.

The registry sits behind a RangeGate that passes the layer's first N bytes and the kernel's
own readahead after them at once, and holds every byte past that: the moment the reader
closes, regfs's readahead beyond is on its way and not yet received, as it is over any link
slower than the reader. Holding it there (not a rate) makes the outcome independent of the
machine's speed; the kernel's reads are never held, so head and its close never wait.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from regfs.mount import mount_device
from tests.fixtures._net import wait_until
from tests.fixtures.images import Layer, push_image, random_bytes
from tests.fixtures.mounting import Mount, mounted
from tests.fixtures.rangegate import RangeGate
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.mount, pytest.mark.registry]

MiB = 1 << 20
LAYER_SIZE = 96 * MiB
HEAD = 24 * MiB
# One readahead request (BlockCache's request_bytes): what may already have arrived of the
# readahead on its way when the reader closes.
REQUEST = 8 * MiB
REPO = "readahead/big"


@pytest.fixture(scope="module")
def big_layer(registry: RegistryServer) -> Layer:
    image = push_image(registry.url, REPO, "v1", [random_bytes(LAYER_SIZE, seed=11)])
    return image.layers[0]


def kernel_ahead(m: Mount) -> int:
    """How far past a reader the kernel itself may read: its readahead keeps up to two
    windows of read_ahead_kb ahead (the current one and the next, started early)."""
    device = mount_device(m.path)
    assert device is not None
    return 2 * int(Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text()) * 1024


@pytest.fixture
def gated(
    tmp_path: Path, registry: RegistryServer, big_layer: Layer
) -> Iterator[tuple[RangeGate, Mount]]:
    with (
        RangeGate(registry.url, limit=LAYER_SIZE) as gate,
        mounted(tmp_path, gate.url, "--timeout", "60") as m,
    ):
        # Just past what head and the kernel read: only regfs's own readahead is held.
        gate.limit = HEAD + kernel_ahead(m)
        try:
            yield gate, m
        finally:
            gate.open()  # nothing left held when the mount goes


def layer_file(m: Mount, layer: Layer) -> Path:
    return m.path / REPO / "v1" / "layers" / f"{layer.digest}.tar.gz"


def fetched(gate: RangeGate, m: Mount) -> int:
    by_host = m.stats()["bytes_fetched_by_host"]
    assert isinstance(by_host, dict)
    return int(by_host.get(gate.url.removeprefix("http://"), 0))


def blob_bytes(gate: RangeGate, layer: Layer) -> int:
    return sum(r.sent for r in gate.responses if r.path.endswith(f"/blobs/{layer.digest}"))


def head_sha256(path: Path, count: int) -> str:
    result = subprocess.run(
        f"head -c {count} '{path}' | sha256sum",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.split()[0]


def test_head_c_fetches_what_it_read_and_not_the_window_after_it(
    gated: tuple[RangeGate, Mount], big_layer: Layer
) -> None:
    gate, m = gated
    before = fetched(gate, m)
    path = layer_file(m, big_layer)
    assert head_sha256(path, HEAD) == hashlib.sha256(big_layer.data[:HEAD]).hexdigest()
    # The readahead past the gate was asked for, and once head closed the file regfs gave
    # every such request up: nothing stays held.
    wait_until(
        lambda: all(r.outcome != "sending" for r in gate.responses),
        timeout=30,
        what="regfs to give up the readahead it no longer needs",
    )
    given_up = [r for r in gate.responses if r.outcome == "client closed"]
    assert given_up, gate.responses  # the window did reach past the gate: there was some
    assert m.stats()["readahead_stopped"] >= 1  # and the mount counts what it gave up
    asked = len(gate.responses)
    # With the gate open nothing of it is fetched after all: no request runs on unseen.
    gate.open()
    wait_until(lambda: m.stats()["in_flight_blocks"] == 0, timeout=30, what="a quiet mount")
    assert len(gate.responses) == asked
    # Nothing past the gate came, even with it open: without stopping the readahead, the
    # rest of the 32 MiB window came then. The bound: N plus one readahead request (or the
    # kernel's own readahead, 256 KiB at the default read_ahead_kb, were it larger); the
    # mount's own count holds the documents (manifest, config) too.
    assert blob_bytes(gate, big_layer) <= gate.limit
    documents = len(path.parent.parent.joinpath("manifest.json").read_bytes()) + 4096
    assert fetched(gate, m) - before <= HEAD + max(REQUEST, kernel_ahead(m)) + documents


def test_a_second_reader_of_the_same_layer_is_not_disturbed(
    gated: tuple[RangeGate, Mount], big_layer: Layer
) -> None:
    gate, m = gated
    path = layer_file(m, big_layer)
    whole = subprocess.Popen(
        ["sha256sum", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The whole-file reader reaches the gate and waits there, sharing the blob's
        # readahead with the head below; head closes its file while the other reads on.
        wait_until(lambda: bool(gate.held()), timeout=60, what="a reader at the gate")
        assert head_sha256(path, HEAD) == hashlib.sha256(big_layer.data[:HEAD]).hexdigest()
        assert whole.poll() is None
        gate.open()
        out, err = whole.communicate(timeout=120)
    finally:
        if whole.poll() is None:
            whole.kill()
            whole.wait()
    assert whole.returncode == 0, err
    assert out.split()[0] == big_layer.digest.removeprefix("sha256:")
    blobs = m.stats()["blobs"]
    assert isinstance(blobs, dict) and blobs["verified"] >= 2 and blobs["failed"] == 0
    assert " ERROR " not in m.log() and "Input/output error" not in m.log()
