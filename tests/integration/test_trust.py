"""TLS trust across hosts, with real servers, each host with a CA of its own (trustme):

    127.0.0.2   docker-registry over https, token auth            CA "registry"
    127.0.0.3   its token realm (tests/fixtures/token_issuer.py)  CA "realm"
    127.0.0.4   a foreign-layer host (tests/fixtures/cdn.py)      CA "foreign"

None of the CAs is in the system store, so each test says exactly what is trusted: the realm's
CA through SSL_CERT_FILE (standing in for the system store), the registry's through
--ca-cert, the foreign host's through --foreign-ca-cert, in any mix. A mount that trusts
them all reads every byte; one that does not trust a host fails with the errno and the log
line the README promises, and asks that host once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from regfs.errors import UntrustedCertificateError, UntrustedRegistryCertificateError
from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry
from regfs.registry.blobs import BlobSource, ForeignURLPolicy
from regfs.registry.client import RegistryClient, RetryPolicy
from regfs.registry.httpclient import make_http_client
from regfs.vfs.fuse import errno_for
from tests.fixtures.cdn import CDNServer
from tests.fixtures.images import File, PushedImage, make_layer, push_image, random_bytes
from tests.fixtures.mounting import mounted
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.seed import SEEDER
from tests.fixtures.tls import TLSIdentity, ca_bundle, client_context, make_identity
from tests.fixtures.token_issuer import TokenIssuer

pytestmark = pytest.mark.registry  # the mounting tests are marked one by one

REGISTRY_HOST, REALM_HOST, FOREIGN_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.4"
FOREIGN_ALLOW = r"^https://127\.0\.0\.4[:/]"
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=1.0)
BLOCK = "256K"


@dataclass
class World:
    registry_id: TLSIdentity
    realm_id: TLSIdentity
    foreign_id: TLSIdentity
    registry: RegistryServer
    issuer: TokenIssuer
    foreign: CDNServer
    image: (
        PushedImage  # windows/servercore:trust, a foreign layer on 127.0.0.4, one in the registry
    )
    dead_first: PushedImage  # windows/deadfirst:1, whose foreign layer's first URL answers 404
    dead_name: str  # the CDN name of dead_first's foreign layer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("trust")
    registry_id = make_identity(work / "tls", REGISTRY_HOST, name="registry")
    realm_id = make_identity(work / "tls", REALM_HOST, name="realm")
    foreign_id = make_identity(work / "tls", FOREIGN_HOST, name="foreign")
    with (
        TokenIssuer(
            work / "issuer",
            users=dict([SEEDER]),
            push_users=[SEEDER[0]],
            anonymous_pull=True,
            host=REALM_HOST,
            tls=realm_id.server_context(),
        ) as issuer,
        start_registry(
            work / "registry",
            auth="token",
            token_issuer=issuer,
            tls=registry_id.server_files,
            bind=REGISTRY_HOST,
        ) as registry,
        CDNServer(host=FOREIGN_HOST, tls=foreign_id.server_context()) as foreign,
    ):
        pushing = client_context(registry_id, realm_id)
        base_layer = make_layer([File("Files/base.dll", random_bytes(300_000, seed=11))])
        image = push_image(
            registry.url,
            "windows/servercore",
            "trust",
            [make_layer([File("Files/update.txt", b"cumulative update\n")])],
            foreign=[(base_layer, [foreign.add("base.tar.gz", base_layer)])],  # via /fwlink/
            auth=SEEDER,
            verify=pushing,
        )
        yield World(
            registry_id,
            realm_id,
            foreign_id,
            registry,
            issuer,
            foreign,
            image,
            *_push_dead_first(registry, foreign, pushing),
        )


def _push_dead_first(
    registry: RegistryServer, foreign: CDNServer, pushing: ssl.SSLContext
) -> tuple[PushedImage, str]:
    # About 1.3 MB: several 256 KiB blocks, so several separate fetches.
    name = "dead-first.tar.gz"
    layer = make_layer([File("Files/big.dll", random_bytes(1_300_000, seed=12))])
    foreign.add(name, layer)
    image = push_image(
        registry.url,
        "windows/deadfirst",
        "1",
        [],
        foreign=[(layer, [foreign.missing_url(name), foreign.cdn_url(name)])],
        auth=SEEDER,
        verify=pushing,
    )
    return image, name


# -- helpers ---------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without SSL_CERT_FILE / SSL_CERT_DIR, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update(extra)
    return env


def mount_args(world: World, *, registry_ca: bool = True, foreign_ca: bool = False) -> list[str]:
    args = ["--foreign-url-allow", FOREIGN_ALLOW, "--block-size", BLOCK, "--debug"]
    if registry_ca:
        args += ["--ca-cert", str(world.registry_id.ca_path)]
    if foreign_ca:
        args += ["--foreign-ca-cert", str(world.foreign_id.ca_path)]
    return args


def layer_file(image_dir: Path, digest: str) -> Path:
    """The file of a layer in `layers/`, whatever extension its media type gives it."""
    layers = (image_dir / "layers").iterdir()  # the blob, not the layer's tree beside it
    (found,) = [p for p in layers if p.name.startswith(digest) and p.name != digest]
    return found


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return "sha256:" + out.stdout.split()[0]


def read_errno(path: Path) -> int:
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno is not None
    return info.value.errno


def netloc(url: str) -> str:
    return url.split("://", 1)[1]


def request_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "regfs.registry.httpclient" in line]


def untrusted_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "not trusted" in line]


def restrict_env(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


# -- through the mount -----------------------------------------------------------------------


@pytest.mark.mount
def test_each_host_trusted_its_own_way_serves_every_byte(tmp_path: Path, world: World) -> None:
    """The realm's CA only in SSL_CERT_FILE, the registry's only in --ca-cert, the foreign
    host's only in --foreign-ca-cert: each adds to the others (and to the system store)."""
    env = clean_env(SSL_CERT_FILE=str(world.realm_id.ca_path))
    with mounted(tmp_path, world.registry.url, *mount_args(world, foreign_ca=True), env=env) as m:
        image_dir = m.path / "windows/servercore/trust"
        assert (image_dir / "manifest.json").read_bytes() == world.image.manifest_bytes
        assert (image_dir / "config.json").read_bytes() == world.image.config_bytes
        for layer in world.image.layers:
            assert sha256sum(layer_file(image_dir, layer.digest)) == layer.digest
        log = m.log()
    lines = request_lines(log)
    realm, registry, foreign = (
        netloc(world.issuer.url),
        world.registry.host,
        netloc(world.foreign.url),
    )
    # --debug: a line per request, to every host, with method, host, path, status and bytes.
    assert any(re.search(rf"GET {realm} /token -> 200, [1-9]\d* bytes", x) for x in lines)
    assert any(f"GET {registry} /v2/windows/servercore/manifests/trust -> 200" in x for x in lines)
    assert any(f"GET {foreign} /fwlink/base.tar.gz -> 302, 0 bytes" in x for x in lines)
    assert any(
        re.search(rf"GET {foreign} /cdn/base.tar.gz -> 206, [1-9]\d* bytes", x) for x in lines
    )
    # Never a query string (the token request's holds the scope) or a header value.
    assert not [x for x in lines if "?" in x or "scope=" in x]
    assert "Bearer" not in log and "Authorization" not in log
    assert not untrusted_lines(log)


