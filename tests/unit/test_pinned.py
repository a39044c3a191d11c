"""Connections under the public-address rule go to the addresses the rule checked, never to a
second answer of the resolver (pinned.py: DNS rebinding).

Real sockets, loopback only: HTTP servers on 127.0.0.2 and 127.0.0.3 (same port), names
(`*.test`, which no system resolver answers) resolved by a resolver the test controls, and a
rule that admits only the addresses the test names, so loopback stands in for "public" and
nothing but 127.0.0.x is ever a target. The system resolver is limited to numeric addresses
(`no_system_lookups`), so that a `.test` name is served at all proves the connection went to
the checked address, and a broken build sends no DNS query.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from regfs.compose import AllRegistries, MountConfig
from regfs.errors import ForbiddenURLError, TransientError
from regfs.oci.reference import parse_registry
from regfs.registry.addresses import Admit, IPAddress, literal_address
from regfs.registry.client import RegistryClient, RetryPolicy
from regfs.registry.httpclient import make_http_client
from regfs.registry.pinned import PinnedBackend, PinnedSyncBackend, PublicOnly
from regfs.registry.registries_conf import RegistryAdmission
from regfs.views.registry import Options
from tests.fixtures._net import LoopbackHTTPServer
from tests.fixtures.tls import make_identity
from tests.unit.test_admission import conf_from
from tests.unit.test_cache import make_cache

CHECKED, OTHER = "127.0.0.2", "127.0.0.3"
# The async transport, and the worker-thread one (ranges of at least 1 MiB go there).
TRANSPORTS = pytest.mark.parametrize(
    "headers", [{}, {"Range": "bytes=0-1048575"}], ids=["async", "threaded"]
)


@pytest.fixture(autouse=True)
def no_system_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system resolver takes numeric addresses only: a build that resolved a test name
    itself fails here instead of sending a DNS query off the machine."""
    lookup = socket.getaddrinfo

    def numeric_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and literal_address(str(host).strip("[]")) is None:
            raise socket.gaierror(socket.EAI_NONAME, f"test: no look-up of {host}")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)


class Answers:
    """A resolver answering each call with the next list the test gave (the last repeats)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append((host, port))
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


def only(*addresses: str) -> Admit:
    """A rule that admits exactly `addresses` (loopback ones standing in for public)."""
    allowed = {ipaddress.ip_address(a) for a in addresses}
    return lambda address: address in allowed


class Server(LoopbackHTTPServer):
    """Answers every GET with 200 and the address it serves; counts accepted connections
    and records the Host headers it was sent."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.accepted = 0
        self.hosts: list[str] = []
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        request = super().get_request()
        self.accepted += 1
        return request


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers["Host"])
        body = self.server.server_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """One server on 127.0.0.2 and one on 127.0.0.3, on the same port."""
    for _ in range(20):
        checked = Server((CHECKED, 0))
        try:
            other = Server((OTHER, checked.server_address[1]))
            break
        except OSError:
            checked.server_close()
    else:
        pytest.skip("no port free on both 127.0.0.2 and 127.0.0.3")
    threads = [_serve(checked), _serve(other)]
    yield checked, other
    for server, thread in zip((checked, other), threads, strict=True):
        server.shutdown()
        thread.join()
        server.server_close()


def pinned_client(rule: PublicOnly, **kwargs: Any) -> httpx.AsyncClient:
    return make_http_client(insecure=False, timeout=10.0, public_only=rule, **kwargs)


@TRANSPORTS
async def test_a_name_is_connected_at_the_address_the_rule_checked(
    servers: tuple[Server, Server], headers: dict[str, str]
) -> None:
    checked, other = servers
    port = checked.server_address[1]
    resolver = Answers([CHECKED], [OTHER])
    async with pinned_client(PublicOnly(resolver, only(CHECKED))) as client:
        response = await client.get(f"http://registry.test:{port}/v2/", headers=headers)
    assert response.status_code == 200 and response.text == CHECKED
    assert resolver.asked == [("registry.test", port)]  # once: no second look-up to differ
    assert checked.hosts == [f"registry.test:{port}"]  # the Host header stays the name
    assert other.accepted == 0


