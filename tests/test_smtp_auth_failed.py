"""A relay refusing our credentials (535): its own pause reason, an alert to IT, and no AUTH
again with the same credentials — only with changed ones, or after someone resumes."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs.newsletter.kind import send_run
from jobs.newsletter.probe import probe_once, retry_auth_once
from scheduler.context import ServiceContext
from scheduler.store import pauses
from scheduler.store.tables import outbox
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import RecordingHandler, SmtpServer


class AuthHandler(RecordingHandler):
    """Answers AUTH PLAIN at once: 235 for mailer/right, 535 for anything else."""

    auth_attempts: int = 0

    async def handle_AUTH(self, server: Any, session: Any, envelope: Any,
                          args: list[str]) -> str:
        self.auth_attempts += 1
        fields = base64.b64decode(args[1]).split(b"\x00") if len(args) == 2 else []
        if args[0].upper() == "PLAIN" and fields[1:] == [b"mailer", b"right"]:
            session.authenticated = True
            return "235 2.7.0 Authentication successful"
        return "535 5.7.8 Authentication credentials invalid"


def _ctx(root: Path, db_url: str, port: int, password: str) -> ServiceContext:
    return context_for(settings_for(root, db_url, port=port, smtp_user="mailer",
                                    smtp_password=password))


async def test_535_pauses_alerts_and_is_not_retried_with_the_same_credentials(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    config = write_config(tmp_path, rows=["a@example.com", "b@example.com"])
    (config / "checks.yaml").write_text(
        "alerts: [{email: it@acme.example}, {webhook: 'http://127.0.0.1:9/hook', on: [up]}]\n")
    handler = AuthHandler()
    with SmtpServer(handler, auth_require_tls=False,
                    authenticator=lambda *a: None,
                    auth_exclude_mechanism=["LOGIN"]) as relay:
        ctx = _ctx(tmp_path, db_url, relay.port, "wrong")
        result = await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0),
                                on_pause="return")
        assert result.status == "held"
        with ctx.begin() as conn:
            reasons = {p.reason: p.detail for p in pauses.reasons(conn, "news")}
            alerts = conn.execute(sa.select(outbox.c.channel, outbox.c.target,
                                            outbox.c.payload)).all()
        assert list(reasons) == ["smtp_auth_failed"]
        assert "wrong" not in (reasons["smtp_auth_failed"] or "")
        # IT's e-mail route (on: down by default) gets it; the up-only webhook does not.
        assert [(a.channel, a.target) for a in alerts] == [("email", "it@acme.example")]
        assert "refused our credentials" in alerts[0].payload["subject"]
        assert relay.received == []
        tried = handler.auth_attempts
        assert tried >= 1

        # Same credentials: the probe neither clears the pause nor logs in again.
        for _ in range(3):
            assert await retry_auth_once(ctx) == []
            await probe_once(ctx)
        assert handler.auth_attempts == tried
        with ctx.begin() as conn:
            assert pauses.is_paused(conn, "news")
        ctx.db.dispose()

        # IT fixes the password and restarts: one AUTH, accepted, the pause lifts.
        fixed = _ctx(tmp_path, db_url, relay.port, "right")
        assert await retry_auth_once(fixed) == ["news"]
        assert handler.auth_attempts == tried + 1
        with fixed.begin() as conn:
            assert not pauses.is_paused(conn, "news")
        fixed.db.dispose()


async def test_changed_but_still_wrong_credentials_are_tried_once(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=["a@example.com"])
    handler = AuthHandler()
    with SmtpServer(handler, auth_require_tls=False,
                    authenticator=lambda *a: None,
                    auth_exclude_mechanism=["LOGIN"]) as relay:
        ctx = _ctx(tmp_path, db_url, relay.port, "wrong")
        await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0), on_pause="return")
        ctx.db.dispose()
        other = _ctx(tmp_path, db_url, relay.port, "still-wrong")
        before = handler.auth_attempts
        assert await retry_auth_once(other) == []
        assert await retry_auth_once(other) == []  # the new refusal is remembered too
        assert handler.auth_attempts == before + 1
        with other.begin() as conn:
            assert pauses.is_paused(conn, "news")
        other.db.dispose()
