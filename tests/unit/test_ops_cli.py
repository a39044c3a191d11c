"""Operator tools without a mount: the mount-helper argument form, what prefetch reads,
its display, and cache clear/prune on a disk cache."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from regfs import cachectl, prefetch
from regfs.cache import disk as disk_tier
from regfs.cache.disk import DiskCache
from regfs.cli import build_parser, helper_args, is_helper_form
from regfs.prefetch import (
    Item,
    LiveDisplay,
    PlainDisplay,
    Prefetch,
    display_names,
    plan,
    summary_line,
)
from regfs.status import render_status

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def test_helper_form_translates_mount_options() -> None:
    argv = [
        "http://127.0.0.1:5000",
        "/mnt/x",
        "-o",
        "rw,noauto,nofail,_netdev,x-systemd.automount,cache_dir=/var/cache/regfs,"
        "mirror=http://m1,mirror=http://m2,offline,allow_other,platform=linux/arm64/v8",
        "-n",
        "-t",
        "fuse.regfs",
    ]
    assert is_helper_form(argv)
    args = build_parser().parse_args(helper_args(argv))
    assert args.command == "mount"
    assert args.registry == "http://127.0.0.1:5000"
    assert args.mountpoint == Path("/mnt/x")
    assert args.cache_dir == Path("/var/cache/regfs")
    assert args.mirror == ["http://m1", "http://m2"]
    assert args.offline
    assert args.platform == "linux/arm64/v8"
    assert args.fuse_options == ["allow_other"]  # rw, noauto, nofail, x-… are not for FUSE


def test_subcommands_and_options_are_not_the_helper_form() -> None:
    for argv in (["mount", "/mnt"], ["prefetch", "a", "b"], ["--version"], []):
        assert not is_helper_form(argv)


def _image(directory: Path, layers: list[str], extras: tuple[str, ...] = ()) -> None:
    (directory / "layers").mkdir(parents=True)
    for name in ("manifest.json", "config.json", *extras):
        (directory / name).write_bytes(b"{}")
    for digest in layers:
        (directory / "layers" / f"{digest}.tar.gz").write_bytes(b"x" * 10)


def test_prefetch_plan_reads_images_not_views_and_each_layer_once(tmp_path: Path) -> None:
    repo = tmp_path / "library" / "hello"
    _image(repo / "latest", [DIGEST_A, DIGEST_B], extras=("image.tar",))
    _image(repo / "v1", [DIGEST_A])
    (repo / "latest" / "oci").mkdir()
    (repo / "latest" / "oci" / "index.json").write_bytes(b"{}")
    # rootfs/ is listed (its layer indexes get built), never read; layers/<digest>/ neither.
    (repo / "latest" / "rootfs" / "etc").mkdir(parents=True)
    (repo / "latest" / "rootfs" / "etc" / "os-release").write_bytes(b"ID=x\n")
    (repo / "latest" / "layers" / DIGEST_A / "etc").mkdir(parents=True)
    (tmp_path / ".regfs").mkdir()
    (tmp_path / ".regfs" / "stats.json").write_bytes(b"{}")
    work = plan([tmp_path, tmp_path / "nothing-here"])
    names = [os.path.relpath(i.path, tmp_path) for i in work.items]
    assert names == [
        "library/hello/latest/manifest.json",
        "library/hello/latest/config.json",
        f"library/hello/latest/layers/{DIGEST_A}.tar.gz",
        f"library/hello/latest/layers/{DIGEST_B}.tar.gz",
        "library/hello/v1/manifest.json",
        "library/hello/v1/config.json",
        "library/hello/latest/rootfs",
    ]
    assert [i.listing for i in work.items] == [False] * 6 + [True]
    assert len(work.files) == 6
    assert [p for p, _ in work.errors] == [tmp_path / "nothing-here"]


def test_display_redraws_on_a_terminal_and_writes_plain_lines_otherwise() -> None:
    items = [Item(Path("/m/a.tar.gz"), 4 << 20, done=1 << 20, started=0.0)]
    job = Prefetch(items, 1)
    job.started = 0.0
    tty_out = io.StringIO()
    tty = LiveDisplay(tty_out, display_names(items))
    tty.update(job, 2.0)
    tty.update(job, 3.0)
    tty.close()
    text = tty_out.getvalue()
    assert "\x1b[1A" in text  # the second frame went back over the first (cursor up)
    assert "/m/a.tar.gz" in text and "ETA" in text and "/s" in text

    plain_out = io.StringIO()
    plain = PlainDisplay(plain_out, display_names(items))
    plain.update(job, 10.0)
    items[0].done, items[0].finished = items[0].size, 11.0
    plain.finished(items[0])
    text = plain_out.getvalue()
    assert "\x1b" not in text
    assert "25%" in text and "done   /m/a.tar.gz" in text


class FakeClock:
    """time.monotonic for prefetch: moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("tty", [False, True])
