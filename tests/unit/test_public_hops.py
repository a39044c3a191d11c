"""A registry admitted only for being public (a name typed under a mount of every registry)
cannot lead the mount to a private address: not by a redirect of a registry request or of a
blob read, not by its token realm (addresses.PublicHops, wired by RegistryAdmission.hop_check).

The network is httpx.MockTransport and every name resolves through FakeResolver, so nothing
is looked up or connected to; "no request to that host" means the transport saw none, i.e.
the refusal came before the request was built.
"""

from __future__ import annotations

import errno
import functools
import logging
from pathlib import Path

import httpx
import pytest

from regfs import compose
from regfs.compose import AllRegistries, MountConfig
from regfs.errors import ForbiddenURLError, NotFoundError
from regfs.registry.addresses import PublicHops
from regfs.registry.blobs import ForeignURLPolicy
from regfs.registry.client import RegistryClient
from regfs.registry.registries_conf import RegistryAdmission
from regfs.vfs.fuse import errno_for
from regfs.views.registry import Options
from tests.unit.mock_http import MANIFEST_DIGEST, Handler, Recorder, manifest_response, mock_client
from tests.unit.test_admission import FakeResolver, conf_from
from tests.unit.test_blobs import DATA, fetch, ranged, source
from tests.unit.test_cache import make_cache

PUBLIC = "8.8.8.8"  # never connected to: the transport is a mock
RESOLVER_ANSWERS = {
    "registry.example": [PUBLIC],
    "cdn.example": ["8.8.4.4"],
    "auth.example": ["1.1.1.1"],
    "cdn.internal.example": ["192.168.1.1"],
    "mixed.example": ["8.8.4.4", "10.1.2.3"],
}
CONF = """
[[registry]]
location = "registry.example"
"""

# (redirect target, the host the transport must never see)
PRIVATE_TARGETS = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("https://10.0.0.5/v2/x", "10.0.0.5"),
    ("https://cdn.internal.example/blob", "cdn.internal.example"),
    ("https://mixed.example/blob", "mixed.example"),  # one private address is enough
    ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254"),
    ("http://127.0.0.1:5000/", "127.0.0.1"),
]


def redirecting_to(location: str) -> Handler:
    """A registry whose manifests redirect to `location`, which serves the manifest."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            return httpx.Response(307, headers={"Location": location})
        return manifest_response()

    return handler


def public_only(resolver: FakeResolver) -> PublicHops:
    return PublicHops("registry.example", resolver)


@pytest.mark.parametrize(("location", "host"), PRIVATE_TARGETS)
async def test_a_redirect_to_a_private_address_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, location: str, host: str
) -> None:
    resolver = FakeResolver(RESOLVER_ANSWERS)
    handler = redirecting_to(location)
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    with pytest.raises(ForbiddenURLError, match=r"registry\.example led to") as raised:
        await client.get_manifest("library/hello", "latest")
    assert server.to(host) == []
    assert [r.url.host for r in server.requests] == ["registry.example"]  # and not retried
    assert errno_for(raised.value) == errno.EACCES


async def test_a_public_redirect_target_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = FakeResolver(RESOLVER_ANSWERS)
    handler = redirecting_to("https://cdn.example/manifest")
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    document = await client.get_manifest("library/hello", "latest")
    assert document.digest == MANIFEST_DIGEST
    assert [r.url.host for r in server.requests] == ["registry.example", "cdn.example"]
    assert ("cdn.example", 443) in resolver.asked


async def test_the_registry_itself_is_checked_on_every_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name that resolved to public addresses when it was admitted and to a private one
    later (DNS rebinding between requests) is refused from then on."""
    resolver = FakeResolver(RESOLVER_ANSWERS)
    client, server = mock_client(
        monkeypatch,
        lambda r: manifest_response(),
        hop_check=public_only(resolver),
    )
    await client.get_manifest("library/hello", "latest")
    resolver.answers["registry.example"] = [resolver.answers["cdn.internal.example"][0]]
    with pytest.raises(ForbiddenURLError, match=r"192\.168\.1\.1"):
        await client.get_manifest("library/hello", "latest")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("realm", "host"),
    [
        ("https://10.0.0.1/token", "10.0.0.1"),
        ("http://169.254.169.254/token", "169.254.169.254"),
        ("https://cdn.internal.example/token", "cdn.internal.example"),
    ],
)
async def test_a_token_realm_at_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, realm: str, host: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            challenge = f'Bearer realm="{realm}",service="registry.example"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, json={"token": "T0K3N"})

    resolver = FakeResolver(RESOLVER_ANSWERS)
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    with pytest.raises(ForbiddenURLError) as raised:
        await client.get_manifest("library/hello", "latest")
    assert server.to(host) == []
    assert errno_for(raised.value) == errno.EACCES


