"""The composition root and the mount's lifecycle.

`build_services` and `make_tree` are the one place regfs is wired: registry clients, the
store over them, the block and disk caches, the views (with the image view builders in
IMAGE_VIEWS) and the inode table the pyfuse3 adapter serves. Then: checks, detaching, the
trio loop, signals, unmount.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from .cache import BlockCache, DiskCache
from .dirs import default_cache_dir, state_dir
from .errors import RegfsError
from .oci.reference import parse_registry
from .registry.blobs import ForeignURLPolicy
from .registry.client import RegistryClient, RetryPolicy, Stats
from .registry.credentials import load_credentials
from .registry.http import tune_read_size
from .store import RegistryStore
from .vfs.fuse import Operations
from .vfs.table import InodeTable
from .views.archive import archive_entries
from .views.control import control_dir, json_file, stats_document
from .views.image import ImageViewBuilder
from .views.registry import Options, RootDir

log = logging.getLogger(__name__)

READ_AHEAD_KB = 16384  # lets the kernel send large, parallel reads for sequential readers


class MountError(RegfsError):
    """A mount could not start (bad mountpoint, no /dev/fuse, registry unreachable)."""


@dataclass
class MountConfig:
    mountpoint: Path
    registry: str = "mcr.microsoft.com"
    options: Options = field(default_factory=Options)
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = 10 << 30
    memory_cache: int = 256 << 20
    block_size: int = 4 << 20
    foreign_url_allow: list[str] = field(default_factory=list)
    insecure: bool = False
    ca_cert: str | None = None
    foreign_ca_certs: list[str] = field(default_factory=list)  # --foreign-ca-cert
    fuse_options: list[str] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    op_timeout: float = 60.0
    mirrors: list[str] = field(default_factory=list)
    no_disk_cache: bool = False


def log_path(mountpoint: Path) -> Path:
    name = str(mountpoint.resolve()).strip("/").replace("/", "_") or "root"
    return state_dir() / f"{name}.log"


def check_mountpoint(path: Path) -> None:
    """A usable mountpoint; a dead regfs mount left by a killed process is cleaned up."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            log.info("cleaning up a dead mount at %s", path)
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
        elif exc.errno == errno.ENOENT:
            raise MountError(f"mountpoint {path} does not exist") from None
        else:
            raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mountpoint")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module or install fuse3")


def setup_logging(config: MountConfig, *, to_file: bool) -> None:
    level = logging.DEBUG if config.debug else logging.INFO
    handler: logging.Handler
    if to_file:
        path = log_path(config.mountpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs full URLs (signed CDN URLs carry credentials in their query): keep it quiet.
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(config: MountConfig) -> int:
    """Mount; detached unless --foreground, returning only once the mount is live."""
    config.mountpoint = config.mountpoint.absolute()
    check_mountpoint(config.mountpoint)
    if config.foreground:
        setup_logging(config, to_file=False)
        trio.run(serve, config, lambda: None)
        return 0
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace").strip()
        if message == "ready":
            return 0
        os.waitpid(pid, 0)
        raise MountError(message or "mount failed (see the log)")
    os.close(read_fd)
    status = 0
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        setup_logging(config, to_file=True)

        def ready() -> None:
            os.write(write_fd, b"ready")
            os.close(write_fd)

        trio.run(serve, config, ready)
    except BaseException as exc:  # report to the waiting parent, whatever it was
        status = 1
        log.error("mount failed: %s", exc)
        try:
            os.write(write_fd, str(exc).encode() or type(exc).__name__.encode())
            os.close(write_fd)
        except OSError:
            pass
    finally:
        os._exit(status)


# What every image directory shows beside manifest.json, config.json and layers/.
IMAGE_VIEWS: tuple[ImageViewBuilder, ...] = (archive_entries,)


@dataclass
class Services:
    """What a mount runs on: one registry's store, the block cache, the clients to close."""

    store: RegistryStore
    cache: BlockCache
    clients: list[RegistryClient]
    stats: Stats
    started: float = field(default_factory=time.time)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def build_services(config: MountConfig, stats: Stats) -> Services:
    address = parse_registry(config.registry)
    client = RegistryClient(
        address,
        credentials=load_credentials(address.host),
        ca_cert=config.ca_cert,
        foreign_ca_certs=config.foreign_ca_certs,
        insecure=config.insecure,
        retry=RetryPolicy(),
        stats=stats,
    )
    mirrors = [
        RegistryClient(
            parse_registry(m),
            credentials=load_credentials(parse_registry(m).host),
            ca_cert=config.ca_cert,
            retry=RetryPolicy(attempts=1),
            stats=stats,
        )
        for m in config.mirrors
    ]
    disk = (
        None
        if config.no_disk_cache
        else DiskCache(config.cache_dir, config.cache_size, config.block_size)
    )
    cache = BlockCache(
        disk=disk,
        memory_bytes=config.memory_cache,
        block_size=config.block_size,
        offline=config.options.offline,
    )
    store = RegistryStore(
        client,
        mirrors=mirrors,
        disk=disk,
        policy=ForeignURLPolicy(config.foreign_url_allow),
        offline=config.options.offline,
    )
    return Services(store, cache, [client, *mirrors], stats)


def make_tree(services: Services, options: Options) -> InodeTable:
    store, cache = services.store, services.cache

    def stats() -> dict[str, object]:
        return stats_document(
            registry=str(store.client.address),
            mirrors=[str(m.address) for m in store.mirrors],
            offline=store.offline,
            stats=services.stats,
            cache=cache,
            started=services.started,
        )

    control = control_dir([json_file("stats.json", stats)], services.started)
    root = RootDir(
        store,
        cache,
        options,
        control=control,
        image_views=IMAGE_VIEWS,
        started=services.started,
    )
    return InodeTable(root)


def mount_device(mountpoint: Path) -> str | None:
    """major:minor of the filesystem mounted at `mountpoint`, from /proc/self/mountinfo.

    Not os.stat: a stat of our own mountpoint from the thread that serves it deadlocks.
    """
    target = str(mountpoint.absolute())
    found = None
    with suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                found = fields[2]  # the last (topmost) mount wins
    return found


def _raise_read_ahead(mountpoint: Path) -> None:
    device = mount_device(mountpoint)
    try:
        if device is None:
            raise OSError("mount not found in /proc/self/mountinfo")
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(READ_AHEAD_KB))
    except OSError as exc:  # not root, or no such knob: the kernel default stays
        log.debug("read_ahead_kb not raised: %s", exc)


