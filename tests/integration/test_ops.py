"""For the people who run it: prefetch, status, cache info/prune/clear, mirrors, --offline,
mount(8)/fstab, --version/--help — each on real mounts against real docker-registry servers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import PushedImage
from tests.fixtures.mounting import REGFS, force_unmount, is_mounted, mounted, run_regfs
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.seed import Seeded, seed_hello

pytestmark = [pytest.mark.mount, pytest.mark.registry]

HELPER_LINK = Path("/usr/sbin/mount.fuse.regfs")


def sha256(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return "sha256:" + out.stdout.split()[0]


def layer_paths(image_dir: Path, image: PushedImage) -> list[Path]:
    return [image_dir / "layers" / f"{layer.digest}.tar.gz" for layer in image.layers]


def assert_image_reads_back(image_dir: Path, image: PushedImage) -> None:
    assert (image_dir / "manifest.json").read_bytes() == image.manifest_bytes
    assert (image_dir / "config.json").read_bytes() == image.config_bytes
    for layer, path in zip(image.layers, layer_paths(image_dir, image), strict=True):
        assert sha256(path) == layer.digest


def cache_info(cache_dir: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    result = run_regfs(["cache", "info", "--json", "--cache-dir", str(cache_dir)], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def verified_digests(cache_dir: Path) -> set[str]:
    blobs = cache_info(cache_dir)["blobs"]
    assert isinstance(blobs, list)
    return {b["digest"] for b in blobs if b["verified"]}


def wait_until(condition: object, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[tuple[RegistryServer, PushedImage]]:
    """A registry of this test's own (it may be stopped), holding library/hello:latest and :v1."""
    with start_registry(tmp_path / "own-registry") as server:
        yield server, seed_hello(server.url)


# -- prefetch -------------------------------------------------------------------------------