@TRANSPORTS
async def test_a_different_second_answer_is_refused_before_connecting(
    servers: tuple[Server, Server], headers: dict[str, str]
) -> None:
    """The rebinding case: public (here: admitted) to one look-up, private to the next. Each
    connection's own answer is the one checked, so the second is refused, not connected."""
    checked, other = servers
    port = checked.server_address[1]
    resolver = Answers([CHECKED], [OTHER])
    async with pinned_client(PublicOnly(resolver, only(CHECKED))) as client:
        url = f"http://registry.test:{port}/v2/"
        first = await client.get(url, headers={**headers, "Connection": "close"})
        assert first.text == CHECKED
        with pytest.raises(ForbiddenURLError, match=r"non-public 127\.0\.0\.3"):
            await client.get(url, headers=headers)
    assert len(resolver.asked) == 2
    assert checked.accepted == 1 and other.accepted == 0


@TRANSPORTS
async def test_one_address_not_admitted_refuses_them_all(
    servers: tuple[Server, Server], headers: dict[str, str]
) -> None:
    checked, other = servers
    port = checked.server_address[1]
    resolver = Answers([CHECKED, OTHER])
    async with pinned_client(PublicOnly(resolver, only(CHECKED))) as client:
        with pytest.raises(ForbiddenURLError):
            await client.get(f"http://registry.test:{port}/", headers=headers)
        with pytest.raises(ForbiddenURLError, match=r"non-public address 127\.0\.0\.3"):
            await client.get(f"http://{OTHER}:{port}/", headers=headers)  # literal: no look-up
    assert resolver.asked == [("registry.test", port)]
    assert checked.accepted == 0 and other.accepted == 0


async def test_the_default_rule_refuses_loopback() -> None:
    """Without the test's `admit`, the rule is addresses.is_public: even the checked
    loopback address is refused, by both backends, before any connect."""
    rule = PublicOnly(Answers([CHECKED]))
    with pytest.raises(ForbiddenURLError):
        await PinnedBackend(rule).connect_tcp("registry.test", 1)
    sync = PinnedSyncBackend(rule)
    with pytest.raises(ForbiddenURLError):
        await trio.to_thread.run_sync(functools.partial(sync.connect_tcp, "registry.test", 1))


async def test_a_name_that_does_not_resolve_is_a_transient_failure() -> None:
    async def nothing(host: str, port: int) -> list[IPAddress]:
        raise OSError("no such name")

    client = RegistryClient(
        parse_registry("http://registry.test:1"),
        public_only=PublicOnly(nothing, only(CHECKED)),
        retry=RetryPolicy(attempts=1),
    )
    try:
        with pytest.raises(TransientError):
            await client.ping()
    finally:
        await client.aclose()


# -- TLS verifies the name, not the address ----------------------------------------------------


@pytest.fixture
def tls_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Server, list[str]]]:
    """An https server on 127.0.0.2 whose certificate is for the name the test gives; records
    the SNI names it was sent."""
    identity = make_identity(tmp_path, request.param)
    server = Server((CHECKED, 0))
    context = identity.server_context()
    sni: list[str] = []
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name) and None  # type: ignore[func-returns-value]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.ca_path = identity.ca_path  # type: ignore[attr-defined]
    thread = _serve(server)
    yield server, sni
    server.shutdown()
    thread.join()
    server.server_close()


@TRANSPORTS
@pytest.mark.parametrize("tls_server", ["registry.test"], indirect=True)
async def test_tls_verifies_the_name_at_the_pinned_address(
    tls_server: tuple[Server, list[str]], headers: dict[str, str]
) -> None:
    server, sni = tls_server
    port = server.server_address[1]
    rule = PublicOnly(Answers([CHECKED]), only(CHECKED))
    async with pinned_client(rule, ca_files=[str(server.ca_path)]) as client:  # type: ignore[attr-defined]
        response = await client.get(f"https://registry.test:{port}/v2/", headers=headers)
    assert response.text == CHECKED
    assert sni == ["registry.test"]  # the name went to the handshake, not the address
    assert server.hosts == [f"registry.test:{port}"]


