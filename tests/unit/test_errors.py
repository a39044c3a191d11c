"""regfs.errors: context as fields, constructors other packages call with text alone."""

from __future__ import annotations

import errno

import pytest

from regfs.errors import (
    AuthError,
    ConfigError,
    ForbiddenURLError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    RegfsError,
    RegistryError,
    TransientError,
    UntrustedCertificateError,
    UntrustedRegistryCertificateError,
)
from regfs.vfs.fuse import errno_for

REGISTRY_ERRORS = [
    RegistryError,
    NotFoundError,
    AuthError,
    TransientError,
    RateLimitedError,
    ProtocolError,
    ForbiddenURLError,
    UntrustedCertificateError,
    UntrustedRegistryCertificateError,
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


def test_untrusted_certificates_by_who_presented_them() -> None:
    reason = "self-signed certificate in certificate chain"
    registry = UntrustedRegistryCertificateError("x", reason=reason, host="registry.example")
    cdn = UntrustedCertificateError("x", reason=reason, host="cdn.example")
    # The registry's or its realm's: access refused, as for credentials that do not work.
    assert isinstance(registry, AuthError) and isinstance(registry, UntrustedCertificateError)
    assert errno_for(registry) == errno.EACCES
    # A CDN's or a foreign host's: the blob cannot be read. Neither is worth asking again.
    assert not isinstance(cdn, AuthError)
    assert errno_for(cdn) == errno.EIO
    assert not isinstance(registry, TransientError) and not isinstance(cdn, TransientError)
    assert (registry.reason, cdn.reason, cdn.host) == (reason, reason, "cdn.example")
    assert UntrustedCertificateError("text alone").reason == ""


def test_a_sustained_rate_limit_is_eagain() -> None:
    assert errno_for(RateLimitedError("slow down", 3600.0, host="ghcr.io")) == errno.EAGAIN


def test_config_error_is_bad_usage() -> None:
    error = ConfigError("CA file /x: no such file")
    assert isinstance(error, RegfsError) and isinstance(error, ValueError)
