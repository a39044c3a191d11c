"""HTTP helpers shared by every request regfs makes.

- how a host is named in messages, errors and stats (`url_host`, `response_host`);
- what counts as the same origin (`same_origin`), for credentials and Link headers;
- Retry-After (`parse_retry_after`): seconds, fractional seconds or an HTTP date;
  Content-Range (`parse_content_range`);
- bodies read into memory are capped after content decoding (`read_capped`, `read_small`);
- status and transport failures as regfs errors (`status_error`, `transport_error`; an
  untrusted certificate by who presented it, `Peer`);
- the socket read size (`tune_read_size`). The httpx clients themselves are built in
  httpclient.py.
"""

from __future__ import annotations

import email.utils
import enum
import json
import logging
import math
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from ..errors import (
    AuthError,
    ForbiddenURLError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    RegistryError,
    TransientError,
    UntrustedCertificateError,
    UntrustedRegistryCertificateError,
)
from .tls import verification_failure

log = logging.getLogger(__name__)

MAX_SMALL_BODY = 1 << 20  # token and error bodies
READ_NUM_BYTES = 256 * 1024
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# --------------------------------------------------------------------------------------------
# Names and origins


def url_host(url: httpx.URL) -> str:
    """host[:port] of a URL: with the port, since that is what tells two registries apart."""
    return url.netloc.decode("ascii", "replace") or "unknown host"


def response_host(response: httpx.Response) -> str:
    """The host a response came from (`url_host` of its request)."""
    try:
        return url_host(response.request.url)
    except RuntimeError:  # a Response built without a request
        return "unknown host"


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Scheme, host and port all equal (httpx leaves a default port out of both)."""
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


# --------------------------------------------------------------------------------------------
# Retry-After

_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds (fractions too, as some servers
    send them) or an HTTP date, which counts from `now` (default: the wall clock) and is 0 if
    past. None for anything else: empty, negative, inf/nan, garbage."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)", re.ASCII)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, complete length or None for "*") of a 206's ``Content-Range: bytes
    a-b/n``; None for anything else, a last byte before the first, or a last byte at or past
    the complete length."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


# --------------------------------------------------------------------------------------------
# Bounded bodies


@dataclass(frozen=True)
class SmallResponse:
    """A response whose body was read into memory (capped): documents, tag pages, errors."""

    status: int
    headers: httpx.Headers
    url: httpx.URL
    body: bytes

    @property
    def host(self) -> str:
        return url_host(self.url)


async def read_small(response: httpx.Response, limit: int) -> SmallResponse:
    """Read a streamed response's body (at most `limit` bytes, see read_capped)."""
    body = await read_capped(response, limit)
    return SmallResponse(response.status_code, response.headers, response.request.url, body)


async def drain_error(response: httpx.Response) -> SmallResponse:
    """Read an error answer's body, at most MAX_SMALL_BODY: its codes say what went wrong, and
    a drained connection can be reused. A body that cannot be read (too large, corrupt, cut
    off) counts as empty: the status is the answer."""
    try:
        body = await read_capped(response, MAX_SMALL_BODY)
    except (ProtocolError, TransientError) as exc:
        log.debug("error body from %s not read: %s", response_host(response), exc)
        body = b""
    return SmallResponse(response.status_code, response.headers, response.request.url, body)


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Read a streamed response body, at most `limit` bytes after content decoding.

    The response must have been opened with ``client.send(..., stream=True)``. gzip and deflate
    are inflated here, step by step, so that no step produces more than what is still allowed
    plus one byte: a small compressed body cannot make us hold a large decoded one. More than
    `limit` decoded bytes, an unknown or stacked encoding, or a corrupt or truncated compressed
    body raise ProtocolError; a transport failure while reading raises TransientError.
    """
    host = response_host(response)
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
        raise TransientError(
            f"reading the response body from {host} failed: {exc}", host=host
        ) from exc
    if inflater is not None:
        inflater.finish()
    return b"".join(parts)


def _too_large(host: str, limit: int) -> ProtocolError:
    return ProtocolError(
        f"response body from {host} is larger than the limit of {limit} bytes", host=host
    )


def _inflater_for(content_encoding: str, host: str) -> _Inflater | None:
    """The content-encoding guard: identity, or exactly one of gzip and deflate."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise ProtocolError(
            f"response from {host} uses stacked content encodings {codings!r}", host=host
        )
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _Inflater("gzip", host)
    if coding == "deflate":
        return _Inflater("deflate", host)
    raise ProtocolError(
        f"response from {host} uses unsupported content encoding {coding!r}", host=host
    )


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
                raise ProtocolError(
                    f"corrupt {self._coding} body from {self._host}", host=self._host
                ) from exc
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
            raise ProtocolError(f"truncated {self._coding} body from {self._host}", host=self._host)

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
# Failures as regfs errors

