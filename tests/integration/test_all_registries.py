"""`regfs mount --all-registries`: every registry in one mount, configured the way podman and
skopeo are, with real servers on their own loopback addresses:

    127.0.0.2   docker-registry, anonymous, plain http: registries.conf says insecure, and
                gives it a pull-through mirror (127.0.0.5, also plain http); its access log
                shows what the mirror (or anyone) asked of it
    127.0.0.3   docker-registry over https (CA "htpasswd", trusted nowhere: registries.conf
                says insecure, so its certificate is not verified), htpasswd: user hal
    127.0.0.4   docker-registry over https (CA "token" in certs.d), token auth: user tom, the
                realm on the same address and CA
    127.0.0.6   a bare listener, blocked in registries.conf: nothing may connect to it
    127.0.0.1   a bare listener, not configured: refused unless --allow-registry admits it

Credentials come from a docker config.json ($DOCKER_CONFIG), registries.conf from
CONTAINERS_REGISTRIES_CONF, the token registry's CA from
$HOME/.config/containers/certs.d/<host:port>/ca.crt.
An image's base layer is the same blob in 127.0.0.2 and 127.0.0.3.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures._net import wait_until
from tests.fixtures.images import File, PushedImage, make_layer, push_image, random_bytes
from tests.fixtures.mounting import Mount, force_unmount, is_mounted, mounted, run_regfs
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.seed import SEEDER
from tests.fixtures.tls import TLSIdentity, client_context, make_identity
from tests.fixtures.token_issuer import TokenIssuer

pytestmark = [pytest.mark.registry, pytest.mark.mount]

ANON_HOST, HTP_HOST, TOKEN_HOST, MIRROR_HOST, BLOCKED_HOST = (
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
)
TEAM_NAME = "team.example"  # a name for anon's team/ namespace: a location with a path
HAL = ("hal", "hal-secret-pw")
TOM = ("tom", "tom-secret-pw")
BLOCK = "256K"
HELPER_LINK = Path("/usr/sbin/mount.fuse.regfs")


@dataclass
class World:
    work: Path
    anon: RegistryServer
    mirror: RegistryServer
    anon_blob_gets: int  # blob GETs in anon's access log once the mirror held every blob
    htp: RegistryServer
    token: RegistryServer
    issuer: TokenIssuer
    blocked: socket.socket
    unconfigured: socket.socket  # on 127.0.0.1
    anon_image: PushedImage  # team/app-a:1 = base + a
    htp_image: PushedImage  # team/app-b:1 = base + b
    token_image: PushedImage  # tok/app:1
    env: dict[str, str]

    @property
    def blocked_host(self) -> str:
        return f"{BLOCKED_HOST}:{self.blocked.getsockname()[1]}"

    @property
    def unconfigured_host(self) -> str:
        return f"127.0.0.1:{self.unconfigured.getsockname()[1]}"


def listener(host: str) -> socket.socket:
    """A socket that listens and never accepts: a connection would wait in its backlog."""
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def certs_d(home: Path, identity: TLSIdentity, host: str) -> None:
    where = home / ".config/containers/certs.d" / host
    where.mkdir(parents=True, exist_ok=True)
    (where / "ca.crt").write_bytes(identity.ca_path.read_bytes())


def basic(credentials: tuple[str, str]) -> str:
    return base64.b64encode(":".join(credentials).encode()).decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("all-registries")
    htp_id = make_identity(work / "tls", HTP_HOST, name="htpasswd")
    token_id = make_identity(work / "tls", TOKEN_HOST, name="token")
    base = make_layer([File("usr/lib/base.so", random_bytes(700_000, seed=41))])
    with (
        start_registry(work / "anon", bind=ANON_HOST, schema1=False) as anon,
        start_registry(work / "mirror", proxy_remote_url=anon.url, bind=MIRROR_HOST) as mirror,
        start_registry(
            work / "htp",
            htpasswd_users=dict([SEEDER, HAL]),
            tls=htp_id.server_files,
            bind=HTP_HOST,
        ) as htp,
        TokenIssuer(
            work / "issuer",
            users=dict([SEEDER, TOM]),
            push_users=[SEEDER[0]],
            host=TOKEN_HOST,
            tls=token_id.server_context(),
        ) as issuer,
        start_registry(
            work / "token",
            token_issuer=issuer,
            tls=token_id.server_files,
            bind=TOKEN_HOST,
        ) as token,
    ):
        anon_image = push_image(
            anon.url,
            "team/app-a",
            "1",
            [base, make_layer([File("etc/app-a.conf", b"registry a\n")])],
        )
        htp_image = push_image(
            htp.url,
            "team/app-b",
            "1",
            [base, make_layer([File("etc/app-b.conf", b"registry b\n")])],
            auth=SEEDER,
            verify=client_context(htp_id),
        )
        token_image = push_image(
            token.url,
            "tok/app",
            "1",
            [make_layer([File("etc/tok.conf", b"token registry\n")])],
            auth=SEEDER,
            verify=client_context(token_id),
        )
        push_image(  # in a repository registries.conf blocks
            token.url,
            "tok/secret",
            "1",
            [make_layer([File("etc/secret", b"not for regfs\n")])],
            auth=SEEDER,
            verify=client_context(token_id),
        )
        warm_mirror(mirror, anon_image)
        anon_blob_gets = upstream_settled(mirror, anon, anon_image)  # from here on: new
        home = work / "home"
        certs_d(home, token_id, token.host)
        docker = work / "docker"
        docker.mkdir()
        auths = {htp.host: {"auth": basic(HAL)}, token.host: {"auth": basic(TOM)}}
        (docker / "config.json").write_text(json.dumps({"auths": auths}))
        blocked, unconfigured = listener(BLOCKED_HOST), listener("127.0.0.1")
        conf = work / "registries.conf"
        conf.write_text(
            f"""
