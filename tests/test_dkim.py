"""DKIM: the service's signature verified by dkimpy against the TXT record a local DNS serves."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
from click.testing import CliRunner

from jobs.newsletter.kind import send_run
from martech.cli import main
from scheduler.delivery.dkim import DkimError, DkimSigner, generate_key, signer_from_settings
from tests.dns_server import DnsServer
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import SmtpServer


def _dnsfunc(port: int):  # type: ignore[no-untyped-def]
    """dkimpy's DNS hook, asking only our local server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        answer = resolver.resolve(name.decode("ascii"), "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    return txt


def _record_from_cli(env: dict[str, str]) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["dkim"], env=env)
    assert result.exit_code == 0, result.output
    name, _in, _txt, quoted = result.output.strip().split(" ", 3)
    value = "".join(part.strip('"') for part in quoted.split('" "'))
    return name, value


async def test_signature_of_sent_message_verifies_against_published_record(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    key = tmp_path / "secrets" / "dkim.pem"
    generate_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    write_config(tmp_path, rows=["ann@example.com", "bob@example.com"])
    env = {"MARTECH_DKIM_PRIVATE_KEY_FILE": str(key), "MARTECH_DKIM_SELECTOR": "mt2026",
           "MARTECH_DKIM_DOMAIN": "acme.example", "MARTECH_CONFIG_DIR": str(tmp_path / "config"),
           "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"}
    name, value = _record_from_cli(env)
    assert name == "mt2026._domainkey.acme.example."
    assert value.startswith("v=DKIM1; k=rsa; p=")
    dns_server = DnsServer({(name, "TXT"): [value]}).start()
    try:
        with SmtpServer() as smtp:
            ctx = context_for(settings_for(
                tmp_path, db_url, port=smtp.port, dkim_private_key_file=key,
                dkim_selector="mt2026", dkim_domain="acme.example"))
            result = await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0),
                                    on_pause="return")
        assert result.status == "done", result.detail
        assert len(smtp.received) == 2
        lookup = _dnsfunc(dns_server.port)
        for item in smtp.received:
            assert item.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
            assert dkim.verify(item.data, dnsfunc=lookup)
            header = item.parsed()["DKIM-Signature"].replace("\r\n", "").replace(" ", "")
            signed = header.split("h=", 1)[1].split(";", 1)[0].split(":")
            for wanted in ("from", "to", "subject", "date", "message-id", "list-unsubscribe",
                           "list-unsubscribe-post", "list-id", "feedback-id", "mime-version",
                           "content-type"):
                assert wanted in signed
            # Changing a signed header or the body breaks it: it really covers them.
            forged = item.data.replace(b"\r\nTo: ", b"\r\nTo: eve", 1)
            assert forged != item.data and not dkim.verify(forged, dnsfunc=lookup)
            body = item.data.replace(b"Unsubscribe", b"Unsubscrib3", 1)
            assert body != item.data and not dkim.verify(body, dnsfunc=lookup)
        assert dns_server.queries >= 4
        ctx.db.dispose()
    finally:
        dns_server.stop()


def test_pure_dkimpy_and_openssl_rsa_sign_the_same(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    generate_key(key)
    signer = signer_from_settings(settings_for(
        tmp_path, "sqlite://", dkim_private_key_file=key, dkim_selector="s1",
        dkim_domain="acme.example"))
    assert signer is not None
    message = (b"From: a@acme.example\r\nTo: b@example.com\r\nSubject: x\r\n"
               b"Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <1@acme.example>\r\n"
               b"\r\nbody   \r\n\r\n\r\n")
    txt = signer.txt_record().encode()
    for variant in (signer, replace(signer, openssl=False)):
        signed = variant.sign(message)
        assert dkim.verify(signed, dnsfunc=lambda _n, timeout=5: txt)
    assert "key_pem" not in repr(signer) and "PRIVATE" not in repr(signer)


@pytest.mark.parametrize(("overrides", "setting"), [
    ({"dkim_selector": None}, "MARTECH_DKIM_SELECTOR"),
    ({"dkim_domain": "not a domain"}, "MARTECH_DKIM_DOMAIN"),
    ({"dkim_private_key_file": "missing.pem"}, "MARTECH_DKIM_PRIVATE_KEY_FILE"),
])
def test_misconfiguration_names_the_setting(tmp_path: Path, overrides: dict[str, Any],
                                            setting: str) -> None:
    key = tmp_path / "k.pem"
    generate_key(key)
    values: dict[str, Any] = {"dkim_private_key_file": key, "dkim_selector": "s1",
                                 "dkim_domain": "acme.example", **overrides}
    if values["dkim_private_key_file"] == "missing.pem":
        values["dkim_private_key_file"] = tmp_path / "missing.pem"
    with pytest.raises(DkimError) as caught:
        signer_from_settings(settings_for(tmp_path, "sqlite://", **values))
    assert caught.value.setting == setting


def test_cli_without_a_key_says_what_to_set(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dkim"], env={
        "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/m.db", "MARTECH_DKIM_PRIVATE_KEY_FILE": ""})
    assert result.exit_code != 0
    assert "MARTECH_DKIM_PRIVATE_KEY_FILE" in result.output
    assert "Traceback" not in result.output


def test_signer_type() -> None:
    assert DkimSigner("s", "d.example", b"").record_name == "s._domainkey.d.example"
