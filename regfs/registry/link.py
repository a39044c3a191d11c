"""Link headers (RFC 8288): where the next page of a paginated list (tags, catalog) is.

Only a `rel="next"` link on the registry's own origin is followed: a page cannot send the
client, with the registry's credentials, to another host.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from .http import same_origin


def next_link(header: str | None, base: httpx.URL) -> str | None:
    """The path (and query) of a `Link: <...>; rel="next"` header, on the registry's own
    origin; None when there is none, the header is malformed, or it points elsewhere."""
    for target, params in _link_values(header or ""):
        if "next" not in params.get("rel", "").lower().split():
            continue
        try:
            url = base.join(target.strip())
            path = url.raw_path.decode("ascii")
        except (httpx.InvalidURL, ValueError, UnicodeError):
            return None
        if not same_origin(url, base) or not path.startswith("/"):
            return None
        return path
    return None


def _link_values(text: str) -> Iterator[tuple[str, dict[str, str]]]:
    """RFC 8288's `<target>; name=value; name="value", <target>...`, scanned in one pass
    (a regular expression for it backtracks for ever on a hostile header); stops at the
    first thing that is not that."""
    position, end = 0, len(text)

    def skip(chars: str) -> None:
        nonlocal position
        while position < end and text[position] in chars:
            position += 1

    while True:
        skip(" \t,")
        if position >= end or text[position] != "<":
            return
        close = text.find(">", position)
        if close < 0:
            return
        target, position = text[position + 1 : close], close + 1
        params: dict[str, str] = {}
        while True:
            skip(" \t")
            if position >= end or text[position] == ",":
                break
            if text[position] != ";":
                return
            position += 1
            skip(" \t")
            start = position
            while position < end and text[position] not in "=;, \t":
                position += 1
            name, value = text[start:position].lower(), ""
            skip(" \t")
            if position < end and text[position] == "=":
                position += 1
                skip(" \t")
                if position < end and text[position] == '"':
                    close = text.find('"', position + 1)
                    if close < 0:
                        return
                    value, position = text[position + 1 : close], close + 1
                else:
                    start = position
                    while position < end and text[position] not in ";,":
                        position += 1
                    value = text[start:position].strip()
            params.setdefault(name, value)
        yield target, params