@pytest.mark.mount
def test_untrusted_realm_is_eacces_named_and_not_retried(tmp_path: Path, world: World) -> None:
    before = world.issuer.handshakes
    with mounted(tmp_path, world.registry.url, *mount_args(world), env=clean_env()) as m:
        code = read_errno(m.path / "windows/servercore/trust/manifest.json")
        log = m.log()
    assert code == errno.EACCES
    realm = netloc(world.issuer.url)
    refusals = untrusted_lines(log)
    assert refusals, log
    assert all(
        f"TLS certificate of token realm {realm} not trusted: "
        "unable to get local issuer certificate; "
        in x
        and "--ca-cert" in x
        and "()" not in x
        for x in refusals
    ), refusals
    # Every token request reached the realm once: none was retried as if transient.
    attempts = log.count("requesting a token for")
    assert attempts >= 1
    assert world.issuer.handshakes - before == attempts


@pytest.mark.mount
def test_untrusted_foreign_host_is_eio_and_named(tmp_path: Path, world: World) -> None:
    env = clean_env(SSL_CERT_FILE=str(world.realm_id.ca_path))
    with mounted(tmp_path, world.registry.url, *mount_args(world), env=env) as m:
        image_dir = m.path / "windows/servercore/trust"
        assert (image_dir / "manifest.json").read_bytes() == world.image.manifest_bytes
        foreign_layer, own_layer = world.image.layers
        assert sha256sum(layer_file(image_dir, own_layer.digest)) == own_layer.digest
        code = read_errno(layer_file(image_dir, foreign_layer.digest))
        log = m.log()
    assert code == errno.EIO
    refusals = untrusted_lines(log)
    foreign = netloc(world.foreign.url)
    assert refusals and all(
        f"TLS certificate of foreign host {foreign} not trusted: "
        "unable to get local issuer certificate; "
        in x
        and "--foreign-ca-cert" in x
        for x in refusals
    ), refusals


@pytest.mark.mount
def test_dead_first_foreign_url_is_asked_once(tmp_path: Path, world: World) -> None:
    world.foreign.clear()
    env = clean_env(SSL_CERT_FILE=str(world.realm_id.ca_path))
    with mounted(tmp_path, world.registry.url, *mount_args(world, foreign_ca=True), env=env) as m:
        (layer,) = world.dead_first.layers
        image_dir = m.path / "windows/deadfirst/1"
        assert sha256sum(layer_file(image_dir, layer.digest)) == layer.digest
    gets = [r.path for r in world.foreign.requests if r.method == "GET"]
    assert gets.count(f"/cdn/{world.dead_name}") >= 2, gets  # several fetches ...
    assert gets.count(f"/missing/{world.dead_name}") == 1, gets  # ... and the dead URL asked once


# -- the same, one request at a time (no mount) ------------------------------------------------


