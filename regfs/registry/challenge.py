"""What a registry asks for: WWW-Authenticate challenges (RFC 7235), parsed without I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68_CHARS = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WHITESPACE = " \t"


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header."""

    scheme: str  # "bearer" or "basic" (or any other scheme), lower-cased
    params: Mapping[str, str]  # realm, service, scope, error ...; names lower-cased


class _ChallengeSyntaxError(Exception):
    pass


class _ChallengeParser:
    """RFC 7235 section 4.1 / 2.1: ``1#challenge``, each ``scheme [ token68 / #auth-param ]``.

    Lenient where registries are known to be sloppy: unquoted parameter values may contain any
    character but comma and whitespace (``realm=https://auth.example/token``).
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def parse(self) -> list[Challenge]:
        challenges: list[Challenge] = []
        self._skip_list_separators()
        while not self._at_end():
            challenges.append(self._challenge())
            self._skip_list_separators()
        return challenges

    def _challenge(self) -> Challenge:
        scheme = self._token()
        if not scheme:
            raise _ChallengeSyntaxError
        params: dict[str, str] = {}
        if self._at_end() or self._peek() == ",":
            return Challenge(scheme.lower(), params)
        if self._peek() not in _WHITESPACE:
            raise _ChallengeSyntaxError
        self._skip_whitespace()
        if self._token68_follows():
            params["token68"] = self._token68()
            return Challenge(scheme.lower(), params)
        while True:
            self._skip_whitespace()
            if self._at_end() or self._peek() == ",":
                # Either the end of this challenge's parameter list or an empty list element:
                # decide once past the commas.
                save = self._pos
                self._skip_list_separators()
                if self._at_end() or not self._param_follows():
                    self._pos = save
                    return Challenge(scheme.lower(), params)
            name, value = self._param()
            params.setdefault(name.lower(), value)

    def _param(self) -> tuple[str, str]:
        name = self._token()
        if not name:
            raise _ChallengeSyntaxError
        self._skip_whitespace()
        if self._peek() != "=":
            raise _ChallengeSyntaxError
        self._pos += 1
        self._skip_whitespace()
        if self._peek() == '"':
            return name, self._quoted_string()
        start = self._pos
        while not self._at_end() and self._peek() not in ", \t":
            if self._peek() == '"':
                raise _ChallengeSyntaxError
            self._pos += 1
        if self._pos == start:
            raise _ChallengeSyntaxError
        return name, self._text[start : self._pos]

    def _param_follows(self) -> bool:
        """Whether a ``name = value`` pair starts here (else: a new challenge or garbage)."""
        return self._lookahead(self._token, lambda: self._peek() == "=")

    def _token68_follows(self) -> bool:
        """Whether a token68 standing alone (up to the end or a comma) starts here."""
        return self._lookahead(self._token68, lambda: self._at_end() or self._peek() == ",")

    def _lookahead(self, read: Callable[[], str], then: Callable[[], bool]) -> bool:
        """Whether `read` finds something here and, past white space, `then` holds; the
        position is left where it was."""
        save = self._pos
        try:
            if not read():
                return False
            self._skip_whitespace()
            return then()
        finally:
            self._pos = save

    def _token68(self) -> str:
        start = self._pos
        while not self._at_end() and self._peek() in _TOKEN68_CHARS:
            self._pos += 1
        if self._pos == start:
            return ""
        while not self._at_end() and self._peek() == "=":
            self._pos += 1
        return self._text[start : self._pos]

    def _quoted_string(self) -> str:
        self._pos += 1  # the opening quote
        chars: list[str] = []
        while not self._at_end():
            char = self._peek()
            self._pos += 1
            if char == '"':
                return "".join(chars)
            if char == "\\":
                if self._at_end():
                    break
                char = self._peek()
                self._pos += 1
            chars.append(char)
        raise _ChallengeSyntaxError  # unterminated

    def _token(self) -> str:
        start = self._pos
        while not self._at_end() and self._peek() in _TCHARS:
            self._pos += 1
        return self._text[start : self._pos]

    def _skip_whitespace(self) -> None:
        while not self._at_end() and self._peek() in _WHITESPACE:
            self._pos += 1

    def _skip_list_separators(self) -> None:
        while not self._at_end() and self._peek() in ", \t":
            self._pos += 1

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _at_end(self) -> bool:
        return self._pos >= len(self._text)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse one WWW-Authenticate header value into its challenges; [] if it is malformed."""
    try:
        return _ChallengeParser(header).parse()
    except _ChallengeSyntaxError:
        return []


def choose_challenge(header_values: Iterable[str]) -> Challenge | None:
    """The challenge to answer among all WWW-Authenticate values of a 401: Bearer with a realm
    (the token flow) before Basic; None if neither is offered."""
    challenges = [c for value in header_values for c in parse_challenges(value)]
    for challenge in challenges:
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            return challenge
    for challenge in challenges:
        if challenge.scheme == "basic":
            return challenge
    return None
