"""``martech forget`` and ``martech export-person`` over SQLite and PostgreSQL: afterwards no
table holds the address, and a new run skips the person (a keyed hash in the suppressions)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from jobs.newsletter.http_tracking import record_click, record_open
from jobs.newsletter.http_unsubscribe import record_unsubscribe
from jobs.newsletter.kind import send_run
from martech.cli import main
from scheduler.context import ServiceContext
from scheduler.privacy import HASH_PREFIX
from scheduler.store import outbox as outbox_store
from scheduler.store.tables import (
    deliveries,
    metadata,
    outbox,
    posts_done,
    runs,
    suppressions,
    tracking_events,
)
from tests.newsletter_fixtures import SECRET, claim_run, context_for, settings_for, write_config
from tests.smtp_server import SmtpServer

ANN = "ann@example.com"
FORMS = ("ann@example.com", "ann%40example.com")
ROTATED = "rotated-key-0123456789-abcdefghijklmnop"


def _cli(root: Path, db_url: str, *args: str, key: str = SECRET, previous: str = "") -> Any:
    env = {"MARTECH_CONFIG_DIR": str(root / "config"),
           "MARTECH_TEMPLATES_DIR": str(root / "templates"), "MARTECH_VAR_DIR": str(root / "var"),
           "MARTECH_DATABASE_URL": db_url, "MARTECH_SECRET_KEY": key,
           "MARTECH_PREVIOUS_SECRET_KEYS": previous,
           "MARTECH_PUBLIC_BASE_URL": "https://mt.acme.example"}
    return CliRunner().invoke(main, list(args), env=env)


def _mentions(db: Engine) -> list[str]:
    """Every cell of every table that still mentions Ann, as table.column."""
    found = []
    with db.begin() as conn:
        for table in metadata.sorted_tables:
            for column in table.columns:
                for row in conn.execute(sa.select(column)):
                    text = json.dumps(row[0], default=str).lower()
                    if any(form in text for form in FORMS):
                        found.append(f"{table.name}.{column.name}")
    return found


async def _send(ctx: ServiceContext, at: datetime) -> tuple[Any, SmtpServer]:
    with SmtpServer() as smtp:
        run_ctx = ServiceContext(ctx.settings.model_copy(update={"smtp_port": smtp.port}),
                                 ctx.config, ctx.db, ctx.clock)
        result = await send_run(run_ctx, ctx.config.campaigns["news"], claim_run(ctx, at),
                                on_pause="return")
    return result, smtp


def _leave_traces(ctx: ServiceContext, run_id: int, now: datetime, tmp_path: Path) -> None:
    """Ann everywhere a person can end up: events, errors, run details, outbox, files."""
    with ctx.begin() as conn:
        ann = conn.execute(sa.select(deliveries.c.id).where(
            deliveries.c.run_id == run_id, deliveries.c.recipient == ANN)).scalar_one()
        record_click(conn, ann, "https://acme.example/prefs?u=ann%40example.com", now)
        record_open(conn, ann, now)
        record_unsubscribe(conn, "news", ANN, now, delivery_id=ann, run_id=run_id)
        conn.execute(sa.update(deliveries).where(deliveries.c.id == ann).values(
            last_error="550 5.1.1 <Ann@Example.com>: mailbox full"))
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(
            detail="retried ann@example.com twice",
            stats={"sent": 2, "invalid_examples": ["line 3: 'ANN@example.com ' has a space"]}))
        outbox_store.enqueue(conn, topic="report", channel="email", target=ANN,
                             payload={"subject": "Your report", "text": "Hi ann@example.com"},
                             now=now)
        outbox_store.enqueue(conn, topic="alert", channel="webhook",
                             target="https://hooks.example/x",
                             payload={"text": "bounces: ann@example.com, bob@example.com"},
                             now=now)
        conn.execute(sa.insert(posts_done).values(campaign="posts", post_id="p1", done_at=now,
                                                  by=ANN))
    previews = tmp_path / "var" / "previews" / "news"
    previews.mkdir(parents=True)
    (previews / "ann_at_example.com.html").write_text("<p>Hello Ann</p>")


async def test_forget_removes_the_address_everywhere_and_a_new_run_skips_it(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=[ANN, "bob@example.com"])
    ctx = context_for(settings_for(tmp_path, db_url))
    first, _smtp = await _send(ctx, t0)
    assert first.status == "done" and first.stats["sent"] == 2
    with ctx.begin() as conn:
        run_id = conn.execute(sa.select(sa.func.max(runs.c.id))).scalar_one()
    _leave_traces(ctx, run_id, t0, tmp_path)

    exported = _cli(tmp_path, db_url, "export-person", "Ann@Example.com")
    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.stdout)
    assert data["address"] == ANN and data["suppressed"]["reason"] == "unsubscribed"
    assert [d["campaign"] for d in data["deliveries"]] == ["news"]
    assert sorted(e["kind"] for e in data["events"]) == ["clicked", "opened", "unsubscribed"]
    assert [o["topic"] for o in data["outbox"]] == ["report"]
    assert {"runs.detail", "runs.stats", "outbox.payload", "posts_done.by"} <= set(
        data["also_mentioned_in"])

    forgotten = _cli(tmp_path, db_url, "forget", ANN, "--yes")
    assert forgotten.exit_code == 0, forgotten.output
    assert ANN not in forgotten.output
    assert _mentions(ctx.db) == []
    assert not (tmp_path / "var" / "previews" / "news" / "ann_at_example.com.html").exists()
    with ctx.begin() as conn:
        kept = conn.execute(sa.select(suppressions.c.email, suppressions.c.reason)).all()
        requests = conn.execute(sa.select(tracking_events.c.kind, tracking_events.c.recipient,
                                          tracking_events.c.detail).where(
            tracking_events.c.kind.like("person_%"))).all()
        pending_to_ann = conn.execute(sa.select(outbox.c.status).where(
            outbox.c.topic == "report")).scalar_one()
        bob = conn.execute(sa.select(deliveries.c.recipient).where(
            deliveries.c.recipient == "bob@example.com")).scalars().all()
    [(hashed, reason)] = kept
    assert hashed.startswith(HASH_PREFIX) and reason == "forgotten"
    assert [(k, r) for k, r, _d in requests] == [("person_exported", None),
                                                 ("person_forgotten", None)]
    assert all("ann" not in (d or "") for _k, _r, d in requests)
    assert pending_to_ann == "failed"  # never sent to a forgotten address
    assert bob == ["bob@example.com"]  # only Ann is gone

    second, smtp = await _send(ctx, t0 + timedelta(days=7))
    assert second.status == "done"
    assert (second.stats["sent"], second.stats["suppressed"]) == (1, 1)
    assert [m.rcpt_tos for m in smtp.received] == [["bob@example.com"]]
    assert _mentions(ctx.db) == []  # the audience brought Ann back: her row is skipped, nameless
    after = json.loads(_cli(tmp_path, db_url, "export-person", ANN).stdout)
    assert after["forgotten"] is True and after["suppressed"] is None
    assert after["deliveries"] == [] and after["events"] == []
    ctx.db.dispose()


async def test_a_forgotten_hash_under_a_missing_key_refuses_to_send(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=[ANN, "bob@example.com"])
    assert _cli(tmp_path, db_url, "forget", ANN, "--yes").exit_code == 0
    rotated = context_for(settings_for(tmp_path, db_url, secret_key=ROTATED))
    refused, smtp = await _send(rotated, t0)
    assert refused.status == "failed" and smtp.received == []
    assert "forgotten address(es) are hashed with key id" in (refused.detail or "")
    assert "MARTECH_PREVIOUS_SECRET_KEYS" in (refused.detail or "")
    kept = context_for(settings_for(tmp_path, db_url, secret_key=ROTATED,
                                    previous_secret_keys=SECRET))
    sent, smtp = await _send(kept, t0 + timedelta(days=7))
    assert sent.status == "done" and [m.rcpt_tos for m in smtp.received] == [["bob@example.com"]]
    for ctx in (rotated, kept):
        ctx.db.dispose()


def test_forget_wants_an_address(tmp_path: Path, db_url: str) -> None:
    write_config(tmp_path, rows=[ANN])
    result = _cli(tmp_path, db_url, "forget", "not-an-address", "--yes")
    assert result.exit_code == 1 and "is not an e-mail address" in result.output
    assert "Traceback" not in result.output
