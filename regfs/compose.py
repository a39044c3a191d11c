"""The composition root: the one place regfs is wired.

`build_services` and `make_tree` build registry clients, the store over them, the block and
disk caches, the views (with the image view builders in IMAGE_VIEWS) and the inode table a
mount serves, or that a command walks without FUSE. Nothing here imports pyfuse3.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .cache import BlockCache, DiskCache
from .dirs import default_cache_dir
from .errors import NotFoundError, RegfsError, UntrustedCertificateError
from .layers import LayerFiles
from .oci.reference import RegistryAddress, is_repository, parse_registry
from .registry.blobs import ForeignURLPolicy
from .registry.client import RegistryClient, RetryPolicy, Stats, URLCheck
from .registry.credentials import load_credentials
from .registry.pinned import PublicOnly
from .registry.registries_conf import (
    MirrorSettings,
    RegistriesConf,
    RegistryAdmission,
    RegistrySettings,
)
from .store import ConfiguredStore, RegistryStore
from .vfs.table import InodeTable
from .views.archive import archive_entries
from .views.control import control_dir, json_file, stats_document
from .views.image import ImageViewBuilder
from .views.registries import RegistriesRoot
from .views.registry import Options, RootDir
from .views.rootfs import rootfs_views

log = logging.getLogger(__name__)


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
    all_registries: bool = False  # <mount>/<registry>/...: every registry, registries.conf
    allow_registries: list[str] = field(default_factory=list)  # --allow-registry REGEX


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


def shared_caches(config: MountConfig) -> tuple[DiskCache | None, BlockCache]:
    """The disk and block caches: one per mount, however many registries it shows."""
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
    return disk, cache


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
    disk, cache = shared_caches(config)
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


# -- every registry in one mount (--all-registries) ------------------------------------------


@dataclass
class OpenRegistry:
    """One registry of a mount of every registry: made on its first use."""

    name: str  # as the path names it (docker.io)
    store: ConfiguredStore
    clients: list[RegistryClient]
    stats: Stats
    tree: RootDir


class AllRegistries:
    """Every registry through one cache: each its own clients (credentials, certs.d CAs,
    insecure, mirrors from registries.conf), made when a path first names it, after
    RegistryAdmission said it may be connected to and `/v2/` answered like a registry."""

    def __init__(
        self,
        config: MountConfig,
        conf: RegistriesConf,
        admission: RegistryAdmission,
        *,
        disk: DiskCache | None,
        cache: BlockCache,
        layers: LayerFiles,
        started: float,
    ) -> None:
        self.config = config
        self.conf = conf
        self.admission = admission
        self.disk = disk
        self.cache = cache
        self.layers = layers
        self.started = started
        self.open: dict[str, OpenRegistry] = {}  # by where: host[:port]/[path]
        self.by_name: dict[str, OpenRegistry] = {}  # by the name paths use
        self._opening: dict[str, trio.Lock] = {}

    def listed(self) -> list[str]:
        """Configured (not blocked) and used since the mount started."""
        return sorted({*self.conf.configured(), *self.by_name})

    def alias(self, name: str) -> str | None:
        """`alpine` -> `docker.io/library/alpine` by [aliases], for a name that cannot be a
        registry's (docker's rule: a registry has a `.` or a `:`, or is localhost)."""
        if "." in name or ":" in name or name == "localhost":
            return None
        target = self.conf.alias(name)
        if target is None or not is_repository(target.split("/", 1)[-1]):
            return None
        return target

    async def tree(self, name: str) -> RootDir | None:
        """The registry's tree; raises RefusedRegistryError (ENOENT) when it may not be
        connected to (logged once), NotFoundError (ENOENT) saying why when nothing answers
        there like a registry."""
        known = self.by_name.get(name)
        if known is not None:
            return known.tree
        await self.admission.check(name)  # RefusedRegistryError: it logs the reason, once
        try:
            opened = await self._open(name, self.conf.settings(name))
        except RegfsError as exc:
            # An untrusted certificate is a registry that answered: say so louder.
            level = logging.WARNING if isinstance(exc, UntrustedCertificateError) else logging.INFO
            log.log(level, "registry %s: no registry answers there (%s)", name, exc)
            raise NotFoundError(f"no registry answers at {name}: {exc}") from exc
        self.by_name[name] = opened
        log.info("registry %s: using %s", name, opened.store.client.address)
        return opened.tree

    async def _open(self, name: str, settings: RegistrySettings) -> OpenRegistry:
        address = parse_registry(settings.host)
        # docker.io and registry-1.docker.io are one registry: opened once, also in parallel.
        where = f"{address.host}/{settings.namespace}"
        async with self._opening.setdefault(where, trio.Lock()):
            same = self.open.get(where)
            if same is None:
                same = self.open[where] = await self._connect(name, settings, address)
            return same

    async def _connect(
        self, name: str, settings: RegistrySettings, address: RegistryAddress
    ) -> OpenRegistry:
        stats = Stats()
        # --ca-cert and --insecure, given with --all-registries (or to `regfs ls/cat/cp`,
        # whose path names the registry), hold for every registry opened.
        cas = [str(p) for p in settings.ca_files] + [c for c in [self.config.ca_cert] if c]
        insecure = settings.insecure or self.config.insecure
        made = [(m, await self._mirror(m, stats)) for m in settings.mirrors]
        usable = [(m, c) for m, c in made if c is not None]
        # Admitted only for being public: so must be every host it leads the mount to.
        hops = self.admission.hop_check(name)
        try:
            client = await self._reach(
                address, insecure, cas, stats, [c for _, c in usable], hops=hops
            )
        except RegfsError:
            for _, mirror in usable:
                await mirror.aclose()
            raise

        def store_with(modes: tuple[str, ...]) -> RegistryStore:
            return RegistryStore(
                client,
                mirrors=[c for m, c in usable if m.pull_from_mirror in modes],
                disk=self.disk,
                policy=ForeignURLPolicy(self.config.foreign_url_allow),
                offline=self.config.options.offline,
                tag_ttl=self.config.options.tag_ttl,
            )

        by_digest = store_with(("all", "digest-only"))
        tag_only = any(m.pull_from_mirror != "all" for m, _ in usable)
        by_tag = store_with(("all", "tag-only")) if tag_only else by_digest
        store = ConfiguredStore(by_tag, by_digest, settings, self.conf)
        clients = [client, *(c for _, c in usable)]
        tree = RootDir(
            store,
            self.cache,
            self.config.options,
            image_views=(*IMAGE_VIEWS, rootfs_views(self.layers)),
            started=self.started,
        )
        return OpenRegistry(name, store, clients, stats, tree)

    def _client(
        self,
        address: RegistryAddress,
        insecure: bool,
        cas: list[str],
        stats: Stats,
        hops: URLCheck | None = None,
    ) -> RegistryClient:
        return RegistryClient(
            address,
            credentials=load_credentials(address.host),
            ca_files=cas,
            foreign_ca_certs=self.config.foreign_ca_certs,
            insecure=insecure,
            retry=RetryPolicy(),
            stats=stats,
            hop_check=hops,
            # Admitted for being public: its connections go only to addresses checked public.
            public_only=None if hops is None else PublicOnly(self.admission.resolve),
        )

    async def _answering(
        self,
        address: RegistryAddress,
        insecure: bool,
        cas: list[str],
        stats: Stats,
        *,
        probe: bool,
        hops: URLCheck | None = None,
    ) -> RegistryClient:
        """A client for `address`; an insecure one is https unverified, and when https does
        not answer there (`probe`), plain http, as podman does for insecure registries."""
        client = self._client(address, insecure, cas, stats, hops)
        if not probe:
            return client
        fallback = insecure and address.scheme == "https"
        try:
            await ping_once(client, counted=not fallback)
            return client
        except RegfsError as exc:
            if not fallback:
                await client.aclose()
                raise
            log.info("%s: https does not answer (%s): plain http", address.host, exc)
        await client.aclose()
        client = self._client(RegistryAddress("http", address.host), insecure, cas, stats, hops)
        try:
            await ping_once(client)
        except RegfsError:
            await client.aclose()
            raise
        return client

    async def _reach(
        self,
        address: RegistryAddress,
        insecure: bool,
        cas: list[str],
        stats: Stats,
        mirrors: list[RegistryClient],
        *,
        hops: URLCheck | None,
    ) -> RegistryClient:
        """The registry's client once `/v2/` answered (http for an insecure one where https
        does not); the https one when only a mirror answers (it can serve all when warm)."""
        if self.config.options.offline:
            return self._client(address, insecure, cas, stats, hops)
        try:
            return await self._answering(address, insecure, cas, stats, probe=True, hops=hops)
        except RegfsError as exc:
            failure = exc
        for mirror in mirrors:
            try:
                await ping_once(mirror)
            except RegfsError:
                continue
            log.warning(
                "registry %s unreachable (%s); through mirror %s",
                address.host,
                failure,
                mirror.address,
            )
            return self._client(address, insecure, cas, stats, hops)
        raise failure

    async def _mirror(self, mirror: MirrorSettings, stats: Stats) -> RegistryClient | None:
        if mirror.namespace:
            log.warning(
                "mirror %s: a location with a path is not supported; not used", mirror.location
            )
            return None
        address = parse_registry(mirror.host)
        cas = [str(p) for p in mirror.ca_files]
        try:
            client = await self._answering(
                address,
                mirror.insecure,
                cas,
                stats,
                probe=mirror.insecure and not self.config.options.offline,
            )
        except RegfsError as exc:
            log.warning("mirror %s does not answer (%s); not used", mirror.location, exc)
            return None
        client.retry = RetryPolicy(attempts=1)
        return client

    async def aclose(self) -> None:
        for opened in self.open.values():
            for client in opened.clients:
                await client.aclose()


async def ping_once(client: RegistryClient, *, counted: bool = True) -> None:
    """`/v2/` answers like a registry (200 or 401), asked once: a name where nothing answers
    is ENOENT now, not after the client's retries. Not `counted`: the attempt stays out of
    the registry's figures (https tried first at an insecure registry that speaks http)."""
    retry, client.retry = client.retry, RetryPolicy(attempts=1)
    stats = client.stats
    if not counted:
        client.stats = Stats()
    try:
        await client.ping()
    finally:
        client.retry, client.stats = retry, stats


