"""Where credentials for a registry come from: docker's config.json (with its credential
helpers and credsStore), then containers' auth.json.

Secrets (passwords, identity tokens) never appear in logs, exception messages or reprs; what
a failing helper printed is not logged either.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..oci.reference import DOCKER_HUB_NAMES, is_docker_hub

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 10.0  # seconds a docker-credential-* helper may take
DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"  # what docker hands credential helpers


@dataclass(frozen=True)
class Credentials:
    """What we authenticate with at one registry."""

    username: str
    password: str = field(repr=False)  # password or identity token
    identity_token: bool = False  # docker config "identitytoken": use the OAuth2 refresh_token POST


def load_credentials(host: str, env: Mapping[str, str] | None = None) -> Credentials | None:
    """Find credentials for the registry at `host` (its netloc, e.g. "ghcr.io", "127.0.0.1:5000").

    Sources, first hit wins: docker config ($DOCKER_CONFIG/config.json, else
    ~/.docker/config.json) credHelpers[host], then its credsStore, then its auths[host]; then
    containers' auth.json ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    ~/.config/containers/auth.json). Keys match the host exactly after dropping a scheme and a
    path; Docker Hub's names are aliases of each other. Missing, unreadable or malformed files
    and failing helpers are logged and skipped.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    names = _host_aliases(host)
    home = _home(environ, allow_fallback=env is None)

    docker_config_path = _docker_config_path(environ, home)
    if docker_config_path is not None:
        config = _read_json_object(docker_config_path)
        if config is not None:
            found = _from_docker_config(config, names, host, environ, docker_config_path)
            if found is not None:
                return found

    for path in _containers_auth_paths(environ, home):
        data = _read_json_object(path)
        if data is None:
            continue
        found = _from_auths(data.get("auths"), names, path, host)
        if found is not None:
            return found
    return None


def _normalize_key(key: str) -> str:
    """The netloc of a config key, lower-cased: "https://ghcr.io/v2/" -> "ghcr.io"."""
    rest = key.strip()
    if "://" in rest:
        rest = rest.split("://", 1)[1]
    return rest.split("/", 1)[0].lower()


def _key_path(key: str) -> str:
    rest = key.strip()
    if "://" in rest:
        rest = rest.split("://", 1)[1]
    return rest.partition("/")[2].strip("/")


def _host_aliases(host: str) -> frozenset[str]:
    name = _normalize_key(host)
    return DOCKER_HUB_NAMES if is_docker_hub(name) else frozenset({name})


def _helper_server_url(host: str) -> str:
    name = _normalize_key(host)
    return DOCKER_HUB_SERVER_URL if is_docker_hub(name) else name


def _matching_entries(mapping: object, names: frozenset[str], host: str) -> list[tuple[str, Any]]:
    """Entries of `mapping` whose key names one of `names`, best first.

    The key spelling the host itself comes first, then other host-only keys (aliases, URLs),
    then keys carrying a repository path (containers auth.json allows "quay.io/org").
    """
    if not isinstance(mapping, dict):
        return []
    exact = host.strip().lower()
    ranked: list[tuple[int, int, str, Any]] = []
    for index, (key, value) in enumerate(mapping.items()):
        if not isinstance(key, str) or _normalize_key(key) not in names:
            continue
        path = _key_path(key)
        if key.strip().lower() == exact:
            rank = 0
        elif path in ("", "v1", "v2"):
            rank = 1
        else:
            rank = 2
        ranked.append((rank, index, key, value))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [(key, value) for _, _, key, value in ranked]


def _home(environ: Mapping[str, str], *, allow_fallback: bool) -> Path | None:
    home = environ.get("HOME")
    if home:
        return Path(home)
    if allow_fallback:
        with contextlib.suppress(RuntimeError):
            return Path.home()
    return None


def _docker_config_path(environ: Mapping[str, str], home: Path | None) -> Path | None:
    config_dir = environ.get("DOCKER_CONFIG")
    if config_dir:
        return Path(config_dir) / "config.json"
    if home is not None:
        return home / ".docker" / "config.json"
    return None


def _containers_auth_paths(environ: Mapping[str, str], home: Path | None) -> list[Path]:
    paths: list[Path] = []
    auth_file = environ.get("REGISTRY_AUTH_FILE")
    if auth_file:
        paths.append(Path(auth_file))
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        paths.append(Path(runtime_dir) / "containers" / "auth.json")
    if home is not None:
        paths.append(home / ".config" / "containers" / "auth.json")
    return paths


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        log.debug("no credentials file at %s", path)
        return None
    except OSError as exc:
        log.warning("cannot read credentials file %s (%s); ignoring it", path, exc.strerror)
        return None
    return _json_object(raw, f"credentials file {path}")


