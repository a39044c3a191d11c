"""The composition root: the one place regfs is wired.

`build_services` and `make_tree` build registry clients, the store over them, the block and
disk caches, the views (with the image view builders in IMAGE_VIEWS) and the inode table a
mount serves, or that a command walks without FUSE. Nothing here imports pyfuse3.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .cache import BlockCache, DiskCache
from .dirs import default_cache_dir
from .layers import LayerFiles
from .oci.reference import parse_registry
from .registry.blobs import ForeignURLPolicy
from .registry.client import RegistryClient, RetryPolicy, Stats
from .registry.credentials import load_credentials
from .store import RegistryStore
from .vfs.table import InodeTable
from .views.archive import archive_entries
from .views.control import control_dir, json_file, stats_document
from .views.image import ImageViewBuilder
from .views.registry import Options, RootDir
from .views.rootfs import rootfs_views


@dataclass
class MountConfig:
    mountpoint: Path
    registry: str = "mcr.microsoft.com"
    options: Options = field(default_factory=Options)
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = 10 << 30
    memory_cache: int = 256 << 20
    block_size: int = 4 << 20
    foreign_url_allow: list[str] = field(default_factory=list)
    insecure: bool = False
    ca_cert: str | None = None
    foreign_ca_certs: list[str] = field(default_factory=list)  # --foreign-ca-cert
    fuse_options: list[str] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    op_timeout: float = 60.0
    mirrors: list[str] = field(default_factory=list)
    no_disk_cache: bool = False


# What every image directory shows beside manifest.json, config.json and layers/ (rootfs/ and
# layers/<digest>/ are added in make_tree: they need the layer reader).
IMAGE_VIEWS: tuple[ImageViewBuilder, ...] = (archive_entries,)


@dataclass
class Services:
    """What a mount runs on: one registry's store, the block cache, the clients to close."""

    store: RegistryStore
    cache: BlockCache
    clients: list[RegistryClient]
    stats: Stats
    layers: LayerFiles  # indexes of layers and reads inside them: rootfs/, layers/<digest>/
    started: float = field(default_factory=time.time)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def build_services(config: MountConfig, stats: Stats) -> Services:
    address = parse_registry(config.registry)
    client = RegistryClient(
        address,
        credentials=load_credentials(address.host),
        ca_cert=config.ca_cert,
        foreign_ca_certs=config.foreign_ca_certs,
        insecure=config.insecure,
        retry=RetryPolicy(),
        stats=stats,
    )
    mirrors = [
        RegistryClient(
            parse_registry(m),
            credentials=load_credentials(parse_registry(m).host),
            ca_cert=config.ca_cert,
            retry=RetryPolicy(attempts=1),
            stats=stats,
        )
        for m in config.mirrors
    ]
    disk = (
        None
        if config.no_disk_cache
        else DiskCache(config.cache_dir, config.cache_size, config.block_size)
    )
    cache = BlockCache(
        disk=disk,
        memory_bytes=config.memory_cache,
        block_size=config.block_size,
        offline=config.options.offline,
    )
    store = RegistryStore(
        client,
        mirrors=mirrors,
        disk=disk,
        policy=ForeignURLPolicy(config.foreign_url_allow),
        offline=config.options.offline,
        tag_ttl=config.options.tag_ttl,
    )
    layers = LayerFiles(cache, disk, timeout=config.op_timeout)
    return Services(store, cache, [client, *mirrors], stats, layers)


def make_tree(
    services: Services, options: Options, read_sizes: Counter[int] | None = None
) -> InodeTable:
    store, cache = services.store, services.cache

    def stats() -> dict[str, object]:
        document = stats_document(
            registry=str(store.client.address),
            mirrors=[str(m.address) for m in store.mirrors],
            offline=store.offline,
            stats=services.stats,
            cache=cache,
            started=services.started,
            layers=services.layers,
        )
        if read_sizes is not None:  # the kernel's READs by size in bytes (the adapter's count)
            document["fuse_read_sizes"] = {str(n): read_sizes[n] for n in sorted(read_sizes)}
        return document

    control = control_dir([json_file("stats.json", stats)], services.started)
    root = RootDir(
        store,
        cache,
        options,
        control=control,
        image_views=(*IMAGE_VIEWS, rootfs_views(services.layers)),
        started=services.started,
    )
    return InodeTable(root)