@dataclass
class AllServices:
    """What a mount of every registry runs on: one cache, the registries opened so far."""

    cache: BlockCache
    layers: LayerFiles
    registries: AllRegistries
    started: float = field(default_factory=time.time)

    async def aclose(self) -> None:
        await self.registries.aclose()


def build_all_services(config: MountConfig) -> AllServices:
    """registries.conf is read now: a broken one stops the mount (ConfigError)."""
    conf = RegistriesConf.load()
    log.info("registries.conf: %s", ", ".join(map(str, conf.files)) or "none found")
    admission = RegistryAdmission(conf, config.allow_registries)
    if config.allow_registries:
        log.info("also admitted: registries matching %s", ", ".join(config.allow_registries))
    disk, cache = shared_caches(config)
    layers = LayerFiles(cache, disk, timeout=config.op_timeout)
    started = time.time()
    registries = AllRegistries(
        config, conf, admission, disk=disk, cache=cache, layers=layers, started=started
    )
    return AllServices(cache, layers, registries, started)


def make_all_tree(
    services: AllServices, options: Options, read_sizes: Counter[int] | None = None
) -> InodeTable:
    registries = services.registries

    def stats() -> dict[str, object]:
        total = Stats()
        for opened in registries.open.values():
            total.requests += opened.stats.requests
            total.retries += opened.stats.retries
            total.bytes_by_host.update(opened.stats.bytes_by_host)
            total.errors.update(opened.stats.errors)
        document = stats_document(
            registry="(all registries)",
            mirrors=[],
            offline=options.offline,
            stats=total,
            cache=services.cache,
            started=services.started,
            layers=services.layers,
        )
        document["registries"] = {
            o.name: {
                "address": str(o.store.client.address),
                "mirrors": [str(m.address) for m in o.store.mirrors],
                "requests": o.stats.requests,
                "retries": o.stats.retries,
                "bytes_fetched_by_host": dict(o.stats.bytes_by_host),
                "errors": dict(o.stats.errors),
            }
            for o in sorted(registries.by_name.values(), key=lambda o: o.name)
        }
        if read_sizes is not None:
            document["fuse_read_sizes"] = {str(n): read_sizes[n] for n in sorted(read_sizes)}
        return document

    control = control_dir([json_file("stats.json", stats)], services.started)
    root = RegistriesRoot(
        listed=registries.listed,
        open_registry=registries.tree,
        control=control,
        started=services.started,
        retry_after=options.tag_ttl,
        alias=registries.alias,
    )
    return InodeTable(root)
