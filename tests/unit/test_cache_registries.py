"""One block cache for several registries (an --all-registries mount): a blob's bytes one
registry served are that registry's until the digest matched; then every registry's."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from regfs.cache.disk import DiskCache
from regfs.errors import IntegrityError
from tests.unit.test_cache import BLOCK, DATA, DIGEST, FakeSource, blob, corrupted, make_cache


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", max_bytes=1 << 30)


@pytest.mark.parametrize("with_disk", [False, True])
async def test_unverified_blocks_of_one_registry_are_not_served_to_another(
    disk: DiskCache, with_disk: bool
) -> None:
    """Registry A served a wrong first block (the digest is not checked yet: the blob is
    read only in part); a reader of registry B gets B's bytes, fetched from B."""
    source_a, source_b = FakeSource(corrupted(DATA, 3)), FakeSource(DATA)
    async with make_cache(disk if with_disk else None, readahead_bytes=0).running() as cache:
        assert await cache.read(blob(source_a, "reg-a"), 0, BLOCK) != DATA[:BLOCK]
        assert not cache.is_verified(DIGEST)
        assert await cache.read(blob(source_b, "reg-b"), 0, BLOCK) == DATA[:BLOCK]
        assert source_b.calls, "B's reader was served A's unverified block"
        # B's whole blob is verified from B's bytes alone; A's bad block was never hashed.
        assert await cache.read(blob(source_b, "reg-b"), 0, len(DATA)) == DATA
        assert cache.is_verified(DIGEST)
        # A's attempt is its own: reading it to the end finds the mismatch.
        with pytest.raises(IntegrityError):
            await cache.read(blob(source_a, "reg-a"), 0, len(DATA))


async def test_a_verified_blob_is_every_registrys_without_a_fetch(disk: DiskCache) -> None:
    source_a, source_b = FakeSource(DATA), FakeSource(DATA)
    async with make_cache(disk).running() as cache:
        assert await cache.read(blob(source_a, "reg-a"), 0, len(DATA)) == DATA
        assert cache.is_verified(DIGEST)
        assert await cache.read(blob(source_b, "reg-b"), 0, len(DATA)) == DATA
        assert source_b.calls == []  # from the shared (verified) disk tier


async def test_concurrent_readers_of_two_registries_each_fetch_their_own(disk: DiskCache) -> None:
    source_a, source_b = FakeSource(DATA), FakeSource(DATA)
    source_a.gate = trio.Event()  # A's fetch is on its way while B reads
    async with make_cache(disk, readahead_bytes=0).running() as cache, trio.open_nursery() as n:
        results: dict[str, bytes] = {}

        async def read_a() -> None:
            results["a"] = await cache.read(blob(source_a, "reg-a"), 0, len(DATA))

        n.start_soon(read_a)
        await source_a.started.wait()
        # B does not wait on A's flight: it is A's bytes on their way.
        assert await cache.read(blob(source_b, "reg-b"), 0, len(DATA)) == DATA
        assert source_b.calls
        source_a.gate.set()
    assert results["a"] == DATA
