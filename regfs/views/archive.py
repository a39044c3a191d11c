"""Whole images as files: `image.tar` (what `docker save` writes) and `oci/` (an OCI layout).

Both are assembled from the image's blobs as they are, foreign layers included: nothing is
read to build them but the config, which the image directory has already. `image.tar` is a
list of segments — tar headers, padding and small JSON documents as bytes, blobs as reads
through the block cache — so its size is known before any layer is read, and a read at any
offset fetches only the blocks under it.

The OCI manifest in both is the registry's when it is one (same digest); a Docker schema 2
manifest is restated with the OCI media types of the same blobs (as `skopeo copy` would),
since OCI tools (umoci) take nothing else. Schema 1 images have no config blob: no archive.
"""

from __future__ import annotations

import bisect
import json
import tarfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..cache.blocks import ReadStream
from ..errors import IntegrityError
from ..oci import manifest as mf
from ..oci.reference import DOCKER_HUB_HOST
from .tree import IMAGE_EXTRAS, BlobFile, BytesFile, Context, File, ImageName, Node, StaticDir

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


def repo_tag(ctx: Context, repo: str, tag: str) -> str:
    """The name `docker load` gives the image: qualified by the registry, as `docker save`
    writes it (Docker Hub names in their familiar form)."""
    host = ctx.client.address.host
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
    """What both views hold: the OCI manifest, index.json, and the blobs in order."""

    manifest: bytes
    manifest_digest: str
    index: bytes
    config: mf.Descriptor
    layers: tuple[mf.Descriptor, ...]  # unique by digest, in the manifest's order
    docker_manifest: bytes  # manifest.json of `docker save`


def layout(ctx: Context, repo: str, image: mf.Manifest, config: bytes, name: ImageName) -> Layout:
    assert image.config is not None
    manifest = oci_manifest(image)
    digest = mf.sha256_digest(manifest)
    config_obj = _config_object(config)
    entry: dict[str, Any] = {"mediaType": mf.OCI_MANIFEST, "digest": digest, "size": len(manifest)}
    annotations = {}
    if name.tag:
        annotations[CONTAINERD_NAME] = repo_tag(ctx, repo, name.tag)
    if name.dirname:
        annotations[REF_NAME] = name.dirname
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
        "RepoTags": [repo_tag(ctx, repo, name.tag)] if name.tag else [],
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


# -- image.tar: a file made of segments --------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A piece of a segmented file: bytes held here, or a whole blob read through the cache."""

    offset: int
    size: int
    data: bytes | None = None
    blob: BlobFile | None = None


class SegmentedFile(File):
    """A file that is the concatenation of its segments, read only where asked."""

    def __init__(self, name: str, segments: Sequence[Segment], mtime: float) -> None:
        super().__init__(name, mtime)
        self.segments = list(segments)
        self._starts = [s.offset for s in self.segments]
        last = self.segments[-1] if self.segments else None
        self._size = last.offset + last.size if last else 0
        # Per open handle (its stream, by id while it lives), one stream per blob: the cache
        # keeps per-blob state in it (failed verifications seen by this handle).
        self._blob_streams: dict[int, dict[str, ReadStream]] = {}

    @property
    def size(self) -> int:
        return self._size

    def keep_cache(self) -> bool:
        return all(s.blob.keep_cache() for s in self.segments if s.blob is not None)

    def _blob_stream(self, stream: ReadStream, blob: BlobFile) -> ReadStream:
        streams = self._blob_streams.get(id(stream))
        if streams is None:
            streams = self._blob_streams[id(stream)] = {}
            weakref.finalize(stream, self._blob_streams.pop, id(stream), None)
        return streams.setdefault(blob.blob.digest, ReadStream())

    async def read(self, offset: int, size: int, stream: ReadStream | None) -> bytes:
        end = min(offset + size, self._size)
        # Whether this read continues the last one is decided once, in the archive's offsets;
        # each blob under it sees the same pattern in its own offsets (so the cache's
        # readahead follows a `cp`, and a `tar tf` hopping from header to header gets none).
        sequential = stream is not None and stream.next_offset == offset
        window = stream.window if stream is not None and sequential else 0
        next_window = window
        parts = []
        position = offset
        index = bisect.bisect_right(self._starts, offset) - 1
        while position < end:
            segment = self.segments[index]
            start = position - segment.offset
            length = min(end, segment.offset + segment.size) - position
            if segment.blob is not None:
                local = None if stream is None else self._blob_stream(stream, segment.blob)
                if local is not None:
                    local.next_offset = start if sequential else -1
                    local.window = window
                data = await segment.blob.read(start, length, local)
                if len(data) != length:  # the blob is shorter than its descriptor says
                    raise IntegrityError(
                        f"{segment.blob.blob.digest}: {len(data)} bytes at {start}, "
                        f"expected {length}"
                    )
                parts.append(data)
                next_window = local.window if local is not None else 0
            else:
                assert segment.data is not None
                parts.append(segment.data[start : start + length])
            position += length
            index += 1
        if stream is not None:
            stream.next_offset = end
            stream.window = next_window
        return b"".join(parts)


