"""One-click unsubscribe only behind https (validate warns about http), List-Id, Feedback-ID."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from click.testing import CliRunner

from jobs.newsletter.kind import send_run
from martech.cli import main
from tests.conftest import REPO
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import SmtpServer


async def test_plain_http_base_url_gets_no_one_click(tmp_path: Path, db_url: str,
                                                     t0: datetime) -> None:
    write_config(tmp_path, rows=["ann@example.com"])
    with SmtpServer() as relay:
        ctx = context_for(settings_for(tmp_path, db_url, port=relay.port,
                                       public_base_url="http://localhost:8025",
                                       feedback_id_sender="acme"))
        result = await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0),
                                on_pause="return")
        ctx.db.dispose()
    assert result.status == "done"
    msg = relay.received[0].parsed()
    assert msg["List-Unsubscribe-Post"] is None
    assert "<http://localhost:8025/unsubscribe/" in str(msg["List-Unsubscribe"])
    assert msg["List-Id"] == "news <news.acme.example>"
    assert msg["Feedback-ID"] == "news:newsletter:acme"
    assert relay.received[0].mail_from == "news@acme.example"  # no bounce address: no VERP


def _env(root: Path, base_url: str) -> dict[str, str]:
    return {"MARTECH_CONFIG_DIR": str(root / "config"),
            "MARTECH_TEMPLATES_DIR": str(root / "templates"),
            "MARTECH_DATABASE_URL": f"sqlite:///{root}/m.db", "MARTECH_PUBLIC_BASE_URL": base_url}


def test_validate_warns_about_http_but_passes(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["ann@example.com"])
    http = CliRunner().invoke(main, ["validate"], env=_env(tmp_path, "http://localhost:8025"))
    assert http.exit_code == 0, http.output
    assert "warning: MARTECH_PUBLIC_BASE_URL is http://localhost:8025" in http.output
    assert "List-Unsubscribe-Post" in http.output
    https = CliRunner().invoke(main, ["validate"], env=_env(tmp_path, "https://mt.acme.example"))
    assert https.exit_code == 0 and "MARTECH_PUBLIC_BASE_URL is" not in https.output


def test_validate_warns_when_a_short_html_part_carries_the_open_pixel(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["ann@example.com"])  # the fixture's HTML is two lines long
    short = CliRunner().invoke(main, ["validate"], env=_env(tmp_path, "https://mt.acme.example"))
    assert short.exit_code == 0
    assert "campaign news: the HTML part is" in short.output
    assert "HTML_IMAGE_ONLY" in short.output and "track: {opens: false}" in short.output


def test_the_example_newsletter_has_enough_text(tmp_path: Path) -> None:
    env = {"MARTECH_CONFIG_DIR": str(REPO / "config"),
           "MARTECH_TEMPLATES_DIR": str(REPO / "templates" / "email"),
           "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/m.db",
           "MARTECH_PUBLIC_BASE_URL": "https://mt.acme.example"}
    result = CliRunner().invoke(main, ["validate"], env=env)
    assert result.exit_code == 0, result.output
    assert "weekly-digest: the HTML part" not in result.output
