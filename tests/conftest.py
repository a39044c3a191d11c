"""Session-wide servers on 127.0.0.1 for the integration tests, and the test levels.

The servers are plain sync fixtures (pytest-trio's trio_mode only affects async ones): each
is started once per session, seeded, and stopped at the end.

Levels, for `pytest -m`: an unmarked test needs no server and no mount (the unit tests);
`registry` needs real servers or peers, `mount` a real FUSE mount. A test that uses a
server fixture below is marked `registry` here; a module or test that starts servers
itself, or mounts, says so with `pytestmark` or a decorator. An unmarked test that mounts
fails, so `-m "not mount"` stays a run without FUSE.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import mounting
from tests.fixtures.cdn import CDNServer
from tests.fixtures.images import PushedImage
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.rootfs_images import RootfsFixtures, RootfsImage, push_big, push_rootfs_images
from tests.fixtures.seed import ALICE, SEEDER, Seeded, seed_hello, seed_registry
from tests.fixtures.token_issuer import TokenIssuer
from tests.fixtures.treecompare import UmociUnpacks

# Using any of these (directly or through another fixture) makes a test `registry`.
SERVER_FIXTURES = {
    "cdn",
    "token_issuer",
    "_seeded_registry",
    "_htpasswd_registry",
    "_token_registry",
    "rootfs_registry",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.registry)


@pytest.fixture(autouse=True)
def _mount_only_if_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("mount") is None:
        mounting.refuse_mounts = f"{request.node.nodeid} mounts: mark it @pytest.mark.mount"
    try:
        yield
    finally:
        mounting.refuse_mounts = None


@pytest.fixture(scope="session")
def cdn() -> Iterator[CDNServer]:
    with CDNServer() as server:
        yield server


@pytest.fixture(scope="session")
def _seeded_registry(
    tmp_path_factory: pytest.TempPathFactory, cdn: CDNServer
) -> Iterator[tuple[RegistryServer, Seeded]]:
    with start_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server, seed_registry(server.url, cdn)


@pytest.fixture(scope="session")
def registry(_seeded_registry: tuple[RegistryServer, Seeded]) -> RegistryServer:
    """Anonymous registry (pull and push without credentials) holding every seeded image."""
    return _seeded_registry[0]


@pytest.fixture(scope="session")
def seeded(_seeded_registry: tuple[RegistryServer, Seeded]) -> Seeded:
    """What `registry` holds, with the exact bytes it must serve."""
    return _seeded_registry[1]


@pytest.fixture(scope="session")
def _htpasswd_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, PushedImage]]:
    users = dict([ALICE])
    with start_registry(
        tmp_path_factory.mktemp("htpasswd-registry"), auth="htpasswd", htpasswd_users=users
    ) as server:
        yield server, seed_hello(server.url, auth=ALICE)


@pytest.fixture(scope="session")
def htpasswd_registry(_htpasswd_registry: tuple[RegistryServer, PushedImage]) -> RegistryServer:
    """Basic auth (alice/wonderland) registry holding library/hello:latest and :v1."""
    return _htpasswd_registry[0]


@pytest.fixture(scope="session")
def htpasswd_hello(_htpasswd_registry: tuple[RegistryServer, PushedImage]) -> PushedImage:
    return _htpasswd_registry[1]


@pytest.fixture(scope="session")
def token_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenIssuer]:
    """Token server for `token_registry`: alice may pull, the seeder may push, anonymous nothing."""
    with TokenIssuer(
        tmp_path_factory.mktemp("token-issuer"),
        users=dict([ALICE, SEEDER]),
        push_users=[SEEDER[0]],
        anonymous_pull=False,
    ) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def _token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_issuer: TokenIssuer
) -> Iterator[tuple[RegistryServer, PushedImage]]:
    with start_registry(
        tmp_path_factory.mktemp("token-registry"), auth="token", token_issuer=token_issuer
    ) as server:
        hello = seed_hello(server.url, auth=SEEDER)
        yield server, hello


@pytest.fixture(scope="session")
def token_registry(_token_registry: tuple[RegistryServer, PushedImage]) -> RegistryServer:
    """Token-auth registry holding library/hello:latest and :v1; anonymous pull refused."""
    return _token_registry[0]


@pytest.fixture(scope="session")
def token_hello(_token_registry: tuple[RegistryServer, PushedImage]) -> PushedImage:
    return _token_registry[1]


@pytest.fixture(scope="session")
def rootfs_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Anonymous registry for the rootfs/ images (its own, so the seeded catalog is unchanged)."""
    with start_registry(tmp_path_factory.mktemp("rootfs-registry")) as server:
        yield server


@pytest.fixture(scope="session")
def rootfs_images(
    rootfs_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> RootfsFixtures:
    """rootfs/merge (:gzip :tar :mixed :zstd), rootfs/gnu-sparse:1, rootfs/diff:v1/:v2 and the
    index rootfs/multi:1 in `rootfs_registry` (built as root: device nodes, owners)."""
    return push_rootfs_images(rootfs_registry.url, tmp_path_factory.mktemp("rootfs-staging"))


@pytest.fixture(scope="session")
def rootfs_big(rootfs_registry: RegistryServer) -> dict[str, RootfsImage]:
    """rootfs/big:gzip and :zstd (a 200 MiB file; about 5 s to build and push)."""
    return push_big(rootfs_registry.url)


@pytest.fixture(scope="session")
def umoci(
    rootfs_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> UmociUnpacks:
    """`umoci.rootfs(repo, tag or digest)`: umoci's unpack of an image of `rootfs_registry`."""
    return UmociUnpacks(rootfs_registry.host, Path(tmp_path_factory.mktemp("umoci")))
