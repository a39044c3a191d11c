"""The mount end to end: browse, read, verify with plain tools."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cdn import CDNServer
from tests.fixtures.mounting import mounted
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import Seeded

pytestmark = [pytest.mark.mount, pytest.mark.registry]


def test_every_layer_of_hello_reads_back_with_its_digest(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    with mounted(tmp_path, registry.url) as m:
        image = m.path / "library" / "hello" / "latest"
        assert (image / "manifest.json").read_bytes() == seeded.hello.manifest_bytes
        assert (image / "config.json").read_bytes() == seeded.hello.config_bytes
        for layer in seeded.hello.layers:
            path = image / "layers" / f"{layer.digest}.tar.gz"
            out = subprocess.run(
                ["sha256sum", str(path)], capture_output=True, text=True, check=True
            )
            assert out.stdout.split()[0] == layer.digest.split(":", 1)[1]
        names = subprocess.run(
            ["tar", "tzf", str(image / "layers" / f"{seeded.hello.layers[0].digest}.tar.gz")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert names, "the first layer lists no entries"


def test_foreign_layer_comes_from_the_cdn_without_credentials(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, cdn: object
) -> None:
    with mounted(tmp_path, registry.url) as m:
        layers = m.path / "windows" / "servercore" / "ltsc2019-amd64" / "layers"
        for layer in seeded.windows.layers:
            data = (layers / f"{layer.digest}.tar.gz").read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest


def test_foreign_layer_ranges_skip_the_registry_and_the_redirect_after_the_first(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, cdn: CDNServer
) -> None:
    foreign = next(layer for layer in seeded.windows.layers if layer.urls)
    name = foreign.urls[0].rsplit("/", 1)[1]
    before = len(cdn.requests)
    # 64K blocks: the ~5 MiB layer takes dozens of ranged requests.
    with mounted(tmp_path, registry.url, "--block-size", "64K") as m:
        path = m.path / "windows" / "servercore" / "ltsc2019-amd64" / "layers"
        with (path / f"{foreign.digest}.tar.gz").open("rb", buffering=0) as layer:
            # A first small read answered before the rest is asked for: with readahead
            # raised, one read of the whole file is a few 1 MiB READs all in flight at once.
            data = layer.read(4096)
            data += layer.read()
    assert data == foreign.data
    seen = cdn.requests[before:]
    ranged = [r for r in seen if r.path.endswith(name) and r.path.startswith("/cdn/")]
    redirects = [r for r in seen if r.path.startswith("/fwlink/")]
    # The CDN URL the redirect led to is remembered: only the requests already in flight
    # before the first answer (the read and up to 4 readahead ranges) took the redirect.
    assert len(ranged) >= 3
    assert 1 <= len(redirects) < len(ranged)
    assert not any(r.has_authorization for r in seen)
