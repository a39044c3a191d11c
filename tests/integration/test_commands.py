"""`regfs ls`, `regfs cat`, `regfs cp` against the fixture registries, each run in a
subprocess where pyfuse3 cannot be imported (sys.modules['pyfuse3'] = None before regfs
is), so every test here also proves the commands need no FUSE."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from regfs import cli, commands
from regfs.oci.reference import DEFAULT_NAMESPACES
from tests.fixtures.cdn import CDNServer
from tests.fixtures.faultproxy import Fault, FaultProxy
from tests.fixtures.mounting import LOOPBACK_ALLOW
from tests.fixtures.registry import RegistryServer
from tests.fixtures.rootfs_images import RootfsFixtures
from tests.fixtures.seed import HELLO_SCRIPT, Seeded
from tests.fixtures.treecompare import UmociUnpacks, compare, snapshot
from tests.integration.test_archive import assert_same_diff_ids, assert_same_layers

# The command, with pyfuse3 unimportable; afterwards, neither the mount nor the FUSE adapter
# may have been imported.
NO_FUSE = (
    "import sys; sys.modules['pyfuse3'] = None\n"
    "from regfs.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "fuse = sorted(m for m in sys.modules if m in ('regfs.mount', 'regfs.vfs.fuse'))\n"
    "assert not fuse, f'imported {fuse}'\n"
    "sys.exit(code)\n"
)
# As on Windows, for regfs's own code: the libraries it uses imported first (they have
# their own Windows code), then what Windows lacks taken away before regfs is imported.
WITHOUT_POSIX = (
    "import sys, os\n"
    "import trio, httpx, indexed_gzip, zstandard, rich, cachetools, platformdirs, truststore\n"
    "sys.modules['pyfuse3'] = None; sys.modules['fcntl'] = None\n"
    "for name in ('pread', 'preadv', 'getuid', 'getgid', 'geteuid', 'makedev', 'major',\n"
    "             'minor', 'mkfifo', 'mknod', 'lchown', 'setxattr', 'posix_fallocate',\n"
    "             'O_CLOEXEC', 'O_DIRECT'):\n"
    "    if hasattr(os, name): delattr(os, name)\n" + NO_FUSE.split("\n", 1)[1]
)
TIMEOUT = 300
STARTED = time.time()


def regfs(
    command: str,
    *args: str | Path,
    cache: Path,
    env: dict[str, str] | None = None,
    stderr: int | None = subprocess.PIPE,
    program: str = NO_FUSE,
) -> subprocess.CompletedProcess[bytes]:
    argv = [command, "--cache-dir", str(cache), "--foreign-url-allow", LOOPBACK_ALLOW]
    return subprocess.run(
        [sys.executable, "-c", program, *argv, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return ok(result).decode().splitlines()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as p:
        yield p


def blob_gets(p: FaultProxy) -> list[str]:
    return [r.path for r in p.requests if r.method == "GET" and "/blobs/" in r.path]


def test_ls_of_a_registry_a_repository_an_image_and_its_layers(
    registry: RegistryServer, seeded: Seeded, cache: Path
) -> None:
    r = registry.url
    top = {repo.split("/")[0] for repo in seeded.repos}
    assert set(lines(regfs("ls", r, cache=cache))) == top  # the catalog; .regfs/ not shown
    assert lines(regfs("ls", f"{r}/library/hello", cache=cache)) == ["latest", "v1"]
    assert lines(regfs("ls", f"{r}/team/project", cache=cache)) == ["tool"]
    image = {"config.json", "image.tar", "layers", "manifest.json", "oci", "referrers", "rootfs"}
    assert set(lines(regfs("ls", f"{r}/library/hello:latest", cache=cache))) == image
    hello = seeded.hello
    by_digest = lines(regfs("ls", f"{r}/library/hello@{hello.manifest_digest}", cache=cache))
    assert set(by_digest) == image
    listed = lines(regfs("ls", "-l", f"{r}/library/hello:latest/layers", cache=cache))
    for number, layer in enumerate(hello.layers, 1):
        [link] = [x for x in listed if x.split()[-3:-2] == [f"{number}.tar.gz"]]
        assert link.startswith("lrwxrwxrwx") and link.endswith(f"-> {layer.digest}.tar.gz")
        [blob] = [x for x in listed if x.endswith(f" {layer.digest}.tar.gz") and "->" not in x]
        assert blob.startswith("-r--r--r--") and blob.split()[4] == str(layer.size)
    rootfs_bin = lines(regfs("ls", "-l", f"{r}/library/hello:latest/rootfs/bin", cache=cache))
    assert rootfs_bin[0].startswith("-rwxr-xr-x") and rootfs_bin[0].endswith(" hello")
    assert rootfs_bin[1].startswith("lrwxrwxrwx") and rootfs_bin[1].endswith(" hi -> hello")
    assert lines(regfs("ls", f"{r}/library/hello:latest/rootfs/bin/hello", cache=cache)) == [
        "hello"
    ]
    # An index: its own files, the host platform's image beside them, and platforms/.
    index = lines(regfs("ls", "--platform", "linux/amd64", f"{r}/multi/arch:1.0", cache=cache))
    assert {"index.json", "platforms", "manifest.json", "rootfs", "image.tar"} <= set(index)
    platforms = lines(regfs("ls", f"{r}/multi/arch:1.0/platforms", cache=cache))
    assert platforms == ["linux-amd64", "linux-arm64-v8", "windows-amd64"]


def test_short_names_are_docker_hubs(
    registry: RegistryServer,
    seeded: Seeded,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    # In this process, the loopback registry stands in for Docker Hub (its `library/`).
    monkeypatch.setitem(DEFAULT_NAMESPACES, registry.host, "library")
    # The command's own logging set-up replaces the root logger's handlers (pytest's
    # capture among them) for the rest of the session: not here.
    monkeypatch.setattr(commands, "setup_logging", lambda debug: None)
    argv = ["cat", "--cache-dir", str(cache), f"{registry.url}/hello:latest/manifest.json"]
    assert cli.main(argv) == 0
    assert capfdbinary.readouterr().out == seeded.hello.manifest_bytes


def test_cat_is_byte_exact_by_tag_digest_index_and_platform(
    registry: RegistryServer, seeded: Seeded, cache: Path
) -> None:
    r, hello = registry.url, seeded.hello
    assert ok(regfs("cat", f"{r}/library/hello:latest/manifest.json", cache=cache)) == (
        hello.manifest_bytes
    )
    at_digest = f"{r}/library/hello@{hello.manifest_digest}"
    assert ok(regfs("cat", f"{at_digest}/config.json", cache=cache)) == hello.config_bytes
    big = max(hello.layers, key=lambda layer: layer.size)
    layer = ok(regfs("cat", f"{r}/library/hello:v1/layers/{big.digest}.tar.gz", cache=cache))
    assert layer == big.data  # binary, 2 MiB, byte for byte
    # Two files, one after the other, as cat does; a symlink followed inside the image.
    both = regfs(
        "cat",
        f"{r}/library/hello:latest/rootfs/bin/hi",
        f"{r}/library/hello:latest/rootfs/etc/absolute-link",  # -> /etc/hostname of the image
        cache=cache,
    )
    assert ok(both) == HELLO_SCRIPT + b"hello-v2\n"
    index = seeded.multi_arch
    assert ok(regfs("cat", f"{r}/multi/arch:1.0/index.json", cache=cache)) == index.manifest_bytes
    arm = next(img for img, p in index.entries if p["architecture"] == "arm64")
    chosen = regfs(
        "cat", "--platform", "linux/arm64/v8", f"{r}/multi/arch:1.0/manifest.json", cache=cache
    )
    assert ok(chosen) == arm.manifest_bytes
    platform_file = f"{r}/multi/oci:2.0/platforms/linux-amd64/rootfs/platform.txt"
    assert ok(regfs("cat", platform_file, cache=cache)) == b"linux-amd64\n"
    tool = ok(regfs("cat", f"{r}/team/project/tool:3/rootfs/usr/bin/tool", cache=cache))
    assert tool == b"#!/bin/sh\n"


def test_foreign_layer_copied_from_its_urls_without_credentials(
    registry: RegistryServer, seeded: Seeded, cdn: CDNServer, tmp_path: Path, cache: Path
) -> None:
    [foreign] = [x for x in seeded.windows.layers if x.foreign]
    image = f"{registry.url}/windows/servercore:ltsc2019-amd64"
    seen = len(cdn.requests)
    ok(
        regfs(
            "cp", f"{image}/layers/{foreign.digest}.tar.gz", tmp_path / "base.tar.gz", cache=cache
        )
    )
    assert (tmp_path / "base.tar.gz").read_bytes() == foreign.data
    dll = ok(regfs("cat", f"{image}/rootfs/Files/Windows/system32.dll", cache=cache))
    assert len(dll) == 5 * 1024 * 1024 + 321
    assert any(r.path.startswith("/fwlink/") for r in cdn.requests[seen:])
    assert not any(r.has_authorization for r in cdn.requests[seen:])


def test_image_tar_loads_in_podman_and_reads_in_skopeo(
    registry: RegistryServer, seeded: Seeded, tmp_path: Path, cache: Path
) -> None:
    hello = seeded.hello
    ok(regfs("cp", f"{registry.url}/library/hello:latest/image.tar", tmp_path, cache=cache))
    archive = tmp_path / "image.tar"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".image.tar")]
    layout = tmp_path / "layout"
    subprocess.run(
        ["skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:hello"],
        check=True,
        timeout=TIMEOUT,
    )
    assert_same_diff_ids(layout, "hello", hello)
    # podman refuses a runroot path of 50 characters or more: a short private one in /tmp.
    runroot = tempfile.mkdtemp(prefix="regfs-pod-", dir="/tmp")
    try:
        podman = ["podman", "--root", str(tmp_path / "podman"), "--runroot", runroot]
        podman += ["--storage-driver", "vfs", "--events-backend", "none"]
        loaded = subprocess.run(
            [*podman, "load", "-i", str(archive)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert loaded.returncode == 0, loaded.stderr
        name = f"{registry.host}/library/hello:latest"
        assert f"Loaded image: {name}" in loaded.stdout
        inspected = subprocess.run(
            [*podman, "image", "inspect", name],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
    [info] = json.loads(inspected.stdout)
    assert info["Id"] == hello.config_digest.removeprefix("sha256:")
    assert info["RootFS"]["Layers"] == list(hello.diff_ids)
    # oci/ copied as a directory is an OCI layout skopeo reads, blobs as the registry's.
    ok(regfs("cp", "-r", f"{registry.url}/library/hello:latest/oci", tmp_path / "oci", cache=cache))
    copied = tmp_path / "oci-copy"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{tmp_path / 'oci'}:latest", f"oci:{copied}:hello"],
        check=True,
        timeout=TIMEOUT,
    )
    assert_same_layers(copied, "hello", hello)


def test_cp_r_of_rootfs_equals_umoci_unpack(
    rootfs_registry: RegistryServer,
    rootfs_images: RootfsFixtures,
    umoci: UmociUnpacks,
    tmp_path: Path,
    cache: Path,
) -> None:
    image = rootfs_images.images["merge-gzip"]
    copied = regfs(
        "cp",
        "-r",
        f"{rootfs_registry.url}/{image.repo}:{image.tag}/rootfs",
        tmp_path / "out",
        cache=cache,
    )
    ok(copied)
    theirs = snapshot(umoci.rootfs(image.repo, image.reference_tag))
    devices = {p for p, f in theirs.items() if f.kind in ("char", "block")}
    assert devices, "the image has device nodes: cp must skip them"
    warnings = copied.stderr.decode()
    for path in devices:
        assert f"skipped device node {image.repo}/{image.tag}/rootfs/{path.decode()}" in warnings
    ours = snapshot(tmp_path / "out")
    # umoci stamps directories it makes for entries without parents with the unpack's time.
    stamped = {p for p, f in theirs.items() if f.kind == "dir" and f.mtime > STARTED - 3600}
    free = {*image.unpack_time_mtimes, *stamped}
    differences = compare(
        ours,
        {p: f for p, f in theirs.items() if p not in devices},
        labels=("regfs cp", "umoci"),
        any_mtime=free,
    )
    assert differences == [], "\n".join(differences[:60])


def test_the_commands_need_nothing_windows_lacks(
    rootfs_registry: RegistryServer, rootfs_images: RootfsFixtures, tmp_path: Path, cache: Path
) -> None:
    image = rootfs_images.images["merge-gzip"]
    ref = f"{rootfs_registry.url}/{image.repo}:{image.tag}"
    for _ in range(2):  # cold (index built, blocks written), then from the disk cache
        listed = ok(regfs("ls", "-l", f"{ref}/rootfs/dev", cache=cache, program=WITHOUT_POSIX))
        assert re.search(rb"^c.* null \(1,3\)$", listed, re.M), listed
        xattr = ok(regfs("cat", f"{ref}/rootfs/xattr/file", cache=cache, program=WITHOUT_POSIX))
        assert xattr == b"has xattrs\n"
    out = tmp_path / "out"
    copied = regfs("cp", "-r", f"{ref}/rootfs/xattr", out, cache=cache, program=WITHOUT_POSIX)
    ok(copied)
    assert (out / "file").read_bytes() == b"has xattrs\n"
    ok(regfs("cp", f"{ref}/image.tar", tmp_path / "image.tar", cache=cache, program=WITHOUT_POSIX))
    with tarfile.open(tmp_path / "image.tar") as archive:
        assert "manifest.json" in archive.getnames()


def test_a_second_cp_fetches_no_blob(proxy: FaultProxy, tmp_path: Path, cache: Path) -> None:
    image = f"{proxy.url}/library/hello:latest"
    ok(regfs("cp", f"{image}/image.tar", tmp_path / "first.tar", cache=cache))
    ok(regfs("cp", "-r", f"{image}/rootfs", tmp_path / "first-rootfs", cache=cache))
    assert len(blob_gets(proxy)) >= 4  # config and three layers
    proxy.clear()
    ok(regfs("cp", f"{image}/image.tar", tmp_path / "second.tar", cache=cache))
    ok(regfs("cp", "-r", f"{image}/rootfs", tmp_path / "second-rootfs", cache=cache))
    assert blob_gets(proxy) == []
    assert (tmp_path / "first.tar").read_bytes() == (tmp_path / "second.tar").read_bytes()
    assert snapshot(tmp_path / "first-rootfs").keys() == snapshot(tmp_path / "second-rootfs").keys()
    # And offline: no request at all.
    proxy.clear()
    ok(regfs("cp", "--offline", f"{image}/image.tar", tmp_path / "third.tar", cache=cache))
    assert proxy.requests == []


@pytest.mark.parametrize("what", ["layer", "image.tar", "rootfs"])
def test_a_corrupting_server_leaves_no_destination_file(
    proxy: FaultProxy, seeded: Seeded, tmp_path: Path, what: str
) -> None:
    big = max(seeded.hello.layers, key=lambda layer: layer.size)
    proxy.add(Fault(f"/blobs/{big.digest}$", flip_at=100_000, times=None))
    image = f"{proxy.url}/library/hello:latest"
    source, args = {
        "layer": (f"{image}/layers/{big.digest}.tar.gz", []),
        "image.tar": (f"{image}/image.tar", []),
        "rootfs": (f"{image}/rootfs/data", ["-r"]),
    }[what]
    dest = tmp_path / "dest"
    dest.mkdir()
    result = regfs("cp", *args, source, dest, cache=tmp_path / "cache")
    said = result.stderr.decode()
    assert result.returncode == 1, said
    assert f"{proxy.url.split('://')[1]}/library/hello:latest" in said
    assert "digest mismatch" in said or "does not match" in said, said
    assert os.listdir(dest) == []  # neither the file nor its temporary


def test_errors_name_the_reference_and_what_was_wrong(
    registry: RegistryServer,
    htpasswd_registry: RegistryServer,
    proxy: FaultProxy,
    tmp_path: Path,
    cache: Path,
) -> None:
    r, host = registry.url, registry.host

    def failed(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = regfs(args[0], *args[1:], cache=cache, env=env)
        return result.returncode, result.stderr.decode()

    code, said = failed("cat", f"{r}/library/hello:nosuch/manifest.json")
    assert code == 1 and f"{host}/library/hello:nosuch: no such tag nosuch" in said
    assert "(tags: latest, v1)" in said
    code, said = failed("ls", f"{r}/library/nosuch:1")
    assert code == 1 and f"no such repository {host}/library/nosuch" in said
    code, said = failed("cat", f"{r}/library/hello@sha256:{'0' * 64}/manifest.json")
    assert code == 1 and f"no such manifest sha256:{'0' * 64}" in said
    code, said = failed("cat", f"{r}/library/hello:latest/rootfs/etc/nope")
    assert code == 1 and "no such file or directory: rootfs/etc/nope" in said
    code, said = failed("cat", f"{r}/library/hello:latest/rootfs/etc")
    assert code == 1 and "rootfs/etc is a directory" in said
    code, said = failed("cp", f"{r}/library/hello:latest/rootfs", str(tmp_path))
    assert code == 1 and "use cp -r" in said
    code, said = failed("cat", f"{r}/library/Hello:1/manifest.json")
    assert code == 2 and "invalid repository name" in said
    code, said = failed("ls", "--platform", "nonsense", f"{r}/library/hello")
    assert code == 2
    nobody = {**os.environ, "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "none")}
    nobody["REGISTRY_AUTH_FILE"] = str(tmp_path / "none.json")
    nobody["XDG_RUNTIME_DIR"] = str(tmp_path / "none")
    hp = htpasswd_registry
    code, said = failed("cat", f"{hp.url}/library/hello:latest/manifest.json", env=nobody)
    assert code == 1 and f"{hp.host}/library/hello:latest: not authorised" in said
    listed = regfs("ls", hp.url, cache=cache, env=nobody)  # no catalog without credentials
    assert ok(listed) == b"" and b"no repositories listed" in listed.stderr
    proxy.add(Fault("/manifests/", status=429, headers={"Retry-After": "3600"}, times=None))
    code, said = failed("cat", f"{proxy.url}/library/hello:latest/manifest.json")
    assert code == 1 and "rate-limited" in said, said


def on_terminal(*args: str | Path, cache: Path) -> str:
    """What a command writes to stderr when stderr is a terminal (a pty, read as it goes)."""
    controller, terminal = pty.openpty()
    argv = [args[0], "--cache-dir", str(cache), *map(str, args[1:])]
    process = subprocess.Popen(
        [sys.executable, "-c", NO_FUSE, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)  # the child holds the only other end: EOF (EIO) when it exits
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(controller)
        assert process.wait(timeout=TIMEOUT) == 0, screen.decode(errors="replace")
    return screen.decode(errors="replace")


def test_progress_is_shown_on_a_terminal_only(
    registry: RegistryServer, tmp_path: Path, cache: Path
) -> None:
    source = f"{registry.url}/library/hello:latest/image.tar"
    piped = regfs("cp", source, tmp_path / "piped.tar", cache=cache)
    assert ok(piped) == b"" and piped.stderr == b""
    shown = on_terminal("cp", source, tmp_path / "tty.tar", cache=cache)
    assert "done" in shown and "library/hello/latest/image.tar" in shown, shown
    assert "2.0 MiB" in shown, shown
    assert on_terminal("cp", "-q", source, tmp_path / "quiet.tar", cache=cache) == ""
    assert (tmp_path / "tty.tar").read_bytes() == (tmp_path / "piped.tar").read_bytes()


def test_ctrl_c_leaves_no_destination_and_exits_130(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.add(Fault("/blobs/", drip=0.001, times=None))  # a byte a millisecond: never done
    dest = tmp_path / "dest"
    dest.mkdir()
    argv = ["cp", "--cache-dir", str(tmp_path / "cache")]
    process = subprocess.Popen(
        [sys.executable, "-c", NO_FUSE, *argv, f"{proxy.url}/library/hello:latest/image.tar", dest],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.listdir(dest):  # the temporary file appears once the copy began
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        [temporary] = os.listdir(dest)
        assert temporary.startswith(".image.tar.regfs-")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130, process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert os.listdir(dest) == []


def test_registries_conf_configures_the_registry_a_path_names(
    proxy: FaultProxy, registry: RegistryServer, seeded: Seeded, tmp_path: Path, cache: Path
) -> None:
    """No scheme in the path: the registry is configured as a mount of every registry
    configures it. registries.conf makes the plain-http one insecure (https, then http) and
    gives it a mirror; a blocked one is refused without a request."""
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{proxy.url.removeprefix("http://")}"\n'
        "insecure = true\n"
        '[[registry]]\nlocation = "blocked.example.test"\nblocked = true\n'
    )
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(conf), HOME=str(tmp_path / "home"))
    hello = f"{registry.host}/library/hello:latest"
    manifest = regfs("cat", f"{hello}/manifest.json", cache=cache, env=env)
    assert ok(manifest) == seeded.hello.manifest_bytes
    layer = seeded.hello.layers[0]
    got = ok(regfs("cat", f"{hello}/layers/{layer.digest}.tar.gz", cache=cache, env=env))
    assert got == layer.data
    assert any(layer.digest in p for p in blob_gets(proxy))  # through the mirror
    refused = regfs("ls", "blocked.example.test/team/app", cache=cache, env=env)
    assert refused.returncode == 1
    assert b"blocked" in refused.stderr, refused.stderr