@TRANSPORTS
@pytest.mark.parametrize("tls_server", ["other.test"], indirect=True)
async def test_a_certificate_for_another_name_is_refused(
    tls_server: tuple[Server, list[str]], headers: dict[str, str]
) -> None:
    server, sni = tls_server
    port = server.server_address[1]
    rule = PublicOnly(Answers([CHECKED]), only(CHECKED))
    async with pinned_client(rule, ca_files=[str(server.ca_path)]) as client:  # type: ignore[attr-defined]
        with pytest.raises(httpx.ConnectError) as refused:
            await client.get(f"https://registry.test:{port}/v2/", headers=headers)
    assert "Hostname mismatch" in _verification_failure(refused.value)
    assert sni == ["registry.test"] and server.hosts == []


def _verification_failure(exc: BaseException) -> str:
    """The verifier's words for why the handshake failed, from the causes of `exc`."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message)
        cause = cause.__cause__ or cause.__context__
    raise AssertionError(f"not a certificate verification failure: {exc!r}")


# -- where the rule applies ------------------------------------------------------------------


async def test_foreign_urls_are_pinned_unless_a_pattern_admits_them(
    servers: tuple[Server, Server],
) -> None:
    """A single-registry mount's client: its registry is not pinned, its foreign URLs are,
    except those --foreign-url-allow admits (`exempt`), which connect as they are."""
    checked, other = servers
    port = checked.server_address[1]
    resolver = Answers([CHECKED])
    client = RegistryClient(
        parse_registry(f"http://{OTHER}:{port}"), foreign_rule=PublicOnly(resolver, only(CHECKED))
    )
    try:
        await client.ping()  # the registry itself: a loopback address, connected to as it is
        assert other.accepted == 1
        foreign = httpx.URL(f"http://foreign.test:{port}/layer")
        response = await client.send(foreign, scope=None, foreign=True)
        assert await response.aread() == CHECKED.encode()
        await response.aclose()
        loopback = httpx.URL(f"http://{OTHER}:{port}/layer")
        with pytest.raises(ForbiddenURLError):
            await client.send(loopback, scope=None, foreign=True)
        assert other.accepted == 1
        response = await client.send(loopback, scope=None, foreign=True, exempt=lambda _: True)
        assert await response.aread() == OTHER.encode()
        await response.aclose()
    finally:
        await client.aclose()


async def test_a_public_only_registry_is_pinned_on_every_connection(
    servers: tuple[Server, Server],
) -> None:
    checked, other = servers
    port = checked.server_address[1]
    resolver = Answers([CHECKED], [OTHER])
    client = RegistryClient(
        parse_registry(f"http://registry.test:{port}"),
        public_only=PublicOnly(resolver, only(CHECKED)),
    )
    try:
        await client.ping()
        assert checked.accepted == 1
        await client.aclose()  # its connection is gone: the next one resolves again
        client = RegistryClient(
            parse_registry(f"http://registry.test:{port}"),
            public_only=PublicOnly(resolver, only(CHECKED)),
        )
        with pytest.raises(ForbiddenURLError):
            await client.ping()
        # Foreign URLs a pattern would admit are pinned too for such a registry.
        with pytest.raises(ForbiddenURLError):
            await client.send(
                httpx.URL(f"http://{OTHER}:{port}/"),
                scope=None,
                foreign=True,
                exempt=lambda _: True,
            )
    finally:
        await client.aclose()
    assert other.accepted == 0


def _rule_of(client: httpx.AsyncClient) -> object:
    """The rule the async transport of a client made by make_http_client connects under."""
    transport: Any = client._transport.inner  # type: ignore[attr-defined]
    backend = transport.other._pool._network_backend
    return backend.rule if isinstance(backend, PinnedBackend) else None


async def test_all_registries_pins_only_the_registries_admitted_for_being_public(
    tmp_path: Path,
) -> None:
    conf = conf_from(tmp_path, '[[registry]]\nlocation = "registry.example"\n')
    resolver = Answers(["8.8.8.8"])  # never connected to: offline, nothing is probed
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
        rule = _rule_of(public.http)
        assert isinstance(rule, PublicOnly) and rule.resolve is resolver
        assert _rule_of(configured.http) is None
    finally:
        await registries.aclose()
