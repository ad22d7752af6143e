"""Tokens: no personal data in any of them, strict decoding, one verification path."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
from sqlalchemy.engine import Engine

from jobs.newsletter.kind import send_run
from martech.compose import load_config
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import (
    CLICK,
    OPEN,
    UNSUBSCRIBE,
    Signer,
    b64decode_strict,
    click_token,
    open_token,
    scope_unsubscribe_token,
    unsubscribe_token,
    verify_click,
    verify_open,
    verify_unsubscribe,
)
from tests.newsletter_fixtures import SECRET, claim_run, settings_for, write_config
from tests.smtp_server import SmtpServer

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
HTML = """<html><body><p>Hi {{ first_name }}</p>
<a href="https://acme.example/news">News</a>
<a href="https://acme.example/prefs?who={{ email | urlencode }}">Preferences</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a>
</body></html>
"""
RECIPIENTS = ["ann@example.com", "bob.smith+news@example.org"]
_TOKEN_IN = re.compile(r"/(?:unsubscribe|c|o)/([A-Za-z0-9_-]+)|unsubscribe%20([A-Za-z0-9_-]+)")


async def test_no_token_in_a_sent_message_carries_an_address(
        tmp_path: Path, db: Engine, t0: datetime) -> None:
    write_config(tmp_path, rows=RECIPIENTS, html=HTML,
                 extra={"track": {"clicks": True, "opens": True}})
    with SmtpServer() as server:
        settings = settings_for(tmp_path, db.url.render_as_string(hide_password=False),
                                port=server.port)
        ctx = ServiceContext(settings, load_config(settings.config_dir), db)
        result = await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0),
                                on_pause="return")
    assert result.status == "done", result.detail
    signer = Signer(SECRET)
    for item in server.received:
        rcpt = item.rcpt_tos[0]
        message = item.parsed()
        html = str(message.get_body(("html",)).get_content())  # type: ignore[union-attr]
        found = [a or b for a, b in _TOKEN_IN.findall(html + message["List-Unsubscribe"])]
        assert len(found) >= 4  # unsubscribe (https + mailto), a click, the open pixel
        for token in found:
            raw = b64decode_strict(token)
            assert raw is not None, token
            payload = raw[4:-16]  # between version + key id and the MAC: what it says
            assert b"@" not in payload and b"%40" not in payload
            assert rcpt.split("@")[0].encode() not in payload
            # ... nor the address in base64, whatever the alignment.
            for shift in range(3):
                encoded = base64.urlsafe_b64encode(b"x" * shift + rcpt.encode())[4:16]
                assert encoded.decode() not in token
        verified = [verify_unsubscribe(signer, t) for t in found]
        assert any(ref is not None and ref.delivery_id for ref in verified)
        # The link personalised with the address is left as the marketer wrote it.
        assert f"who={rcpt}" in unquote(html) and "/c/" in html


def _one_character_changes(token: str) -> set[str]:
    changes = {token[:i] + ch + token[i + 1:] for i in range(len(token)) for ch in ALPHABET}
    changes |= {token[:i] + token[i + 1:] for i in range(len(token))}  # one deleted
    changes |= {token[:i] + ch + token[i:] for i in range(len(token) + 1) for ch in ALPHABET}
    changes |= {token + "=", token + "==", token + " ", token + ".", token.upper()}
    changes.discard(token)
    return changes


@pytest.mark.parametrize("purpose", [UNSUBSCRIBE, CLICK, OPEN])
def test_every_one_character_change_of_a_token_is_refused(purpose: str) -> None:
    signer = Signer(SECRET)
    cases: dict[str, tuple[str, Callable[[str], object]]] = {
        UNSUBSCRIBE: (unsubscribe_token(signer, 123456), lambda t: verify_unsubscribe(signer, t)),
        CLICK: (click_token(signer, 42, "https://acme.example/a?b=c"),
                lambda t: verify_click(signer, t)),
        OPEN: (open_token(signer, 987), lambda t: verify_open(signer, t)),
    }
    token, verify = cases[purpose]
    assert verify(token) is not None
    changes = _one_character_changes(token)
    assert len(changes) > 60 * len(token)
    accepted = [t for t in changes if verify(t) is not None]
    assert accepted == []
    # The one verification path refuses the others' purposes too.
    for other in {UNSUBSCRIBE, CLICK, OPEN} - {purpose}:
        assert signer.verify(other, token) is None


def test_strict_decoding() -> None:
    assert b64decode_strict("AA") == b"\x00"
    for text in ("AB", "AA==", "AA=", "A", "AA\n", "A A", "A+", "A/", "Zm9v!"):
        assert b64decode_strict(text) is None, text  # AB: non-zero unused bits


def test_a_test_message_unsubscribes_no_one() -> None:
    signer = Signer(SECRET)
    ref = verify_unsubscribe(signer, scope_unsubscribe_token(signer, "news"))
    assert ref is not None and ref.delivery_id is None and ref.scope == "news"
    assert scope_unsubscribe_token(signer, "news") != scope_unsubscribe_token(signer, "news")
