"""regfs.oci.reference: distribution's grammar for names, tags and digests; registry addresses."""

from __future__ import annotations

import pytest

from regfs.errors import InvalidReferenceError
from regfs.oci.reference import (
    MAX_REPOSITORY_LENGTH,
    RegistryAddress,
    check_digest,
    check_reference,
    check_repository,
    check_tag,
    is_digest,
    is_repository,
    is_repository_component,
    is_tag,
    parse_registry,
    registry_key,
)

# --------------------------------------------------------------------------------------------
# repositories


@pytest.mark.parametrize(
    "name",
    [
        "hello",
        "library/hello",
        "team/project/tool",
        "a",
        "0",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a--b",
        "a---b",
        "a.b_c__d-e--f",
        "x/y.z/w_v/u__t/s-r",
        "windows/servercore",
        "9to5/v2",
    ],
)
def test_repository_accepts(name: str) -> None:
    assert is_repository(name)
    assert check_repository(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Hello",  # upper case
        "library/Hello",
        "a..b",  # two dots are not a separator
        "a._b",
        "a___b",  # three underscores
        "a-_b",
        ".a",
        "a.",
        "_a",
        "a_",
        "-a",
        "a-",
        "/a",
        "a/",
        "a//b",
        "a/../b",
        "..",
        ".",
        "a b",
        "a%2Fb",
        "a\x00b",
        "a:b",
        "a@b",
        "é",
        "a\nb",
    ],
)
def test_repository_rejects(name: str) -> None:
    assert not is_repository(name)
    with pytest.raises(InvalidReferenceError):
        check_repository(name)


def test_repository_length_limit() -> None:
    at_limit = "/".join(["a" * 50] * 5) + "/abcde"  # 5*50 + 4 + 1 + 5 = 260
    at_limit = at_limit[: MAX_REPOSITORY_LENGTH - 1] + "z"
    assert len(at_limit) == MAX_REPOSITORY_LENGTH
    assert is_repository(at_limit)
    over = at_limit + "z"
    assert not is_repository(over)
    with pytest.raises(InvalidReferenceError):
        check_repository(over)
    assert MAX_REPOSITORY_LENGTH == 255


def test_repository_component() -> None:
    assert is_repository_component("a__b")
    assert not is_repository_component("a/b")
    assert not is_repository_component("A")
    assert not is_repository_component("")


# --------------------------------------------------------------------------------------------
# tags


@pytest.mark.parametrize(
    "tag",
    ["latest", "1", "_", "_x", "v1.2.3", "1.0-rc.1", "ltsc2019-amd64", "A-Za_z.09", "x" * 128],
)
def test_tag_accepts(tag: str) -> None:
    assert is_tag(tag)
    assert check_tag(tag) == tag
    assert check_reference(tag) == tag


@pytest.mark.parametrize(
    "tag",
    ["", ".x", "-x", "x" * 129, "a/b", "a:b", "a b", "a@b", "a+b", "ä", "a\x00", "sha256:abc"],
)
def test_tag_rejects(tag: str) -> None:
    assert not is_tag(tag)
    with pytest.raises(InvalidReferenceError):
        check_tag(tag)


# --------------------------------------------------------------------------------------------
# digests

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


def test_digest_accepts_exact_lengths() -> None:
    for digest in (SHA256, SHA512):
        assert is_digest(digest)
        assert check_digest(digest) == digest
        assert check_reference(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [
        SHA256[:-1],  # 63 hex
        SHA256 + "0",  # 65 hex
        SHA512[:-1],
        SHA512 + "0",
        "sha512:" + "0" * 64,  # sha256 length under sha512
        "sha256:" + "0" * 128,
        SHA256.upper(),
        "sha256:" + "0123456789ABCDEF" * 4,
        "SHA256:" + "0" * 64,
        "sha384:" + "0" * 96,
        "md5:" + "0" * 32,
        "sha256:" + "g" * 64,
        "sha256" + "0" * 64,
        "sha256:",
        ":" + "0" * 64,
        "sha256:" + "0" * 64 + "\n",
    ],
)
def test_digest_rejects(digest: str) -> None:
    assert not is_digest(digest)
    with pytest.raises(InvalidReferenceError):
        check_digest(digest)


def test_reference_rejects_neither() -> None:
    for ref in ("", "a/b", "sha256:abc", "../x"):
        with pytest.raises(InvalidReferenceError):
            check_reference(ref)


# --------------------------------------------------------------------------------------------
# registries


@pytest.mark.parametrize(
    ("value", "scheme", "host"),
    [
        ("mcr.microsoft.com", "https", "mcr.microsoft.com"),
        ("MCR.Microsoft.com", "https", "mcr.microsoft.com"),
        ("localhost:5000", "https", "localhost:5000"),
        ("127.0.0.1:5000", "https", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000", "http", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000/", "http", "127.0.0.1:5000"),
        ("https://ghcr.io", "https", "ghcr.io"),
        ("  quay.io  ", "https", "quay.io"),
        ("[::1]:5000", "https", "[::1]:5000"),
        ("http://[::1]:5000", "http", "[::1]:5000"),
        ("docker.io", "https", "registry-1.docker.io"),
        ("index.docker.io", "https", "registry-1.docker.io"),
        ("registry.hub.docker.com", "https", "registry-1.docker.io"),
        ("https://docker.io", "https", "registry-1.docker.io"),
        ("Docker.IO", "https", "registry-1.docker.io"),
        ("registry-1.docker.io", "https", "registry-1.docker.io"),
    ],
)
def test_parse_registry(value: str, scheme: str, host: str) -> None:
    address = parse_registry(value)
    assert address == RegistryAddress(scheme, host)
    assert address.base_url == f"{scheme}://{host}"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "ftp://host",
        "file:///etc/passwd",
        "http://",
        "https://host/v2/",
        "https://host/path",
        "https://host?x=1",
        "https://user:pw@host",
        "https://user@host",
        "host:",
        "host:port",
        "host:123456",
        "host:65536",
        "host:0",
        "host:99999",
        "-host",
        "host-",
        "ho st",
        "host/library/hello",
        "a..b",
        "http://host:5000:6000",
        "javascript:alert(1)",
        "[::1",
        "http://[",  # these two escaped as ValueError (found by test_parser_properties.py)
        "A://[]",
    ],
)
def test_parse_registry_rejects_junk(value: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_registry(value)


def test_registry_address_hostname_and_str() -> None:
    assert parse_registry("localhost:5000").hostname == "localhost"
    assert parse_registry("quay.io").hostname == "quay.io"
    assert parse_registry("[::1]:5000").hostname == "::1"
    assert str(parse_registry("quay.io")) == "quay.io"
    assert str(parse_registry("http://127.0.0.1:5000")) == "http://127.0.0.1:5000"


def test_registry_key_is_file_name_safe() -> None:
    assert registry_key(parse_registry("localhost:5000")) == "localhost_5000"
    assert registry_key(parse_registry("[::1]:5000")) == "___1__5000"
    for value in ("docker.io", "http://127.0.0.1:5000", "[::1]:80"):
        key = registry_key(parse_registry(value))
        assert "/" not in key and ":" not in key and key not in (".", "..")
