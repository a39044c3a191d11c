"""The fixture servers are real: they speak the registry API as clients expect."""

from __future__ import annotations

import base64
import io
import json
import shutil
import ssl
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.fixtures.cdn import CDNServer
from tests.fixtures.images import (
    ACCEPT_ALL,
    DOCKER_FOREIGN_LAYER,
    SCHEMA1_SIGNED,
    PushedImage,
    PushedIndex,
    registry_client,
    sha256_digest,
)
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.schema1 import schema1_payload
from tests.fixtures.seed import ALICE, SEEDED_REFERENCES, Seeded, hello_layers
from tests.fixtures.token_issuer import TokenIssuer

pytestmark = pytest.mark.registry


def _split(reference: str) -> tuple[str, str]:
    repo, _, tag = reference.rpartition(":")
    return repo, tag


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, trust_env=False)


# -- the anonymous registry -------------------------------------------------------------


def test_seeded_references_match_what_was_pushed(seeded: Seeded) -> None:
    assert sorted(seeded.images) == sorted(SEEDED_REFERENCES)
    assert seeded.images["library/hello:v1"].manifest_digest == seeded.hello.manifest_digest


@pytest.mark.parametrize("reference", SEEDED_REFERENCES)
def test_manifest_by_tag_is_served_byte_for_byte(
    registry: RegistryServer, seeded: Seeded, reference: str
) -> None:
    pushed = seeded.images[reference]
    repo, tag = _split(reference)
    with _client(registry.url) as client:
        response = client.get(
            f"/v2/{repo}/manifests/{tag}", headers={"Accept": pushed.manifest_media_type}
        )
    assert response.status_code == 200
    assert response.content == pushed.manifest_bytes
    assert response.headers["Docker-Content-Digest"] == pushed.manifest_digest
    assert response.headers["Content-Type"] == pushed.manifest_media_type
    assert sha256_digest(response.content) == pushed.manifest_digest


@pytest.mark.parametrize("reference", SEEDED_REFERENCES)
def test_manifest_by_digest_is_served(
    registry: RegistryServer, seeded: Seeded, reference: str
) -> None:
    pushed = seeded.images[reference]
    repo, _ = _split(reference)
    with _client(registry.url) as client:
        response = client.get(
            f"/v2/{repo}/manifests/{pushed.manifest_digest}", headers={"Accept": ACCEPT_ALL}
        )
    assert response.status_code == 200
    assert response.content == pushed.manifest_bytes


@pytest.mark.parametrize("reference", ["multi/arch:1.0", "multi/oci:2.0"])
def test_index_entries_are_reachable_by_digest(
    registry: RegistryServer, seeded: Seeded, reference: str
) -> None:
    index = seeded.images[reference]
    assert isinstance(index, PushedIndex)
    listed = [entry["digest"] for entry in index.manifest["manifests"]]
    assert listed == [image.manifest_digest for image, _ in index.entries]
    with _client(registry.url) as client:
        for image, platform in index.entries:
            response = client.get(
                f"/v2/{index.repo}/manifests/{image.manifest_digest}",
                headers={"Accept": image.manifest_media_type},
            )
            assert response.status_code == 200
            assert response.content == image.manifest_bytes
            assert image.config["os"] == platform["os"]
            assert image.config["architecture"] == platform["architecture"]


def test_catalog_and_tags(registry: RegistryServer, seeded: Seeded) -> None:
    with _client(registry.url) as client:
        catalog = client.get("/v2/_catalog").json()
        assert catalog["repositories"] == seeded.repos
        tags = client.get("/v2/library/hello/tags/list").json()
    assert tags == {"name": "library/hello", "tags": ["latest", "v1"]}


def test_config_blob_and_layer_blobs(registry: RegistryServer, seeded: Seeded) -> None:
    image = seeded.hello
    with _client(registry.url) as client:
        config = client.get(f"/v2/{image.repo}/blobs/{image.config_digest}")
        assert config.status_code == 200
        assert config.content == image.config_bytes
        assert config.json()["rootfs"]["diff_ids"] == list(image.diff_ids)
        for layer in image.layers:
            response = client.get(f"/v2/{image.repo}/blobs/{layer.digest}")
            assert response.status_code == 200
            assert response.content == layer.data
            assert response.headers["Docker-Content-Digest"] == layer.digest


def test_blob_range_request_returns_the_slice(registry: RegistryServer, seeded: Seeded) -> None:
    layer = max(seeded.hello.layers, key=lambda item: item.size)
    assert layer.size > 2 * 1024 * 1024  # big enough that block boundaries matter
    first, last = 1_000_000, 1_500_123
    with _client(registry.url) as client:
        response = client.get(
            f"/v2/library/hello/blobs/{layer.digest}",
            headers={"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"},
        )
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{layer.size}"
    assert response.content == layer.data[first : last + 1]


