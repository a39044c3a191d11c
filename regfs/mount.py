"""The mount's lifecycle: checks, detaching, the trio loop, signals, unmount. The tree it
serves is wired in compose.py."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from .compose import (
    AllServices,
    MountConfig,
    Services,
    build_all_services,
    build_services,
    make_all_tree,
    make_tree,
)
from .dirs import state_dir
from .errors import RegfsError
from .registry.client import Stats
from .registry.http import tune_read_size
from .registry.registries_conf import RegistriesConf
from .store import RegistryStore
from .vfs.fuse import Operations
from .vfs.kernel import HandshakeError, captured_stderr, when_serving
from .vfs.mountinfo import DEAD_CONNECTION, daemon_answers, mount_path, mounts_at

log = logging.getLogger(__name__)

READ_AHEAD_KB = 4096  # lets the kernel send 1 MiB READs, several ahead, for sequential readers


class MountError(RegfsError):
    """A mount could not start (bad mountpoint, no /dev/fuse, registry unreachable)."""


def log_path(mountpoint: Path) -> Path:
    name = str(mountpoint.resolve()).strip("/").replace("/", "_") or "root"
    return state_dir() / f"{name}.log"


# Whatever regfs mounts says so in /proc/self/mountinfo (subtype=regfs): how a dead regfs
# mount is told apart from someone else's mount on the same path.
REGFS_FSTYPE = "fuse.regfs"


def clean_dead_mount(path: Path) -> int:
    """Unmount dead regfs mounts on `path` (left by a killed process), saying how many; refuse
    a live or hung one. Other filesystems on the path are left alone (check_mountpoint
    refuses them)."""
    target = mount_path(path)
    for cleaned in range(16):  # dead mounts may be stacked, one per killed process
        entries = mounts_at(target)
        if not entries or entries[-1].fstype != REGFS_FSTYPE:
            return cleaned
        answers = daemon_answers(target)
        if answers:
            raise MountError(f"{path} is already a regfs mount (regfs umount {path} first)")
        if answers is None:
            raise MountError(
                f"{path} is a regfs mount whose process does not answer "
                f"(stop it, or fusermount3 -u -z {path})"
            )
        result = subprocess.run(
            ["fusermount3", "-u", "-z", target], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or len(mounts_at(target)) >= len(entries):
            reason = result.stderr.strip() or "it is still mounted"
            raise MountError(f"{path}: could not clean up a dead regfs mount: {reason}")
    raise MountError(f"{path}: too many dead regfs mounts stacked on it")


def check_mountpoint(path: Path) -> int:
    """A usable mountpoint; dead regfs mounts left by killed processes are cleaned up (their
    number is returned, for the log)."""
    cleaned = clean_dead_mount(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise MountError(f"mountpoint {path} does not exist") from None
        if exc.errno in DEAD_CONNECTION:  # dead, but not ours: its owner should clean it
            raise MountError(
                f"{path} is a dead mount of another filesystem (fusermount3 -u {path})"
            ) from None
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mountpoint")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module or install fuse3")
    return cleaned


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
    cleaned = check_mountpoint(config.mountpoint)
    if config.all_registries:
        RegistriesConf.load()  # a broken registries.conf: a one-line error (exit 2), here

    def log_cleaned() -> None:  # once logging goes where this mount's log goes
        if cleaned:
            log.info("cleaned up %d dead regfs mount(s) at %s", cleaned, config.mountpoint)

    if config.foreground:
        setup_logging(config, to_file=False)
        log_cleaned()
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
        log_cleaned()

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


def mount_options(fuse_options: list[str], *, as_root: bool) -> set[str]:
    """What the kernel is asked for: read-only and, unless `-o suid` / `-o dev` lift them,
    nosuid,nodev: an image's setuid binaries and device nodes must not become the host's."""
    options = set(pyfuse3.default_options) | {"fsname=regfs", "subtype=regfs", "ro"}
    options |= {"nosuid", "nodev"} | ({"allow_other"} if as_root else set())
    for extra in fuse_options:
        options.update(o for o in extra.split(",") if o)
    for lifted in ("suid", "dev"):
        if lifted in options:  # both in the set: which one libfuse takes would be chance
            options.discard(f"no{lifted}")
    return options


def mount_device(mountpoint: Path) -> str | None:
    """major:minor of the filesystem mounted at `mountpoint`, from /proc/self/mountinfo.

    Not os.stat: a stat of our own mountpoint from the thread that serves it deadlocks.
    """
    entries = mounts_at(mountpoint)
    return entries[-1].device if entries else None  # the last (topmost) mount wins


def tune_malloc() -> None:
    """One malloc arena, not one per worker thread: each arena holds on to the multi-megabyte
    blocks freed in it, which pushed RSS past --memory-cache + 100 MiB. Blocks are made in
    worker threads (bodies are received there) and freed on the trio thread (the memory LRU
    evicts them): with two arenas the peak of a cold read was 373-377 MiB, with one 344-348,
    at the same rate. Only M_ARENA_MAX: any
    threshold setting stops glibc raising its mmap threshold, and then every 4 MiB block is
    a fresh mapping, page-faulted in (the cold read lost 40%, measured with scripts/bench)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: its defaults stay
    m_arena_max = -8
    libc.mallopt(m_arena_max, 1)


