"""The mount end to end: browse, read, verify with plain tools."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.fixtures.mounting import mounted
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import Seeded


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
