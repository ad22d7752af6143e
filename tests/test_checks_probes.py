"""Probes against real local servers: HTTP(S), TCP, DNS, SMTP with STARTTLS, TLS expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web as aioweb
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import AuthResult

from jobs.guard.checks.base import CheckResult, Probe, run_probe
from jobs.guard.checks.factory import build_probe
from jobs.guard.checks.http import _MAX_BODY
from scheduler.clock import SystemClock
from scheduler.config.checks import CheckConfig
from tests.dns_server import DnsServer
from tests.http_server import HttpServer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, **issue: Any) -> ssl.SSLContext:
    cert = ca.issue_cert("localhost", "127.0.0.1", **issue)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def probe(session: aiohttp.ClientSession, raw: dict[str, Any], timeout_s: float = 2.0
                ) -> CheckResult:
    cfg = CheckConfig.model_validate(raw)
    p: Probe = build_probe(cfg, session, SystemClock())
    return await run_probe(p, timeout_s)


@pytest.fixture
async def web() -> AsyncIterator[HttpServer]:
    server = await HttpServer().start()
    yield server
    await server.stop()


HTTP_CASES = [
    ({"url": "/"}, "ok", "200"),
    ({"url": "/status/503"}, "fail", "status 503, expected 200"),
    ({"url": "/status/503", "status": [200, 503]}, "ok", "503"),
    ({"url": "/", "body_contains": "Welcome"}, "ok", ""),
    ({"url": "/", "body_contains": "Goodbye"}, "fail", "does not contain 'Goodbye'"),
    ({"url": "/", "body_matches": r"build \d+"}, "ok", ""),
    ({"url": "/", "body_matches": r"^build$"}, "fail", "does not match"),
    ({"url": "/health", "json_field": {"status": "ok", "db.ok": True, "items.1": 2}}, "ok", ""),
    ({"url": "/health", "json_field": {"db.ok": False}}, "fail", "JSON db.ok is True"),
    ({"url": "/", "json_field": {"status": "ok"}}, "fail", "not JSON"),
    ({"url": "/", "expect_headers": {"X-Served-By": "acme-web-1"}}, "ok", ""),
    ({"url": "/", "expect_headers": {"X-Served-By": "other"}}, "fail", "header X-Served-By"),
    ({"url": "/", "expect_headers": {"X-Missing": "*"}}, "fail", "header X-Missing"),
    ({"url": "/redirect"}, "ok", "200"),
    ({"url": "/redirect", "follow_redirects": False}, "fail", "status 302"),
    ({"url": "/redirect", "follow_redirects": False, "status": [301, 302]}, "ok", "302"),
    ({"url": "/slow", "max_response_time": "200ms"}, "fail", "timed out"),
]


@pytest.mark.parametrize(("spec", "outcome", "detail"), HTTP_CASES)
async def test_http_probe_rules(web: HttpServer, session: aiohttp.ClientSession,
                                spec: dict[str, Any], outcome: str, detail: str) -> None:
    web.slow_s = 0.6
    spec = {**spec, "url": web.url + spec["url"]}
    result = await probe(session, {"http": spec}, timeout_s=0.4)
    assert result.outcome == outcome, result.detail
    assert detail in result.detail


async def test_http_max_response_time_and_timeout(web: HttpServer,
                                                  session: aiohttp.ClientSession) -> None:
    web.slow_s = 0.3
    slow = await probe(session, {"http": {"url": web.url + "/slow",
                                          "max_response_time": "100ms"}}, timeout_s=2)
    assert slow.outcome == "fail" and slow.detail.startswith("slow: ")
    web.slow_s = 5
    hung = await probe(session, {"http": {"url": web.url + "/slow"}}, timeout_s=0.3)
    assert hung.outcome == "fail" and "timed out" in hung.detail
    assert hung.latency_ms < 1000  # the timeout is honoured, not the server's 5 s


async def test_http_outage_and_recovery(web: HttpServer, session: aiohttp.ClientSession) -> None:
    spec = {"http": {"url": web.url + "/"}}
    assert (await probe(session, spec)).ok
    await web.stop()
    down = await probe(session, spec)
    assert down.outcome == "fail" and "connect" in down.detail
    await web.start()
    assert (await probe(session, spec)).ok


async def test_https_certificate_rules(ca: trustme.CA, ca_file: str,
                                       session: aiohttp.ClientSession) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    good = await HttpServer(server_context(ca)).start()
    short = await HttpServer(server_context(ca, not_after=soon)).start()
    try:
        ok = await probe(session, {"http": {"url": good.url + "/", "ca_file": ca_file,
                                            "cert_valid_for": "14d"}})
        assert ok.ok, ok.detail
        assert "cert valid" in ok.detail
        expiring = await probe(session, {"http": {"url": short.url + "/", "ca_file": ca_file,
                                                  "cert_valid_for": "14d"}})
        assert expiring.outcome == "fail" and "certificate expires" in expiring.detail
        untrusted = await probe(session, {"http": {"url": good.url + "/"}})
        assert untrusted.outcome == "fail"
        unverified = await probe(session, {"http": {"url": good.url + "/",
                                                    "verify_tls": False,
                                                    "cert_valid_for": "14d"}})
        assert unverified.ok, unverified.detail
    finally:
        await good.stop()
        await short.stop()


async def test_tcp_probe(session: aiohttp.ClientSession) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = {"tcp": {"host": "127.0.0.1", "port": port}}
    assert (await probe(session, spec)).ok
    server.close()
    await server.wait_closed()
    result = await probe(session, spec)
    assert result.outcome == "fail"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer({("www.acme.test.", "A"): ["127.0.0.5", "127.0.0.6"],
                        ("acme.test.", "MX"): ["mail.acme.test."]}).start()
    yield server
    server.stop()


async def test_dns_probe(dns: DnsServer, session: aiohttp.ClientSession) -> None:
    base = {"nameserver": "127.0.0.1", "port": dns.port}
    ok = await probe(session, {"dns": {**base, "name": "www.acme.test",
                                       "expect": ["127.0.0.5"]}})
    assert ok.ok and "127.0.0.5" in ok.detail
    mx = await probe(session, {"dns": {**base, "name": "acme.test", "record_type": "MX",
                                       "expect": ["10 mail.acme.test."]}})
    assert mx.ok, mx.detail  # trailing dots and case do not matter
    mx_pref = await probe(session, {"dns": {**base, "name": "acme.test", "record_type": "MX",
                                            "expect": ["20 mail.acme.test"]}})
    assert mx_pref.outcome == "fail"  # the preference is part of the answer
    wrong = await probe(session, {"dns": {**base, "name": "www.acme.test",
                                          "expect": ["127.0.0.9"]}})
    assert wrong.outcome == "fail" and "expected 127.0.0.9" in wrong.detail
    missing = await probe(session, {"dns": {**base, "name": "nope.acme.test"}})
    assert missing.outcome == "fail" and "NXDOMAIN" in missing.detail
    dns.stop()
    silent = await probe(session, {"dns": {**base, "name": "www.acme.test"}}, timeout_s=0.5)
    assert silent.outcome == "fail"
    assert silent.latency_ms < 1500
    dns.start()
    assert (await probe(session, {"dns": {**base, "name": "www.acme.test"}})).ok


class _Handler:
    async def handle_DATA(self, *args: Any) -> str:
        return "250 OK"


def _authenticator(*args: Any) -> AuthResult:
    return AuthResult(success=False)


async def _smtp_server(tls: ssl.SSLContext | None, auth: bool) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {"tls_context": tls}
    if auth:
        kwargs.update(authenticator=_authenticator, auth_require_tls=True)
    return await loop.create_server(lambda: SMTPProtocol(_Handler(), **kwargs),
                                    "127.0.0.1", 0)


async def test_smtp_probe_starttls_and_auth(ca: trustme.CA, ca_file: str,
                                            session: aiohttp.ClientSession) -> None:
    server = await _smtp_server(server_context(ca), auth=True)
    port = server.sockets[0].getsockname()[1]
    base = {"host": "127.0.0.1", "port": port, "ca_file": ca_file}
    try:
        full = await probe(session, {"smtp": {**base, "starttls": True, "expect_auth": True}})
        assert full.ok, full.detail
        assert "STARTTLS ok" in full.detail and "AUTH" in full.detail
        # Without STARTTLS the server only advertises AUTH over TLS: the probe says so.
        no_tls = await probe(session, {"smtp": {**base, "expect_auth": True}})
        assert no_tls.outcome == "fail" and "AUTH not advertised" in no_tls.detail
        untrusted = await probe(session, {"smtp": {"host": "127.0.0.1", "port": port,
                                                   "starttls": True}})
        assert untrusted.outcome == "fail"
    finally:
        server.close()
        await server.wait_closed()
    down = await probe(session, {"smtp": {**base, "starttls": True}})
    assert down.outcome == "fail"


async def test_smtp_probe_without_starttls_offer(session: aiohttp.ClientSession) -> None:
    server = await _smtp_server(None, auth=False)
    port = server.sockets[0].getsockname()[1]
    try:
        plain = await probe(session, {"smtp": {"host": "127.0.0.1", "port": port}})
        assert plain.ok, plain.detail
        asked = await probe(session, {"smtp": {"host": "127.0.0.1", "port": port,
                                               "starttls": True}})
        assert asked.outcome == "fail" and "STARTTLS not offered" in asked.detail
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_probe_expiry_and_hostname(ca: trustme.CA, ca_file: str,
                                             session: aiohttp.ClientSession) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    servers = []
    for ctx in (server_context(ca), server_context(ca, not_after=soon),
                server_context(ca, not_before=past - dt.timedelta(days=30), not_after=past)):
        servers.append(await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=ctx))
    good, expiring, expired = (s.sockets[0].getsockname()[1] for s in servers)
    try:
        base = {"host": "127.0.0.1", "ca_file": ca_file}
        ok = await probe(session, {"tls": {**base, "port": good, "valid_for": "14d"}})
        assert ok.ok, ok.detail
        near = await probe(session, {"tls": {**base, "port": expiring, "valid_for": "14d"}})
        assert near.outcome == "fail" and "expires" in near.detail
        assert (await probe(session, {"tls": {**base, "port": expiring,
                                              "valid_for": "1d"}})).ok
        dead = await probe(session, {"tls": {**base, "port": expired}})
        assert dead.outcome == "fail" and "expired" in dead.detail
        wrong_name = await probe(session, {"tls": {**base, "port": good,
                                                   "server_name": "www.other.example"}})
        assert wrong_name.outcome == "fail" and "certificate rejected" in wrong_name.detail
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


# -- bodies bigger than one read (reviewer's finding: only the first chunk was checked) ------

BIG_PAGE = ("<p>" + "filler " * 43_000 + "</p>").encode() + b"<footer>Acme build 42</footer>"
BIG_JSON = json.dumps({"items": ["x" * 200] * 1500, "status": "ok",
                       "db": {"ok": True}}).encode()


@pytest.fixture
async def big_web() -> AsyncIterator[str]:
    """Serves large bodies in 16 KB writes with a yield between them, so the client sees
    them arrive over several reads, as from a real site."""

    async def stream(request: aioweb.Request, body: bytes, content_type: str
                     ) -> aioweb.StreamResponse:
        resp = aioweb.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        try:
            for i in range(0, len(body), 16_384):
                await resp.write(body[i:i + 16_384])
                await asyncio.sleep(0)
            await resp.write_eof()
        except ConnectionResetError:  # the probe stopped reading at its limit
            pass
        return resp

    async def page(r: aioweb.Request) -> aioweb.StreamResponse:
        return await stream(r, BIG_PAGE, "text/html; charset=utf-8")

    async def doc(r: aioweb.Request) -> aioweb.StreamResponse:
        return await stream(r, BIG_JSON, "application/json")

    async def huge(r: aioweb.Request) -> aioweb.StreamResponse:
        return await stream(r, b"a" * (_MAX_BODY + 100_000) + b"Welcome", "text/plain")

    app = aioweb.Application()
    app.router.add_get("/big", page)
    app.router.add_get("/big.json", doc)
    app.router.add_get("/huge", huge)
    runner = aioweb.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_body_checks_read_the_whole_page(big_web: str,
                                                    session: aiohttp.ClientSession) -> None:
    assert len(BIG_PAGE) > 300_000 and len(BIG_JSON) > 300_000
    contains = await probe(session, {"http": {"url": big_web + "/big",
                                              "body_contains": "Acme build 42"}})
    assert contains.outcome == "ok", contains.detail
    matches = await probe(session, {"http": {"url": big_web + "/big",
                                             "body_matches": r"<footer>.*build \d+"}})
    assert matches.outcome == "ok", matches.detail
    field = await probe(session, {"http": {"url": big_web + "/big.json",
                                           "json_field": {"status": "ok", "db.ok": True}}})
    assert field.outcome == "ok", field.detail
    wrong = await probe(session, {"http": {"url": big_web + "/big.json",
                                           "json_field": {"db.ok": False}}})
    assert wrong.outcome == "fail" and "JSON db.ok is True" in wrong.detail


async def test_http_body_over_the_limit_fails_clearly(big_web: str,
                                                      session: aiohttp.ClientSession) -> None:
    result = await probe(session, {"http": {"url": big_web + "/huge",
                                            "body_contains": "Welcome"}})
    assert result.outcome == "fail"
    assert f"body larger than {_MAX_BODY} bytes" in result.detail
