"""regfs.registry.challenge: WWW-Authenticate parsing."""

from __future__ import annotations

import pytest

from regfs.registry.challenge import Challenge, parse_challenges

# --------------------------------------------------------------------------------------------
# parse_challenges


def test_parse_bearer() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/alpine:pull",
            },
        )
    ]


def test_parse_quoted_commas_and_escapes() -> None:
    [challenge] = parse_challenges(
        'Bearer realm="https://a.example/t", scope="repository:a/b:pull,push", '
        'error="say \\"hi\\", \\\\ok"'
    )
    assert challenge.params["scope"] == "repository:a/b:pull,push"
    assert challenge.params["error"] == 'say "hi", \\ok'


def test_parse_multiple_challenges() -> None:
    challenges = parse_challenges(
        'Basic realm="Registry Realm", BEARER realm="https://t.example/token" , service=reg,'
        " Negotiate abc+/==, NoParams"
    )
    assert challenges == [
        Challenge("basic", {"realm": "Registry Realm"}),
        Challenge("bearer", {"realm": "https://t.example/token", "service": "reg"}),
        Challenge("negotiate", {"token68": "abc+/=="}),
        Challenge("noparams", {}),
    ]


def test_parse_lenient_unquoted_url_and_case() -> None:
    [challenge] = parse_challenges("bearer Realm=https://t.example/token,Service = reg")
    assert challenge == Challenge("bearer", {"realm": "https://t.example/token", "service": "reg"})


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        ",,,",
        '"',
        "=foo",
        'Bearer realm="unterminated',
        "Bearer =x",
        'Bearer realm="x" junk',
        'Bearer realm=x"y',
        "(Bearer) realm=x",
    ],
)
def test_parse_garbage(header: str) -> None:
    assert parse_challenges(header) == []
