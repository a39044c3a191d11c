"""Registry authentication: credentials, WWW-Authenticate challenges and bearer tokens.

Three separate concerns live here, all used by the registry client:

- where credentials come from (`load_credentials`): docker's config.json with its credential
  helpers, then containers' auth.json;
- what the registry asks for (`parse_challenges`);
- per-registry state (`RegistryAuth`): the last challenge seen, one token per scope with its
  expiry, single-flight token requests.

`RegistryAuth` is deliberately not an `httpx.Auth`: the registry client must cap the bodies of
401 answers itself (`read_capped`), decide about retries, and keep registry credentials away from
redirect targets on other hosts.

Secrets (passwords, identity tokens, bearer tokens, Authorization values) never appear in logs,
exception messages or reprs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from ..errors import AuthError, ProtocolError, RateLimitedError, TransientError

log = logging.getLogger(__name__)

MAX_SMALL_BODY = 1 << 20  # token and error bodies

HELPER_TIMEOUT = 10.0  # seconds a docker-credential-* helper may take
MIN_TOKEN_LIFETIME = 60.0  # distribution token spec: expires_in defaults to, and is at least, 60 s
MIN_TOKEN_MARGIN = 10.0  # a token is renewed when less than max(this, 10% of its life) is left
REFUSAL_WINDOW = 30.0  # a token fetched because of a 401 and refused within this is final
CLIENT_ID = "regfs"

DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})
DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"  # what docker hands credential helpers

_DEFAULT_PORTS = {"http": 80, "https": 443}


# --------------------------------------------------------------------------------------------
# Bounded bodies


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Read a streamed response body, at most `limit` bytes after content decoding.

    The response must have been opened with ``client.send(..., stream=True)``. gzip and deflate
    are inflated here, step by step, so that no step produces more than what is still allowed
    plus one byte: a small compressed body cannot make us hold a large decoded one. More than
    `limit` decoded bytes, an unknown or stacked encoding, or a corrupt or truncated compressed
    body raise ProtocolError; a transport failure while reading raises TransientError.
    """
    host = _response_host(response)
    inflater = _inflater_for(response.headers.get("content-encoding", ""), host)

    if response.is_stream_consumed:
        # Already read by someone else (httpx decoded it): all we can do is apply the limit.
        body = response.content
        if len(body) > limit:
            raise _too_large(host, limit)
        return body

    if inflater is None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(host, limit)

    parts: list[bytes] = []
    total = 0
    try:
        async for raw in response.aiter_raw():
            if inflater is None:
                total += len(raw)
                if total > limit:
                    raise _too_large(host, limit)
                parts.append(raw)
                continue
            inflater.push(raw)
            while out := inflater.pull(limit - total + 1):
                total += len(out)
                if total > limit:
                    raise _too_large(host, limit)
                parts.append(out)
    except httpx.TransportError as exc:
        raise TransientError(f"reading the response body from {host} failed: {exc}") from exc
    if inflater is not None:
        inflater.finish()
    return b"".join(parts)


def _too_large(host: str, limit: int) -> ProtocolError:
    return ProtocolError(f"response body from {host} is larger than the limit of {limit} bytes")


def _response_host(response: httpx.Response) -> str:
    try:
        return response.request.url.netloc.decode("ascii", "replace") or "unknown host"
    except RuntimeError:  # a Response built without a request
        return "unknown host"


def _inflater_for(content_encoding: str, host: str) -> _Inflater | None:
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise ProtocolError(f"response from {host} uses stacked content encodings {codings!r}")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _Inflater("gzip", host)
    if coding == "deflate":
        return _Inflater("deflate", host)
    raise ProtocolError(f"response from {host} uses unsupported content encoding {coding!r}")


