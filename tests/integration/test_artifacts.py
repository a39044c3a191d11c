"""Not every manifest is an image, on a real mount of docker-registry 2.8 seeded with what
buildx, an OCI 1.1 client, cosign and helm push (tests/fixtures/artifacts.py): platforms/
holds runnable images only, referrers/ the attestations, SBOM and signature (the registry has
no referrers API: the fallback tag and cosign's tag), artifacts no image.tar/oci/, blob
names their media type's extension; Windows builds by os.version; tar reads layers as typed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.artifacts import (
    ATTESTED_REPO,
    ATTESTED_TAG,
    CHART_REPO,
    CHART_TAG,
    OCI_CONFIG,
    SIGNED_REPO,
    SIGNED_TAG,
    SPDX,
    WINDOWS_REPO,
    WINDOWS_TAG,
    Artifact,
    SeededArtifacts,
    seed_artifacts,
)
from tests.fixtures.mounting import Mount, mounted
from tests.fixtures.registry import RegistryServer, start_registry

pytestmark = [pytest.mark.mount, pytest.mark.registry]

IMAGE_FILES = ["config.json", "image.tar", "layers", "manifest.json", "oci", "referrers", "rootfs"]
ARTIFACT_FILES = ["config.json", "layers", "manifest.json", "referrers"]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, SeededArtifacts]]:
    with start_registry(tmp_path_factory.mktemp("artifacts-registry")) as server:
        yield server, seed_artifacts(server.url)


@pytest.fixture(scope="module")
def seeded(world: tuple[RegistryServer, SeededArtifacts]) -> SeededArtifacts:
    return world[1]


@pytest.fixture(scope="module")
def mnt(
    tmp_path_factory: pytest.TempPathFactory, world: tuple[RegistryServer, SeededArtifacts]
) -> Iterator[Mount]:
    base = tmp_path_factory.mktemp("artifacts-mount")
    with mounted(base, world[0].url, "--platform", "linux/amd64") as m:
        yield m


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def assert_artifact(directory: Path, artifact: Artifact) -> None:
    """An artifact's directory: its manifest, config and blobs byte for byte, no archive."""
    assert sorted(os.listdir(directory)) == ARTIFACT_FILES
    assert (directory / "manifest.json").read_bytes() == artifact.manifest_bytes
    assert (directory / "config.json").read_bytes() == artifact.config.data
    layers = directory / "layers"
    for number, blob in enumerate(artifact.layers, 1):
        assert blob.media_type.endswith("+json")
        path = layers / f"{blob.digest}.json"
        assert sha256_of(path) == blob.digest and path.read_bytes() == blob.data
        assert os.readlink(layers / f"{number}.json") == path.name


def test_platforms_lists_runnable_images_only(mnt: Mount, seeded: SeededArtifacts) -> None:
    tag = mnt.path / ATTESTED_REPO / ATTESTED_TAG
    attested = seeded.attested
    assert (tag / "index.json").read_bytes() == attested.index_bytes
    assert sorted(os.listdir(tag / "platforms")) == ["linux-amd64", "linux-arm64-v8"]
    for name, image in attested.images.items():
        platform = tag / "platforms" / name
        assert sorted(os.listdir(platform)) == IMAGE_FILES
        assert (platform / "manifest.json").read_bytes() == image.manifest_bytes
    # The tag shows linux/amd64 (this mount's --platform), never an attestation.
    assert sorted(os.listdir(tag)) == sorted([*IMAGE_FILES, "index.json", "platforms"])
    assert (tag / "manifest.json").read_bytes() == attested.images["linux-amd64"].manifest_bytes


def test_attestations_are_referrers(mnt: Mount, seeded: SeededArtifacts) -> None:
    tag = mnt.path / ATTESTED_REPO / ATTESTED_TAG
    attested = seeded.attested
    by_digest = {a.digest: a for a in attested.attestations.values()}
    # The index's referrers/: every attestation it holds.
    assert sorted(os.listdir(tag / "referrers")) == sorted(["index.json", *by_digest])
    for digest, attestation in by_digest.items():
        assert_artifact(tag / "referrers" / digest, attestation)
    # Each platform's referrers/: the attestation naming it, and what says so.
    for name, image in attested.images.items():
        referrers = tag / "platforms" / name / "referrers"
        attestation = attested.attestations[image.manifest_digest]
        assert sorted(os.listdir(referrers)) == ["index.json", attestation.digest]
        assert_artifact(referrers / attestation.digest, attestation)
        (entry,) = json.loads((referrers / "index.json").read_bytes())["manifests"]
        assert entry["digest"] == attestation.digest
        assert entry["annotations"]["vnd.docker.reference.digest"] == image.manifest_digest
        assert entry["platform"] == {"architecture": "unknown", "os": "unknown"}


