"""regfs.cache.disk on its own: checked files, pending and verified blocks, eviction,
documents, tags, derived artifacts, and the scan, prune and clear of `regfs cache`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from regfs.cache import disk as disk_tier
from regfs.cache.disk import BlockSizeMismatch, DiskCache, read_checked, write_atomic
from tests.fixtures.images import random_bytes

BLOCK = 16
DATA = random_bytes(100, seed=1)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
OTHER = random_bytes(100, seed=2)
OTHER_DIGEST = "sha256:" + hashlib.sha256(OTHER).hexdigest()
INDEX = "gzip-index"


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", max_bytes=1 << 30)


def test_write_atomic_and_read_checked(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "block"
    write_atomic(path, b"hello", trailer=True)
    assert read_checked(path) == b"hello"
    assert [p.name for p in path.parent.iterdir()] == ["block"]  # no temporary left


@pytest.mark.parametrize(
    "damage",
    ["flip-data", "flip-trailer", "truncate", "truncate-to-trailer", "empty", "append"],
)
def test_crc_trailer_detects_damage(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "block"
    write_atomic(path, DATA, trailer=True)
    raw = bytearray(path.read_bytes())
    if damage == "flip-data":
        raw[10] ^= 0x04
    elif damage == "flip-trailer":
        raw[-1] ^= 0x80
    elif damage == "truncate":
        raw = raw[:-1]
    elif damage == "truncate-to-trailer":
        raw = raw[-12:]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "append":
        raw += b"\0"
    path.write_bytes(bytes(raw))
    assert read_checked(path) is None
    assert not path.exists()  # removed, so it is fetched again


def test_disk_pending_per_registry(disk: DiskCache) -> None:
    disk.write_block(DIGEST, 0, "reg-a", DATA[:BLOCK])
    assert disk.read_block(DIGEST, 0, "reg-a") == DATA[:BLOCK]
    assert disk.read_block(DIGEST, 0, "reg-b") is None
    assert not disk.has_block(DIGEST, 0, "reg-b")
    disk.promote(DIGEST, "reg-a")
    assert disk.is_verified(DIGEST)
    assert disk.read_block(DIGEST, 0, "reg-b") == DATA[:BLOCK]
    assert not disk.pending_dir(DIGEST, "reg-a").exists()
    disk.purge(DIGEST)
    assert disk.read_block(DIGEST, 0, "reg-a") is None
    assert not disk.is_verified(DIGEST)


def test_registry_names_cannot_escape_the_cache(disk: DiskCache) -> None:
    disk.write_block(DIGEST, 0, "../../evil", DATA[:BLOCK])
    assert disk.pending_dir(DIGEST, "../../evil").is_relative_to(disk.root / "pending")
    assert disk.read_block(DIGEST, 0, "../../evil") == DATA[:BLOCK]
    with pytest.raises(ValueError):
        disk.verified_dir("sha256:../../etc")


def _fill(disk: DiskCache, digest: str, when: float, blocks: int = 3) -> None:
    for index in range(blocks):
        disk.write_block(digest, index, "reg-a", b"x" * 1000)
    disk.promote(digest, "reg-a")
    directory = disk.verified_dir(digest)
    for entry in [*directory.iterdir(), directory]:
        os.utime(entry, (when, when))


def test_evict_keeps_under_limit_least_recently_used_first(disk: DiskCache) -> None:
    digests = ["sha256:" + hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    for age, digest in enumerate(digests):
        _fill(disk, digest, when=1_000_000 + age * 100)
    per_blob = disk.usage() // 4
    assert per_blob > 3000

    removed = disk.evict(max_bytes=2 * per_blob + 10)
    assert removed == 2 * per_blob
    assert disk.usage() <= 2 * per_blob + 10
    assert [disk.is_verified(d) for d in digests] == [False, False, True, True]

    # A newer use of the older survivor makes the other one the next to go.
    directory = disk.verified_dir(digests[2])
    os.utime(directory, (2_000_000, 2_000_000))
    disk.evict(max_bytes=per_blob)
    assert [disk.is_verified(d) for d in digests] == [False, False, True, False]
    disk.evict(max_bytes=0)
    assert disk.usage() == 0


def test_evict_counts_pending_blobs(disk: DiskCache) -> None:
    disk.write_block(DIGEST, 0, "reg-a", b"x" * 5000)
    assert disk.usage() >= 5000
    disk.evict(max_bytes=100)
    assert disk.usage() == 0
    assert disk.read_block(DIGEST, 0, "reg-a") is None


def test_documents_roundtrip(disk: DiskCache) -> None:
    assert disk.get_document(DIGEST) is None
    disk.put_document(DIGEST, b'{"schemaVersion": 2}')
    assert disk.get_document(DIGEST) == b'{"schemaVersion": 2}'
    path = disk.root / "documents" / "sha256" / DIGEST.split(":")[1]
    raw = bytearray(path.read_bytes())
    raw[0] ^= 1
    path.write_bytes(bytes(raw))
    assert disk.get_document(DIGEST) is None


def test_tags_roundtrip(disk: DiskCache) -> None:
    assert disk.get_tag("reg-a", "library/hello", "latest") is None
    disk.put_tag("reg-a", "library/hello", "latest", DIGEST)
    disk.put_tag("reg-a", "library/hello", "v1", OTHER_DIGEST)
    disk.put_tag("reg-a", "team/project/tool", "3", DIGEST)
    disk.put_tag("reg-b", "other", "x", DIGEST)
    assert disk.get_tag("reg-a", "library/hello", "latest") == DIGEST
    assert disk.get_tag("reg-a", "library/hello", "v1") == OTHER_DIGEST
    assert disk.get_tag("reg-b", "library/hello", "latest") is None
    disk.put_tag("reg-a", "library/hello", "latest", OTHER_DIGEST)  # tags move
    assert disk.get_tag("reg-a", "library/hello", "latest") == OTHER_DIGEST
    assert disk.cached_tags("reg-a", "library/hello") == ["latest", "v1"]
    assert disk.cached_tags("reg-a", "nothing") == []
    assert disk.cached_repos("reg-a") == ["library/hello", "team/project/tool"]
    assert disk.cached_repos("reg-b") == ["other"]
    assert disk.cached_repos("reg-z") == []


def test_tag_file_holding_junk_is_ignored(disk: DiskCache) -> None:
    path = disk._tag_path("reg-a", "repo", "latest")
    write_atomic(path, b"not a digest", trailer=True)
    assert disk.get_tag("reg-a", "repo", "latest") is None


def test_a_cache_directory_holds_one_block_size(tmp_path: Path) -> None:
    DiskCache(tmp_path / "c", max_bytes=1 << 20, block_size=4 << 20)
    DiskCache(tmp_path / "c", max_bytes=1 << 20, block_size=4 << 20)  # the same: fine
    with pytest.raises(BlockSizeMismatch, match="--block-size"):
        DiskCache(tmp_path / "c", max_bytes=1 << 20, block_size=1 << 20)


# --------------------------------------------------------------------------------------------
# derived artifacts


def test_derived_roundtrip_and_damage_is_a_miss(disk: DiskCache) -> None:
    assert disk.get_derived(INDEX, DIGEST) is None
    disk.put_derived(INDEX, DIGEST, b"index of a layer")
    disk.put_derived("zstd-toc", DIGEST, b"another kind")
    assert disk.get_derived(INDEX, DIGEST) == b"index of a layer"
    assert disk.get_derived("zstd-toc", DIGEST) == b"another kind"
    assert disk.get_derived(INDEX, OTHER_DIGEST) is None
    path = disk.root / "derived" / INDEX / "sha256" / DIGEST.split(":")[1]
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x20
    path.write_bytes(bytes(raw))
    assert disk.get_derived(INDEX, DIGEST) is None
    assert not path.exists()  # removed, so it is made again


@pytest.mark.parametrize("kind", ["", "../blobs", "a/b", "Index", ".hidden"])
def test_derived_kinds_are_plain_names(disk: DiskCache, kind: str) -> None:
    with pytest.raises(ValueError):
        disk.put_derived(kind, DIGEST, b"x")
    with pytest.raises(ValueError):
        disk.get_derived(INDEX, "sha256:../../etc")


def test_eviction_drops_blocks_before_derived_artifacts(disk: DiskCache) -> None:
    disk.put_derived(INDEX, DIGEST, b"i" * 2000)
    path = disk.root / "derived" / INDEX / "sha256" / DIGEST.split(":")[1]
    os.utime(path, (1, 1))  # older than any block
    _fill(disk, OTHER_DIGEST, when=1_000_000)
    blob_bytes = disk.usage() - path.stat().st_size
    assert blob_bytes > 3000

    assert disk.evict(max_bytes=path.stat().st_size) == blob_bytes
    assert disk.get_derived(INDEX, DIGEST) == b"i" * 2000  # kept, though older
    assert not disk.verified_dir(OTHER_DIGEST).exists()
    disk.evict(max_bytes=0)
    assert disk.get_derived(INDEX, DIGEST) is None
    assert disk.usage() == 0


def test_derived_artifacts_go_least_recently_used_first(disk: DiskCache) -> None:
    disk.put_derived(INDEX, DIGEST, b"a" * 100)
    disk.put_derived(INDEX, OTHER_DIGEST, b"b" * 100)
    for artifact in disk.artifacts():
        os.utime(artifact.path, (1_000_000, 1_000_000))
    assert disk.get_derived(INDEX, DIGEST) is not None  # a load counts as a use
    disk.evict(max_bytes=150)
    assert [a.digest for a in disk.artifacts()] == [DIGEST]


# --------------------------------------------------------------------------------------------
# `regfs cache`: scan, prune, clear


def test_scan_counts_every_area(tmp_path: Path, disk: DiskCache) -> None:
    disk.write_block(DIGEST, 0, "reg-a", DATA[:BLOCK], blob_size=len(DATA))
    disk.write_block(OTHER_DIGEST, 0, "reg-a", OTHER[:BLOCK], blob_size=len(OTHER))
    disk.promote(OTHER_DIGEST, "reg-a")
    disk.put_document(DIGEST, b"{}")
    disk.put_tag("reg-a", "library/hello", "latest", DIGEST)
    disk.put_derived(INDEX, OTHER_DIGEST, b"index")
    info = disk_tier.scan(tmp_path / "cache")
    assert {(b.digest, b.registry, b.blocks, b.data_bytes, b.size) for b in info.blobs} == {
        (DIGEST, "reg-a", 1, BLOCK, len(DATA)),
        (OTHER_DIGEST, None, 1, BLOCK, len(OTHER)),
    }
    assert [(a.kind, a.digest) for a in info.derived] == [(INDEX, OTHER_DIGEST)]
    assert info.derived_bytes == len(b"index") + 12  # the trailer
    assert (info.documents, info.tags) == (1, 1)
    assert info.blob_bytes == disk.usage() - info.derived_bytes


def test_looking_at_a_directory_without_a_cache_makes_nothing(tmp_path: Path) -> None:
    nothing = tmp_path / "nothing"
    assert disk_tier.scan(nothing).blobs == []
    assert disk_tier.prune(nothing, 0) == 0
    assert disk_tier.clear(nothing) == 0
    assert disk_tier.clear(nothing, DIGEST) == 0
    assert not nothing.exists()
    with pytest.raises(ValueError):
        disk_tier.clear(nothing, "sha256:nothex")


def test_clear_one_digest_takes_its_derived_artifacts(tmp_path: Path, disk: DiskCache) -> None:
    for digest, data in ((DIGEST, DATA), (OTHER_DIGEST, OTHER)):
        disk.write_block(digest, 0, "reg-a", data[:BLOCK])
        disk.put_derived(INDEX, digest, b"index")
    freed = disk_tier.clear(tmp_path / "cache", DIGEST)
    assert freed > BLOCK
    assert disk.get_derived(INDEX, DIGEST) is None
    assert disk.read_block(DIGEST, 0, "reg-a") is None
    assert disk.get_derived(INDEX, OTHER_DIGEST) == b"index"
    assert disk.read_block(OTHER_DIGEST, 0, "reg-a") == OTHER[:BLOCK]

    assert disk_tier.clear(tmp_path / "cache") > 0
    assert disk.get_derived(INDEX, OTHER_DIGEST) is None
    assert sorted(p.name for p in disk.root.iterdir()) == sorted(disk_tier.AREAS)
    disk.put_derived(INDEX, DIGEST, b"again")  # a running mount goes on writing
    assert disk.get_derived(INDEX, DIGEST) == b"again"