def test_prefetch_summary_reports_the_wall_time_walking_the_mount_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    image = tmp_path / "repo" / "tag"
    _image(image, [DIGEST_A])
    clock = FakeClock()
    real_plan = prefetch.plan

    def slow_plan(paths: list[Path]) -> prefetch.Plan:
        planned = real_plan(paths)
        clock.now += 44.8  # resolving tags and manifests on a slow registry
        return planned

    def slow_read(self: Prefetch, item: Item) -> None:
        item.started = clock.now
        item.done = item.size
        clock.now += 0.2 / 3  # each of the three files
        item.finished = clock.now

    monkeypatch.setattr(prefetch, "time", clock)
    monkeypatch.setattr(prefetch, "plan", slow_plan)
    monkeypatch.setattr(Prefetch, "_read", slow_read)
    out, err = io.StringIO(), io.StringIO()
    assert prefetch.run([image], jobs=1, out=out, err=err, tty=tty) == 0
    [summary] = [line for line in _visible_lines(out.getvalue()) if "prefetched" in line]
    assert summary == (
        "prefetched 3 of 3 files, 14 B in 45.0s (0 B/s); "
        "finding them took 44.8s, reading 0.2s (70 B/s)"
    )


def test_summary_line_says_the_reading_time_only_when_finding_took_long() -> None:
    assert (
        summary_line(5, 5, 3 << 20, 2.0, 1.9)
        == "prefetched 5 of 5 files, 3.0 MiB in 2.0s (1.5 MiB/s)\n"
    )
    assert (
        summary_line(1, 2, 1 << 20, 10.0, 9.5)
        == "prefetched 1 of 2 files, 1.0 MiB in 10.0s (102.4 KiB/s)\n"
    )
    assert summary_line(2, 2, 8 << 20, 8.0, 4.0) == (
        "prefetched 2 of 2 files, 8.0 MiB in 8.0s (1.0 MiB/s); "
        "finding them took 4.0s, reading 4.0s (2.0 MiB/s)\n"
    )


