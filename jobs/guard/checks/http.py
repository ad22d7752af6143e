"""HTTP(S) probe: status, response time, body, JSON field, header, redirects, certificate."""

from __future__ import annotations

import json
import re
import ssl
import time
from typing import Any

import aiohttp

from jobs.guard.checks.base import ProbeFailed, step
from jobs.guard.checks.tlsinfo import client_context, expiry_note, expiry_problem, peer_cert
from scheduler.clock import Clock
from scheduler.config.checks import HttpCheck

_MAX_BODY = 1_000_000  # bytes read for body checks; health pages are small


class HttpProbe:
    kind = "http"

    def __init__(self, spec: HttpCheck, session: aiohttp.ClientSession, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self.session = session
        self._ssl: ssl.SSLContext | None = None
        if spec.url.lower().startswith("https:"):
            self._ssl = client_context(spec.verify_tls, spec.ca_file)
        self._pattern = re.compile(spec.body_matches) if spec.body_matches else None

    async def run(self, timeout_s: float) -> str:
        spec = self.spec
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s,
                                        sock_connect=timeout_s, sock_read=timeout_s)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"timeout": timeout, "allow_redirects": spec.follow_redirects,
                                  "headers": spec.headers}
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        try:
            async with self.session.request(spec.method, spec.url, **kwargs) as resp:
                elapsed_s = time.perf_counter() - started
                notes = [f"{resp.status}"]
                cert_der = _peer_cert(resp)
                final_url = resp.url
                if resp.status not in spec.status:
                    raise ProbeFailed(f"status {resp.status}, expected "
                                      f"{' or '.join(map(str, spec.status))}")
                for name, want in spec.expect_headers.items():
                    got = resp.headers.get(name)
                    if got is None or (want != "*" and got != want):
                        raise ProbeFailed(f"header {name}: {got!r}, expected {want!r}")
                if _needs_body(spec):
                    raw = await step("reading body", _read_body(resp.content), timeout_s)
                    _check_body(spec, self._pattern, raw.decode(resp.charset or "utf-8",
                                                                "replace"))
                elapsed_s = time.perf_counter() - started
        except aiohttp.ClientConnectorError as exc:
            raise ProbeFailed(f"connect: {exc.os_error or exc}") from None
        except aiohttp.ClientResponseError as exc:
            raise ProbeFailed(f"http: {exc.status} {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise ProbeFailed(f"http: {type(exc).__name__}: {exc}") from None
        if spec.max_response_time is not None:
            limit_s = spec.max_response_time.total_seconds()
            if elapsed_s > limit_s:
                raise ProbeFailed(f"slow: {elapsed_s * 1000:.0f} ms > {limit_s * 1000:.0f} ms")
        if spec.cert_valid_for is not None:
            if final_url.scheme != "https" or self._ssl is None:
                raise ProbeFailed("cert_valid_for needs an https URL")
            if cert_der is None:  # aiohttp already released the connection: ask again
                host = final_url.raw_host or ""
                cert_der = await peer_cert(host, final_url.port or 443, self._ssl, host,
                                           timeout_s)
            problem = expiry_problem(cert_der, self.clock.now(), spec.cert_valid_for)
            if problem:
                raise ProbeFailed(problem)
            notes.append(expiry_note(cert_der, self.clock.now()))
        notes.insert(1, f"{elapsed_s * 1000:.0f} ms")
        return ", ".join(notes)


def _peer_cert(resp: aiohttp.ClientResponse) -> bytes | None:
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


async def _read_body(content: aiohttp.StreamReader) -> bytes:
    """The whole body up to ``_MAX_BODY``: ``read(n)`` returns only what has arrived so far,
    so a marker near the end of a big page would be missed and a healthy site called down."""
    buf = bytearray()
    async for chunk in content.iter_chunked(65_536):
        buf += chunk
        if len(buf) > _MAX_BODY:
            raise ProbeFailed(f"body larger than {_MAX_BODY} bytes: body checks read at most "
                              "that; point the check at a smaller health page")
    return bytes(buf)


def _needs_body(spec: HttpCheck) -> bool:
    return bool(spec.body_contains or spec.body_matches or spec.json_field)


def _check_body(spec: HttpCheck, pattern: re.Pattern[str] | None, text: str) -> None:
    if spec.body_contains is not None and spec.body_contains not in text:
        raise ProbeFailed(f"body does not contain {spec.body_contains!r}")
    if pattern is not None and not pattern.search(text):
        raise ProbeFailed(f"body does not match /{pattern.pattern}/")
    if spec.json_field:
        try:
            doc = json.loads(text)
        except ValueError:
            raise ProbeFailed("body is not JSON") from None
        for path, want in spec.json_field.items():
            got = dotted(doc, path)
            if got != want:
                raise ProbeFailed(f"JSON {path} is {got!r}, expected {want!r}")


_MISSING = object()


def dotted(doc: Any, path: str) -> Any:
    """``a.b.0.c`` into nested dicts and lists; a missing step gives ``<missing>``."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return "<missing>"
    return node


def new_session(limit: int) -> aiohttp.ClientSession:
    """One session for every http check. ``force_close``: each probe opens a fresh connection,
    so a dead listener is noticed (a kept-alive socket could hide it)."""
    connector = aiohttp.TCPConnector(limit=limit, force_close=True, ttl_dns_cache=60)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 headers={"User-Agent": "martech-guard/0.1"})
