"""RegistryClient.head_manifest over httpx.MockTransport: the corners a real registry does not
produce (no Docker-Content-Digest, one that is no digest); the rest is tested against
docker-registry in tests/integration/test_pulls.py."""

from __future__ import annotations

import httpx
import pytest

from regfs.errors import InvalidReferenceError, NotFoundError
from regfs.oci import manifest as mf
from tests.unit.mock_http import MANIFEST_DIGEST, mock_client


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (MANIFEST_DIGEST, MANIFEST_DIGEST),
        (None, None),  # the registry says nothing: the caller GETs
        ("sha256:not-hex", None),
        ("", None),
    ],
)
async def test_head_answers_the_served_digest_or_none(
    monkeypatch: pytest.MonkeyPatch, served: str | None, expected: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {} if served is None else {"Docker-Content-Digest": served}
        return httpx.Response(200, headers=headers)

    client, recorder = mock_client(monkeypatch, handler)
    try:
        assert await client.head_manifest("library/hello", "latest") == expected
    finally:
        await client.aclose()
    (request,) = recorder.requests
    assert request.method == "HEAD"
    assert request.url.path == "/v2/library/hello/manifests/latest"
    assert request.headers["accept"] == mf.ACCEPT  # the same negotiation as the GET


async def test_head_of_a_missing_tag_is_not_found_and_retries_a_5xx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([503, 404])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers))

    client, recorder = mock_client(monkeypatch, handler)
    try:
        with pytest.raises(NotFoundError):
            await client.head_manifest("library/hello", "gone")
        with pytest.raises(InvalidReferenceError):
            await client.head_manifest("Library/../x", "latest")
    finally:
        await client.aclose()
    assert len(recorder.requests) == 2  # the bad name asked nothing
