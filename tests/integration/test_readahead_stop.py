"""Readahead stops when the reader closes the file: `head -c N` of a big layer through a real
mount fetches N and what was already on its way, not the readahead window after it.

The registry sits behind a RangeGate that passes the layer's first N + 8 MiB at once and
holds every byte past that: the moment the reader closes, the readahead beyond is on its way
and not yet received, as it is over any link slower than the reader. Holding it there (not
a rate) makes the test's outcome independent of the machine's speed.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures._net import wait_until
from tests.fixtures.images import Layer, push_image, random_bytes
from tests.fixtures.mounting import Mount, mounted
from tests.fixtures.rangegate import RangeGate
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.mount, pytest.mark.registry]

MiB = 1 << 20
LAYER_SIZE = 96 * MiB
HEAD = 24 * MiB
# One readahead request (BlockCache's request_bytes): what may be on its way past the last
# byte read besides the blocks that already arrived; the gate passes exactly that much.
REQUEST = 8 * MiB
REPO = "readahead/big"


@pytest.fixture(scope="module")
def big_layer(registry: RegistryServer) -> Layer:
    image = push_image(registry.url, REPO, "v1", [random_bytes(LAYER_SIZE, seed=11)])
    return image.layers[0]


@pytest.fixture
def gated(
    tmp_path: Path, registry: RegistryServer, big_layer: Layer
) -> Iterator[tuple[RangeGate, Mount]]:
    with (
        RangeGate(registry.url, limit=HEAD + REQUEST) as gate,
        mounted(tmp_path, gate.url, "--timeout", "60") as m,
    ):
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
    asked = len(gate.responses)
    # With the gate open nothing of it is fetched after all: no request runs on unseen.
    gate.open()
    wait_until(lambda: m.stats()["in_flight_blocks"] == 0, timeout=30, what="a quiet mount")
    assert len(gate.responses) == asked
    # The bound: the N bytes read plus one readahead request (the gate lets no more through
    # before the close; without stopping the readahead, opening it let the whole 32 MiB
    # window in). Documents (manifest, config) come on top in the mount's own count.
    assert blob_bytes(gate, big_layer) <= HEAD + REQUEST
    documents = len(path.parent.parent.joinpath("manifest.json").read_bytes()) + 4096
    assert fetched(gate, m) - before <= HEAD + REQUEST + documents


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