class TarBuilder:
    """Tar headers computed from names and sizes; member data is bytes or a blob."""

    def __init__(self, mtime: float) -> None:
        self.mtime = int(mtime)
        self.segments: list[Segment] = []
        self.offset = 0

    def _append(self, data: bytes | None = None, blob: BlobFile | None = None) -> None:
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

    def blob(self, name: str, blob: BlobFile) -> None:
        self._append(self._header(name, tarfile.REGTYPE, blob.size, 0o644))
        self._append(blob=blob)
        self._pad(blob.size)

    def finish(self) -> list[Segment]:
        self._append(bytes(2 * _BLOCK))  # end of archive
        return self.segments


def image_tar(ctx: Context, repo: str, lay: Layout, mtime: float) -> SegmentedFile:
    """image.tar: docker-archive (manifest.json) and OCI archive (index.json) in one."""
    tar = TarBuilder(mtime)
    tar.file("oci-layout", OCI_LAYOUT)
    tar.file("index.json", lay.index)
    tar.file("manifest.json", lay.docker_manifest)
    directories = sorted({blob_path(d.digest).rsplit("/", 1)[0] for d in _blobs(lay)})
    tar.directory("blobs")
    for directory in directories:
        tar.directory(directory)
    tar.file(blob_path(lay.manifest_digest), lay.manifest)
    for descriptor in _blobs(lay):
        tar.blob(blob_path(descriptor.digest), BlobFile("", ctx, repo, descriptor, mtime))
    return SegmentedFile("image.tar", tar.finish(), mtime)


def _blobs(lay: Layout) -> list[mf.Descriptor]:
    """Config and layers, each digest once."""
    return [lay.config, *(d for d in lay.layers if d.digest != lay.config.digest)]


def oci_dir(ctx: Context, repo: str, lay: Layout, mtime: float) -> StaticDir:
    """oci/: an OCI image layout whose blobs are the image's blob files."""
    by_algorithm: dict[str, list[Node]] = {}
    manifest_alg, manifest_hex = lay.manifest_digest.split(":", 1)
    by_algorithm.setdefault(manifest_alg, []).append(BytesFile(manifest_hex, lay.manifest, mtime))
    for descriptor in _blobs(lay):
        algorithm, hexpart = descriptor.digest.split(":", 1)
        if any(n.name == hexpart for n in by_algorithm.get(algorithm, [])):
            continue  # the manifest and a blob cannot share a digest, but be safe
        by_algorithm.setdefault(algorithm, []).append(
            BlobFile(hexpart, ctx, repo, descriptor, mtime)
        )
    blobs = StaticDir(
        "blobs",
        [StaticDir(alg, nodes, mtime) for alg, nodes in sorted(by_algorithm.items())],
        mtime,
    )
    return StaticDir(
        "oci",
        [
            BytesFile("oci-layout", OCI_LAYOUT, mtime),
            BytesFile("index.json", lay.index, mtime),
            blobs,
        ],
        mtime,
    )


def archive_entries(
    ctx: Context, repo: str, image: mf.Manifest, config: bytes, created: float, name: ImageName
) -> list[Node]:
    """The IMAGE_EXTRAS hook: image.tar and oci/ beside manifest.json."""
    if image.config is None or any(d.size < 0 for d in image.layers):
        return []  # schema 1: no config blob to put in an archive
    lay = layout(ctx, repo, image, config, name)
    return [image_tar(ctx, repo, lay, created), oci_dir(ctx, repo, lay, created)]


if archive_entries not in IMAGE_EXTRAS:
    IMAGE_EXTRAS.append(archive_entries)
