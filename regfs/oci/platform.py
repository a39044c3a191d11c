"""Platforms: the host's, the `--platform` spelling, and choosing and naming an index's entries.

Only entries that may be runnable images are platforms: not buildx's attestation manifests
(`vnd.docker.reference.type`, platform `unknown/unknown`), not entries with an artifactType.
Whether an entry really is an image is known once its manifest is read (`Manifest.is_image`).
"""

from __future__ import annotations

import platform as host_platform
import re
from collections import Counter

from ..errors import InvalidReferenceError
from . import manifest as mf

PLATFORM_SYNTAX = "os/arch[/variant][:os.version]"
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # safe in a directory name


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
    """`os/arch[/variant][:os.version]`: `linux/arm64/v8`, `windows/amd64:10.0.20348`."""
    spec, colon, version = text.partition(":")
    parts = spec.split("/")
    if (
        len(parts) not in (2, 3)
        or not all(_COMPONENT.match(p) for p in parts)
        or (colon and not _COMPONENT.match(version))
    ):
        raise InvalidReferenceError(f"invalid platform {text!r} (use {PLATFORM_SYNTAX})")
    return mf.Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "", version)


def is_platform_entry(d: mf.Descriptor) -> bool:
    """Whether an index entry may be a runnable image (or an index of them)."""
    if d.media_type and d.media_type not in mf.MANIFEST_TYPES + mf.INDEX_TYPES:
        return False
    if d.artifact_type or d.is_attestation:
        return False
    return d.platform is None or (d.platform.os, d.platform.architecture) != ("unknown", "unknown")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders os.version builds: numerically where a part is a number (10.0.20348.2402)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.split("."))


def choose_platform(index: mf.Index, want: mf.Platform) -> mf.Descriptor | None:
    """The entry the index's own directory shows: the one matching `want`, the highest
    os.version among several (the first of equals), or the only image there is."""
    images = [
        d
        for d in index.manifests
        if is_platform_entry(d) and (d.media_type in mf.MANIFEST_TYPES or not d.media_type)
    ]
    matching = [d for d in images if d.platform is not None and d.platform.matches(want)]
    if matching:
        return max(matching, key=lambda d: version_key(d.platform.os_version if d.platform else ""))
    if len(images) == 1:
        return images[0]
    return None


def platform_names(index: mf.Index) -> list[tuple[str, mf.Descriptor]]:
    """Directory names for an index's platform entries: os-arch[-variant]. When several
    entries share that, each is named by its os.version (Windows builds:
    windows-amd64-10.0.20348.2402), or by its digest where that does not tell them apart:
    no entry gets the bare name only for coming first."""
    entries = [d for d in index.manifests if is_platform_entry(d)]
    bases = [_base(d) for d in entries]
    shared = Counter(bases)
    versions = Counter((base, _version(d)) for base, d in zip(bases, entries, strict=True))
    named: list[tuple[str, mf.Descriptor]] = []
    used: set[str] = set()
    for base, d in zip(bases, entries, strict=True):
        name, version = base, _version(d)
        if shared[base] > 1:
            if version and versions[(base, version)] == 1 and _COMPONENT.match(version):
                name = f"{base}-{version}"
            else:
                name = _by_digest(base, d)
        if name in used:
            name = _by_digest(base, d)
        if name in used:
            continue  # the same entry twice
        used.add(name)
        named.append((name, d))
    return named


def _base(d: mf.Descriptor) -> str:
    name = d.platform.dirname if d.platform else "unknown"
    # A name from the registry must be one directory name: no "/" or NUL, not "..".
    return name if _COMPONENT.match(name) else "unknown"


def _version(d: mf.Descriptor) -> str:
    return d.platform.os_version if d.platform else ""


def _by_digest(base: str, d: mf.Descriptor) -> str:
    return f"{base}-{d.digest.split(':', 1)[1][:12]}"