_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)


def error_codes(body: bytes) -> tuple[str, ...]:
    """The codes of a distribution error body, ``{"errors": [{"code": "BLOB_UNKNOWN"}, ...]}``.

    Only plain identifiers are kept: they go into messages and logs, the server's free text
    does not.
    """
    try:
        errors = json.loads(body).get("errors") or []
        return tuple(
            code
            for e in errors
            if isinstance(e, dict)
            and isinstance(code := e.get("code"), str)
            and _ERROR_CODE.fullmatch(code)
        )
    except (ValueError, AttributeError, TypeError):
        return ()


def status_error(response: SmallResponse, what: str, *, digest: str | None = None) -> RegistryError:
    """The error for a non-success answer, with its host, status and the body's error codes."""
    status, host = response.status, response.host
    codes = error_codes(response.body) if response.body else ()
    where = f"{what}: {host} answered {status}" + (f" ({', '.join(codes)})" if codes else "")
    context: dict[str, Any] = {"host": host, "status": status, "digest": digest, "codes": codes}
    if status == 404:
        return NotFoundError(where, **context)
    if status in (401, 403):
        return AuthError(where, **context)
    if status in RETRYABLE_STATUS:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        kind = RateLimitedError if status == 429 else TransientError
        return kind(where, retry_after, **context)
    return ProtocolError(where, **context)


class Peer(enum.Enum):
    """Who a request went to, which decides what an untrusted certificate means and how
    the user can fix it."""

    REGISTRY = "registry"  # the registry or a mirror: access refused (EACCES)
    REALM = "token realm"  # the registry's token server: the same
    CDN = "CDN"  # where the registry redirected a blob: the blob cannot be read (EIO)
    FOREIGN = "foreign host"  # a foreign layer's URL or a redirect from it: the same

    @property
    def trust_hint(self) -> str:
        option = "--foreign-ca-cert" if self is Peer.FOREIGN else "--ca-cert (or --insecure)"
        return f"trust its CA in the system store, SSL_CERT_FILE or SSL_CERT_DIR, or with {option}"


def in_context(what: str, exc: BaseException) -> str:
    """`exc`'s message led by `what`, unless it already is: messages are built with the
    request's name, and wrapping them again doubled it ("manifest a:b: manifest a:b: ...")."""
    text = str(exc) or type(exc).__name__
    return text if text.startswith(what) else f"{what}: {text}"


def describe(exc: BaseException) -> str:
    """An exception's type and the first message along its causes: on trio, httpx's
    ConnectError and ReadError often carry none of their own."""
    seen: BaseException | None = exc
    for _ in range(12):
        if seen is None:
            break
        text = str(seen).strip()
        if text:
            return f"{type(exc).__name__}: {text}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def transport_error(
    exc: httpx.HTTPError,
    what: str,
    *,
    host: str | None = None,
    digest: str | None = None,
    peer: Peer = Peer.REGISTRY,
) -> RegistryError:
    """The error for a request that got no answer (or a broken one) from `host`."""
    where = host or "unknown host"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ForbiddenURLError(f"{what}: {exc}", host=host, digest=digest)
    reason = verification_failure(exc) if isinstance(exc, httpx.ConnectError) else None
    if reason is not None:
        kind = (
            UntrustedRegistryCertificateError
            if peer in (Peer.REGISTRY, Peer.REALM)
            else UntrustedCertificateError
        )
        return kind(
            f"{what}: TLS certificate of {peer.value} {where} not trusted: {reason}; "
            f"{peer.trust_hint}",
            reason=reason,
            host=host,
            digest=digest,
        )
    if isinstance(exc, httpx.DecodingError):
        return ProtocolError(f"{what}: {where}: {describe(exc)}", host=host, digest=digest)
    return TransientError(f"{what}: {where}: {describe(exc)}", host=host, digest=digest)


# --------------------------------------------------------------------------------------------
# Sockets


def tune_read_size() -> None:
    """Read sockets 256 KiB at a time instead of httpcore's 64 KiB: fewer trips through the
    event loop for multi-megabyte ranges (measured in scripts/bench). Called by the mount."""
    httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = READ_NUM_BYTES