def tune_malloc() -> None:
    """Two malloc arenas, not one per worker thread: each arena holds on to the multi-megabyte
    blocks freed in it, which pushed RSS past --memory-cache + 100 MiB. Only M_ARENA_MAX: any
    threshold setting stops glibc raising its mmap threshold, and then every 4 MiB block is
    a fresh mapping, page-faulted in (the cold read lost 40%, measured with scripts/bench)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: its defaults stay
    m_arena_max = -8
    libc.mallopt(m_arena_max, 2)


async def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    tune_malloc()
    tune_read_size()
    services = build_services(config, Stats())
    try:
        if not config.options.offline:
            await _ping(services.store, config)
        tree = make_tree(services, config.options)
        ops = Operations(tree, op_timeout=config.op_timeout, tag_ttl=config.options.tag_ttl)
        options = set(pyfuse3.default_options)
        options.discard("default_permissions")
        options |= {"fsname=regfs", "subtype=regfs", "ro", "default_permissions"}
        if os.getuid() == 0:
            options.add("allow_other")
        for extra in config.fuse_options:
            options.update(o for o in extra.split(",") if o)
        pyfuse3.init(ops, str(config.mountpoint), options)
        try:
            _raise_read_ahead(config.mountpoint)
            log.info("mounted %s at %s", config.registry, config.mountpoint)
            async with services.cache.running(), trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
                ready()
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", config.mountpoint)
    finally:
        await services.aclose()


async def _ping(store: RegistryStore, config: MountConfig) -> None:
    """The registry must answer, or at least one mirror (which can serve it all when warm)."""
    try:
        await store.client.ping()
        return
    except RegfsError as exc:
        failure = exc
    for mirror in store.mirrors:
        try:
            await mirror.ping()
        except RegfsError as exc:
            log.info("mirror %s unreachable: %s", mirror.address, exc)
            continue
        log.warning(
            "registry %s unreachable (%s); serving through mirror %s",
            config.registry,
            failure,
            mirror.address,
        )
        return
    raise MountError(f"registry {config.registry} unreachable: {failure}") from failure


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            # pyfuse3.main may be waiting on a slow operation: give it a moment, then cancel.
            await trio.sleep(1)
            scope.cancel()
            return


def unmount(mountpoint: Path) -> None:
    result = subprocess.run(
        ["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MountError(result.stderr.strip() or f"could not unmount {mountpoint}")
