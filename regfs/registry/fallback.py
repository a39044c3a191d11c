"""Pull-through mirrors before the registry: the one rule for which failures hand over."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..errors import ManifestError, NotFoundError, RegistryError, TransientError
from .client import RegistryClient

log = logging.getLogger(__name__)
T = TypeVar("T")


async def via_mirrors(
    mirrors: Sequence[RegistryClient],
    registry: RegistryClient,
    call: Callable[[RegistryClient], Awaitable[T]],
) -> T:
    """Ask each pull-through mirror in turn, then the registry itself.

    A mirror that fails in any way (unreachable, 404, 429, a document not matching its
    digest) falls through to the next; the registry's own answer or error is final,
    except that a registry out of reach does not overrule a mirror's 404.
    """
    not_found: NotFoundError | None = None
    for mirror in mirrors:
        try:
            return await call(mirror)
        except (RegistryError, ManifestError) as exc:
            log.info("mirror %s: %s; falling through", mirror.address, exc)
            if isinstance(exc, NotFoundError) and not_found is None:
                not_found = exc
    try:
        return await call(registry)
    except TransientError:
        if not_found is not None:
            raise not_found from None
        raise
