"""The `regfs` command.

Exit codes: 0 success; 1 a runtime failure (registry unreachable, unmount failed, ...);
2 bad usage or invalid arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import RegfsError
from .mount import MountConfig, default_cache_dir, run, unmount
from .tree import Options, host_platform_default, parse_platform

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


def _platform(text: str) -> str:
    try:
        parse_platform(text)
    except RegfsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _version() -> str:
    try:
        return version("regfs")
    except PackageNotFoundError:
        return "unknown"


MOUNT_EXAMPLES = """examples:
  regfs mount /mnt/mcr
  regfs mount --registry docker.io --platform linux/arm64/v8 /mnt/hub
  regfs mount --registry http://127.0.0.1:5000 --cache-size 20G /mnt/local
  ls /mnt/mcr/windows/servercore/
  regfs umount /mnt/mcr
"""


def add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        default="mcr.microsoft.com",
        help="host[:port] or http(s)://host[:port] (default: %(default)s)",
    )
    p.add_argument(
        "--platform",
        type=_platform,
        help="os/arch[/variant] chosen from an index (default: this host's)",
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
    p.add_argument("--ca-cert", metavar="FILE", help="CA bundle for this registry")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="bound on every filesystem operation (default: 60)",
    )
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="FUSE mount options, comma-separated",
    )
    p.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr"
    )
    p.add_argument("--debug", action="store_true", help="log more")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regfs",
        description="Mount a container registry as a read-only filesystem.",
        epilog=MOUNT_EXAMPLES + "\nexit codes: 0 ok, 1 failure, 2 usage error, 130 interrupted",
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
        fuse_options=args.fuse_options,
        foreground=args.foreground,
        debug=args.debug,
        op_timeout=args.timeout,
        mirrors=args.mirror,
    )


COMMANDS: dict[str, object] = {}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "mount":
            return run(config_from(args))
        if args.command == "umount":
            unmount(args.mountpoint)
            return 0
        parser.print_help()
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except RegfsError as exc:
        print(f"regfs: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
