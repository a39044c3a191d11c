"""The httpx clients regfs sends with (`make_http_client`): no cookies, no environment
proxies, identity encoding, TLS verified against what the system trusts (tls.py), and one
--debug line per request (`RequestLog`).

Ranged requests (blob bodies) go out through httpx's sync HTTPTransport in worker threads
(`ThreadedTransport`; the rest stays on httpx's async transport): httpx's AsyncClient keeps
every request's policy (auth, redirects, timeouts, the --debug
log), and bodies are received off the trio thread. A response offers, besides async
iteration, `receive(n)` in its extensions (`RECEIVE`): the next n bytes of the body in one
worker-thread call, read from the socket into one buffer (a cache block) rather than chunk
by chunk through h11 (measured for 8 MiB ranges of a 1 GiB blob from the registry: 2.1-2.7
s CPU/GiB async with httpx, 1.2-2.1 with sync httpx, 0.6 this way).
"""

from __future__ import annotations

import http.cookiejar
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import h11
import httpx
import trio

from .http import describe, url_host
from .pinned import PinnedIfMarked, PublicOnly, pin_transport
from .tls import trust_context

log = logging.getLogger(__name__)

T = TypeVar("T")

# A response's extension: `await receive(n)` -> (the next n bytes of the body, fewer only
# where it ended or failed; the error that stopped it, or None).
RECEIVE = "regfs.receive"
Receive = Callable[[int], Awaitable[tuple[bytes, httpx.HTTPError | None]]]


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
    public_only: PublicOnly | None = None,
    marked_only: bool = False,
) -> httpx.AsyncClient:
    """An httpx client with regfs's policy: no cookies, no environment proxies, identity
    encoding, TLS verified against the system's trust (tls.py) and `ca_files` unless
    `insecure`, and a --debug line per request. With `public_only`, connections go only to
    addresses that rule checked (pinned.py): every request's, or with `marked_only` those
    marked pinned.PUBLIC_ONLY. `transport` replaces the network (tests); TLS options and
    `public_only` then do not apply."""
    if transport is None:
        # One trust context (or --insecure) and one set of limits for every transport.
        verify: ssl.SSLContext | bool = False if insecure else trust_context(ca_files)
        if public_only is None:
            transport = _network(verify, None)
        elif marked_only:
            transport = PinnedIfMarked(
                pinned=_network(verify, public_only), plain=_network(verify, None)
            )
        else:
            transport = _network(verify, public_only)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        headers={"User-Agent": "regfs", "Accept-Encoding": "identity"},
        trust_env=False,
        transport=RequestLog(transport),
    )


def _network(verify: ssl.SSLContext | bool, public_only: PublicOnly | None) -> RangedInThreads:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
    ranged = httpx.HTTPTransport(verify=verify, limits=limits, trust_env=False)
    other = httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
    if public_only is not None:
        pin_transport(ranged, public_only)
        pin_transport(other, public_only)
    return RangedInThreads(ranged=ThreadedTransport(ranged), other=other)


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
        counted = _CountedStream(response.stream, line, started)
        response.stream = counted
        receive = response.extensions.get(RECEIVE)
        if receive is not None:
            response.extensions[RECEIVE] = counted.counting(receive)
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

    def counting(self, receive: Receive) -> Receive:
        async def counted(size: int) -> tuple[bytes, httpx.HTTPError | None]:
            data, error = await receive(size)
            self._received += len(data)
            return data, error

        return counted

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


# -- requests in worker threads -------------------------------------------------------------


def _range_length(header: str | None) -> int:
    """How many bytes a `Range: bytes=a-b` asks for; 0 for none or any other form."""
    if header is None or not header.startswith("bytes="):
        return 0
    first, _, last = header.removeprefix("bytes=").partition("-")
    if not (first.isdigit() and last.isdigit()):
        return 0
    return int(last) - int(first) + 1