class _Inflater:
    """Incremental gzip/deflate decoding whose every step is bounded by the caller.

    HTTP "deflate" is meant to be zlib-wrapped (RFC 1950) but some servers send raw deflate:
    the first two bytes decide. gzip bodies may hold several members, possibly followed by
    zero padding (as gzip(1) accepts).
    """

    def __init__(self, coding: str, host: str) -> None:
        self._coding = coding
        self._host = host
        self._input = b""
        self._obj: Any = None  # zlib's decompress object: its type is private to zlib
        self._started = False  # some input has arrived
        self._ended = False  # the (last) stream ended

    def push(self, data: bytes) -> None:
        if data:
            self._started = True
            self._input += data

    def pull(self, max_out: int) -> bytes:
        """Return the next decoded bytes, at most `max_out` (>= 1); b"" when more input is needed."""
        assert max_out >= 1  # max_length=0 would mean "unlimited" to zlib
        while self._input:
            if self._obj is None and not self._start_stream():
                return b""
            data, self._input = self._input, b""
            try:
                out: bytes = self._obj.decompress(data, max_out)
            except zlib.error as exc:
                raise ProtocolError(f"corrupt {self._coding} body from {self._host}") from exc
            self._input = self._obj.unconsumed_tail
            if self._obj.eof:
                self._end_stream(self._obj.unused_data)
            if out:
                return out
            if len(self._input) >= len(data) and self._obj is not None:
                return b""  # no progress: wait for more input
        return b""

    def finish(self) -> None:
        """Check that the body ended where a compressed stream ended."""
        if not self._started:
            return  # an empty body is empty whatever its declared encoding
        if self._obj is not None or not self._ended or self._input:
            raise ProtocolError(f"truncated {self._coding} body from {self._host}")

    def _start_stream(self) -> bool:
        if self._coding == "gzip":
            self._obj = zlib.decompressobj(wbits=31)
            return True
        if len(self._input) < 2:
            return False
        cmf, flg = self._input[0], self._input[1]
        zlib_wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0
        self._obj = zlib.decompressobj(wbits=15 if zlib_wrapped else -15)
        return True

    def _end_stream(self, leftover: bytes) -> None:
        self._obj = None
        self._ended = True
        if self._coding == "gzip":
            leftover = leftover.lstrip(b"\0")
            self._input = leftover  # another member, if anything is left
            if leftover:
                self._ended = False
        else:
            self._input = b""  # trailing bytes after a deflate stream carry nothing
            if leftover:
                log.debug(
                    "ignoring %d bytes after a deflate stream from %s", len(leftover), self._host
                )


# --------------------------------------------------------------------------------------------
# Credentials


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
    return DOCKER_HUB_HOSTS if name in DOCKER_HUB_HOSTS else frozenset({name})


def _helper_server_url(host: str) -> str:
    name = _normalize_key(host)
    return DOCKER_HUB_SERVER_URL if name in DOCKER_HUB_HOSTS else name


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
    try:
        data = json.loads(raw)
    except ValueError:
        # Not even the position: the message could quote the file's contents.
        log.warning("credentials file %s is not valid JSON; ignoring it", path)
        return None
    if not isinstance(data, dict):
        log.warning("credentials file %s does not hold a JSON object; ignoring it", path)
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
    try:
        data = json.loads(stdout)
    except ValueError:
        log.warning("credential helper %s answered something that is not JSON", program)
        return None
    if not isinstance(data, dict):
        log.warning("credential helper %s answered something that is not a JSON object", program)
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


