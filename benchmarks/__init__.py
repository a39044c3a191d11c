"""regfs benchmarks side by side with curl, skopeo and the FUSE ceiling (issue 4).

Run it as `scripts/bench [--size 1G] [--runs 3] [--only CASE] [--json FILE]` (or
`python -m benchmarks` from the repository root). Everything is on loopback: the fixture
docker-registry, an nginx playing a CDN that limits each connection, regfs mounted with
--foreground as subprocesses this program owns, and scripts/bench_ceiling.py.

    world.py     the layers, the registry storage holding them, the CDN serving one
    harness.py   mounts, the FUSE ceiling and the measuring commands this program owns
    cases.py     one function per case; each returns its rows of the table
    report.py    the rows, their targets, the table and the JSON document

The world is generated once and kept under .bench/ so a second run starts at once. The
layers are real tar.gz files: a tar of one file of random bytes, gzip-wrapped with *stored*
(level 0) deflate blocks, so they are as incompressible as random data, valid for `tar tzf`,
and written at os.urandom speed.

Exit status: 0 every target passed, 3 some target failed, 1 the benchmark itself failed.
"""

from __future__ import annotations

import sys

MiB = 1 << 20


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
