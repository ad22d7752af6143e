"""The example newsletter, as the service sends it (open and click tracking on, DKIM-signed,
VERP Return-Path), scores ≤ 0.5 in SpamAssassin's local tests with no header rule hit.

Runs where Debian's ``spamassassin`` is installed (``.ci/run`` installs it), skips elsewhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from jobs.newsletter.kind import send_run
from scheduler.delivery.dkim import generate_key
from scheduler.settings import Settings
from scheduler.store.db import make_engine, upgrade
from tests.conftest import REPO
from tests.newsletter_fixtures import claim_run, context_for
from tests.smtp_server import SmtpServer

SPAMASSASSIN = shutil.which("spamassassin")
RULE_DIRS = [Path("/usr/share/spamassassin"), Path("/var/lib/spamassassin")]
pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None,
    reason="spamassassin is not installed (apt-get install spamassassin; .ci/run does)")
_HIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s", re.MULTILINE)


def _header_rules() -> set[str]:
    names: set[str] = set()
    for folder in RULE_DIRS:
        for path in folder.rglob("*.cf"):
            text = path.read_text(encoding="utf-8", errors="replace")
            names.update(re.findall(r"^\s*header\s+([A-Z0-9_]+)\s", text, re.MULTILINE))
    return names


def _score(message: bytes) -> tuple[float, dict[str, float]]:
    assert SPAMASSASSIN is not None
    out = subprocess.run([SPAMASSASSIN, "-L", "-t"], input=message, capture_output=True,
                         check=False, timeout=120).stdout.decode("utf-8", "replace")
    status = re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", out, re.MULTILINE)
    assert status is not None, out[-2000:]
    details = out.split("Content analysis details:", 1)[1]
    return float(status.group(1)), {name: float(pts) for pts, name in _HIT.findall(details)}


async def test_example_newsletter_scores_low_with_tracking_on(tmp_path: Path, sqlite_url: str,
                                                              t0: datetime) -> None:
    key = tmp_path / "dkim.pem"
    generate_key(key)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    engine.dispose()
    with SmtpServer() as relay:
        settings = Settings(
            database_url=sqlite_url, config_dir=REPO / "config",
            templates_dir=REPO / "templates" / "email", var_dir=tmp_path / "var",
            transport="smtp", smtp_host="127.0.0.1", smtp_port=relay.port,
            public_base_url="https://mt.acme.example",
            secret_key="sa-test-secret-0123456789-abcdefghij",
            bounce_address="bounces@acme.example", dkim_private_key_file=key,
            dkim_selector="mt", dkim_domain="acme.example", node_name="sa")
        ctx = context_for(settings)
        campaign = ctx.config.campaigns["weekly-digest"]
        assert campaign.track.opens and campaign.track.clicks
        result = await send_run(ctx, campaign, claim_run(ctx, t0, "weekly-digest"),
                                on_pause="return")
        ctx.db.dispose()
    assert result.status == "done", result.detail
    sent = relay.received[0]
    html = sent.parsed().get_body(("html",))
    assert html is not None
    assert '<img src="https://mt.acme.example/o/' in html.get_content()  # the open pixel
    # What the receiving MTA adds before filtering: the Return-Path from MAIL FROM.
    message = f"Return-Path: <{sent.mail_from}>\r\n".encode() + sent.data
    score, hits = _score(message)
    assert score <= 0.5, hits
    header_hits = {n: p for n, p in hits.items() if n in _header_rules() and p > 0}
    assert header_hits == {}, header_hits
    assert not any(name.startswith("HTML_IMAGE_ONLY") for name in hits), hits
