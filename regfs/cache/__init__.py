"""The block cache over the disk tier: what other packages use of it."""

from .blocks import BlobRef, BlockCache, DiskCache, ReadStream

__all__ = ["BlobRef", "BlockCache", "DiskCache", "ReadStream"]
