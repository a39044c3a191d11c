"""httpx.MockTransport plumbing shared by the unit tests of the registry package."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from regfs.oci import manifest as mf
from regfs.oci.reference import parse_registry
from regfs.registry.client import RegistryClient, RetryPolicy

Handler = Callable[[httpx.Request], httpx.Response]

REGISTRY = "https://registry.example"
NO_WAIT = RetryPolicy(attempts=5, base_delay=0.0, max_delay=0.01)

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": {
            "mediaType": mf.OCI_CONFIG,
            "digest": "sha256:" + "c" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


@dataclass
class Recorder:
    """A MockTransport handler that records every request it answers."""

    handler: Handler
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host]


def mock_client(
    monkeypatch: pytest.MonkeyPatch,
    handler: Handler,
    *,
    address: str = REGISTRY,
    retry: RetryPolicy = NO_WAIT,
    **kwargs: object,
) -> tuple[RegistryClient, Recorder]:
    """A RegistryClient whose real httpx clients (headers, cookie policy) talk to `handler`.

    `monkeypatch` is not needed any more (the transport is a constructor argument); it stays
    in the signature so that the callers read as before.
    """
    recorder = Recorder(handler)
    transport = httpx.MockTransport(recorder)
    client = RegistryClient(parse_registry(address), retry=retry, transport=transport, **kwargs)  # type: ignore[arg-type]
    return client, recorder


def manifest_response(
    body: bytes = MANIFEST, digest: str | None = MANIFEST_DIGEST, **headers: str
) -> httpx.Response:
    all_headers = {"Content-Type": mf.OCI_MANIFEST, **headers}
    if digest is not None:
        all_headers["Docker-Content-Digest"] = digest
    return httpx.Response(200, headers=all_headers, content=body)


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    """A streamed body (MockTransport reads a bytes body eagerly; an iterator it does not)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def cut_after(data: bytes, size: int, exc: Exception | None = None) -> AsyncIterator[bytes]:
    """A body that stops (or fails with `exc`) after `size` bytes, like a dropped connection."""
    yield data[:size]
    if exc is not None:
        raise exc
