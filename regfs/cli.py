"""The `regfs` command.

    regfs mount [OPTIONS] MOUNTPOINT        regfs umount MOUNTPOINT
    regfs prefetch PATH...                  regfs status MOUNTPOINT
    regfs cache info|prune --to SIZE|clear [--digest D]
    regfs SOURCE MOUNTPOINT -o OPTS         as mount(8) / mount.fuse3 call a helper (fstab)
    regfs ls|cat|cp REF[/PATH]              the same tree without a mount (commands.py)

Exit codes: 0 success; 1 a runtime failure (registry unreachable, unmount failed, a file
prefetch could not read, not a regfs mount, ...); 2 bad usage or invalid arguments;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

from . import cachectl, commands, prefetch, status
from .compose import MountConfig
from .dirs import default_cache_dir
from .errors import RegfsError
from .oci.platform import host_platform_default, parse_platform
from .registry.tls import check_ca_file
from .views.registry import Options

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A number of bytes with an optional K/M/G/T suffix (powers of 1024): 4M, 10G."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 4M or 10G)")
    factor = 1 << (10 * "KMGT".find(match.group(2).upper()) + 10) if match.group(2) else 1
    return int(float(match.group(1)) * factor)


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {exc}") from None
    return text


def _checked_by(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that keeps the text once `check` accepts it; its error is the
    one-line usage error."""

    def checked(text: str) -> str:
        try:
            check(text)
        except RegfsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return checked


_ca_file = _checked_by(check_ca_file)
_platform = _checked_by(parse_platform)


def _version() -> str:
    try:
        return version("regfs")
    except PackageNotFoundError:
        return "unknown"


MOUNT_EXAMPLES = """examples:
  regfs mount /mnt/mcr
  regfs mount --registry docker.io --platform linux/arm64/v8 /mnt/hub
  regfs mount --platform windows/amd64:10.0.20348 /mnt/mcr   # Windows Server 2022 builds
  regfs mount --registry http://127.0.0.1:5000 --cache-size 20G /mnt/local
  regfs mount --registry docker.io --mirror http://mirror.internal:5000 /mnt/hub
  regfs mount --offline /mnt/mcr          # only what the cache holds, no network
  regfs mount --all-registries /mnt/images   # /mnt/images/<registry>/<repo>/<tag>/
  ls /mnt/mcr/windows/servercore/
  regfs umount /mnt/mcr
"""

MAIN_EXAMPLES = (
    MOUNT_EXAMPLES
    + """  regfs prefetch /mnt/mcr/dotnet/runtime/8.0     # warm the cache for a whole image
  regfs status /mnt/mcr                            # what the mount has been doing
  regfs cache info                                 # what the disk cache holds
  regfs cache prune --to 5G                        # evict least recently used blobs
  regfs ls mcr.microsoft.com/windows/servercore    # no mount: tags of a repository
  regfs cat alpine:3.20/rootfs/etc/os-release      # no mount: a file of an image
  regfs cp mcr.microsoft.com/windows/servercore:ltsc2019-amd64/image.tar .
  mount -t fuse.regfs mcr.microsoft.com /mnt/mcr -o cache_dir=/var/cache/regfs
  regfs mount --all-registries /mnt/images         # /mnt/images/<registry>/<repo>/<tag>/

fstab:
  mcr.microsoft.com  /mnt/mcr  fuse.regfs  ro,cache_dir=/var/cache/regfs,allow_other,_netdev,nofail  0 0
  regfs  /mnt/images  fuse.regfs  ro,all_registries,allow_other,_netdev,nofail  0 0

exit codes: 0 ok, 1 failure, 2 usage error, 130 interrupted
"""
)


def add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        default="mcr.microsoft.com",
        help="host[:port] or http(s)://host[:port] (default: %(default)s)",
    )
    add_fetch_options(p)
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="FUSE mount options, comma-separated (nosuid,nodev unless -o suid,dev)",
    )
    p.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr"
    )


