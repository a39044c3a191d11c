"""Bearer tokens and Basic auth for one registry: `RegistryAuth`, driven by the client.

Per-registry state: the last challenge seen, one token per scope with its expiry, single-flight
token requests (distribution's token spec, and the OAuth2 refresh_token POST for identity
tokens).

`RegistryAuth` is deliberately not an `httpx.Auth`: the registry client must cap the bodies of
401 answers itself (`read_capped`), decide about retries, and keep registry credentials away from
redirect targets on other hosts.

Secrets (passwords, identity tokens, bearer tokens, Authorization values) never appear in logs,
exception messages or reprs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import trio

from ..errors import AuthError, ProtocolError, RateLimitedError, TransientError
from .challenge import Challenge, choose_challenge
from .credentials import Credentials
from .http import (
    MAX_SMALL_BODY,
    Peer,
    parse_retry_after,
    read_capped,
    response_host,
    same_origin,
    transport_error,
    url_host,
)

log = logging.getLogger(__name__)

MIN_TOKEN_LIFETIME = 60.0  # distribution token spec: expires_in defaults to, and is at least, 60 s
MIN_TOKEN_MARGIN = 10.0  # a token is renewed when less than max(this, 10% of its life) is left
REFUSAL_WINDOW = 30.0  # a token fetched because of a 401 and refused within this is final
CLIENT_ID = "regfs"


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
        realm_check: Callable[[httpx.URL], Awaitable[None]] | None = None,
    ) -> None:
        self._registry_url = registry_url
        self._realm_check = realm_check  # vets the realm before connecting (client.URLCheck)
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
            log.info("401 from %s, not from the registry: no token flow", response_host(response))
            return False
        challenge = choose_challenge(response.headers.get_list("www-authenticate"))
        if challenge is None:
            log.info("401 from %s without a usable challenge", response_host(response))
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
        return url_host(self._registry_url)

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
        return same_origin(url, self._registry_url)

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
            raise AuthError(
                f"{self._where} names an invalid token realm", host=self._where
            ) from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise AuthError(
                f"{self._where} names a token realm that is not an http(s) URL", host=self._where
            )
        return url

    def _may_receive_credentials(self, url: httpx.URL) -> bool:
        """https realms, or the registry's own host (any port: the same machine, which an http
        registry already sends credentials to in clear); never plain http to another host."""
        return url.scheme == "https" or url.host == self._registry_url.host

    async def _fetch_token(self, scope: str, challenge: Challenge) -> _Token:
        url = self._realm_url(challenge)
        if self._realm_check is not None:
            await self._realm_check(url)  # ForbiddenURLError: a realm it may not lead us to
        realm_host = url_host(url)
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
            # Not following redirects (the client's default): credentials stay with the realm.
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            # An untrusted realm certificate is an UntrustedRegistryCertificateError: not
            # transient, so the request is not repeated.
            raise transport_error(
                exc, f"token request for {scope}", host=realm_host, peer=Peer.REALM
            ) from exc
        try:
            _check_token_status(response, realm_host, scope, send_credentials)
            body = await read_capped(response, MAX_SMALL_BODY)
        finally:
            await response.aclose()
        return _parse_token_response(body, realm_host, scope, self._clock())


def _check_token_status(
    response: httpx.Response, realm_host: str, scope: str, sent_credentials: bool
) -> None:
    """Raise for a token server's failure. Not `status_error`: to a token server a 4xx means
    the credentials or the scope were refused, whatever its number."""
    status = response.status_code
    if 200 <= status < 300:
        return
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status in (401, 403):
        what = "credentials" if sent_credentials else "anonymous access"
        raise AuthError(
            f"token server {realm_host} refused {what} for {scope} (HTTP {status})",
            host=realm_host,
            status=status,
        )
    if status == 429:
        raise RateLimitedError(
            f"token server {realm_host} is rate limiting (HTTP 429)",
            retry_after,
            host=realm_host,
            status=status,
        )
    if status == 408 or status >= 500:
        raise TransientError(
            f"token server {realm_host} failed (HTTP {status})",
            retry_after,
            host=realm_host,
            status=status,
        )
    if 400 <= status < 500:
        raise AuthError(
            f"token server {realm_host} answered HTTP {status} for {scope}",
            host=realm_host,
            status=status,
        )
    raise ProtocolError(
        f"token server {realm_host} answered HTTP {status}", host=realm_host, status=status
    )


def _basic_value(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _form_encode(fields: list[tuple[str, str]]) -> bytes:
    return urllib.parse.urlencode(fields).encode("ascii")


def _parse_token_response(body: bytes, realm_host: str, scope: str, now: float) -> _Token:
    try:
        data = json.loads(body)
    except ValueError:
        # `from None`: a JSONDecodeError carries the whole document, which may hold a token.
        raise AuthError(
            f"token server {realm_host} sent a malformed answer for {scope}", host=realm_host
        ) from None
    if not isinstance(data, dict):
        raise AuthError(
            f"token server {realm_host} sent a malformed answer for {scope}", host=realm_host
        )
    token: object = None
    for name in ("access_token", "token"):  # distribution prefers access_token when both exist
        candidate = data.get(name)
        if isinstance(candidate, str) and candidate:
            token = candidate
            break
    if not isinstance(token, str):
        raise AuthError(f"token server {realm_host} sent no token for {scope}", host=realm_host)
    if not all("\x21" <= char <= "\x7e" for char in token):
        raise AuthError(
            f"token server {realm_host} sent a token unfit for a header, for {scope}",
            host=realm_host,
        )

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
