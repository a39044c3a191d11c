"""What the block cache keeps besides blocks: its counters, and the verification of each blob
as its blocks go by."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import trio

from .blob import BlobRef
from .disk import DiskCache


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    verified: int = 0
    failed: int = 0
    purges: int = 0
    readahead_stopped: int = 0  # readahead requests cancelled when their readers closed


@dataclass
class BlobState:
    """Verification of one attempt at a blob as its blocks go by in order."""

    algorithm: str
    hasher: hashlib._Hash
    # Which attempt: a purge after a digest mismatch, or a verified blob that lost blocks and
    # is checked again, begins the next generation with a fresh state.
    generation: int = 0
    hashed_blocks: int = 0
    verified: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)
    background: int = 0  # readahead requests in flight
    landed: bool = False  # a block landed while the hasher held the lock: look again


# A block in memory or on its way: (digest, index, registry). Until its blob's digest has
# matched, what one registry served stays that registry's (as on disk, pending/<registry>/):
# a reader of another registry neither gets those bytes nor feeds them to its own hasher.
BlockKey = tuple[str, int, str]


def block_key(blob: BlobRef, index: int) -> BlockKey:
    return (blob.digest, index, blob.registry)


class BlobStates:
    """The verification state of each blob as each registry serves it, and its failures."""

    def __init__(self, disk: DiskCache | None) -> None:
        self.disk = disk
        self._states: dict[str, dict[str, BlobState]] = {}  # digest -> registry -> state
        self._failures: dict[tuple[str, str], int] = {}  # failed verifications

    def of(self, blob: BlobRef) -> BlobState:
        by_registry = self._states.setdefault(blob.digest, {})
        state = by_registry.get(blob.registry)
        if state is None:
            algorithm = blob.digest.split(":", 1)[0]
            state = BlobState(algorithm, hashlib.new(algorithm))
            state.verified = self.disk is not None and self.disk.is_verified(blob.digest)
            by_registry[blob.registry] = state
        return state

    def is_verified(self, digest: str) -> bool:
        """Verified through any registry: its bytes are then every registry's."""
        states = self._states.get(digest)
        if states:
            return any(s.verified for s in states.values())
        return self.disk is not None and self.disk.is_verified(digest)

    def next_generation(self, digest: str, registry: str | None) -> None:
        """Begin a new attempt at the blob (from `registry`, None: every registry): not
        verified, hashed from its first block again."""
        by_registry = self._states.get(digest, {})
        for name, state in list(by_registry.items()):
            if registry in (None, name):
                algorithm = state.algorithm
                by_registry[name] = BlobState(
                    algorithm, hashlib.new(algorithm), generation=state.generation + 1
                )

    def superseded(self, blob: BlobRef, generation: int) -> bool:
        """A purge (or a new verification) since `generation` began: its blocks may be the
        failed attempt's bytes, so they are neither served nor kept."""
        by_registry = self._states.get(blob.digest)
        state = by_registry.get(blob.registry) if by_registry else None
        return state is None or state.generation != generation

    def failures(self, blob: BlobRef) -> int:
        return self._failures.get((blob.digest, blob.registry), 0)

    def failed(self, blob: BlobRef) -> None:
        key = (blob.digest, blob.registry)
        self._failures[key] = self._failures.get(key, 0) + 1