def add_fetch_options(p: argparse.ArgumentParser) -> None:
    """The options that shape fetching: the mount's, and ls/cat/cp's with the same meaning."""
    p.add_argument(
        "--all-registries",
        action="store_true",
        help="every registry in one mount: MOUNTPOINT/<registry>/<repo>/<tag>/, configured by"
        " registries.conf, certs.d and docker's / containers' credentials (--registry,"
        " --mirror, --insecure and --ca-cert are then not used)",
    )
    p.add_argument(
        "--allow-registry",
        type=_regex,
        action="append",
        default=[],
        metavar="REGEX",
        help="with --all-registries: also admit registries whose host[:port] matches this"
        " regex whole, even at private or loopback addresses (repeatable)",
    )
    p.add_argument(
        "--platform",
        type=_platform,
        help="os/arch[/variant][:os.version] chosen from an index, e.g. linux/arm64/v8 or"
        " windows/amd64:10.0.20348 (that build or the highest 10.0.20348.*); default: this host's",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help=f"disk cache (default: {default_cache_dir()})"
    )
    p.add_argument(
        "--cache-size", type=parse_size, default="10G", help="disk cache limit (default: 10G)"
    )
    p.add_argument(
        "--memory-cache", type=parse_size, default="256M", help="memory cache limit (default: 256M)"
    )
    p.add_argument(
        "--block-size", type=parse_size, default="4M", help="cache block size (default: 4M)"
    )
    p.add_argument(
        "--tag-ttl",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="re-resolve tags after this (default: 60)",
    )
    p.add_argument(
        "--foreign-url-allow",
        type=_regex,
        action="append",
        default=[],
        metavar="REGEX",
        help="admit foreign-layer URLs matching this regex from their start (repeatable); "
        "default: https to public addresses only",
    )
    p.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help="pull-through mirror tried first (repeatable)",
    )
    p.add_argument("--offline", action="store_true", help="serve only what is cached")
    p.add_argument("--insecure", action="store_true", help="skip TLS verification of this registry")
    p.add_argument(
        "--ca-cert",
        type=_ca_file,
        metavar="FILE",
        help="CA bundle trusted for this registry, its token realm and CDN redirects, "
        "on top of the system's (and SSL_CERT_FILE / SSL_CERT_DIR)",
    )
    p.add_argument(
        "--foreign-ca-cert",
        type=_ca_file,
        action="append",
        default=[],
        metavar="FILE",
        help="CA bundle trusted for foreign-layer hosts, on top of the system's (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="bound on every filesystem operation (default: 60)",
    )
    p.add_argument("--debug", action="store_true", help="log more")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regfs",
        description="Mount a container registry as a read-only filesystem.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"regfs {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "mount",
        help="mount a registry",
        epilog=MOUNT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", type=Path)
    add_mount_options(p)

    p = sub.add_parser(
        "umount",
        help="unmount",
        epilog="example:\n  regfs umount /mnt/mcr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", type=Path)

    p = sub.add_parser(
        "prefetch",
        help="warm the cache: read files or whole images through a mount",
        description="Read files (or every manifest, config and layer of the images under "
        "a directory) through a regfs mount, so later reads come from the cache. "
        "Ctrl-C stops; what was read stays cached.",
        epilog="examples:\n  regfs prefetch /mnt/mcr/dotnet/runtime/8.0\n"
        "  regfs prefetch -j 8 /mnt/hub/library/alpine /mnt/hub/library/debian/12\n"
        "\nexit codes: 0 all read, 1 some file failed (named on stderr), 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    p.add_argument(
        "--jobs", "-j", type=int, default=4, help="files read at once (default: %(default)s)"
    )

    p = sub.add_parser(
        "status",
        help="show a mount's statistics",
        epilog="examples:\n  regfs status /mnt/mcr\n  regfs status --json /mnt/mcr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--json", action="store_true", help="print .regfs/stats.json as it is")

    p = sub.add_parser(
        "cache",
        help="look at or trim the disk cache (safe while mounts run)",
        epilog="examples:\n  regfs cache info\n  regfs cache prune --to 5G\n"
        "  regfs cache clear --digest sha256:…\n  regfs cache clear --cache-dir /var/cache/regfs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    for name, text in (
        ("info", "what the cache holds, per blob"),
        ("prune", "evict least recently used blobs down to a size"),
        ("clear", "remove everything, or one digest"),
    ):
        q = cache_sub.add_parser(name, help=text, description=text)
        q.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help=f"disk cache (default: {default_cache_dir()})",
        )
        if name == "info":
            q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "prune":
            q.add_argument("--to", type=parse_size, required=True, metavar="SIZE")
        if name == "clear":
            q.add_argument("--digest", metavar="DIGEST", help="only this blob or document")
    commands.add_commands(sub, add_fetch_options)
    return parser


def config_from(args: argparse.Namespace) -> MountConfig:
    options = Options(
        platform=parse_platform(args.platform) if args.platform else host_platform_default(),
        tag_ttl=args.tag_ttl,
        offline=args.offline,
    )
    return MountConfig(
        mountpoint=args.mountpoint,
        registry=args.registry,
        options=options,
        cache_dir=args.cache_dir or default_cache_dir(),
        cache_size=args.cache_size,
        memory_cache=args.memory_cache,
        block_size=args.block_size,
        foreign_url_allow=args.foreign_url_allow,
        insecure=args.insecure,
        ca_cert=args.ca_cert,
        foreign_ca_certs=args.foreign_ca_cert,
        fuse_options=args.fuse_options,
        foreground=args.foreground,
        debug=args.debug,
        op_timeout=args.timeout,
        mirrors=args.mirror,
        all_registries=args.all_registries,
        allow_registries=args.allow_registry,
    )


# -- the mount helper form: `regfs SOURCE MOUNTPOINT -o opts` (mount(8), mount.fuse3, fstab) --

