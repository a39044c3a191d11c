"""Layers read in place: an index per layer, and reads of the files inside it.

files.py is `LayerFiles` (indexes loaded or built once per digest, waiting, reads of a file's
bytes); build.py the one streamed pass that makes an index; entries.py tar members as
`regfs.oci.entry.Entry`; index.py what an index holds and its persisted form; spans.py
checked, inflated spans and their memory LRU; streams.py the blocking file objects the worker
threads read (the blob through the cache, checked windows of it, zstd frames). Layers with
their own table of contents skip the pass: toc.py is the model (entries, checked chunks),
estargz.py and zstdchunked.py the two formats, tocfiles.py the index from the TOC and the
chunk reads.
"""

from .files import BuildProgress, LayerFiles
from .index import Format, LayerIndex, Span

__all__ = ["BuildProgress", "Format", "LayerFiles", "LayerIndex", "Span"]
