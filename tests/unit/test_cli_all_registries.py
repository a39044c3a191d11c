"""The mount helper form and options of --all-registries (`-o all_registries`, fstab)."""

from __future__ import annotations

from pathlib import Path

from regfs.cli import build_parser, config_from, helper_args


def test_fstab_options_become_mount_options() -> None:
    argv = ["regfs", "/mnt/images", "-o", r"ro,all_registries,allow_registry=127\.0\.0\.1:\d+"]
    args = helper_args(argv)
    assert "--all-registries" in args
    assert args[args.index("--allow-registry") + 1] == r"127\.0\.0\.1:\d+"
    config = config_from(build_parser().parse_args(args))
    assert config.all_registries
    assert config.allow_registries == [r"127\.0\.0\.1:\d+"]
    assert config.mountpoint == Path("/mnt/images")
    assert "all_registries" not in ",".join(config.fuse_options)  # not given to FUSE


def test_the_single_registry_mount_stays_the_default() -> None:
    config = config_from(build_parser().parse_args(["mount", "/mnt/mcr"]))
    assert not config.all_registries and config.allow_registries == []
    assert config.registry == "mcr.microsoft.com"
