"""Whole images as archives, computed from the manifest and config alone (pure: no I/O).

- `image_layout`: the OCI manifest (the registry's when it is one, same digest; a Docker
  schema 2 manifest restated with the OCI media types of the same blobs, as `skopeo copy`
  would, since OCI tools (umoci) take nothing else), index.json, and `docker save`'s
  manifest.json.
- `layout_files`: an OCI image layout as paths, each bytes or a blob's descriptor.
- `image_tar`: docker-archive and OCI archive in one tar, as segments: headers, padding and
  small documents as bytes, blobs as descriptors. Its size is known before any blob is read.

What reads the blobs (and what the files are) is the caller's.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Any

from . import manifest as mf
from .reference import DOCKER_HUB_HOST

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
OCI_LAYOUT = json.dumps({"imageLayoutVersion": mf.OCI_LAYOUT_VERSION}).encode()
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

# Docker media types and their OCI equivalents (the blobs are the same bytes).
_OCI_EQUIVALENT = {
    mf.DOCKER_CONFIG: mf.OCI_CONFIG,
    mf.DOCKER_LAYER: mf.OCI_LAYER_GZIP,
    DOCKER_LAYER_TAR: mf.OCI_LAYER_TAR,
    mf.DOCKER_FOREIGN_LAYER: mf.OCI_NONDIST_GZIP,
}

_BLOCK = 512  # tar's block: headers and member data are padded to it


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def blob_path(digest: str) -> str:
    """Where a blob lives in an OCI layout: blobs/<algorithm>/<hex>."""
    algorithm, hexpart = digest.split(":", 1)
    return f"blobs/{algorithm}/{hexpart}"


def oci_manifest(image: mf.Manifest) -> bytes:
    """The image's manifest as an OCI image manifest: as served when it is one already."""
    if image.media_type == mf.OCI_MANIFEST:
        return image.raw
    doc: dict[str, Any] = json.loads(image.raw)
    doc["mediaType"] = mf.OCI_MANIFEST
    for descriptor in [doc["config"], *doc["layers"]]:
        media_type = descriptor.get("mediaType", "")
        descriptor["mediaType"] = _OCI_EQUIVALENT.get(media_type, media_type)
    return _compact(doc)


def repo_tag(host: str, repo: str, tag: str) -> str:
    """The name `docker load` gives the image: qualified by the registry, as `docker save`
    writes it (Docker Hub names in their familiar form)."""
    if host == DOCKER_HUB_HOST:
        return f"{repo.removeprefix('library/')}:{tag}"
    return f"{host}/{repo}:{tag}"


def _platform(config: dict[str, Any]) -> dict[str, str] | None:
    os_name, arch = config.get("os"), config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    platform = {"architecture": arch, "os": os_name}
    if isinstance(config.get("variant"), str) and config["variant"]:
        platform["variant"] = config["variant"]
    return platform


def _config_object(config: bytes) -> dict[str, Any]:
    try:
        value = json.loads(config)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Layout:
    """What both archives hold: the OCI manifest, index.json, and the blobs in order."""

    manifest: bytes
    manifest_digest: str
    index: bytes
    config: mf.Descriptor
    layers: tuple[mf.Descriptor, ...]  # unique by digest, in the manifest's order
    docker_manifest: bytes  # manifest.json of `docker save`

    def blobs(self) -> list[mf.Descriptor]:
        """Config and layers, each digest once."""
        return [self.config, *(d for d in self.layers if d.digest != self.config.digest)]


