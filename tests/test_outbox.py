"""The outbox sender against a real local webhook receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scheduler import outbox as sender
from scheduler.clock import FakeClock
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.settings import Settings
from scheduler.store import outbox as store
from scheduler.store.tables import outbox
from tests.webhook_server import Receiver, serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ctx(db: Engine, clock: FakeClock, tmp_path: Path, **settings: object) -> ServiceContext:
    s = Settings(database_url=str(db.url), var_dir=tmp_path / "var", config_dir=tmp_path,
                 node_name="test-node", **settings)  # type: ignore[arg-type]
    return ServiceContext(s, LoadedConfig(config_dir=tmp_path), db, clock)


def enqueue_hook(ctx: ServiceContext, url: str, text: str, key: str | None = None) -> int | None:
    with ctx.begin() as conn:
        return store.enqueue(conn, topic="reminder", channel="webhook", target=url,
                             payload={"text": text, "_format": "slack"}, now=ctx.clock.now(),
                             dedupe_key=key)


def row(ctx: ServiceContext, row_id: int) -> sa.Row[tuple[object, ...]]:
    with ctx.begin() as conn:
        return conn.execute(sa.select(outbox).where(outbox.c.id == row_id)).one()


async def test_webhook_retried_with_backoff_then_delivered_exactly_once(
        db: Engine, t0: datetime, tmp_path: Path) -> None:
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, tmp_path)
    async with serve(Receiver(fail_first=2)) as receiver:
        row_id = enqueue_hook(ctx, receiver.hook_url, "post now", key="k1")
        assert row_id is not None
        assert await sender.deliver_due(ctx, 10) == 1
        first = row(ctx, row_id)
        assert first.status == "pending" and first.attempts == 1
        assert first.next_attempt_at == t0 + timedelta(seconds=30)
        assert "HTTP 500" in first.last_error
        assert "secret-token" not in first.last_error  # the webhook URL is a credential

        assert await sender.deliver_due(ctx, 10) == 0  # not due before its backoff
        clock.advance(timedelta(seconds=30))
        assert await sender.deliver_due(ctx, 10) == 1
        assert row(ctx, row_id).next_attempt_at == clock.now() + timedelta(minutes=1)
        clock.advance(timedelta(minutes=1))
        assert await sender.deliver_due(ctx, 10) == 1
        done = row(ctx, row_id)
        assert done.status == "sent" and done.attempts == 3 and done.sent_at == clock.now()
        clock.advance(timedelta(hours=2))
        assert await sender.deliver_due(ctx, 10) == 0
    assert len(receiver.requests) == 3
    assert receiver.delivered == [{"text": "post now"}]  # private "_format" key not sent


async def test_enqueue_is_idempotent_by_dedupe_key(db: Engine, t0: datetime,
                                                   tmp_path: Path) -> None:
    ctx = make_ctx(db, FakeClock(t0), tmp_path)
    async with serve() as receiver:
        assert enqueue_hook(ctx, receiver.hook_url, "a", key="same") is not None
        assert enqueue_hook(ctx, receiver.hook_url, "a", key="same") is None
        assert await sender.deliver_due(ctx, 10) == 1
    assert len(receiver.delivered) == 1


async def test_permanent_client_error_marks_failed(db: Engine, t0: datetime,
                                                   tmp_path: Path) -> None:
    ctx = make_ctx(db, FakeClock(t0), tmp_path)
    async with serve(Receiver(fail_first=99, fail_status=404)) as receiver:
        row_id = enqueue_hook(ctx, receiver.hook_url, "x")
        assert row_id is not None
        await sender.deliver_due(ctx, 10)
    failed = row(ctx, row_id)
    assert failed.status == "failed" and "HTTP 404" in failed.last_error


async def test_timeout_is_retried_not_lost(db: Engine, t0: datetime, tmp_path: Path) -> None:
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, tmp_path, http_timeout_s=0.2)
    async with serve(Receiver(hang_s=2.0)) as receiver:
        row_id = enqueue_hook(ctx, receiver.hook_url, "slow")
        assert row_id is not None
        await sender.deliver_due(ctx, 10)
        slow = row(ctx, row_id)
        assert slow.status == "pending" and "timeout" in slow.last_error
        receiver.hang_s = 0.0
        clock.advance(timedelta(seconds=30))
        await sender.deliver_due(ctx, 10)
    assert row(ctx, row_id).status == "sent"


async def test_crash_after_claim_is_retried_after_the_lease(db: Engine, t0: datetime,
                                                            tmp_path: Path) -> None:
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, tmp_path)
    async with serve() as receiver:
        row_id = enqueue_hook(ctx, receiver.hook_url, "again")
        assert row_id is not None
        # A node claims the row and dies before sending: nobody else takes it meanwhile …
        assert [r.id for r in sender.claim_due(ctx, 10)] == [row_id]
        assert await sender.deliver_due(ctx, 10) == 0
        # … and once the lease runs out it is sent, once.
        clock.advance(sender.LEASE + timedelta(seconds=1))
        assert await sender.deliver_due(ctx, 10) == 1
        assert await sender.deliver_due(ctx, 10) == 0
    assert receiver.delivered == [{"text": "again"}]
    assert row(ctx, row_id).attempts == 2


async def test_unreachable_webhook_keeps_row_pending(db: Engine, t0: datetime,
                                                     tmp_path: Path) -> None:
    ctx = make_ctx(db, FakeClock(t0), tmp_path, http_timeout_s=1.0)
    async with serve() as receiver:
        url = receiver.hook_url
    # The server is gone now: connection refused on loopback.
    row_id = enqueue_hook(ctx, url, "nobody home")
    assert row_id is not None
    await sender.deliver_due(ctx, 10)
    left = row(ctx, row_id)
    assert left.status == "pending" and left.last_error
    with ctx.begin() as conn:
        assert sender.pending_count(conn) == 1


def test_backoff_grows_and_is_capped() -> None:
    assert sender.backoff(1) == timedelta(seconds=30)
    assert sender.backoff(2) == timedelta(minutes=1)
    assert sender.backoff(5) == timedelta(minutes=8)
    assert sender.backoff(40) == sender.BACKOFF_MAX


async def test_email_row_sent_through_smtp_to_aiosmtpd(db: Engine, t0: datetime,
                                                       tmp_path: Path) -> None:
    from email import message_from_bytes

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    from scheduler.delivery.notify import TRANSPORT_KEY

    class Collect(Sink):
        def __init__(self) -> None:
            self.messages: list[bytes] = []

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            self.messages.append(envelope.content)  # type: ignore[attr-defined]
            return "250 OK"

    handler = Collect()
    port = free_port()  # aiosmtpd's readiness probe cannot connect to port 0 itself
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        ctx = make_ctx(db, FakeClock(t0), tmp_path, transport="smtp", smtp_host="127.0.0.1",
                       smtp_port=port, smtp_timeout_s=5.0, smtp_connect_timeout_s=5.0)
        with ctx.begin() as conn:
            row_id = store.enqueue(conn, topic="reminder", channel="email",
                                   target="social@acme.example", now=t0, dedupe_key="e1",
                                   payload={"subject": "Post on LinkedIn in 1 hour",
                                            "text": "Copy: hello", "html": "<p>hello</p>",
                                            "from": "martech <martech@acme.example>"})
        assert row_id is not None
        assert await sender.deliver_due(ctx, 10) == 1
        assert await sender.deliver_due(ctx, 10) == 0
        await ctx.extras[TRANSPORT_KEY].close()
    finally:
        controller.stop()
    assert len(handler.messages) == 1
    msg = message_from_bytes(handler.messages[0])
    assert msg["Subject"] == "Post on LinkedIn in 1 hour"
    assert msg["To"] == "social@acme.example"
    assert msg["Message-ID"].startswith(f"<outbox-{row_id}.")
    assert row(ctx, row_id).status == "sent"


async def test_bad_email_address_fails_permanently(db: Engine, t0: datetime,
                                                   tmp_path: Path) -> None:
    ctx = make_ctx(db, FakeClock(t0), tmp_path)
    with ctx.begin() as conn:
        row_id = store.enqueue(conn, topic="alert", channel="email", target="not-an-address",
                               payload={"subject": "x", "text": "y"}, now=t0)
    assert row_id is not None
    await sender.deliver_due(ctx, 10)
    assert row(ctx, row_id).status == "failed"


async def test_file_transport_writes_eml(db: Engine, t0: datetime, tmp_path: Path) -> None:
    ctx = make_ctx(db, FakeClock(t0), tmp_path)
    with ctx.begin() as conn:
        store.enqueue(conn, topic="reminder", channel="email", target="a@acme.example",
                      payload={"subject": "S", "text": "T", "campaign": "bf", "run_id": 7},
                      now=t0)
    assert await sender.deliver_due(ctx, 10) == 1
    files = list((tmp_path / "var" / "outbox" / "bf" / "7").glob("*.eml"))
    assert len(files) == 1 and b"Subject: S" in files[0].read_bytes()


async def test_redirect_fails_permanently_naming_only_the_new_host(
        db: Engine, t0: datetime, tmp_path: Path) -> None:
    from aiohttp import web

    hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPMovedPermanently("https://hooks.new.example/T1/B1/new-secret")

    app = web.Application()
    app.router.add_post("/{tail:.*}", moved)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        clock = FakeClock(t0)
        ctx = make_ctx(db, clock, tmp_path)
        row_id = enqueue_hook(ctx, f"http://127.0.0.1:{port}/hook/old-secret", "hi")
        assert row_id is not None
        await sender.deliver_due(ctx, 10)
        clock.advance(timedelta(days=2))
        await sender.deliver_due(ctx, 10)
    finally:
        await runner.cleanup()
    failed = row(ctx, row_id)
    assert failed.status == "failed" and failed.attempts == 1 and len(hits) == 1
    assert "HTTP 301" in failed.last_error
    assert "redirected to https://hooks.new.example" in failed.last_error
    assert "secret" not in failed.last_error


async def test_a_batch_fits_in_its_lease_even_if_every_send_times_out(
        db: Engine, t0: datetime, tmp_path: Path) -> None:
    ctx = make_ctx(db, FakeClock(t0), tmp_path, smtp_connect_timeout_s=10.0,
                   smtp_timeout_s=30.0, http_timeout_s=10.0)
    for i in range(20):
        enqueue_hook(ctx, f"http://127.0.0.1:9/hook/{i}", "x")
    claimed = sender.claim_due(ctx, 50)
    assert 1 <= len(claimed) == sender.lease_batch(ctx.settings)
    assert len(claimed) * (10.0 + 30.0) < sender.LEASE.total_seconds()
    slow = make_ctx(db, FakeClock(t0), tmp_path, smtp_connect_timeout_s=60.0,
                    smtp_timeout_s=300.0)
    assert sender.lease_batch(slow.settings) == 1  # never zero, even with absurd timeouts


async def test_outcome_of_a_claim_whose_lease_expired_is_not_recorded(
        db: Engine, t0: datetime, tmp_path: Path) -> None:
    from scheduler.delivery.base import SendOutcome

    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, tmp_path)
    row_id = enqueue_hook(ctx, "http://127.0.0.1:9/hook/secret", "x")
    assert row_id is not None
    (slow,) = sender.claim_due(ctx, 10)  # node A: its relay hangs past the lease
    clock.advance(sender.LEASE + timedelta(seconds=1))
    (fast,) = sender.claim_due(ctx, 10)  # node B takes the row over and delivers it
    assert fast.id == slow.id and fast.attempts == slow.attempts + 1
    assert sender.record(ctx, [(fast, SendOutcome(ok=True, code=200))]) == []
    late = sender.record(ctx, [(slow, SendOutcome(ok=False, error="HTTP 404", permanent=True))])
    assert late == [row_id]
    final = row(ctx, row_id)
    assert final.status == "sent" and final.last_error is None
