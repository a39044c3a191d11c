"""How far ahead of a reader to fetch: a window per open file that grows while it reads in
order and closes on a seek. The block cache decides what to do with each block in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .flights import Owned


@dataclass
class ReadaheadWindow:
    """One reader's position and window (kept on its ReadStream)."""

    next_offset: int = 0  # where the last read ended
    window: int = 0  # bytes to look ahead of the last block read
    scheduled: int = 0  # blocks below this index were looked at for this window already


@dataclass
class ReadStream(ReadaheadWindow):
    """Per open file: its window, the readahead requests it owns until it closes (the block
    cache's close_stream), and what it has seen of the blob's verification."""

    # Failed verifications of the blob when this handle first read it: a handle that lived
    # through a failure gets EIO from then on, so the kernel cannot re-read the purged part
    # and complete a whole-file read with bytes that were never checked.
    failures_seen: int | None = None
    owned: Owned = field(default_factory=Owned)


class Readahead:
    """The window rules of one cache (its readahead limit and block size)."""

    def __init__(self, max_bytes: int, block_size: int) -> None:
        self.max_bytes = max_bytes
        self.block_size = block_size

    def after_read(self, stream: ReadaheadWindow, offset: int, end: int, size: int) -> range | None:
        """Record a read of [offset, end) of a blob of `size` bytes; the blocks to look at
        ahead of it, or None while the reader is not (yet) a stream.

        The window grows by twice the bytes read in order, not per request: the kernel splits
        one read (the first MiB, a random 1 MiB pread) into several in-order requests, and
        that is not yet a stream. Readahead starts once a whole block was read in order.
        """
        block_size = self.block_size
        if offset == stream.next_offset:
            stream.window = min(self.max_bytes, stream.window + 2 * (end - offset))
        else:
            stream.window = 0
            stream.scheduled = 0
        stream.next_offset = end
        if stream.window < 2 * block_size:
            return None
        last = (end - 1) // block_size
        stop = min((size + block_size - 1) // block_size, last + 1 + stream.window // block_size)
        # Start past what earlier reads of this stream already looked at: checking each block
        # of the window again on every 128 KiB read cost two stat calls per block.
        return range(max(last + 1, stream.scheduled), stop)

    @staticmethod
    def looked_at(stream: ReadaheadWindow, stop: int) -> None:
        """The blocks below `stop` are cached, on their way, or left for the reader."""
        stream.scheduled = stop
