"""The httpx clients regfs sends with (`make_http_client`): no cookies, no environment
proxies, identity encoding, TLS verified against what the system trusts (tls.py), and one
--debug line per request (`RequestLog`).
"""

from __future__ import annotations

import http.cookiejar
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from .http import describe, url_host
from .tls import trust_context

log = logging.getLogger(__name__)


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


def make_http_client(
    *,
    ca_files: Sequence[str] = (),
    insecure: bool,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An httpx client with regfs's policy: no cookies, no environment proxies, identity
    encoding, TLS verified against the system's trust (tls.py) and `ca_files` unless
    `insecure`, and a --debug line per request. `transport` replaces the network (tests);
    TLS options then do not apply."""
    if transport is None:
        verify: ssl.SSLContext | bool = False if insecure else trust_context(ca_files)
        transport = httpx.AsyncHTTPTransport(
            verify=verify,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            trust_env=False,
        )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        headers={"User-Agent": "regfs", "Accept-Encoding": "identity"},
        trust_env=False,
        transport=RequestLog(transport),
    )


class RequestLog(httpx.AsyncBaseTransport):
    """One debug line per request once its body is done: method, host, path (never the
    query: a signed URL's signature is in it), status and bytes received (never a header
    value). Registry, token realm, CDN and foreign hosts all pass here, so --debug shows
    which host served each range."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not log.isEnabledFor(logging.DEBUG):
            return await self.inner.handle_async_request(request)
        started = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except Exception as exc:
            log.debug(
                "%s %s %s failed: %s",
                request.method,
                url_host(request.url),
                request.url.path,
                describe(exc),
            )
            raise
        line = (request.method, url_host(request.url), request.url.path, response.status_code)
        response.stream = _CountedStream(response.stream, line, started)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountedStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, line: tuple[str, str, str, int], started: float) -> None:
        self._inner = inner
        self._line = line
        self._started = started
        self._received = 0
        self._logged = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._received += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._logged:
                self._logged = True
                method, host, path, status = self._line
                log.debug(
                    "%s %s %s -> %d, %d bytes in %.2fs",
                    method,
                    host,
                    path,
                    status,
                    self._received,
                    time.monotonic() - self._started,
                )
