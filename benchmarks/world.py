"""The world the cases read: two random layers on disk, pushed to a docker-registry whose
storage is kept between runs, and an nginx serving the foreign one as a rate-limited CDN."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import MiB, log
from tests.fixtures._net import LOOPBACK, die_with_parent, free_port, stop_process, wait_until
from tests.fixtures.images import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    default_config,
    push_blob,
    put_manifest,
    registry_client,
    sha256_digest,
)
from tests.fixtures.registry import RegistryServer

CDN_RATE = "40m"  # nginx limit_rate per connection: 40 MiB/s
BIG_REPO, FOREIGN_REPO, TAG = "bench/big", "bench/foreign", "latest"


@dataclass
class LayerFile:
    path: str
    size: int
    digest: str
    diff_id: str


def write_layer(path: Path, size: int, member: str) -> LayerFile:
    """A tar.gz of one file of random bytes, about `size` bytes long, hashed while written."""
    payload = max(0, size - 1536)  # tar header + payload + end-of-archive = size
    header = tarfile.TarInfo(member)
    header.size, header.mode, header.mtime = payload, 0o644, 1_700_000_000
    deflate = zlib.compressobj(0, zlib.DEFLATED, 31)  # level 0, gzip wrapper
    blob_hash, tar_hash = hashlib.sha256(), hashlib.sha256()
    tmp = path.with_suffix(".partial")
    with tmp.open("wb") as out:

        def feed(chunk: bytes) -> None:
            tar_hash.update(chunk)
            compressed = deflate.compress(chunk)
            blob_hash.update(compressed)
            out.write(compressed)

        feed(header.tobuf(format=tarfile.GNU_FORMAT))
        left = payload
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            left -= len(chunk)
            feed(chunk)
        feed(bytes(-payload % 512 + 1024))
        tail = deflate.flush()
        blob_hash.update(tail)
        out.write(tail)
    tmp.rename(path)
    return LayerFile(
        str(path),
        path.stat().st_size,
        "sha256:" + blob_hash.hexdigest(),
        "sha256:" + tar_hash.hexdigest(),
    )


@dataclass
class World:
    directory: Path
    big: LayerFile
    foreign: LayerFile
    big_manifest: bytes
    big_config: bytes

    @property
    def big_manifest_digest(self) -> str:
        return sha256_digest(self.big_manifest)


def _manifest(config: bytes, layers: Sequence[dict[str, Any]]) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "size": len(config),
            "digest": sha256_digest(config),
        },
        "layers": list(layers),
    }
    return json.dumps(document, indent=3).encode()


def layer_config(layer: LayerFile) -> bytes:
    """A minimal image config for a one-layer image."""
    return json.dumps(default_config([layer.diff_id]), separators=(",", ":")).encode()


def layer_manifest(config: bytes, big: LayerFile) -> bytes:
    """The manifest of a one-layer image."""
    return _manifest(config, [{"mediaType": DOCKER_LAYER, "size": big.size, "digest": big.digest}])


def load_world(base: Path, size: int, foreign_size: int) -> World:
    """The layers kept under `base` for these sizes, generated on the first run."""
    directory = base / f"world-{size}-{foreign_size}"
    index = directory / "world.json"
    if index.is_file():
        saved = json.loads(index.read_text())
        big, foreign = LayerFile(**saved["big"]), LayerFile(**saved["foreign"])
        if all(
            Path(x.path).is_file() and Path(x.path).stat().st_size == x.size for x in (big, foreign)
        ):
            log(f"world: cached in {directory}")
            config = layer_config(big)
            return World(directory, big, foreign, layer_manifest(config, big), config)
    log(f"world: generating {size / MiB:.0f} MiB + {foreign_size / MiB:.0f} MiB of random layers")
    started = time.monotonic()
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "cdn").mkdir(parents=True)
    big = write_layer(directory / "big.tar.gz", size, "random.bin")
    foreign = write_layer(directory / "cdn" / "foreign.tar.gz", foreign_size, "foreign.bin")
    index.write_text(json.dumps({"big": asdict(big), "foreign": asdict(foreign)}, indent=2))
    log(f"world: generated in {time.monotonic() - started:.1f} s")
    config = layer_config(big)
    return World(directory, big, foreign, layer_manifest(config, big), config)


def upload_file(client: httpx.Client, repo: str, layer: LayerFile) -> None:
    """push_blob, streaming from the file: httpcore sends a bytes body by re-slicing what is
    left after every send(), which is quadratic (a 1 GiB push_blob crawls at ~8 MiB/s)."""
    if client.head(f"/v2/{repo}/blobs/{layer.digest}").status_code == 200:
        return
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = urllib.parse.urljoin(str(start.request.url), start.headers["Location"])
    separator = "&" if "?" in location else "?"

    def chunks() -> Iterator[bytes]:
        with open(layer.path, "rb") as source:
            while chunk := source.read(MiB):
                yield chunk

    put = client.put(
        f"{location}{separator}digest={urllib.parse.quote(layer.digest)}",
        content=chunks(),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(layer.size)},
        timeout=600,
    )
    put.raise_for_status()


def publish_big(registry: RegistryServer, world: World) -> None:
    """Push the big image unless the kept registry storage has it already."""
    with registry_client(registry.url) as client:
        head = client.head(f"/v2/{BIG_REPO}/manifests/{TAG}", headers={"Accept": DOCKER_MANIFEST})
        if head.headers.get("Docker-Content-Digest") == world.big_manifest_digest:
            return
        log(f"registry: pushing {world.big.size / MiB:.0f} MiB layer")
        started = time.monotonic()
        push_blob(client, BIG_REPO, world.big_config)
        upload_file(client, BIG_REPO, world.big)
        put_manifest(client, BIG_REPO, TAG, world.big_manifest, DOCKER_MANIFEST)
        log(f"registry: pushed in {time.monotonic() - started:.1f} s")


def publish_foreign(registry: RegistryServer, world: World, url: str) -> None:
    """Push the image whose only layer is foreign (at `url`, the CDN): cheap, done every run
    because the CDN's port is in the manifest."""
    config = layer_config(world.foreign)
    layer = {
        "mediaType": DOCKER_FOREIGN_LAYER,
        "size": world.foreign.size,
        "digest": world.foreign.digest,
        "urls": [url],
    }
    with registry_client(registry.url) as client:
        push_blob(client, FOREIGN_REPO, config)
        put_manifest(client, FOREIGN_REPO, TAG, _manifest(config, [layer]), DOCKER_MANIFEST)


def spawn(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A server or mount of this program's, its output appended to `log_path`."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only this program, which tears down in order
            preexec_fn=die_with_parent,
        )


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format bench '$request_uri $status $bytes_sent "$http_range"';
    access_log {tmp}/access.log bench;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {host}:{port};
        root {root};
        location /cdn/ {{
            alias {root}/;
            limit_rate {rate};
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_cdn(root: Path, tmp: Path) -> Iterator[str]:
    """nginx serving `root` under /cdn/ at limit_rate per connection; yields its base URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, host=LOOPBACK, port=port, root=root, rate=CDN_RATE))
    proc = spawn(
        ["nginx", "-e", str(tmp / "error.log"), "-p", str(tmp), "-c", str(conf)], tmp / "nginx.out"
    )
    try:
        url = f"http://{LOOPBACK}:{port}"

        def answers() -> bool:
            if proc.poll() is not None:
                return True
            try:
                with urllib.request.urlopen(url + "/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False

        wait_until(answers, timeout=20, what="nginx")
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(tmp / 'error.log').read_text(errors='replace')}")
        yield url
    finally:
        stop_process(proc)
