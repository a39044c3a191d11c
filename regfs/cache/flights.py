"""Blocks on their way: a Flight per block, which readers wait on, and a Run per readahead
request, which the readers it was started for own. When the last of them closes its file and
no reader waits on a block of it, the run stops: a `head -c` of a layer does not go on
fetching the window ahead of where it stopped (blocks that already arrived stay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass(eq=False)
class Flight:
    """One block on its way: readers wait on `done`; `error` says why it did not come."""

    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    waiters: int = 0  # readers waiting on it now: their need keeps its run going
    run: Run | None = None  # the readahead request bringing it (None: a reader's own fetch)

    async def wait(self) -> None:
        self.waiters += 1
        try:
            await self.done.wait()
        finally:
            self.waiters -= 1


@dataclass(eq=False)
class Run:
    """One readahead request: the blocks it brings (index → flight), the open readers it is
    for, and the scope that stops it."""

    digest: str
    registry: str  # whose bytes it brings (blocks are keyed per registry until verified)
    flights: dict[int, Flight] = field(default_factory=dict)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    owners: int = 0  # open streams whose window it serves
    finished: bool = False
    stopped: bool = False

    def needed(self) -> bool:
        """Whether anyone still wants it: an open reader's window, or a reader waiting."""
        if self.owners > 0:
            return True
        return any(f.waiters and not f.done.is_set() for f in self.flights.values())

    def disown(self) -> bool:
        """One owner closed; stop the run when nobody needs it any more. True if stopped:
        the cache then lands its flights at once, so a new reader fetches them afresh
        rather than waiting on (or adopting) a request that is going away."""
        self.owners -= 1
        if self.finished or self.stopped or self.needed():
            return False
        self.stopped = True
        self.scope.cancel()
        return True


@dataclass
class Owned:
    """The readahead runs one stream owns (kept on its ReadStream until it closes)."""

    runs: set[Run] = field(default_factory=set)
    closed: bool = False

    def adopt(self, run: Run) -> None:
        if self.closed or run.finished or run.stopped or run in self.runs:
            return
        if len(self.runs) >= 8:  # forget the finished ones now and then: a stream lives long
            self.runs = {r for r in self.runs if not (r.finished or r.stopped)}
        self.runs.add(run)
        run.owners += 1

    def close(self) -> list[Run]:
        """Let go of every run; those stopped for want of another reader."""
        self.closed = True
        runs, self.runs = self.runs, set()
        return [run for run in runs if run.disown()]