def test_sbom_and_signature_are_referrers_of_the_image(mnt: Mount, seeded: SeededArtifacts) -> None:
    signed = seeded.signed
    referrers = mnt.path / SIGNED_REPO / SIGNED_TAG / "referrers"
    assert sorted(os.listdir(referrers)) == sorted(
        ["index.json", signed.sbom.digest, signed.signature.digest]
    )
    assert_artifact(referrers / signed.sbom.digest, signed.sbom)
    assert_artifact(referrers / signed.signature.digest, signed.signature)
    index = json.loads((referrers / "index.json").read_bytes())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    kinds = {m["digest"]: m for m in index["manifests"]}
    assert kinds[signed.sbom.digest]["artifactType"] == SPDX  # from the fallback tag's index
    signature = kinds[signed.signature.digest]
    assert signature["artifactType"] == OCI_CONFIG  # cosign's: its config's type
    assert (
        signature["annotations"]["org.opencontainers.image.ref.name"]
        == f"{signed.fallback_tag}.sig"
    )
    # The SBOM's own referrers: none (and asking is no error).
    assert os.listdir(referrers / signed.sbom.digest / "referrers") == ["index.json"]
    # The tags themselves are directories too: the fallback index, the signature artifact.
    repo = mnt.path / SIGNED_REPO
    assert (repo / signed.fallback_tag / "index.json").read_bytes() == signed.fallback_index
    assert os.listdir(repo / signed.fallback_tag / "platforms") == []
    assert_artifact(repo / f"{signed.fallback_tag}.sig", signed.signature)


def test_images_keep_their_archives_and_artifacts_have_none(
    mnt: Mount, seeded: SeededArtifacts, tmp_path: Path
) -> None:
    image = mnt.path / SIGNED_REPO / SIGNED_TAG
    assert sorted(os.listdir(image)) == IMAGE_FILES
    inspected = json.loads(run("skopeo", "inspect", f"docker-archive:{image / 'image.tar'}"))
    assert inspected["Layers"] == list(seeded.signed.image.diff_ids)  # as docker save has them
    inspected = json.loads(run("skopeo", "inspect", f"oci:{image / 'oci'}:{SIGNED_TAG}"))
    assert inspected["Digest"] == seeded.signed.image.manifest_digest
    # The Helm chart: its config and chart, nothing pretending to be an image.
    chart = mnt.path / CHART_REPO / CHART_TAG
    assert sorted(os.listdir(chart)) == ARTIFACT_FILES
    assert (chart / "manifest.json").read_bytes() == seeded.chart.manifest_bytes
    assert (chart / "config.json").read_bytes() == seeded.chart.config.data
    for directory in (
        chart,
        image / "referrers" / seeded.signed.sbom.digest,
        image / "referrers" / seeded.signed.signature.digest,
    ):
        assert not (directory / "image.tar").exists() and not (directory / "oci").exists()


def test_layer_names_carry_their_media_types_extension(mnt: Mount, seeded: SeededArtifacts) -> None:
    (chart_blob,) = seeded.chart.layers
    layers = mnt.path / CHART_REPO / CHART_TAG / "layers"
    assert sorted(os.listdir(layers)) == ["1.tar.gz", f"{chart_blob.digest}.tar.gz"]
    assert sha256_of(layers / f"{chart_blob.digest}.tar.gz") == chart_blob.digest
    image = seeded.signed.image
    layers = mnt.path / SIGNED_REPO / SIGNED_TAG / "layers"
    assert sorted(os.listdir(layers)) == sorted(
        [f"{n}.tar.gz" for n in range(1, len(image.layers) + 1)]
        + [f"{x.digest}.tar.gz" for x in image.layers]
        + [x.digest for x in image.layers]  # each layer's own tree: an image, not an artifact
    )
    for number, layer in enumerate(image.layers, 1):
        assert os.readlink(layers / f"{number}.tar.gz") == f"{layer.digest}.tar.gz"
        assert (layers / f"{number}.tar.gz").read_bytes() == layer.data


def test_tar_reads_a_layer_as_the_readme_types_it(mnt: Mount, seeded: SeededArtifacts) -> None:
    # GNU tar takes `sha256:….tar.gz` for host:file; `./`, --force-local and the numbered
    # link all name the local file.
    (chart_blob,) = seeded.chart.layers
    layers = mnt.path / CHART_REPO / CHART_TAG / "layers"
    name = f"{chart_blob.digest}.tar.gz"
    for args in (["tzf", f"./{name}"], ["--force-local", "-tzf", name], ["tzf", "1.tar.gz"]):
        assert run("tar", *args, cwd=layers).split() == ["mychart/", "mychart/Chart.yaml"]


@pytest.mark.parametrize(
    ("platform", "build"),
    [
        ("windows/amd64:10.0.20348", "10.0.20348.2402"),
        ("windows/amd64:10.0.17763.5329", "10.0.17763.5329"),
        ("windows/amd64:10.0.17763", "10.0.17763.5329"),
        ("windows/amd64", "10.0.20348.2402"),  # no version: the highest build
    ],
)
def test_windows_builds_by_os_version(
    tmp_path: Path,
    world: tuple[RegistryServer, SeededArtifacts],
    platform: str,
    build: str,
) -> None:
    registry, seeded = world
    builds = {p["os.version"]: image for image, p in seeded.windows.entries if "os.version" in p}
    with mounted(tmp_path, registry.url, "--platform", platform) as m:
        tag = m.path / WINDOWS_REPO / WINDOWS_TAG
        assert sorted(os.listdir(tag / "platforms")) == [
            "linux-amd64",
            "windows-amd64-10.0.17763.5329",
            "windows-amd64-10.0.20348.2402",
        ]
        assert (tag / "manifest.json").read_bytes() == builds[build].manifest_bytes
        chosen = tag / "platforms" / f"windows-amd64-{build}" / "manifest.json"
        assert chosen.read_bytes() == builds[build].manifest_bytes
