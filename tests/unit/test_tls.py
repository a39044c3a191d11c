"""regfs.registry.tls: CA files checked before a mount, SSL_CERT_FILE / SSL_CERT_DIR read
without failing a mount, the verifier's reason found; the TLS options of `regfs mount`.

Whether the contexts really trust what they load is shown against real servers in
tests/integration/test_trust.py."""

from __future__ import annotations

import logging
import ssl
import sys
from pathlib import Path

import certifi
import pytest
import trustme

from regfs.cli import build_parser, config_from, helper_args
from regfs.errors import ConfigError
from regfs.registry import tls
from regfs.registry.tls import check_ca_file, trust_context, verification_failure
from tests.unit.certs import SELF_SIGNED, untrusted_connect


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_check_ca_file(tmp_path: Path, ca_file: Path) -> None:
    check_ca_file(str(ca_file))
    with pytest.raises(ConfigError, match="no such file"):
        check_ca_file(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^CA file .*garbage\.pem: "):
        check_ca_file(str(garbage))
    with pytest.raises(ConfigError, match="no such file"):
        check_ca_file(str(tmp_path))  # a directory is not a CA file


def test_trust_context_takes_ca_files_and_refuses_bad_ones(tmp_path: Path, ca_file: Path) -> None:
    context = trust_context([str(ca_file)], environ={})
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ConfigError):
        trust_context([str(tmp_path / "missing.pem")], environ={})


def test_unusable_environment_variables_are_logged_not_fatal(
    tmp_path: Path, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="regfs.registry.tls")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for environ in (
        {"SSL_CERT_FILE": str(tmp_path / "missing.pem")},
        {"SSL_CERT_FILE": str(garbage)},
        {"SSL_CERT_DIR": f"{tmp_path / 'nowhere'}"},
    ):
        caplog.clear()
        trust_context(environ=environ)
        (line,) = [r.getMessage() for r in caplog.records]
        assert "ignored" in line and str(tmp_path) in line
    caplog.clear()
    trust_context(environ={"SSL_CERT_FILE": str(ca_file), "SSL_CERT_DIR": str(tmp_path)})
    assert not caplog.records


def test_verification_failure_finds_the_reason() -> None:
    assert verification_failure(untrusted_connect()) == SELF_SIGNED
    plain = ssl.SSLError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed (_ssl.c:1006)"
    )
    assert verification_failure(plain) == "certificate verify failed"
    refused = ConnectionRefusedError(111, "Connection refused")
    assert verification_failure(refused) is None
    loop = ValueError("a")
    loop.__context__ = ValueError("b")
    assert verification_failure(loop) is None


# -- the options ------------------------------------------------------------------------------


def test_ca_options_are_checked_before_mounting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    for option in ("--ca-cert", "--foreign-ca-cert"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["mount", option, str(tmp_path / "nope.pem"), str(tmp_path)])
        assert info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.endswith(f"CA file {tmp_path / 'nope.pem'}: no such file")


def test_foreign_ca_cert_is_repeatable_and_separate(tmp_path: Path, ca_file: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    args = build_parser().parse_args(
        [
            "mount",
            "--ca-cert",
            str(ca_file),
            "--foreign-ca-cert",
            str(ca_file),
            "--foreign-ca-cert",
            str(other),
            str(tmp_path),
        ]
    )
    config = config_from(args)
    assert config.ca_cert == str(ca_file)
    assert config.foreign_ca_certs == [str(ca_file), str(other)]
    assert config_from(build_parser().parse_args(["mount", str(tmp_path)])).foreign_ca_certs == []


def test_foreign_ca_cert_in_the_helper_form() -> None:
    argv = helper_args(
        ["mcr.microsoft.com", "/mnt/mcr", "-o", "ro,foreign_ca_cert=/a.pem,foreign_ca_cert=/b.pem"]
    )
    assert argv[argv.index("--foreign-ca-cert") + 1] == "/a.pem"
    assert argv.count("--foreign-ca-cert") == 2 and "/b.pem" in argv


def test_a_system_without_a_ca_store_falls_back_to_certifi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "_SYSTEM_BUNDLES", ())
    empty = ssl.DefaultVerifyPaths(
        None, None, "SSL_CERT_FILE", str(tmp_path / "cert.pem"), "SSL_CERT_DIR", str(tmp_path)
    )  # type: ignore[call-arg]
    assert not tls._system_store_present(empty)
    (tmp_path / "0123abcd.0").write_text("")
    assert tls._system_store_present(empty)

    loaded: list[str | None] = []
    real_load = tls._load

    def recording_load(
        context: ssl.SSLContext, *, cafile: str | None = None, capath: str | None = None
    ) -> None:
        loaded.append(cafile)
        real_load(context, cafile=cafile, capath=capath)

    monkeypatch.setattr(tls, "_load", recording_load)
    monkeypatch.setattr(tls, "_system_store_present", lambda defaults: False)
    trust_context(environ={})
    if sys.platform not in ("darwin", "win32"):
        assert certifi.where() in loaded
    monkeypatch.setattr(tls, "_system_store_present", lambda defaults: True)
    loaded.clear()
    trust_context(environ={})
    assert certifi.where() not in loaded