# --------------------------------------------------------------------------------------------
# Challenges

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68_CHARS = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WHITESPACE = " \t"


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header."""

    scheme: str  # "bearer" or "basic" (or any other scheme), lower-cased
    params: Mapping[str, str]  # realm, service, scope, error ...; names lower-cased


class _ChallengeSyntaxError(Exception):
    pass


class _ChallengeParser:
    """RFC 7235 section 4.1 / 2.1: ``1#challenge``, each ``scheme [ token68 / #auth-param ]``.

    Lenient where registries are known to be sloppy: unquoted parameter values may contain any
    character but comma and whitespace (``realm=https://auth.example/token``).
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def parse(self) -> list[Challenge]:
        challenges: list[Challenge] = []
        self._skip_list_separators()
        while not self._at_end():
            challenges.append(self._challenge())
            self._skip_list_separators()
        return challenges

    def _challenge(self) -> Challenge:
        scheme = self._token()
        if not scheme:
            raise _ChallengeSyntaxError
        params: dict[str, str] = {}
        if self._at_end() or self._peek() == ",":
            return Challenge(scheme.lower(), params)
        if self._peek() not in _WHITESPACE:
            raise _ChallengeSyntaxError
        self._skip_whitespace()
        if self._token68_follows():
            params["token68"] = self._token68()
            return Challenge(scheme.lower(), params)
        while True:
            self._skip_whitespace()
            if self._at_end() or self._peek() == ",":
                # Either the end of this challenge's parameter list or an empty list element:
                # decide once past the commas.
                save = self._pos
                self._skip_list_separators()
                if self._at_end() or not self._param_follows():
                    self._pos = save
                    return Challenge(scheme.lower(), params)
            name, value = self._param()
            params.setdefault(name.lower(), value)

    def _param(self) -> tuple[str, str]:
        name = self._token()
        if not name:
            raise _ChallengeSyntaxError
        self._skip_whitespace()
        if self._peek() != "=":
            raise _ChallengeSyntaxError
        self._pos += 1
        self._skip_whitespace()
        if self._peek() == '"':
            return name, self._quoted_string()
        start = self._pos
        while not self._at_end() and self._peek() not in ", \t":
            if self._peek() == '"':
                raise _ChallengeSyntaxError
            self._pos += 1
        if self._pos == start:
            raise _ChallengeSyntaxError
        return name, self._text[start : self._pos]

    def _param_follows(self) -> bool:
        """Whether a ``name = value`` pair starts here (else: a new challenge or garbage)."""
        save = self._pos
        try:
            if not self._token():
                return False
            self._skip_whitespace()
            return self._peek() == "="
        finally:
            self._pos = save

    def _token68_follows(self) -> bool:
        save = self._pos
        try:
            if not self._token68():
                return False
            self._skip_whitespace()
            return self._at_end() or self._peek() == ","
        finally:
            self._pos = save

    def _token68(self) -> str:
        start = self._pos
        while not self._at_end() and self._peek() in _TOKEN68_CHARS:
            self._pos += 1
        if self._pos == start:
            return ""
        while not self._at_end() and self._peek() == "=":
            self._pos += 1
        return self._text[start : self._pos]

    def _quoted_string(self) -> str:
        self._pos += 1  # the opening quote
        chars: list[str] = []
        while not self._at_end():
            char = self._peek()
            self._pos += 1
            if char == '"':
                return "".join(chars)
            if char == "\\":
                if self._at_end():
                    break
                char = self._peek()
                self._pos += 1
            chars.append(char)
        raise _ChallengeSyntaxError  # unterminated

    def _token(self) -> str:
        start = self._pos
        while not self._at_end() and self._peek() in _TCHARS:
            self._pos += 1
        return self._text[start : self._pos]

    def _skip_whitespace(self) -> None:
        while not self._at_end() and self._peek() in _WHITESPACE:
            self._pos += 1

    def _skip_list_separators(self) -> None:
        while not self._at_end() and self._peek() in ", \t":
            self._pos += 1

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _at_end(self) -> bool:
        return self._pos >= len(self._text)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse one WWW-Authenticate header value into its challenges; [] if it is malformed."""
    try:
        return _ChallengeParser(header).parse()
    except _ChallengeSyntaxError:
        return []


# --------------------------------------------------------------------------------------------
# Per-registry state


@dataclass
class _Token:
    header: str  # the Authorization value: "Bearer ..."
    received_at: float
    expires_at: float
    lifetime: float
    after_refusal: bool = False  # fetched because the registry refused what we had sent

    def __repr__(self) -> str:
        return f"_Token(expires_at={self.expires_at!r}, after_refusal={self.after_refusal!r})"


def _fingerprint(header: str) -> bytes:
    """What we remember of a refused Authorization value (the value itself is a secret)."""
    return hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()


def _hostport(url: httpx.URL) -> tuple[str, int | None]:
    return url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme)


class RegistryAuth:
    """Per-registry auth state, driven by the registry client.

    The client asks `authorization(scope)` for the header of each request and reports each 401
    to `handle_unauthorized`. Tokens are cached per scope; one token request per scope runs at
    a time, different scopes in parallel.
    """

    def __init__(
        self,
        registry_url: httpx.URL,
        credentials: Credentials | None,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry_url = registry_url
        self._credentials = credentials
        self._http = http
        self._clock = clock
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._refused: dict[str, deque[bytes]] = {}

    def __repr__(self) -> str:
        scheme = self._challenge.scheme if self._challenge else None
        return (
            f"RegistryAuth({str(self._registry_url)!r}, "
            f"credentials={self._credentials is not None}, challenge={scheme!r})"
        )

    async def authorization(self, scope: str) -> str | None:
        """The Authorization value for a request needing `scope`, or None (anonymous)."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic_header()
        token = self._tokens.get(scope)
        if token is not None and self._fresh(token):
            return token.header
        async with self._lock(scope):
            token = self._tokens.get(scope)
            if token is not None and self._fresh(token):
                return token.header  # fetched by whoever held the lock before us
            challenge = self._challenge
            assert challenge is not None
            if challenge.scheme == "basic":
                return self._basic_header()
            token = await self._fetch_token(scope, challenge)
            self._tokens[scope] = token
            return token.header

    async def handle_unauthorized(
        self, response: httpx.Response, scope: str, sent: str | None
    ) -> bool:
        """Learn from a 401 answered to a request that carried `sent`; True if a retry may work.

        False when: the 401 came from another host; it carries no usable challenge; Basic is
        asked for and we have no (password) credentials; or retrying could only repeat a refused
        header. Token server failures raise (AuthError, TransientError, ProtocolError).
        """
        if not self._from_registry(response):
            log.info("401 from %s, not from the registry: no token flow", _response_host(response))
            return False
        challenge = self._pick_challenge(response)
        if challenge is None:
            log.info("401 from %s without a usable challenge", _response_host(response))
            return False
        self._remember_challenge(challenge)

        if challenge.scheme == "basic":
            header = self._basic_header()
            if header is None:
                log.info("%s asks for Basic auth and we have no credentials for it", self._where)
                return False
            if sent is not None:
                self._note_refused(scope, sent)
            return header != sent

        async with self._lock(scope):
            current = self._tokens.get(scope)
            if (
                current is not None
                and current.header != sent
                and self._fresh(current)
                and not self._was_refused(scope, current.header)
            ):
                return True  # another task refreshed the token since `sent` was issued
            if sent is not None:
                if self._was_refused(scope, sent):
                    return False
                self._note_refused(scope, sent)
            if current is not None and current.header == sent:
                del self._tokens[scope]
                if current.after_refusal and self._clock() - current.received_at < REFUSAL_WINDOW:
                    log.info("%s refused a fresh token for %s", self._where, scope)
                    return False
            token = await self._fetch_token(scope, challenge)
            if token.header == sent or self._was_refused(scope, token.header):
                log.info(
                    "token server for %s handed out a refused token for %s", self._where, scope
                )
                return False
            token.after_refusal = True
            self._tokens[scope] = token
            return True

    # -- helpers ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return self._registry_url.netloc.decode("ascii", "replace")

    def _lock(self, scope: str) -> trio.Lock:
        lock = self._locks.get(scope)
        if lock is None:
            lock = self._locks[scope] = trio.Lock()
        return lock

    def _fresh(self, token: _Token) -> bool:
        margin = max(MIN_TOKEN_MARGIN, 0.1 * token.lifetime)
        return token.expires_at - self._clock() > margin

    def _note_refused(self, scope: str, header: str) -> None:
        self._refused.setdefault(scope, deque(maxlen=8)).append(_fingerprint(header))

    def _was_refused(self, scope: str, header: str) -> bool:
        return _fingerprint(header) in self._refused.get(scope, ())

    def _basic_header(self) -> str | None:
        creds = self._credentials
        if creds is None or creds.identity_token:
            return None
        return _basic_value(creds)

    def _from_registry(self, response: httpx.Response) -> bool:
        try:
            url = response.request.url
        except RuntimeError:
            return True  # no request attached: trust the caller
        return _hostport(url) == _hostport(self._registry_url)

    @staticmethod
    def _pick_challenge(response: httpx.Response) -> Challenge | None:
        challenges: list[Challenge] = []
        for value in response.headers.get_list("www-authenticate"):
            challenges.extend(parse_challenges(value))
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                return challenge
        for challenge in challenges:
            if challenge.scheme == "basic":
                return challenge
        return None

    def _remember_challenge(self, challenge: Challenge) -> None:
        previous = self._challenge
        if (
            previous is None
            or previous.scheme != challenge.scheme
            or previous.params.get("realm") != challenge.params.get("realm")
            or previous.params.get("service") != challenge.params.get("service")
        ):
            # Tokens from another realm or service are worth nothing now.
            self._tokens.clear()
        self._challenge = challenge

    def _realm_url(self, challenge: Challenge) -> httpx.URL:
        realm = challenge.params.get("realm", "")
        try:
            url = self._registry_url.join(realm)
        except httpx.InvalidURL as exc:
            raise AuthError(f"{self._where} names an invalid token realm") from exc
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise AuthError(f"{self._where} names a token realm that is not an http(s) URL")
        return url

    def _may_receive_credentials(self, url: httpx.URL) -> bool:
        """https realms, or the registry's own host (any port: the same machine, which an http
        registry already sends credentials to in clear); never plain http to another host."""
        return url.scheme == "https" or url.host == self._registry_url.host

    async def _fetch_token(self, scope: str, challenge: Challenge) -> _Token:
        url = self._realm_url(challenge)
        realm_host = url.netloc.decode("ascii", "replace")
        query: dict[str, str] = {}
        service = challenge.params.get("service")
        if service:
            query["service"] = service
        if scope:
            query["scope"] = scope

        creds = self._credentials
        send_credentials = creds is not None and self._may_receive_credentials(url)
        if creds is not None and not send_credentials:
            log.warning(
                "not sending credentials to token realm %s: plain http to another host than %s",
                realm_host,
                self._where,
            )
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate"}
        if creds is not None and send_credentials and creds.identity_token:
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.password),
                *query.items(),
                ("client_id", CLIENT_ID),
            ]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = _form_encode(form)
            request = self._http.build_request("POST", url, content=body, headers=headers)
        else:
            if creds is not None and send_credentials:
                headers["Authorization"] = _basic_value(creds)
            request = self._http.build_request("GET", url.copy_merge_params(query), headers=headers)
        log.debug(
            "requesting a token for %s from %s (%s)",
            scope,
            realm_host,
            "with credentials" if send_credentials else "anonymously",
        )

        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise TransientError(f"token request to {realm_host} failed: {exc}") from exc
        except httpx.TooManyRedirects as exc:
            raise ProtocolError(f"token request to {realm_host}: too many redirects") from exc
        try:
            status = response.status_code
            if status in (401, 403):
                what = "credentials" if send_credentials else "anonymous access"
                raise AuthError(
                    f"token server {realm_host} refused {what} for {scope} (HTTP {status})"
                )
            if status == 429:
                raise RateLimitedError(
                    f"token server {realm_host} is rate limiting (HTTP 429)",
                    retry_after=_retry_after(response),
                )
            if status == 408 or status >= 500:
                raise TransientError(
                    f"token server {realm_host} failed (HTTP {status})",
                    retry_after=_retry_after(response),
                )
            if 400 <= status < 500:
                raise AuthError(f"token server {realm_host} answered HTTP {status} for {scope}")
            if not 200 <= status < 300:
                raise ProtocolError(f"token server {realm_host} answered HTTP {status}")
            body = await read_capped(response, MAX_SMALL_BODY)
        finally:
            await response.aclose()
        return _parse_token_response(body, realm_host, scope, self._clock())


