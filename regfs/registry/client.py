"""RegistryClient: the distribution API over httpx on trio.

One place for the HTTP rules every request follows:
- redirects are followed by hand (at most 10, http/https only), so Authorization and cookies
  go to the registry origin (and its token realm) and nowhere else;
- 401 from the registry drives the auth flow once; a repeated 401 is AuthError;
- 408/429/5xx and connection failures are retried with jittered backoff, honouring
  Retry-After up to a cap;
- bodies read into memory are capped (manifests 4 MiB, errors and tokens 1 MiB).
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.cookiejar
import json
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import httpcore
import httpx
import trio

from ..errors import (
    AuthError,
    ForbiddenURLError,
    ManifestError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    RegistryError,
    TransientError,
)
from ..oci import manifest as mf
from ..oci.reference import (
    RegistryAddress,
    check_digest,
    check_reference,
    check_repository,
    is_digest,
)
from .auth import MAX_SMALL_BODY, Credentials, RegistryAuth, read_capped

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")

# httpcore reads sockets 64 KiB at a time; larger reads cost fewer trips through the event
# loop for multi-megabyte ranges (measured in scripts/bench).
httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = 256 * 1024


class _NoCookies(http.cookiejar.CookiePolicy):
    """Cookies are never stored, so none can follow a redirect to another host."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: object) -> bool:
        return False

    def path_return_ok(self, path: str, request: object) -> bool:
        return False


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 30.0  # cap on any one wait, Retry-After included

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        # Full jitter: spreads many clients' retries apart.
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