async def test_a_public_token_realm_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T0K3N"})
        if request.headers.get("authorization") != "Bearer T0K3N":
            challenge = 'Bearer realm="https://auth.example/token",service="registry.example"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return manifest_response()

    resolver = FakeResolver(RESOLVER_ANSWERS)
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    await client.get_manifest("library/hello", "latest")
    assert len(server.to("auth.example")) == 1
    assert ("auth.example", 443) in resolver.asked


async def test_a_blob_redirect_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            return httpx.Response(307, headers={"Location": "http://169.254.169.254/blob"})
        return ranged(request)

    resolver = FakeResolver(RESOLVER_ANSWERS)
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    with pytest.raises(ForbiddenURLError) as raised:
        await fetch(source(client), 0, 1000)
    assert server.to("169.254.169.254") == []
    assert errno_for(raised.value, reading=True) == errno.EACCES


async def test_a_remembered_cdn_url_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CDN a blob redirect ended at is asked directly for the next range: that hop
    passes the rule too, so a CDN name that now resolves privately is not connected to."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            return httpx.Response(307, headers={"Location": "https://cdn.example/blob"})
        return ranged(request)

    resolver = FakeResolver(RESOLVER_ANSWERS)
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    blob = source(client)
    assert await fetch(blob, 0, 1000) == DATA[:1000]
    assert len(server.to("cdn.example")) == 1
    resolver.answers["cdn.example"] = resolver.answers["cdn.internal.example"]
    with pytest.raises(ForbiddenURLError):
        await fetch(blob, 1000, 2000)
    assert len(server.to("cdn.example")) == 1  # neither remembered nor redirected to again


async def test_foreign_urls_allowed_by_pattern_are_still_public_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--foreign-url-allow admits private foreign URLs for trusted registries; a registry
    admitted only for being public cannot use it to reach one."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404) if request.url.host == "registry.example" else ranged(request)

    resolver = FakeResolver(RESOLVER_ANSWERS)
    client, server = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    allow_private = ForeignURLPolicy([r"https://10\.0\.0\.7/"], resolve=resolver)
    blob = source(client, urls=("https://10.0.0.7/layer",), policy=allow_private)
    with pytest.raises(ForbiddenURLError):
        await fetch(blob, 0, 1000)
    assert server.to("10.0.0.7") == []


async def test_a_refusal_is_logged_once_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = FakeResolver(RESOLVER_ANSWERS)
    handler = redirecting_to("http://169.254.169.254/latest/meta-data/")
    client, _ = mock_client(monkeypatch, handler, hop_check=public_only(resolver))
    with caplog.at_level(logging.WARNING, logger="regfs.registry.addresses"):
        for _ in range(3):
            with pytest.raises(ForbiddenURLError):
                await client.get_manifest("library/hello", "latest")
    lines = [r.getMessage() for r in caplog.records if r.name == "regfs.registry.addresses"]
    assert lines == [
        "registry registry.example: not connecting to 169.254.169.254: "
        "is the non-public address 169.254.169.254"
    ]


# --------------------------------------------------------------------------------------------
# who gets the rule: RegistryAdmission.hop_check, and AllRegistries' clients


