"""What the block cache keeps besides blocks: its counters, and the verification of each blob
as its blocks go by."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import trio


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
