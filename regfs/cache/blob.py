"""What the cache is told of a blob, and how blocking work on a blob's behalf runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")


class Source(Protocol):
    """Where a blob's bytes come from (registry.blobs.BlobSource)."""

    async def fetch(
        self, start: int, end: int, sink: Callable[[bytes], Awaitable[None]]
    ) -> None: ...


class BlockSink:
    """What a fetch delivers to: bytes in order, to `deliver`. `piece` (the block size) tells
    a source that can receive a body into one buffer to hand over whole blocks, so each
    arrives in one piece and needs no joining."""

    def __init__(self, deliver: Callable[[bytes], Awaitable[None]], piece: int) -> None:
        self.deliver = deliver
        self.piece = piece

    async def __call__(self, data: bytes) -> None:
        await self.deliver(data)


@dataclass(frozen=True)
class BlobRef:
    """What the cache needs to know of a blob."""

    digest: str
    size: int
    registry: str  # registry key: unverified blocks are kept per registry
    source: Source | None  # None: offline, cache only
    # The layer descriptor's annotations: a table of contents is announced there (eStargz,
    # zstd:chunked; regfs.layers.toc).
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __hash__(self) -> int:
        return hash(self.digest)


SMALL_BLOB = 256 * 1024  # and smaller: disk and hashing work runs inline


async def blocking(small: bool, call: Callable[..., T], *args: Any) -> T:
    """Run blocking disk or hashing work: inline for small blobs and documents (configs,
    manifests), where a hop to a worker thread costs more than the work; else in a thread."""
    if small:
        return call(*args)
    return await trio.to_thread.run_sync(call, *args)