class RangedInThreads(httpx.AsyncBaseTransport):
    """Ranges of at least BULK bytes (blob bodies: nearly every byte) go through worker
    threads, the rest (manifests, tags, tokens, configs: small bodies, where latency counts)
    stays on the async transport: a thread hop per request and per chunk made `ls -R` of a
    fresh mount about 50% slower. Both are built with the same trust context, --insecure
    and limits."""

    BULK = 1 << 20

    def __init__(self, *, ranged: httpx.AsyncBaseTransport, other: httpx.AsyncBaseTransport):
        self.ranged = ranged
        self.other = other

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        bulk = _range_length(request.headers.get("range")) >= self.BULK
        return await (self.ranged if bulk else self.other).handle_async_request(request)

    async def aclose(self) -> None:
        try:
            await self.ranged.aclose()
        finally:
            await self.other.aclose()


class ThreadedTransport(httpx.AsyncBaseTransport):
    """httpx's sync HTTPTransport (its verify, limits and pool) run in worker threads: the
    trio thread only schedules, and the connection pool, TLS and h11 are httpx's own."""

    THREADS = 64  # the pool holds 32 connections; requests waiting for one need a thread too

    def __init__(self, inner: httpx.HTTPTransport) -> None:
        self.inner = inner
        # Its own threads: a stalled server must not take the ones disk and hashing work
        # runs in (trio's default limiter).
        self.threads = trio.CapacityLimiter(self.THREADS)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.SyncByteStream):
            request.stream = httpx.ByteStream(await request.aread())
        lock = threading.Lock()
        abandoned = False
        sent: httpx.Response | None = None

        def send() -> httpx.Response:
            nonlocal sent
            response = self.inner.handle_request(request)
            with lock:
                sent = response
                if abandoned:  # cancelled while we waited for the answer: nobody reads it
                    response.close()
            return response

        try:
            # A thread cannot be interrupted: on cancellation it is left to end within the
            # request's own timeouts, and closes what it got.
            response = await trio.to_thread.run_sync(
                send, abandon_on_cancel=True, limiter=self.threads
            )
        except trio.Cancelled:
            with lock:
                abandoned = True
                if sent is not None:
                    sent.close()
            raise
        stream = _ThreadedStream(response, request, self.threads)
        extensions = dict(response.extensions)
        extensions[RECEIVE] = stream.receive
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=extensions
        )

    async def aclose(self) -> None:
        self.inner.close()


class _ThreadedStream(httpx.AsyncByteStream):
    """A sync response's body, read in worker threads. When cancelled (a readahead stopped,
    a drip-feed past its deadline), the socket is shut down so the worker returns at once,
    and it is waited for: no buffer is written after the call returned."""

    def __init__(
        self, response: httpx.Response, request: httpx.Request, threads: trio.CapacityLimiter
    ) -> None:
        self._response = response
        self._threads = threads
        network = response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        self._socket = sock if isinstance(sock, socket.socket) else None
        timeout = request.extensions.get("timeout", {}).get("read")
        self._body = _Body(response, self._socket, timeout)

    async def _in_worker(self, call: Callable[[], T]) -> T:
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def work() -> T:
            try:
                return call()
            finally:
                with suppress(trio.RunFinishedError):
                    token.run_sync_soon(done.set)

        try:
            return await trio.to_thread.run_sync(
                work, abandon_on_cancel=True, limiter=self._threads
            )
        except trio.Cancelled:
            if self._socket is not None:
                with suppress(OSError):  # the base class's: an SSLSocket's would drop its state
                    socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            with trio.CancelScope(shield=True):
                await done.wait()
            raise

    async def receive(self, size: int) -> tuple[bytes, httpx.HTTPError | None]:
        return await self._in_worker(lambda: self._body.receive(size))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self._in_worker(self._body.next_chunk):
            yield chunk

    async def aclose(self) -> None:
        # Not in a thread: a finished body hands its connection back to the pool, an
        # unfinished one closes it; neither blocks.
        self._response.close()