async def test_untrusted_realm_is_one_request_and_eacces(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    restrict_env(monkeypatch)
    address = parse_registry(world.registry.url)
    client = RegistryClient(address, ca_cert=str(world.registry_id.ca_path), retry=FAST_RETRY)
    before = world.issuer.handshakes
    try:
        with pytest.raises(UntrustedRegistryCertificateError) as info:
            await client.list_tags("windows/servercore")
    finally:
        await client.aclose()
    assert world.issuer.handshakes - before == 1
    assert errno_for(info.value) == errno.EACCES
    assert info.value.host == netloc(world.issuer.url)
    assert info.value.reason == "unable to get local issuer certificate"


async def test_untrusted_registry_is_eacces(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    restrict_env(monkeypatch, SSL_CERT_FILE=str(world.realm_id.ca_path))
    client = RegistryClient(parse_registry(world.registry.url), retry=FAST_RETRY)
    try:
        with pytest.raises(UntrustedRegistryCertificateError) as info:
            await client.get_manifest("windows/servercore", "trust")
    finally:
        await client.aclose()
    assert errno_for(info.value) == errno.EACCES
    assert f"TLS certificate of registry {world.registry.host} not trusted" in str(info.value)


def _source(client: RegistryClient, image: PushedImage) -> BlobSource:
    layer = image.layers[0]
    descriptor = mf.Descriptor(layer.media_type, layer.digest, layer.size, layer.urls)
    return BlobSource(client, image.repo, descriptor, policy=ForeignURLPolicy([FOREIGN_ALLOW]))


async def _fetch_all(source: BlobSource) -> bytes:
    parts: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        parts.append(chunk)

    await source.fetch(0, source.size, sink)
    return b"".join(parts)


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "--foreign-ca-cert"])
async def test_foreign_host_trust(
    world: World, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    restrict_env(monkeypatch, SSL_CERT_FILE=str(world.realm_id.ca_path))
    client = RegistryClient(
        parse_registry(world.registry.url),
        ca_cert=str(world.registry_id.ca_path),
        foreign_ca_certs=[str(world.foreign_id.ca_path)] if trusted else [],
        retry=FAST_RETRY,
    )
    source = _source(client, world.image)
    before = world.foreign.handshakes
    try:
        if trusted:
            assert await _fetch_all(source) == world.image.layers[0].data
            return
        with pytest.raises(UntrustedCertificateError) as info:
            await _fetch_all(source)
    finally:
        await client.aclose()
    assert not isinstance(info.value, UntrustedRegistryCertificateError)
    assert errno_for(info.value) == errno.EIO
    assert info.value.host == netloc(world.foreign.url)
    assert world.foreign.handshakes - before == 1  # not retried


async def test_ca_cert_for_the_registry_never_trusts_a_foreign_host(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--ca-cert is the registry's (and its realm's and CDN's): a foreign host whose CA is
    only there is still refused."""
    restrict_env(monkeypatch)
    bundle = ca_bundle(tmp_path / "all.pem", world.registry_id, world.realm_id, world.foreign_id)
    client = RegistryClient(
        parse_registry(world.registry.url), ca_cert=str(bundle), retry=FAST_RETRY
    )
    try:
        assert "trust" in await client.list_tags("windows/servercore")
        with pytest.raises(UntrustedCertificateError):
            await _fetch_all(_source(client, world.image))
    finally:
        await client.aclose()


async def test_ssl_cert_dir_is_trusted(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl(1) is needed to make a hashed certificate directory")
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    for identity in (world.registry_id, world.realm_id):
        (cert_dir / identity.ca_path.name).write_bytes(identity.ca_path.read_bytes())
    subprocess.run(["openssl", "rehash", str(cert_dir)], check=True, capture_output=True)
    restrict_env(monkeypatch, SSL_CERT_DIR=f"{tmp_path / 'nothing'}{os.pathsep}{cert_dir}")
    client = RegistryClient(parse_registry(world.registry.url), retry=FAST_RETRY)
    try:
        assert "trust" in await client.list_tags("windows/servercore")
    finally:
        await client.aclose()


async def test_a_bare_client_trusts_ssl_cert_file(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    restrict_env(monkeypatch, SSL_CERT_FILE=str(world.foreign_id.ca_path))
    http = make_http_client(insecure=False, timeout=10)
    try:
        with trio.fail_after(30):
            response = await http.get(world.foreign.cdn_url("base.tar.gz"))
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() in world.image.layers[0].digest
    finally:
        await http.aclose()


async def test_insecure_is_for_the_registry_side_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--insecure skips verification of the registry and what shares its client (realm, CDN
    redirects), never of a foreign host."""
    restrict_env(monkeypatch)
    client = RegistryClient(parse_registry(world.registry.url), insecure=True, retry=FAST_RETRY)
    try:
        assert "trust" in await client.list_tags("windows/servercore")  # registry and realm
        with pytest.raises(UntrustedCertificateError) as info:
            await _fetch_all(_source(client, world.image))
    finally:
        await client.aclose()
    assert info.value.host == netloc(world.foreign.url)
