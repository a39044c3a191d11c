"""Pull-through mirrors before the registry: the one rule for which failures hand over.

Documents and tag lists go through `via_mirrors`; blobs (`BlobSource`) walk the same
`fallback_order` with the same `mirror_falls_through`, then go on to a foreign layer's URLs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..errors import ForbiddenURLError, ManifestError, NotFoundError, RegistryError, TransientError
from .client import RegistryClient

log = logging.getLogger(__name__)
T = TypeVar("T")


def mirror_falls_through(exc: BaseException) -> bool:
    """Whether a mirror's failure hands over to the next place.

    Any failure to serve does: unreachable, 404, 429, refused credentials, a document not
    matching its digest. A refusal by policy (ForbiddenURLError: a redirect to a scheme or
    host we do not fetch) does not: it is a verdict on where the mirror sent us, reported
    rather than hidden behind the next place.
    """
    return isinstance(exc, RegistryError | ManifestError) and not isinstance(exc, ForbiddenURLError)


def fallback_order(
    mirrors: Sequence[RegistryClient], registry: RegistryClient
) -> list[tuple[RegistryClient, bool]]:
    """Where to ask, in order: each mirror (True: it is a mirror), then the registry (False)."""
    return [(mirror, True) for mirror in mirrors] + [(registry, False)]


async def via_mirrors(
    mirrors: Sequence[RegistryClient],
    registry: RegistryClient,
    call: Callable[[RegistryClient], Awaitable[T]],
) -> T:
    """Ask each pull-through mirror in turn, then the registry itself.

    A mirror's failure falls through to the next place when `mirror_falls_through`; the
    registry's own answer or error is final, except that a registry out of reach does not
    overrule a mirror's 404. (Blobs keep retrying a registry out of reach instead: a blob a
    manifest names exists, and a read of it fails with EIO, not ENOENT.)
    """
    mirror_not_found: NotFoundError | None = None
    for client, is_mirror in fallback_order(mirrors, registry):
        try:
            return await call(client)
        except (RegistryError, ManifestError) as exc:
            if is_mirror and mirror_falls_through(exc):
                log.info("mirror %s: %s; falling through", client.address, exc)
                if isinstance(exc, NotFoundError) and mirror_not_found is None:
                    mirror_not_found = exc
                continue
            if not is_mirror and isinstance(exc, TransientError) and mirror_not_found is not None:
                raise mirror_not_found from None
            raise
    raise AssertionError("fallback_order always ends with the registry")