def test_hello_layers_hold_every_kind_of_entry(seeded: Seeded) -> None:
    assert hello_layers() == [layer.data for layer in seeded.hello.layers]  # deterministic
    members = []
    for layer in seeded.hello.layers:
        with tarfile.open(fileobj=io.BytesIO(layer.data), mode="r:gz") as tar:
            members.append({m.name: m for m in tar.getmembers()})
            if "data/big.bin" in members[-1]:
                extracted = tar.extractfile("data/big.bin")
                assert extracted is not None
                assert extracted.read() == seeded.big_file
    base, data, top = members
    assert base["bin/hello"].mode == 0o755
    assert data["data/big-hardlink.bin"].islnk()
    assert data["data/big-hardlink.bin"].linkname == "data/big.bin"
    assert data["bin/hi"].issym()
    assert data["bin/hi"].linkname == "hello"
    assert "etc/.wh.motd" in top
    assert "var/cache/.wh..wh..opq" in top
    assert "etc/motd" in base


def test_schema1_manifest_is_served_signed(registry: RegistryServer, seeded: Seeded) -> None:
    pushed = seeded.schema1
    assert pushed.manifest_digest == sha256_digest(pushed.payload)
    with _client(registry.url) as client:
        for reference in (pushed.tag, pushed.manifest_digest):
            response = client.get(
                f"/v2/{pushed.repo}/manifests/{reference}", headers={"Accept": SCHEMA1_SIGNED}
            )
            assert response.status_code == 200
            assert response.headers["Content-Type"] == SCHEMA1_SIGNED
            assert response.headers["Docker-Content-Digest"] == pushed.manifest_digest
            assert schema1_payload(response.content) == pushed.payload
            assert "signatures" in response.json()
        digest, data = pushed.layers[0]
        assert client.get(f"/v2/{pushed.repo}/blobs/{digest}").content == data


def test_tag_get_without_accept_gets_a_schema1_conversion(
    registry: RegistryServer, seeded: Seeded
) -> None:
    # distribution 2.8 rewrites a docker schema 2 manifest for clients that do not accept it.
    with _client(registry.url) as client:
        response = client.get("/v2/library/hello/manifests/latest")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == SCHEMA1_SIGNED
    assert response.headers["Docker-Content-Digest"] != seeded.hello.manifest_digest
    blob_sums = [layer["blobSum"] for layer in response.json()["fsLayers"]]
    assert blob_sums == [layer.digest for layer in reversed(seeded.hello.layers)]


# -- foreign layers and the CDN ---------------------------------------------------------


def test_foreign_layer_is_only_on_the_cdn(
    registry: RegistryServer, seeded: Seeded, cdn: CDNServer
) -> None:
    image = seeded.windows
    foreign = [layer for layer in image.layers if layer.foreign]
    assert len(foreign) == 1
    layer = foreign[0]
    descriptor = image.manifest["layers"][0]
    assert descriptor["mediaType"] == DOCKER_FOREIGN_LAYER
    assert descriptor["urls"] == [cdn.fwlink_url(seeded.foreign_layer_name)]
    assert layer.size > 5 * 1024 * 1024
    with _client(registry.url) as client:
        assert client.get(f"/v2/{image.repo}/blobs/{layer.digest}").status_code == 404

    cdn.clear()
    first, last = 4_000_000, 4_100_000
    with httpx.Client(timeout=30, trust_env=False, follow_redirects=True) as client:
        response = client.get(descriptor["urls"][0], headers={"Range": f"bytes={first}-{last}"})
        full = client.get(descriptor["urls"][0])
    assert response.status_code == 206
    assert [str(r.url) for r in response.history] == [descriptor["urls"][0]]
    assert str(response.url) == cdn.cdn_url(seeded.foreign_layer_name)
    assert response.content == layer.data[first : last + 1]
    assert sha256_digest(full.content) == layer.digest
    seen = cdn.requests
    assert [r.path for r in seen][:2] == [
        f"/fwlink/{seeded.foreign_layer_name}",
        f"/cdn/{seeded.foreign_layer_name}",
    ]
    assert not any(r.has_authorization for r in seen)


def test_cdn_range_semantics(cdn: CDNServer) -> None:
    data = bytes(range(256)) * 4
    cdn.add("ranges.bin", data)
    url = cdn.cdn_url("ranges.bin")
    with httpx.Client(timeout=30, trust_env=False) as client:
        open_ended = client.get(url, headers={"Range": "bytes=1000-"})
        assert open_ended.status_code == 206
        assert open_ended.content == data[1000:]
        assert open_ended.headers["Content-Range"] == "bytes 1000-1023/1024"
        suffix = client.get(url, headers={"Range": "bytes=-10"})
        assert suffix.content == data[-10:]
        past_end = client.get(url, headers={"Range": "bytes=2000-2100"})
        assert past_end.status_code == 416
        assert past_end.headers["Content-Range"] == "bytes */1024"
        clipped = client.get(url, headers={"Range": "bytes=1020-5000"})
        assert clipped.content == data[1020:]
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["Content-Length"] == "1024"
        ignored = client.get(cdn.url + "/norange/ranges.bin", headers={"Range": "bytes=0-9"})
        assert ignored.status_code == 200
        assert ignored.content == data
        assert client.get(cdn.url + "/cdn/nothing-here").status_code == 404