def _basic_value(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _form_encode(fields: list[tuple[str, str]]) -> bytes:
    return urllib.parse.urlencode(fields).encode("ascii")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_token_response(body: bytes, realm_host: str, scope: str, now: float) -> _Token:
    try:
        data = json.loads(body)
    except ValueError:
        # `from None`: a JSONDecodeError carries the whole document, which may hold a token.
        raise AuthError(f"token server {realm_host} sent a malformed answer for {scope}") from None
    if not isinstance(data, dict):
        raise AuthError(f"token server {realm_host} sent a malformed answer for {scope}")
    token: object = None
    for name in ("access_token", "token"):  # distribution prefers access_token when both exist
        candidate = data.get(name)
        if isinstance(candidate, str) and candidate:
            token = candidate
            break
    if not isinstance(token, str):
        raise AuthError(f"token server {realm_host} sent no token for {scope}")
    if not all("\x21" <= char <= "\x7e" for char in token):
        raise AuthError(f"token server {realm_host} sent a token unfit for a header, for {scope}")

    expires_in = data.get("expires_in")
    lifetime = MIN_TOKEN_LIFETIME
    if (
        isinstance(expires_in, int | float)
        and not isinstance(expires_in, bool)
        and math.isfinite(expires_in)
        and expires_in > MIN_TOKEN_LIFETIME
    ):
        lifetime = float(expires_in)
    # issued_at is ignored on purpose: the server's clock is not ours.
    return _Token(
        header=f"Bearer {token}",
        received_at=now,
        expires_at=now + lifetime,
        lifetime=lifetime,
    )
