"""regfs.oci.manifest: parsing every document kind, self-consistency checks, digests, platforms."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from regfs.errors import ManifestError
from regfs.oci import manifest as mf


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _desc(media_type: str, seed: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(seed), "size": size, **extra}


def _raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=3).encode()


def docker_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mf.DOCKER_MANIFEST,
        "config": _desc(mf.DOCKER_CONFIG, "config", 1234),
        "layers": [
            _desc(mf.DOCKER_LAYER, "l1", 100),
            _desc(
                mf.DOCKER_FOREIGN_LAYER,
                "l2",
                200,
                urls=["https://go.microsoft.com/fwlink/?linkid=1"],
            ),
        ],
    }


def oci_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": _desc(mf.OCI_CONFIG, "config"),
        "layers": [_desc(mf.OCI_LAYER_GZIP, "a"), _desc(mf.OCI_LAYER_ZSTD, "b")],
        "annotations": {"org.opencontainers.image.title": "x"},
    }


def index(media_type: str = mf.OCI_INDEX) -> dict[str, Any]:
    entry_type = mf.DOCKER_MANIFEST if media_type == mf.DOCKER_MANIFEST_LIST else mf.OCI_MANIFEST
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            _desc(entry_type, "amd64", platform={"os": "linux", "architecture": "amd64"}),
            _desc(
                entry_type,
                "arm64",
                platform={"os": "linux", "architecture": "arm64", "variant": "v8"},
            ),
            _desc(
                entry_type,
                "win",
                platform={
                    "os": "windows",
                    "architecture": "amd64",
                    "os.version": "10.0.17763.1",
                },
            ),
        ],
    }


def schema1(signed: bool) -> tuple[bytes, bytes]:
    """(served bytes, signed payload) of a schema 1 manifest, signed the way libtrust does."""
    doc = {
        "schemaVersion": 1,
        "name": "legacy/schema1",
        "tag": "1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": _digest("top")}, {"blobSum": _digest("base")}],
        "history": [
            {"v1Compatibility": json.dumps({"id": "top", "created": "2020-01-02T03:04:05Z"})},
            {"v1Compatibility": json.dumps({"id": "base"})},
        ],
    }
    payload = _raw(doc)
    if not signed:
        return payload, payload
    # libtrust: cut the payload before its closing brace, splice `signatures` in, and record
    # the cut (formatLength) and what was cut off (formatTail) in the protected header.
    format_length = payload.rindex(b"\n}")
    tail = payload[format_length:]
    protected = {
        "formatLength": format_length,
        "formatTail": base64.urlsafe_b64encode(tail).rstrip(b"=").decode(),
        "time": "2020-01-02T03:04:05Z",
    }
    protected_b64 = base64.urlsafe_b64encode(json.dumps(protected).encode()).rstrip(b"=").decode()
    signatures = json.dumps(
        [
            {
                "header": {"alg": "ES256", "jwk": {"kty": "EC"}},
                "signature": "c2lnbmF0dXJl",
                "protected": protected_b64,
            }
        ],
        indent=3,
    )
    served = payload[:format_length] + b',\n   "signatures": ' + signatures.encode() + tail
    return served, payload


# --------------------------------------------------------------------------------------------
# schema 2 manifests and indexes


def test_docker_manifest() -> None:
    raw = _raw(docker_manifest())
    doc = mf.parse_document(raw, mf.DOCKER_MANIFEST)
    assert isinstance(doc, mf.Manifest)
    assert doc.media_type == mf.DOCKER_MANIFEST
    assert doc.raw == raw
    assert doc.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert doc.config is not None and doc.config.size == 1234
    assert doc.config.digest == _digest("config")
    assert [d.digest for d in doc.layers] == [_digest("l1"), _digest("l2")]
    assert [d.size for d in doc.layers] == [100, 200]
    assert not doc.layers[0].is_foreign
    assert doc.layers[1].is_foreign
    assert doc.layers[1].urls == ("https://go.microsoft.com/fwlink/?linkid=1",)


def test_oci_manifest_with_charset_in_content_type() -> None:
    raw = _raw(oci_manifest())
    doc = mf.parse_document(raw, mf.OCI_MANIFEST + "; charset=utf-8")
    assert isinstance(doc, mf.Manifest)
    assert doc.media_type == mf.OCI_MANIFEST
    assert [mf.blob_extension(d.media_type) for d in doc.layers] == ["tar.gz", "tar.zst"]


@pytest.mark.parametrize("media_type", [mf.DOCKER_MANIFEST_LIST, mf.OCI_INDEX])
def test_index(media_type: str) -> None:
    raw = _raw(index(media_type))
    doc = mf.parse_document(raw, media_type)
    assert isinstance(doc, mf.Index)
    assert doc.media_type == media_type
    assert doc.digest == mf.sha256_digest(raw)
    platforms = [d.platform for d in doc.manifests]
    assert platforms == [
        mf.Platform("linux", "amd64"),
        mf.Platform("linux", "arm64", "v8"),
        mf.Platform("windows", "amd64", "", "10.0.17763.1"),
    ]


def test_given_digest_is_kept() -> None:
    digest = "sha512:" + "a" * 128
    doc = mf.parse_document(_raw(oci_manifest()), digest=digest)
    assert doc.digest == digest


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("", mf.OCI_MANIFEST),
        ("application/json", mf.OCI_MANIFEST),
        (mf.DOCKER_MANIFEST, mf.DOCKER_MANIFEST),
        (mf.OCI_MANIFEST, mf.OCI_MANIFEST),
    ],
)
def test_schema2_without_media_type_manifest(content_type: str, expected: str) -> None:
    body = oci_manifest()
    del body["mediaType"]
    doc = mf.parse_document(_raw(body), content_type)
    assert isinstance(doc, mf.Manifest)
    assert doc.media_type == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [("", mf.OCI_INDEX), (mf.DOCKER_MANIFEST_LIST, mf.DOCKER_MANIFEST_LIST)],
)
def test_schema2_without_media_type_index(content_type: str, expected: str) -> None:
    body = index()
    del body["mediaType"]
    doc = mf.parse_document(_raw(body), content_type)
    assert isinstance(doc, mf.Index)
    assert doc.media_type == expected


# --------------------------------------------------------------------------------------------
# schema 1


def test_schema1_unsigned() -> None:
    raw, _ = schema1(signed=False)
    doc = mf.parse_document(raw, "application/json")
    assert isinstance(doc, mf.Manifest)
    assert doc.media_type == mf.DOCKER_SCHEMA1
    assert doc.digest == mf.sha256_digest(raw)
    assert doc.config is None
    # fsLayers are top first; the tree wants base first.
    assert [d.digest for d in doc.layers] == [_digest("base"), _digest("top")]
    assert all(d.size == -1 for d in doc.layers)
    assert doc.schema1_config is not None
    assert json.loads(doc.schema1_config)["id"] == "top"


def test_schema1_signed_digest_is_of_payload() -> None:
    raw, payload = schema1(signed=True)
    assert raw != payload
    assert mf.schema1_payload(raw) == payload
    for content_type in (mf.DOCKER_SCHEMA1_SIGNED, "application/json", ""):
        doc = mf.parse_document(raw, content_type)
        assert isinstance(doc, mf.Manifest)
        assert doc.media_type == mf.DOCKER_SCHEMA1_SIGNED
        assert doc.raw == raw  # shown as served
        assert doc.digest == mf.sha256_digest(payload)
    assert mf.document_digest(raw, mf.DOCKER_SCHEMA1_SIGNED) == mf.sha256_digest(payload)
    assert mf.document_digest(raw, mf.DOCKER_SCHEMA1_SIGNED, "sha512") == mf.digest_of(
        payload, "sha512"
    )


def test_schema1_payload_unsigned_is_identity() -> None:
    raw, _ = schema1(signed=False)
    assert mf.schema1_payload(raw) == raw


def _resign(raw: bytes, protected: object) -> bytes:
    doc = json.loads(raw)
    encoded = base64.urlsafe_b64encode(json.dumps(protected).encode()).rstrip(b"=").decode()
    doc["signatures"][0]["protected"] = encoded
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "protected",
    [
        {"formatLength": 0, "formatTail": "fQ"},
        {"formatLength": 10**9, "formatTail": "fQ"},
        {"formatLength": "12", "formatTail": "fQ"},
        {"formatLength": 12},
        {"formatTail": "fQ"},
        [],
    ],
)
def test_schema1_bad_protected_header(protected: object) -> None:
    raw, _ = schema1(signed=True)
    with pytest.raises(ManifestError):
        mf.schema1_payload(_resign(raw, protected))


def test_schema1_bad_base64_and_bad_signatures() -> None:
    raw, _ = schema1(signed=True)
    doc = json.loads(raw)
    doc["signatures"][0]["protected"] = "!!!not base64!!!"
    with pytest.raises(ManifestError):
        mf.schema1_payload(json.dumps(doc).encode())
    doc["signatures"] = "nope"
    with pytest.raises(ManifestError):
        mf.schema1_payload(json.dumps(doc).encode())
    doc["signatures"] = ["nope"]
    with pytest.raises(ManifestError):
        mf.schema1_payload(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "protected",
    [None, 12, "", "00", base64.urlsafe_b64encode(b"[" * 100_000).decode()],
    ids=["null", "number", "empty", "not UTF-8", "too deep"],
)
def test_schema1_protected_header_that_is_no_json_object(protected: object) -> None:
    """Found by tests/unit/test_parser_properties.py: these escaped as TypeError,
    UnicodeDecodeError, JSONDecodeError and RecursionError."""
    raw, _ = schema1(signed=True)
    doc = json.loads(raw)
    doc["signatures"][0]["protected"] = protected
    with pytest.raises(ManifestError):
        mf.schema1_payload(json.dumps(doc).encode())


def test_json_nested_past_the_stack_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        mf.parse_document(b"[" * 100_000 + b"]" * 100_000)


def test_schema1_bad_layers() -> None:
    raw, _ = schema1(signed=False)
    doc = json.loads(raw)
    doc["fsLayers"][0]["blobSum"] = "sha256:short"
    with pytest.raises(ManifestError):
        mf.parse_document(json.dumps(doc).encode())
    del doc["fsLayers"]
    with pytest.raises(ManifestError):
        mf.parse_document(json.dumps(doc).encode())


def test_schema1_declaring_schema2_type_rejected() -> None:
    raw, _ = schema1(signed=False)
    doc = json.loads(raw)
    doc["mediaType"] = mf.DOCKER_MANIFEST
    with pytest.raises(ManifestError):
        mf.parse_document(json.dumps(doc).encode())


# --------------------------------------------------------------------------------------------
# documents that contradict themselves or the server


def test_both_manifests_and_layers_rejected() -> None:
    for body in (index(), oci_manifest()):
        body["manifests"] = index()["manifests"]
        body["layers"] = oci_manifest()["layers"]
        body["config"] = oci_manifest()["config"]
        with pytest.raises(ManifestError, match="both"):
            mf.parse_document(_raw(body))
        del body["mediaType"]
        with pytest.raises(ManifestError, match="both"):
            mf.parse_document(_raw(body))
    schema1_with_manifests = json.loads(schema1(signed=False)[0])
    schema1_with_manifests["manifests"] = []
    with pytest.raises(ManifestError, match="both"):
        mf.parse_document(json.dumps(schema1_with_manifests).encode())


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (oci_manifest(), mf.OCI_INDEX),
        (docker_manifest(), mf.DOCKER_MANIFEST_LIST),
        (index(), mf.OCI_MANIFEST),
        (index(mf.DOCKER_MANIFEST_LIST), mf.DOCKER_MANIFEST),
        (index(), mf.DOCKER_SCHEMA1_SIGNED),
    ],
)
def test_content_type_contradicting_body_rejected(body: dict[str, Any], content_type: str) -> None:
    with pytest.raises(ManifestError, match="contradicts"):
        mf.parse_document(_raw(body), content_type)


def test_schema1_served_as_index_rejected() -> None:
    raw, _ = schema1(signed=True)
    with pytest.raises(ManifestError):
        mf.parse_document(raw, mf.OCI_INDEX)


def test_media_type_contradicting_shape_rejected() -> None:
    body = oci_manifest()
    body["mediaType"] = mf.OCI_INDEX  # an index without manifests
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))
    body = index()
    body["mediaType"] = mf.DOCKER_MANIFEST  # a manifest without layers
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))


def test_over_4_mib_rejected() -> None:
    body = oci_manifest()
    body["annotations"] = {"pad": ""}
    base = len(_raw(body))
    body["annotations"]["pad"] = "x" * (mf.MAX_MANIFEST_BYTES - base)
    raw = _raw(body)
    assert len(raw) == mf.MAX_MANIFEST_BYTES
    assert isinstance(mf.parse_document(raw), mf.Manifest)
    body["annotations"]["pad"] += "x"
    with pytest.raises(ManifestError, match="exceeds"):
        mf.parse_document(_raw(body))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"string"',
        b"{}",
        b'{"schemaVersion": 3, "layers": []}',
        b'{"schemaVersion": "2", "layers": []}',
        b'{"schemaVersion": true, "fsLayers": []}',
        b'{"schemaVersion": 2, "mediaType": 7}',
        b'{"schemaVersion": 2, "mediaType": "application/x-unknown"}',
    ],
)
def test_junk_rejected(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        mf.parse_document(raw)


def _with_layer(layer: object) -> bytes:
    body = oci_manifest()
    body["layers"] = [layer]
    return _raw(body)


@pytest.mark.parametrize(
    "layer",
    [
        "sha256:abc",
        None,
        {"mediaType": mf.OCI_LAYER_GZIP, "size": 1},  # no digest
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": "sha256:abc", "size": 1},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x").upper(), "size": 1},
        {"mediaType": 5, "digest": _digest("x"), "size": 1},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x")},  # no size
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": -1},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": "1"},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": 1.5},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": True},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": 1, "urls": "u"},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": 1, "urls": [1]},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": 1, "annotations": []},
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": _digest("x"), "size": 1, "platform": "x"},
        {
            "mediaType": mf.OCI_LAYER_GZIP,
            "digest": _digest("x"),
            "size": 1,
            "platform": {"os": "linux"},
        },
    ],
)
def test_bad_descriptor_rejected(layer: object) -> None:
    with pytest.raises(ManifestError):
        mf.parse_document(_with_layer(layer))


def test_bad_structure_rejected() -> None:
    body = oci_manifest()
    body["layers"] = {"not": "a list"}
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))
    body = oci_manifest()
    del body["config"]
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))
    body = oci_manifest()
    body["config"] = {"mediaType": mf.OCI_CONFIG}
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))
    body = index()
    body["manifests"] = "x"
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))
    body = index()
    body["manifests"][1]["platform"]["architecture"] = None
    with pytest.raises(ManifestError):
        mf.parse_document(_raw(body))


def test_documents_are_frozen() -> None:
    doc = mf.parse_document(_raw(oci_manifest()))
    with pytest.raises(AttributeError):
        doc.digest = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# layer extensions and platforms


@pytest.mark.parametrize(
    ("media_type", "ext"),
    [
        (mf.DOCKER_LAYER, "tar.gz"),
        (mf.DOCKER_FOREIGN_LAYER, "tar.gz"),
        (mf.OCI_LAYER_GZIP, "tar.gz"),
        (mf.OCI_NONDIST_GZIP, "tar.gz"),
        (mf.OCI_LAYER_ZSTD, "tar.zst"),
        (mf.OCI_NONDIST_ZSTD, "tar.zst"),
        ("application/vnd.docker.image.rootfs.diff.tar.zstd", "tar.zst"),
        (mf.OCI_LAYER_TAR, "tar"),
        (mf.OCI_NONDIST_TAR, "tar"),
    ],
)
def test_blob_extension_of_layers(media_type: str, ext: str) -> None:
    assert mf.blob_extension(media_type) == ext


def test_platform_dirname() -> None:
    assert mf.Platform("linux", "amd64").dirname == "linux-amd64"
    assert mf.Platform("linux", "arm64", "v8").dirname == "linux-arm64-v8"
    assert mf.Platform("windows", "amd64", "", "10.0.17763.1").dirname == "windows-amd64"


def test_platform_matches() -> None:
    amd64 = mf.Platform("linux", "amd64")
    arm64_v8 = mf.Platform("linux", "arm64", "v8")
    arm_v7 = mf.Platform("linux", "arm", "v7")
    arm_v6 = mf.Platform("linux", "arm", "v6")
    windows = mf.Platform("windows", "amd64", "", "10.0.17763.1")
    assert amd64.matches(mf.Platform("linux", "amd64"))
    assert not amd64.matches(mf.Platform("windows", "amd64"))
    assert not windows.matches(mf.Platform("linux", "amd64"))
    assert windows.matches(mf.Platform("windows", "amd64"))
    assert not amd64.matches(mf.Platform("linux", "arm64"))
    # A wanted variant must match; no wanted variant admits any.
    assert arm64_v8.matches(mf.Platform("linux", "arm64", "v8"))
    assert arm64_v8.matches(mf.Platform("linux", "arm64"))
    assert arm_v7.matches(mf.Platform("linux", "arm", "v7"))
    assert not arm_v6.matches(mf.Platform("linux", "arm", "v7"))
    assert not arm_v7.matches(mf.Platform("linux", "arm", "v6"))


def test_platform_arm64_without_variant_is_v8() -> None:
    # Many indexes list arm64 without a variant, and an arm64 host asks for arm64/v8: the same
    # platform (containerd normalises arm64/v8 to arm64).
    assert mf.Platform("linux", "arm64").matches(mf.Platform("linux", "arm64", "v8"))
    assert mf.Platform("linux", "arm64", "v8").matches(mf.Platform("linux", "arm64"))
    assert not mf.Platform("linux", "arm64", "v9").matches(mf.Platform("linux", "arm64", "v8"))


def test_accept_names_every_type() -> None:
    accepted = {t.strip() for t in mf.ACCEPT.split(",")}
    assert accepted == set(mf.MANIFEST_TYPES + mf.INDEX_TYPES)


# --------------------------------------------------------------------------------------------
# blob names by media type; images and artifacts

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_SIGNATURE = "application/vnd.dev.cosign.simplesigning.v1+json"
SPDX = "application/spdx+json"


@pytest.mark.parametrize(
    ("media_type", "ext"),
    [
        (SPDX, "json"),
        (IN_TOTO, "json"),
        (COSIGN_SIGNATURE, "json"),
        (HELM_CONFIG, "json"),
        ("application/json", "json"),
        ("Application/JSON; charset=utf-8", "json"),
        (mf.OCI_EMPTY, "json"),
        (HELM_CHART, "tar.gz"),
        ("application/x-tar", "tar"),
        ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", ""),
        ("application/octet-stream", ""),
        ("application/vnd.wasm.content.layer.v1+wasm", ""),
        ("application/vnd.example.tarball", ""),  # "tar" inside a word is no tar
        ("", ""),
    ],
)
def test_blob_extension_follows_the_media_type(media_type: str, ext: str) -> None:
    assert mf.blob_extension(media_type) == ext


def test_blob_and_config_filenames() -> None:
    digest = _digest("x")
    assert mf.blob_filename(mf.Descriptor(SPDX, digest, 1)) == f"{digest}.json"
    assert mf.blob_filename(mf.Descriptor(mf.OCI_LAYER_ZSTD, digest, 1)) == f"{digest}.tar.zst"
    assert mf.blob_filename(mf.Descriptor("application/octet-stream", digest, 1)) == digest
    assert mf.config_filename(mf.DOCKER_CONFIG) == "config.json"
    assert mf.config_filename(HELM_CONFIG) == "config.json"
    assert mf.config_filename("application/vnd.example.config.v1.tar") == "config.tar"
    assert mf.config_filename("application/octet-stream") == "config"


def _manifest(config_type: str, *layer_types: str, **extra: Any) -> mf.Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": _desc(config_type, "config"),
        "layers": [_desc(t, f"layer{i}") for i, t in enumerate(layer_types)],
        **extra,
    }
    parsed = mf.parse_document(_raw(doc))
    assert isinstance(parsed, mf.Manifest)
    return parsed


def test_images_are_images() -> None:
    assert mf.parse_document(_raw(docker_manifest())).is_image  # type: ignore[union-attr]
    assert _manifest(mf.OCI_CONFIG, mf.OCI_LAYER_GZIP, mf.OCI_NONDIST_ZSTD).is_image
    assert _manifest(mf.OCI_CONFIG).is_image  # FROM scratch with nothing added
    assert _manifest(mf.OCI_CONFIG, "").is_image  # no mediaType: benefit of the doubt
    raw, _ = schema1(signed=False)
    assert mf.parse_document(raw).is_image  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (lambda: _manifest(HELM_CONFIG, HELM_CHART), "a Helm chart: its own config type"),
        (lambda: _manifest(mf.OCI_EMPTY, SPDX, artifactType=SPDX), "an OCI 1.1 SBOM"),
        (lambda: _manifest(mf.OCI_CONFIG, mf.OCI_LAYER_GZIP, artifactType="x/y"), "artifactType"),
        (lambda: _manifest(mf.OCI_CONFIG, COSIGN_SIGNATURE), "cosign: image config, JSON layer"),
        (lambda: _manifest(mf.OCI_CONFIG, IN_TOTO), "a buildx attestation manifest"),
    ],
)
def test_artifacts_are_not_images(manifest: Any, why: str) -> None:
    assert not manifest().is_image, why


def test_artifact_fields_are_parsed() -> None:
    subject = _desc(mf.OCI_MANIFEST, "subject", 500)
    doc = _manifest(
        mf.OCI_EMPTY,
        SPDX,
        artifactType=SPDX,
        subject=subject,
        annotations={mf.CREATED_ANNOTATION: "2024-05-06T07:08:09Z"},
    )
    assert doc.artifact_type == SPDX
    assert doc.subject == mf.Descriptor(mf.OCI_MANIFEST, subject["digest"], 500)
    assert doc.annotations[mf.CREATED_ANNOTATION] == "2024-05-06T07:08:09Z"
    listed = index()
    listed["artifactType"] = "application/vnd.example"
    listed["manifests"][0]["artifactType"] = SPDX
    listed["manifests"][0]["annotations"] = {mf.REFERENCE_TYPE: "attestation-manifest"}
    parsed = mf.parse_document(_raw(listed))
    assert isinstance(parsed, mf.Index)
    assert parsed.artifact_type == "application/vnd.example"
    assert parsed.manifests[0].artifact_type == SPDX
    assert parsed.manifests[0].is_attestation and not parsed.manifests[1].is_attestation


@pytest.mark.parametrize(
    "extra",
    [{"artifactType": 3}, {"artifactType": ["a"]}, {"subject": "sha256:x"}, {"subject": {}}],
)
def test_bad_artifact_fields_rejected(extra: dict[str, Any]) -> None:
    with pytest.raises(ManifestError):
        mf.parse_document(_raw({**oci_manifest(), **extra}))


def test_platform_matches_an_os_version_and_its_builds() -> None:
    build = mf.Platform("windows", "amd64", "", "10.0.20348.2402")
    assert build.matches(mf.Platform("windows", "amd64", "", "10.0.20348"))
    assert build.matches(mf.Platform("windows", "amd64", "", "10.0.20348.2402"))
    assert build.matches(mf.Platform("windows", "amd64", "", "10.0"))
    assert not build.matches(mf.Platform("windows", "amd64", "", "10.0.2034"))  # not a prefix
    assert not build.matches(mf.Platform("windows", "amd64", "", "10.0.17763"))
    assert not mf.Platform("windows", "amd64").matches(mf.Platform("windows", "amd64", "", "10"))
