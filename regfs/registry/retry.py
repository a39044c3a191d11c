"""How long to wait before asking again, and when not to wait at all.

`RetryPolicy` is shared by the registry client (`with_retries`, whole requests) and
`BlobSource` (ranges that resume): jittered exponential backoff, Retry-After honoured up to a
cap, and a sustained rate limit (a 429 asking for longer than the cap, or than the operation
has left) raised at once instead of hanging the caller.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass

import trio

from ..errors import RateLimitedError, TransientError

log = logging.getLogger(__name__)


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 30.0  # cap on any one wait, Retry-After included

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        # Full jitter: spreads many clients' retries apart.
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))

    def wait(self, attempt: int, exc: TransientError) -> float:
        """Seconds to wait after `exc` before the next attempt.

        A 429 whose Retry-After is longer than `max_delay`, or than the operation has left
        (its trio deadline), is a sustained rate limit: waiting could only hang the caller
        and end in a timeout, so it raises a RateLimitedError saying when the limit resets,
        as docker's `toomanyrequests` does. Shorter waits are waited as before.
        """
        retry_after = exc.retry_after
        if isinstance(exc, RateLimitedError) and retry_after is not None:
            left = trio.current_effective_deadline() - trio.current_time()
            if retry_after > self.max_delay or retry_after > left:
                raise sustained_rate_limit(exc, retry_after) from exc
        return self.delay(attempt, retry_after)


def sustained_rate_limit(exc: RateLimitedError, retry_after: float) -> RateLimitedError:
    """The error (and the log line) for a rate limit that resets later than we may wait."""
    host = exc.host or "the registry"
    resets = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=min(retry_after, 10**8))
    when = f"in {_duration(retry_after)} (at {resets:%Y-%m-%d %H:%M:%S} UTC)"
    log.warning(
        "toomanyrequests: the rate limit of %s was reached; it resets %s: failing now "
        "instead of waiting",
        host,
        when,
    )
    return RateLimitedError(
        f"{exc}: rate limit reached, it resets {when}",
        retry_after,
        host=exc.host,
        status=exc.status,
        digest=exc.digest,
        codes=exc.codes,
    )


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
