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

A :class:`~scheduler.delivery.ramp.Ramp` scales every bucket's rate *and* capacity while it
runs, so a bucket that filled up during a pause cannot release a full-rate burst either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.delivery.ramp import Ramp
from scheduler.store.dialect import insert_for
from scheduler.store.tables import rate_buckets


@dataclass
class TokenBucket:
    key: str
    rate: float  # tokens per period
    period_s: float
    tokens: float
    updated_at: datetime
    factor: float = 1.0  # share of the rate allowed now (a resume ramp), 0 < factor ≤ 1

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.factor)

    def refill(self, now: datetime) -> None:
        elapsed = max(0.0, (now - self.updated_at).total_seconds())
        rate = self.rate * self.factor
        self.tokens = min(self.capacity, self.tokens + elapsed * rate / self.period_s)
        # Another sender's transaction may have stamped the row a moment "later" than the
        # now() our transaction started with: never move it back.
        self.updated_at = max(now, self.updated_at)

    def wait_s(self, n: float, now: datetime) -> float:
        """Seconds until ``n`` tokens are available (0 if now)."""
        self.refill(now)
        missing = min(n, self.capacity) - self.tokens
        # A rounding crumb (1e-7 of a token) is no reason to wait: the clock may not even
        # be able to advance by that little.
        return 0.0 if missing <= 1e-6 else missing * self.period_s / (self.rate * self.factor)

    def take(self, n: float, now: datetime) -> None:
        self.refill(now)
        self.tokens -= n


class RateLimiter:
    """Per-second and per-hour buckets for one key (a campaign)."""

    def __init__(self, key: str, *, rate_per_s: float | None, rate_per_h: float | None) -> None:
        self.key = key
        self.specs = [(f"{key}:per_s", rate_per_s, 1.0), (f"{key}:per_h", rate_per_h, 3600.0)]
        self.buckets: list[TokenBucket] = []
        self.ramp: Ramp | None = None

    def set_ramp(self, ramp: Ramp | None, *, unlimited_rate_per_s: float | None = None) -> None:
        """Ramp the configured rates; with none configured, ramp up to ``unlimited_rate_per_s``
        (call :meth:`load` afterwards)."""
        self.ramp = ramp
        ramp_key = f"{self.key}:ramp"
        self.specs = [spec for spec in self.specs if spec[0] != ramp_key]
        if ramp is not None and not self.active and unlimited_rate_per_s:
            self.specs.append((ramp_key, unlimited_rate_per_s, 1.0))

    def _apply_ramp(self, now: datetime) -> None:
        factor = self.ramp.factor(now) if self.ramp is not None else 1.0
        for bucket in self.buckets:
            bucket.refill(now)  # tokens earned so far at the old factor
            bucket.factor = factor

    @property
    def active(self) -> bool:
        return any(rate for _k, rate, _p in self.specs)

    def max_batch(self, wanted: int, now: datetime | None = None) -> int:
        """A batch never exceeds a bucket's capacity (ramped at ``now``), or it could never be
        reserved."""
        if now is not None and self.buckets:
            self._apply_ramp(now)
            return max(1, min([wanted, *(int(b.capacity) for b in self.buckets)]))
        caps = [int(rate) for _k, rate, _p in self.specs if rate]
        return max(1, min([wanted, *caps]))

    def load(self, conn: sa.Connection, now: datetime, *, lock: bool = False) -> None:
        """Read the stored buckets (a missing one starts full), refilled to ``now``;
        ``lock``: under a row lock, for :meth:`reserve`."""
        select = sa.select(rate_buckets).where(
            rate_buckets.c.key.in_([k for k, _r, _p in self.specs]))
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
        self._apply_ramp(now)
        return max((b.wait_s(n, now) for b in self.buckets), default=0.0)

    def take(self, n: int, now: datetime) -> None:
        self._apply_ramp(now)
        for bucket in self.buckets:
            bucket.take(n, now)

    def save(self, conn: sa.Connection) -> None:
        if not self.buckets:
            return
        base = insert_for(conn, rate_buckets)
        stmt = base.on_conflict_do_update(
            index_elements=[rate_buckets.c.key],
            set_={"tokens": base.excluded.tokens, "updated_at": base.excluded.updated_at})
        conn.execute(stmt, [{"key": b.key, "tokens": b.tokens, "updated_at": b.updated_at}
                            for b in self.buckets])

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
        wanted = [(k, rate) for k, rate, _p in self.specs if rate]
        have = set(conn.execute(sa.select(rate_buckets.c.key).where(
            rate_buckets.c.key.in_([k for k, _r in wanted]))).scalars())
        rows = [{"key": k, "tokens": rate, "updated_at": now} for k, rate in wanted
                if k not in have]
        if rows:
            conn.execute(insert_for(conn, rate_buckets).on_conflict_do_nothing(), rows)
