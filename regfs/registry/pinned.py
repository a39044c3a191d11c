"""Connections that go only to addresses that were checked (issue 15: DNS rebinding).

A check that resolves a name and then lets httpx connect to the name is not enough: httpcore
resolves it again, and a DNS server can answer public to the check and private (TTL 0) to the
connection. The httpcore network backends here resolve once in `connect_tcp`, apply the
public-address rule (addresses.checked_addresses) to every address, refuse with
ForbiddenURLError before any connect, and connect to a checked address. Only the TCP target
changes: httpcore passes the name to start_tls as server_hostname, so TLS still verifies the
name, and the Host header is the URL's.

Used where the rule applies (`pin_transport`): every client of a registry admitted only for
its public addresses, and foreign-URL requests that --foreign-url-allow does not admit (marked
PUBLIC_ONLY, routed by `PinnedIfMarked`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import trio

from ..errors import ForbiddenURLError
from .addresses import Admit, IPAddress, Resolver, checked_addresses, is_public, system_resolve

log = logging.getLogger(__name__)

# A request extension: True when this request's connection must follow the rule (foreign
# URLs under ForeignURLPolicy's default rule).
PUBLIC_ONLY = "regfs.public_only"


class PublicOnly:
    """The rule as connections apply it: `resolve` once, `admit` every address (is_public;
    tests replace both). A refusal is logged once per host and reason (bounded)."""

    def __init__(self, resolve: Resolver = system_resolve, admit: Admit = is_public) -> None:
        self.resolve = resolve
        self.admit = admit
        self._logged: set[tuple[str, str]] = set()

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses a connection to host:port may go to; ForbiddenURLError if any is
        not admitted, httpcore.ConnectError if the name does not resolve."""
        try:
            addresses, reason = await checked_addresses(host, port, self.resolve, self.admit)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if reason is None:
            return addresses
        if (host, reason) not in self._logged:
            if len(self._logged) >= _LOGGED_MAX:
                self._logged.clear()
            self._logged.add((host, reason))
            log.warning("not connecting to %s: %s", host, reason)
        raise ForbiddenURLError(f"not connecting to {host}, which {reason}", host=host)


_LOGGED_MAX = 1024

_ConnectErrors = (httpcore.ConnectError, httpcore.ConnectTimeout)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, connecting only to addresses `rule` checked."""

    def __init__(self, rule: PublicOnly, inner: httpcore.AsyncNetworkBackend | None = None):
        self.rule = rule
        self.inner = inner or httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception | None = None
        for address in await self.rule.addresses(host, port):
            try:  # each address in turn, as getaddrinfo's order gives them
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except _ConnectErrors as exc:
                failure = exc
        assert failure is not None  # addresses() never returns none
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedSyncBackend(httpcore.NetworkBackend):
    """httpcore's sync backend (ThreadedTransport's worker threads), connecting only to
    addresses `rule` checked. The rule runs on the trio thread (one resolver for both)."""

    def __init__(self, rule: PublicOnly, inner: httpcore.NetworkBackend | None = None):
        self.rule = rule
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in trio.from_thread.run(self.rule.addresses, host, port):
            try:
                return self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except _ConnectErrors as exc:
                failure = exc
        assert failure is not None
        raise failure

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def pin_transport(
    transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport, rule: PublicOnly
) -> None:
    """Make `transport` connect through the pinned backend (httpx takes no backend argument:
    its pool's is replaced before any connection exists)."""
    pool: Any = getattr(transport, "_pool")  # noqa: B009
    if not isinstance(pool, httpcore.ConnectionPool | httpcore.AsyncConnectionPool):
        raise TypeError(f"cannot pin connections of {type(pool).__name__}")
    if isinstance(transport, httpx.HTTPTransport):
        pool._network_backend = PinnedSyncBackend(rule)
    else:
        pool._network_backend = PinnedBackend(rule)


class PinnedIfMarked(httpx.AsyncBaseTransport):
    """Requests marked PUBLIC_ONLY go through `pinned`, the others through `plain`."""

    def __init__(self, *, pinned: httpx.AsyncBaseTransport, plain: httpx.AsyncBaseTransport):
        self.pinned = pinned
        self.plain = plain

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        marked = request.extensions.get(PUBLIC_ONLY) is True
        return await (self.pinned if marked else self.plain).handle_async_request(request)

    async def aclose(self) -> None:
        try:
            await self.pinned.aclose()
        finally:
            await self.plain.aclose()
