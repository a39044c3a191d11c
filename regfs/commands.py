"""`regfs ls`, `regfs cat`, `regfs cp`: the tree a mount shows, walked without FUSE.

    regfs ls  mcr.microsoft.com/windows/servercore
    regfs cat docker.io/library/alpine:3.20/rootfs/etc/os-release
    regfs cp  mcr.microsoft.com/windows/servercore:ltsc2019-amd64/image.tar .

A path is an image reference as docker spells it, `[registry/]repo[:tag|@digest]`, then a
path inside the image directory (`manifest.json`, `layers/…`, `rootfs/…`); without a tag or
digest it names a repository or namespace (its tags), and a registry alone its catalog.
The tree is a mount's (compose), reached through `open_tree`: the same block and disk cache,
the same digest checks, credentials, registries.conf and certs.d. Nothing here imports
pyfuse3.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

import trio

from .compose import MountConfig, build_all_services, build_services, make_all_tree, make_tree
from .errors import (
    AuthError,
    IntegrityError,
    NotFoundError,
    OfflineError,
    RateLimitedError,
    RegfsError,
)
from .oci.reference import DOCKER_HUB_HOST, is_digest
from .registry.client import Stats
from .targets import (
    DEFAULT_REGISTRY,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Target,
    parse_target,
)
from .vfs.nodes import Dir, File, Node, Symlink, major_minor
from .vfs.table import InodeTable
from .views.rootfs import LazyTreeDir

log = logging.getLogger(__name__)

COMMANDS = ("ls", "cat", "cp")
PIECE = 4 << 20  # one block of the cache per read: the blob's readahead follows
MAX_SYMLINKS = 40  # as Linux's path walk
T = TypeVar("T")


# -- the tree -----------------------------------------------------------------------------


@asynccontextmanager
async def open_tree(
    registry: str, config: MountConfig
) -> AsyncIterator[tuple[InodeTable, tuple[str, ...]]]:
    """The tree holding `registry`, and where the registry's directory is in it.

    The one place commands get a tree from: the tree of a mount of every registry, so the
    registry is configured as that mount configures it (registries.conf: mirrors, insecure,
    blocked; certs.d; --ca-cert and --insecure on top). Every name is admitted: the rules on
    where a name may lead guard a mount shared by many users, not a user's own command
    (blocked registries stay blocked). A registry written with its scheme (`http://…`), or
    given --mirror, is opened as a mount of that one registry opens it."""
    if "://" in registry or config.mirrors:
        single = replace(config, registry=registry)
        services = build_services(single, Stats())
        try:
            async with services.cache.running():
                yield make_tree(services, single.options), ()
        finally:
            await services.aclose()
        return
    every = replace(config, all_registries=True, allow_registries=[".+"])
    all_services = build_all_services(every)
    try:
        async with all_services.cache.running():
            yield make_all_tree(all_services, every.options), (registry,)
    finally:
        await all_services.aclose()


@dataclass
class Found:
    """A node reached by a walk, with the path it was reached by (for messages)."""

    node: Node
    shown: str  # its path in the tree, below the registry's directory
    inside: str  # its path in the image directory ("" for the directory itself)


class Walker:
    """Walks one tree by names as a path lookup would, bounding each step by --timeout
    (none where the node bounds its own wait by progress: a layer index build)."""

    def __init__(
        self, tree: InodeTable, prefix: tuple[str, ...], timeout: float, *, offline: bool = False
    ) -> None:
        self.tree = tree
        self.prefix = prefix
        self.timeout = timeout
        # Offline, "not there" may only mean "not cached": say so with every such error.
        self.offline_note = " (--offline: not in the cache)" if offline else ""

    async def bounded(self, what: str, call: Callable[[], Awaitable[T]], patient: bool) -> T:
        with trio.move_on_after(float("inf") if patient else self.timeout):
            return await call()
        raise CommandError(f"{what}: no answer within {self.timeout:.0f}s")

    async def lookup(self, directory: Dir, name: str) -> Node:
        patient = directory.waits_for_progress
        return await self.bounded(
            name, lambda: self.tree.lookup(directory.inode, name), patient=patient
        )

    async def listdir(self, directory: Dir) -> list[tuple[str, Node]]:
        patient = directory.waits_for_progress
        return await self.bounded(
            directory.name, lambda: self.tree.listdir(directory.inode), patient=patient
        )

    async def resolve(self, target: Target, *, follow: bool) -> Found:
        """The node `target` names; symlinks on the way are followed (the last one only when
        `follow`), an absolute target from the root of the rootfs/ or layers/<digest>/ it is
        in, as a chroot into it would. Errors say which part of the target is missing."""
        repo_parts = len(target.repository.split("/")) if target.repository else 0
        image_at = repo_parts + (1 if target.reference else 0)  # components up to the image
        pending = [*self.prefix, *target.tree_path()]
        stack: list[Node] = [self.tree.root]
        names: list[str] = []
        taken = -len(self.prefix)  # components of target.tree_path() looked up so far
        hops = 0  # symlinks followed: from the first one, positions say nothing of the target
        while pending:
            name = pending.pop(0)
            last = not pending
            if name == "..":  # from a link's target; never above a rootfs/ (a chroot's root)
                if len(stack) > 1 and not isinstance(stack[-1], LazyTreeDir):
                    stack.pop()
                    names.pop()
                continue
            here = stack[-1]
            if not isinstance(here, Dir):
                inside = "/".join(names[len(self.prefix) + image_at :])
                raise CommandError(f"{target.image()}: not a directory: {inside}")
            try:
                node = await self.lookup(here, name)
            except NotFoundError as exc:
                if taken < 0:  # the registry itself: refused, blocked, or nothing answers
                    raise CommandError(f"{target.image()}: {exc}") from None
                if not hops and 0 <= taken < image_at:
                    raise await self._missing(target, taken, repo_parts) from None
                inside = "/".join([*names, name][len(self.prefix) + image_at :])
                raise CommandError(
                    f"{target.image()}: no such file or directory: {inside}{self.offline_note}"
                ) from None
            taken += 1
            if isinstance(node, Symlink) and (follow or not last):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise CommandError(f"{target.image()}: too many levels of symbolic links")
                link = os.fsdecode(node.target)
                if link.startswith("/"):
                    roots = [i for i, n in enumerate(stack) if isinstance(n, LazyTreeDir)]
                    if not roots:
                        raise CommandError(
                            f"{target.image()}: {name} -> {link} leads out of the image"
                        )
                    del stack[roots[-1] + 1 :]
                    del names[roots[-1] :]
                pending[:0] = [p for p in link.split("/") if p and p != "."]
                continue
            stack.append(node)
            names.append(name)
        inside = "/".join(names[len(self.prefix) + image_at :])
        return Found(stack[-1], self._shown(names), inside)

    def _shown(self, names: list[str]) -> str:
        return "/".join(names[len(self.prefix) :])

    async def _missing(self, target: Target, position: int, repo_parts: int) -> CommandError:
        """Why the component at `position` was not found: no repository, tag or manifest."""
        what = await self._what_is_missing(target, position, repo_parts)
        return CommandError(f"{target.image()}: {what}{self.offline_note}")

    async def _what_is_missing(self, target: Target, position: int, repo_parts: int) -> str:
        repo = f"{target.host}/{target.repository}".replace(DOCKER_HUB_HOST, "docker.io")
        if position < repo_parts:
            return f"no such repository {repo}"
        if target.digest:
            return f"no such manifest {target.digest} in {repo}"
        # A tag: say so only if the repository answers (its tag list), else that it is missing.
        try:
            repo_dir = await self.resolve(replace(target, tag=None, path=()), follow=True)
            assert isinstance(repo_dir.node, Dir)
            tags = [n for n, _ in await self.listdir(repo_dir.node) if not is_digest(n)]
        except (NotFoundError, CommandError):
            return f"no such repository {repo}"
        more = ", …" if len(tags) > 10 else ""
        known = f" (tags: {', '.join(tags[:10])}{more})" if tags else ""
        return f"no such tag {target.tag} in {repo}{known}"


# -- ls and cat ---------------------------------------------------------------------------


def long_line(name: str, node: Node) -> str:
    """`ls -l` of one node: mode, links, owner, size, mtime, name, a symlink's target."""
    attrs = node.attrs
    when = attrs.mtime_ns / 1e9 if attrs.mtime_ns is not None else attrs.mtime
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    except (OverflowError, OSError, ValueError):  # a time the platform cannot show
        stamp = f"{when:>16.0f}"
    line = (
        f"{stat.filemode(attrs.st_mode)} {attrs.nlink:>3} {attrs.uid:>5} {attrs.gid:>5} "
        f"{attrs.size:>12} {stamp} {name}"
    )
    if isinstance(node, Symlink):
        line += f" -> {os.fsdecode(node.target)}"
    if attrs.rdev and stat.S_ISCHR(attrs.st_mode) | stat.S_ISBLK(attrs.st_mode):
        line += f" ({device_numbers(attrs.rdev)})"
    return line


