"""Each reader's own 9 a.m.: one run of ``timezone: recipient``, each recipient receiving at
09:00 in their zone — Auckland, Berlin, New York — with the injected clock moving through New
York's DST change on the very day, exactly once; a pause in between holds the run and the
release continues it; ``status`` shows the progress per zone."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from jobs.newsletter.config import NewsletterSchedule
from martech.compose import build_registry
from scheduler.cli import make_cli
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.engine import Engine
from scheduler.kinds import RunResult
from scheduler.status import zone_progress
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.tables import deliveries
from tests.newsletter_fixtures import context_for, settings_for, write_config
from tests.smtp_server import SmtpServer

AUDIENCE = ("email,first_name,timezone\n"
            "kiri@example.com,Kiri,Pacific/Auckland\n"
            "anna@example.com,Anna,Europe/Berlin\n"
            "nate@example.com,Nate,America/New_York\n"
            "nobody@example.com,Nob,\n"  # no zone: the default (Berlin)
            "mars@example.com,Mars,Mars/Olympus_Mons\n")  # not a zone: the default too
SCHEDULE = {"cron": "0 9 * * SUN", "timezone": "recipient", "default_timezone": "Europe/Berlin"}
# Sunday 2026-11-01: New York leaves summer time at 06:00 UTC that morning.
AUCKLAND_9 = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)  # NZDT, UTC+13
BERLIN_9 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)  # CET, UTC+1 (since 25 October)
NEW_YORK_9 = datetime(2026, 11, 1, 14, 0, tzinfo=UTC)  # EST, UTC-5 (13:00 UTC would be EDT)
FIRES = datetime(2026, 10, 31, 19, 0, tzinfo=UTC)  # 09:00 in UTC+14, the first on Earth


async def settle(clock: FakeClock, task: asyncio.Task[RunResult | None]) -> None:
    """Let the run work until it sleeps on the clock (or ends): a sync point, not a wait."""
    for _ in range(2000):
        if task.done() or clock.sleepers:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the run neither slept nor finished")


def sent_at(received: list) -> dict[str, datetime]:  # type: ignore[type-arg]
    return {r.rcpt_tos[0]: parsedate_to_datetime(r.parsed()["Date"]) for r in received}


def test_the_schedule_fires_in_the_earliest_zone_and_says_so() -> None:
    schedule = NewsletterSchedule.model_validate(SCHEDULE)
    occ = schedule.to_schedule().next_after(FIRES - timedelta(days=1))
    assert occ is not None and occ.at == FIRES and occ.slot == "2026-11-01T09:00:00"
    assert "each recipient's zone, default Europe/Berlin" in schedule.to_schedule().describe()
    with pytest.raises(ValueError, match="needs default_timezone"):
        NewsletterSchedule.model_validate({"cron": "0 9 * * SUN", "timezone": "recipient"})
    with pytest.raises(ValueError, match="not every"):
        NewsletterSchedule.model_validate({"every": "1h", "timezone": "recipient",
                                           "default_timezone": "UTC"})


async def test_each_recipient_receives_at_nine_in_their_zone_once_across_dst(
        tmp_path: Path, db_url: str) -> None:
    write_config(tmp_path, csv_text=AUDIENCE, extra={"schedule": SCHEDULE})
    clock = FakeClock(FIRES - timedelta(minutes=1))
    with SmtpServer() as smtp:
        ctx: ServiceContext = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        ctx.clock = clock
        engine = Engine(ctx, build_registry())
        engine.specs = engine.registry.specs(ctx.config)
        assert engine.claim_due(engine.specs.values()) == []
        clock.set(FIRES)
        (claimed,) = engine.claim_due(engine.specs.values())
        run_id = claimed.run_id
        task = asyncio.create_task(engine.execute(run_id))
        await settle(clock, task)
        with ctx.begin() as conn:
            due = dict(conn.execute(sa.select(deliveries.c.recipient, deliveries.c.due_at)
                                    .where(deliveries.c.run_id == run_id)).all())
            run = run_store.get(conn, run_id)
        assert {r: d.astimezone(UTC) for r, d in due.items()} == {
            "kiri@example.com": AUCKLAND_9, "anna@example.com": BERLIN_9,
            "nate@example.com": NEW_YORK_9, "nobody@example.com": BERLIN_9,
            "mars@example.com": BERLIN_9}
        assert run is not None and run.status == "running" and smtp.received == []
        assert run.stats is not None and run.stats["zone_defaulted"] == 2
        assert run.stats["zone_invalid_examples"] == ["Mars/Olympus_Mons"]

        clock.set(AUCKLAND_9 - timedelta(seconds=1))
        await settle(clock, task)
        assert smtp.received == []  # not a second early
        clock.set(AUCKLAND_9)
        await settle(clock, task)
        assert sent_at(smtp.received) == {"kiri@example.com": AUCKLAND_9}
        local = AUCKLAND_9.astimezone(ZoneInfo("Pacific/Auckland"))
        assert (local.hour, local.minute) == (9, 0)

        with ctx.begin() as conn:
            (progress,) = zone_progress(conn)
        assert [(d["zones"], d["counts"]) for d in progress["due"]] == [
            (["Pacific/Auckland"], {"sent": 1}), (["Europe/Berlin"], {"pending": 3}),
            (["America/New_York"], {"pending": 1})]
        env = {"MARTECH_CONFIG_DIR": str(tmp_path / "config"),
               "MARTECH_DATABASE_URL": db_url,
               "MARTECH_TEMPLATES_DIR": str(tmp_path / "templates")}
        shown = await asyncio.to_thread(CliRunner().invoke, make_cli(build_registry()),
                                        ["status", "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        (zones_json,) = json.loads(shown.output)["sending_by_zone"]
        assert zones_json["due"][1]["zones"] == ["Europe/Berlin"]

        # A pause before Berlin's 09:00 holds the run; the release continues it.
        with ctx.begin() as conn:
            pauses.add(conn, "news", pauses.MANUAL, BERLIN_9 - timedelta(hours=1), detail="x")
        clock.set(BERLIN_9)
        held = await asyncio.wait_for(task, 10)
        assert held is not None and held.status == "held"
        assert len(smtp.received) == 1
        clock.set(BERLIN_9 + timedelta(minutes=20))
        with ctx.begin() as conn:
            pauses.remove(conn, "news", pauses.MANUAL, clock.now())
        assert await ctx.in_thread(engine.holds.release) == [run_id]
        task = asyncio.create_task(engine.execute(run_id))
        await settle(clock, task)
        berlin = {"anna@example.com", "nobody@example.com", "mars@example.com"}
        assert set(sent_at(smtp.received)) == berlin | {"kiri@example.com"}

        # Through New York's DST change: 13:00 UTC was 09:00 yesterday, not today.
        clock.set(datetime(2026, 11, 1, 6, 30, tzinfo=UTC))
        clock.set(NEW_YORK_9 - timedelta(hours=1))
        await settle(clock, task)
        assert "nate@example.com" not in sent_at(smtp.received)
        clock.set(NEW_YORK_9)
        result = await asyncio.wait_for(task, 10)
    assert result is not None and result.status == "done", result
    times = sent_at(smtp.received)
    assert times["nate@example.com"] == NEW_YORK_9
    assert (NEW_YORK_9.astimezone(ZoneInfo("America/New_York")).hour) == 9
    assert smtp.per_recipient() == {r: 1 for r in due}  # each exactly once
    with ctx.begin() as conn:
        final = run_store.get(conn, run_id)
    assert final is not None and final.status == "done"
    assert final.stats is not None and set(final.stats["zones"]) == {
        "Pacific/Auckland", "Europe/Berlin", "America/New_York"}
    ctx.db.dispose()


async def test_rows_already_past_their_grace_when_the_run_starts_late_are_missed(
        tmp_path: Path, db_url: str) -> None:
    """Down from before the run until 10:30 Berlin time: Auckland's and Berlin's 09:00 are
    past the 1h grace (skipped, never hours late by surprise); New York still gets its 09:00."""
    write_config(tmp_path, csv_text=AUDIENCE, extra={"schedule": SCHEDULE})
    clock = FakeClock(FIRES - timedelta(minutes=1))
    with SmtpServer() as smtp:
        ctx = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        ctx.clock = clock
        engine = Engine(ctx, build_registry())
        engine.specs = engine.registry.specs(ctx.config)
        engine.claim_due(engine.specs.values())  # the cursor is set before the downtime
        clock.set(BERLIN_9 + timedelta(hours=1, minutes=30))
        (claimed,) = engine.claim_due(engine.specs.values())
        task = asyncio.create_task(engine.execute(claimed.run_id))
        await settle(clock, task)
        clock.set(NEW_YORK_9)
        result = await asyncio.wait_for(task, 10)
    assert result is not None and result.status == "done"
    assert set(smtp.per_recipient()) == {"nate@example.com"}
    assert result.stats["late"] == 4
    with ctx.begin() as conn:
        skipped = conn.execute(sa.select(deliveries.c.recipient, deliveries.c.last_error).where(
            deliveries.c.status == "skipped")).all()
    assert len(skipped) == 4 and all("too late" in (e or "") for _r, e in skipped)
    ctx.db.dispose()
