"""Ranged reads of one blob from wherever it lives.

Order of places (`fallback_order`, and `mirror_falls_through` for which failures of a mirror
hand over, as for documents): pull-through mirrors, the registry (following its redirects to
a CDN, whose final URL is remembered and re-resolved when it fails before a byte arrives —
signed URLs expire), then, when the registry answers 404, the descriptor's foreign `urls`,
each vetted by the ForeignURLPolicy on every hop and never sent credentials. A foreign URL
that answered 404 or was refused by policy is dead for the life of the BlobSource: later
ranges go straight to the next URL.

`BlobSource.fetch(start, end, sink)` delivers exactly bytes [start, end) in order. A cut
connection resumes at the exact next offset; a server that ignores Range is read past the
bytes before `start`, so a wrong byte is never delivered. A sink with a `piece` attribute
(the cache's block size) is given pieces that end at multiples of it where the transport
can receive a body into one buffer (httpclient.RECEIVE): a whole block per worker-thread
call instead of a call per chunk; after a cut, the partial piece, then the rest.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import trio

from ..errors import ForbiddenURLError, NotFoundError, ProtocolError, RegistryError, TransientError
from ..oci.manifest import Descriptor
from .addresses import Resolver, non_public_reason, system_resolve
from .client import RegistryClient, pull_scope
from .fallback import fallback_order, mirror_falls_through
from .http import (
    drain_error,
    in_context,
    parse_content_range,
    status_error,
    transport_error,
    url_host,
)
from .httpclient import RECEIVE, Receive

log = logging.getLogger(__name__)

Sink = Callable[[bytes], Awaitable[None]]


class ForeignURLPolicy:
    """Which foreign URLs (and redirect targets from them) may be fetched.

    A URL admitted by an --foreign-url-allow pattern (matched from its start) passes.
    Otherwise only https to hosts whose every address is public (addresses.py, the rule
    shared with the registry admission): loopback, private, link-local (169.254.169.254),
    unspecified (0.0.0.0) and the like are refused before connecting, also when a DNS name
    resolves to one. `resolve` is replaceable for tests. The connection of a URL no pattern
    admits goes only to addresses checked when connecting (pinned.py, via the client's
    foreign rule), so a name that resolves differently a moment later is not connected to.
    """

    def __init__(self, allow: Sequence[str] = (), resolve: Resolver = system_resolve) -> None:
        self.allow = [re.compile(p) for p in allow]
        self.resolve = resolve

    def allows(self, url: httpx.URL) -> bool:
        """Whether an --foreign-url-allow pattern admits `url` as it is: its connection is
        then not pinned to public addresses (RegistryClient.send's `exempt`)."""
        text = str(url)
        return any(p.match(text) for p in self.allow)

    async def check(self, url: httpx.URL) -> None:
        if self.allows(url):
            return
        if url.scheme != "https":
            raise ForbiddenURLError(
                f"foreign URL refused (not https): {url.host}", host=url_host(url)
            )
        try:
            reason = await non_public_reason(url.host, url.port or 443, self.resolve)
        except OSError as exc:
            raise TransientError(f"cannot resolve {url.host}: {exc}", host=url.host) from exc
        if reason is not None:
            raise ForbiddenURLError(f"foreign URL refused: {url.host} {reason}", host=url_host(url))


@dataclass(frozen=True)
class _Place:
    """One place a blob may be read from."""

    client: RegistryClient
    url: httpx.URL
    foreign: bool  # foreign URL: vetted by policy, no credentials
    mirror: bool  # a pull-through mirror: its failures may hand over to the next place


class BlobSource:
    """Where the bytes of one blob come from, and how to read a range of them."""

    def __init__(
        self,
        client: RegistryClient,
        repo: str,
        descriptor: Descriptor,
        *,
        policy: ForeignURLPolicy,
        mirrors: Sequence[RegistryClient] = (),
        bytes_per_second_floor: int = 64 * 1024,
    ) -> None:
        self.client = client
        self.repo = repo
        self.descriptor = descriptor
        self.policy = policy
        self.mirrors = list(mirrors)
        self.digest = descriptor.digest
        self.size = descriptor.size
        # Where redirects ended (signed CDN URLs): asked directly until they fail, then the
        # registry (or the foreign URL) is asked again.
        self.redirect_cache: httpx.URL | None = None
        self.foreign_redirects: dict[str, httpx.URL] = {}
        # Foreign URLs that answered 404 or were refused by policy, with that answer.
        self.dead_urls: dict[str, NotFoundError | ForbiddenURLError] = {}
        self.registry_lacks_it = False  # a foreign layer: its urls served it
        self.floor = bytes_per_second_floor
        self.allowance = 60.0  # seconds every attempt gets on top of the floor rate

    def places(self) -> list[_Place]:
        path = f"/v2/{self.repo}/blobs/{self.digest}"
        found = [
            _Place(client, client.url(path), foreign=False, mirror=is_mirror)
            for client, is_mirror in fallback_order(self.mirrors, self.client)
        ]
        found.extend(
            _Place(self.client, httpx.URL(u), foreign=True, mirror=False)
            for u in self.descriptor.urls
        )
        return found

    async def fetch(self, start: int, end: int, sink: Sink) -> None:
        """Deliver bytes [start, end) to `sink`, in order, exactly once each."""
        if not 0 <= start < end or (self.size >= 0 and end > self.size):
            raise ProtocolError(
                f"range {start}-{end} outside blob {self.digest} of {self.size} bytes",
                digest=self.digest,
            )
        position = start
        attempts_without_progress = 0
        policy = self.client.retry
        piece = getattr(sink, "piece", 0)
        while position < end:
            before = position

            async def counted(data: bytes) -> None:
                nonlocal position
                position += len(data)
                await sink(data)

            try:
                # A drip-feed must end: allow a floor rate on top of a fixed allowance.
                with trio.fail_after(self.allowance + (end - position) / self.floor):
                    await self._fetch_from_places(position, end, counted, piece)
            except trio.TooSlowError as exc:
                if position == before:
                    raise TransientError(
                        f"blob {self.digest}: no progress", digest=self.digest
                    ) from exc
                # Below the floor rate counts as no progress, or a drip would never end.
                attempts_without_progress += 1
                if attempts_without_progress >= policy.attempts:
                    raise TransientError(
                        f"blob {self.digest}: slower than {self.floor} bytes/s", digest=self.digest
                    ) from exc
                log.info("blob %s: too slow; resuming at %d", self.digest[:19], position)
            except TransientError as exc:
                self.client.stats.error(exc)
                if position > before:
                    attempts_without_progress = 0
                attempts_without_progress += 1
                if attempts_without_progress >= policy.attempts:
                    raise
                delay = policy.wait(attempts_without_progress - 1, exc)
                self.client.stats.retries += 1
                log.info(
                    "%s; resuming at %d in %.1fs",
                    in_context(f"blob {self.digest[:19]}", exc),
                    position,
                    delay,
                )
                await trio.sleep(delay)

    async def _fetch_from_places(self, start: int, end: int, sink: Sink, piece: int) -> None:
        delivered = 0

        async def counting(data: bytes) -> None:
            nonlocal delivered
            delivered += len(data)
            await sink(data)

        last_error: RegistryError | None = None
        for place in self.places():
            if self.registry_lacks_it and not place.foreign:
                # Known from an earlier range: skip the 404 round trips to mirrors and registry.
                last_error = NotFoundError(
                    f"blob {self.digest[:19]} is foreign", digest=self.digest
                )
                continue
            if place.foreign and not isinstance(last_error, NotFoundError | ForbiddenURLError):
                break  # foreign URLs stand in only for a blob the registry does not hold
            dead = self.dead_urls.get(str(place.url)) if place.foreign else None
            if dead is not None:
                last_error = dead  # asked once already: its answer will not change
                continue
            try:
                await self._fetch_place(place, start, end, counting, piece)
                if place.foreign:
                    self.registry_lacks_it = True
                return
            except RegistryError as exc:
                if delivered:  # resume where the bytes stopped, wherever they come from next
                    raise TransientError(
                        in_context(f"blob {self.digest[:19]}", exc),
                        host=exc.host,
                        status=exc.status,
                        digest=self.digest,
                        codes=exc.codes,
                    ) from exc
                if place.mirror and mirror_falls_through(exc):
                    log.info("mirror %s: %s; falling through", place.client.address, exc)
                elif place.foreign and isinstance(exc, NotFoundError | ForbiddenURLError):
                    self.dead_urls[str(place.url)] = exc
                    log.info(
                        "%s; not asking foreign URL %s%s again",
                        in_context(f"blob {self.digest[:19]}", exc),
                        url_host(place.url),
                        place.url.path,
                    )
                elif not isinstance(exc, NotFoundError):
                    raise  # the registry's answer, or a foreign URL's, other than 404
                last_error = exc
        assert last_error is not None
        raise last_error

    def _remembered(self, place: _Place) -> httpx.URL | None:
        if place.foreign:
            return self.foreign_redirects.get(str(place.url))
        return None if place.mirror else self.redirect_cache

    def _remember(self, place: _Place, final: httpx.URL | None) -> None:
        if place.foreign:
            if final is None:
                self.foreign_redirects.pop(str(place.url), None)
            else:
                self.foreign_redirects[str(place.url)] = final
        elif not place.mirror:
            self.redirect_cache = final

    async def _fetch_place(
        self, place: _Place, start: int, end: int, sink: Sink, piece: int
    ) -> None:
        remembered = self._remembered(place)
        if remembered is not None:
            delivered = False

            async def tracking(data: bytes) -> None:
                nonlocal delivered
                delivered = True
                await sink(data)

            try:
                await self._fetch_url(place, remembered, start, end, tracking, piece, direct=True)
                return
            except RegistryError as exc:
                # Any failure before a byte arrived (expired signature as 400/403/410, a dead
                # edge, a bad range): ask where the blob is again.
                if delivered:
                    raise
                log.info("blob %s: remembered URL answered %s; asking again", self.digest[:19], exc)
                self._remember(place, None)
        await self._fetch_url(place, place.url, start, end, sink, piece, direct=False)

    async def _fetch_url(
        self,
        place: _Place,
        url: httpx.URL,
        start: int,
        end: int,
        sink: Sink,
        piece: int,
        *,
        direct: bool,
    ) -> None:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        check = self.policy.check if place.foreign else None
        client = place.client
        # A remembered redirect is replayed without credentials but on the registry's own
        # client (its --ca-cert / --insecure), as the first request reached it.
        what = f"blob {self.digest[:19]}"
        async with client.open_url(
            url,
            scope=None if place.foreign or direct else pull_scope(self.repo),
            headers=headers,
            check=check,
            foreign=place.foreign,
            what=what,
            exempt=self.policy.allows,
        ) as response:
            if response.status_code >= 400:
                raise status_error(await drain_error(response), what, digest=self.digest)
            if not direct and not same_url(response.url, url):
                self._remember(place, response.url)  # the CDN a registry or fwlink sent us to
            host = url_host(response.url)
            skip = self._check_range(response, start, end, host)
            receive: Receive | None = response.extensions.get(RECEIVE)
            if receive is not None and piece > 0:
                position = await self._receive_pieces(
                    receive, start, end, skip, piece, sink, what=what, host=host
                )
                if position < end:
                    raise self._cut(what, host, position, start, end)
                return
            position = start
            try:
                async for chunk in response.aiter_raw():
                    client.stats.bytes_by_host[host] += len(chunk)
                    if skip:
                        drop = min(skip, len(chunk))
                        skip -= drop
                        chunk = chunk[drop:]
                    if not chunk:
                        continue
                    chunk = chunk[: end - position]
                    await sink(chunk)
                    position += len(chunk)
                    if position >= end and response.status_code != 206:
                        return  # the rest of a whole body we did not ask for
            except httpx.HTTPError as exc:
                raise transport_error(exc, what, host=host, digest=self.digest) from exc
            # A 206 is read to its end, so its connection goes back to the pool for reuse.
            if position < end:
                raise self._cut(what, host, position, start, end)

    def _cut(self, what: str, host: str, position: int, start: int, end: int) -> TransientError:
        """A body that ended before its range did: resumed from `position` by fetch()."""
        return TransientError(
            f"{what} at {host}: connection closed at {position} of range {start}-{end}",
            host=host,
            digest=self.digest,
        )

    async def _receive_pieces(
        self,
        receive: Receive,
        start: int,
        end: int,
        skip: int,
        piece: int,
        sink: Sink,
        *,
        what: str,
        host: str,
    ) -> int:
        """Bytes [start, end) of the body (after `skip` bytes the server sent unasked), one
        piece per call, each ending at a multiple of `piece`; where they stopped."""
        stats = self.client.stats.bytes_by_host
        while skip:
            data, error = await receive(min(skip, piece))
            stats[host] += len(data)
            skip -= len(data)
            if error is not None:
                raise transport_error(error, what, host=host, digest=self.digest) from error
            if not data:
                return start
        position = start
        while position < end:
            wanted = min(end, (position // piece + 1) * piece) - position
            data, error = await receive(wanted)
            stats[host] += len(data)
            if data:
                position += len(data)
                await sink(data)  # a partial piece too: the resume starts right after it
            if error is not None:
                raise transport_error(error, what, host=host, digest=self.digest) from error
            if len(data) < wanted:
                break  # the body ended
        return position

    def _check_range(self, response: httpx.Response, start: int, end: int, host: str) -> int:
        """How many leading bytes to skip; raise if the response cannot hold our range."""

        def refused(why: str) -> ProtocolError:
            return ProtocolError(
                f"blob {self.digest[:19]} at {host}: {why}",
                host=host,
                status=response.status_code,
                digest=self.digest,
            )

        if response.status_code == 206:
            parsed = parse_content_range(response.headers.get("content-range"))
            if parsed is None:
                raise refused("206 without a valid Content-Range")
            first, last, total = parsed
            if first != start or last > end - 1:
                raise refused(f"asked for {start}-{end - 1}, got {first}-{last}")
            if total is not None and self.size >= 0 and total != self.size:
                raise refused(f"size {total} is not the descriptor's {self.size}")
            return 0
        if response.status_code == 200:
            length = response.headers.get("content-length")
            if (
                length is not None
                and self.size >= 0
                and length.isdigit()
                and int(length) != self.size
            ):
                raise refused(f"ignored Range and sent {length} bytes, not {self.size}")
            # Range ignored: the whole blob follows; read past what precedes our range.
            return start
        raise refused(f"unexpected status {response.status_code}")


def same_url(a: httpx.URL, b: httpx.URL) -> bool:
    return str(a) == str(b)
