"""Manifests and indexes: media types, frozen values and parsing (no I/O).

A document is checked against itself here: its media type must agree with its shape, and a
document with both `manifests` and `layers` is rejected, so nothing ambiguous reaches the tree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError
from .reference import is_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYOUT_VERSION = "1.0.0"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
# Sent as Accept on every manifest request: without it some registries (MCR among them)
# answer with schema 1.
ACCEPT = ", ".join(
    [*INDEX_TYPES, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1]
)

# What makes a manifest an image: its config is one of these and its layers are tars.
IMAGE_CONFIG_TYPES = (DOCKER_CONFIG, OCI_CONFIG)
OCI_EMPTY = "application/vnd.oci.empty.v1+json"  # the `{}` config of OCI 1.1 artifacts

# How buildx attaches attestations to an index's images: entries annotated with these.
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
CREATED_ANNOTATION = "org.opencontainers.image.created"

MAX_MANIFEST_BYTES = 4 << 20

# A tar, perhaps compressed, at the end of a media type: `….tar`, `….tar+gzip`,
# `….tar.gzip` (Docker), `….tar+zstd`, `application/x-tar`.
_TAR_TYPE = re.compile(r"[./+-]tar(?:[.+](gzip|gz|zstd|zst))?$")
_TAR_EXTENSION = {
    None: "tar",
    "gzip": "tar.gz",
    "gz": "tar.gz",
    "zstd": "tar.zst",
    "zst": "tar.zst",
}


def blob_extension(media_type: str) -> str:
    """A blob file's extension by its media type: tar, tar.gz or tar.zst for tars, json for
    JSON (`application/json`, `…+json`), "" (the bare digest) for anything else."""
    essence = media_type.split(";")[0].strip().lower()
    tar = _TAR_TYPE.search(essence)
    if tar is not None:
        return _TAR_EXTENSION[tar.group(1)]
    if essence == "application/json" or essence.endswith("+json"):
        return "json"
    return ""


def blob_filename(descriptor: Descriptor) -> str:
    """`<digest>.<ext>`, or the bare digest when the media type says no extension."""
    extension = blob_extension(descriptor.media_type)
    return f"{descriptor.digest}.{extension}" if extension else descriptor.digest


def config_filename(media_type: str) -> str:
    """config.json for a JSON config (every image's); `config[.<ext>]` for other artifacts'."""
    extension = blob_extension(media_type)
    return f"config.{extension}" if extension else "config"


def is_layer_type(media_type: str) -> bool:
    """Whether a layer descriptor's media type is a filesystem layer (a tar). An absent
    media type is given the benefit of the doubt."""
    return not media_type or blob_extension(media_type).startswith("tar")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @property
    def dirname(self) -> str:
        """`os-arch[-variant]` as shown under platforms/."""
        return "-".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, want: Platform) -> bool:
        """Whether this entry is what `want` asks for: a wanted variant must match, and a
        wanted os.version (`10.0.20348`) matches that version or any build of it."""
        if (self.os, self.architecture) != (want.os, want.architecture):
            return False
        if want.variant and _variant(self) != _variant(want):
            return False
        version = want.os_version
        return (
            not version or self.os_version == version or self.os_version.startswith(f"{version}.")
        )


def _variant(platform: Platform) -> str:
    # arm64 means arm64/v8: indexes often omit the variant an arm64 host asks for.
    if platform.architecture == "arm64" and not platform.variant:
        return "v8"
    return platform.variant


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str = ""  # OCI 1.1: in an index or a referrers list

    @property
    def is_foreign(self) -> bool:
        return "foreign" in self.media_type or "nondistributable" in self.media_type

    @property
    def is_attestation(self) -> bool:
        """An index entry that buildx attached to another entry (provenance, SBOM)."""
        return REFERENCE_TYPE in self.annotations


@dataclass(frozen=True)
class Manifest:
    media_type: str
    raw: bytes
    digest: str
    config: Descriptor | None  # None for schema 1
    layers: tuple[Descriptor, ...]
    schema1_config: bytes | None = None  # v1Compatibility of the top layer, for schema 1
    artifact_type: str = ""
    subject: Descriptor | None = None  # OCI 1.1: the manifest this one refers to
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        """A runnable image, not an artifact: schema 1, or an image config, no artifactType,
        and tar layers. Cosign signatures and buildx attestations use the image config's
        media type with JSON layers; Helm charts, SBOMs and the like have their own config
        type or an artifactType."""
        if self.config is None:
            return True
        return (
            not self.artifact_type
            and self.config.media_type in IMAGE_CONFIG_TYPES
            and all(is_layer_type(d.media_type) for d in self.layers)
        )


@dataclass(frozen=True)
class Index:
    media_type: str
    raw: bytes
    digest: str
    manifests: tuple[Descriptor, ...]
    artifact_type: str = ""
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


Document = Manifest | Index


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


def _descriptor(value: Any, what: str) -> Descriptor:
    obj = _object(value, what)
    media_type = obj.get("mediaType", "")
    digest = obj.get("digest")
    size = obj.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) or not is_digest(digest):
        raise ManifestError(f"{what}: missing or invalid mediaType/digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what}: invalid size")
    # `null` means absent; any other non-list (a falsy "" or {} included) is an error.
    urls = obj.get("urls")
    urls = [] if urls is None else urls
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{what}: invalid urls")
    platform = None
    if "platform" in obj:
        p = _object(obj["platform"], f"{what}.platform")
        os_name, arch = p.get("os"), p.get("architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            raise ManifestError(f"{what}: invalid platform")
        platform = Platform(os_name, arch, str(p.get("variant", "")), str(p.get("os.version", "")))
    return Descriptor(
        media_type,
        digest,
        size,
        tuple(urls),
        platform,
        _annotations(obj, what),
        _artifact_type(obj, what),
    )


def _annotations(obj: Mapping[str, Any], what: str) -> dict[str, str]:
    annotations = obj.get("annotations")
    annotations = {} if annotations is None else annotations
    if not isinstance(annotations, dict):
        raise ManifestError(f"{what}: invalid annotations")
    return annotations


def _artifact_type(obj: Mapping[str, Any], what: str) -> str:
    artifact_type = obj.get("artifactType")
    if artifact_type is None:
        return ""
    if not isinstance(artifact_type, str):
        raise ManifestError(f"{what}: invalid artifactType")
    return artifact_type


def _subject(obj: Mapping[str, Any]) -> Descriptor | None:
    return None if obj.get("subject") is None else _descriptor(obj["subject"], "subject")


def _b64url(text: object) -> bytes:
    if not isinstance(text, str):
        raise ManifestError("schema 1 signature: not base64 text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ManifestError("schema 1 signature: bad base64") from exc


def schema1_payload(raw: bytes) -> bytes:
    """The signed bytes of a schema 1 JWS manifest: its digest is taken over these.

    Each signature's protected header says how long the payload is and what its tail was
    before the `signatures` key was spliced in.
    """
    doc = _object(_loads(raw), "manifest")
    signatures = doc.get("signatures")
    if not signatures:
        return raw
    if not isinstance(signatures, list):
        raise ManifestError("schema 1: signatures is not a list")
    protected = _object(
        _loads(_b64url(_object(signatures[0], "signature").get("protected", ""))), "protected"
    )
    length, tail = protected.get("formatLength"), protected.get("formatTail")
    if not isinstance(length, int) or not isinstance(tail, str) or not 0 < length <= len(raw):
        raise ManifestError("schema 1: bad protected header")
    return raw[:length] + _b64url(tail)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past Python's stack
        raise ManifestError(f"not valid JSON: {exc}") from exc


def document_digest(raw: bytes, media_type: str, algorithm: str = "sha256") -> str:
    """The content digest of a document as served (schema 1 signed: of its payload)."""
    if media_type == DOCKER_SCHEMA1_SIGNED or (
        media_type in ("", "application/json") and b'"signatures"' in raw
    ):
        return digest_of(schema1_payload(raw), algorithm)
    return digest_of(raw, algorithm)


def parse_document(raw: bytes, content_type: str = "", digest: str | None = None) -> Document:
    """Parse a manifest or index; `content_type` is the served Content-Type (may be empty)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"document of {len(raw)} bytes exceeds {MAX_MANIFEST_BYTES}")
    doc = _object(_loads(raw), "document")
    content_type = content_type.split(";")[0].strip()
    declared = doc.get("mediaType", "")
    if not isinstance(declared, str):
        raise ManifestError("mediaType is not a string")
    schema = doc.get("schemaVersion")
    if isinstance(schema, bool):  # True == 1 in Python, not in JSON
        schema = None
    if "manifests" in doc and ("layers" in doc or "fsLayers" in doc):
        raise ManifestError("document has both manifests and layers")
    if schema == 1:
        media_type = DOCKER_SCHEMA1_SIGNED if "signatures" in doc else DOCKER_SCHEMA1
        if declared and declared not in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
            raise ManifestError(f"schema 1 document declares {declared}")
    elif schema == 2:
        media_type = declared or _shape_type(doc, content_type)
    else:
        raise ManifestError(f"unsupported schemaVersion {schema!r}")
    # A Content-Type that names another kind of document contradicts the body.
    if content_type in MANIFEST_TYPES + INDEX_TYPES and (content_type in INDEX_TYPES) != (
        media_type in INDEX_TYPES
    ):
        raise ManifestError(f"Content-Type {content_type} contradicts a {media_type} body")
    if digest is None:
        digest = document_digest(raw, media_type)
    if media_type in INDEX_TYPES:
        if "manifests" not in doc:
            raise ManifestError(f"{media_type} without manifests")
        entries = doc["manifests"]
        if not isinstance(entries, list):
            raise ManifestError("manifests is not a list")
        manifests = tuple(_descriptor(m, f"manifests[{i}]") for i, m in enumerate(entries))
        return Index(
            media_type,
            raw,
            digest,
            manifests,
            _artifact_type(doc, "index"),
            _subject(doc),
            _annotations(doc, "index"),
        )
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        if "layers" not in doc or "config" not in doc:
            raise ManifestError(f"{media_type} without config or layers")
        layers = doc["layers"]
        if not isinstance(layers, list):
            raise ManifestError("layers is not a list")
        config = _descriptor(doc["config"], "config")
        return Manifest(
            media_type,
            raw,
            digest,
            config,
            tuple(_descriptor(x, f"layers[{i}]") for i, x in enumerate(layers)),
            artifact_type=_artifact_type(doc, "manifest"),
            subject=_subject(doc),
            annotations=_annotations(doc, "manifest"),
        )
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        return _schema1(doc, raw, digest, media_type)
    raise ManifestError(f"unsupported media type {media_type!r}")