# -- authentication ---------------------------------------------------------------------


def test_htpasswd_registry_needs_basic_credentials(
    htpasswd_registry: RegistryServer, htpasswd_hello: PushedImage
) -> None:
    path = "/v2/library/hello/manifests/latest"
    accept = {"Accept": htpasswd_hello.manifest_media_type}
    with _client(htpasswd_registry.url) as client:
        anonymous = client.get(path, headers=accept)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
        assert client.get(path, headers=accept, auth=("alice", "wrong")).status_code == 401
        allowed = client.get(path, headers=accept, auth=ALICE)
    assert allowed.status_code == 200
    assert allowed.content == htpasswd_hello.manifest_bytes


def _jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_token_registry_refuses_anonymous_pull(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    path = "/v2/library/hello/manifests/latest"
    with _client(token_registry.url) as client:
        challenge = client.get(path)
        assert challenge.status_code == 401
        header = challenge.headers["WWW-Authenticate"]
        assert header.startswith("Bearer ")
        assert f'realm="{token_issuer.realm}"' in header
        assert 'scope="repository:library/hello:pull"' in header
        # An anonymous token exists but grants nothing, so the registry still says no.
        token = httpx.get(
            token_issuer.realm,
            params={"service": token_issuer.service, "scope": "repository:library/hello:pull"},
        ).json()["token"]
        assert _jwt_claims(token)["access"] == []
        refused = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401


def test_token_flow_with_alice(
    token_registry: RegistryServer, token_issuer: TokenIssuer, token_hello: PushedImage
) -> None:
    scope = "repository:library/hello:pull"
    before = token_issuer.requests.count((scope, "alice"))
    with registry_client(token_registry.url, auth=ALICE) as client:
        response = client.get(
            "/v2/library/hello/manifests/latest",
            headers={"Accept": token_hello.manifest_media_type},
        )
        # The same token serves the next request of the same scope.
        blob = client.get(f"/v2/library/hello/blobs/{token_hello.config_digest}")
    assert response.status_code == 200
    assert response.content == token_hello.manifest_bytes
    assert blob.content == token_hello.config_bytes
    assert token_issuer.requests.count((scope, "alice")) == before + 1


def test_token_lifetime_is_configurable(token_issuer: TokenIssuer) -> None:
    answer = httpx.get(
        token_issuer.realm,
        params={"service": token_issuer.service, "scope": "repository:library/hello:pull"},
        auth=ALICE,
    ).json()
    claims = _jwt_claims(answer["token"])
    assert answer["access_token"] == answer["token"]
    assert answer["expires_in"] == token_issuer.expires_in
    assert claims["exp"] == claims["iat"] + token_issuer.expires_in  # type: ignore[operator]
    assert claims["access"] == [
        {"type": "repository", "name": "library/hello", "actions": ["pull"]}
    ]
    wrong = httpx.get(
        token_issuer.realm, params={"service": token_issuer.service}, auth=("alice", "x")
    )
    assert wrong.status_code == 401


# -- other configurations ---------------------------------------------------------------


def test_pull_through_mirror(tmp_path: Path, registry: RegistryServer, seeded: Seeded) -> None:
    with (
        start_registry(tmp_path, proxy_remote_url=registry.url) as mirror,
        _client(mirror.url) as client,
    ):
        manifest = client.get(
            "/v2/library/hello/manifests/latest",
            headers={"Accept": seeded.hello.manifest_media_type},
        )
        assert manifest.content == seeded.hello.manifest_bytes
        layer = seeded.hello.layers[0]
        assert client.get(f"/v2/library/hello/blobs/{layer.digest}").content == layer.data


def test_tls_registry(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    with start_registry(tmp_path / "registry", tls=(cert_path, key_path)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(ca_path))
        response = httpx.get(server.url + "/v2/", verify=context, trust_env=False)
    assert response.status_code == 200


# -- a third-party client ---------------------------------------------------------------


def _skopeo(*args: str) -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (scripts/setup installs it)")
    return subprocess.run(
        [skopeo, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    ).stdout


def test_skopeo_inspects_the_registry(registry: RegistryServer, seeded: Seeded) -> None:
    reference = f"docker://{registry.host}/library/hello:latest"
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", reference))
    assert inspected["Digest"] == seeded.hello.manifest_digest
    assert inspected["Layers"] == [layer.digest for layer in seeded.hello.layers]
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", reference)
    assert raw.encode() == seeded.hello.manifest_bytes


def test_skopeo_through_the_token_flow(
    token_registry: RegistryServer, token_hello: PushedImage
) -> None:
    reference = f"docker://{token_registry.host}/library/hello:latest"
    inspected = json.loads(
        _skopeo("inspect", "--tls-verify=false", "--creds", "alice:wonderland", reference)
    )
    assert inspected["Digest"] == token_hello.manifest_digest
