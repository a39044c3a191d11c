"""`regfs cp [-r] SOURCE... DEST`: files and trees of the registry tree copied out.

Whatever is copied is first written under a temporary name beside its destination
(`.<name>.regfs-<random>`), and renamed to it only once every byte was read without error:
the reads go through the block cache, which checks each blob against its digest (and each
span of a layer inside `rootfs/`), so a server that sends other bytes fails the copy and
leaves nothing at the destination. With -r, symlinks stay symlinks, hardlinks stay one
inode, modes and mtimes are kept (setuid/setgid and owners only as root), xattrs where the
platform takes them, fifos are made, and device nodes are skipped with a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import trio

from .commands import Walker, by_registry, copy_out, device_numbers, exit_code, explain, open_tree
from .compose import MountConfig
from .errors import RegfsError
from .prefetch import Display, Item, LiveDisplay, Prefetch
from .targets import EXIT_OK, EXIT_USAGE, CommandError, Target, parse_target
from .vfs.nodes import Dir, File, Kind, Node, Symlink

FILES_AT_ONCE = 4  # files of a tree read at the same time: one waiting on a span, others go
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# A hardlink to a symlink is to the link itself, where the platform can say so.
LINK_AS_IS = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}


@dataclass
class Planned:
    """One node of a tree to copy, at `relative` (bytes, below the copy's top)."""

    relative: bytes
    node: Node
    link_to: bytes | None = None  # a second name of a hardlinked node: link to this one


@dataclass
class Copy:
    """A command's copies: progress over all of them, warnings said once each."""

    err: TextIO
    display: Display | None
    names: dict[int, str]  # the display's names of items (prefetch's LiveDisplay)
    job: Prefetch = field(default_factory=lambda: Prefetch([], 1))
    warned: set[str] = field(default_factory=set)

    def warn(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            self.err.write(f"regfs cp: warning: {message}\n")
            self.err.flush()

    def start(self, name: str, size: int) -> Item:
        item = Item(Path(name), size, started=time.monotonic())
        self.job.items.append(item)
        self.names[id(item)] = name
        return item

    def finish(self, item: Item, error: str | None = None) -> None:
        item.finished, item.error = time.monotonic(), error
        if self.display is not None:
            self.display.finished(item)

    async def show(self) -> None:
        """Redraws the display four times a second while copies run."""
        while self.display is not None:
            self.display.update(self.job, time.monotonic())
            await trio.sleep(0.25)


async def copy_command(args: argparse.Namespace, config: MountConfig, err: TextIO) -> int:
    targets = [parse_target(source) for source in args.sources]
    dest = Path(args.dest)
    if len(targets) > 1 and not dest.is_dir():
        raise CommandError(f"{dest} is not a directory (several sources)", EXIT_USAGE)
    names: dict[int, str] = {}
    live = err.isatty() and not args.quiet  # progress only for someone watching
    run = Copy(err, LiveDisplay(err, names) if live else None, names)
    failures: list[tuple[str, int]] = []  # said once the display is gone, not across it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.show)
        try:
            for registry, group in by_registry(targets):
                async with open_tree(registry, config) as (tree, prefix):
                    walker = Walker(tree, prefix, config.op_timeout, offline=config.options.offline)
                    for target in group:
                        try:
                            await copy_one(walker, target, dest, args.recursive, run)
                        except RegfsError as exc:
                            failures.append((explain(target, exc), exit_code(exc)))
        finally:
            if run.display is not None:
                run.display.update(run.job, time.monotonic(), force=True)
                run.display.close()
            run.display = None
            nursery.cancel_scope.cancel()
    for message, _ in failures:
        err.write(f"regfs cp: {message}\n")
    return max((code for _, code in failures), default=EXIT_OK)


def _temporary(final: Path) -> Path:
    return final.parent / f".{final.name}.regfs-{secrets.token_hex(4)}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def copy_one(walker: Walker, target: Target, dest: Path, recursive: bool, run: Copy) -> None:
    """One SOURCE to DEST (or into DEST, a directory), through a temporary name."""
    found = await walker.resolve(target, follow=not recursive)
    node = found.node
    name = found.shown.rsplit("/", 1)[-1] or target.host
    final = dest / name if dest.is_dir() else dest
    if isinstance(node, Dir) and not recursive:
        raise CommandError(
            f"{target.image()}: {found.inside or found.shown} is a directory (use cp -r)"
        )
    if isinstance(node, Dir) and (final.exists() or final.is_symlink()):
        raise CommandError(f"{target.image()}: {final} exists; not copying a directory over it")
    temporary = _temporary(final)
    try:
        if isinstance(node, Dir):
            await copy_tree(walker, node, temporary, run, found.shown)
        else:
            item = run.start(found.shown, node.size if isinstance(node, File) else 0)
            try:
                await copy_node(walker, node, os.fsencode(temporary), run, item, found.shown)
            except RegfsError as exc:
                run.finish(item, str(exc))
                raise
            run.finish(item)
        if os.path.lexists(temporary):  # not for a skipped device node
            os.replace(temporary, final)
    except OSError as exc:  # the destination's side: a full disk, no permission, ...
        _remove(temporary)
        raise CommandError(f"{target.image()}: {final}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(temporary)
        raise


async def copy_node(
    walker: Walker, node: Node, path: bytes, run: Copy, item: Item, shown: str
) -> None:
    """One non-directory node made at `path`, with its attributes."""
    if isinstance(node, File):
        await copy_file(walker, node, path, item)
    elif isinstance(node, Symlink):
        os.symlink(node.target, path)
    elif node.attrs.kind is Kind.FIFO and hasattr(os, "mkfifo"):
        os.mkfifo(path, 0o600)
    else:
        kind = "char" if node.attrs.kind is Kind.CHAR_DEVICE else "block"
        run.warn(f"skipped device node {shown} ({kind} {device_numbers(node.attrs.rdev)})")
        return
    apply_attrs(path, node, run)


async def copy_file(walker: Walker, node: File, path: bytes, item: Item) -> None:
    fh, opened = await walker.bounded(
        node.name, lambda: walker.tree.open(node.inode), patient=False
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:

            def done(n: int) -> None:
                item.done += n

            await copy_out(walker, opened, fh, out.write, done)
    except BaseException:
        os.unlink(path)
        raise


def apply_attrs(path: bytes, node: Node, run: Copy) -> None:
    """Owner (as root), xattrs, mode, mtime of `node` on `path`, as far as the platform
    lets: what it refuses is a warning, never a failed copy."""
    attrs = node.attrs
    link = isinstance(node, Symlink)
    if AS_ROOT and hasattr(os, "lchown"):
        try:
            os.lchown(path, attrs.uid, attrs.gid)
        except OSError as exc:
            run.warn(f"owners not kept: {exc.strerror}")
    if node.xattrs and hasattr(os, "setxattr"):
        for key, value in node.xattrs.items():
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as exc:
                run.warn(f"xattr {key} not kept: {exc.strerror}")
    if not link:
        keep = 0o7777 if AS_ROOT else 0o1777  # setuid/setgid only with the owner kept
        os.chmod(path, stat.S_IMODE(attrs.st_mode) & keep)
    ns = attrs.mtime_ns if attrs.mtime_ns is not None else int(attrs.mtime * 1e9)
    if not link or os.utime in os.supports_follow_symlinks:
        os.utime(path, ns=(ns, ns), follow_symlinks=not link)


async def plan_tree(walker: Walker, top: Dir) -> list[Planned]:
    """Every node below `top`, a directory before what it holds; the second and later names
    of a hardlinked node point at its first."""
    planned: list[Planned] = []
    first_name: dict[int, bytes] = {}

    async def visit(directory: Dir, relative: bytes) -> None:
        for name, child in await walker.listdir(directory):
            below = os.path.join(relative, os.fsencode(name)) if relative else os.fsencode(name)
            if isinstance(child, Dir):
                planned.append(Planned(below, child))
                await visit(child, below)
                continue
            earlier = first_name.get(id(child)) if child.attrs.nlink > 1 else None
            planned.append(Planned(below, child, link_to=earlier))
            if earlier is None:
                first_name[id(child)] = below

    await visit(top, b"")
    return planned


async def copy_tree(walker: Walker, top: Dir, root: Path, run: Copy, shown: str) -> None:
    """The tree below `top` made at `root`: directories first (0700 while filled), files a
    few at a time, then hardlinks, then each directory's own attributes, deepest first."""
    planned = await plan_tree(walker, top)
    total = sum(p.node.size for p in planned if isinstance(p.node, File) and p.link_to is None)
    item = run.start(shown, total)
    base = os.fsencode(root)
    os.mkdir(base, 0o700)
    failure: list[RegfsError] = []
    try:
        for p in planned:
            if isinstance(p.node, Dir):
                os.mkdir(os.path.join(base, p.relative), 0o700)
        limiter = trio.CapacityLimiter(FILES_AT_ONCE)
        async with trio.open_nursery() as nursery:

            async def one(p: Planned) -> None:
                async with limiter:
                    try:
                        where = os.path.join(base, p.relative)
                        await copy_node(walker, p.node, where, run, item, _show(shown, p))
                    except RegfsError as exc:  # the first failure ends the copy
                        failure.append(exc)
                        nursery.cancel_scope.cancel()

            for p in planned:
                if not isinstance(p.node, Dir) and p.link_to is None:
                    nursery.start_soon(one, p)
        if failure:
            raise failure[0]
        for p in planned:
            if p.link_to is not None and os.path.lexists(os.path.join(base, p.link_to)):
                os.link(os.path.join(base, p.link_to), os.path.join(base, p.relative), **LINK_AS_IS)
        for p in reversed(planned):
            if isinstance(p.node, Dir):
                apply_attrs(os.path.join(base, p.relative), p.node, run)
        apply_attrs(base, top, run)
    except RegfsError as exc:
        run.finish(item, str(exc))
        raise
    run.finish(item)


def _show(top: str, planned: Planned) -> str:
    return f"{top}/{planned.relative.decode('utf-8', 'backslashreplace')}"
