"""A refused certificate as httpx raises it on trio: an empty ConnectError whose cause, a few
levels down, is the ssl module's verification error. For MockTransport handlers."""

from __future__ import annotations

import ssl

import httpx

SELF_SIGNED = "self-signed certificate in certificate chain"


def untrusted_connect(reason: str = SELF_SIGNED) -> httpx.ConnectError:
    verify = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason} (_ssl.c:1006)"
    )
    verify.verify_message = reason
    verify.verify_code = 19
    broken = OSError()  # trio's BrokenResourceError stands between them, without a message
    broken.__cause__ = verify
    error = httpx.ConnectError("")
    error.__cause__ = broken
    return error
