"""regfs.registry.http: bounded bodies (read_capped and its inflater), Retry-After, errors."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from regfs.errors import ProtocolError, TransientError
from regfs.registry.http import read_capped
from tests.unit.mock_http import chunks

# --------------------------------------------------------------------------------------------
# read_capped


async def _capped(
    body: bytes, limit: int, *, encoding: str | None = None, chunk: int | None = None
) -> bytes:
    headers = {"content-encoding": encoding} if encoding else {}

    def handler(request: httpx.Request) -> httpx.Response:
        # An async iterator keeps MockTransport from reading (and decoding) the body eagerly.
        return httpx.Response(200, headers=headers, content=chunks(body, chunk or 64 << 10))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("GET", "https://blobs.example/thing")
        response = await client.send(request, stream=True)
        try:
            return await read_capped(response, limit)
        finally:
            await response.aclose()


async def test_read_capped_identity_exact_limit() -> None:
    assert await _capped(b"x" * 100, 100) == b"x" * 100


async def test_read_capped_identity_over_limit_names_host_and_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        await _capped(b"x" * 101, 100)
    assert "blobs.example" in str(info.value)
    assert "100" in str(info.value)


async def test_read_capped_identity_streamed_without_length() -> None:
    assert await _capped(b"abc" * 10, 30, chunk=7) == b"abc" * 10
    with pytest.raises(ProtocolError):
        await _capped(b"abc" * 10, 29, chunk=7)


async def test_read_capped_explicit_identity_encoding() -> None:
    assert await _capped(b"plain", 5, encoding="identity") == b"plain"


async def test_read_capped_gzip() -> None:
    data = b"hello gzip " * 100
    assert await _capped(gzip.compress(data), len(data), encoding="gzip") == data
    assert await _capped(gzip.compress(data), len(data), encoding="x-gzip", chunk=1) == data
    with pytest.raises(ProtocolError):
        await _capped(gzip.compress(data), len(data) - 1, encoding="gzip")


async def test_read_capped_gzip_multi_member_and_padding() -> None:
    body = gzip.compress(b"one ") + gzip.compress(b"two") + b"\0\0\0"
    assert await _capped(body, 100, encoding="gzip", chunk=5) == b"one two"


class _DecompressSpy:
    """Wraps zlib decompress objects to record how much each step produced."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.steps: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        spy = self

        class Wrapped:
            def __init__(self) -> None:
                self.inner = spy.real(*args, **kwargs)

            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                assert max_length > 0, "unbounded inflation step"
                out: bytes = self.inner.decompress(data, max_length)
                spy.steps.append(len(out))
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

        return Wrapped()


async def test_read_capped_gzip_bomb_is_stopped_without_inflating_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = gzip.compress(bytes(10 << 20), compresslevel=9)
    assert len(bomb) < 20 << 10
    spy = _DecompressSpy(zlib.decompressobj)
    monkeypatch.setattr(zlib, "decompressobj", spy)
    limit = 1 << 20
    with pytest.raises(ProtocolError, match="limit"):
        await _capped(bomb, limit, encoding="gzip")
    assert spy.steps, "the body was not inflated through zlib.decompressobj"
    assert max(spy.steps) <= limit + 1
    assert sum(spy.steps) <= limit + 1  # stopped as soon as the limit was passed


async def test_read_capped_deflate_zlib_wrapped_and_raw() -> None:
    data = b"deflated " * 50
    assert await _capped(zlib.compress(data), 1000, encoding="deflate") == data
    raw = zlib.compressobj(wbits=-15)
    raw_body = raw.compress(data) + raw.flush()
    assert await _capped(raw_body, 1000, encoding="deflate", chunk=1) == data
    with pytest.raises(ProtocolError):
        await _capped(zlib.compress(data), len(data) - 1, encoding="deflate")


async def test_read_capped_unknown_or_stacked_encoding() -> None:
    with pytest.raises(ProtocolError, match="br"):
        await _capped(b"whatever", 100, encoding="br")
    with pytest.raises(ProtocolError):
        await _capped(b"whatever", 100, encoding="gzip, gzip")


async def test_read_capped_corrupt_and_truncated_gzip() -> None:
    with pytest.raises(ProtocolError, match="corrupt"):
        await _capped(b"\x1f\x8b\x08\x00garbage-garbage-garbage", 100, encoding="gzip")
    whole = gzip.compress(b"some data " * 100)
    with pytest.raises(ProtocolError, match="truncated"):
        await _capped(whole[: len(whole) // 2], 10_000, encoding="gzip")


async def test_read_capped_empty_gzip_body() -> None:
    assert await _capped(b"", 10, encoding="gzip") == b""


async def test_read_capped_on_an_already_read_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 10)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.get("https://x.example/")
        assert await read_capped(response, 10) == b"x" * 10
        with pytest.raises(ProtocolError):
            await read_capped(response, 9)


async def test_read_capped_maps_transport_errors() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=failing())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.send(client.build_request("GET", "https://x.example/"), stream=True)
        with pytest.raises(TransientError):
            await read_capped(response, 100)
        await response.aclose()
