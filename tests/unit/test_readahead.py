"""regfs.cache.readahead: the window decisions alone, no cache and no network."""

from __future__ import annotations

from regfs.cache.readahead import Readahead, ReadaheadWindow

BLOCK = 16
SIZE = 20 * BLOCK - 5  # of the blob read: 20 blocks, the last one short


def rules(max_bytes: int = 8 * BLOCK) -> Readahead:
    return Readahead(max_bytes, BLOCK)


def test_one_block_read_in_order_starts_readahead() -> None:
    stream = ReadaheadWindow()
    assert rules().after_read(stream, 0, BLOCK, SIZE) == range(1, 3)
    assert (stream.next_offset, stream.window) == (BLOCK, 2 * BLOCK)


def test_small_in_order_pieces_of_less_than_a_block_are_not_yet_a_stream() -> None:
    # The kernel splits one read into several in-order requests: that is not a stream.
    ahead = rules()
    stream = ReadaheadWindow()
    assert ahead.after_read(stream, 0, 4, SIZE) is None
    assert ahead.after_read(stream, 4, 12, SIZE) is None
    assert stream.window == 24
    assert ahead.after_read(stream, 12, 16, SIZE) == range(1, 3)


def test_window_grows_by_twice_the_bytes_read_up_to_the_limit() -> None:
    ahead = rules(max_bytes=5 * BLOCK)
    stream = ReadaheadWindow()
    windows = []
    for index in range(4):
        ahead.after_read(stream, index * BLOCK, (index + 1) * BLOCK, SIZE)
        windows.append(stream.window)
    assert windows == [2 * BLOCK, 4 * BLOCK, 5 * BLOCK, 5 * BLOCK]
    assert ahead.after_read(stream, 4 * BLOCK, 5 * BLOCK, SIZE) == range(5, 10)


def test_a_seek_closes_the_window_and_forgets_what_was_looked_at() -> None:
    ahead = rules()
    stream = ReadaheadWindow()
    ahead.after_read(stream, 0, 2 * BLOCK, SIZE)
    ahead.looked_at(stream, 6)
    assert ahead.after_read(stream, 10 * BLOCK, 11 * BLOCK, SIZE) is None
    assert (stream.window, stream.scheduled, stream.next_offset) == (0, 0, 11 * BLOCK)
    # Reading on from there is a new stream, looked at from just after its read.
    assert ahead.after_read(stream, 11 * BLOCK, 12 * BLOCK, SIZE) == range(12, 14)


def test_blocks_already_looked_at_are_not_looked_at_again() -> None:
    ahead = rules()
    stream = ReadaheadWindow()
    assert ahead.after_read(stream, 0, 2 * BLOCK, SIZE) == range(2, 6)
    ahead.looked_at(stream, 6)
    assert ahead.after_read(stream, 2 * BLOCK, 3 * BLOCK, SIZE) == range(6, 9)
    # Stopped early (too many requests in flight): the next read goes on from there.
    ahead.looked_at(stream, 7)
    assert ahead.after_read(stream, 3 * BLOCK, 4 * BLOCK, SIZE) == range(7, 12)


def test_the_window_ends_at_the_end_of_the_blob() -> None:
    ahead = rules()
    stream = ReadaheadWindow(next_offset=16 * BLOCK, window=8 * BLOCK)
    assert ahead.after_read(stream, 16 * BLOCK, 17 * BLOCK, SIZE) == range(17, 20)
    last = ahead.after_read(stream, 17 * BLOCK, 19 * BLOCK + 3, SIZE)
    assert last is not None and len(last) == 0  # the last block was the read's own