def _json_object(raw: bytes, source: str) -> dict[str, Any] | None:
    """`raw` as a JSON object, else None (logged). The log names only the source: not even a
    position, since json's message would quote the contents, and they hold secrets."""
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", source)
        return None
    if not isinstance(data, dict):
        log.warning("%s does not hold a JSON object; ignoring it", source)
        return None
    return data


def _from_docker_config(
    config: dict[str, Any],
    names: frozenset[str],
    host: str,
    environ: Mapping[str, str],
    path: Path,
) -> Credentials | None:
    server_url = _helper_server_url(host)
    for key, helper in _matching_entries(config.get("credHelpers"), names, host):
        if isinstance(helper, str) and helper:
            found = _run_helper(helper, server_url, environ)
            if found is not None:
                return found
        else:
            log.warning("credHelpers entry %r in %s is not a helper name; ignoring it", key, path)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _run_helper(store, server_url, environ)
        if found is not None:
            return found
    return _from_auths(config.get("auths"), names, path, host)


def _from_auths(auths: object, names: frozenset[str], path: Path, host: str) -> Credentials | None:
    if auths is not None and not isinstance(auths, dict):
        log.warning("'auths' in %s is not a JSON object; ignoring it", path)
        return None
    for key, entry in _matching_entries(auths, names, host):
        found = _parse_auth_entry(entry, key, path)
        if found is not None:
            log.debug("using credentials for %s from %s", key, path)
            return found
    return None


def _parse_auth_entry(entry: object, key: str, path: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        log.warning("auths entry %r in %s is not a JSON object; ignoring it", key, path)
        return None
    raw_username = entry.get("username")
    username = raw_username if isinstance(raw_username, str) else ""

    identity_token = entry.get("identitytoken")
    if isinstance(identity_token, str) and identity_token:
        return Credentials(username or "<token>", identity_token, identity_token=True)

    auth = entry.get("auth")
    if isinstance(auth, str) and auth.strip():
        encoded = auth.strip()
        encoded += "=" * (-len(encoded) % 4)
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            log.warning("auths entry %r in %s has a malformed 'auth' value; ignoring it", key, path)
            return None
        user, colon, password = decoded.partition(":")
        if not colon or not user:
            log.warning("auths entry %r in %s has a malformed 'auth' value; ignoring it", key, path)
            return None
        return Credentials(user, password)

    raw_password = entry.get("password")
    if username and isinstance(raw_password, str):
        return Credentials(username, raw_password)
    return None  # e.g. {} left by `docker login` when a credsStore holds the secret


def _run_helper(name: str, server_url: str, environ: Mapping[str, str]) -> Credentials | None:
    """Ask ``docker-credential-<name> get`` (the docker credential helper protocol)."""
    program = f"docker-credential-{name}"
    if "/" in name or os.sep in name or name in (".", ".."):
        log.warning("credential helper name %r is not a plain name; ignoring it", name)
        return None
    executable = shutil.which(program, path=environ.get("PATH", os.defpath))
    if executable is None:
        log.warning("credential helper %s not found on PATH; ignoring it", program)
        return None
    try:
        with subprocess.Popen(
            [executable, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(environ),
            start_new_session=True,  # so that a timeout can kill whatever the helper started
        ) as proc:
            try:
                stdout, _ = proc.communicate(server_url.encode(), timeout=HELPER_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                log.warning(
                    "credential helper %s timed out after %g s; ignoring it",
                    program,
                    HELPER_TIMEOUT,
                )
                return None
    except OSError as exc:
        log.warning("cannot run credential helper %s (%s); ignoring it", program, exc.strerror)
        return None
    if proc.returncode != 0:
        # Its output is not logged: "credentials not found" at best, who knows what at worst.
        log.info(
            "credential helper %s gave no credentials for %s (exit status %d)",
            program,
            server_url,
            proc.returncode,
        )
        return None
    data = _json_object(stdout, f"the answer of credential helper {program}")
    if data is None:
        return None
    username, secret = data.get("Username"), data.get("Secret")
    if not isinstance(secret, str) or not secret:
        log.info("credential helper %s gave no secret for %s", program, server_url)
        return None
    if username == "<token>":
        return Credentials("<token>", secret, identity_token=True)
    if not isinstance(username, str) or not username:
        log.warning("credential helper %s gave a secret without a username; ignoring it", program)
        return None
    log.debug("using credentials for %s from %s", server_url, program)
    return Credentials(username, secret)
