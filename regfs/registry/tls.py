"""What regfs trusts for TLS, and how a refused certificate is told.

Every client trusts the system's store, as pip does, through `truststore` (the OS verifier on
macOS and Windows; OpenSSL's default locations on Linux), plus the files and directories named
by SSL_CERT_FILE and SSL_CERT_DIR when they are set, plus the CA files a mount adds
(--ca-cert for the registry, its token realm and its CDN redirects; --foreign-ca-cert for
foreign-layer hosts). Each adds to the others: OpenSSL alone would let SSL_CERT_FILE replace
the system bundle on Linux, and truststore alone ignores both variables on macOS and Windows,
so both are loaded here explicitly, and on Linux the compiled-in system locations too. A
Linux system with no CA store at all (no ca-certificates package) gets certifi's bundle,
httpx's own default, rather than trusting nothing.

`verification_failure` finds, in a failed connect, the verifier's own reason ("self-signed
certificate in certificate chain"), which on trio sits a few causes deep under an empty
ConnectError.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import sys
from collections.abc import Mapping, Sequence

import certifi
import truststore

from ..errors import ConfigError

log = logging.getLogger(__name__)

# Where distributions keep their CA bundle (truststore's list, after certifi-system-store).
_SYSTEM_BUNDLES = (
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
)
_HASHED_NAME = re.compile(r"[0-9a-fA-F]{8}\.[0-9]")
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_ :]+\]\s*|\s*\(_ssl\.c:\d+\)$")


def check_ca_file(path: str) -> None:
    """Raise ConfigError unless `path` is a file holding at least one PEM or DER CA
    certificate (what --ca-cert and --foreign-ca-cert are checked with before a mount)."""
    if not os.path.isfile(path):
        raise ConfigError(f"CA file {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"CA file {path}: no certificate could be read from it ({exc})") from None
    if not context.get_ca_certs():
        raise ConfigError(f"CA file {path}: it holds no CA certificate")


def trust_context(
    ca_files: Sequence[str] = (), *, environ: Mapping[str, str] | None = None
) -> ssl.SSLContext:
    """A client context verifying against the system store, SSL_CERT_FILE / SSL_CERT_DIR (from
    `environ`, default os.environ) and `ca_files`. A CA file that cannot be used raises
    ConfigError; an environment variable naming nothing usable is logged and skipped, as
    OpenSSL skips it."""
    env = os.environ if environ is None else environ
    context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if sys.platform not in ("darwin", "win32"):
        # OpenSSL's own defaults, loaded whatever the variables say, so they add to them.
        defaults = ssl.get_default_verify_paths()
        _load(context, cafile=defaults.openssl_cafile, capath=defaults.openssl_capath)
        if not _system_store_present(defaults):
            # A system without ca-certificates: certifi's bundle (httpx's own default) rather
            # than trusting nothing at all.
            log.debug("no system CA store found; using certifi's bundle")
            _load(context, cafile=certifi.where())
    cert_file = env.get("SSL_CERT_FILE", "")
    if cert_file:
        if os.path.isfile(cert_file):
            try:
                context.load_verify_locations(cafile=cert_file)
            except (ssl.SSLError, OSError) as exc:
                log.warning("SSL_CERT_FILE=%s ignored: %s", cert_file, _ssl_text(exc))
        else:
            log.warning("SSL_CERT_FILE=%s ignored: not a file", cert_file)
    for cert_dir in env.get("SSL_CERT_DIR", "").split(os.pathsep):
        if not cert_dir:
            continue
        if os.path.isdir(cert_dir):
            _load(context, capath=cert_dir)  # hashed names, read when a certificate is needed
        else:
            log.warning("SSL_CERT_DIR entry %s ignored: not a directory", cert_dir)
    for path in ca_files:
        check_ca_file(path)
        context.load_verify_locations(cafile=path)
    return context


def _system_store_present(defaults: ssl.DefaultVerifyPaths) -> bool:
    """Whether a system CA bundle or hashed directory exists where OpenSSL or truststore
    looks for one on Linux and the BSDs."""
    files = [defaults.openssl_cafile, *_SYSTEM_BUNDLES]
    if any(path and os.path.isfile(path) for path in files):
        return True
    capath = defaults.openssl_capath
    return (
        bool(capath)
        and os.path.isdir(capath)
        and any(_HASHED_NAME.fullmatch(name) for name in os.listdir(capath))
    )


def _load(context: ssl.SSLContext, *, cafile: str | None = None, capath: str | None = None) -> None:
    cafile = cafile if cafile and os.path.isfile(cafile) else None
    capath = capath if capath and os.path.isdir(capath) else None
    if cafile is None and capath is None:
        return
    try:
        context.load_verify_locations(cafile=cafile, capath=capath)
    except (ssl.SSLError, OSError) as exc:
        log.debug("trust locations %s %s not loaded: %s", cafile, capath, _ssl_text(exc))


def verification_failure(exc: BaseException) -> str | None:
    """The reason a connect failed certificate verification, or None if it did not. The
    SSL error's own verify_message first, wherever it is along the causes: httpx's sync
    transport copies its text (with OpenSSL's words around it) into the errors above it."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 12:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for seen in chain:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or _ssl_text(seen) or "certificate verify failed"
    for seen in chain:
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return _ssl_text(seen) or "certificate verify failed"
    return None


def _ssl_text(exc: BaseException) -> str:
    """An error's words without OpenSSL's "[SSL: CODE]" prefix and "(_ssl.c:NNN)" suffix."""
    return _SSL_NOISE.sub("", str(exc)).strip()
