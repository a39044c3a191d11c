"""RegistryClient: the distribution API over httpx on trio.

`send` is one loop per concern, as httpx's `_client.py` is (`_send_handling_auth` →
`_send_handling_redirects` → `_send_single_request`):
- auth: a 401 from the registry drives the token flow once; a 401 it cannot fix is AuthError;
- redirects are followed by hand (at most 10, http/https only), so Authorization goes to the
  registry origin and nowhere else (`_hop_headers`); cookies are never kept (http.py);
- one request: counted, and a failure to get an answer mapped to a regfs error.

Retries wrap whole requests (`with_retries`): 408/429/5xx and connection failures, with
jittered backoff honouring Retry-After up to a cap; a sustained 429 fails at once (retry.py).
Bodies read into memory are capped (manifests 4 MiB, tag pages 4 MiB, errors and tokens 1 MiB).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import trio

from ..errors import ForbiddenURLError, ManifestError, ProtocolError, TransientError
from ..oci import manifest as mf
from ..oci.reference import (
    RegistryAddress,
    check_digest,
    check_reference,
    check_repository,
    is_digest,
)
from .credentials import Credentials
from .http import (
    MAX_SMALL_BODY,
    Peer,
    SmallResponse,
    drain_error,
    in_context,
    read_small,
    same_origin,
    status_error,
    transport_error,
    url_host,
)
from .httpclient import make_http_client
from .link import next_link
from .pinned import PUBLIC_ONLY, PublicOnly
from .retry import RetryPolicy as RetryPolicy  # re-exported: callers build clients with it
from .token import RegistryAuth

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
MAX_PAGES = 1000
T = TypeVar("T")

# A check run on each hop of a redirect chain before connecting; raises ForbiddenURLError.
URLCheck = Callable[[httpx.URL], Awaitable[None]]
URLExempt = Callable[[httpx.URL], bool]  # admitted as it is (--foreign-url-allow): not pinned


@dataclass
class Stats:
    """Live counters, shown in .regfs/stats.json."""

    requests: int = 0
    retries: int = 0
    bytes_by_host: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def error(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1


@dataclass(frozen=True)
class _Call:
    """One `send`, as the caller asked for it: carried through the three loops."""

    method: str
    url: httpx.URL
    headers: Mapping[str, str]
    check: URLCheck | None
    foreign: bool
    what: str  # names the request in errors
    exempt: URLExempt | None = None  # foreign hops it admits connect without the pin


class RegistryClient:
    """One registry: auth, manifests, tags, catalog, and streamed blob responses.

    TLS: both clients trust the system's store and SSL_CERT_FILE / SSL_CERT_DIR (tls.py);
    `ca_cert` adds a CA for the registry, its token realm and its CDN redirects (one client),
    `insecure` skips their verification; `foreign_ca_certs` add CAs for foreign-layer hosts,
    whose client never skips verification. `transport` replaces the network for both httpx
    clients (tests: httpx.MockTransport); `clock` is the token state's clock (token expiry).
    `hop_check` vets every URL before it is connected to: each hop of every request and the
    token realm (a registry admitted only for being public: addresses.PublicHops); then
    `public_only` pins every connection of both clients to addresses it checked (pinned.py).
    Foreign hops the caller does not exempt are pinned in any case (`foreign_rule`).
    """

    def __init__(
        self,
        address: RegistryAddress,
        *,
        credentials: Credentials | None = None,
        ca_cert: str | None = None,
        foreign_ca_certs: Sequence[str] = (),
        insecure: bool = False,
        ca_files: Sequence[str] = (),  # more CAs for the registry (certs.d/<host>/*.crt)
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        stats: Stats | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        hop_check: URLCheck | None = None,
        public_only: PublicOnly | None = None,
        foreign_rule: PublicOnly | None = None,
    ) -> None:
        self.address = address
        self.hop_check = hop_check
        self.base = httpx.URL(address.base_url)
        self.retry = retry or RetryPolicy()
        self.stats = stats or Stats()
        self.http = make_http_client(
            ca_files=[*([ca_cert] if ca_cert else []), *ca_files],
            insecure=insecure,
            timeout=timeout,
            transport=transport,
            public_only=public_only,
        )
        # Foreign hosts get a client that never trusts --insecure and has its own pool.
        self.foreign_http = make_http_client(
            ca_files=foreign_ca_certs,
            insecure=False,
            timeout=timeout,
            transport=transport,
            public_only=public_only or foreign_rule or PublicOnly(),
            marked_only=public_only is None,
        )
        self.auth = RegistryAuth(
            self.base, credentials, self.http, clock=clock, realm_check=hop_check
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.foreign_http.aclose()

    def url(self, path: str) -> httpx.URL:
        return self.base.join(path)

    # -- retries ---------------------------------------------------------------------

    async def with_retries(self, what: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run attempt_once, retrying TransientError with backoff up to the policy's count."""
        for attempt in range(self.retry.attempts):
            try:
                return await attempt_once()
            except TransientError as exc:
                self.stats.error(exc)
                if attempt + 1 >= self.retry.attempts:
                    raise
                wait = self.retry.wait(attempt, exc)
                log.info("%s; retrying in %.1fs", in_context(what, exc), wait)
                self.stats.retries += 1
                await trio.sleep(wait)
        raise AssertionError("unreachable")

    # -- one request: auth, then redirects, then a single request --------------------

    async def send(
        self,
        url: httpx.URL,
        *,
        scope: str | None,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        check: URLCheck | None = None,
        foreign: bool = False,
        what: str | None = None,
        exempt: URLExempt | None = None,
    ) -> httpx.Response:
        """Send one request, following redirects by hand; return the final streamed response.

        Authorization goes only to the registry origin and only when `scope` is given; a 401
        there drives the auth flow once, and a 401 it cannot fix is raised as AuthError. The
        caller must close the response. `check` vets every hop (foreign URLs); `foreign`
        sends every hop on the foreign client, pinned unless `exempt(url)`. `what` names it.
        """
        what = what or f"{method} {url.path}"
        call = _Call(method, url, headers or {}, check, foreign, what, exempt)
        return await self._send_handling_auth(call, scope)

    def _is_registry(self, url: httpx.URL, call: _Call) -> bool:
        """Whether `url` is the registry's own origin, where its credentials may go."""
        return not call.foreign and same_origin(url, self.base)

    async def _send_handling_auth(self, call: _Call, scope: str | None) -> httpx.Response:
        retried = False
        while True:
            sent: str | None = None
            if scope is not None and self._is_registry(call.url, call):
                sent = await self.auth.authorization(scope)
            response = await self._send_handling_redirects(call, sent)
            if (
                response.status_code != 401
                or scope is None
                or not self._is_registry(response.request.url, call)
            ):
                return response
            try:
                # Drained (at most 1 MiB, a hostile body is cut off) so that the connection
                # goes back to the pool before the token request needs one.
                refusal = await drain_error(response)
            finally:
                await response.aclose()
            if retried or not await self.auth.handle_unauthorized(response, scope, sent):
                raise status_error(refusal, call.what)
            retried = True

    async def _send_handling_redirects(
        self, call: _Call, authorization: str | None
    ) -> httpx.Response:
        url, redirected_by = call.url, None
        for _hop in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https"):
                raise ForbiddenURLError(
                    f"refusing a redirect to a {url.scheme!r} URL", host=redirected_by
                )
            if call.check is not None:
                await call.check(url)
            if self.hop_check is not None:
                await self.hop_check(url)
            headers = self._hop_headers(url, call, authorization)
            response = await self._send_single_request(call, url, headers)
            if not response.is_redirect:
                return response
            await response.aclose()
            redirected_by = url_host(url)
            url = _redirect_target(response)
        raise ProtocolError(
            f"more than {MAX_REDIRECTS} redirects from {url_host(call.url)}",
            host=url_host(call.url),
        )

    def _hop_headers(
        self, url: httpx.URL, call: _Call, authorization: str | None
    ) -> dict[str, str]:
        """The header policy across origins: the caller's headers on every hop, Authorization
        only on the registry's own origin (not a CDN, another port or scheme, a foreign URL)."""
        headers = dict(call.headers)
        if authorization and self._is_registry(url, call):
            headers["Authorization"] = authorization
        return headers

    async def _send_single_request(
        self, call: _Call, url: httpx.URL, headers: dict[str, str]
    ) -> httpx.Response:
        client = self.foreign_http if call.foreign else self.http
        pinned = call.foreign and not (call.exempt is not None and call.exempt(url))
        request = client.build_request(
            call.method, url, headers=headers, extensions={PUBLIC_ONLY: pinned}
        )
        self.stats.requests += 1
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            if call.foreign:
                peer = Peer.FOREIGN
            else:
                peer = Peer.REGISTRY if same_origin(url, self.base) else Peer.CDN
            raise transport_error(exc, call.what, host=url_host(url), peer=peer) from exc

    async def get_small(
        self,
        path: str,
        *,
        scope: str | None,
        what: str,
        limit: int,
        headers: dict[str, str] | None = None,
        digest: str | None = None,
    ) -> SmallResponse:
        """GET a document with retries; its body comes back read (at most `limit` bytes)."""

        async def once() -> SmallResponse:
            response = await self.send(self.url(path), scope=scope, headers=headers, what=what)
            try:
                if response.status_code >= 400:
                    raise status_error(await drain_error(response), what, digest=digest)
                document = await read_small(response, limit)
            finally:
                await response.aclose()
            self.stats.bytes_by_host[document.host] += len(document.body)
            return document

        return await self.with_retries(what, once)

    # -- the API ---------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: 200 or 401 means a registry answers there."""

        async def once() -> None:
            response = await self.send(self.url("/v2/"), scope=None)
            try:
                if response.status_code not in (200, 401):
                    raise status_error(await drain_error(response), "/v2/")
            finally:
                await response.aclose()

        await self.with_retries("ping", once)

    async def get_manifest(self, repo: str, reference: str) -> mf.Document:
        """Fetch, verify and parse a manifest or index by tag or digest."""
        check_repository(repo)
        check_reference(reference)
        expected = reference if is_digest(reference) else None
        response = await self.get_small(
            f"/v2/{repo}/manifests/{reference}",
            scope=pull_scope(repo),
            what=f"manifest {repo}:{reference}",
            limit=mf.MAX_MANIFEST_BYTES,
            headers={"Accept": mf.ACCEPT},
            digest=expected,
        )
        raw = response.body
        content_type = response.headers.get("content-type", "")
        doc = mf.parse_document(raw, content_type)
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
        while next_path and pages < MAX_PAGES:
            pages += 1
            response = await self.get_small(
                next_path, scope=scope, what=what, limit=MAX_SMALL_BODY * 4
            )
            try:
                page = json.loads(response.body)
            except ValueError as exc:
                raise ProtocolError(
                    f"{what}: not JSON", host=response.host, status=response.status
                ) from exc
            values = page.get(key) if isinstance(page, dict) else None
            items.extend(v for v in (values or []) if isinstance(v, str))
            next_path = next_link(response.headers.get("link"), self.base)
        return items

    async def blob_size(self, repo: str, digest: str) -> int:
        """HEAD a blob for its size (schema 1 manifests do not carry sizes)."""
        what = f"blob {digest}"

        async def once() -> int:
            url = self.url(f"/v2/{repo}/blobs/{digest}")
            response = await self.send(url, scope=pull_scope(repo), method="HEAD", what=what)
            try:
                if response.status_code >= 400:
                    raise status_error(await drain_error(response), what, digest=digest)
            finally:
                await response.aclose()
            length = response.headers.get("content-length")
            if length is None or not length.isdigit():
                raise ProtocolError(
                    f"{what}: HEAD without Content-Length",
                    host=url_host(response.request.url),
                    status=response.status_code,
                    digest=digest,
                )
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
        what: str | None = None,
        exempt: URLExempt | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """`send`, closing the response when the block ends."""
        response = await self.send(
            url,
            scope=scope,
            headers=headers,
            check=check,
            foreign=foreign,
            what=what,
            exempt=exempt,
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def head_manifest(self, repo: str, reference: str) -> str | None:
        """HEAD a manifest with the same Accept as `get_manifest`: the Docker-Content-Digest
        it is served with, or None when the registry gives none (or not a digest). This is
        how docker and crane re-check a tag: Docker Hub counts a GET as a pull, not a HEAD."""
        check_repository(repo)
        check_reference(reference)
        what = f"manifest {repo}:{reference}"

        async def once() -> str | None:
            url = self.url(f"/v2/{repo}/manifests/{reference}")
            headers = {"Accept": mf.ACCEPT}
            response = await self.send(
                url, scope=pull_scope(repo), headers=headers, method="HEAD", what=what
            )
            try:
                if response.status_code >= 400:
                    raise status_error(await drain_error(response), what)
            finally:
                await response.aclose()
            digest = response.headers.get("docker-content-digest", "").strip()
            return digest if is_digest(digest) else None

        return await self.with_retries(f"HEAD {what}", once)

    async def referrers(self, repo: str, digest: str) -> list[mf.Descriptor] | None:
        """The OCI 1.1 referrers of a manifest, unfiltered, every page of
        `GET /v2/<repo>/referrers/<digest>`; None where the registry has no referrers API
        (a registry without one answers 404, the spec says; 400, 405 and 501 are taken the
        same way), so the caller uses the fallback tag instead."""
        check_repository(repo)
        check_digest(digest)
        what = f"referrers of {repo}@{digest}"
        unsupported = {400, 404, 405, 501}

        async def page(path: str, first: bool) -> SmallResponse | None:
            """One page; None: the first answered that there is no referrers API."""
            url = self.url(path)
            headers = {"Accept": mf.OCI_INDEX}
            response = await self.send(url, scope=pull_scope(repo), headers=headers, what=what)
            try:
                if response.status_code >= 400:
                    refusal = await drain_error(response)
                    if first and response.status_code in unsupported:
                        return None
                    raise status_error(refusal, what, digest=digest)
                answer = await read_small(response, mf.MAX_MANIFEST_BYTES)
            finally:
                await response.aclose()
            self.stats.bytes_by_host[answer.host] += len(answer.body)
            return answer

        found: list[mf.Descriptor] = []
        path: str | None = f"/v2/{repo}/referrers/{digest}"
        pages = 0
        while path is not None and pages < MAX_PAGES:
            pages += 1
            current, first = path, pages == 1
            answer = await self.with_retries(what, lambda: page(current, first))  # noqa: B023
            if answer is None:
                return None
            doc = mf.parse_document(answer.body, answer.headers.get("content-type", ""))
            if not isinstance(doc, mf.Index):
                raise ManifestError(f"{what}: the answer is not an index")
            found += doc.manifests
            path = next_link(answer.headers.get("link"), self.base)
        return found


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def _redirect_target(response: httpx.Response) -> httpx.URL:
    """Where a redirect points, resolved against the URL that sent it."""
    current = response.request.url
    location = response.headers.get("location")
    host = url_host(current)
    if not location:
        raise ProtocolError(
            f"{host} sent a redirect without Location", host=host, status=response.status_code
        )
    try:
        return current.join(location)
    except httpx.InvalidURL as exc:
        raise ProtocolError(
            f"{host} sent an invalid redirect", host=host, status=response.status_code
        ) from exc