[[registry]]
location = "{anon.host}"
insecure = true
[[registry.mirror]]
location = "{mirror.host}"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
prefix = "{TEAM_NAME}"
location = "{anon.host}/team"
insecure = true

[[registry]]
location = "{htp.host}"
insecure = true

[aliases]
"app-b" = "{htp.host}/team/app-b"

[[registry]]
location = "{token.host}"

[[registry]]
prefix = "{token.host}/tok/secret"
location = "{token.host}/tok/secret"
blocked = true

[[registry]]
location = "{BLOCKED_HOST}:{blocked.getsockname()[1]}"
blocked = true
"""
        )
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        env.update(
            HOME=str(home),
            DOCKER_CONFIG=str(docker),
            CONTAINERS_REGISTRIES_CONF=str(conf),
            REGISTRY_AUTH_FILE=str(work / "no-auth.json"),
        )
        try:
            yield World(
                work,
                anon,
                mirror,
                anon_blob_gets,
                htp,
                token,
                issuer,
                blocked,
                unconfigured,
                anon_image,
                htp_image,
                token_image,
                env,
            )
        finally:
            blocked.close()
            unconfigured.close()


def warm_mirror(mirror: RegistryServer, image: PushedImage) -> None:
    """Pull the image through the mirror once, so it holds every blob."""
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    request = urllib.request.Request(
        f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == image.manifest_bytes
    for digest in (image.config_digest, *(layer.digest for layer in image.layers)):
        with urllib.request.urlopen(
            f"{mirror.url}/v2/{image.repo}/blobs/{digest}", timeout=30
        ) as response:
            assert hashlib.sha256(response.read()).hexdigest() == digest.split(":")[1]


def blob_gets(server: RegistryServer) -> list[str]:
    """The blob GETs in the registry's access log (one line per request)."""
    return re.findall(r'"GET /v2/\S+/blobs/\S+ HTTP/1.1"', server.log())


def upstream_settled(mirror: RegistryServer, upstream: RegistryServer, image: PushedImage) -> int:
    """The upstream's blob GETs once the mirror has stored every blob: a mirror in proxy mode
    serves a blob while it fetches it again to store it, and the registry writes its access
    log a little after answering."""
    digests = (image.config_digest, *(layer.digest for layer in image.layers))
    blobs = mirror.storage_dir / "docker/registry/v2/blobs"
    stored = [
        blobs / d.replace(":", "/", 1).replace("/", f"/{d[7:9]}/", 1) / "data" for d in digests
    ]
    wait_until(lambda: all(p.exists() for p in stored), timeout=10, what="the mirror's copies")
    seen = [-1]

    def unchanged() -> bool:  # two looks in a row that agree
        now, seen[0] = seen[0], len(blob_gets(upstream))
        return now == seen[0]

    wait_until(unchanged, timeout=10, what="the upstream's log", max_delay=0.25)
    return seen[0]


