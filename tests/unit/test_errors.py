"""regfs.errors: context as fields, constructors other packages call with text alone."""

from __future__ import annotations

import pytest

from regfs.errors import (
    AuthError,
    ForbiddenURLError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    RegfsError,
    RegistryError,
    TransientError,
)

REGISTRY_ERRORS = [
    RegistryError,
    NotFoundError,
    AuthError,
    TransientError,
    RateLimitedError,
    ProtocolError,
    ForbiddenURLError,
]


@pytest.mark.parametrize("kind", REGISTRY_ERRORS)
def test_text_alone_still_works(kind: type[RegistryError]) -> None:
    error = kind("something broke")
    assert str(error) == "something broke"
    assert (error.host, error.status, error.digest, error.codes) == (None, None, None, ())
    assert isinstance(error, RegfsError)


@pytest.mark.parametrize("kind", REGISTRY_ERRORS)
def test_fields(kind: type[RegistryError]) -> None:
    digest = "sha256:" + "b" * 64
    error = kind("x", host="ghcr.io", status=404, digest=digest, codes=("BLOB_UNKNOWN",))
    assert (error.host, error.status, error.digest, error.codes) == (
        "ghcr.io",
        404,
        digest,
        ("BLOB_UNKNOWN",),
    )
    assert str(error) == "x"


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        NotFoundError("x", "ghcr.io")  # type: ignore[call-arg]


def test_retry_after_stays_second_and_positional() -> None:
    assert TransientError("down").retry_after is None
    assert TransientError("down", 2.5).retry_after == 2.5
    limited = RateLimitedError(
        "slow down", 3.0, host="ghcr.io", status=429, codes=("TOOMANYREQUESTS",)
    )
    assert (limited.retry_after, limited.host, limited.status) == (3.0, "ghcr.io", 429)
    assert limited.codes == ("TOOMANYREQUESTS",)


def test_integrity_error_digest() -> None:
    assert IntegrityError("bad bytes").digest is None
    digest = "sha256:" + "c" * 64
    error = IntegrityError("bad bytes", digest=digest)
    assert error.digest == digest
    assert str(error) == "bad bytes"
