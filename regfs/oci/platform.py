"""Platforms: the host's, the `--platform` spelling, and choosing and naming an index's entries."""

from __future__ import annotations

import platform as host_platform

from ..errors import InvalidReferenceError
from . import manifest as mf


def host_platform_default() -> mf.Platform:
    machine = host_platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "i686": ("386", ""),
    }.get(machine, (machine, ""))
    return mf.Platform("linux", arch, variant)


def parse_platform(text: str) -> mf.Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidReferenceError(f"invalid platform {text!r} (use os/arch[/variant])")
    return mf.Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def choose_platform(index: mf.Index, want: mf.Platform) -> mf.Descriptor | None:
    images = [d for d in index.manifests if d.media_type in mf.MANIFEST_TYPES or not d.media_type]
    matching = [d for d in images if d.platform is not None and d.platform.matches(want)]
    if matching:
        return matching[0]
    if len(images) == 1:
        return images[0]
    return None


def platform_names(index: mf.Index) -> list[tuple[str, mf.Descriptor]]:
    """Directory names for an index's entries: os-arch[-variant], made unique when needed."""
    named: list[tuple[str, mf.Descriptor]] = []
    used: set[str] = set()
    for d in index.manifests:
        base = d.platform.dirname if d.platform else "unknown"
        name = base
        if name in used and d.platform and d.platform.os_version:
            name = f"{base}-{d.platform.os_version}"
        if name in used:
            name = f"{base}-{d.digest.split(':', 1)[1][:12]}"
        used.add(name)
        named.append((name, d))
    return named