def image_layout(
    image: mf.Manifest, config: bytes, *, ref_name: str = "", name: str | None = None
) -> Layout:
    """`ref_name`: the image's name in index.json (its directory's); `name`: what `docker
    load` tags it (`repo_tag`), None for an image reached by digest."""
    if image.config is None:
        raise ValueError("an image without a config blob (schema 1) has no layout")
    manifest = oci_manifest(image)
    digest = mf.sha256_digest(manifest)
    config_obj = _config_object(config)
    entry: dict[str, Any] = {"mediaType": mf.OCI_MANIFEST, "digest": digest, "size": len(manifest)}
    annotations = {}
    if name:
        annotations[CONTAINERD_NAME] = name
    if ref_name:
        annotations[REF_NAME] = ref_name
    if annotations:
        entry["annotations"] = annotations
    platform = _platform(config_obj)
    if platform:
        entry["platform"] = platform
    index = _compact(
        {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [entry]},
    )
    unique: dict[str, mf.Descriptor] = {}
    for d in image.layers:
        unique.setdefault(d.digest, d)
    docker: dict[str, Any] = {
        "Config": blob_path(image.config.digest),
        "RepoTags": [name] if name else [],
        "Layers": [blob_path(d.digest) for d in image.layers],
    }
    # `docker save` names foreign layers' origins by diff ID, so a push skips them again.
    diff_ids = (config_obj.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) == len(image.layers):
        sources = {
            str(diff_id): {
                "mediaType": d.media_type,
                "size": d.size,
                "digest": d.digest,
                **({"urls": list(d.urls)} if d.urls else {}),
            }
            for diff_id, d in zip(diff_ids, image.layers, strict=True)
            if d.is_foreign
        }
        if sources:
            docker["LayerSources"] = sources
    return Layout(manifest, digest, index, image.config, tuple(unique.values()), _compact([docker]))


def layout_files(lay: Layout) -> list[tuple[str, bytes | mf.Descriptor]]:
    """An OCI image layout: each file's path, and its content or the blob that is its content."""
    files: list[tuple[str, bytes | mf.Descriptor]] = [
        ("oci-layout", OCI_LAYOUT),
        ("index.json", lay.index),
        (blob_path(lay.manifest_digest), lay.manifest),
    ]
    # The manifest and a blob cannot share a digest, but be safe: the manifest wins.
    files += [(blob_path(d.digest), d) for d in lay.blobs() if d.digest != lay.manifest_digest]
    return files


# -- image.tar: a file made of segments --------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A piece of a segmented file: bytes held here, or a whole blob (its descriptor)."""

    offset: int
    size: int
    data: bytes | None = None
    blob: mf.Descriptor | None = None


class TarBuilder:
    """Tar headers computed from names and sizes; member data is bytes or a blob."""

    def __init__(self, mtime: float) -> None:
        self.mtime = int(mtime)
        self.segments: list[Segment] = []
        self.offset = 0

    def _append(self, data: bytes | None = None, blob: mf.Descriptor | None = None) -> None:
        if data is not None:
            previous = self.segments[-1] if self.segments else None
            if previous is not None and previous.data is not None:  # one segment, not many
                self.segments[-1] = Segment(
                    previous.offset, previous.size + len(data), previous.data + data
                )
            else:
                self.segments.append(Segment(self.offset, len(data), data))
            self.offset += len(data)
        elif blob is not None:
            self.segments.append(Segment(self.offset, blob.size, blob=blob))
            self.offset += blob.size

    def _header(self, name: str, kind: bytes, size: int, mode: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        # PAX only when a field needs it (a long name): otherwise a plain ustar header.
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")

    def _pad(self, size: int) -> None:
        if size % _BLOCK:
            self._append(bytes(_BLOCK - size % _BLOCK))

    def directory(self, name: str) -> None:
        self._append(self._header(name.rstrip("/") + "/", tarfile.DIRTYPE, 0, 0o755))

    def file(self, name: str, data: bytes) -> None:
        self._append(self._header(name, tarfile.REGTYPE, len(data), 0o644) + data)
        self._pad(len(data))

    def blob(self, name: str, blob: mf.Descriptor) -> None:
        self._append(self._header(name, tarfile.REGTYPE, blob.size, 0o644))
        self._append(blob=blob)
        self._pad(blob.size)

    def finish(self) -> list[Segment]:
        self._append(bytes(2 * _BLOCK))  # end of archive
        return self.segments


def image_tar(lay: Layout, mtime: float) -> list[Segment]:
    """image.tar: docker-archive (manifest.json) and OCI archive (index.json) in one."""
    tar = TarBuilder(mtime)
    tar.file("oci-layout", OCI_LAYOUT)
    tar.file("index.json", lay.index)
    tar.file("manifest.json", lay.docker_manifest)
    directories = sorted({blob_path(d.digest).rsplit("/", 1)[0] for d in lay.blobs()})
    tar.directory("blobs")
    for directory in directories:
        tar.directory(directory)
    tar.file(blob_path(lay.manifest_digest), lay.manifest)
    for descriptor in lay.blobs():
        tar.blob(blob_path(descriptor.digest), descriptor)
    return tar.finish()
