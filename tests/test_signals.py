"""Pause changes and unsubscribes wake every node at once (issue 9, point 4; ARCHITECTURE.md,
invariant 4): NOTIFY in the changing transaction, one LISTEN connection per node, polling as
the fallback. Wake-ups are measured by which way a wait ended — by the signal, or by its poll
timeout (a minute here) — never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.engine import Engine, core
from scheduler.schedules import Schedule
from scheduler.signals import Listener, Mark, Signals
from scheduler.store import pauses, suppressions
from scheduler.store.db import make_engine
from scheduler.store.signals import PAUSES, SUPPRESSIONS
from tests.engine_support import FakeCampaign, RecorderKind, make_ctx, make_registry, run_rows

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
POLL_S = 60.0  # the fallback poll of every wait below: a wake-up well before it is a signal
WAKE_S = 10.0  # how long a test lets a signal take before calling it lost (it takes ms)

async def woken(sig: Signals, mark: Mark, stop: asyncio.Event | None = None
                ) -> bool:
    return await asyncio.wait_for(sig.wait(mark, POLL_S, stop=stop), WAKE_S)


# -- the in-process hub ------------------------------------------------------------------------

async def test_a_wait_ends_on_its_topic_and_never_misses_one_fired_before_it() -> None:
    sig = Signals()
    mark = sig.mark(PAUSES)
    sig.fire(SUPPRESSIONS)
    assert not sig.changed(mark)  # another topic
    sig.fire(PAUSES)  # fired between the mark (taken before reading state) and the wait
    assert sig.changed(mark)
    assert await woken(sig, mark)
    later = sig.mark(PAUSES, SUPPRESSIONS)
    waiting = asyncio.create_task(sig.wait(later, POLL_S))
    await asyncio.sleep(0)  # let it start waiting
    sig.fire(SUPPRESSIONS)
    assert await asyncio.wait_for(waiting, WAKE_S) is True


async def test_a_wait_ends_without_a_signal_on_timeout_or_stop() -> None:
    sig = Signals()
    assert await sig.wait(sig.mark(PAUSES), 0.01) is False
    stop = asyncio.Event()
    waiting = asyncio.create_task(sig.wait(sig.mark(PAUSES), POLL_S, stop=stop))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(waiting, WAKE_S) is False


async def test_fire_from_another_thread_wakes_the_loop() -> None:
    sig = Signals()
    mark = sig.mark(SUPPRESSIONS)
    waiting = asyncio.create_task(sig.wait(mark, POLL_S))
    await asyncio.sleep(0)
    await asyncio.to_thread(sig.fire, SUPPRESSIONS)  # database work runs in worker threads
    assert await asyncio.wait_for(waiting, WAKE_S) is True


# -- this process's own commits (SQLite and PostgreSQL) ----------------------------------------

@pytest.fixture
def contexts() -> Iterator[list[ServiceContext]]:
    made: list[ServiceContext] = []
    yield made
    for ctx in made:
        ctx.db.dispose()


def context(contexts: list[ServiceContext], db_url: str, tmp_path: Path, name: str,
            campaigns: list[FakeCampaign] | None = None) -> ServiceContext:
    ctx = make_ctx(db_url, tmp_path, FakeClock(T0), campaigns or [], node=name)
    contexts.append(ctx)
    return ctx


async def test_a_committed_change_wakes_this_process_a_rolled_back_one_does_not(
        db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    ctx = context(contexts, db_url, tmp_path, "node-a")
    mark = ctx.signals.mark(PAUSES)
    with pytest.raises(RuntimeError), ctx.begin() as conn:
        pauses.add(conn, "c", pauses.MANUAL, T0)
        raise RuntimeError("rolled back")
    assert not ctx.signals.changed(mark)
    with ctx.begin() as conn:
        assert pauses.add(conn, "c", pauses.MANUAL, T0)  # the rolled-back add left nothing
    assert ctx.signals.changed(mark)
    mark = ctx.signals.mark(SUPPRESSIONS)
    with ctx.begin() as conn:
        suppressions.add(conn, "Ann@Example.com", "unsubscribed", T0)
    assert ctx.signals.changed(mark)
    mark = ctx.signals.mark(SUPPRESSIONS)
    with ctx.begin() as conn:  # already suppressed: nothing changed, nobody woken
        suppressions.add(conn, "ann@example.com", "unsubscribed", T0)
    assert not ctx.signals.changed(mark)


# -- across nodes: LISTEN/NOTIFY ---------------------------------------------------------------

@pytest.fixture
async def listening(db_url: str) -> AsyncIterator[tuple[Signals, Listener]]:
    """Node B's listener on its own connection, like the service's "signals" component."""
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite waiters poll")
    sig = Signals()
    listener = Listener(sa.engine.make_url(db_url), sig)
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.connected.wait(), WAKE_S)
    yield sig, listener
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_pause_cleared_on_one_node_wakes_another_at_once(
        db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        listening: tuple[Signals, Listener]) -> None:
    sig, _listener = listening
    a = context(contexts, db_url, tmp_path, "node-a")
    before = sig.mark(PAUSES)
    with a.begin() as conn:
        pauses.add(conn, "c", pauses.MANUAL, T0)
    assert await woken(sig, before)  # the pause itself reaches B too
    mark = sig.mark(PAUSES)
    waiting = asyncio.create_task(sig.wait(mark, POLL_S))
    await asyncio.sleep(0)
    with a.begin() as conn:  # node A's connection; B shares nothing with it but the database
        pauses.remove(conn, "c", pauses.MANUAL, T0)
    assert await asyncio.wait_for(waiting, WAKE_S) is True  # woken, not timed out


async def test_an_unsubscribe_wakes_every_node_and_an_aborted_one_does_not(
        db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        listening: tuple[Signals, Listener]) -> None:
    sig, _listener = listening
    a = context(contexts, db_url, tmp_path, "node-a")
    pause_mark = sig.mark(PAUSES)
    suppressed = sig.mark(SUPPRESSIONS)
    with pytest.raises(RuntimeError), a.begin() as conn:
        pauses.add(conn, "c", pauses.MANUAL, T0)
        raise RuntimeError("rolled back: PostgreSQL never delivers its NOTIFY")
    with a.begin() as conn:
        suppressions.add(conn, "bob@example.com", "unsubscribed", T0)
    assert await woken(sig, suppressed)
    # Notifications arrive in commit order: had the aborted pause been announced, it would
    # have arrived before the unsubscribe.
    assert not sig.changed(pause_mark)


async def test_the_listener_reconnects_and_wakes_everyone_to_re_read(
        db_url: str, listening: tuple[Signals, Listener]) -> None:
    sig, listener = listening
    mark = sig.mark(PAUSES, SUPPRESSIONS)
    admin = make_engine(db_url)
    try:
        with admin.begin() as conn:  # the server drops B's LISTEN connection (only that one)
            killed = conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                  {"pid": listener.backend_pid}).scalar()
    finally:
        admin.dispose()
    assert killed
    # Back (after its backoff), it fires every topic once: changes made while nobody
    # listened are re-read.
    assert await asyncio.wait_for(sig.wait(mark, POLL_S), 30)
    assert listener.connected.is_set() and sig.listening


# -- the engine's held runs --------------------------------------------------------------------

async def test_held_runs_are_released_as_soon_as_the_pause_clears(
        db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pause is cleared through another node's connection (PostgreSQL, LISTEN) or this
    process's own (SQLite, in-process); either way well before the held loop's poll."""
    monkeypatch.setattr(core, "HELD_POLL_S", POLL_S)
    campaigns = [FakeCampaign("c", Schedule(cron="0 9 * * *"))]
    b_ctx = context(contexts, db_url, tmp_path, "node-b", campaigns)
    kind = RecorderKind()
    b = Engine(b_ctx, make_registry(kind))
    b.specs = b.registry.specs(b_ctx.config)
    pg = db_url.startswith("postgresql")
    other = context(contexts, db_url, tmp_path, "node-a", campaigns) if pg else b_ctx
    with other.begin() as conn:
        pauses.add(conn, "c", pauses.MANUAL, T0)
    [claimed] = b.claim_due(b.specs.values())
    assert await b.execute(claimed.run_id) is None  # due while paused: held
    assert [r.status for r in run_rows(b_ctx.db)] == ["held"]
    stop = asyncio.Event()
    listener = Listener(b_ctx.db.url, b_ctx.signals)
    task = asyncio.create_task(listener.run(stop)) if pg else None
    if task is not None:
        await asyncio.wait_for(listener.connected.wait(), WAKE_S)
    await b.start()
    try:
        with other.begin() as conn:
            pauses.remove(conn, "c", pauses.MANUAL, T0 + timedelta(minutes=5))
        await asyncio.wait_for(kind.event.wait(), WAKE_S)  # not the 60 s poll
    finally:
        await b.stop(timeout_s=5)
        stop.set()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert kind.executed == [("c", claimed.run_id)]
    assert [r.status for r in run_rows(b_ctx.db)] == ["done"]
