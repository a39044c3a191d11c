"""Faults between regfs and a real registry (and CDN), injected by tests/fixtures/faultproxy.py.

Most rows are tested at the BlobSource / BlockCache / RegistryClient level (fast, no mount);
the rows whose promise is about the filesystem (sha256sum, EIO, ls/stat meanwhile) mount.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from regfs.cache.blob import BlobRef
from regfs.cache.blocks import BlockCache
from regfs.cache.disk import DiskCache
from regfs.errors import (
    AuthError,
    ForbiddenURLError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    ProtocolError,
    TransientError,
)
from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry
from regfs.registry.blobs import BlobSource, ForeignURLPolicy
from regfs.registry.client import RegistryClient, RetryPolicy
from regfs.registry.credentials import Credentials
from regfs.vfs.fuse import errno_for
from tests.fixtures.faultproxy import Fault, FaultProxy, black_hole
from tests.fixtures.images import Layer, PushedImage
from tests.fixtures.mounting import mounted
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import ALICE, Seeded
from tests.fixtures.token_issuer import TokenIssuer

pytestmark = pytest.mark.registry  # the mounting tests are marked one by one

BLOCK = 256 * 1024
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=1.0)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as server:
        yield server


def big_layer(image: PushedImage) -> Layer:
    return max(image.layers, key=lambda layer: layer.size)


def client_for(
    url: str, *, timeout: float = 10.0, retry: RetryPolicy = FAST_RETRY
) -> RegistryClient:
    return RegistryClient(parse_registry(url), timeout=timeout, retry=retry)


def source_for(client: RegistryClient, repo: str, layer: Layer) -> BlobSource:
    descriptor = mf.Descriptor(layer.media_type, layer.digest, layer.size, layer.urls)
    return BlobSource(
        client, repo, descriptor, policy=ForeignURLPolicy([r"^http://127\.0\.0\.1[:/]"])
    )


async def fetch_all(source: BlobSource, start: int = 0, end: int | None = None) -> bytes:
    parts: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        parts.append(chunk)

    await source.fetch(start, source.size if end is None else end, sink)
    return b"".join(parts)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(layer: Layer) -> str:
    return f"/blobs/{layer.digest}"


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return "sha256:" + out.stdout.split()[0]


# -- connection cut after N bytes, reset by peer -----------------------------------------


CUTS = {
    "0 bytes": 0,
    "1 byte": 1,
    "block-1": BLOCK - 1,
    "block": BLOCK,
    "block+1": BLOCK + 1,
    "size-1": -1,
}


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("cut", list(CUTS.values()), ids=list(CUTS))
async def test_cut_connection_resumes_at_the_exact_next_offset(
    proxy: FaultProxy, seeded: Seeded, cut: int, reset: bool
) -> None:
    layer = big_layer(seeded.hello)
    cut = layer.size - 1 if cut < 0 else cut
    proxy.fault(blob_path(layer), cut_after=cut, reset=reset)
    client = client_for(proxy.url)
    try:
        data = await fetch_all(source_for(client, "library/hello", layer))
    finally:
        await client.aclose()
    assert sha256(data) == layer.digest
    last = layer.size - 1
    ranges = proxy.ranges(blob_path(layer))
    if not reset:
        assert ranges == [f"bytes=0-{last}", f"bytes={cut}-{last}"]
    else:
        # An RST discards what the client's kernel had not yet handed over, so the resume
        # offset is what was delivered (<= cut); the digest proves it was exact.
        assert len(ranges) == 2 and ranges[0] == f"bytes=0-{last}"
        resumed = int(ranges[1].removeprefix("bytes=").split("-")[0])  # type: ignore[union-attr]
        assert 0 <= resumed <= cut and ranges[1] == f"bytes={resumed}-{last}"


async def test_cut_through_the_block_cache_resumes_inside_the_block(
    proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    cut = BLOCK + 1
    proxy.fault(blob_path(layer), cut_after=cut)
    client = client_for(proxy.url)
    cache = BlockCache(disk=None, block_size=BLOCK, request_bytes=8 * BLOCK)
    blob = BlobRef(layer.digest, layer.size, "r", source_for(client, "library/hello", layer))
    try:
        async with cache.running():
            data = await cache.read(blob, 0, layer.size)
            assert cache.is_verified(layer.digest)
    finally:
        await client.aclose()
    assert sha256(data) == layer.digest
    ranges = proxy.ranges(blob_path(layer))
    assert ranges[0] == f"bytes=0-{8 * BLOCK - 1}"
    assert ranges[1] == f"bytes={cut}-{8 * BLOCK - 1}"


@pytest.mark.mount
def test_cut_connection_through_the_mount_gives_the_right_sha256(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    cut = 1 << 20  # a block boundary with --block-size 1M
    proxy.fault(blob_path(layer), cut_after=cut, reset=True)
    with mounted(tmp_path, proxy.url, "--block-size", "1M") as m:
        path = m.path / "library/hello/latest/layers" / f"{layer.digest}.tar.gz"
        assert sha256sum(path) == layer.digest
    ranges = [r for r in proxy.ranges(blob_path(layer)) if r]
    assert any(r.startswith(f"bytes={cut}-") for r in ranges), ranges


# -- the same forever --------------------------------------------------------------------


async def test_no_progress_forever_fails_instead_of_hanging(
    proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), cut_after=0, times=None)
    client = client_for(proxy.url)
    try:
        with trio.fail_after(120), pytest.raises(TransientError):
            await fetch_all(source_for(client, "library/hello", layer))
    finally:
        await client.aclose()
    assert len(proxy.ranges(blob_path(layer))) == FAST_RETRY.attempts


@pytest.mark.mount
def test_no_progress_forever_is_eio_through_the_mount(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), stall=True, times=None)
    with mounted(tmp_path, proxy.url, "--timeout", "5") as m:
        path = m.path / "library/hello/latest/layers" / f"{layer.digest}.tar.gz"
        with pytest.raises(OSError) as info:
            path.read_bytes()
        assert info.value.errno == errno.EIO


# -- Range ignored, wrong or missing Content-Range, 416 -----------------------------------


async def test_server_ignoring_range_never_yields_a_wrong_byte(
    proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), ignore_range=True, times=None)
    client = client_for(proxy.url)
    try:
        start, end = BLOCK + 7, 3 * BLOCK - 5
        data = await fetch_all(source_for(client, "library/hello", layer), start, end)
    finally:
        await client.aclose()
    assert data == layer.data[start:end]


BAD_RANGES = {
    "wrong start": {"Content-Range": "bytes 5-104/{size}"},
    "wrong total": {"Content-Range": "bytes {start}-{last}/{size1}"},
    "missing": {"Content-Range": ""},
    "garbage": {"Content-Range": "bytes */{size}"},
}


@pytest.mark.parametrize("headers", list(BAD_RANGES.values()), ids=list(BAD_RANGES))
async def test_wrong_or_missing_content_range_fails_without_wrong_bytes(
    proxy: FaultProxy, seeded: Seeded, headers: dict[str, str]
) -> None:
    layer = big_layer(seeded.hello)
    start, end = 1000, 2000
    values = {"size": layer.size, "size1": layer.size + 1, "start": start, "last": end - 1}
    proxy.fault(
        blob_path(layer),
        headers={k: v.format(**values) for k, v in headers.items()},
        times=None,
    )
    got: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        got.append(chunk)

    client = client_for(proxy.url)
    try:
        with pytest.raises(ProtocolError):
            await source_for(client, "library/hello", layer).fetch(start, end, sink)
    finally:
        await client.aclose()
    assert b"".join(got) == layer.data[start : start + len(b"".join(got))]


async def test_416_fails_without_bytes(proxy: FaultProxy, seeded: Seeded) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), status=416, headers={"Content-Range": "bytes */5"}, times=None)
    client = client_for(proxy.url)
    try:
        with pytest.raises(ProtocolError):
            await fetch_all(source_for(client, "library/hello", layer), 0, 100)
    finally:
        await client.aclose()


# -- right length, wrong bytes -------------------------------------------------------------


async def test_wrong_bytes_are_never_verified_and_are_purged(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), flip_at=3, times=None)  # in every response
    client = client_for(proxy.url)
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    cache = BlockCache(disk=disk, block_size=BLOCK)
    blob = BlobRef(layer.digest, layer.size, "r", source_for(client, "library/hello", layer))
    try:
        async with cache.running():
            with pytest.raises(IntegrityError):
                await cache.read(blob, 0, layer.size)
            assert not cache.is_verified(layer.digest)
            assert not disk.is_verified(layer.digest)
            assert not any(disk.pending_dir(layer.digest, "r").glob("*"))
            assert not any(k[0] == layer.digest for k in cache.memory)
            # Sequential reads block by block (as the kernel does): the last one is EIO.
            with pytest.raises(IntegrityError):
                for offset in range(0, layer.size, BLOCK):
                    await cache.read(blob, offset, BLOCK)
    finally:
        await client.aclose()
    assert cache.stats.failed >= 2


@pytest.mark.mount
def test_wrong_bytes_whole_file_read_is_eio_through_the_mount(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded
) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), flip_at=12345, times=None)
    with mounted(tmp_path, proxy.url) as m:
        path = m.path / "library/hello/latest/layers" / f"{layer.digest}.tar.gz"
        with pytest.raises(OSError) as info:
            path.read_bytes()
        assert info.value.errno == errno.EIO
        out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True)
        assert out.returncode != 0
        hexpart = layer.digest.split(":", 1)[1]
        assert not (m.cache_dir / "v1/blobs/sha256" / hexpart / "verified").exists()
        assert m.stats()["blobs"]["failed"] >= 1  # type: ignore[index]


# -- 429 / 408 / 5xx / 404 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {"Retry-After": "1"}),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # a date in the past: now
        (408, {}),
        (500, {}),
        (502, {}),
        (503, {"Retry-After": "0"}),
        (504, {}),
    ],
)
async def test_transient_statuses_are_retried(
    proxy: FaultProxy, seeded: Seeded, status: int, headers: dict[str, str]
) -> None:
    image = seeded.hello
    manifest_path = f"/v2/library/hello/manifests/{image.manifest_digest}"
    layer = big_layer(image)
    proxy.fault(manifest_path, status=status, headers=headers, times=2)
    proxy.fault(blob_path(layer), status=status, headers=headers, times=2)
    client = client_for(proxy.url)
    try:
        doc = await client.get_manifest("library/hello", image.manifest_digest)
        data = await fetch_all(source_for(client, "library/hello", layer))
    finally:
        await client.aclose()
    assert doc.raw == image.manifest_bytes
    assert data == layer.data
    assert client.stats.retries == 4
    assert len([r for r in proxy.requests if r.path == manifest_path]) == 3


async def test_retries_are_bounded(proxy: FaultProxy, seeded: Seeded) -> None:
    proxy.fault("/manifests/", status=503, times=None)
    client = client_for(proxy.url)
    try:
        with pytest.raises(TransientError):
            await client.get_manifest("library/hello", "latest")
    finally:
        await client.aclose()
    assert len(proxy.requests) == FAST_RETRY.attempts


async def test_404_is_not_found_at_once(proxy: FaultProxy, seeded: Seeded) -> None:
    client = client_for(proxy.url)
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), status=404, times=None)
    try:
        with pytest.raises(NotFoundError):
            await client.get_manifest("library/hello", "no-such-tag")
        with pytest.raises(NotFoundError):
            await fetch_all(source_for(client, "library/hello", layer))
    finally:
        await client.aclose()
    assert len(proxy.requests) == 2
    assert client.stats.retries == 0


# -- a 1 byte/s drip, a stalled socket, a black-holed connect -----------------------------


@pytest.mark.mount
@pytest.mark.parametrize("how", ["drip", "stall"])
def test_stuck_read_is_bounded_and_the_mount_answers_meanwhile(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded, how: str
) -> None:
    layer = big_layer(seeded.hello)
    fault = {"drip": {"drip": 1.0}, "stall": {"stall": True}}[how]
    proxy.add(Fault(blob_path(layer), times=None, **fault))  # type: ignore[arg-type]
    with mounted(tmp_path, proxy.url, "--timeout", "5") as m:
        image = m.path / "library/hello/latest"
        names = os.listdir(image / "layers")  # resolve the image before the read
        path = image / "layers" / f"{layer.digest}.tar.gz"
        result: list[BaseException | bytes] = []

        def read() -> None:
            try:
                result.append(path.read_bytes())
            except OSError as exc:
                result.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            assert proxy.wait_for(
                lambda seen: any(blob_path(layer) in r.path for r in seen), timeout=60
            )
            # The read is stuck in the proxy: the rest of the mount still answers.
            assert sorted(os.listdir(image / "layers")) == sorted(names)
            assert os.stat(image / "manifest.json").st_size == len(seeded.hello.manifest_bytes)
            assert "latest" in os.listdir(m.path / "library/hello")
        finally:
            reader.join(timeout=120)
        assert not reader.is_alive()
        assert isinstance(result[0], OSError) and result[0].errno == errno.EIO


async def test_drip_feed_is_bounded_at_the_blob_level(proxy: FaultProxy, seeded: Seeded) -> None:
    layer = big_layer(seeded.hello)
    proxy.fault(blob_path(layer), drip=0.5, times=None)
    client = client_for(proxy.url, timeout=2, retry=RetryPolicy(attempts=2, base_delay=0.01))
    source = source_for(client, "library/hello", layer)
    source.allowance = 3.0  # per attempt; the floor rate adds nothing at 1 GiB/s
    source.floor = 1 << 30
    try:
        with trio.fail_after(120), pytest.raises(TransientError, match="slower"):
            await fetch_all(source)
    finally:
        await client.aclose()


async def test_black_holed_connect_is_bounded() -> None:
    with black_hole() as url:
        client = client_for(url, timeout=1, retry=RetryPolicy(attempts=2, base_delay=0.01))
        try:
            with trio.fail_after(60), pytest.raises(TransientError):
                await client.ping()
        finally:
            await client.aclose()


# -- a signed CDN URL that starts answering 403 -------------------------------------------


async def test_expired_cdn_url_is_resolved_again(proxy: FaultProxy, seeded: Seeded) -> None:
    layer = big_layer(seeded.hello)
    proxy.cdn_redirect = True
    client = client_for(proxy.url)
    source = source_for(client, "library/hello", layer)
    try:
        first = await fetch_all(source, 0, BLOCK)
        assert source.redirect_cache is not None
        assert str(source.redirect_cache).startswith(proxy.cdn_url)
        proxy.expire_signatures()
        rest = await fetch_all(source, BLOCK, layer.size)
    finally:
        await client.aclose()
    assert first + rest == layer.data
    registry_gets = [r for r in proxy.requests if not r.cdn and blob_path(layer) in r.path]
    cdn = [r for r in proxy.requests if r.cdn]
    assert len(registry_gets) == 2  # asked again for a fresh redirect
    assert len(cdn) == 3  # first range, the refused one, the fresh one
    assert not any(r.authorization or r.cookie for r in cdn)


# -- redirects ---------------------------------------------------------------------------


async def test_more_than_ten_redirects_are_refused(proxy: FaultProxy) -> None:
    proxy.fault("/v2/loop/", status=302, headers={"Location": "/v2/loop/x"}, times=None)
    client = client_for(proxy.url)
    try:
        with pytest.raises(ProtocolError, match="redirects"):
            await client.get_small("/v2/loop/x", scope=None, what="loop", limit=1000)
    finally:
        await client.aclose()
    assert len(proxy.requests) == 11


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x/"])
async def test_redirect_to_another_scheme_is_refused(proxy: FaultProxy, target: str) -> None:
    proxy.fault("/v2/elsewhere", status=307, headers={"Location": target}, times=None)
    client = client_for(proxy.url)
    try:
        with pytest.raises(ForbiddenURLError):
            await client.get_small("/v2/elsewhere", scope=None, what="x", limit=1000)
    finally:
        await client.aclose()


# -- oversized, bombs, endless bodies -----------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _endless() -> Iterator[bytes]:
    chunk = b"x" * 65536
    while True:
        yield chunk


HOSTILE = {
    "manifest over 4 MiB": {"body": b"{" + b" " * (5 << 20) + b"}"},
    "gzip bomb": {
        "body": gzip.compress(b"\0" * (256 << 20), compresslevel=9),
        "headers": {"Content-Encoding": "gzip"},
    },
    "endless chunked body": {"body_chunks": _endless},
}


@pytest.mark.parametrize("hostile", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_hostile_manifest_bodies_are_rejected_in_bounded_memory(
    proxy: FaultProxy, hostile: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Content-Type": mf.DOCKER_MANIFEST, **hostile.get("headers", {})}  # type: ignore[dict-item]
    proxy.add(
        Fault(
            "/manifests/latest",
            status=200,
            headers=headers,
            body=hostile.get("body"),  # type: ignore[arg-type]
            body_chunks=hostile.get("body_chunks"),  # type: ignore[arg-type]
            times=None,
        )
    )
    client = client_for(proxy.url)
    before = _rss_bytes()
    try:
        with pytest.raises(ProtocolError, match="larger than the limit"):
            await client.get_manifest("library/hello", "latest")
    finally:
        await client.aclose()
    assert _rss_bytes() - before < 50 << 20


async def test_oversized_error_body_is_cut_off(proxy: FaultProxy) -> None:
    proxy.fault("/manifests/", status=500, body_chunks=_endless, times=None)
    client = client_for(proxy.url, retry=RetryPolicy(attempts=2, base_delay=0.01))
    before = _rss_bytes()
    try:
        with trio.fail_after(60), pytest.raises(TransientError):
            await client.get_manifest("library/hello", "latest")
    finally:
        await client.aclose()
    assert _rss_bytes() - before < 50 << 20


# -- contradicting documents and digests --------------------------------------------------


def _both_manifests_and_layers(seeded: Seeded) -> bytes:
    doc = dict(seeded.hello.manifest)
    doc["manifests"] = []
    import json

    return json.dumps(doc).encode()


@pytest.mark.mount
@pytest.mark.parametrize("case", ["both", "contradicting type", "digest mismatch"])
def test_bad_documents_never_reach_the_tree(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded, case: str
) -> None:
    if case == "both":
        body, content_type = _both_manifests_and_layers(seeded), mf.DOCKER_MANIFEST
    elif case == "contradicting type":
        body, content_type = seeded.hello.manifest_bytes, mf.OCI_INDEX
    else:
        body, content_type = seeded.hello.manifest_bytes, mf.DOCKER_MANIFEST
    headers = {"Content-Type": content_type}
    if case == "digest mismatch":
        headers["Docker-Content-Digest"] = sha256(b"something else")
    with mounted(tmp_path, proxy.url) as m:
        proxy.fault(
            "/v2/library/hello/manifests/", status=200, body=body, headers=headers, times=None
        )
        with pytest.raises(OSError) as info:
            os.listdir(m.path / "library/hello/latest")
        assert info.value.errno in (errno.EIO, errno.ENOENT)
        assert not list((m.cache_dir / "v1" / "documents").rglob("*"))
        assert not list((m.cache_dir / "v1" / "tags").rglob("latest"))


async def test_manifest_by_digest_must_match_it(proxy: FaultProxy, seeded: Seeded) -> None:
    other = seeded.oci_app
    proxy.fault(
        f"/manifests/{seeded.hello.manifest_digest}",
        status=200,
        body=other.manifest_bytes,
        headers={"Content-Type": other.manifest_media_type},
    )
    client = client_for(proxy.url)
    try:
        with pytest.raises(ManifestError):
            await client.get_manifest("library/hello", seeded.hello.manifest_digest)
    finally:
        await client.aclose()


# -- self-signed TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, Path]]:
    trustme = pytest.importorskip("trustme")
    workdir = tmp_path_factory.mktemp("tls-registry")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    ca.cert_pem.write_to_path(str(ca_path))
    with start_tls(workdir, cert_path, key_path) as server:
        yield server, ca_path


def start_tls(workdir: Path, cert: Path, key: Path) -> RegistryServer:
    from tests.fixtures.registry import start_registry

    return start_registry(workdir / "server", tls=(cert, key))


async def test_untrusted_tls_is_refused_unless_opted_in(
    tls_registry: tuple[RegistryServer, Path],
) -> None:
    server, ca_path = tls_registry
    address = parse_registry(server.url)
    for kwargs, ok in [
        ({}, False),
        ({"ca_cert": str(ca_path)}, True),
        ({"insecure": True}, True),
    ]:
        client = RegistryClient(address, retry=FAST_RETRY, timeout=10, **kwargs)  # type: ignore[arg-type]
        try:
            if ok:
                await client.ping()
            else:
                with pytest.raises(AuthError, match="certificate"):
                    await client.ping()
        finally:
            await client.aclose()


# -- the disk cache damaged ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["bit flipped", "block truncated", "killed while writing"])
async def test_damaged_disk_cache_is_detected_and_fetched_again(
    tmp_path: Path, proxy: FaultProxy, seeded: Seeded, damage: str
) -> None:
    layer = big_layer(seeded.hello)
    client = client_for(proxy.url)
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    blob = BlobRef(layer.digest, layer.size, "r", source_for(client, "library/hello", layer))
    try:
        async with BlockCache(disk=disk, block_size=BLOCK).running() as cache:
            assert await cache.read(blob, 0, layer.size) == layer.data
        assert disk.is_verified(layer.digest)
        block = disk.verified_dir(layer.digest) / "1"
        raw = bytearray(block.read_bytes())
        if damage == "bit flipped":
            raw[100] ^= 0x04
            block.write_bytes(bytes(raw))
        elif damage == "block truncated":
            block.write_bytes(bytes(raw[: len(raw) // 2]))
        else:  # a torn write: the temporary file is left, the block never renamed into place
            (block.parent / ".tmp-torn").write_bytes(bytes(raw[:1000]))
            block.unlink()
        proxy.clear()
        async with BlockCache(disk=disk, block_size=BLOCK).running() as cache:
            data = await cache.read(blob, 0, layer.size)
        assert data == layer.data
        gets = proxy.ranges(blob_path(layer))
        assert gets and all(r is not None and r.startswith(f"bytes={BLOCK}-") for r in gets)
    finally:
        await client.aclose()


# -- tokens: 50 parallel readers, a repeated 401 ----------------------------------------------


async def test_50_parallel_readers_share_one_token_request(
    token_registry: RegistryServer, token_hello: PushedImage, token_issuer: TokenIssuer
) -> None:
    layer = big_layer(token_hello)
    scope = "repository:library/hello:pull"
    token_issuer.clear()
    client = RegistryClient(
        parse_registry(token_registry.url), credentials=Credentials(*ALICE), retry=FAST_RETRY
    )
    results: dict[int, bytes] = {}
    step = layer.size // 50

    async def reader(i: int) -> None:
        source = source_for(client, "library/hello", layer)
        results[i] = await fetch_all(source, i * step, (i + 1) * step)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(reader, i)
    finally:
        await client.aclose()
    assert b"".join(results[i] for i in range(50)) == layer.data[: 50 * step]
    assert token_issuer.requests_for(scope) == 1


async def test_a_repeated_401_becomes_an_auth_error(
    token_registry: RegistryServer, token_hello: PushedImage, token_issuer: TokenIssuer
) -> None:
    layer = big_layer(token_hello)
    challenge = (
        f'Bearer realm="{token_issuer.realm}",service="{token_issuer.service}",'
        'scope="repository:library/hello:pull"'
    )
    with FaultProxy(token_registry.url) as proxy:
        proxy.fault(
            blob_path(layer), status=401, headers={"WWW-Authenticate": challenge}, times=None
        )
        client = RegistryClient(
            parse_registry(proxy.url), credentials=Credentials(*ALICE), retry=FAST_RETRY
        )
        try:
            with pytest.raises(AuthError) as info:
                await fetch_all(source_for(client, "library/hello", layer), 0, 100)
        finally:
            await client.aclose()
        assert errno_for(info.value) == errno.EACCES
        assert len(proxy.ranges(blob_path(layer))) <= 3  # no loop
