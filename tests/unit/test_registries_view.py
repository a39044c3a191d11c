"""regfs.views.registries: the root of a mount of every registry, over a fake opener."""

from __future__ import annotations

import pytest
import trio

from regfs.errors import NotFoundError, RefusedRegistryError
from regfs.vfs.nodes import Dir, StaticDir, Symlink
from regfs.views.registries import RegistriesRoot


class Opener:
    """Decides what a name is, and counts how often it was asked (each ask is a probe)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.trees = {"a.example": StaticDir("", [StaticDir("team", [])])}
        self.refused = {"blocked.example"}

    async def __call__(self, name: str) -> Dir | None:
        self.asked.append(name)
        await trio.lowlevel.checkpoint()
        if name in self.refused:
            raise RefusedRegistryError(f"registry {name} refused: blocked", reason="blocked")
        return self.trees.get(name)


def root(opener: Opener, listed: list[str] | None = None) -> RegistriesRoot:
    control = StaticDir(".regfs", [])
    return RegistriesRoot(
        listed=lambda: listed or [], open_registry=opener, control=control, retry_after=60
    )


async def test_the_root_lists_what_it_is_told_and_probes_nothing() -> None:
    opener = Opener()
    tree = root(opener, ["a.example", "b.example"])
    assert sorted(await tree.entries()) == [".regfs", "a.example", "b.example"]
    assert opener.asked == []


async def test_a_name_is_opened_once_and_is_the_registrys_tree() -> None:
    opener = Opener()
    tree = root(opener)
    node = await tree.lookup("a.example")
    assert isinstance(node, Dir) and node.name == "a.example"
    assert list(await node.entries()) == ["team"]
    assert await node.lookup("team") is not None
    assert await tree.lookup("a.example") is node
    assert opener.asked == ["a.example"]


async def test_parallel_lookups_of_a_new_name_probe_once() -> None:
    opener = Opener()
    tree = root(opener)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(tree.lookup, "a.example")
    assert opener.asked == ["a.example"]


async def test_no_registry_is_absent_and_not_asked_again_soon() -> None:
    opener = Opener()
    tree = root(opener)
    assert await tree.lookup("autorun.inf") is None
    assert await tree.lookup("autorun.inf") is None
    assert opener.asked == ["autorun.inf"]


async def test_a_refusal_is_enoent_each_time_from_one_decision() -> None:
    opener = Opener()
    tree = root(opener)
    for _ in range(3):
        with pytest.raises(NotFoundError):
            await tree.lookup("blocked.example")
    assert opener.asked == ["blocked.example"]


async def test_a_listed_registry_that_does_not_answer_is_enoent_inside() -> None:
    opener = Opener()
    tree = root(opener, ["gone.example"])
    node = (await tree.entries())["gone.example"]
    assert isinstance(node, Dir)
    with pytest.raises(NotFoundError):
        await node.entries()


async def test_an_alias_is_a_link_and_opens_nothing() -> None:
    opener = Opener()
    aliases = {"alpine": "docker.io/library/alpine"}
    tree = RegistriesRoot(listed=list, open_registry=opener, alias=aliases.get)
    link = await tree.lookup("alpine")
    assert isinstance(link, Symlink) and link.target == b"docker.io/library/alpine"
    assert await tree.lookup("alpine") is link  # one inode
    assert "alpine" not in await tree.entries()
    assert opener.asked == []