class _Body:
    """The body of a sync httpx response, read in a worker thread. Content-Length bodies
    over HTTP/1.1 are read from the socket straight into the caller's buffer, keeping h11's
    count of what remains, so the connection goes back to the pool as if h11 had read it;
    any other body (chunked, or httpcore not as expected) goes through httpx's iteration."""

    def __init__(self, response: httpx.Response, sock: socket.socket | None, timeout: Any) -> None:
        assert isinstance(response.stream, httpx.SyncByteStream)  # from a sync transport
        self._chunks: Iterator[bytes] = iter(response.stream)
        self._leftover = b""
        self._timeout = timeout
        self._raw = _raw_reader(response, sock)
        self._drained = False  # what h11 had buffered beyond the headers was taken out
        self._got = 0

    def next_chunk(self) -> bytes:
        if self._leftover:
            chunk, self._leftover = self._leftover, b""
            return chunk
        return next(self._chunks, b"")

    def receive(self, size: int) -> tuple[bytes, httpx.HTTPError | None]:
        buffer = _buffers.take(size)
        view = memoryview(buffer)[:size]
        self._got = 0  # kept as it grows: what arrived before an error is delivered too
        try:
            if self._raw is not None:
                self._receive_raw(view)
            else:
                self._receive_chunks(view)
            error = None
        except httpx.HTTPError as exc:
            error = exc
        except h11.ProtocolError as exc:  # as httpcore maps it
            error = httpx.RemoteProtocolError(str(exc))
        try:
            return bytes(view[: self._got]), error
        finally:
            view.release()
            _buffers.give(buffer)

    def _receive_chunks(self, view: memoryview) -> None:
        while self._got < len(view) and (chunk := self.next_chunk()):
            take = min(len(chunk), len(view) - self._got)
            view[self._got : self._got + take] = chunk[:take]
            self._leftover = chunk[take:]
            self._got += take

    def _receive_raw(self, view: memoryview) -> None:
        assert self._raw is not None
        state, reader, sock = self._raw
        if not self._drained:
            self._drained = True
            parts = []
            while isinstance(event := state.next_event(), h11.Data):
                parts.append(bytes(event.data))
            self._leftover = b"".join(parts)
        self._got = min(len(self._leftover), len(view))
        view[: self._got] = self._leftover[: self._got]
        self._leftover = self._leftover[self._got :]
        if state.their_state is not h11.SEND_BODY:
            return  # the body ended within what h11 had buffered
        sock.settimeout(self._timeout)
        while self._got < len(view) and reader._remaining > 0:
            want = min(len(view) - self._got, reader._remaining)
            try:
                n = sock.recv_into(view[self._got : self._got + want])
            except TimeoutError as exc:
                raise httpx.ReadTimeout(str(exc) or "timed out") from exc
            except OSError as exc:
                raise httpx.ReadError(str(exc)) from exc
            if n == 0:
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"({reader._remaining} bytes missing)"
                )
            reader._remaining -= n
            self._got += n
        if reader._remaining == 0:
            state.next_event()  # EndOfMessage: h11 counts the body done, the pool reuses it


class _ReceiveBuffers:
    """Buffers bodies are received into, reused: a fresh one per block cost a zero-fill and
    a page fault per 4 KiB (3-6 % of a cold read's CPU in perf). A few are kept."""

    KEEP = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        with self._lock:
            for i, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._free) < self.KEEP:
                self._free.append(buffer)


_buffers = _ReceiveBuffers()


def _raw_reader(
    response: httpx.Response, sock: socket.socket | None
) -> tuple[Any, Any, Any] | None:
    """h11's state, its Content-Length reader and the socket, where httpcore is as measured
    (HTTP/1.1, a Content-Length body, a plain or TLS socket); None otherwise."""
    if sock is None:
        return None
    try:
        pooled: Any = getattr(response.stream, "_httpcore_stream")  # noqa: B009
        state = pooled._stream._connection._h11_state
        reader = state._reader
    except AttributeError:
        return None
    if (
        not isinstance(state, h11.Connection)
        or state.their_state is not h11.SEND_BODY
        or type(reader).__name__ != "ContentLengthReader"
        or not isinstance(getattr(reader, "_remaining", None), int)
    ):
        return None
    return state, reader, sock
