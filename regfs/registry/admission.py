"""Which registry names a multi-registry mount may be made to connect to: anyone who can
type a path under it (allow_other) chooses a name, so a name is refused before any request
unless it is a valid host[:port], not blocked, and either configured (registries.conf),
admitted by --allow-registry, or public in every address it has (addresses.py, the rule the
foreign-URL policy shares). A registry admitted only for being public gets `hop_check`: every
URL it makes the mount connect to (redirects, CDN, token realm) must be public too.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError, InvalidReferenceError, RefusedRegistryError, TransientError
from ..oci.reference import parse_registry
from .addresses import PublicHops, Resolver, non_public_reason, system_resolve

if TYPE_CHECKING:
    from .registries_conf import RegistriesConf

log = logging.getLogger(__name__)


class RegistryAdmission:
    """Which registry names a multi-registry mount may be made to connect to.

    Refused, with the reason (RefusedRegistryError, ENOENT): a name that is not a valid
    host[:port], without resolving it; a blocked one, without resolving it; and, unless
    registries.conf configures it or an --allow-registry pattern matches the whole
    host[:port], one with any non-public address (addresses.py), literal or through DNS.
    """

    def __init__(
        self, conf: RegistriesConf, allow: Sequence[str] = (), resolve: Resolver | None = None
    ) -> None:
        self.conf = conf
        self.allow = [_allow_pattern(p) for p in allow]
        self.resolve = resolve or system_resolve
        self._logged: set[tuple[str, str]] = set()

    async def check(self, name: str) -> None:
        if not is_registry_name(name):
            self._refuse(name, "is not a valid host[:port]", level=logging.DEBUG)
        settings = self.conf.settings(name)
        if settings.blocked:
            self._refuse(name, f"is blocked by {settings.source}")
        if self._trusted(name):
            return
        target = parse_registry(settings.host)  # docker.io: registry-1.docker.io
        port = _port(target.host)
        try:
            reason = await non_public_reason(target.hostname, port, self.resolve)
        except OSError as exc:
            if isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME:
                self._refuse(name, "does not resolve", level=logging.INFO)
            raise TransientError(f"cannot resolve {target.hostname}: {exc}", host=name) from exc
        if reason is not None:
            via = "" if target.host == settings.name else f"({target.host}) "
            self._refuse(name, via + reason)

    def _trusted(self, name: str) -> bool:
        """Configured in registries.conf or admitted by --allow-registry: its hops may be
        private (a private registry's CDN), as in a single-registry mount."""
        return self.conf.settings(name).configured or any(
            p.fullmatch(name.lower()) for p in self.allow
        )

    def hop_check(self, name: str) -> PublicHops | None:
        """The check every URL of an admitted registry's requests passes before connecting:
        None for a trusted one, else the public-address rule (with this resolver)."""
        return None if self._trusted(name) else PublicHops(name, self.resolve)

    def _refuse(self, name: str, reason: str, *, level: int = logging.WARNING) -> None:
        if (name, reason) not in self._logged:
            if len(self._logged) >= _LOGGED_MAX:
                self._logged.clear()  # bounded: every user can type new names
            self._logged.add((name, reason))
            log.log(level, "registry %r refused: %s", name, reason)
        raise RefusedRegistryError(f"registry {name!r} refused: {reason}", reason=reason, host=name)


_LOGGED_MAX = 4096  # refusals remembered as logged


def _port(host: str) -> int:
    """The port of host[:port] ([v6]:port too), 443 when none is given."""
    rest = host[host.index("]") + 1 :] if host.startswith("[") else host
    _, colon, port = rest.rpartition(":")
    return int(port) if colon else 443


_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def is_registry_name(name: str) -> bool:
    """Whether `name` is a registry as a path names it: host[:port] (distribution's grammar)."""
    if name != name.strip() or "/" in name:
        return False
    try:
        parse_registry(name)
    except InvalidReferenceError:
        return False
    return True


def _allow_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"--allow-registry {pattern!r} is not a regular expression: {exc}"
        ) from None
