"""`regfs mount` as a user runs it: a real detached FUSE mount checked with plain file operations."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from regfs.vfs.mountinfo import mounts_at
from tests.fixtures._net import free_port, wait_until
from tests.fixtures.images import File, PushedImage, make_layer, push_image
from tests.fixtures.mounting import (
    REGFS,
    Mount,
    daemon_pid,
    force_unmount,
    is_mounted,
    mounted,
    process_gone,
    run_regfs,
)
from tests.fixtures.registry import RegistryServer
from tests.fixtures.seed import ALICE, Seeded
from tests.fixtures.token_issuer import TokenIssuer

pytestmark = [pytest.mark.mount, pytest.mark.registry]

TTL_REPO = "mounttest/ttl"


def no_credentials_env(tmp: Path) -> dict[str, str]:
    """An environment in which regfs finds no registry credentials at all."""
    empty = tmp / "no-docker-config"
    empty.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["DOCKER_CONFIG"] = str(empty)
    env["REGISTRY_AUTH_FILE"] = str(empty / "auth.json")
    env["XDG_RUNTIME_DIR"] = str(empty)
    return env


def alice_env(tmp: Path, registry: RegistryServer) -> dict[str, str]:
    config = tmp / "docker-config"
    config.mkdir(exist_ok=True)
    auth = base64.b64encode(":".join(ALICE).encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    env = no_credentials_env(tmp)
    env["DOCKER_CONFIG"] = str(config)
    return env


def big_layer(seeded: Seeded) -> tuple[str, bytes]:
    layer = max(seeded.hello.layers, key=lambda x: x.size)
    return layer.digest, layer.data


def layer_path(m: Mount, digest: str) -> Path:
    return m.path / "library" / "hello" / "latest" / "layers" / f"{digest}.tar.gz"


def registry_bytes(m: Mount, registry: RegistryServer) -> int:
    by_host = m.stats()["bytes_fetched_by_host"]
    assert isinstance(by_host, dict)
    return int(by_host.get(registry.host, 0))


def push_ttl_image(registry: RegistryServer, text: bytes) -> PushedImage:
    return push_image(registry.url, TTL_REPO, "current", [make_layer([File("v.txt", text)])])


@pytest.fixture(scope="module")
def ttl_first(registry: RegistryServer) -> PushedImage:
    return push_ttl_image(registry, b"first\n")


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, ttl_first: PushedImage
) -> Iterator[Mount]:
    """One mount for every test that only reads: small blocks, 1 s tag TTL, arm64."""
    tmp = tmp_path_factory.mktemp("shared-mount")
    args = (
        *("--block-size", "64K", "--tag-ttl", "1", "--platform", "linux/arm64/v8"),
        # A memory tier smaller than one layer: reads go through the disk tier too.
        *("--memory-cache", "256K", "--cache-size", "100M", "--timeout", "120", "-o", "noatime"),
    )
    with mounted(tmp, registry.url, *args, env=no_credentials_env(tmp)) as m:
        yield m


# -- starting and stopping ------------------------------------------------------------------


def test_mount_errors_are_one_line_and_nonzero(tmp_path: Path, registry: RegistryServer) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "dir").mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["--registry", registry.url, str(tmp_path / "missing")], "does not exist"),
        (["--registry", registry.url, str(a_file)], "not a directory"),
        (["--registry", dead, str(tmp_path / "dir")], "unreachable"),
    ]
    env = no_credentials_env(tmp_path) | {"XDG_STATE_HOME": str(tmp_path / "state")}
    usage = [
        ["--platform", "linux", str(tmp_path / "dir")],
        ["--block-size", "lots", str(tmp_path / "dir")],
        ["--foreign-url-allow", "(", str(tmp_path / "dir")],
    ]
    for args in usage:
        result = run_regfs(["mount", *args], env=env)
        assert result.returncode == 2, result
    for args, words in cases:
        result = run_regfs(["mount", "--cache-dir", str(tmp_path / "cache"), *args], env=env)
        assert result.returncode != 0, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr
        assert lines[0].startswith("regfs: ")
    assert not is_mounted(tmp_path / "dir")


def test_umount_command(tmp_path: Path, registry: RegistryServer) -> None:
    with mounted(tmp_path, registry.url, env=no_credentials_env(tmp_path)) as m:
        assert "library" in os.listdir(m.path)
        result = run_regfs(["umount", str(m.path)], env=m.env)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(m.path)
        assert "unmounted" in m.log() or "mounted" in m.log()
    result = run_regfs(["umount", str(m.path)], env=m.env)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1


def _foreground(tmp_path: Path, registry: RegistryServer, path: Path) -> subprocess.Popen[str]:
    env = no_credentials_env(tmp_path) | {"XDG_STATE_HOME": str(tmp_path / "state")}
    cache = str(tmp_path / "cache")
    proc = subprocess.Popen(
        [
            *REGFS,
            "mount",
            "--foreground",
            "--registry",
            registry.url,
            "--cache-dir",
            cache,
            str(path),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: is_mounted(path) or proc.poll() is not None, timeout=60, what="mount")
    except BaseException:
        proc.kill()
        raise
    assert is_mounted(path), proc.communicate()[0]
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_unmounts_a_foreground_mount(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, signum: int
) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    proc = _foreground(tmp_path, registry, path)
    try:
        manifest = path / "library" / "hello" / "latest" / "manifest.json"
        assert manifest.read_bytes() == seeded.hello.manifest_bytes
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert not is_mounted(path), output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(path)


def _mount_again(
    tmp_path: Path, registry: RegistryServer, path: Path, name: str
) -> subprocess.CompletedProcess[str]:
    # Not `mounted`: it would look at the mountpoint itself. Run the command as a user would.
    env = no_credentials_env(tmp_path) | {"XDG_STATE_HOME": str(tmp_path / f"{name}-state")}
    args = ["mount", "--registry", registry.url, "--cache-dir", str(tmp_path / f"{name}-c")]
    return run_regfs([*args, str(path)], env=env)


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "foreground"])
def test_a_mount_killed_with_sigkill_is_cleaned_up_by_the_next_mount(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, detached: bool
) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    manifest = path / "library" / "hello" / "latest" / "manifest.json"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(force_unmount, path)
        if detached:
            cleanup.enter_context(mounted(tmp_path, registry.url, env=no_credentials_env(tmp_path)))
            pid = daemon_pid(path)
        else:
            proc = _foreground(tmp_path, registry, path)
            cleanup.callback(_reap, proc)
            pid = proc.pid
        assert manifest.read_bytes() == seeded.hello.manifest_bytes
        # The kernel now holds the root's attributes: a stat of the dead mount is answered
        # from them, the trap the old check (stat → ENOTCONN) fell into.
        os.stat(path)
        os.kill(pid, signal.SIGKILL)
        if not detached:
            proc.wait(timeout=60)
        wait_until(lambda: process_gone(pid), timeout=60, what="the mount's process to die")
        assert is_mounted(path)
        with pytest.raises(OSError) as raised:
            os.listdir(path)
        # ENOTCONN, or ECONNABORTED for a request that was waiting as the connection went
        assert raised.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)

        result = _mount_again(tmp_path, registry, path, "again")
        assert result.returncode == 0, result.stderr
        assert manifest.read_bytes() == seeded.hello.manifest_bytes
        assert len(mounts_at(path)) == 1, mounts_at(path)  # the dead one is gone, not under
        log = "\n".join(p.read_text() for p in (tmp_path / "again-state").rglob("*.log"))
        assert "cleaned up 1 dead regfs mount" in log


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_live_mount_is_refused(tmp_path: Path, registry: RegistryServer, seeded: Seeded) -> None:
    with mounted(tmp_path, registry.url, env=no_credentials_env(tmp_path)) as m:
        result = _mount_again(tmp_path, registry, m.path, "again")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"regfs: {m.path} is already a regfs mount (regfs umount {m.path} first)"
        )
        manifest = m.path / "library" / "hello" / "latest" / "manifest.json"
        assert manifest.read_bytes() == seeded.hello.manifest_bytes  # untouched, still serving
        assert len(mounts_at(m.path)) == 1


@pytest.mark.parametrize("alive", [True, False], ids=["live", "dead"])
def test_another_filesystem_on_the_path_is_refused_live_or_dead(
    tmp_path: Path, registry: RegistryServer, alive: bool
) -> None:
    """A FUSE filesystem that is not regfs (the benchmarks' ceiling): refused while it runs,
    and left alone (not cleaned up) once its process is killed."""
    path = tmp_path / "other"
    path.mkdir()
    ceiling = Path(__file__).resolve().parents[2] / "scripts" / "bench_ceiling.py"
    proc = subprocess.Popen(
        [sys.executable, str(ceiling), str(path), "4096"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ceiling.parents[1])),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert [e.fstype for e in mounts_at(path)] == ["fuse.regfs-ceiling"]
        if not alive:  # killed before anyone looked: a stat of it is ENOTCONN
            proc.kill()
            proc.wait(timeout=60)
        result = _mount_again(tmp_path, registry, path, "again")
        assert result.returncode == 1, result.stderr
        words = "already a mountpoint" if alive else "dead mount of another filesystem"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr
        assert [e.fstype for e in mounts_at(path)] == ["fuse.regfs-ceiling"]  # not ours to clean
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(path)


# -- the tree through the kernel ------------------------------------------------------------


def test_tree_through_the_mount(shared: Mount, seeded: Seeded) -> None:
    root = shared.path
    assert {"library", "oci", "multi", "team", "legacy", ".regfs"} <= set(os.listdir(root))
    assert sorted(os.listdir(root / "library" / "hello")) == ["latest", "v1"]
    image = root / "library" / "hello" / "latest"
    assert {"config.json", "layers", "manifest.json"} <= set(os.listdir(image))
    assert (image / "manifest.json").read_bytes() == seeded.hello.manifest_bytes
    assert (image / "config.json").read_bytes() == seeded.hello.config_bytes
    by_digest = root / "library" / "hello" / seeded.hello.manifest_digest
    assert (by_digest / "manifest.json").read_bytes() == seeded.hello.manifest_bytes
    assert seeded.hello.manifest_digest not in os.listdir(root / "library" / "hello")
    st = os.stat(image / "manifest.json")
    assert st.st_mode & 0o777 == 0o444 and st.st_size == len(seeded.hello.manifest_bytes)
    assert os.stat(image).st_mode & 0o777 == 0o555
    # An index: the arm64 image (this mount's --platform) plus index.json and platforms/.
    index = root / "multi" / "arch" / "1.0"
    assert (index / "index.json").read_bytes() == seeded.multi_arch.manifest_bytes
    arm = next(i for i, p in seeded.multi_arch.entries if p["architecture"] == "arm64")
    assert (index / "manifest.json").read_bytes() == arm.manifest_bytes
    assert sorted(os.listdir(index / "platforms")) == [
        "linux-amd64",
        "linux-arm64-v8",
        "windows-amd64",
    ]
    nested = root / "team" / "project" / "tool" / "3" / "manifest.json"
    assert nested.read_bytes() == seeded.nested.manifest_bytes
    for bad in ["Library", "a%2Fb", "x" * 255, "library/hello/sha256:abc"]:
        assert not (root / bad).exists()


def test_reads_straddling_block_boundaries(shared: Mount, seeded: Seeded) -> None:
    digest, data = big_layer(seeded)
    block = 64 * 1024
    size = len(data)
    cases = [
        (0, 1),
        (block - 1, 2),
        (block - 3, block + 7),
        (3 * block + 5, 5 * block + 11),
        (12345, 1),
        (size // 2 + 1, 99_999),
        (size - block - 13, block + 13),
        (size - 1, 1),
        (size - 5, 100),
        (0, size + 1000),
    ]
    fd = os.open(layer_path(shared, digest), os.O_RDONLY)
    try:
        for offset, count in cases:
            assert os.pread(fd, count, offset) == data[offset : offset + count], (offset, count)
        assert os.pread(fd, 10, size) == b""
        assert os.pread(fd, 10, size + 1_000_000) == b""
    finally:
        os.close(fd)
    with layer_path(shared, digest).open("rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest.split(":", 1)[1]


def test_writes_are_erofs(shared: Mount) -> None:
    image = shared.path / "library" / "hello" / "latest"
    attempts = [
        lambda: (image / "new-file").touch(),
        lambda: (image / "manifest.json").touch(),
        lambda: (image / "newdir").mkdir(),
        lambda: (image / "manifest.json").unlink(),
        lambda: (image / "layers").rmdir(),
        lambda: open(image / "manifest.json", "r+b").close(),
        lambda: open(image / "manifest.json", "wb").close(),
        lambda: open(image / "manifest.json", "ab").close(),
        lambda: os.rename(image / "manifest.json", image / "m.json"),
        lambda: os.chmod(image / "manifest.json", 0o644),
        lambda: (shared.path / "library" / "newrepo").mkdir(),
        lambda: (shared.path / ".regfs" / "stats.json").write_text("{}"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS, raised.value


def test_tag_ttl_shows_a_pushed_update(
    shared: Mount, registry: RegistryServer, ttl_first: PushedImage
) -> None:
    manifest = shared.path / TTL_REPO / "current" / "manifest.json"
    assert manifest.read_bytes() == ttl_first.manifest_bytes
    second = push_ttl_image(registry, b"second\n")
    assert second.manifest_digest != ttl_first.manifest_digest
    # --tag-ttl 1: the tag is re-resolved within seconds (generous bound for a slow CI VM).
    wait_until(
        lambda: manifest.read_bytes() == second.manifest_bytes,
        timeout=60,
        what="the tag to show the new manifest",
    )
    layers = shared.path / TTL_REPO / "current" / "layers"
    digest = second.layers[0].digest
    assert sorted(os.listdir(layers)) == ["1.tar.gz", digest, f"{digest}.tar.gz"]
    # The old image stays reachable by its digest.
    old = shared.path / TTL_REPO / ttl_first.manifest_digest / "manifest.json"
    assert old.read_bytes() == ttl_first.manifest_bytes


def test_readdir_is_complete_and_stable(shared: Mount) -> None:
    root = shared.path
    first = sorted(os.listdir(root))
    for _ in range(3):
        assert sorted(os.listdir(root)) == first
    with os.scandir(root) as it:
        assert sorted(e.name for e in it) == first


# -- the disk cache -------------------------------------------------------------------------


def test_disk_cache_survives_a_remount(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    digest, data = big_layer(seeded)
    cache = tmp_path / "cache"
    env = no_credentials_env(tmp_path)
    with mounted(tmp_path, registry.url, cache_dir=cache, name="first", env=env) as m:
        assert layer_path(m, digest).read_bytes() == data
        assert registry_bytes(m, registry) >= len(data)
    with mounted(tmp_path, registry.url, cache_dir=cache, name="second", env=env) as m:
        assert layer_path(m, digest).read_bytes() == data
        stats = m.stats()
        fetched = registry_bytes(m, registry)
        assert fetched < len(data) // 10, stats  # documents only, no blob bytes
        cache_stats = stats["cache"]
        assert isinstance(cache_stats, dict)
        assert cache_stats["disk_hits"] > 0 and cache_stats["misses"] == 0, stats


def test_concurrent_mounts_share_one_cache_dir(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    cache = tmp_path / "cache"
    env = no_credentials_env(tmp_path)
    with (
        mounted(
            tmp_path, registry.url, "--block-size", "64K", cache_dir=cache, name="a", env=env
        ) as a,
        mounted(
            tmp_path, registry.url, "--block-size", "64K", cache_dir=cache, name="b", env=env
        ) as b,
    ):
        results: dict[str, bytes] = {}
        errors: list[BaseException] = []

        def read(m: Mount, key: str, digest: str) -> None:
            try:
                results[key] = layer_path(m, digest).read_bytes()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=read, args=(m, f"{m.path.name}:{layer.digest}", layer.digest))
            for layer in seeded.hello.layers
            for m in (a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        for layer in seeded.hello.layers:
            for m in (a, b):
                assert results[f"{m.path.name}:{layer.digest}"] == layer.data


# -- credentials and logs -------------------------------------------------------------------


def _secrets(registry_password: str = ALICE[1]) -> list[str]:
    basic = base64.b64encode(":".join(ALICE).encode()).decode()
    return [registry_password, basic, "Bearer ", "Basic ", "eyJ"]


def test_credentials_work_and_never_reach_the_log(
    tmp_path: Path, htpasswd_registry: RegistryServer, htpasswd_hello: PushedImage
) -> None:
    server = htpasswd_registry
    with mounted(tmp_path, server.url, "--debug", env=alice_env(tmp_path, server)) as m:
        image = m.path / "library" / "hello" / "latest"
        assert sorted(os.listdir(m.path / "library" / "hello")) == ["latest", "v1"]
        assert (image / "manifest.json").read_bytes() == htpasswd_hello.manifest_bytes
        for layer in htpasswd_hello.layers:
            assert (image / "layers" / f"{layer.digest}.tar.gz").read_bytes() == layer.data
        log = m.log()
    assert f"mounted {server.url}" in log and "using credentials" in log
    for secret in _secrets():
        assert secret not in log, f"{secret!r} appears in the log"


def test_token_registry_reads_with_credentials_and_never_logs_them(
    tmp_path: Path,
    token_registry: RegistryServer,
    token_hello: PushedImage,
    token_issuer: TokenIssuer,
) -> None:
    # The realm is plain http on the registry's own host (another port): credentials go there.
    server = token_registry
    with mounted(tmp_path, server.url, "--debug", env=alice_env(tmp_path, server)) as m:
        image = m.path / "library" / "hello" / "latest"
        assert (image / "manifest.json").read_bytes() == token_hello.manifest_bytes
        for layer in token_hello.layers:
            assert (image / "layers" / f"{layer.digest}.tar.gz").read_bytes() == layer.data
        log = m.log()
    assert "requesting a token" in log
    assert ("repository:library/hello:pull", "alice") in token_issuer.requests
    for secret in _secrets():
        assert secret not in log, f"{secret!r} appears in the log"


def test_no_credentials_mounts_and_reads_are_eacces(
    tmp_path: Path, htpasswd_registry: RegistryServer
) -> None:
    with mounted(tmp_path, htpasswd_registry.url, env=no_credentials_env(tmp_path)) as m:
        image = m.path / "library" / "hello" / "latest"
        with pytest.raises(PermissionError):
            os.listdir(image)
        with pytest.raises(PermissionError):
            (image / "manifest.json").read_bytes()
        # Let the log handler flush what the failed operations wrote.
        wait_until(lambda: htpasswd_registry.host in _warnings(m), timeout=30, what="log line")
        assert "401" in _warnings(m)


def _warnings(m: Mount) -> str:
    return "\n".join(line for line in m.log().splitlines() if " WARNING " in line)


def test_stats_document(shared: Mount) -> None:
    stats = shared.stats()
    assert stats["requests"] > 0  # type: ignore[operator]
    assert {"bytes_fetched_by_host", "cache", "blobs", "errors"} <= set(stats)
    time.sleep(0)  # the document is generated at open: reading it twice always parses
    assert json.loads((shared.path / ".regfs" / "stats.json").read_text())["registry"]


def test_ls_a_shows_dot_and_dotdot_and_walkers_do_not_follow_them(
    shared: Mount, seeded: Seeded, tmp_path: Path
) -> None:
    image = shared.path / "library" / "hello" / "latest"
    names = subprocess.run(["ls", "-a", str(image)], capture_output=True, text=True, check=True)
    assert names.stdout.split()[:2] == [".", ".."]
    assert set(names.stdout.split()[2:]) == set(os.listdir(image))
    # The inode numbers they carry are those of the directory and of its parent.
    listed = subprocess.run(["ls", "-ai", str(image / "layers")], capture_output=True, text=True)
    inodes = {name: number for number, name in map(str.split, listed.stdout.splitlines())}
    assert int(inodes["."]) == os.stat(image / "layers").st_ino
    assert int(inodes[".."]) == os.stat(image).st_ino
    # find, ls -R and cp -r see each entry once and never walk into `.` or `..`.
    walked = {str(image)}
    for top, dirs, files in os.walk(image):
        walked |= {os.path.join(top, name) for name in dirs + files}
    found = subprocess.run(["find", str(image)], capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert sorted(found.stdout.splitlines()) == sorted(walked)
    recursive = subprocess.run(["ls", "-R", str(image)], capture_output=True, text=True, timeout=60)
    assert recursive.returncode == 0 and "/./" not in recursive.stdout
    real_dirs = [p for p in walked if os.path.isdir(p) and not os.path.islink(p)]
    assert recursive.stdout.count(":\n") == len(real_dirs)
    copy = tmp_path / "layers-copy"
    subprocess.run(["cp", "-r", str(image / "layers"), str(copy)], check=True, timeout=60)
    assert sorted(os.listdir(copy)) == sorted(os.listdir(image / "layers"))
    for layer in seeded.hello.layers:
        assert (copy / f"{layer.digest}.tar.gz").read_bytes() == layer.data