def _shape_type(doc: Mapping[str, Any], content_type: str) -> str:
    """schemaVersion 2 without mediaType (allowed by OCI): decide by shape and Content-Type."""
    if content_type in MANIFEST_TYPES + INDEX_TYPES:
        return content_type
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _schema1(doc: Mapping[str, Any], raw: bytes, digest: str, media_type: str) -> Manifest:
    fs_layers = doc.get("fsLayers")
    history = doc.get("history") or []
    if not isinstance(fs_layers, list) or not isinstance(history, list):
        raise ManifestError("schema 1 without fsLayers")
    layers: list[Descriptor] = []
    # fsLayers lists the top layer first; the tree shows base first, like schema 2.
    for i, entry in enumerate(reversed(fs_layers)):
        blob = _object(entry, f"fsLayers[{i}]").get("blobSum")
        if not isinstance(blob, str) or not is_digest(blob):
            raise ManifestError(f"fsLayers[{i}]: invalid blobSum")
        layers.append(Descriptor(DOCKER_LAYER, blob, -1))
    config = None
    if (
        history
        and isinstance(history[0], dict)
        and isinstance(history[0].get("v1Compatibility"), str)
    ):
        config = history[0]["v1Compatibility"].encode()
    return Manifest(media_type, raw, digest, None, tuple(layers), schema1_config=config)