def _visible_lines(text: str) -> list[str]:
    """What a terminal shows of each line written: control sequences taken out."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.replace("\r", "\n"))
    return [line for line in plain.split("\n") if line.strip()]


def test_live_display_cuts_long_names_instead_of_wrapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "70")
    long_name = f"/mnt/{'deeply/nested/' * 5}layers/{DIGEST_A}.tar.gz"
    items = [Item(Path(long_name), 100 << 20, done=3 << 20, started=0.0)]
    job = Prefetch(items, 1)
    job.started = 0.0
    out = io.StringIO()
    display = LiveDisplay(out, display_names(items))
    display.update(job, 1.0)
    display.update(job, 2.0)
    display.close()
    lines = _visible_lines(out.getvalue())
    assert lines and all(len(line) <= 70 for line in lines)
    assert any("…" in line and f"{DIGEST_A[-8:]}.tar.gz" in line for line in lines)


def test_status_tables_hold_every_count_and_fit_the_width() -> None:
    doc: dict[str, object] = {
        "registry": "http://127.0.0.1:5000",
        "offline": True,
        "mirrors": ["http://[::1]:5001"],
        "uptime_seconds": 12.5,
        "requests": 10,
        "retries": 2,
        "in_flight_blocks": 1,
        "cache": {
            "memory_bytes": 1 << 20,
            "tiers": {"memory": {"hits": 5, "misses": 3}, "disk": {"hits": 1, "misses": 2}},
        },
        "blobs": {"verified": 4, "failed": 0, "purged": 1},
        "bytes_fetched_by_host": {"cdn-" + "x" * 80 + ".example": 1 << 30},
        "errors": {},
        "layer_indexes": {
            "built": 3,
            "spans_inflated": 7,
            "building": [
                {"digest": DIGEST_A, "bytes": 1 << 20, "size": 4 << 20, "bytes_per_second": 1 << 20}
            ],
        },
    }
    out = io.StringIO()
    Console(file=out, width=60).print(render_status(Path("/mnt/[x]"), doc))
    text = out.getvalue()
    assert "\x1b" not in text  # not a terminal: no colour, no control codes
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "/mnt/[x]" in text and "http://[::1]:5001" in text  # not taken for markup
    assert "http://127.0.0.1:5000 (offline)" in text
    assert "10   retries 2   in-flight block fetches 1" in text
    assert "built 3   building 1   spans inflated 7" in text
    assert "aaaaaaaaaaaa  1.0 MiB / 4.0 MiB  1.0 MiB/s" in text
    assert "verified 4   failed 0   purged 1" in text
    assert re.search(r"memory +5 +3", text) and re.search(r"disk +1 +2", text)
    assert "memory held: 1.0 MiB" in text and "1.0 GiB" in text
    assert "(none)" in text  # no errors


def test_cache_clear_and_prune(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, 1 << 30)
    disk.write_block(DIGEST_A, 0, "reg", b"a" * 1000, blob_size=2000)
    disk.write_block(DIGEST_B, 0, "reg", b"b" * 3000, blob_size=3000)
    disk.promote(DIGEST_B, "reg")
    os.utime(disk.verified_dir(DIGEST_B), (1, 1))  # B: used long ago
    for f in disk.verified_dir(DIGEST_B).iterdir():
        os.utime(f, (1, 1))
    blobs = {b.digest: b for b in disk_tier.scan(tmp_path).blobs}
    assert blobs[DIGEST_A].fraction == 0.5 and not blobs[DIGEST_A].verified
    assert blobs[DIGEST_B].fraction == 1.0 and blobs[DIGEST_B].verified

    assert cachectl.prune(tmp_path, 2000) > 0
    assert [b.digest for b in disk_tier.scan(tmp_path).blobs] == [DIGEST_A]  # LRU went

    disk.put_document(DIGEST_B, b"{}")
    assert cachectl.clear(tmp_path, DIGEST_B) > 0
    assert disk.get_document(DIGEST_B) is None
    cachectl.clear(tmp_path)
    assert disk_tier.scan(tmp_path).blobs == []
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted(disk_tier.AREAS)
    disk.write_block(DIGEST_A, 0, "reg", b"a" * 10)  # a running mount goes on writing
    with pytest.raises(ValueError):
        cachectl.clear(tmp_path, "sha256:nothex")


def test_prefetch_lists_rootfs_after_reading_and_says_so(tmp_path: Path) -> None:
    image = tmp_path / "library" / "hello" / "latest"
    _image(image, [DIGEST_A])
    (image / "rootfs" / "etc").mkdir(parents=True)
    out, err = io.StringIO(), io.StringIO()
    assert prefetch.run([image], jobs=2, out=out, err=err, tty=False) == 0, err.getvalue()
    text = out.getvalue()
    assert f"indexed {image / 'rootfs'}" in text
    assert "prefetched 3 of 3 files" in text
    assert "indexed 1 of 1 image trees (rootfs/)" in text
    # A tree that cannot be listed is a failure, named, as a file's would be.
    (image / "rootfs").rename(image / "gone")
    (image / "rootfs").symlink_to(image / "nowhere")
    out, err = io.StringIO(), io.StringIO()
    assert prefetch.run([image], out=out, err=err, tty=False) == 1
    assert "rootfs" in err.getvalue()
    assert "indexed 0 of 1 image trees" in out.getvalue()
