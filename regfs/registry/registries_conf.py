"""registries.conf as podman and skopeo read it (containers-registries.conf(5), v2 format,
merged with its drop-ins as containers/image does), certs.d, and which registry names a
multi-registry mount may be made to connect to (`RegistryAdmission`).

Files, in containers/image's order: the file named by $CONTAINERS_REGISTRIES_CONF (else
$REGISTRIES_CONFIG_PATH) in place of the main file, which must then exist; else
$HOME/.config/containers/registries.conf if it exists, followed by only
$HOME/.config/containers/registries.conf.d/*.conf; else /etc/containers/registries.conf (may
be missing), /etc/containers/registries.conf.d/*.conf, $HOME/.config/containers/
registries.conf.d/*.conf, each directory's files in name order. A later file's [[registry]]
replaces an earlier one with the same prefix; a later alias replaces an earlier one, and an
empty one erases it.

Honoured: [[registry]] prefix (host[:port], *.domain; a prefix with a repository path only
for `blocked`), location, insecure, blocked, mirror-by-digest-only, [[registry.mirror]]
location, insecure, pull-from-mirror; [aliases]; a v1 file's [registries.insecure] and
[registries.block]. Ignored (logged): unqualified-search-registries, short-name-mode,
credential-helpers, additional-layer-store-auth-helper, v1 [registries.search]. A file that
is not TOML, or a value of the wrong type or form, is a ConfigError naming the file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..oci.reference import DOCKER_HUB_NAMES, is_repository
from .addresses import Resolver as Resolver
from .admission import RegistryAdmission as RegistryAdmission
from .admission import is_registry_name

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"  # the name Docker Hub has in paths and in registries.conf
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
_REGISTRY_KEYS = {"prefix", "location", "insecure", "blocked", "mirror", "mirror-by-digest-only"}
_MIRROR_KEYS = {"location", "insecure", "pull-from-mirror"}
_IGNORED = {
    "unqualified-search-registries": "paths name their registry",
    "short-name-mode": "paths name their registry",
    "credential-helpers": "credentials come from docker's config.json and containers' auth.json",
    "additional-layer-store-auth-helper": "regfs has no layer store",
}
_V2_KEYS = {"registry", "aliases", *_IGNORED}


class _Location:
    """What a location (host[:port][/path]) says: where to connect, and under which path."""

    location: str

    @property
    def host(self) -> str:
        """host[:port] to connect to (docker.io still means registry-1.docker.io)."""
        return self.location.split("/", 1)[0]

    @property
    def namespace(self) -> str:
        """The path the location puts repositories under ("" for none)."""
        return self.location.partition("/")[2]

    def remote(self, repository: str) -> str:
        """The repository to ask this place for. `repository` as the registry knows it
        (Docker Hub's short names already expanded: library/alpine)."""
        return f"{self.namespace}/{repository}" if self.namespace else repository


@dataclass(frozen=True)
class MirrorSettings(_Location):
    location: str  # host[:port][/path] as registries.conf writes it
    insecure: bool
    pull_from_mirror: str  # "all" | "digest-only" | "tag-only"
    ca_files: tuple[Path, ...] = ()  # certs.d/<its host[:port]>/*.crt


@dataclass(frozen=True)
class RegistrySettings(_Location):
    name: str  # the registry as a path names it: host[:port] ("docker.io")
    location: str  # where to connect: [[registry]] location, else name
    insecure: bool  # plain http or unverified TLS allowed (registries.conf insecure)
    blocked: bool
    mirrors: tuple[MirrorSettings, ...]
    ca_files: tuple[Path, ...]  # certs.d/<location's host[:port]>/*.crt
    configured: bool  # named by registries.conf: may resolve to private addresses
    source: Path | None = None  # the file of the [[registry]] table that applies


@dataclass(frozen=True)
class _Mirror:
    location: str
    insecure: bool
    pull_from_mirror: str


@dataclass(frozen=True)
class _Entry:
    """One [[registry]] table, checked and normalized."""

    prefix: str
    location: str  # "" only with a wildcard prefix: no rewrite
    insecure: bool
    blocked: bool
    mirrors: tuple[_Mirror, ...]
    source: Path

    @property
    def wildcard(self) -> bool:
        return self.prefix.startswith("*.")


def normalize_name(name: str) -> str:
    """A registry name as registries.conf matches it: lower case, Docker Hub's names as
    docker.io."""
    lowered = name.strip().lower()
    return DOCKER_HUB if lowered in DOCKER_HUB_NAMES else lowered


def _match(ref: str, prefix: str) -> int:
    """How much of `ref` (host[:port][/repository]) `prefix` covers, or -1, as containers/
    image matches: the prefix followed by the end, ":", "/" or "@" (so `example.com` also
    covers `example.com:5000`, as podman does), or `*.domain` for any host under domain,
    on any port."""
    if prefix.startswith("*."):
        host = re.split(r"[:/@]", ref, maxsplit=1)[0]
        return len(host) if host.endswith(prefix[1:]) else -1
    if ref == prefix:
        return len(prefix)
    if ref.startswith(prefix) and ref[len(prefix)] in ":/@":
        return len(prefix)
    return -1


class RegistriesConf:
    """The merged registries.conf files, asked per registry name."""

    def __init__(
        self,
        entries: Sequence[_Entry] = (),
        aliases: Mapping[str, str | None] | None = None,
        files: Sequence[Path] = (),
        certs_dirs: Sequence[Path] = (),
    ) -> None:
        self.entries = tuple(entries)
        self.aliases: Mapping[str, str | None] = dict(aliases or {})
        self.files = tuple(files)  # what was read, for the log
        self.certs_dirs = tuple(certs_dirs)

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, *, etc: Path = Path("/etc")
    ) -> RegistriesConf:
        """Read the files podman would (see the module's docstring). `etc` stands for /etc;
        $HOME comes from `environ` (os.environ when None)."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        home = Path(env["HOME"]) if env.get("HOME") else None
        if home is None and environ is None:
            home = Path.home()
        entries: dict[str, _Entry] = {}
        aliases: dict[str, str | None] = {}
        files: list[Path] = []
        for path, named_by, drop_in in _files_to_read(env, etc, home):
            parsed = _read(path, named_by=named_by, drop_in=drop_in)
            if parsed is None:
                continue
            files.append(path)
            file_entries, file_aliases = parsed
            entries.update(file_entries)
            aliases.update(file_aliases)
        log.debug("registries.conf files read: %s", ", ".join(map(str, files)) or "none")
        certs = [etc / "containers" / "certs.d", etc / "docker" / "certs.d"]
        if home is not None:
            certs.insert(0, home / ".config" / "containers" / "certs.d")
        return cls(list(entries.values()), aliases, files, certs)

    def settings(self, name: str) -> RegistrySettings:
        """What applies to the registry `name` (host[:port]): the [[registry]] table with
        the longest prefix matching it (a non-wildcard one wins a tie), else defaults."""
        name = normalize_name(name)
        found = self._best(name)
        if found is None:
            named = any(not e.wildcard and e.prefix.split("/", 1)[0] == name for e in self.entries)
            return RegistrySettings(
                name, name, False, False, (), self._ca_files(name), configured=named
            )
        entry, matched = found
        rest = name[matched:]  # a port a wildcard (or a host prefix) left over
        location = entry.location + rest if entry.location else name
        mirrors = tuple(
            MirrorSettings(
                m.location + rest,
                m.insecure,
                m.pull_from_mirror,
                self._ca_files((m.location + rest).split("/", 1)[0]),
            )
            for m in entry.mirrors
        )
        return RegistrySettings(
            name,
            location,
            entry.insecure,
            entry.blocked,
            mirrors,
            self._ca_files(location.split("/", 1)[0]),
            configured=True,
            source=entry.source,
        )

    def repository_blocked(self, name: str, repository: str) -> bool:
        """Whether `repository` of registry `name` is blocked, counting prefixes with a
        repository path (`docker.io/library/alpine`): the longest prefix decides."""
        found = self._best(f"{normalize_name(name)}/{repository}")
        return found is not None and found[0].blocked

    def configured(self) -> list[str]:
        """The registries registries.conf names (not by wildcard) and does not block."""
        names = {e.prefix.split("/", 1)[0] for e in self.entries if not e.wildcard}
        return sorted(n for n in names if not ((best := self._best(n)) and best[0].blocked))

    def alias(self, short_name: str) -> str | None:
        """[aliases]: "alpine" -> "docker.io/library/alpine", or None."""
        return self.aliases.get(short_name)

    def _best(self, ref: str) -> tuple[_Entry, int] | None:
        best: tuple[_Entry, int] | None = None
        for entry in self.entries:
            matched = _match(ref, entry.prefix)
            if matched < 0:
                continue
            if best is None or (len(entry.prefix), not entry.wildcard) > (
                len(best[0].prefix),
                not best[0].wildcard,
            ):
                best = (entry, matched)
        return best

    def _ca_files(self, host: str) -> tuple[Path, ...]:
        """certs.d as containers/image reads it: the first of $HOME/.config/containers/
        certs.d, /etc/containers/certs.d, /etc/docker/certs.d with a directory named
        host[:port]; its *.crt files are CAs (client *.cert/*.key are not used)."""
        if not is_registry_name(host):
            return ()  # "..", "a/b": not a directory name to look at
        for base in self.certs_dirs:
            directory = base / host
            try:
                names = sorted(os.listdir(directory))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.debug("cannot read %s (%s); skipping it", directory, exc.strerror)
                continue
            return tuple(directory / n for n in names if n.endswith(".crt"))
        return ()


# --------------------------------------------------------------------------------------------
# reading the files


def _files_to_read(
    env: Mapping[str, str], etc: Path, home: Path | None
) -> list[tuple[Path, str | None, bool]]:
    """(path, the variable that named it or None, whether it is a drop-in), in order."""
    system_dir = etc / "containers" / "registries.conf.d"
    user_file = home / ".config" / "containers" / "registries.conf" if home else None
    user_dir = home / ".config" / "containers" / "registries.conf.d" if home else None
    variable = next(
        (v for v in ("CONTAINERS_REGISTRIES_CONF", "REGISTRIES_CONFIG_PATH") if env.get(v)), None
    )
    named_by: str | None = None
    if variable is not None:
        main, dirs, named_by = Path(env[variable]), [system_dir, user_dir], variable
    elif user_file is not None and user_file.exists():
        main, dirs = user_file, [user_dir]
    else:
        main, dirs = etc / "containers" / "registries.conf", [system_dir, user_dir]
    plan = [(main, named_by, False)]
    for directory in dirs:
        if directory is not None:
            plan += [(path, None, True) for path in _drop_ins(directory)]
    return plan


def _drop_ins(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read {directory} ({exc.strerror})") from None
    return [directory / n for n in names if n.endswith(".conf") and not (directory / n).is_dir()]


def _read(
    path: Path, *, named_by: str | None, drop_in: bool
) -> tuple[dict[str, _Entry], dict[str, str | None]] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if named_by is not None:
            raise ConfigError(f"{path} (named by ${named_by}) does not exist") from None
        return None  # no main file, or a drop-in removed since the listing: fine
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key, why in _IGNORED.items():
        if key in data:
            log.info("%s: %s is ignored by regfs (%s)", path, key, why)
    if "registries" in data:
        if drop_in:
            raise ConfigError(f"{path}: a drop-in must be in the v2 format ([[registry]])")
        if _V2_KEYS & data.keys():
            raise ConfigError(
                f"{path}: mixing the v1 format ([registries.*]) and v2 is not supported"
            )
        entries = _v1_entries(data["registries"], path)
    else:
        tables = _typed(data.get("registry", []), list, f"{path}: registry", "an array of tables")
        entries = [
            _entry(table, path, f"{path}: [[registry]] {i + 1}") for i, table in enumerate(tables)
        ]
    _check_conflicts(entries, path)
    unique: dict[str, _Entry] = {}
    for entry in entries:
        if entry.prefix in unique:
            log.warning("%s: a second [[registry]] with prefix %r is ignored", path, entry.prefix)
            continue
        unique[entry.prefix] = entry
        if "/" in entry.prefix and (
            entry.insecure or entry.mirrors or entry.location != entry.prefix
        ):
            log.info(
                "%s: prefix %r has a repository path: only its 'blocked' is honoured",
                path,
                entry.prefix,
            )
    aliases = _aliases(data.get("aliases", {}), path)
    return unique, aliases


def _typed(value: Any, kind: type, where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {what}")
    return value


def _entry(table: Any, path: Path, where: str) -> _Entry:
    _typed(table, dict, where, "a table")
    for key in table.keys() - _REGISTRY_KEYS:
        if key == "pull-from-mirror":
            raise ConfigError(f"{where}: pull-from-mirror may only be set for a mirror")
        log.debug("%s: key %r ignored", where, key)
    location = _location(
        _typed(table.get("location", ""), str, f"{where}: location", "a string"), where
    )
    raw_prefix = _typed(table.get("prefix", ""), str, f"{where}: prefix", "a string")
    if raw_prefix:
        prefix = _prefix(raw_prefix, where)
        if not location and not prefix.startswith("*."):
            raise ConfigError(f"{where}: location is unset and prefix is not like *.example.com")
    elif location:
        prefix = _prefix(location, where)
    else:
        raise ConfigError(f"{where}: neither location nor prefix is set")
    by_digest = _flag(table, "mirror-by-digest-only", where)
    mirrors = _typed(table.get("mirror", []), list, f"{where}: mirror", "an array of tables")
    return _Entry(
        prefix,
        location,
        _flag(table, "insecure", where),
        _flag(table, "blocked", where),
        tuple(_mirror(m, by_digest, f"{where}: mirror {i + 1}") for i, m in enumerate(mirrors)),
        path,
    )


def _mirror(table: Any, by_digest: bool, where: str) -> _Mirror:
    _typed(table, dict, where, "a table")
    for key in table.keys() - _MIRROR_KEYS:
        log.debug("%s: key %r ignored", where, key)
    location = _location(
        _typed(table.get("location", ""), str, f"{where}: location", "a string"), where
    )
    if not location:
        raise ConfigError(f"{where}: location is unset")
    pull = _typed(table.get("pull-from-mirror", ""), str, f"{where}: pull-from-mirror", "a string")
    if pull and pull not in PULL_FROM_MIRROR:
        raise ConfigError(
            f"{where}: pull-from-mirror {pull!r} is not one of {', '.join(PULL_FROM_MIRROR)}"
        )
    if pull and by_digest:
        raise ConfigError(
            f"{where}: pull-from-mirror and the registry's mirror-by-digest-only are both set"
        )
    return _Mirror(
        location, _flag(table, "insecure", where), "digest-only" if by_digest else pull or "all"
    )


def _flag(table: dict[str, Any], key: str, where: str) -> bool:
    return bool(_typed(table.get(key, False), bool, f"{where}: {key}", "true or false"))


def _location(text: str, where: str) -> str:
    """host[:port][/path], lower-case host, no trailing "/"; "" stays ""."""
    text = text.rstrip("/")
    if not text:
        return ""
    if text.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: {text!r}: URI schemes are not supported")
    host, _, path = text.partition("/")
    _check_host(host, where)
    if path and not is_repository(path):
        raise ConfigError(f"{where}: {text!r}: {path!r} is not a repository path")
    return host.lower() + (f"/{path}" if path else "")


def _prefix(text: str, where: str) -> str:
    """A prefix as matched: host[:port][/path[:tag|@digest]] or *.domain, Docker Hub's
    names as docker.io."""
    text = text.rstrip("/")
    if text.startswith("*."):
        if any(c in text for c in "/@:"):
            raise ConfigError(f"{where}: wildcard prefix {text!r} must be like *.example.com")
        _check_host(text[2:], where)
        return text.lower()
    if text.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: {text!r}: URI schemes are not supported")
    host, _, path = text.partition("/")
    _check_host(host, where)
    repository = re.split(r"[:@]", path, maxsplit=1)[0]
    if path and not is_repository(repository):
        raise ConfigError(f"{where}: prefix {text!r}: {path!r} is not a repository path")
    return normalize_name(host) + (f"/{path}" if path else "")


def _check_host(host: str, where: str) -> None:
    if not is_registry_name(host):
        raise ConfigError(f"{where}: {host!r} is not a valid host[:port]")


def _check_conflicts(entries: Sequence[_Entry], path: Path) -> None:
    """containers/image refuses a file naming one location twice with different
    insecure or blocked settings."""
    seen: dict[str, _Entry] = {}
    for entry in entries:
        key = entry.location or entry.prefix
        other = seen.setdefault(key, entry)
        for field in ("insecure", "blocked"):
            if getattr(other, field) != getattr(entry, field):
                raise ConfigError(f"{path}: {key!r} is defined twice with conflicting {field!r}")


def _v1_entries(registries: Any, path: Path) -> list[_Entry]:
    """A v1 file ([registries.search/insecure/block] registries = [...]) as v2 entries."""
    _typed(registries, dict, f"{path}: registries", "a table")
    flags: dict[str, dict[str, bool]] = {}
    for kind in ("block", "insecure", "search"):
        table = _typed(registries.get(kind, {}), dict, f"{path}: registries.{kind}", "a table")
        names = _typed(
            table.get("registries", []), list, f"{path}: registries.{kind}.registries", "an array"
        )
        if kind == "search" and names:
            log.info("%s: registries.search is ignored by regfs (paths name their registry)", path)
            continue
        for name in names:
            where = f"{path}: registries.{kind}"
            location = _location(_typed(name, str, where, "an array of strings"), where)
            flags.setdefault(location, {"insecure": False, "blocked": False})
            flags[location]["blocked" if kind == "block" else "insecure"] = True
    return [
        _Entry(_prefix(loc, str(path)), loc, f["insecure"], f["blocked"], (), path)
        for loc, f in flags.items()
        if loc
    ]


def _aliases(table: Any, path: Path) -> dict[str, str | None]:
    """[aliases] checked as containers/image does: a short name (no registry, tag or digest)
    to a full reference without tag or digest; "" erases an earlier alias (None here)."""
    _typed(table, dict, f"{path}: aliases", "a table")
    aliases: dict[str, str | None] = {}
    for name, value in table.items():
        where = f"{path}: alias {name!r}"
        first = name.split("/", 1)[0]
        if not is_repository(name) or "." in first or first == "localhost":
            raise ConfigError(f"{where}: must be a short name (no registry, tag or digest)")
        _typed(value, str, where, "a string")
        if not value:
            aliases[name] = None
            continue
        host, _, repository = value.partition("/")
        full = ("." in host or ":" in host or host == "localhost") and is_registry_name(host)
        if not full or not is_repository(repository):
            raise ConfigError(
                f"{where}: {value!r} is not registry/repository without tag or digest"
            )
        host = normalize_name(host)
        if host == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        aliases[name] = f"{host}/{repository}"
    return aliases