async def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    tune_malloc()
    tune_read_size()
    services: Services | AllServices
    read_sizes: Counter[int] = Counter()
    if config.all_registries:
        # No registry to ping: each is looked up (admission, then /v2/) when a path names it.
        services = build_all_services(config)
        tree = make_all_tree(services, config.options, read_sizes)
    else:
        services = build_services(config, Stats())
    try:
        if isinstance(services, Services):
            if not config.options.offline:
                await _ping(services.store, config)
            tree = make_tree(services, config.options, read_sizes)
        ops = Operations(
            tree,
            op_timeout=config.op_timeout,
            tag_ttl=config.options.tag_ttl,
            read_sizes=read_sizes,
        )
        options = mount_options(config.fuse_options, as_root=os.getuid() == 0)
        with ExitStack() as handshake_output:
            said = handshake_output.enter_context(captured_stderr())
            pyfuse3.init(ops, str(config.mountpoint), options)
            try:
                start = _Start()
                async with services.cache.running(), trio.open_nursery() as nursery:
                    nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
                    nursery.start_soon(
                        _ready_when_serving, config, ops, start, handshake_output.close, ready
                    )
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
            finally:
                pyfuse3.close(unmount=True)
                log.info("unmounted %s", config.mountpoint)
        if not start.ready:
            # libfuse's own reason (a refused INIT) goes to stderr only: captured above.
            libfuse = [line.removeprefix("fuse: ").removeprefix("error: ") for line in said]
            reason = start.failure or "the kernel's FUSE handshake failed" + "".join(
                f": {line}" for line in libfuse[-1:]
            )
            raise MountError(f"{config.mountpoint}: {reason}")
    finally:
        await services.aclose()


@dataclass
class _Start:
    """How the mount's start went, as the task waiting for the handshake saw it."""

    ready: bool = False
    failure: str | None = None


async def _ready_when_serving(
    config: MountConfig,
    ops: Operations,
    start: _Start,
    end_capture: Callable[[], None],
    ready: Callable[[], None],
) -> None:
    """Ready means INIT answered and the root answering; readahead is raised after INIT,
    whose reply would lower it again (vfs.kernel). A failed start stops the mount."""
    try:
        serving = await when_serving(
            config.mountpoint, ops.initialized, device_of=mount_device, read_ahead_kb=READ_AHEAD_KB
        )
    except HandshakeError as exc:
        start.failure = str(exc)
        pyfuse3.terminate()
        return
    finally:
        end_capture()
    start.ready = True
    registry = "every registry" if config.all_registries else config.registry
    where = (registry, config.mountpoint, serving.device, serving.read_ahead_kb)
    log.info("mounted %s at %s (device %s, read_ahead_kb %s)", *where)
    ready()


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
