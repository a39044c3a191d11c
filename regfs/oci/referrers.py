"""Referrers: the manifests that refer to another one (signatures, SBOMs, attestations).

Where they are found, in the order they are listed (each digest once):
- the OCI 1.1 referrers API, `GET /v2/<repo>/referrers/<digest>` (an index); where a registry
  has none, the fallback tag `<alg>-<hex>` holding such an index;
- cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom` (cosign before OCI 1.1 referrers);
- for buildx attestations, the entries of the image's index whose
  `vnd.docker.reference.digest` annotation names the image.

Pure: what is asked of a registry, and how the answers are put together (no I/O).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from . import manifest as mf
from .reference import is_tag

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
# Marks a descriptor regfs made for a referrer found by tag: the tag it was found under.
REF_NAME = "org.opencontainers.image.ref.name"


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag of a digest: `<alg>-<hex>`, truncated as the spec says."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm[:32]}-{hexpart[:64]}"


def cosign_tags(digest: str) -> list[str]:
    """cosign's signature, attestation and SBOM tags of a digest (valid tags only)."""
    algorithm, _, hexpart = digest.partition(":")
    tags = [f"{algorithm}-{hexpart}{suffix}" for suffix in COSIGN_SUFFIXES]
    return [tag for tag in tags if is_tag(tag)]


def tag_descriptor(doc: mf.Document, tag: str) -> mf.Descriptor:
    """A descriptor for a referrer found by tag (cosign's): what a referrers list would say
    of it, and the tag it came from."""
    artifact_type = doc.artifact_type
    if not artifact_type and isinstance(doc, mf.Manifest) and doc.config is not None:
        artifact_type = doc.config.media_type  # as the referrers API reports it
    return mf.Descriptor(
        doc.media_type,
        doc.digest,
        len(doc.raw),
        annotations={**doc.annotations, REF_NAME: tag},
        artifact_type=artifact_type,
    )


def attestations_of(index: mf.Index, digest: str | None = None) -> list[mf.Descriptor]:
    """buildx's attestation entries in `index`: all of them, or those naming `digest`."""
    return [
        d
        for d in index.manifests
        if d.is_attestation and (digest is None or d.annotations.get(mf.REFERENCE_DIGEST) == digest)
    ]


def merged(*lists: Iterable[mf.Descriptor]) -> list[mf.Descriptor]:
    """The descriptors in order, each digest once (its first listing wins)."""
    found: dict[str, mf.Descriptor] = {}
    for listed in lists:
        for d in listed:
            found.setdefault(d.digest, d)
    return list(found.values())


def descriptor_json(d: mf.Descriptor) -> dict[str, Any]:
    value: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.artifact_type:
        value["artifactType"] = d.artifact_type
    if d.urls:
        value["urls"] = list(d.urls)
    if d.platform is not None:
        platform = {"architecture": d.platform.architecture, "os": d.platform.os}
        if d.platform.os_version:
            platform["os.version"] = d.platform.os_version
        if d.platform.variant:
            platform["variant"] = d.platform.variant
        value["platform"] = platform
    if d.annotations:
        value["annotations"] = dict(d.annotations)
    return value


def referrers_index(descriptors: Iterable[mf.Descriptor]) -> bytes:
    """The referrers as an OCI image index, the shape the referrers API answers with."""
    index = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_INDEX,
        "manifests": [descriptor_json(d) for d in descriptors],
    }
    return json.dumps(index, indent=2).encode() + b"\n"
