"""One exception tree for regfs. fs.py is the only place these become errno values.

RegfsError
├── InvalidReferenceError      a name, tag, digest or registry that fails the grammar (no request made)
├── ManifestError              a document that cannot be parsed or contradicts itself
├── RegistryError              something went wrong talking to a registry, mirror, CDN or foreign URL
│   ├── NotFoundError          404 / *_UNKNOWN: the thing does not exist there
│   ├── AuthError              401/403 that credentials could not fix
│   ├── TransientError         worth retrying: 408, 5xx, resets, timeouts
│   │   └── RateLimitedError   429, with the server's Retry-After
│   ├── ProtocolError          the server broke the protocol (bad Content-Range, too large, ...)
│   └── ForbiddenURLError      a foreign URL or redirect refused by policy
├── IntegrityError             bytes that do not match their digest
└── OfflineError               --offline and the thing is not cached
"""

from __future__ import annotations


class RegfsError(Exception):
    """Base of every error regfs raises on purpose."""


class InvalidReferenceError(RegfsError, ValueError):
    """A repository name, tag, digest or registry address that fails the grammar."""


class ManifestError(RegfsError):
    """A manifest or index that cannot be parsed, or contradicts itself."""


class RegistryError(RegfsError):
    """A request to a registry (or a CDN, mirror or foreign URL) failed."""


class NotFoundError(RegistryError):
    """The registry says the thing does not exist."""


class AuthError(RegistryError):
    """Access was refused and the credentials we have cannot change that."""


class TransientError(RegistryError):
    """A failure that may go away when the request is repeated."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """429 Too Many Requests."""


class ProtocolError(RegistryError):
    """The server answered in a way the protocol does not allow."""


class ForbiddenURLError(RegistryError):
    """A URL (foreign layer or redirect target) refused by policy."""


class IntegrityError(RegfsError):
    """Bytes whose digest does not match the one they were asked for by."""


class OfflineError(RegfsError):
    """--offline is set and what was asked for is not in the cache."""