@dataclass
class Stats:
    """Live counters, shown in .regfs/stats.json."""

    requests: int = 0
    retries: int = 0
    bytes_by_host: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def error(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def status_error(response: httpx.Response, what: str) -> RegistryError:
    """The error for a non-success status (body not needed)."""
    status = response.status_code
    host = response.request.url.netloc.decode("ascii", "replace")  # with the port: which registry
    where = f"{what}: {host} answered {status}"
    if status == 404:
        return NotFoundError(where)
    if status in (401, 403):
        return AuthError(where)
    if status == 429:
        return RateLimitedError(where, parse_retry_after(response.headers.get("retry-after")))
    if status in RETRYABLE_STATUS:
        return TransientError(where, parse_retry_after(response.headers.get("retry-after")))
    return ProtocolError(where)


def transport_error(exc: httpx.HTTPError, what: str) -> RegistryError:
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ForbiddenURLError(f"{what}: {exc}")
    if isinstance(exc, httpx.ConnectError) and _certificate_refused(exc):
        return AuthError(
            f"{what}: TLS certificate not trusted ({exc}); use --ca-cert or --insecure"
        )
    if isinstance(exc, httpx.DecodingError):
        return ProtocolError(f"{what}: {exc}")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connect failed on certificate verification. On trio the ssl error sits
    a few causes deep and the ConnectError's own message is empty."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# A check run on each hop of a redirect chain before connecting; raises ForbiddenURLError.
URLCheck = Callable[[httpx.URL], Awaitable[None]]


class RegistryClient:
    """One registry: auth, manifests, tags, catalog, and streamed blob responses."""

    def __init__(
        self,
        address: RegistryAddress,
        *,
        credentials: Credentials | None = None,
        ca_cert: str | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.address = address
        self.base = httpx.URL(address.base_url)
        self.retry = retry or RetryPolicy()
        self.stats = stats or Stats()
        self.http = make_http_client(ca_cert=ca_cert, insecure=insecure, timeout=timeout)
        # Foreign hosts get a client that never trusts --insecure and has its own pool.
        self.foreign_http = make_http_client(ca_cert=None, insecure=False, timeout=timeout)
        self.auth = RegistryAuth(self.base, credentials, self.http)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.foreign_http.aclose()

    def url(self, path: str) -> httpx.URL:
        return self.base.join(path)

    # -- the request loop ------------------------------------------------------------

    async def with_retries(self, what: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run attempt_once, retrying TransientError with backoff up to the policy's count."""
        for attempt in range(self.retry.attempts):
            try:
                return await attempt_once()
            except TransientError as exc:
                self.stats.error(exc)
                if attempt + 1 >= self.retry.attempts:
                    raise
                wait = self.retry.delay(attempt, exc.retry_after)
                log.info("%s: %s; retrying in %.1fs", what, exc, wait)
                self.stats.retries += 1
                await trio.sleep(wait)
        raise AssertionError("unreachable")

    async def send(
        self,
        url: httpx.URL,
        *,
        scope: str | None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        check: URLCheck | None = None,
        foreign: bool = False,
    ) -> httpx.Response:
        """Send one request, following redirects by hand; return the final streamed response.

        Authorization goes only to the registry origin and only when `scope` is given; a 401
        there drives the auth flow once. The caller must close the response. `check` vets
        every hop (foreign URLs); `foreign` starts on the foreign client.
        """
        sent_auth: str | None = None
        retried_auth = False
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            if current.scheme not in ("http", "https"):
                raise ForbiddenURLError(f"refusing a redirect to a {current.scheme!r} URL")
            if check is not None:
                await check(current)
            to_registry = not foreign and same_origin(current, self.base)
            request_headers = dict(headers or {})
            sent_auth = None
            if to_registry and scope is not None:
                sent_auth = await self.auth.authorization(scope)
                if sent_auth:
                    request_headers["Authorization"] = sent_auth
            client = self.http if to_registry or not foreign else self.foreign_http
            request = client.build_request(method, current, headers=request_headers)
            self.stats.requests += 1
            try:
                response = await client.send(request, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise transport_error(exc, f"{method} {current.host}") from exc
            if response.is_redirect:
                location = response.headers.get("location")
                await response.aclose()
                if not location:
                    raise ProtocolError(f"{current.host} sent a redirect without Location")
                try:
                    current = current.join(location)
                except httpx.InvalidURL as exc:
                    raise ProtocolError(f"{current.host} sent an invalid redirect") from exc
                continue
            if (
                response.status_code == 401
                and to_registry
                and scope is not None
                and not retried_auth
            ):
                retried = await self._unauthorized(response, scope, sent_auth)
                if retried:
                    retried_auth = True
                    continue
                return response
            return response
        raise ProtocolError(f"more than {MAX_REDIRECTS} redirects from {url.host}")

    async def _unauthorized(self, response: httpx.Response, scope: str, sent: str | None) -> bool:
        try:
            # Drain at most 1 MiB so the connection can be reused; a hostile body is cut off.
            # Kept on the response: when no retry follows, the caller reads it as the error.
            response._content = await read_capped(response, MAX_SMALL_BODY)
        except ProtocolError:
            response._content = b""
        finally:
            await response.aclose()
        return await self.auth.handle_unauthorized(response, scope, sent)

    async def get_small(
        self,
        path: str,
        *,
        scope: str | None,
        what: str,
        limit: int,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """GET a document with retries; the response comes back with its body read (capped)."""

        async def once() -> httpx.Response:
            response = await self.send(self.url(path), scope=scope, headers=headers)
            try:
                if response.status_code >= 400:
                    await _drain_error(response)
                    raise status_error(response, what)
                body = await read_capped(response, limit)
            finally:
                await response.aclose()
            response._content = body
            self.stats.bytes_by_host[response.request.url.netloc.decode()] += len(body)
            return response

        return await self.with_retries(what, once)

    # -- the API ---------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: 200 or 401 means a registry answers there."""

        async def once() -> None:
            response = await self.send(self.url("/v2/"), scope=None)
            try:
                if response.status_code not in (200, 401):
                    raise status_error(response, "/v2/")
            finally:
                await response.aclose()

        await self.with_retries("ping", once)

    async def get_manifest(self, repo: str, reference: str) -> mf.Document:
        """Fetch, verify and parse a manifest or index by tag or digest."""
        check_repository(repo)
        check_reference(reference)
        response = await self.get_small(
            f"/v2/{repo}/manifests/{reference}",
            scope=pull_scope(repo),
            what=f"manifest {repo}:{reference}",
            limit=mf.MAX_MANIFEST_BYTES,
            headers={"Accept": mf.ACCEPT},
        )
        raw = response.content
        content_type = response.headers.get("content-type", "")
        doc = mf.parse_document(raw, content_type)
        expected = reference if is_digest(reference) else None
        served = response.headers.get("docker-content-digest")
        for want in (expected, served):
            if not want:
                continue
            try:
                actual = mf.document_digest(raw, doc.media_type, want.split(":")[0])
            except ValueError:  # an algorithm hashlib does not know: a claim we cannot check
                actual = None
            if actual != want:
                raise ManifestError(f"manifest {repo}:{reference} does not match digest {want}")
        if expected and expected != doc.digest:
            doc = dataclasses.replace(doc, digest=expected)
        return doc

    async def list_tags(self, repo: str) -> list[str]:
        check_repository(repo)
        return await self._paginated(
            f"/v2/{repo}/tags/list", "tags", pull_scope(repo), f"tags of {repo}"
        )

    async def catalog(self) -> list[str]:
        return await self._paginated(
            "/v2/_catalog", "repositories", "registry:catalog:*", "catalog"
        )

    async def _paginated(self, path: str, key: str, scope: str, what: str) -> list[str]:
        items: list[str] = []
        next_path: str | None = path
        pages = 0
        while next_path and pages < 1000:
            pages += 1
            response = await self.get_small(
                next_path, scope=scope, what=what, limit=MAX_SMALL_BODY * 4
            )
            try:
                page = json.loads(response.content)
            except ValueError as exc:
                raise ProtocolError(f"{what}: not JSON") from exc
            values = page.get(key) if isinstance(page, dict) else None
            items.extend(v for v in (values or []) if isinstance(v, str))
            next_path = _next_link(response.headers.get("link"), self.base)
        return items

    async def blob_size(self, repo: str, digest: str) -> int:
        """HEAD a blob for its size (schema 1 manifests do not carry sizes)."""

        async def once() -> int:
            response = await self.send(
                self.url(f"/v2/{repo}/blobs/{digest}"), scope=pull_scope(repo), method="HEAD"
            )
            await response.aclose()
            if response.status_code >= 400:
                raise status_error(response, f"blob {digest}")
            length = response.headers.get("content-length")
            if length is None or not length.isdigit():
                raise ProtocolError(f"blob {digest}: HEAD without Content-Length")
            return int(length)

        check_digest(digest)
        return await self.with_retries(f"HEAD {digest}", once)

    @asynccontextmanager
    async def open_url(
        self,
        url: httpx.URL,
        *,
        scope: str | None,
        headers: dict[str, str],
        check: URLCheck | None,
        foreign: bool,
    ) -> AsyncIterator[httpx.Response]:
        response = await self.send(url, scope=scope, headers=headers, check=check, foreign=foreign)
        try:
            yield response
        finally:
            await response.aclose()


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


async def _drain_error(response: httpx.Response) -> None:
    try:
        body = await read_capped(response, MAX_SMALL_BODY)
    except (ProtocolError, httpx.HTTPError):
        return
    codes = []
    try:
        errors = json.loads(body).get("errors") or []
        codes = [str(e.get("code")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        pass
    if codes:
        log.debug("%s %s: %s", response.request.url.host, response.status_code, ",".join(codes))


def _next_link(header: str | None, base: httpx.URL) -> str | None:
    """The path of a `Link: <...>; rel="next"` header, on the registry's own origin."""
    if not header:
        return None
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            target = part.split(";")[0].strip().strip("<>")
            url = base.join(target)
            if not same_origin(url, base):
                return None
            parts = urlsplit(str(url))
            return parts.path + (f"?{parts.query}" if parts.query else "")
    return None


def make_http_client(*, ca_cert: str | None, insecure: bool, timeout: float) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = True
    if insecure:
        verify = False
    elif ca_cert:
        verify = ssl.create_default_context(cafile=ca_cert)
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        headers={"User-Agent": "regfs", "Accept-Encoding": "identity"},
        trust_env=False,
    )
