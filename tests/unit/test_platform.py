"""regfs.oci.platform: the --platform spelling, which entries of an index are platforms, how
they are named (Windows builds by os.version) and which one an index's directory shows."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from regfs.errors import InvalidReferenceError
from regfs.oci import manifest as mf
from regfs.oci.platform import choose_platform, parse_platform, platform_names

WINDOWS = "windows/amd64"


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def entry(platform: str | None, seed: str, **extra: Any) -> dict[str, Any]:
    """An index entry; `platform` is os/arch[/variant][:os.version]."""
    value: dict[str, Any] = {"mediaType": mf.OCI_MANIFEST, "digest": _digest(seed), "size": 1}
    if platform is not None:
        spec, _, version = platform.partition(":")
        os_name, arch, *variant = spec.split("/")
        value["platform"] = {"os": os_name, "architecture": arch}
        if variant:
            value["platform"]["variant"] = variant[0]
        if version:
            value["platform"]["os.version"] = version
    return {**value, **extra}


def index_of(*entries: dict[str, Any]) -> mf.Index:
    raw = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": list(entries)})
    doc = mf.parse_document(raw.encode())
    assert isinstance(doc, mf.Index)
    return doc


def attestation(seed: str, subject: str) -> dict[str, Any]:
    """An entry as buildx writes one: unknown/unknown, naming the image it attests."""
    return entry(
        "unknown/unknown",
        seed,
        annotations={
            mf.REFERENCE_TYPE: "attestation-manifest",
            mf.REFERENCE_DIGEST: _digest(subject),
        },
    )


def names(index: mf.Index) -> dict[str, str]:
    return {name: d.digest for name, d in platform_names(index)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", mf.Platform("linux", "amd64")),
        ("linux/arm64/v8", mf.Platform("linux", "arm64", "v8")),
        ("windows/amd64:10.0.20348", mf.Platform("windows", "amd64", "", "10.0.20348")),
        ("windows/amd64:10.0.20348.2402", mf.Platform("windows", "amd64", "", "10.0.20348.2402")),
        ("linux/arm/v7:5.10", mf.Platform("linux", "arm", "v7", "5.10")),
    ],
)
def test_parse_platform(text: str, expected: mf.Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize(
    "text",
    ["linux", "linux/", "/amd64", "a/b/c/d", "windows/amd64:", "windows/amd64:1:2", "linux/../x"],
)
def test_bad_platforms_are_one_line_errors(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match=r"os/arch\[/variant\]\[:os\.version\]"):
        parse_platform(text)


def test_attestations_and_artifacts_are_no_platforms() -> None:
    index = index_of(
        entry("linux/amd64", "amd"),
        entry("linux/arm64/v8", "arm"),
        attestation("att-amd", "amd"),
        attestation("att-arm", "arm"),
        entry(None, "sbom", artifactType="application/spdx+json"),
        entry("unknown/unknown", "mystery"),
        entry("linux/amd64", "weird", mediaType="application/vnd.example+json"),
    )
    assert names(index) == {"linux-amd64": _digest("amd"), "linux-arm64-v8": _digest("arm")}
    # Whatever the order: an attestation first does not take the only image's place.
    alone = index_of(attestation("att", "amd"), entry("linux/amd64", "amd"))
    assert choose_platform(alone, mf.Platform("linux", "s390x")) == alone.manifests[1]


def test_windows_builds_are_each_named_by_os_version() -> None:
    index = index_of(
        entry(f"{WINDOWS}:10.0.17763.5329", "ltsc2019"),
        entry(f"{WINDOWS}:10.0.20348.2402", "ltsc2022"),
        entry("linux/amd64", "linux"),
    )
    assert names(index) == {
        "windows-amd64-10.0.17763.5329": _digest("ltsc2019"),
        "windows-amd64-10.0.20348.2402": _digest("ltsc2022"),
        "linux-amd64": _digest("linux"),
    }
    # One Windows entry keeps the short name.
    assert list(names(index_of(entry(f"{WINDOWS}:10.0.17763.5329", "one")))) == ["windows-amd64"]


def test_entries_that_share_a_name_are_named_symmetrically() -> None:
    # Same os.version twice, or none: each by its digest, neither gets the bare name.
    index = index_of(
        entry("linux/amd64", "first"),
        entry("linux/amd64", "second"),
        entry(f"{WINDOWS}:10.0.1", "w1"),
        entry(f"{WINDOWS}:10.0.1", "w2"),
        entry(f"{WINDOWS}:10/0", "slash"),  # not a directory name
    )
    hexes = {seed: _digest(seed)[7:19] for seed in ("first", "second", "w1", "w2", "slash")}
    assert set(names(index)) == {
        f"linux-amd64-{hexes['first']}",
        f"linux-amd64-{hexes['second']}",
        f"windows-amd64-{hexes['w1']}",
        f"windows-amd64-{hexes['w2']}",
        f"windows-amd64-{hexes['slash']}",
    }
    # The same entry listed twice is one platform; a name that is no directory name is not used.
    slashed = {**entry(None, "x"), "platform": {"os": "../x/y", "architecture": "amd64"}}
    twice = index_of(entry("linux/amd64", "a"), entry("linux/amd64", "a"), slashed)
    assert names(twice) == {
        f"linux-amd64-{_digest('a')[7:19]}": _digest("a"),
        "unknown": _digest("x"),
    }


def test_choose_platform_by_os_version() -> None:
    index = index_of(
        entry(f"{WINDOWS}:10.0.17763.5329", "ltsc2019"),
        entry(f"{WINDOWS}:10.0.20348.2113", "ltsc2022-old"),
        entry(f"{WINDOWS}:10.0.20348.2402", "ltsc2022"),
        entry(f"{WINDOWS}:10.0.20348.999", "ltsc2022-older"),
        entry("linux/amd64", "linux"),
    )

    def chosen(text: str) -> str | None:
        d = choose_platform(index, parse_platform(text))
        return None if d is None else d.digest

    assert chosen(f"{WINDOWS}:10.0.17763") == _digest("ltsc2019")
    assert chosen(f"{WINDOWS}:10.0.20348") == _digest("ltsc2022")  # the highest build, by number
    assert chosen(f"{WINDOWS}:10.0.20348.2113") == _digest("ltsc2022-old")
    assert chosen(WINDOWS) == _digest("ltsc2022")  # no version: the highest
    assert chosen(f"{WINDOWS}:10.0.14393") is None
    assert chosen("linux/amd64") == _digest("linux")


def test_choose_platform_among_equals_takes_the_first() -> None:
    index = index_of(entry("linux/arm/v6", "v6"), entry("linux/arm/v7", "v7"))
    assert choose_platform(index, parse_platform("linux/arm")) == index.manifests[0]
    assert choose_platform(index, parse_platform("linux/arm/v7")) == index.manifests[1]