def test_prefetch_reads_a_whole_image_so_later_reads_fetch_nothing(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    with mounted(tmp_path, registry.url) as m:
        image_dir = m.path / "library" / "hello" / "latest"
        result = run_regfs(["prefetch", str(image_dir)], env=m.env)
        assert result.returncode == 0, result.stderr
        # Not a terminal: plain lines, one per file, and a summary.
        assert "\x1b" not in result.stdout
        for path in layer_paths(image_dir, seeded.hello):
            assert f"done   {path}" in result.stdout
        assert "prefetched 5 of 5 files" in result.stdout
        # Then rootfs/ is listed: the layer indexes are built ahead of use.
        assert f"indexed {image_dir / 'rootfs'}" in result.stdout
        assert "indexed 1 of 1 image trees (rootfs/)" in result.stdout
        indexes = m.stats()["layer_indexes"]
        assert isinstance(indexes, dict) and indexes["built"] == len(seeded.hello.layers)

        assert verified_digests(m.cache_dir) >= {layer.digest for layer in seeded.hello.layers}
        before = m.stats()
        assert_image_reads_back(image_dir, seeded.hello)
        after = m.stats()
        assert after["bytes_fetched_by_host"] == before["bytes_fetched_by_host"]
        assert after["cache"]["misses"] == before["cache"]["misses"]  # type: ignore[index]
        # A file inside the image, from the prefetched indexes: nothing fetched, none built.
        assert (image_dir / "rootfs" / "etc" / "hostname").read_bytes() == b"hello-v2\n"
        final = m.stats()
        assert final["bytes_fetched_by_host"] == before["bytes_fetched_by_host"]
        assert final["layer_indexes"]["built"] == len(seeded.hello.layers)  # type: ignore[index]


def test_prefetch_of_a_repository_reads_each_shared_layer_once(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    with mounted(tmp_path, registry.url) as m:
        result = run_regfs(["prefetch", "-j", "2", str(m.path / "library" / "hello")], env=m.env)
        assert result.returncode == 0, result.stderr
        # latest and v1 are one image: 2 manifests + 2 configs, its 3 layers once.
        assert "prefetched 7 of 7 files" in result.stdout
        for layer in seeded.hello.layers:
            assert result.stdout.count(f"{layer.digest}.tar.gz") == 1


def test_prefetch_names_the_files_it_could_not_read_and_exits_1(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    bad_layer = seeded.hello.layers[0]
    with FaultProxy(registry.url) as proxy:
        # Every copy of this blob comes with one byte flipped: the mount must refuse it.
        proxy.fault(f"/blobs/{bad_layer.digest}$", flip_at=100, times=None)
        with mounted(tmp_path, proxy.url) as m:
            image_dir = m.path / "library" / "hello" / "latest"
            missing = m.path / "library" / "hello" / "no-such-tag"
            result = run_regfs(["prefetch", str(image_dir), str(missing)], env=m.env)
            assert result.returncode == 1, result.stdout
            bad_path = image_dir / "layers" / f"{bad_layer.digest}.tar.gz"
            assert f"{bad_path}: Input/output error" in result.stderr
            assert f"{missing}: No such file or directory" in result.stderr
            assert "prefetched 4 of 5 files" in result.stdout
            verified = verified_digests(m.cache_dir)
            assert bad_layer.digest not in verified
            assert {layer.digest for layer in seeded.hello.layers[1:]} <= verified


def test_ctrl_c_stops_prefetch_with_130_and_keeps_what_was_read(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    big = max(seeded.hello.layers, key=lambda layer: len(layer.data))
    small = [layer for layer in seeded.hello.layers if layer is not big]
    with FaultProxy(registry.url) as proxy:
        proxy.fault(f"/blobs/{big.digest}$", stall=True, times=None)  # never finishes
        # A listing of rootfs/ waits for the stalled layer's index until --timeout passes
        # without progress, and a process cannot leave while its FUSE request is unanswered.
        with mounted(tmp_path, proxy.url, "--timeout", "15") as m:
            image_dir = m.path / "library" / "hello" / "latest"
            proc = subprocess.Popen(
                [*REGFS, "prefetch", "-j", "2", str(image_dir)],
                env=m.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                # One thread hangs in the big layer; the other reads everything else.
                wait_until(
                    lambda: (
                        {layer.digest for layer in small} <= verified_digests(m.cache_dir)
                        and any(big.digest in r.path for r in proxy.requests)
                    ),
                    what="the small layers to be cached and the big one asked for",
                )
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 130, (out, err)
            assert "interrupted" in out
            # What was read stays: the small layers are still cached and verified.
            assert {layer.digest for layer in small} <= verified_digests(m.cache_dir)
            proxy.stop()  # lets the stalled fetch end before the unmount


# -- status ---------------------------------------------------------------------------------


def test_status_shows_the_mount_as_a_table(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    with mounted(tmp_path, registry.url) as m:
        assert_image_reads_back(m.path / "library" / "hello" / "latest", seeded.hello)
        stats = m.stats()
        for key in (
            "bytes_fetched_by_host",
            "requests",
            "retries",
            "cache",
            "blobs",
            "in_flight_blocks",
            "errors",
        ):
            assert key in stats
        tiers = stats["cache"]["tiers"]  # type: ignore[index]
        assert tiers["memory"]["misses"] > 0 and tiers["disk"]["misses"] > 0
        assert stats["blobs"]["verified"] >= 4  # type: ignore[index]

        result = run_regfs(["status", str(m.path)], env=m.env)
        assert result.returncode == 0, result.stderr
        assert registry.host in result.stdout
        assert "bytes fetched by host" in result.stdout
        assert "memory" in result.stdout and "disk" in result.stdout
        assert "verified" in result.stdout

        as_json = run_regfs(["status", "--json", str(m.path)], env=m.env)
        assert json.loads(as_json.stdout)["registry"] == stats["registry"]

    not_a_mount = run_regfs(["status", str(tmp_path)])
    assert not_a_mount.returncode == 1
    assert "not a regfs mount" in not_a_mount.stderr


# -- cache info / prune / clear ------------------------------------------------------------------


def test_cache_info_prune_and_clear_next_to_a_running_mount(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    big = max(seeded.hello.layers, key=lambda layer: len(layer.data))
    # A small memory tier, so reads after a prune or clear go to the disk tier (or network).
    with mounted(tmp_path, registry.url, "--memory-cache", "1M", "--block-size", "1M") as m:
        image_dir = m.path / "library" / "hello" / "latest"
        assert_image_reads_back(image_dir, seeded.hello)

        info = cache_info(m.cache_dir)
        blobs = {b["digest"]: b for b in info["blobs"]}  # type: ignore[attr-defined]
        for layer in seeded.hello.layers:
            assert blobs[layer.digest]["verified"]
            assert blobs[layer.digest]["size"] == len(layer.data)
            assert blobs[layer.digest]["fraction"] == 1.0
        text = run_regfs(["cache", "info", "--cache-dir", str(m.cache_dir)])
        assert big.digest[:23] in text.stdout and "verified" in text.stdout

        pruned = run_regfs(["cache", "prune", "--to", "1M", "--cache-dir", str(m.cache_dir)])
        assert pruned.returncode == 0, pruned.stderr
        info = cache_info(m.cache_dir)
        assert info["blob_bytes"] <= 1 << 20  # type: ignore[operator]
        assert big.digest not in {b["digest"] for b in info["blobs"]}  # type: ignore[attr-defined]
        assert_image_reads_back(image_dir, seeded.hello)  # the mount fetches it again

        one = seeded.hello.layers[0].digest
        cleared = run_regfs(["cache", "clear", "--digest", one, "--cache-dir", str(m.cache_dir)])
        assert cleared.returncode == 0, cleared.stderr
        assert one not in {b["digest"] for b in cache_info(m.cache_dir)["blobs"]}  # type: ignore[attr-defined]

        # Clearing everything again and again while a reader goes on: never a wrong byte.
        for _round in range(3):
            assert run_regfs(["cache", "clear", "--cache-dir", str(m.cache_dir)]).returncode == 0
            assert cache_info(m.cache_dir)["blobs"] == []
            assert_image_reads_back(image_dir, seeded.hello)
        assert "not written to disk" not in m.log()

    bad = run_regfs(["cache", "clear", "--digest", "sha256:nothex", "--cache-dir", str(tmp_path)])
    assert bad.returncode == 2


# -- mirrors -------------------------------------------------------------------------------------


def test_a_warm_mirror_serves_everything_with_the_upstream_stopped(
    tmp_path: Path, own_registry: tuple[RegistryServer, PushedImage]
) -> None:
    upstream, hello = own_registry
    with start_registry(tmp_path / "mirror", proxy_remote_url=upstream.url) as mirror:
        with mounted(tmp_path, upstream.url, "--mirror", mirror.url, name="first") as m:
            assert_image_reads_back(m.path / "library" / "hello" / "latest", hello)
            by_host = m.stats()["bytes_fetched_by_host"]
            assert by_host.get(mirror.host, 0) >= sum(len(x.data) for x in hello.layers)  # type: ignore[attr-defined]

        # The mirror stores blobs in the background: wait until it holds them all.
        digests = [x.digest for x in hello.layers] + [
            "sha256:" + hashlib.sha256(hello.config_bytes).hexdigest()
        ]

        def mirror_holds_all() -> bool:
            base = mirror.storage_dir / "docker" / "registry" / "v2" / "blobs" / "sha256"
            return all((base / d[7:9] / d[7:] / "data").is_file() for d in digests)

        wait_until(mirror_holds_all, what="the mirror to store every blob")
        manifests_asked = mirror.log().count("/v2/library/hello/manifests/latest")
        assert manifests_asked >= 1  # the manifest came through the mirror too

        upstream.stop()
        with mounted(tmp_path, upstream.url, "--mirror", mirror.url, name="second") as m:
            assert_image_reads_back(m.path / "library" / "hello" / "latest", hello)
            # Its upstream gone, the mirror lists the tags it has seen.
            assert "latest" in os.listdir(m.path / "library" / "hello")
            by_host = m.stats()["bytes_fetched_by_host"]
            assert set(by_host) == {mirror.host}  # type: ignore[arg-type]
            assert "serving through mirror" in m.log()


def test_manifests_fall_through_a_mirror_that_does_not_answer(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    with FaultProxy(registry.url) as broken_mirror:
        broken_mirror.fault("/v2/.+/(manifests|tags|blobs)/", method=None, status=429, times=None)
        with mounted(tmp_path, registry.url, "--mirror", broken_mirror.url) as m:
            assert_image_reads_back(m.path / "library" / "hello" / "latest", seeded.hello)
            assert "latest" in os.listdir(m.path / "library" / "hello")  # the tag list too
            paths = [r.path for r in broken_mirror.requests]
            assert any("/manifests/latest" in p for p in paths)  # asked first...
            assert any("/tags/list" in p for p in paths)
            by_host = m.stats()["bytes_fetched_by_host"]
            assert by_host.get(registry.host, 0) > 0  # type: ignore[attr-defined]  # ...then upstream


# -- offline -------------------------------------------------------------------------------------


def test_offline_serves_the_cache_with_the_registry_stopped(
    tmp_path: Path, own_registry: tuple[RegistryServer, PushedImage]
) -> None:
    server, hello = own_registry
    cache = tmp_path / "shared-cache"
    with mounted(tmp_path, server.url, cache_dir=cache, name="online") as m:
        assert_image_reads_back(m.path / "library" / "hello" / "latest", hello)
    server.stop()

    with mounted(tmp_path, server.url, "--offline", cache_dir=cache, name="offline") as m:
        image_dir = m.path / "library" / "hello" / "latest"
        assert_image_reads_back(image_dir, hello)
        assert "latest" in os.listdir(m.path / "library" / "hello")
        # v1 was never resolved here, and other repositories never seen: ENOENT.
        for uncached in (m.path / "library" / "hello" / "v1", m.path / "library" / "other"):
            with pytest.raises(OSError) as caught:
                os.stat(uncached)
            assert caught.value.errno == errno.ENOENT
        stats = m.stats()
        assert stats["offline"] is True
        assert stats["requests"] == 0
        assert stats["bytes_fetched_by_host"] == {}


# -- mount(8) and fstab ----------------------------------------------------------------------------


@pytest.fixture
def mount_helper() -> Iterator[Path]:
    """/usr/sbin/mount.fuse.regfs -> this venv's regfs, as a package would install it."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) with a helper in /usr/sbin needs root")
    regfs = Path(sys.executable).parent / "regfs"
    assert regfs.exists(), regfs
    if HELPER_LINK.is_symlink() or HELPER_LINK.exists():
        if os.path.realpath(HELPER_LINK) != str(regfs.resolve()):
            pytest.skip(f"{HELPER_LINK} exists and is not ours")
        HELPER_LINK.unlink()
    HELPER_LINK.symlink_to(regfs)
    try:
        yield HELPER_LINK
    finally:
        HELPER_LINK.unlink(missing_ok=True)


def _mount_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path / "home"))


def test_mount_t_fuse_regfs_and_an_fstab_line_work(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded, mount_helper: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    env = _mount_env(tmp_path)
    try:
        result = subprocess.run(
            ["mount", "-t", "fuse.regfs", registry.url, str(mnt), "-o", f"cache_dir={cache}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert is_mounted(mnt)
        assert_image_reads_back(mnt / "library" / "hello" / "latest", seeded.hello)
        assert (cache / "v1" / "blobs").is_dir()  # cache_dir= reached regfs
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
        assert not is_mounted(mnt)

        # The fstab line the README shows, with options for mount(8) and systemd mixed in.
        fstab = tmp_path / "fstab"
        fstab.write_text(
            f"{registry.url}  {mnt}  fuse.regfs  "
            f"ro,noauto,nofail,_netdev,x-systemd.automount,cache_dir={cache},tag_ttl=30  0 0\n"
        )
        result = subprocess.run(
            ["mount", "--fstab", str(fstab), str(mnt)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert (mnt / "library" / "hello" / "latest" / "manifest.json").read_bytes() == (
            seeded.hello.manifest_bytes
        )
        status = run_regfs(["status", str(mnt)])
        assert status.returncode == 0 and registry.host in status.stdout
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
    finally:
        force_unmount(mnt)


def test_mount_fuse3_runs_regfs_from_path(
    tmp_path: Path, registry: RegistryServer, seeded: Seeded
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mount.fuse3 mounting needs root here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = _mount_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    try:
        # mount.fuse3 SOURCE MOUNTPOINT -t fuse.TYPE: it runs `TYPE SOURCE MOUNTPOINT -o opts`.
        result = subprocess.run(
            [
                "/sbin/mount.fuse3",
                registry.url,
                str(mnt),
                "-t",
                "fuse.regfs",
                "-o",
                f"cache_dir={tmp_path / 'cache'},allow_other",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert (mnt / "library" / "hello" / "latest" / "config.json").read_bytes() == (
            seeded.hello.config_bytes
        )
        with open("/proc/mounts") as mounts:
            options = next(line.split()[3] for line in mounts if line.split()[1] == str(mnt))
        assert "allow_other" in options.split(",")  # an unknown option went on to FUSE
    finally:
        force_unmount(mnt)


# -- --version, --help ------------------------------------------------------------------------------


def test_version_and_help_show_examples_and_exit_codes() -> None:
    version = run_regfs(["--version"])
    assert version.returncode == 0
    assert version.stdout.startswith("regfs ") and version.stdout.split()[1][0].isdigit()
    helptext = run_regfs(["--help"])
    assert helptext.returncode == 0
    for needle in ("examples:", "regfs prefetch", "regfs cache", "fstab", "exit codes", "130"):
        assert needle in helptext.stdout
    for command in ("mount", "prefetch", "status", "cache"):
        sub = run_regfs([command, "--help"])
        assert sub.returncode == 0 and "example" in sub.stdout, command
    unknown = run_regfs(["frobnicate"])
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr
