"""`python -m benchmarks` (what scripts/bench runs): parse the options, build the world,
run the chosen cases and print the table."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import benchmarks
from benchmarks import MiB, log
from benchmarks.cases import CASES, summary
from benchmarks.harness import Bench
from benchmarks.report import Row, document, table
from benchmarks.world import load_world, nginx_cdn, publish_big, publish_foreign
from regfs.cli import parse_size
from tests.fixtures.registry import start_registry

ROOT = Path(__file__).resolve().parent.parent


def case_names(text: str) -> list[str]:
    """`--only cold,random`: names checked against CASES."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown case {', '.join(unknown) or repr(text)} (cases: {', '.join(CASES)})"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=benchmarks.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--size", type=parse_size, default=parse_size("1G"), help="registry layer size (default 1G)"
    )
    parser.add_argument(
        "--foreign-size",
        type=parse_size,
        default=None,
        help="foreign layer size (default: half of --size)",
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each case (default 3)")
    parser.add_argument(
        "--only",
        type=case_names,
        action="append",
        metavar="CASE[,CASE]",
        help="run only these cases (repeatable; default: all, see --list)",
    )
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / ".bench", help="world cache (default .bench/)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep this run's directory (mount logs)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, case in CASES.items():
            print(f"{name:<10} {summary(case)}")
        return 0
    if args.size < 8 * MiB or args.runs < 1:
        parser.error("--size must be at least 8M and --runs at least 1")
    chosen = {name for names in args.only for name in names} if args.only else set(CASES)
    cases = [name for name in CASES if name in chosen]  # the table's order, whatever was asked
    foreign_size = args.foreign_size or args.size // 2

    # SIGTERM unwinds like Ctrl-C: every finally below unmounts and stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    args.workdir.mkdir(parents=True, exist_ok=True)
    world = load_world(args.workdir, args.size, foreign_size)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    rows: list[Row] = []
    try:
        with (
            start_registry(world.directory / "registry") as registry,
            nginx_cdn(world.directory / "cdn", run_dir / "nginx") as cdn_url,
        ):
            publish_big(registry, world)
            publish_foreign(registry, world, f"{cdn_url}/cdn/foreign.tar.gz")
            bench = Bench(run_dir, world, registry, cdn_url, args.runs)
            for name in cases:
                rows += CASES[name](bench)
    finally:
        if args.keep:
            log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(
        f"\nregfs benchmark: {world.big.size / MiB:.0f} MiB registry layer, "
        f"{world.foreign.size / MiB:.0f} MiB foreign layer, {args.runs} runs, "
        f"{os.cpu_count()} CPUs, {elapsed:.0f} s, cases: {', '.join(cases)}\n"
    )
    print(table(rows))
    failed = [r for r in rows if r.passed is False]
    print(f"\n{len([r for r in rows if r.passed])} targets passed, {len(failed)} failed")
    if args.json:
        doc = document(
            rows,
            size=world.big.size,
            foreign_size=world.foreign.size,
            runs=args.runs,
            cpus=os.cpu_count(),
            seconds=round(elapsed, 1),
            layers="tar.gz: one file of random bytes, gzip with stored (level 0) blocks",
            cases=cases,
        )
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 3 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything is unmounted and stopped by now
        log("interrupted")
        sys.exit(130)
