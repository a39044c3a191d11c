"""regfs.registry.admission and addresses: which registry names a multi-registry mount may be
made to connect to, decided before any connection.

Every decision here is the policy's alone, with a resolver the test controls: no name is
looked up in DNS (except `localhost`, once, to prove the default resolver is used) and
nothing connects anywhere, so not even a broken build can reach the addresses named here.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from regfs.errors import (
    ConfigError,
    ForbiddenURLError,
    NotFoundError,
    RefusedRegistryError,
    TransientError,
)
from regfs.oci.reference import parse_registry
from regfs.registry.addresses import IPAddress, is_public, literal_address, non_public_reason
from regfs.registry.admission import is_registry_name
from regfs.registry.blobs import ForeignURLPolicy
from regfs.registry.registries_conf import RegistriesConf, RegistryAdmission
from regfs.vfs.fuse import errno_for


class FakeResolver:
    """What each name resolves to, as the test says; records every question. A name it
    does not know does not exist (EAI_NONAME)."""

    def __init__(self, answers: dict[str, Sequence[str]] | None = None) -> None:
        self.answers = {
            name: [ipaddress.ip_address(a) for a in addrs]
            for name, addrs in (answers or {}).items()
        }
        self.asked: list[tuple[str, int]] = []
        self.fail: OSError | None = None

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append((host, port))
        if self.fail is not None:
            raise self.fail
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


def conf_from(tmp_path: Path, text: str = "") -> RegistriesConf:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    return RegistriesConf.load(
        {"CONTAINERS_REGISTRIES_CONF": str(path), "HOME": str(tmp_path)}, etc=tmp_path / "etc"
    )


async def refused(admission: RegistryAdmission, name: str) -> str:
    with pytest.raises(RefusedRegistryError) as raised:
        await admission.check(name)
    return raised.value.reason


# --------------------------------------------------------------------------------------------
# loopback: refused unless allowed or configured


async def test_a_loopback_registry_is_refused_unless_allowed_or_configured(tmp_path: Path) -> None:
    resolver = FakeResolver()
    empty = RegistriesConf()
    assert "non-public address 127.0.0.1" in await refused(
        RegistryAdmission(empty, resolve=resolver), "127.0.0.1:5000"
    )

    await RegistryAdmission(empty, [r"127\.0\.0\.1:5000"], resolve=resolver).check("127.0.0.1:5000")
    await RegistryAdmission(empty, [r"127\.0\.0\.1:\d+"], resolve=resolver).check("127.0.0.1:5000")
    # The pattern must match the whole host[:port].
    for pattern in (r"127\.0\.0\.1", r"127\.0\.0\.1:50", r"27\.0\.0\.1:5000"):
        await refused(RegistryAdmission(empty, [pattern], resolve=resolver), "127.0.0.1:5000")
    await refused(
        RegistryAdmission(empty, [r"127\.0\.0\.1:5000"], resolve=resolver), "127.0.0.1:5001"
    )

    configured = conf_from(tmp_path, '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n')
    await RegistryAdmission(configured, resolve=resolver).check("127.0.0.1:5000")
    assert resolver.asked == []  # a literal address is never resolved


# --------------------------------------------------------------------------------------------
# non-public addresses, literal and behind a name

NON_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "169.254.169.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0",
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:db8::1",  # documentation
]


def _literal_name(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize("address", NON_PUBLIC)
async def test_a_non_public_literal_is_refused_without_resolving(address: str) -> None:
    resolver = FakeResolver()
    admission = RegistryAdmission(RegistriesConf(), resolve=resolver)
    for name in (_literal_name(address), f"{_literal_name(address)}:5000"):
        assert "non-public" in await refused(admission, name)
    assert resolver.asked == []


@pytest.mark.parametrize("spelling", ["127.1", "2130706433", "0x7f.1", "0177.0.0.1", "0xa9fea9fe"])
async def test_other_spellings_of_a_non_public_ipv4_address_are_refused_as_literals(
    spelling: str,
) -> None:
    resolver = FakeResolver({spelling: ["93.184.216.34"]})  # a lie it must not be asked
    assert "non-public" in await refused(
        RegistryAdmission(RegistriesConf(), resolve=resolver), spelling
    )
    assert resolver.asked == []


@pytest.mark.parametrize("address", NON_PUBLIC)
async def test_a_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    resolver = FakeResolver({"registry.example": [address]})
    reason = await refused(
        RegistryAdmission(RegistriesConf(), resolve=resolver), "registry.example:5000"
    )
    assert reason == f"resolves to non-public {ipaddress.ip_address(address)}"
    assert resolver.asked == [("registry.example", 5000)]


async def test_one_non_public_address_among_public_ones_is_enough_to_refuse() -> None:
    resolver = FakeResolver({"mixed.example": ["93.184.216.34", "2606:2800:220:1::1", "10.0.0.7"]})
    reason = await refused(RegistryAdmission(RegistriesConf(), resolve=resolver), "mixed.example")
    assert reason == "resolves to non-public 10.0.0.7"


async def test_a_public_name_and_a_public_literal_are_admitted() -> None:
    resolver = FakeResolver({"ghcr.io": ["140.82.112.34", "2606:50c0:8000::154"]})
    admission = RegistryAdmission(RegistriesConf(), resolve=resolver)
    await admission.check("ghcr.io")
    await admission.check("93.184.216.34:443")
    await admission.check("[2606:2800:220:1::1]:5000")
    await admission.check("[::ffff:93.184.216.34]")  # a mapped public IPv4 address
    await admission.check("[64:ff9b::5db8:d822]")  # NAT64 of a public IPv4 address
    assert resolver.asked == [("ghcr.io", 443)]


async def test_docker_io_is_judged_by_the_host_it_connects_to() -> None:
    resolver = FakeResolver({"registry-1.docker.io": ["10.9.9.9"]})
    reason = await refused(RegistryAdmission(RegistriesConf(), resolve=resolver), "docker.io")
    assert reason == "(registry-1.docker.io) resolves to non-public 10.9.9.9"
    assert resolver.asked == [("registry-1.docker.io", 443)]


async def test_a_name_that_resolves_to_nothing_is_refused() -> None:
    resolver = FakeResolver({"empty.example": []})
    admission = RegistryAdmission(RegistriesConf(), resolve=resolver)
    assert await refused(admission, "empty.example") == "resolves to no address"
    assert await refused(admission, "missing.example") == "does not resolve"


async def test_a_failing_resolver_is_transient_not_a_refusal() -> None:
    resolver = FakeResolver()
    resolver.fail = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with pytest.raises(TransientError):
        await RegistryAdmission(RegistriesConf(), resolve=resolver).check("flaky.example")


async def test_the_default_resolver_is_the_system_one() -> None:
    # localhost is the one name looked up for real: it can only be loopback, and nothing
    # connects to it.
    assert "non-public" in await refused(RegistryAdmission(RegistriesConf()), "localhost:5000")


# --------------------------------------------------------------------------------------------
# blocked, invalid, configured: decided without resolving


async def test_a_blocked_name_is_refused_without_resolving(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        '[[registry]]\nlocation = "evil.example"\nblocked = true\n'
        '[[registry]]\nprefix = "*.evil.example"\nblocked = true\n',
    )
    resolver = FakeResolver(
        {"evil.example": ["93.184.216.34"], "a.evil.example": ["93.184.216.34"]}
    )
    admission = RegistryAdmission(conf, [r".*"], resolve=resolver)  # blocked beats allowed
    for name in ("evil.example", "EVIL.example", "evil.example:443", "a.evil.example"):
        assert "is blocked by" in await refused(admission, name)
    assert resolver.asked == []


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "foo/bar",
        "a%2fb",
        "exa mple.com",
        " example.com",
        "example.com ",
        "example.com.",
        "-bad.example",
        "bad-.example",
        "a..b",
        "example.com:",
        "example.com:0",
        "example.com:99999",
        "example.com:port",
        "http://example.com",
        "[::1",
        "[fe80::1%eth0]",
        "user@example.com",
        "ex\x00ample.com",
        "éxample.com",
    ],
)
async def test_an_invalid_name_is_refused_without_resolving(name: str) -> None:
    resolver = FakeResolver()
    admission = RegistryAdmission(RegistriesConf(), [r".*"], resolve=resolver)
    assert await refused(admission, name) == "is not a valid host[:port]"
    assert resolver.asked == []


async def test_a_configured_name_may_resolve_to_private_addresses(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        '[[registry]]\nlocation = "registry.internal:5000"\ninsecure = true\n'
        '[[registry]]\nprefix = "*.corp.example"\n'
        '[[registry]]\nlocation = "team.internal/project"\n',  # named only with a path
    )
    resolver = FakeResolver(
        {
            n: ["10.0.0.5"]
            for n in ("registry.internal", "a.corp.example", "team.internal", "other.internal")
        }
    )
    admission = RegistryAdmission(conf, resolve=resolver)
    for name in (
        "registry.internal:5000",
        "a.corp.example",
        "b.a.corp.example:5000",
        "team.internal",
    ):
        await admission.check(name)
    assert resolver.asked == []
    await refused(admission, "other.internal")  # not named: judged by its address


def test_a_bad_allow_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--allow-registry"):
        RegistryAdmission(RegistriesConf(), ["(unclosed"])


async def test_a_refusal_is_enoent_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    admission = RegistryAdmission(RegistriesConf(), resolve=FakeResolver())
    with caplog.at_level(logging.DEBUG, "regfs.registry.admission"):
        for _ in range(3):
            with pytest.raises(RefusedRegistryError) as raised:
                await admission.check("169.254.169.254")
    assert isinstance(raised.value, NotFoundError)
    assert errno_for(raised.value) == errno.ENOENT
    records = [r for r in caplog.records if "169.254.169.254" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "non-public address 169.254.169.254" in records[0].getMessage()


# --------------------------------------------------------------------------------------------
# the shared rule: addresses.py, also behind the foreign-URL policy


async def test_the_foreign_url_policy_uses_the_same_rule_and_resolver() -> None:
    resolver = FakeResolver({"cdn.example": ["93.184.216.34"], "meta.example": ["169.254.169.254"]})
    policy = ForeignURLPolicy(resolve=resolver)
    await policy.check(httpx.URL("https://cdn.example/blob"))
    with pytest.raises(ForbiddenURLError, match=r"non-public 169\.254\.169\.254"):
        await policy.check(httpx.URL("https://meta.example/latest"))
    with pytest.raises(ForbiddenURLError, match=r"non-public address 127\.0\.0\.1"):
        await policy.check(httpx.URL("https://127.1/x"))
    resolver.fail = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(TransientError):
        await policy.check(httpx.URL("https://gone.example/x"))
    assert resolver.asked == [("cdn.example", 443), ("meta.example", 443), ("gone.example", 443)]


def test_literal_address_reads_every_spelling_and_nothing_else() -> None:
    assert literal_address("127.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("127.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("0x7f000001") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("::1") == ipaddress.ip_address("::1")
    assert literal_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    for name in ("example.com", "cafe", "beef.face", "localhost", "1.2.3.4.5", ""):
        assert literal_address(name) is None, name


_NON_PUBLIC_NETWORKS = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "ff00::/8",
]


@settings(max_examples=200, deadline=timedelta(milliseconds=500), derandomize=True, database=None)
@given(
    st.sampled_from(_NON_PUBLIC_NETWORKS).flatmap(lambda n: st.ip_addresses(network=n)),
    st.booleans(),
)
def test_no_address_of_a_non_public_network_passes(address: IPAddress, mapped: bool) -> None:
    if mapped and isinstance(address, ipaddress.IPv4Address):
        address = ipaddress.IPv6Address(f"::ffff:{address}")
    assert not is_public(address)

    async def decide() -> tuple[str | None, str | None]:
        resolver = FakeResolver({"name.example": [str(address)]})
        return (
            await non_public_reason(str(address), 443, resolver),
            await non_public_reason("name.example", 443, resolver),
        )

    literal, named = trio.run(decide)
    assert literal is not None and named is not None


class AnswersPublic(FakeResolver):
    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append((host, port))
        return [ipaddress.ip_address("93.184.216.34")]


_NAME_CHARS = "abcAB019.-:[]/% _@\x00é"


@settings(max_examples=300, deadline=timedelta(milliseconds=500), derandomize=True, database=None)
@given(st.one_of(st.text(_NAME_CHARS, max_size=16), st.text(max_size=8)))
def test_only_a_valid_host_ever_reaches_the_resolver(name: str) -> None:
    resolver = AnswersPublic()
    admission = RegistryAdmission(RegistriesConf(), resolve=resolver)

    async def decide() -> str | None:
        try:
            await admission.check(name)
        except RefusedRegistryError as exc:
            return exc.reason
        return None

    reason = trio.run(decide)
    if not is_registry_name(name):
        assert (reason, resolver.asked) == ("is not a valid host[:port]", [])
    elif literal_address(parse_registry(name).hostname) is not None:
        assert resolver.asked == []  # judged as the literal it is
    else:
        assert reason is None
        assert [host for host, _ in resolver.asked] == [parse_registry(name).hostname]