# -o keys that are regfs options; values as on the command line. Everything else goes to FUSE.
HELPER_VALUES = {
    "registry": "--registry",
    "platform": "--platform",
    "cache_dir": "--cache-dir",
    "cache_size": "--cache-size",
    "memory_cache": "--memory-cache",
    "block_size": "--block-size",
    "tag_ttl": "--tag-ttl",
    "foreign_url_allow": "--foreign-url-allow",
    "mirror": "--mirror",
    "ca_cert": "--ca-cert",
    "foreign_ca_cert": "--foreign-ca-cert",
    "timeout": "--timeout",
    "allow_registry": "--allow-registry",
}
HELPER_FLAGS = {"offline", "insecure", "foreground", "debug", "all_registries"}
# Meant for mount(8), systemd or the helper, not for FUSE (which would refuse them).
# rw is mount(8)'s default; regfs is read-only whatever it says.
HELPER_IGNORED = {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "nofail", "rw"}
HELPER_IGNORED_PREFIXES = ("x-", "comment=", "_netdev", "helper=")


def is_helper_form(argv: list[str]) -> bool:
    """The first argument is neither a subcommand nor an option: mount(8) calling a helper."""
    return bool(argv) and not argv[0].startswith("-") and argv[0] not in COMMANDS


def helper_args(argv: list[str]) -> list[str]:
    """`SOURCE MOUNTPOINT [-o OPTS]... [-n] [-s] [-v] [-t TYPE]` as `mount` arguments."""
    positional: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            options.extend(o for o in argv[i + 1].split(",") if o)
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.extend(o for o in arg[2:].split(",") if o)
        elif arg in ("-t", "-N") and i + 1 < len(argv):
            i += 1  # the type (fuse.regfs) or namespace: nothing for us
        elif arg.startswith("-"):
            pass  # -n (no mtab), -s (sloppy), -v, -f (fake) from mount(8)
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise argparse.ArgumentTypeError(
            f"unknown command {argv[0]!r} (see regfs --help); as a mount helper: "
            "regfs SOURCE MOUNTPOINT [-o OPTIONS], SOURCE being the registry"
        )
    source, mountpoint = positional
    args = ["mount", "--registry", source.removeprefix("regfs#")]
    fuse: list[str] = []
    for option in options:
        key, has_value, value = option.partition("=")
        if key in HELPER_VALUES and has_value:
            args += [HELPER_VALUES[key], value]
        elif key in HELPER_FLAGS and not has_value:
            args.append(f"--{key.replace('_', '-')}")
        elif option in HELPER_IGNORED or option.startswith(HELPER_IGNORED_PREFIXES):
            continue
        else:
            fuse.append(option)
    if fuse:
        args += ["-o", ",".join(fuse)]
    return [*args, mountpoint]


def cache_command(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir or default_cache_dir()
    if args.cache_command == "info":
        info = cachectl.summary(cache_dir)
        if args.json:
            print(json.dumps(cachectl.info_document(info), indent=2))
        else:
            print(cachectl.render_info(cache_dir, info))
        return 0
    if args.cache_command == "prune":
        freed = cachectl.prune(cache_dir, args.to)
        print(f"pruned {cachectl.human(freed)} from {cache_dir}")
        return 0
    try:
        freed = cachectl.clear(cache_dir, args.digest)
    except ValueError as exc:
        print(f"regfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"cleared {cachectl.human(freed)} from {cache_dir}")
    return 0


COMMANDS = ("mount", "umount", "prefetch", "status", "cache", *commands.COMMANDS)

NO_MOUNT_HERE = (
    "mounting needs Linux (or Windows' WSL2, whose mounts Windows sees at "
    "\\\\wsl.localhost\\<distro>\\...); here, `regfs ls`, `regfs cat` and `regfs cp` "
    "show the same tree without a mount, e.g. regfs cp REPO:TAG/image.tar ."
)


def _mount_module() -> ModuleType:
    """regfs.mount, imported only for the commands that mount: it needs pyfuse3, which
    ls/cat/cp and the rest do without (and which exists on Linux only)."""
    if not sys.platform.startswith("linux"):
        raise MountUnavailable(NO_MOUNT_HERE)
    try:
        from . import mount
    except ImportError as exc:
        raise MountUnavailable(f"mounting needs pyfuse3 ({exc}); {NO_MOUNT_HERE}") from None
    return mount


class MountUnavailable(RegfsError):
    """This system cannot mount: not Linux, or pyfuse3 missing."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if is_helper_form(argv):
        try:
            argv = helper_args(argv)
        except argparse.ArgumentTypeError as exc:
            print(f"regfs: {exc}", file=sys.stderr)
            return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        if args.command == "mount":
            if args.all_registries and args.mirror:
                parser.error(
                    "--mirror is for a mount of one registry; with --all-registries, mirrors "
                    "come from registries.conf ([[registry.mirror]])"
                )
            return int(_mount_module().run(config_from(args)))
        if args.command == "umount":
            _mount_module().unmount(args.mountpoint)
            return 0
        if args.command in commands.COMMANDS:
            return commands.run(args, config_from(args))
        if args.command == "prefetch":
            return prefetch.run(args.paths, jobs=args.jobs)
        if args.command == "status":
            return status.show(args.mountpoint, args.json)
        if args.command == "cache":
            return cache_command(args)
        parser.print_help()
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except RegfsError as exc:
        print(f"regfs: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
