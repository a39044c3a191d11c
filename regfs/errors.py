"""One exception tree for regfs. vfs/fuse.py (`errno_for`) is the only place these become errno
values.

RegfsError
├── InvalidReferenceError      a name, tag, digest or registry that fails the grammar (no request made)
├── ManifestError              a document that cannot be parsed or contradicts itself
├── RegistryError              something went wrong talking to a registry, mirror, CDN or foreign URL
│   │                          (.host, .status, .digest, .codes: what is known of where and why)
│   ├── NotFoundError          404 / *_UNKNOWN: the thing does not exist there
│   │   └── RefusedRegistryError   a registry name a multi-registry mount will not connect
│   │                          to (.reason: blocked, not a host[:port], non-public address)
│   ├── AuthError              401/403 that credentials could not fix
│   │   └── UntrustedRegistryCertificateError   (see UntrustedCertificateError below)
│   ├── TransientError         worth retrying: 408, 5xx, resets, timeouts (.retry_after)
│   │   └── RateLimitedError   429, with the server's Retry-After (also: waiting it out is
│   │                          more than the operation may, a sustained rate limit)
│   ├── ProtocolError          the server broke the protocol (bad Content-Range, too large, ...)
│   ├── ForbiddenURLError      a foreign URL or redirect refused by policy
│   └── UntrustedCertificateError   a TLS certificate not trusted (.reason), never retried:
│       │                          of a CDN or foreign host (EIO)
│       └── UntrustedRegistryCertificateError   of the registry or its token realm; also
│                                  an AuthError (EACCES)
├── IntegrityError             bytes that do not match their digest (.digest)
├── OfflineError               --offline and the thing is not cached
└── ConfigError                an option, environment variable or file it names that is unusable
                               (registries.conf: bad TOML or a bad value, naming the file)

The fields are context for callers and logs; the message stays complete on its own, so
`raise NotFoundError("text")` is as good as ever where nothing more is known.
"""

from __future__ import annotations


class RegfsError(Exception):
    """Base of every error regfs raises on purpose."""


class InvalidReferenceError(RegfsError, ValueError):
    """A repository name, tag, digest or registry address that fails the grammar."""


class ManifestError(RegfsError):
    """A manifest or index that cannot be parsed, or contradicts itself."""


class RegistryError(RegfsError):
    """A request to a registry (or a CDN, mirror or foreign URL) failed.

    host: host[:port] that answered (or did not); status: its HTTP status, if one came;
    digest: the blob or manifest asked for; codes: the registry's error codes from the JSON
    body (e.g. "BLOB_UNKNOWN", "TOOMANYREQUESTS"), in the order it sent them; reason: the
    cause in its own words where one is known (a TLS verifier's, a refused registry's).
    """

    def __init__(
        self,
        message: str = "",
        *,
        host: str | None = None,
        status: int | None = None,
        digest: str | None = None,
        codes: tuple[str, ...] = (),
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.host = host
        self.status = status
        self.digest = digest
        self.codes = codes
        self.reason = reason


class NotFoundError(RegistryError):
    """The registry says the thing does not exist."""


class RefusedRegistryError(NotFoundError):
    """A registry name that a multi-registry mount refuses before any request: blocked in
    registries.conf, not a valid host[:port], or resolving to a non-public address without
    being configured or allowed (--allow-registry). To a user it does not exist (ENOENT);
    `reason` says why, for the log."""


class AuthError(RegistryError):
    """Access was refused and the credentials we have cannot change that."""


class TransientError(RegistryError):
    """A failure that may go away when the request is repeated."""

    def __init__(
        self,
        message: str = "",
        retry_after: float | None = None,
        *,
        host: str | None = None,
        status: int | None = None,
        digest: str | None = None,
        codes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, host=host, status=status, digest=digest, codes=codes)
        self.retry_after = retry_after  # seconds the server asked us to wait, if it did


class RateLimitedError(TransientError):
    """429 Too Many Requests."""


class ProtocolError(RegistryError):
    """The server answered in a way the protocol does not allow."""


class ForbiddenURLError(RegistryError):
    """A URL (foreign layer or redirect target) refused by policy."""


class UntrustedCertificateError(RegistryError):
    """A TLS certificate that does not verify against what regfs trusts (the system store,
    SSL_CERT_FILE / SSL_CERT_DIR, --ca-cert or --foreign-ca-cert). Not transient: asking
    again cannot change the answer. `reason` is the verifier's own words ("self-signed
    certificate in certificate chain", "Hostname mismatch, ...").

    As such, from a CDN or a foreign host: the blob cannot be read (EIO)."""


class UntrustedRegistryCertificateError(UntrustedCertificateError, AuthError):
    """The registry's, or its token realm's, certificate is not trusted: access is refused,
    as for credentials that do not work (EACCES)."""


class IntegrityError(RegfsError):
    """Bytes whose digest does not match the one they were asked for by."""

    def __init__(self, message: str = "", *, digest: str | None = None) -> None:
        super().__init__(message)
        self.digest = digest


class OfflineError(RegfsError):
    """--offline is set and what was asked for is not in the cache."""


class ConfigError(RegfsError, ValueError):
    """An option, an environment variable, or a file one of them names, that cannot be used
    (a CA file that holds no certificate, ...)."""
