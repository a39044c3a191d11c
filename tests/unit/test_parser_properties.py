"""Property-based tests (hypothesis) of every parser that reads what a server or a user sends:
references and registry addresses, manifests, WWW-Authenticate, Content-Range, Link and
Retry-After.

For any input, only regfs's own exceptions escape (InvalidReferenceError, ManifestError), or
the parser answers with its documented "nothing" (None, []); for inputs built to be valid, the
parser gives back what they were built from. Each property is derandomized (the same examples
on every run, so CI cannot turn red by chance) and small: well under a second a case.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import string
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regfs.errors import InvalidReferenceError, ManifestError
from regfs.oci import manifest as mf
from regfs.oci.reference import (
    check_digest,
    check_reference,
    check_repository,
    check_tag,
    is_digest,
    is_repository,
    is_tag,
    parse_registry,
    registry_key,
)
from regfs.registry.challenge import Challenge, choose_challenge, parse_challenges
from regfs.registry.http import parse_content_range, parse_retry_after, same_origin
from regfs.registry.link import next_link

PROPERTY = settings(
    max_examples=150,
    deadline=timedelta(milliseconds=500),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Text a hostile or sloppy server might send: every code point, with the ASCII that the
# grammars care about made likely.
GRAMMAR_CHARS = string.ascii_letters + string.digits + ' \t"\\,;=:/.-_+*<>?#%@[]{}'
any_text = st.one_of(st.text(), st.text(alphabet=GRAMMAR_CHARS))


# --------------------------------------------------------------------------------------------
# references and registry addresses

_component = st.from_regex(r"\A[a-z0-9]{1,8}(?:(?:\.|_|__|-{1,2})[a-z0-9]{1,8}){0,2}\Z")
repositories = st.lists(_component, min_size=1, max_size=4).map("/".join)
tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}\Z")
digests = st.builds(
    lambda algorithm, data: f"{algorithm}:{data}",
    st.sampled_from(["sha256"]),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)


@PROPERTY
@given(any_text)
def test_reference_checks_raise_only_invalid_reference(text: str) -> None:
    for check, accepts in (
        (check_repository, is_repository),
        (check_tag, is_tag),
        (check_digest, is_digest),
        (check_reference, lambda t: is_tag(t) or is_digest(t)),
    ):
        try:
            assert check(text) == text
            assert accepts(text)
        except InvalidReferenceError:
            assert not accepts(text)


@PROPERTY
@given(repositories, tags, digests)
def test_valid_references_are_accepted(repo: str, tag: str, digest: str) -> None:
    if len(repo) <= 255:
        assert check_repository(repo) == repo
    assert check_reference(tag) == tag
    assert check_reference(digest) == digest
    # What reaches a URL path never carries a way out of it.
    for value in (repo, tag, digest):
        assert ".." not in value.split("/") and "%" not in value and "\\" not in value


@PROPERTY
@given(st.one_of(any_text, st.from_regex(r"\A(https?://)?[a-zA-Z0-9.\-\[\]:]{1,30}(/)?\Z")))
def test_parse_registry_raises_only_invalid_reference(text: str) -> None:
    try:
        address = parse_registry(text)
    except InvalidReferenceError:
        return
    assert address.scheme in ("http", "https")
    assert address.host == address.host.lower()
    url = httpx.URL(address.base_url)  # something httpx can connect to
    assert url.host
    assert set(registry_key(address)) <= set(string.ascii_letters + string.digits + "._-")


# --------------------------------------------------------------------------------------------
# manifests

_keys = st.sampled_from(
    [
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "manifests",
        "digest",
        "size",
        "urls",
        "platform",
        "os",
        "architecture",
        "annotations",
        "fsLayers",
        "blobSum",
        "history",
        "signatures",
        "protected",
        "v1Compatibility",
    ]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from([1, 2, mf.OCI_MANIFEST, mf.OCI_INDEX, mf.DOCKER_MANIFEST, mf.DOCKER_SCHEMA1]),
    digests,
    st.text(max_size=20),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_keys | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
content_types = st.sampled_from(["", "application/json", *mf.MANIFEST_TYPES, *mf.INDEX_TYPES])


def _parse_or_manifest_error(raw: bytes, content_type: str) -> mf.Document | None:
    try:
        return mf.parse_document(raw, content_type)
    except ManifestError:
        return None


@PROPERTY
@given(st.binary(max_size=200), content_types)
def test_any_bytes_are_a_document_or_a_manifest_error(raw: bytes, content_type: str) -> None:
    parsed = _parse_or_manifest_error(raw, content_type)
    assert parsed is None or parsed.raw == raw


@PROPERTY
@given(st.dictionaries(_keys, json_values, max_size=8), content_types)
def test_any_json_object_is_a_document_or_a_manifest_error(
    document: dict[str, Any], content_type: str
) -> None:
    raw = json.dumps(document).encode()
    parsed = _parse_or_manifest_error(raw, content_type)
    if parsed is not None:
        assert parsed.raw == raw
        assert is_digest(parsed.digest)


@PROPERTY
@given(st.integers(min_value=1, max_value=200))
def test_deeply_nested_json_is_a_manifest_error(depth: int) -> None:
    raw = b'{"schemaVersion": 2, "layers": ' + b"[" * depth * 50 + b"]" * depth * 50 + b"}"
    assert _parse_or_manifest_error(raw, "") is None  # too deep for json, or no config


descriptors = st.builds(
    lambda digest, size: {"mediaType": mf.OCI_LAYER_GZIP, "digest": digest, "size": size},
    digests,
    st.integers(min_value=0, max_value=2**40),
)


@PROPERTY
@given(descriptors, st.lists(descriptors, max_size=5))
def test_a_valid_manifest_parses_to_what_it_says(
    config: dict[str, Any], layers: list[dict[str, Any]]
) -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": dict(config, mediaType=mf.OCI_CONFIG),
        "layers": layers,
    }
    raw = json.dumps(document, indent=2).encode()
    parsed = mf.parse_document(raw, mf.OCI_MANIFEST)
    assert isinstance(parsed, mf.Manifest)
    assert parsed.digest == mf.sha256_digest(raw)
    assert [(x.digest, x.size) for x in parsed.layers] == [(x["digest"], x["size"]) for x in layers]


# --------------------------------------------------------------------------------------------
# WWW-Authenticate

_tokens = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1)
_quotable = st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\x00"), max_size=30)


@PROPERTY
@given(any_text)
def test_parse_challenges_never_raises(header: str) -> None:
    challenges = parse_challenges(header)
    assert isinstance(challenges, list)
    for challenge in challenges:
        assert isinstance(challenge, Challenge)
        assert challenge.scheme == challenge.scheme.lower() and challenge.scheme
        assert all(name == name.lower() for name in challenge.params)
    chosen = choose_challenge([header, header])
    assert chosen is None or chosen.scheme in ("bearer", "basic")
    if chosen is not None and chosen.scheme == "bearer":
        assert chosen.params.get("realm")


@PROPERTY
@given(
    st.sampled_from(["Bearer", "bearer", "BEARER", "Basic"]),
    st.dictionaries(_tokens, _quotable, min_size=1, max_size=4),
)
def test_quoted_parameters_come_back_as_sent(scheme: str, params: dict[str, str]) -> None:
    lowered: dict[str, str] = {}
    for name, value in params.items():
        lowered.setdefault(name.lower(), value)
    if len(lowered) != len(params):
        return  # names differing only in case: the first wins, as the parser documents
    quoted = ",".join(
        f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for name, value in params.items()
    )
    (challenge,) = parse_challenges(f"{scheme} {quoted}")
    assert challenge.scheme == scheme.lower()
    assert dict(challenge.params) == lowered


# --------------------------------------------------------------------------------------------
# Content-Range

_numbers = st.integers(min_value=0, max_value=2**63)


@PROPERTY
@given(st.one_of(any_text, st.builds("bytes {}-{}/{}".format, _numbers, _numbers, _numbers)))
def test_parse_content_range_is_none_or_a_sane_range(value: str) -> None:
    parsed = parse_content_range(value)
    if parsed is not None:
        first, last, total = parsed
        assert 0 <= first <= last
        assert total is None or last < total


@PROPERTY
@given(
    _numbers, st.integers(min_value=0, max_value=2**40), st.integers(min_value=1, max_value=2**40)
)
def test_a_valid_content_range_comes_back(first: int, length: int, beyond: int) -> None:
    last = first + length
    total = last + beyond
    assert parse_content_range(f"bytes {first}-{last}/{total}") == (first, last, total)
    assert parse_content_range(f"bytes {first}-{last}/*") == (first, last, None)


# --------------------------------------------------------------------------------------------
# Link

BASE = httpx.URL("https://registry.example")
_paths = st.text(alphabet=string.ascii_letters + string.digits + "/_-.~%?&=:;@+", max_size=40)


@PROPERTY
@given(st.one_of(any_text, st.builds('<{}>; rel="next"'.format, any_text)))
def test_next_link_is_none_or_a_path_on_the_registry(header: str) -> None:
    path = next_link(header, BASE)
    if path is not None:
        assert path.startswith("/")
        assert same_origin(BASE.join(path), BASE)


@PROPERTY
@given(_paths)
def test_a_next_link_on_the_registry_is_followed(path: str) -> None:
    target = "/v2/_catalog?n=100&last=" + path.replace(">", "").replace(",", "")
    found = next_link(f'<{target}>; rel="next"', BASE)
    assert found is not None and found.startswith("/v2/_catalog")
    assert next_link(f'<https://elsewhere.example{target}>; rel="next"', BASE) is None


# --------------------------------------------------------------------------------------------
# Retry-After


@PROPERTY
@given(any_text)
def test_parse_retry_after_is_none_or_finite_and_not_negative(value: str) -> None:
    seconds = parse_retry_after(value, now=1_700_000_000.0)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@PROPERTY
@given(st.integers(min_value=0, max_value=10**12))
def test_delay_seconds_come_back(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == float(seconds)


@PROPERTY
@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_http_dates_count_from_now(offset: int) -> None:
    now = 1_700_000_000.0
    when = email.utils.formatdate(now + offset, usegmt=True)
    assert parse_retry_after(when, now=now) == pytest.approx(max(0, offset), abs=1.0)


@PROPERTY
@given(
    st.one_of(
        json_values,
        st.text(alphabet=string.ascii_letters + string.digits + "-_=", max_size=40),
        st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    ),
    json_values,
)
def test_schema1_signatures_are_a_document_or_a_manifest_error(
    protected: object, tail: object
) -> None:
    document = {
        "schemaVersion": 1,
        "name": "a/b",
        "tag": "1",
        "fsLayers": [],
        "history": [],
        "signatures": [{"protected": protected, "header": tail, "signature": "x"}],
    }
    raw = json.dumps(document, indent=3).encode()
    parsed = _parse_or_manifest_error(raw, mf.DOCKER_SCHEMA1_SIGNED)
    assert parsed is None or (parsed.raw == raw and parsed.layers == ())
