"""The top of a mount of every registry: one directory per registry, the mount's control dir.

    <root>/<registry>/<namespace>/…/<repo>/<tag>/ …     beneath each: a single-registry tree

The root lists the registries the mount knows: those configured (registries.conf, not
blocked) and those used since the mount started. Any other name is looked up on demand, and
only `open_registry` (given by compose) decides what it is: it checks who may be connected
to before anything connects, probes `/v2/` the first time, and gives the registry's tree (a
`RootDir`) or None. A name that is not a registry is asked about again only after
`retry_after`, so a file manager's probes of `autorun.inf` cost one lookup, not one each.
A short name registries.conf aliases (`alpine` = `docker.io/library/alpine`) is a symlink to
that repository's directory (not listed: shortnames.conf alone has hundreds).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from ..errors import NotFoundError
from ..vfs.nodes import Dir, Node, Symlink

# What compose gives: the tree of a registry by the name a path uses for it (None: there is
# no registry there; RefusedRegistryError, a NotFoundError: it may not be connected to).
OpenRegistry = Callable[[str], Awaitable[Dir | None]]


class RegistryDir(Dir):
    """`<root>/<registry>/`: the registry's own tree, opened on first use."""

    def __init__(self, name: str, root: RegistriesRoot) -> None:
        super().__init__(name, root.started, immutable=False)
        self.root = root

    async def tree(self) -> Dir:
        tree = await self.root.open(self.name)
        if tree is None:
            raise NotFoundError(f"{self.name}: no registry answers there")
        return tree

    async def entries(self) -> Mapping[str, Node]:
        return await (await self.tree()).entries()

    async def lookup(self, name: str) -> Node | None:
        return await (await self.tree()).lookup(name)


class RegistriesRoot(Dir):
    """Every registry: the known ones listed, any other admitted name reachable by name."""

    def __init__(
        self,
        *,
        listed: Callable[[], Sequence[str]],
        open_registry: OpenRegistry,
        control: Node | None = None,
        started: float | None = None,
        retry_after: float = 60.0,
        alias: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        started = time.time() if started is None else started
        super().__init__("", started, immutable=False)
        self.started = started
        self.listed = listed
        self.open_registry = open_registry
        self.control = control
        self.retry_after = retry_after
        self.alias = alias
        self._dirs: dict[str, RegistryDir] = {}
        self._links: dict[str, Symlink] = {}  # aliases looked up, one inode each
        self._trees: dict[str, Dir] = {}
        self._absent: dict[str, tuple[float, NotFoundError | None]] = {}  # name -> (when, why)
        self._opening: dict[str, trio.Lock] = {}  # one probe of a name at a time

    async def entries(self) -> Mapping[str, Node]:
        found: dict[str, Node] = {} if self.control is None else {self.control.name: self.control}
        for name in self.listed():
            found.setdefault(name, self._dir(name))
        return found

    async def lookup(self, name: str) -> Node | None:
        if self.control is not None and name == self.control.name:
            return self.control
        target = self.alias(name)
        if target is not None:
            link = self._links.get(name)
            if link is None or link.target != target.encode():
                link = self._links[name] = Symlink(name, target.encode())
            return link
        if await self.open(name) is None:
            return None
        return self._dir(name)

    async def open(self, name: str) -> Dir | None:
        """The registry's tree, opened (admission, probe) once; None: no registry there,
        for `retry_after`. A refusal is raised each time, from the first answer."""
        tree = self._trees.get(name)
        if tree is not None:
            return tree
        lock = self._opening.setdefault(name, trio.Lock())
        async with lock:  # parallel lookups of a new name: one probe
            tree = self._trees.get(name)
            if tree is not None:
                return tree
            absent = self._absent.get(name)
            if absent is not None and time.monotonic() - absent[0] < self.retry_after:
                if absent[1] is not None:
                    raise absent[1]
                return None
            try:
                tree = await self.open_registry(name)
            except NotFoundError as exc:
                self._absent[name] = (time.monotonic(), exc)
                raise
            if tree is None:
                self._absent[name] = (time.monotonic(), None)
                return None
            self._absent.pop(name, None)
            self._trees[name] = tree
            return tree

    def _dir(self, name: str) -> RegistryDir:
        node = self._dirs.get(name)
        if node is None:
            node = self._dirs[name] = RegistryDir(name, self)
        return node
