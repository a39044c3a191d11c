"""regfs.compose.AllRegistries without a network: --offline, so no registry is probed and
nothing connects; registries.conf configures every name used, so nothing is resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from regfs.compose import AllRegistries, MountConfig
from regfs.errors import NotFoundError, RefusedRegistryError
from regfs.oci import manifest as mf
from regfs.registry.registries_conf import RegistriesConf, RegistryAdmission
from regfs.views.registry import Options
from tests.unit.test_cache import make_cache

CONF = """
[[registry]]
location = "docker.io"

[[registry]]
prefix = "team.example"
location = "127.0.0.9:5000/team"

[[registry]]
prefix = "team.example/secret"
location = "127.0.0.9:5000/team/secret"
blocked = true

[[registry]]
location = "127.0.0.9:6000"
blocked = true
"""


async def never_resolve(host: str, port: int) -> list[object]:
    raise AssertionError(f"{host} was resolved")


@pytest.fixture
def registries(tmp_path: Path) -> AllRegistries:
    (tmp_path / "registries.conf").write_text(CONF)
    conf = RegistriesConf.load(
        {"CONTAINERS_REGISTRIES_CONF": str(tmp_path / "registries.conf"), "HOME": str(tmp_path)},
        etc=tmp_path / "etc",
    )
    config = MountConfig(tmp_path / "mnt", options=Options(offline=True), all_registries=True)
    cache = make_cache()
    admission = RegistryAdmission(conf, resolve=never_resolve)  # type: ignore[arg-type]
    return AllRegistries(
        config,
        conf,
        admission,
        disk=None,
        cache=cache,
        layers=None,
        started=0.0,  # type: ignore[arg-type]
    )


async def test_docker_io_is_registry_1_with_library_as_its_namespace(
    registries: AllRegistries,
) -> None:
    hub = await registries.tree("docker.io")
    assert hub is not None
    assert hub.store.host == "registry-1.docker.io"
    assert hub.store.default_namespace == "library"
    assert await registries.tree("registry-1.docker.io") is hub  # one registry, two names
    assert "docker.io" in registries.listed()


async def test_a_location_path_and_blocked_repositories_apply_beneath(
    registries: AllRegistries,
) -> None:
    team = await registries.tree("team.example")
    assert team is not None and team.store.host == "127.0.0.9:5000"
    store = team.store
    assert store.blob("app", _descriptor()).source is None  # offline: nothing to fetch from
    with pytest.raises(NotFoundError):
        await store.tags("secret")
    with pytest.raises(NotFoundError):
        store.blob("secret", _descriptor())


async def test_a_blocked_registry_is_refused_before_anything(registries: AllRegistries) -> None:
    with pytest.raises(RefusedRegistryError):
        await registries.tree("127.0.0.9:6000")
    assert "127.0.0.9:6000" not in registries.listed()


def _descriptor() -> mf.Descriptor:
    return mf.Descriptor(media_type="application/octet-stream", digest="sha256:" + "0" * 64, size=1)