@contextmanager
def mount_all(tmp_path: Path, world: World, *extra: str, name: str = "mnt") -> Iterator[Mount]:
    with mounted(
        tmp_path,
        "regfs",  # ignored: --all-registries
        "--all-registries",
        "--block-size",
        BLOCK,
        "--debug",
        *extra,
        env=dict(world.env),
        name=name,
    ) as m:
        yield m


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory, world: World) -> Iterator[Mount]:
    with mount_all(tmp_path_factory.mktemp("all-mount"), world) as m:
        yield m


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return "sha256:" + out.stdout.split()[0]


def layer_file(image_dir: Path, digest: str) -> Path:
    (found,) = [p for p in (image_dir / "layers").iterdir() if p.name == f"{digest}.tar.gz"]
    return found


def requests_to(log: str, host: str) -> list[str]:
    """regfs's --debug line per request that went to `host`."""
    return [
        line
        for line in log.splitlines()
        if "regfs.registry.httpclient" in line and re.search(rf"\b[A-Z]+ {re.escape(host)} ", line)
    ]


def errno_of(path: Path) -> int:
    with pytest.raises(OSError) as info:
        os.stat(path)
    assert info.value.errno is not None
    return info.value.errno


# -- the tree ----------------------------------------------------------------------------------


def test_root_lists_the_configured_registries_not_the_blocked_one(
    mount: Mount, world: World
) -> None:
    assert sorted(os.listdir(mount.path)) == sorted(
        [".regfs", world.anon.host, world.htp.host, world.token.host, TEAM_NAME]
    )


def test_each_registry_reads_as_a_single_registry_mount_does(mount: Mount, world: World) -> None:
    images = [
        (world.anon, world.anon_image, "etc/app-a.conf", b"registry a\n"),
        (world.htp, world.htp_image, "etc/app-b.conf", b"registry b\n"),
        (world.token, world.token_image, "etc/tok.conf", b"token registry\n"),
    ]
    for server, image, path, content in images:
        repo_dir = mount.path / server.host / image.repo
        assert image.tag in os.listdir(repo_dir)
        image_dir = repo_dir / str(image.tag)
        assert (image_dir / "manifest.json").read_bytes() == image.manifest_bytes
        assert (image_dir / "config.json").read_bytes() == image.config_bytes
        for layer in image.layers:
            assert sha256sum(layer_file(image_dir, layer.digest)) == layer.digest
        top = layer_file(image_dir, image.layers[-1].digest)
        listed = subprocess.run(
            ["tar", "--force-local", "-tzf", str(top)], capture_output=True, text=True
        )
        assert listed.returncode == 0 and path in listed.stdout.split(), listed.stderr
        assert (image_dir / "rootfs" / path).read_bytes() == content
        # skopeo splits docker-archive:PATH[:REF] at a colon, and host:port has one: a
        # relative path from the image's directory has none.
        inspect = subprocess.run(
            ["skopeo", "inspect", "docker-archive:image.tar"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=image_dir,
        )
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)["Layers"] == list(image.diff_ids)
    stats = mount.stats()
    per_registry = stats["registries"]
    assert isinstance(per_registry, dict)
    assert set(per_registry) == {world.anon.host, world.htp.host, world.token.host}
    assert all(figures["requests"] > 0 for figures in per_registry.values())
    status = run_regfs(["status", str(mount.path)], env=mount.env)
    assert status.returncode == 0, status.stderr
    assert all(s.host in status.stdout for s in (world.anon, world.htp, world.token))


def test_the_mirror_serves_blobs_with_no_upstream_traffic(mount: Mount, world: World) -> None:
    image_dir = mount.path / world.anon.host / world.anon_image.repo / "1"
    for layer in world.anon_image.layers:
        assert sha256sum(layer_file(image_dir, layer.digest)) == layer.digest
    log = mount.log()
    mirrored = [x for x in requests_to(log, world.mirror.host) if "/blobs/" in x]
    assert any(" -> 200" in x or " -> 206" in x for x in mirrored), log
    assert not [x for x in requests_to(log, world.anon.host) if "/blobs/" in x]
    # pull-from-mirror = "digest-only": the tag is resolved by the registry itself.
    assert not [x for x in requests_to(log, world.mirror.host) if "/manifests/1 " in x]
    assert [x for x in requests_to(log, world.anon.host) if "/team/app-a/manifests/1 " in x]
    assert len(blob_gets(world.anon)) == world.anon_blob_gets, blob_gets(world.anon)