def device_numbers(rdev: int) -> str:
    """`major,minor` of a device node."""
    major, minor = major_minor(rdev)
    return f"{major},{minor}"


async def ls(
    walker: Walker, target: Target, out: TextIO, *, long: bool, all_names: bool, header: str = ""
) -> None:
    """`header`: written first (ls names each of several targets, a blank line between)."""
    found = await walker.resolve(target, follow=not long)
    node = found.node
    out.write(header)
    if not isinstance(node, Dir):
        name = target.path[-1] if target.path else found.shown
        out.write((long_line(name, node) if long else name) + "\n")
        return
    listing = await walker.listdir(node)
    if not target.repository and not [n for n, _ in listing if not n.startswith(".")]:
        # Docker Hub, GHCR and others refuse the catalog to anyone: nothing to list.
        note = f"{target.image()}: no repositories listed (no catalog here? name a repository)"
        print(f"regfs ls: {note}", file=sys.stderr)
    for name, child in listing:
        if name.startswith(".") and not all_names:
            continue
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        out.write((long_line(shown, child) if long else shown) + "\n")


async def open_file(walker: Walker, target: Target) -> tuple[File, int]:
    """The file a target names (symlinks followed), opened: (node, handle number)."""
    found = await walker.resolve(target, follow=True)
    if not isinstance(found.node, File):
        what = "a directory" if isinstance(found.node, Dir) else "not a regular file"
        raise CommandError(f"{target.image()}: {found.inside or found.shown} is {what}")
    fh, node = await walker.bounded(
        target.text, lambda: walker.tree.open(found.node.inode), patient=False
    )
    return node, fh


