"""The mount's control directory, `.regfs/`: files made when opened (stats.json)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ..cache import BlockCache
from ..layers import LayerFiles
from ..vfs.nodes import GeneratedFile, StaticDir

CONTROL_DIR = ".regfs"


class RequestStats(Protocol):
    """The registry clients' counters (regfs.registry.client.Stats)."""

    @property
    def requests(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def bytes_by_host(self) -> Mapping[str, int]: ...
    @property
    def errors(self) -> Mapping[str, int]: ...


def stats_document(
    *,
    registry: str,
    mirrors: Sequence[str],
    offline: bool,
    stats: RequestStats,
    cache: BlockCache,
    started: float,
    layers: LayerFiles | None = None,
) -> dict[str, object]:
    c = cache.stats
    document: dict[str, object] = {
        "registry": registry,
        "uptime_seconds": round(time.time() - started, 1),
        "bytes_fetched_by_host": dict(stats.bytes_by_host),
        "requests": stats.requests,
        "retries": stats.retries,
        "cache": {
            "memory_hits": c.memory_hits,
            "disk_hits": c.disk_hits,
            "misses": c.misses,
            "memory_bytes": int(cache.memory.currsize),
            # Per tier: a memory miss goes to disk, a disk miss (c.misses) to the network.
            "tiers": {
                "memory": {"hits": c.memory_hits, "misses": c.disk_hits + c.misses},
                "disk": {"hits": c.disk_hits, "misses": c.misses if cache.disk else 0},
            },
        },
        "blobs": {"verified": c.verified, "failed": c.failed, "purged": c.purges},
        "in_flight_blocks": cache.in_flight(),
        # Readahead requests given up because every reader that wanted them had closed.
        "readahead_stopped": c.readahead_stopped,
        "offline": offline,
        "mirrors": list(mirrors),
        "errors": dict(stats.errors),
    }
    if layers is not None:
        document["layer_indexes"] = layer_index_stats(layers)
    return document


def layer_index_stats(layers: LayerFiles) -> dict[str, object]:
    """Indexes built since the mount started (not loaded from the disk cache), spans
    inflated for reads inside layers, and the builds going on now: compressed bytes read of
    the layer's size, and the rate."""
    return {
        "built": layers.builds,
        "from_toc": layers.toc_indexes,  # eStargz, zstd:chunked: no full pass
        "toc_chunks_read": layers.tocs.chunks_read,
        "spans_inflated": layers.spans.inflated,
        "building": [
            {
                "digest": p.digest,
                "bytes": p.done,
                "size": p.total,
                "bytes_per_second": round(p.rate),
            }
            for p in layers.progress()
        ],
    }


def json_file(name: str, document: Callable[[], object]) -> GeneratedFile:
    """A file holding `document()` as indented JSON, made anew at each open."""
    return GeneratedFile(name, lambda: (json.dumps(document(), indent=2) + "\n").encode())


def control_dir(files: Sequence[GeneratedFile], mtime: float) -> StaticDir:
    return StaticDir(CONTROL_DIR, files, mtime, immutable=True)
