"""The demo: a docker-registry on 127.0.0.1 seeded with sample images (a multi-arch index,
an image whose foreign base layer lives on a CDN-like server behind a redirect, as MCR served
Windows base layers), mounted with regfs, browsed with plain tools, then unmounted."""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fixtures.cdn import CDNServer
from tests.fixtures.images import Dir, File, Hardlink, Symlink, make_layer, push_image
from tests.fixtures.mounting import force_unmount
from tests.fixtures.registry import start_registry
from tests.fixtures.seed import seed_registry

REGFS = [sys.executable, "-m", "regfs.cli"]


def show(command: str, cwd: Path) -> None:
    print(f"\n$ {command}", flush=True)
    subprocess.run(command, shell=True, cwd=cwd, check=False, timeout=120)


OS_RELEASE = b'PRETTY_NAME="regfs demo 1"\nNAME="regfs demo"\nVERSION_ID="1"\nID=regfs-demo\n'


def push_demo_base(registry_url: str) -> None:
    """demo/base:1.0 and 1.1, two tags of a small distribution-like image that differ in one
    config file: for rootfs/ (os-release, a symlinked /bin, a hardlink, a diff)."""
    tool = b"#!/bin/sh\necho tool\n"
    base = make_layer(
        [
            Dir("etc"),
            File("etc/os-release", OS_RELEASE),
            Dir("usr"),
            Dir("usr/bin"),
            File("usr/bin/tool", tool, 0o755),
            Hardlink("usr/bin/tool-alias", "usr/bin/tool"),
            Symlink("bin", "usr/bin"),
        ]
    )
    for tag, workers in (("1.0", b"2"), ("1.1", b"4")):
        config = make_layer([Dir("etc"), File("etc/app.conf", b"workers = " + workers + b"\n")])
        push_image(registry_url, "demo/base", tag, [base, config])


def wait_for_interrupt(mnt: Path) -> None:
    """--keep: leave the mount up for the user to explore until Ctrl-C (or SIGTERM)."""
    print(f"\nThe demo registry stays mounted at {mnt} until you press Ctrl-C. Try:")
    for command in [
        f"ls {mnt}",
        f"ls -l {mnt}/library/hello/latest/",
        f"tar tzvf {mnt}/library/hello/latest/layers/1.tar.gz",
        f"cat {mnt}/demo/base/1.1/rootfs/etc/os-release",
        f"diff -r {mnt}/demo/base/1.0/rootfs {mnt}/demo/base/1.1/rootfs",
        f"cat {mnt}/.regfs/stats.json",
    ]:
        print(f"  {command}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print()
    # A second Ctrl-C (or the signal a wrapper forwards) must not cut the unmount short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument(
        "--keep", action="store_true", help="leave the demo mounted until Ctrl-C, to explore"
    )
    args = parser.parse_args(argv)
    # Line by line even into a pipe (`scripts/demo | tee`), in order with the commands' output.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="regfs-demo-") as tmp:
        work = Path(tmp)
        with CDNServer() as cdn, start_registry(work / "registry") as registry:
            seeded = seed_registry(registry.url, cdn)
            push_demo_base(registry.url)
            print(f"registry {registry.url} holds: {', '.join(seeded.repos)}")
            print(f"foreign layers are served by {cdn.url} behind /fwlink/ redirects")
            mnt = work / "mnt"
            mnt.mkdir()
            mount = [
                *REGFS, "mount", "--registry", registry.url, "--cache-dir", str(work / "cache"),
                "--foreign-url-allow", r"^http://127\.0\.0\.1[:/]", str(mnt),
            ]  # fmt: skip
            print("\n$ " + shlex.join(["regfs", *mount[3:]]))
            subprocess.run(
                mount,
                check=True,
                env={"XDG_STATE_HOME": str(work / "state"), "PATH": "/usr/bin:/bin"},
            )
            try:
                hello = "library/hello/latest"
                servercore = "windows/servercore/ltsc2019-amd64"
                first_layer = f"{hello}/layers/{seeded.hello.layers[0].digest}.tar.gz"
                foreign = next(layer for layer in seeded.windows.layers if layer.urls)
                for command in [
                    "ls",
                    "ls library/hello",
                    f"ls -l {hello} {hello}/layers",
                    f"head -c 300 {hello}/manifest.json; echo",
                    f"tar tzvf {first_layer}",
                    "ls multi/arch/1.0 multi/arch/1.0/platforms",
                    "cat multi/arch/1.0/platforms/linux-arm64-v8/manifest.json | head -c 400; echo",
                    f"ls -l {servercore}/layers",
                    f"sha256sum {servercore}/layers/{foreign.digest}.tar.gz   # fetched via its urls",
                    f"ls -l {hello}/",
                    f"tar tvf {hello}/image.tar | head -8   # docker save layout, assembled lazily",
                    f"ls {hello}/oci {hello}/oci/blobs/sha256",
                    "cat demo/base/1.1/rootfs/etc/os-release   # files inside the image, lazily",
                    "ls -l demo/base/1.1/rootfs/",
                    "ls -li demo/base/1.1/rootfs/usr/bin   # a hardlink: one inode, 2 links",
                    "diff demo/base/1.0/rootfs/etc/app.conf demo/base/1.1/rootfs/etc/app.conf",
                    f"find {hello}/layers/{seeded.hello.layers[-1].digest}/   # one layer's own entries",
                    "cat .regfs/stats.json",
                ]:
                    show(command, mnt)
                if args.keep:
                    wait_for_interrupt(mnt)
            finally:
                print(f"\n$ regfs umount {mnt}")
                subprocess.run([*REGFS, "umount", str(mnt)], check=False)
                force_unmount(mnt)
    print("\ndemo done: registry stopped, mount removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
