"""Registry addresses, repository names, tags and digests: distribution's grammar, no I/O.

Everything that reaches a URL path passes through here first, so a name with `..`, `%2F`,
upper case or a NUL never makes a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import InvalidReferenceError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"(sha256|sha512):([a-f0-9]+)")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
MAX_REPOSITORY_LENGTH = 255

# The one Docker Hub alias table: the names people and tools write for it, and the host that
# answers the API. Credentials are looked up under all of them (config keys use any).
DOCKER_HUB_HOST = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry.hub.docker.com"})
DOCKER_HUB_NAMES = DOCKER_HUB_ALIASES | {DOCKER_HUB_HOST}


# Where a one-component name lives, per registry API host: `docker pull alpine` is
# library/alpine on Docker Hub and nowhere else. A property of the registry, not an option;
# tests add a loopback registry here to stand in for Docker Hub.
DEFAULT_NAMESPACES: dict[str, str] = {DOCKER_HUB_HOST: "library"}


def is_docker_hub(host: str) -> bool:
    """Whether `host` (lower-case, no scheme) is one of Docker Hub's names."""
    return host in DOCKER_HUB_NAMES


def default_namespace(address: RegistryAddress) -> str | None:
    """The namespace a registry puts one-component names in (`library` on Docker Hub)."""
    return DEFAULT_NAMESPACES.get(address.host)


def expand_short_name(name: str, namespace: str | None) -> str:
    """The repository a name means, as docker spells it: `alpine` is `library/alpine` where
    the registry has that default namespace; a name with a `/` is always literal."""
    return f"{namespace}/{name}" if namespace and "/" not in name else name


def is_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY_RE.fullmatch(name) is not None


def is_repository_component(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LENGTH and re.fullmatch(_COMPONENT, name) is not None


def is_tag(name: str) -> bool:
    return _TAG_RE.fullmatch(name) is not None


def is_digest(value: str) -> bool:
    match = _DIGEST_RE.fullmatch(value)
    return match is not None and len(match.group(2)) == _DIGEST_HEX[match.group(1)]


def check_repository(name: str) -> str:
    if not is_repository(name):
        raise InvalidReferenceError(f"invalid repository name: {name!r}")
    return name


def check_tag(tag: str) -> str:
    if not is_tag(tag):
        raise InvalidReferenceError(f"invalid tag: {tag!r}")
    return tag


def check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidReferenceError(f"invalid digest: {digest!r}")
    return digest


def check_reference(ref: str) -> str:
    """A tag or a digest: what may follow /manifests/ in a URL."""
    if is_tag(ref) or is_digest(ref):
        return ref
    raise InvalidReferenceError(f"invalid tag or digest: {ref!r}")


@dataclass(frozen=True)
class RegistryAddress:
    """Where a registry answers: scheme and host[:port]."""

    scheme: str
    host: str  # host[:port], as used in URLs and to look up credentials

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def hostname(self) -> str:
        """The host without its port (for TLS and per-host options)."""
        host = self.host
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    def __str__(self) -> str:
        return self.base_url if self.scheme == "http" else self.host


def parse_registry(value: str) -> RegistryAddress:
    """`host[:port]` (https) or `http(s)://host[:port]`; docker.io means registry-1.docker.io."""
    text = value.strip()
    scheme = "https"
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:  # "http://[": an unclosed IPv6 bracket
            raise InvalidReferenceError(f"invalid registry: {value!r}") from None
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
            raise InvalidReferenceError(
                f"invalid registry: {value!r} (use host[:port] or http(s)://host[:port])"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise InvalidReferenceError(f"invalid registry: {value!r}")
        scheme, text = parts.scheme, parts.netloc
    text = text.rstrip("/")
    match = _HOST_RE.fullmatch(text)
    # The grammar admits 5 digits; a port past 65535 would fail later, inside httpx.
    if not match or not 0 < int(match.group("port") or 443) <= 65535:
        raise InvalidReferenceError(f"invalid registry: {value!r}")
    if text.lower() in DOCKER_HUB_ALIASES:
        text = DOCKER_HUB_HOST
    return RegistryAddress(scheme, text.lower())


def registry_key(address: RegistryAddress) -> str:
    """A file-name-safe key for per-registry state (cache areas)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", address.host)
