"""The one rule for which network addresses regfs may be made to connect to by what it reads
or by what a user types: public ones only.

Used by the foreign-URL policy (blobs.ForeignURLPolicy: layer URLs a manifest names) and by
the registry admission of a multi-registry mount (registries_conf.RegistryAdmission: a
registry name typed as a path). Loopback, private, link-local (169.254.169.254, fe80::),
unspecified (0.0.0.0, ::), shared (100.64/10), multicast and reserved addresses are refused,
also when a DNS name resolves to one, and also inside an IPv6 address that carries an IPv4
one (::ffff:a.b.c.d, 6to4, NAT64). What a name resolves to comes from a `Resolver`, which
tests replace so that no name is ever looked up, let alone connected to.

`PublicHops` applies the rule to every URL a registry admitted only for being public makes
the mount connect to (its redirects, CDN hops, token realm): such a registry is chosen by
whoever types a path, so it must not lead the mount to an address it could not have named.
Those checks refuse early, with the registry's name in the log; the connection itself goes
through pinned.py, which resolves once, checks with `checked_addresses` and connects to what
it checked, so a DNS answer that changes between the check and the connection (rebinding)
cannot reach a private address.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx
import trio

from ..errors import ForbiddenURLError, TransientError
from .http import url_host

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses a connection could go to. Raises OSError when the name
# does not resolve (socket.gaierror, as getaddrinfo does).
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
# Whether a connection may go to an address: is_public, except in tests.
Admit = Callable[[IPAddress], bool]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The numeric spellings glibc's inet_aton also takes for IPv4: "127.1", "2130706433", "0x7f.1".
_INET_ATON = re.compile(r"[0-9A-Fa-fXx.]+")


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a public unicast address (what a connection may go to)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
    return address.is_global and not address.is_multicast and not address.is_reserved


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it spells one (without brackets), else None. Takes the
    short and numeric IPv4 forms the system resolver would also take, so that none of them
    passes for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _INET_ATON.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """What getaddrinfo says `host` resolves to. Raises OSError (socket.gaierror)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def non_public_reason(
    host: str, port: int, resolve: Resolver = system_resolve, admit: Admit = is_public
) -> str | None:
    """Why a connection to `host` (no brackets, no port) must not be made, or None when
    every address it has is public. A literal address is judged without resolving; a name
    is resolved with `resolve` (its OSError propagates)."""
    _, reason = await checked_addresses(host, port, resolve, admit)
    return reason


async def checked_addresses(
    host: str, port: int, resolve: Resolver, admit: Admit
) -> tuple[list[IPAddress], str | None]:
    """What `host` resolves to (itself, when it is a literal address), with why one of
    them must not be connected to (None when `admit` takes every one). The addresses are
    what a connection may then go to: pinned.py connects to these, never to a new answer."""
    literal = literal_address(host)
    if literal is not None:
        return [literal], None if admit(literal) else f"is the non-public address {literal}"
    addresses = list(await resolve(host, port))
    if not addresses:
        return addresses, "resolves to no address"
    for address in addresses:
        if not admit(address):
            return addresses, f"resolves to non-public {address}"
    return addresses, None


class PublicHops:
    """The check (client.URLCheck) every hop of a public-only registry passes before it is
    connected to: the first request, each redirect target, the token realm. A hop with a
    non-public address is ForbiddenURLError (EACCES), logged once per host and reason."""

    def __init__(self, registry: str, resolve: Resolver = system_resolve) -> None:
        self.registry = registry  # as the path names it: says whose hop was refused
        self.resolve = resolve
        self._logged: set[tuple[str, str]] = set()

    async def __call__(self, url: httpx.URL) -> None:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            reason = await non_public_reason(url.host, port, self.resolve)
        except OSError as exc:
            raise TransientError(f"cannot resolve {url.host}: {exc}", host=url.host) from exc
        if reason is None:
            return
        host = url_host(url)
        if (host, reason) not in self._logged:
            if len(self._logged) >= _LOGGED_MAX:
                self._logged.clear()  # bounded: a registry can name new hosts forever
            self._logged.add((host, reason))
            log.warning("registry %s: not connecting to %s: %s", self.registry, host, reason)
        raise ForbiddenURLError(
            f"registry {self.registry} led to {host}, which {reason}", host=host
        )


_LOGGED_MAX = 1024  # refused hops remembered as logged