def test_a_location_with_a_path_is_put_before_repository_names(mount: Mount, world: World) -> None:
    """team.example is anon's team/ namespace (only manifests are read here: the mirror
    test counts the blobs anon serves)."""
    assert os.listdir(mount.path / TEAM_NAME) == ["app-a"]  # anon's catalog, below team/
    image = mount.path / TEAM_NAME / "app-a" / "1"
    assert (image / "manifest.json").read_bytes() == world.anon_image.manifest_bytes


def test_a_short_name_alias_is_a_link_to_its_repository(mount: Mount, world: World) -> None:
    assert os.readlink(mount.path / "app-b") == f"{world.htp.host}/team/app-b"
    manifest = mount.path / "app-b" / "1" / "manifest.json"
    assert manifest.read_bytes() == world.htp_image.manifest_bytes


def test_insecure_registries_are_https_unverified_else_plain_http(
    mount: Mount, world: World
) -> None:
    for server, image in (
        (world.anon, world.anon_image),
        (world.htp, world.htp_image),
        (world.token, world.token_image),
    ):
        assert image.tag in os.listdir(mount.path / server.host / image.repo)
    stats = mount.stats()["registries"]
    assert isinstance(stats, dict)
    assert stats[world.anon.host]["address"] == f"http://{world.anon.host}"
    assert stats[world.anon.host]["mirrors"] == [f"http://{world.mirror.host}"]
    # insecure over https: unverified, not plain http (it answers https)
    assert stats[world.htp.host]["address"] == world.htp.host
    assert stats[world.token.host]["address"] == world.token.host  # its CA from certs.d


# -- who may be connected to ---------------------------------------------------------------------


def test_a_blocked_registry_is_enoent_and_never_connected_to(mount: Mount, world: World) -> None:
    for _ in range(2):
        assert errno_of(mount.path / world.blocked_host) == errno.ENOENT
        assert errno_of(mount.path / world.blocked_host / "team") == errno.ENOENT
    assert nobody_connected(world.blocked)
    refusals = [x for x in mount.log().splitlines() if world.blocked_host in x and " WARNING " in x]
    assert len(refusals) == 1 and "blocked" in refusals[0], refusals


def test_a_blocked_repository_is_enoent_and_never_asked_for(mount: Mount, world: World) -> None:
    tok = mount.path / world.token.host / "tok"
    assert (tok / "app" / "1" / "manifest.json").exists()  # the registry itself is not blocked
    for _ in range(2):
        assert errno_of(tok / "secret") == errno.ENOENT
        assert errno_of(tok / "secret" / "1") == errno.ENOENT
    assert "secret" not in os.listdir(tok)
    asked = [(scope, user) for scope, user in world.issuer.requests if "tok/secret" in scope]
    assert all(user == SEEDER[0] for _, user in asked), asked  # the push only
    assert not [x for x in requests_to(mount.log(), world.token.host) if "/tok/secret/" in x]


def test_an_unconfigured_loopback_registry_is_refused(mount: Mount, world: World) -> None:
    assert errno_of(mount.path / world.unconfigured_host) == errno.ENOENT
    assert nobody_connected(world.unconfigured)
    assert world.unconfigured_host not in os.listdir(mount.path)
    refusals = [x for x in mount.log().splitlines() if world.unconfigured_host in x]
    assert refusals and all("refused" in x for x in refusals), refusals


def test_allow_registry_admits_a_loopback_registry(tmp_path: Path, world: World) -> None:
    """A registry on 127.0.0.1 (https, its CA in certs.d) that registries.conf does not name:
    admitted by the regex and listed at the root once used; the unconfigured listener still
    not (the regex does not match it)."""
    identity = make_identity(tmp_path / "tls", "127.0.0.1", name="allowed")
    with start_registry(tmp_path / "allowed", tls=identity.server_files) as allowed:
        push_image(
            allowed.url,
            "team/allowed",
            "1",
            [make_layer([File("x", b"x")])],
            verify=client_context(identity),
        )
        certs_d(Path(world.env["HOME"]), identity, allowed.host)
        allow = re.escape(allowed.host)
        with mount_all(tmp_path, world, "--allow-registry", allow) as m:
            assert "allowed" in os.listdir(m.path / allowed.host / "team")
            assert allowed.host in os.listdir(m.path)
        assert errno_of(m.path / world.unconfigured_host) == errno.ENOENT
    assert nobody_connected(world.unconfigured)


