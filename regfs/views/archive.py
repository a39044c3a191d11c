"""Whole images as files: `image.tar` (what `docker save` writes) and `oci/` (an OCI layout).

Both are assembled from the image's blobs as they are, foreign layers included: nothing is
read to build them but the config, which the image directory has already. What they hold is
computed by `regfs.oci.layout`; here its segments and paths become nodes. `image.tar` reads
at any offset fetch only the blocks under it. Schema 1 images have no config blob: no archive;
artifacts (Helm charts, signatures, SBOMs) are no images: no archive either.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from ..cache import BlobRef, BlockCache, ReadStream
from ..errors import IntegrityError
from ..oci import layout as oci
from ..oci import manifest as mf
from ..vfs.nodes import BytesFile, File, Node, StaticDir, static_tree
from .image import BlobFile, ResolvedImage


class SegmentedFile(File):
    """A file that is the concatenation of its segments, read only where asked."""

    def __init__(
        self,
        name: str,
        segments: Sequence[oci.Segment],
        blobs: Iterable[BlobRef],
        cache: BlockCache,
        mtime: float,
    ) -> None:
        last = segments[-1] if segments else None
        super().__init__(name, last.offset + last.size if last else 0, mtime)
        self.segments = list(segments)
        self.starts = [s.offset for s in self.segments]
        self.blobs = {blob.digest: blob for blob in blobs}
        self.cache = cache

    def keep_cache(self) -> bool:
        return all(self.cache.is_verified(digest) for digest in self.blobs)

    async def open(self) -> SegmentedHandle:
        return SegmentedHandle(self)


class SegmentedHandle:
    """An open segmented file. Besides its own stream, one per blob: the cache keeps per-blob
    state in a stream (failed verifications this handle has seen), for as long as it is open."""

    def __init__(self, file: SegmentedFile) -> None:
        self.file = file
        self.stream = ReadStream()
        self.blob_streams: dict[str, ReadStream] = {}

    async def read(self, offset: int, size: int) -> bytes:
        file, stream = self.file, self.stream
        end = min(offset + size, file.size)
        # Whether this read continues the last one is decided once, in the archive's offsets;
        # each blob under it sees the same pattern in its own offsets (so the cache's
        # readahead follows a `cp`, and a `tar tf` hopping from header to header gets none).
        sequential = stream.next_offset == offset
        window = stream.window if sequential else 0
        next_window = window
        parts = []
        position = offset
        index = bisect.bisect_right(file.starts, offset) - 1
        while position < end:
            segment = file.segments[index]
            start = position - segment.offset
            length = min(end, segment.offset + segment.size) - position
            if segment.blob is not None:
                blob = file.blobs[segment.blob.digest]
                local = self.blob_streams.setdefault(blob.digest, ReadStream())
                local.next_offset = start if sequential else -1
                local.window = window
                data = await file.cache.read(blob, start, length, local)
                if len(data) != length:  # the blob is shorter than its descriptor says
                    raise IntegrityError(
                        f"{blob.digest}: {len(data)} bytes at {start}, expected {length}"
                    )
                parts.append(data)
                next_window = local.window
            else:
                assert segment.data is not None
                parts.append(segment.data[start : start + length])
            position += length
            index += 1
        stream.next_offset = end
        stream.window = next_window
        return b"".join(parts)

    def release(self) -> None:
        for local in self.blob_streams.values():  # each blob's readahead stops
            self.file.cache.close_stream(local)


def image_tar(image: ResolvedImage, lay: oci.Layout) -> SegmentedFile:
    """image.tar: docker-archive (manifest.json) and OCI archive (index.json) in one."""
    blobs = [image.blob(d) for d in lay.blobs()]
    segments = oci.image_tar(lay, image.created)
    return SegmentedFile("image.tar", segments, blobs, image.cache, image.created)


def oci_dir(image: ResolvedImage, lay: oci.Layout) -> StaticDir:
    """oci/: an OCI image layout whose blobs are the image's blob files."""
    mtime = image.created
    files: list[tuple[str, Node]] = []
    for path, content in oci.layout_files(lay):
        name = path.rsplit("/", 1)[-1]
        if isinstance(content, mf.Descriptor):
            files.append((path, BlobFile(name, image.cache, image.blob(content), mtime)))
        else:
            files.append((path, BytesFile(name, content, mtime)))
    return static_tree("oci", files, mtime)


def archive_entries(image: ResolvedImage) -> list[Node]:
    """An image view builder: image.tar and oci/ beside manifest.json."""
    manifest = image.manifest
    if manifest.config is None or any(d.size < 0 for d in manifest.layers):
        return []  # schema 1: no config blob to put in an archive
    if not manifest.is_image:
        return []  # an artifact: podman and skopeo would refuse an image.tar of it
    lay = layout_of(image)
    return [image_tar(image, lay), oci_dir(image, lay)]


def layout_of(image: ResolvedImage) -> oci.Layout:
    """The image's layout, named after its directory (and its tag, for `docker load`)."""
    tag = image.name.tag
    return oci.image_layout(
        image.manifest,
        image.config,
        ref_name=image.name.dirname,
        name=oci.repo_tag(image.store.host, image.repo, tag) if tag else None,
    )
