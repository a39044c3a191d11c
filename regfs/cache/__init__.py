"""The cache: blocks of blobs in memory over a disk tier, and what is derived from them.

blob.py says what the cache is told of a blob; disk.py owns the on-disk layout (blocks,
documents, tags, derived artifacts) and the scan, prune and clear of `regfs cache`;
blocks.py is the block cache (single flight, verification), state.py its counters and
per-blob verification state; readahead.py the window a sequential reader gets; flights.py
the blocks on their way and the readahead requests a closed reader stops.
"""

from .blob import BlobRef
from .blocks import BlockCache, ReadStream
from .disk import DiskCache

__all__ = ["BlobRef", "BlockCache", "DiskCache", "ReadStream"]