def test_no_credential_reaches_another_host(mount: Mount, world: World) -> None:
    for server, image in (
        (world.htp, world.htp_image),
        (world.token, world.token_image),
        (world.anon, world.anon_image),
    ):
        assert (mount.path / server.host / image.repo / "1" / "manifest.json").exists()
    # The token realm heard tom (the token registry's user) only, never hal.
    users = {user for _, user in world.issuer.requests}
    assert "tom" in users and "hal" not in users, users
    # The htpasswd registry let hal in and never saw tom.
    # The htpasswd registry let regfs in (as hal: nobody else has a password there) and
    # never heard of tom.
    htp_log = world.htp.log()
    assert 'msg="authorized request"' in htp_log and '"regfs"' in htp_log
    assert not re.search(r"\btom\b", htp_log)
    log = mount.log()
    for secret in (HAL[1], TOM[1], basic(HAL), basic(TOM), "Bearer ", "Basic "):
        assert secret not in log


# -- one cache for every registry --------------------------------------------------------------


def test_a_base_layer_in_two_registries_is_fetched_once(tmp_path: Path, world: World) -> None:
    base = world.anon_image.layers[0].digest
    assert world.htp_image.layers[0].digest == base
    with mount_all(tmp_path, world) as m:
        a = m.path / world.anon.host / world.anon_image.repo / "1"
        b = m.path / world.htp.host / world.htp_image.repo / "1"
        assert sha256sum(layer_file(a, base)) == base  # verified: the blob is every registry's
        assert sha256sum(layer_file(b, base)) == base
        assert (b / "rootfs" / "usr/lib/base.so").read_bytes() == random_bytes(700_000, seed=41)
        log = m.log()
        stats = m.stats()
    assert [x for x in requests_to(log, world.mirror.host) if f"/blobs/{base}" in x]
    assert not [x for x in requests_to(log, world.htp.host) if f"/blobs/{base}" in x], log
    per_registry = stats["registries"]
    assert isinstance(per_registry, dict)
    fetched_b = sum(per_registry[world.htp.host]["bytes_fetched_by_host"].values())
    assert fetched_b < 100_000  # manifests and config, not the 700 kB base


def test_a_broken_registries_conf_stops_the_mount(tmp_path: Path, world: World) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nlocation = "a.example"\ninsecure = "yes"\n')
    (tmp_path / "mnt").mkdir()
    env = dict(world.env, CONTAINERS_REGISTRIES_CONF=str(conf))
    result = run_regfs(["mount", "--all-registries", str(tmp_path / "mnt")], env=env)
    assert result.returncode == 2, result
    assert str(conf) in result.stderr and "insecure" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not is_mounted(tmp_path / "mnt")


# -- mount(8) ------------------------------------------------------------------------------------


def test_mount_t_fuse_regfs_and_an_fstab_line_with_all_registries(
    tmp_path: Path, world: World
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mount(8) with a helper in /usr/sbin needs root")
    regfs = Path(sys.executable).parent / "regfs"
    if HELPER_LINK.is_symlink() or HELPER_LINK.exists():
        if os.path.realpath(HELPER_LINK) != str(regfs.resolve()):
            pytest.skip(f"{HELPER_LINK} exists and is not ours")
        HELPER_LINK.unlink()
    HELPER_LINK.symlink_to(regfs)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(world.env, XDG_STATE_HOME=str(tmp_path / "state"))
    try:
        options = f"all_registries,cache_dir={tmp_path / 'cache'},block_size={BLOCK}"
        result = subprocess.run(
            ["mount", "-t", "fuse.regfs", "regfs", str(mnt), "-o", options],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert is_mounted(mnt)
        image = world.anon_image
        manifest = mnt / world.anon.host / image.repo / "1" / "manifest.json"
        assert manifest.read_bytes() == image.manifest_bytes
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0

        # The fstab line the README shows: `regfs` in the first field.
        fstab = tmp_path / "fstab"
        fstab.write_text(
            f"regfs  {mnt}  fuse.regfs  ro,all_registries,noauto,nofail,_netdev,"
            f"cache_dir={tmp_path / 'cache'},block_size={BLOCK}  0 0\n"
        )
        result = subprocess.run(
            ["mount", "--fstab", str(fstab), str(mnt)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert manifest.read_bytes() == image.manifest_bytes
        assert sorted(os.listdir(mnt))[0] == ".regfs"
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
    finally:
        force_unmount(mnt)
        HELPER_LINK.unlink(missing_ok=True)
