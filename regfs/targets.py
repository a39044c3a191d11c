"""What a `regfs ls/cat/cp` argument names: `[registry/]repo[:tag|@digest][/path]`, read by
distribution's grammar (oci/reference.py), as a registry, repository, image and a path in
the image's directory; and the error a command reports, with its exit code."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidReferenceError, RegfsError
from .oci.reference import (
    DOCKER_HUB_HOST,
    check_digest,
    check_repository,
    check_tag,
    default_namespace,
    expand_short_name,
    parse_registry,
)

DEFAULT_REGISTRY = "docker.io"  # as `docker pull alpine`
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(RegfsError):
    """What a command says on stderr, whole (it names the reference), and its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# -- references ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a command argument names: a registry, a repository in it, an image (tag or
    digest) and a path inside the image directory."""

    text: str  # as written
    registry: str  # host[:port], or scheme://host[:port] when a scheme was written
    repository: str = ""  # the registry's full name ("" for the registry itself)
    tag: str | None = None
    digest: str | None = None
    path: tuple[str, ...] = ()  # inside the image directory

    @property
    def reference(self) -> str | None:
        """What follows the repository in the tree: the digest when both are given (as docker
        pulls `repo:tag@digest` by its digest)."""
        return self.digest or self.tag

    @property
    def host(self) -> str:
        return parse_registry(self.registry).host

    def image(self) -> str:
        """`host/repo:tag` (or `@digest`) as docker would print it; the registry alone, or
        host/repository, when that is all there is."""
        shown = self.host.replace(DOCKER_HUB_HOST, "docker.io")
        name = f"{shown}/{self.repository}" if self.repository else shown
        if self.digest:
            return f"{name}@{self.digest}"
        return f"{name}:{self.tag}" if self.tag else name

    def tree_path(self) -> list[str]:
        """Components below the registry's directory in the tree."""
        parts = self.repository.split("/") if self.repository else []
        reference = self.reference
        return [*parts, *([reference] if reference else []), *self.path]


def _is_domain(component: str) -> bool:
    """distribution's rule for the first component of a name: a registry when it has a `.`
    or a `:` or is `localhost` (or has upper case, which no repository name may). Here a
    path may follow the tag, so `alpine:3.20/rootfs` would pass that rule too: a `:` counts
    only before a port (digits), else it is a repository and its tag."""
    host, colon, port = component.rpartition(":")
    if colon and not component.endswith("]"):
        if not port.isdigit():
            return False
        component = host
    return (
        bool(colon)
        or "." in component
        or component == "localhost"
        or component != component.lower()
    )


def _is_bare_registry(text: str) -> bool:
    """A whole argument without `/` taken as a registry (for its catalog): `mcr.microsoft.com`,
    `localhost:5000`, `127.0.0.1:5000`. `alpine:3.20` is no registry (before the `:` no dot)."""
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, ""
    if colon and not port.isdigit():
        return False
    return "." in host or host == "localhost" or host.startswith("[")


def parse_target(text: str, default_registry: str = DEFAULT_REGISTRY) -> Target:
    """`_parse_target`, its grammar errors naming the argument (exit code 2)."""
    try:
        return _parse_target(text, default_registry)
    except InvalidReferenceError as exc:
        raise CommandError(f"{text}: {exc}", EXIT_USAGE) from None


def _parse_target(text: str, default_registry: str) -> Target:
    """`[scheme://][registry/]repo[:tag][@digest][/path]`, or a registry or repository alone.

    The registry is the first component when it looks like a host (distribution's rule), or
    the whole argument when it is a host and nothing more; anything else is on
    `default_registry`, where docker's short names apply (`alpine` is `library/alpine` on
    Docker Hub). Without `:tag` or `@digest` the rest names a repository or namespace."""
    rest = text.strip()
    scheme = ""
    for prefix in ("http://", "https://"):
        if rest.startswith(prefix):
            scheme, rest = prefix, rest[len(prefix) :]
    head, slash, tail = rest.partition("/")
    if scheme or (slash and _is_domain(head)) or (not slash and _is_bare_registry(head)):
        registry, rest = scheme + head, tail
    else:
        registry = default_registry
    address = parse_registry(registry)  # InvalidReferenceError for a bad one
    cut = min((i for i in (rest.find(":"), rest.find("@")) if i >= 0), default=-1)
    if cut < 0:
        repository, tag, digest, path = rest.strip("/"), None, None, ""
    else:
        repository, after = rest[:cut], rest[cut:]
        tag = digest = None
        if after.startswith(":"):
            end = min((i for i in (after.find("/"), after.find("@")) if i >= 0), default=len(after))
            tag, after = check_tag(after[1:end]), after[end:]
        if after.startswith("@"):
            end = after.find("/", after.find(":") + 1)
            end = len(after) if end < 0 else end
            digest, after = check_digest(after[1:end]), after[end:]
        if after and not after.startswith("/"):
            raise CommandError(f"{text}: cannot tell the image from the path", EXIT_USAGE)
        path = after
    if repository:
        repository = expand_short_name(check_repository(repository), default_namespace(address))
    elif tag or digest:
        raise CommandError(f"{text}: a tag or digest needs a repository", EXIT_USAGE)
    return Target(text, registry, repository, tag, digest, _clean_path(text, path))


def _clean_path(text: str, path: str) -> tuple[str, ...]:
    """The path's components, `.` and empty ones dropped, `..` taking back the one before
    it; one that would leave the image directory is a usage error."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise CommandError(f"{text}: the path leads out of the image", EXIT_USAGE)
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return tuple(parts)