async def copy_out(
    walker: Walker,
    node: File,
    fh: int,
    write: Callable[[bytes | memoryview], object],
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Every byte of an open file, in order, to `write`; the count. Short only at its end: a
    file whose size is not known before it is read (stats) ends at the first empty read."""
    offset = 0
    try:
        while True:
            data = await walker.bounded(
                node.name, partial(walker.tree.read, fh, offset, PIECE), patient=False
            )
            if not data:
                break
            write(data)
            offset += len(data)
            progress(len(data))
    finally:
        walker.tree.release(fh)
    if not node.direct_io and offset != node.size:
        raise CommandError(f"{node.name}: read {offset} of {node.size} bytes")
    return offset


async def cat(walker: Walker, target: Target, out: BinaryIO) -> None:
    node, fh = await open_file(walker, target)
    await copy_out(walker, node, fh, out.write)
    out.flush()


# -- running ------------------------------------------------------------------------------


def explain(target: Target | None, exc: BaseException) -> str:
    """One line for an error, naming the reference and what was wrong."""
    where = f"{target.image()}: " if target is not None else ""
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, RateLimitedError):
        return f"{where}rate-limited by the registry: {exc}"
    if isinstance(exc, AuthError):
        return f"{where}not authorised: {exc}"
    if isinstance(exc, IntegrityError):
        return f"{where}digest mismatch: {exc}"
    if isinstance(exc, OfflineError):
        return f"{where}not in the cache (--offline): {exc}"
    if isinstance(exc, NotFoundError):
        return f"{where}not found: {exc}"
    return f"{where}{exc}"


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, CommandError):
        return exc.code
    return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_fetch_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """ls, cat and cp as subcommands, each with the mount's fetch-shaping options."""
    tail = "\nexit codes: 0 ok, 1 failure (named on stderr), 2 usage error, 130 interrupted"
    ref = "[REGISTRY/]REPO[:TAG|@DIGEST][/PATH]"
    p = sub.add_parser(
        "ls",
        help="list a registry, repository or image directory without mounting",
        description=f"List what a mount would show at {ref}:\na registry's repositories, "
        "a repository's tags, an image directory or anything inside it.",
        epilog="examples:\n  regfs ls mcr.microsoft.com/windows/servercore\n"
        "  regfs ls -l mcr.microsoft.com/windows/servercore:ltsc2019-amd64/layers\n"
        "  regfs ls -l alpine:3.20/rootfs/etc" + tail,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-l", dest="long", action="store_true", help="mode, size, mtime, link targets")
    p.add_argument("-a", dest="all_names", action="store_true", help="names starting with .")
    p.add_argument("targets", nargs="+", metavar="PATH")
    add_fetch_options(p)
    p = sub.add_parser(
        "cat",
        help="write a file of an image to stdout without mounting",
        epilog="examples:\n  regfs cat docker.io/library/alpine:3.20/rootfs/etc/os-release\n"
        "  regfs cat mcr.microsoft.com/dotnet/runtime:8.0/manifest.json | jq ." + tail,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="+", metavar="PATH")
    add_fetch_options(p)
    p = sub.add_parser(
        "cp",
        help="copy files of an image out without mounting (image.tar, rootfs/…)",
        description="Copy SOURCE (a file, or with -r a directory) to DEST, or into DEST when it\n"
        "is a directory. A copy is written under a temporary name and renamed once every\n"
        "byte was read and checked: a failed copy leaves nothing at DEST.",
        epilog="examples:\n"
        "  regfs cp mcr.microsoft.com/windows/servercore:ltsc2019-amd64/image.tar .\n"
        "  regfs cp -r ghcr.io/acme/tool:v1/rootfs/usr/share/tool ./tool" + tail,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-r", "-R", dest="recursive", action="store_true", help="copy directories")
    p.add_argument("-q", dest="quiet", action="store_true", help="no progress display")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    add_fetch_options(p)
    for name in COMMANDS:  # what cli.config_from reads of a mount's arguments
        sub.choices[name].set_defaults(
            mountpoint=Path("."), registry=DEFAULT_REGISTRY, fuse_options=[], foreground=False
        )


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("regfs: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # The command names what failed itself; the log lines behind it only with --debug.
    root.setLevel(logging.DEBUG if debug else logging.CRITICAL)
    for noisy in ("httpx", "httpcore", "hpack"):  # full URLs: signed ones carry credentials
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace, config: MountConfig) -> int:
    """One of COMMANDS; the exit code. Errors are named on stderr, one line each."""
    setup_logging(args.debug)
    try:
        if args.command == "cp":
            from .copy import copy_command  # beside this module; cp's own planning and writing

            return trio.run(copy_command, args, config, sys.stderr)
        targets = [parse_target(t) for t in args.targets]
        return trio.run(_read_command, args, config, targets)
    except BaseException as raised:  # trio's nurseries hand errors over in groups
        exc = _reason(raised)
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if isinstance(exc, BrokenPipeError):  # `regfs cat … | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILURE
        if isinstance(exc, RegfsError):
            print(f"regfs {args.command}: {explain(None, exc)}", file=sys.stderr)
            return exit_code(exc)
        raise


def _reason(raised: BaseException) -> BaseException:
    """What ended a command: Ctrl-C first, then a closed stdout, then a regfs error, out of
    the exception groups trio wraps them in (the error itself where there is none)."""
    leaves = [raised]
    while any(isinstance(e, BaseExceptionGroup) for e in leaves):
        leaves = [
            leaf
            for e in leaves
            for leaf in (e.exceptions if isinstance(e, BaseExceptionGroup) else (e,))
        ]
    for kind in (KeyboardInterrupt, BrokenPipeError, RegfsError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return raised


async def _read_command(
    args: argparse.Namespace, config: MountConfig, targets: Sequence[Target]
) -> int:
    status = EXIT_OK
    shown = 0
    for registry, group in by_registry(targets):
        async with open_tree(registry, config) as (tree, prefix):
            walker = Walker(tree, prefix, config.op_timeout, offline=config.options.offline)
            for target in group:
                try:
                    if args.command == "ls":
                        several = len(targets) > 1
                        header = f"{chr(10) if shown else ''}{target.text}:\n" if several else ""
                        shown += 1
                        await ls(
                            walker,
                            target,
                            sys.stdout,
                            long=args.long,
                            all_names=args.all_names,
                            header=header,
                        )
                    else:
                        await cat(walker, target, sys.stdout.buffer)
                except RegfsError as exc:
                    print(f"regfs {args.command}: {explain(target, exc)}", file=sys.stderr)
                    status = max(status, exit_code(exc))
    return status


def by_registry(targets: Sequence[Target]) -> list[tuple[str, list[Target]]]:
    """Runs of targets on one registry, in the order given (cat's output keeps it): one tree
    per run."""
    return [(registry, list(run)) for registry, run in groupby(targets, lambda t: t.registry)]