async def test_only_registries_admitted_for_being_public_get_the_rule(tmp_path: Path) -> None:
    conf = conf_from(tmp_path, CONF)
    resolver = FakeResolver({**RESOLVER_ANSWERS, "public.example": [PUBLIC]})
    admission = RegistryAdmission(conf, [r"allowed\.example"], resolve=resolver)
    assert admission.hop_check("registry.example") is None  # configured
    assert admission.hop_check("allowed.example") is None  # --allow-registry
    check = admission.hop_check("public.example")
    assert isinstance(check, PublicHops) and check.resolve is resolver


@pytest.mark.parametrize(
    ("name", "follows"), [("registry.example", True), ("other.example", False)]
)
async def test_the_same_redirect_is_followed_only_from_a_trusted_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, follows: bool
) -> None:
    """registry.example is configured in registries.conf: its redirect to a private CDN is
    followed (the mock answers it), as in a single-registry mount; other.example is not."""
    resolver = FakeResolver({**RESOLVER_ANSWERS, "other.example": [PUBLIC]})
    admission = RegistryAdmission(conf_from(tmp_path, CONF), resolve=resolver)
    await admission.check(name)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == name:
            return httpx.Response(307, headers={"Location": "https://10.0.0.5/manifest"})
        return manifest_response()

    client, server = mock_client(
        monkeypatch,
        handler,
        address=f"https://{name}",
        hop_check=admission.hop_check(name),
    )
    if follows:
        await client.get_manifest("library/hello", "latest")
        assert len(server.to("10.0.0.5")) == 1
    else:
        with pytest.raises(ForbiddenURLError):
            await client.get_manifest("library/hello", "latest")
        assert server.to("10.0.0.5") == []


async def test_all_registries_gives_the_rule_to_a_public_name_only(tmp_path: Path) -> None:
    """Offline, so opening a registry probes nothing: the clients AllRegistries made carry
    the rule for the name admitted for being public, and none for the configured one."""
    conf = conf_from(tmp_path, CONF)
    resolver = FakeResolver({**RESOLVER_ANSWERS, "public.example": [PUBLIC]})
    registries = AllRegistries(
        MountConfig(tmp_path / "mnt", options=Options(offline=True), all_registries=True),
        conf,
        RegistryAdmission(conf, resolve=resolver),
        disk=None,
        cache=make_cache(),
        layers=None,
        started=0.0,
    )
    try:
        assert await registries.tree("public.example") is not None
        assert await registries.tree("registry.example") is not None
        public = registries.by_name["public.example"].store.client
        configured = registries.by_name["registry.example"].store.client
        assert isinstance(public.hop_check, PublicHops)
        assert public.auth._realm_check is public.hop_check
        assert configured.hop_check is None
    finally:
        await registries.aclose()


async def test_a_probe_redirected_to_a_private_address_opens_no_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not offline: AllRegistries probes `/v2/` with the rule in place (its clients' network
    replaced by a mock), so a public name whose `/v2/` redirects to the metadata address is
    ENOENT, saying why, and nothing was sent there; a configured one is opened."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "169.254.169.254":
            return httpx.Response(200)
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/v2/"})

    recorder = Recorder(handler)
    mock = functools.partial(RegistryClient, transport=httpx.MockTransport(recorder))
    monkeypatch.setattr(compose, "RegistryClient", mock)
    monkeypatch.setattr(compose, "load_credentials", lambda host: None)
    conf = conf_from(tmp_path, CONF)
    resolver = FakeResolver({**RESOLVER_ANSWERS, "public.example": [PUBLIC]})
    registries = AllRegistries(
        MountConfig(tmp_path / "mnt", all_registries=True),
        conf,
        RegistryAdmission(conf, resolve=resolver),
        disk=None,
        cache=make_cache(),
        layers=None,  # type: ignore[arg-type]
        started=0.0,
    )
    try:
        with pytest.raises(NotFoundError, match="non-public address 169"):
            await registries.tree("public.example")
        assert [r.url.host for r in recorder.requests] == ["public.example"]
        assert "public.example" not in registries.listed()
        assert await registries.tree("registry.example") is not None  # followed: trusted
        assert len(recorder.to("169.254.169.254")) == 1
    finally:
        await registries.aclose()
    assert any("not connecting to 169.254.169.254" in r.getMessage() for r in caplog.records)
