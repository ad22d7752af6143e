"""A campaign's rate limit, shared by every sender of it: token buckets in ``rate_buckets``.

A bucket of ``rate`` tokens per ``period_s`` holds at most ``rate`` tokens. Each sender reserves
a whole batch in the transaction that claims it (:meth:`RateLimiter.reserve`): the bucket rows
are read under a row lock (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
serialises writers), refilled, debited and written back before the lock is released, so all
senders of a campaign on all nodes draw from one bucket and together never exceed
``rate_per_s`` / ``rate_per_h`` (issue 9, point 4h). A restart hands out no fresh burst (a
relay's hourly quota does not reset because we crashed). Time is the database's clock, passed
in by the caller, so two nodes' clocks are never mixed in one bucket.

No claimed row waits on the limiter: a batch is claimed only once its tokens are taken, so a
pause or shutdown never strands a claimed batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.store.dialect import insert_for
from scheduler.store.tables import rate_buckets


@dataclass
class TokenBucket:
    key: str
    rate: float  # tokens per period
    period_s: float
    tokens: float
    updated_at: datetime

    @property
    def capacity(self) -> float:
        return self.rate

    def refill(self, now: datetime) -> None:
        elapsed = max(0.0, (now - self.updated_at).total_seconds())
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate / self.period_s)
        self.updated_at = max(now, self.updated_at)

    def wait_s(self, n: float, now: datetime) -> float:
        """Seconds until ``n`` tokens are available (0 if now)."""
        self.refill(now)
        missing = min(n, self.capacity) - self.tokens
        return 0.0 if missing <= 0 else missing * self.period_s / self.rate

    def take(self, n: float, now: datetime) -> None:
        self.refill(now)
        self.tokens -= n


class RateLimiter:
    """Per-second and per-hour buckets for one key (a campaign), shared through the database."""

    def __init__(self, key: str, *, rate_per_s: float | None, rate_per_h: float | None) -> None:
        self.key = key
        self.specs = [(f"{key}:per_s", rate_per_s, 1.0), (f"{key}:per_h", rate_per_h, 3600.0)]
        self.buckets: list[TokenBucket] = []

    @property
    def active(self) -> bool:
        return any(rate for _k, rate, _p in self.specs)

    def max_batch(self, wanted: int) -> int:
        """A batch never exceeds a bucket's capacity, or it could never be reserved."""
        caps = [int(rate) for _k, rate, _p in self.specs if rate]
        return max(1, min([wanted, *caps]))

    def load(self, conn: sa.Connection, now: datetime, *, lock: bool = False) -> None:
        """Read the stored buckets (a missing one starts full), refilled to ``now``."""
        keys = [k for k, rate, _p in self.specs if rate]
        select = sa.select(rate_buckets).where(rate_buckets.c.key.in_(keys))
        if lock:
            select = select.with_for_update()
        stored = {row.key: row for row in conn.execute(select)}
        self.buckets = []
        for key, rate, period_s in self.specs:
            if not rate:
                continue
            row = stored.get(key)
            if row is None:
                bucket = TokenBucket(key, rate, period_s, rate, now)
            else:
                bucket = TokenBucket(key, rate, period_s, min(rate, row.tokens),
                                     utc(row.updated_at))
            bucket.refill(now)
            self.buckets.append(bucket)

    def wait_s(self, n: int, now: datetime) -> float:
        return max((b.wait_s(n, now) for b in self.buckets), default=0.0)

    def take(self, n: int, now: datetime) -> None:
        for bucket in self.buckets:
            bucket.take(n, now)

    def reserve(self, conn: sa.Connection, n: int, now: datetime) -> float:
        """Take ``n`` tokens from every bucket in this transaction, or none: the seconds to
        wait before asking again (0.0 when taken). ``now`` is the database's clock."""
        if not self.active or n <= 0:
            return 0.0
        self._ensure_rows(conn, now)
        self.load(conn, now, lock=True)
        wait = self.wait_s(n, now)
        if wait > 0:
            return wait
        self.take(n, now)
        self.save(conn)
        return 0.0

    def _ensure_rows(self, conn: sa.Connection, now: datetime) -> None:
        """Create missing bucket rows (full), so the locking read has rows to lock."""
        missing = [(k, rate) for k, rate, _p in self.specs if rate]
        stmt = insert_for(conn, rate_buckets).on_conflict_do_nothing()
        have = set(conn.execute(sa.select(rate_buckets.c.key).where(
            rate_buckets.c.key.in_([k for k, _r in missing]))).scalars())
        rows = [{"key": k, "tokens": rate, "updated_at": now} for k, rate in missing
                if k not in have]
        if rows:
            conn.execute(stmt, rows)

    def save(self, conn: sa.Connection) -> None:
        if not self.buckets:
            return
        base = insert_for(conn, rate_buckets)
        stmt = base.on_conflict_do_update(
            index_elements=[rate_buckets.c.key],
            set_={"tokens": base.excluded.tokens, "updated_at": base.excluded.updated_at})
        conn.execute(stmt, [{"key": b.key, "tokens": b.tokens, "updated_at": b.updated_at}
                            for b in self.buckets])
