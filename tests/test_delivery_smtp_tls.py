"""STARTTLS, implicit TLS and AUTH against a real aiosmtpd with a trustme certificate."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from scheduler.delivery.notify import build_notification
from scheduler.delivery.smtp import SmtpOptions, SmtpTransport
from scheduler.settings import SmtpSecurity
from tests.smtp_server import RecordingHandler, SmtpServer


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the client trusts only this CA
    return authority


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"mailer" \
        and data.password == b"s3cret"
    return AuthResult(success=ok)


def _messages(n: int) -> list[Any]:
    return [build_notification(from_="a@acme.example", to=f"t{i}@x.example", subject=f"s{i}",
                               text="secret body") for i in range(n)]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_starttls_with_auth_delivers(ca: trustme.CA, pipelining: bool) -> None:
    handler = RecordingHandler(pipelining=pipelining)
    server = SmtpServer(handler, tls_context=_server_context(ca), require_starttls=True,
                        authenticator=_auth, auth_require_tls=True)
    with server:
        transport = SmtpTransport(SmtpOptions("127.0.0.1", server.port,
                                              security=SmtpSecurity.starttls, user="mailer",
                                              password="s3cret", timeout_s=5), connections=2)
        outcomes: list[Any] = []
        try:
            await transport.send_all(iter(_messages(6)), lambda m: m,
                                     lambda _m, out: outcomes.append(out))
        finally:
            await transport.close()
    assert [o.ok for o in outcomes] == [True] * 6
    assert server.per_recipient() == {f"t{i}@x.example": 1 for i in range(6)}


async def test_wrong_password_is_reported_as_unreachable(ca: trustme.CA) -> None:
    server = SmtpServer(tls_context=_server_context(ca), require_starttls=True,
                        authenticator=_auth, auth_require_tls=True)
    with server:
        transport = SmtpTransport(SmtpOptions("127.0.0.1", server.port,
                                              security=SmtpSecurity.starttls, user="mailer",
                                              password="wrong", timeout_s=1))
        outcome = await transport.send(_messages(1)[0])
        await transport.close()
    # aiosmtpd 1.4 answers a failed AUTH only after a long delay, so this ends as a timeout
    # rather than a 535; either way the relay is unusable: unreachable, nothing sent.
    assert outcome.error is not None
    assert not outcome.ok and outcome.unreachable
    assert "wrong" not in outcome.error  # the password never appears in errors
    assert server.received == []


async def test_implicit_tls_and_untrusted_certificate(ca: trustme.CA) -> None:
    with SmtpServer(ssl_context=_server_context(ca)) as server:
        good = SmtpTransport(SmtpOptions("127.0.0.1", server.port, security=SmtpSecurity.tls,
                                         timeout_s=5))
        assert (await good.send(_messages(1)[0])).ok
        await good.close()
    other = trustme.CA()  # a certificate from a CA the client does not trust
    with SmtpServer(ssl_context=_server_context(other)) as server:
        bad = SmtpTransport(SmtpOptions("127.0.0.1", server.port, security=SmtpSecurity.tls,
                                        timeout_s=5, connect_timeout_s=2))
        refused = await bad.send(_messages(1)[0])
        await bad.close()
    assert not refused.ok and refused.unreachable
