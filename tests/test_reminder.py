"""Post reminders end to end: engine claims with a FakeClock, real webhook receiver and
aiosmtpd, real link checks against a local HTTP server, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine as SaEngine

from jobs.reminders.cli import calendar_table, mark_posted
from jobs.reminders.kind import PostReminderKind, register
from martech.compose import load_config
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.engine import Engine
from scheduler.kinds import Registry
from scheduler.outbox import deliver_due
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.tables import outbox, runs, tracking_events
from tests.conftest import REPO
from tests.smtp_server import SmtpServer
from tests.webhook_server import serve

CAMPAIGN = "bf-posts"


def write_config(tmp: Path, body: str, *, checks: bool = True) -> Path:
    cfg = tmp / "config"
    (cfg / "campaigns").mkdir(parents=True, exist_ok=True)
    (cfg / "campaigns" / f"{CAMPAIGN}.yaml").write_text(body, encoding="utf-8")
    if checks:
        (cfg / "checks.yaml").write_text(
            "checks:\n  landing-page: {http: {url: 'http://127.0.0.1:9/'}}\n", encoding="utf-8")
    return cfg


@dataclass
class Harness:
    ctx: ServiceContext
    engine: Engine
    clock: FakeClock
    registry: Registry

    async def tick(self, at: datetime | None = None) -> list[int]:
        """Move the clock, claim what is due, execute it, flush the outbox."""
        if at is not None:
            self.clock.set(at)
        claimed = self.engine.claim_due(list(self.engine.specs.values()))
        for run in claimed:
            await self.engine.execute(run.run_id)
        await deliver_due(self.ctx, 100)
        return [c.run_id for c in claimed]

    def runs(self) -> list[sa.Row[Any]]:
        with self.ctx.begin() as conn:
            return list(conn.execute(sa.select(runs).order_by(runs.c.scheduled_at, runs.c.id)))

    def outbox_rows(self) -> list[sa.Row[Any]]:
        with self.ctx.begin() as conn:
            return list(conn.execute(sa.select(outbox).order_by(outbox.c.id)))


def harness(db: SaEngine, tmp: Path, cfg: Path, start: datetime, **settings: Any) -> Harness:
    clock = FakeClock(start)
    s = Settings(database_url=str(db.url), config_dir=cfg, var_dir=tmp / "var",
                 templates_dir=REPO / "templates" / "email", node_name="node-a",
                 http_timeout_s=2.0, **settings)
    config = load_config(cfg)
    registry = Registry()
    register(registry)
    assert registry.validate(config, s) == []
    ctx = ServiceContext(s, config, db, clock)
    engine = Engine(ctx, registry)
    engine.specs = registry.specs(config)
    return Harness(ctx, engine, clock, registry)


def campaign_yaml(notify: str, link: str | None, leads: str = "[1d, 1h, 0m]",
                  extra: str = "") -> str:
    link_line = f", link: '{link}'" if link else ""
    return (
        f"name: {CAMPAIGN}\nkind: post_reminder\ntimezone: America/New_York\n"
        f"posts:\n  - {{at: '2026-11-27 10:00', network: [linkedin, x], "
        f"copy: {{linkedin: 'Black Friday is live: {{{{ link }}}}', "
        f"x: '48h only {{{{ link }}}}'}}{link_line}}}\n"
        f"remind_before: {leads}\nnotify: {notify}\nrequires: [landing-page]\n{extra}"
    )


POST_AT = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)  # 10:00 in New York (EST)


async def test_reminders_fire_at_each_lead_to_webhook_and_smtp(db: SaEngine, tmp_path: Path
                                                               ) -> None:
    with SmtpServer() as smtp:
        async with serve() as hook:
            notify = (f"[{{email: social@acme.example}}, {{webhook: '{hook.hook_url}'}}, "
                      f"{{webhook: '{hook.hook_url}', format: json}}]")
            cfg = write_config(tmp_path, campaign_yaml(notify, f"{hook.base_url}/ok"))
            h = harness(db, tmp_path, cfg, POST_AT - timedelta(days=2), transport="smtp",
                        smtp_host="127.0.0.1", smtp_port=smtp.port)
            assert await h.tick() == []  # first wake-up: cursors only
            assert await h.tick(POST_AT - timedelta(days=1, minutes=1)) == []
            assert len(await h.tick(POST_AT - timedelta(days=1))) == 1
            assert len(smtp.received) == 1 and len(hook.delivered) == 2
            assert await h.tick(POST_AT - timedelta(hours=1, minutes=1)) == []
            assert len(await h.tick(POST_AT - timedelta(hours=1))) == 1
            assert len(await h.tick(POST_AT)) == 1
            assert await h.tick(POST_AT + timedelta(hours=3)) == []
            await h.ctx.extras["notify_transport"].close()
    assert [r.status for r in h.runs()] == ["done", "done", "done"]
    assert len(smtp.received) == 3 and len(hook.delivered) == 6
    subjects = [m.parsed()["Subject"] for m in smtp.received]
    assert "in 1 day" in subjects[0] and "in 1 hour" in subjects[1] and "now" in subjects[2]
    assert all("LinkedIn + X post" in s for s in subjects)
    text = smtp.received[0].parsed().get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Black Friday is live: " in text and "utm_source=linkedin" in text
    assert "48h only " in text and "utm_source=x" in text and "utm_campaign=bf-posts" in text
    assert "Fri 2026-11-27 10:00 EST" in text
    slack = [b for b in hook.delivered if set(b) == {"text"}]
    generic = [b for b in hook.delivered if b.get("event") == "post_reminder"]
    assert len(slack) == 3 and len(generic) == 3
    assert generic[0]["lead"] == "1d" and generic[2]["lead"] == "0m"
    assert generic[0]["networks"][1]["link"].endswith("utm_source=x&utm_medium=social"
                                                      "&utm_campaign=bf-posts")
    assert generic[0]["link_broken"] is False and generic[0]["link_status"] == "HTTP 200"
    assert "_format" not in generic[0]
    assert "secret-token" not in json.dumps([r.last_error for r in h.outbox_rows()])


async def test_series_across_dst_change_fires_at_the_right_instants(db: SaEngine,
                                                                    tmp_path: Path) -> None:
    async with serve() as hook:
        body = (f"name: {CAMPAIGN}\nkind: post_reminder\ntimezone: Europe/Berlin\n"
                "series:\n  - {id: daily, cron: '0 10 * * *', network: linkedin, "
                "copy: 'Daily tip', start: '2026-10-24 00:00', end: '2026-10-27 23:00'}\n"
                f"remind_before: [1d, 1h]\nnotify: [{{webhook: '{hook.hook_url}', "
                "format: json}]\n")
        cfg = write_config(tmp_path, body, checks=False)
        start = datetime(2026, 10, 22, 0, 0, tzinfo=UTC)
        h = harness(db, tmp_path, cfg, start)
        await h.tick()
        at = start
        while at < datetime(2026, 10, 28, tzinfo=UTC):  # hour by hour across the change
            at += timedelta(hours=1)
            await h.tick(at)
    fired = [(r.schedule_key.rsplit("/", 1)[1], r.scheduled_at, r.local_slot) for r in h.runs()]
    # Europe/Berlin leaves summer time on 2026-10-25 03:00: 10:00 is 08:00Z before, 09:00Z after.
    expected_1d = [datetime(2026, 10, 23, 8, tzinfo=UTC), datetime(2026, 10, 24, 9, tzinfo=UTC),
                   datetime(2026, 10, 25, 9, tzinfo=UTC), datetime(2026, 10, 26, 9, tzinfo=UTC)]
    expected_1h = [datetime(2026, 10, 24, 7, tzinfo=UTC), datetime(2026, 10, 25, 8, tzinfo=UTC),
                   datetime(2026, 10, 26, 8, tzinfo=UTC), datetime(2026, 10, 27, 8, tzinfo=UTC)]
    assert sorted(at for lead, at, _ in fired if lead == "1d") == expected_1d
    assert sorted(at for lead, at, _ in fired if lead == "1h") == expected_1h
    assert all(r.status == "done" for r in h.runs())
    local = sorted({b["post_at_local"] for b in hook.delivered})
    assert local == ["Mon 2026-10-26 10:00 CET", "Sat 2026-10-24 10:00 CEST",
                     "Sun 2026-10-25 10:00 CET", "Tue 2026-10-27 10:00 CET"]
    assert len(hook.delivered) == 8
    ids = {b["post_id"] for b in hook.delivered}
    assert "daily@2026-10-25T10:00" in ids


async def test_reminder_held_by_down_check_then_released_saying_why(db: SaEngine,
                                                                    tmp_path: Path) -> None:
    async with serve() as hook:
        notify = f"[{{webhook: '{hook.hook_url}', format: json}}]"
        cfg = write_config(tmp_path, campaign_yaml(notify, f"{hook.base_url}/ok",
                                                   leads="[1h]"))
        h = harness(db, tmp_path, cfg, POST_AT - timedelta(hours=3))
        await h.tick()
        h.clock.set(POST_AT - timedelta(hours=1, minutes=5))
        with h.ctx.begin() as conn:  # the guard saw the landing page go down
            pauses.add(conn, CAMPAIGN, "guard:landing-page", h.clock.now(),
                       detail="HTTP 503 from http://landing.example/bf")
        assert len(await h.tick(POST_AT - timedelta(hours=1))) == 1
        (run,) = h.runs()
        assert run.status == "held" and "guard:landing-page" in run.detail
        assert hook.delivered == [] and h.outbox_rows() == []
        assert h.engine.holds.release() == []  # still paused: stays held

        h.clock.set(POST_AT - timedelta(minutes=35))
        with h.ctx.begin() as conn:  # … and recover
            pauses.remove(conn, CAMPAIGN, "guard:landing-page", h.clock.now())
        ready = h.engine.holds.release()
        assert ready == [run.id]
        await h.engine.execute(run.id)
        await deliver_due(h.ctx, 10)
    assert len(hook.delivered) == 1
    body = hook.delivered[0]
    assert body["held"] is True
    note = body["held_note"]
    assert "held from 09:00 to 09:25" in note and "landing-page" in note and "down" in note
    assert "HTTP 503" in note
    assert "held" in body["text"]
    (run,) = h.runs()
    assert run.status == "done" and "held" in run.detail


async def test_broken_link_is_flagged_in_reminder_and_events(db: SaEngine,
                                                             tmp_path: Path) -> None:
    async with serve() as hook:
        notify = f"[{{webhook: '{hook.hook_url}'}}, {{email: social@acme.example}}]"
        cfg = write_config(tmp_path, campaign_yaml(notify, f"{hook.base_url}/missing",
                                                   leads="[1h]"))
        h = harness(db, tmp_path, cfg, POST_AT - timedelta(hours=2))
        await h.tick()
        await h.tick(POST_AT - timedelta(hours=1))
    assert hook.page_hits == ["missing"]  # checked once, just before sending
    (slack,) = hook.delivered
    assert "link is broken (HTTP 404)" in slack["text"] and "LINK BROKEN" in slack["text"]
    eml = list((tmp_path / "var" / "outbox" / CAMPAIGN).rglob("*.eml"))
    assert len(eml) == 1
    raw = eml[0].read_text()
    assert "[LINK BROKEN]" in raw and "THE LINK IS BROKEN (HTTP 404)" in raw
    with h.ctx.begin() as conn:
        events = conn.execute(sa.select(tracking_events).where(
            tracking_events.c.kind == "link_broken")).all()
    assert len(events) == 1 and events[0].url.endswith("/missing")
    assert "HTTP 404" in events[0].detail
    (run,) = h.runs()
    assert run.stats["link_broken"] is True and "LINK BROKEN" in run.detail


async def test_restart_mid_series_sends_nothing_twice(db: SaEngine, tmp_path: Path) -> None:
    async with serve() as hook:
        notify = f"[{{webhook: '{hook.hook_url}'}}, {{email: social@acme.example}}]"
        cfg = write_config(tmp_path, campaign_yaml(notify, None))
        h = harness(db, tmp_path, cfg, POST_AT - timedelta(days=2))
        await h.tick()
        await h.tick(POST_AT - timedelta(days=1))  # 1d reminder: queued and sent
        assert len(hook.delivered) == 1

        # The 1h reminder is claimed and its rows queued, then the node dies before it can
        # record the run as done or send anything.
        h.clock.set(POST_AT - timedelta(hours=1))
        (claimed,) = h.engine.claim_due(list(h.engine.specs.values()))
        run = h.engine.executor.load_run(claimed.run_id)
        assert run is not None
        campaign = h.ctx.config.campaigns[CAMPAIGN]
        with h.ctx.begin() as conn:
            run_store.set_status(conn, run.id, "running", h.clock.now())
        await PostReminderKind().execute(h.ctx, campaign, run)
        assert len(h.outbox_rows()) == 4 and hook.delivered[1:] == []

        # Restart: a new context and engine on the same database, a few minutes later.
        h2 = harness(db, tmp_path, cfg, POST_AT - timedelta(minutes=55))
        interrupted = h2.engine.recovery.interrupted_runs()
        assert interrupted == [run.id]
        for run_id in interrupted:
            await h2.engine.execute(run_id)
        assert await h2.tick() == []  # catch-up claims nothing already claimed
        assert len(await h2.tick(POST_AT)) == 1  # the 0m reminder, once
        await h2.tick(POST_AT + timedelta(hours=1))
    rows = h2.outbox_rows()
    assert len(rows) == 6 and all(r.status == "sent" for r in rows)
    assert len(hook.delivered) == 3
    assert [b["text"].splitlines()[0] for b in hook.delivered] == [
        f"*LinkedIn + X post in 1 day: {CAMPAIGN} (20261127-1000-linkedin-x)*",
        f"*LinkedIn + X post in 1 hour: {CAMPAIGN} (20261127-1000-linkedin-x)*",
        f"*LinkedIn + X post now: {CAMPAIGN} (20261127-1000-linkedin-x)*",
    ]
    eml = list((tmp_path / "var" / "outbox" / CAMPAIGN).rglob("*.eml"))
    assert len(eml) == 3


async def test_posted_post_gets_no_more_reminders_and_calendar_shows_it(
        db: SaEngine, tmp_path: Path) -> None:
    from rich.console import Console

    async with serve() as hook:
        notify = f"[{{webhook: '{hook.hook_url}'}}]"
        cfg = write_config(tmp_path, campaign_yaml(notify, None))
        h = harness(db, tmp_path, cfg, POST_AT - timedelta(days=2))
        await h.tick()
        await h.tick(POST_AT - timedelta(days=1))
        h.clock.set(POST_AT - timedelta(hours=3))
        occurrence, added = mark_posted(db, h.ctx.config, CAMPAIGN, clock=h.clock)
        assert (occurrence, added) == ("20261127-1000-linkedin-x", True)
        assert mark_posted(db, h.ctx.config, CAMPAIGN, at="2026-11-27 10:00",
                           clock=h.clock) == (occurrence, False)
        await h.tick(POST_AT - timedelta(hours=1))
        await h.tick(POST_AT)
    assert len(hook.delivered) == 1
    statuses = [r.status for r in h.runs()]
    assert statuses == ["done", "skipped", "skipped"]
    assert "already marked done" in h.runs()[1].detail
    console = Console(record=True, width=200)
    h.clock.set(POST_AT - timedelta(days=3))
    console.print(calendar_table(db, h.ctx.config, 14, h.clock.now()))
    out = console.export_text()
    assert occurrence in out and "done" in out and "1d 11-26 10:00 [done]" in out
    assert "1h 11-27 09:00 [skipped]" in out


async def test_broken_calendar_on_disk_does_not_drop_reminders_of_the_loaded_config(
        db: SaEngine, tmp_path: Path) -> None:
    """A reload with a broken calendar is rejected; the running config keeps its posts."""
    import os

    async with serve() as hook:
        cfg = write_config(tmp_path, (
            f"name: {CAMPAIGN}\nkind: post_reminder\ntimezone: America/New_York\n"
            "calendar: content/cal.csv\nremind_before: [1h]\n"
            f"notify: [{{webhook: '{hook.hook_url}', format: json}}]\n"), checks=False)
        cal = cfg / "content" / "cal.csv"
        cal.parent.mkdir()
        cal.write_text("date,time,network,copy,id\n2026-11-27,10:00,x,Go!,bf\n",
                       encoding="utf-8")
        h = harness(db, tmp_path, cfg, POST_AT - timedelta(hours=3))
        await h.tick()
        # Someone saves a broken calendar (header lost); its mtime surely changes.
        cal.write_text("oops\n", encoding="utf-8")
        stamp = cal.stat().st_mtime + 60
        os.utime(cal, (stamp, stamp))
        assert len(await h.tick(POST_AT - timedelta(hours=1))) == 1
    (run,) = h.runs()
    assert run.status == "done", run.detail
    assert [b["post_id"] for b in hook.delivered] == ["bf"]


async def test_run_job_on_a_reminder_campaign_fails_with_a_hint(
        db: SaEngine, tmp_path: Path, caplog: Any) -> None:
    cfg = write_config(tmp_path, campaign_yaml("[{email: social@acme.example}]", None),
                       checks=False)
    cfg.joinpath("campaigns", f"{CAMPAIGN}.yaml").write_text(
        campaign_yaml("[{email: social@acme.example}]", None).replace(
            "requires: [landing-page]\n", ""), encoding="utf-8")
    h = harness(db, tmp_path, cfg, POST_AT - timedelta(days=2))
    run_id = await h.engine.run_now(CAMPAIGN)
    assert run_id is not None
    (run,) = h.runs()
    assert run.schedule_key == f"{CAMPAIGN}#manual" and run.status == "failed"
    assert "use `martech calendar`" in run.detail
    assert h.outbox_rows() == []
    assert "Traceback" not in caplog.text
