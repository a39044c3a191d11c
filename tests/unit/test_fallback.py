"""regfs.registry.fallback: which failures of a mirror hand over, for documents and tag lists."""

from __future__ import annotations

import httpx
import pytest

from regfs.errors import (
    AuthError,
    ForbiddenURLError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    TransientError,
)
from regfs.registry.fallback import fallback_order, mirror_falls_through, via_mirrors
from tests.unit.mock_http import MANIFEST_DIGEST, Handler, Recorder, manifest_response, mock_client

MIRROR = "https://mirror.example"


@pytest.mark.parametrize(
    ("exc", "falls_through"),
    [
        (NotFoundError("404"), True),
        (RateLimitedError("429", 1.0), True),
        (TransientError("unreachable"), True),
        (AuthError("401"), True),
        (ProtocolError("bad"), True),
        (ManifestError("digest mismatch"), True),
        (ForbiddenURLError("redirect to file://"), False),
        (IntegrityError("not a registry error"), False),
        (ValueError("a bug"), False),
    ],
)
def test_mirror_falls_through(exc: Exception, falls_through: bool) -> None:
    assert mirror_falls_through(exc) is falls_through


def test_fallback_order_is_mirrors_then_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = mock_client(monkeypatch, lambda r: manifest_response(), address="https://a.example")
    b, _ = mock_client(monkeypatch, lambda r: manifest_response(), address="https://b.example")
    registry, _ = mock_client(monkeypatch, lambda r: manifest_response())
    assert fallback_order([a, b], registry) == [(a, True), (b, True), (registry, False)]
    assert fallback_order([], registry) == [(registry, False)]


async def _manifest_via(
    monkeypatch: pytest.MonkeyPatch, mirror: Handler, registry: Handler
) -> tuple[str, Recorder, Recorder]:
    mirror_client, mirror_server = mock_client(monkeypatch, mirror, address=MIRROR)
    registry_client, registry_server = mock_client(monkeypatch, registry)
    try:
        doc = await via_mirrors(
            [mirror_client], registry_client, lambda c: c.get_manifest("repo", "latest")
        )
    finally:
        await mirror_client.aclose()
        await registry_client.aclose()
    return doc.digest, mirror_server, registry_server


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    "mirror",
    [
        lambda r: httpx.Response(404),
        lambda r: httpx.Response(429),
        lambda r: httpx.Response(401),
        _unreachable,
        lambda r: manifest_response(digest="sha256:" + "1" * 64),  # a bad document
    ],
)
async def test_a_failing_mirror_falls_through(
    monkeypatch: pytest.MonkeyPatch, mirror: Handler
) -> None:
    digest, mirror_server, registry_server = await _manifest_via(
        monkeypatch, mirror, lambda r: manifest_response()
    )
    assert digest == MANIFEST_DIGEST
    assert mirror_server.requests and len(registry_server.requests) == 1


async def test_a_mirror_that_answers_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    digest, _, registry_server = await _manifest_via(
        monkeypatch, lambda r: manifest_response(), lambda r: httpx.Response(500)
    )
    assert digest == MANIFEST_DIGEST
    assert registry_server.requests == []


async def test_a_mirror_refused_by_policy_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ForbiddenURLError):
        await _manifest_via(
            monkeypatch,
            lambda r: httpx.Response(302, headers={"Location": "ftp://mirror.example/x"}),
            lambda r: manifest_response(),
        )


async def test_the_registry_answer_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFoundError) as info:
        await _manifest_via(
            monkeypatch, lambda r: httpx.Response(503), lambda r: httpx.Response(404)
        )
    assert info.value.host == "registry.example"


async def test_registry_out_of_reach_does_not_overrule_a_mirror_404(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(NotFoundError) as info:
        await _manifest_via(monkeypatch, lambda r: httpx.Response(404), _unreachable)
    assert info.value.host == "mirror.example"
    # Without a mirror's 404, a registry out of reach is what the caller hears.
    with pytest.raises(TransientError):
        await _manifest_via(monkeypatch, lambda r: httpx.Response(429), _unreachable)
