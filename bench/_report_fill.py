"""Fill a SQLite database the way retention would hold it, for bench/report.py.

Schema from the project's migrations; rows written in SQL (recursive CTEs, INSERT ... SELECT,
one statement per check or run, each in index order) on a connection with the journal and
fsync off: the fill only, the report then runs on a normal engine.

What retention holds a year into the service (defaults: raw 30 days, hourly 400 days):
raw 1-minute results for the last 30 days, hourly (and daily) aggregates for the whole year.
The hours older than 30 days are written as aggregates directly (their raw rows would be
gone); the last 30 days' aggregates are rolled up from the raw rows by the project's own
retention (``catch_up``), exactly as the running service would have done.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobs.report.tiers import floor_hour

TS = "strftime('%Y-%m-%d %H:%M:%S', {}, 'unixepoch') || '.000000'"  # SQLAlchemy's text form
URLS = 7  # distinct links clicked


@dataclass(frozen=True)
class Sizes:
    deliveries: int
    checks: int
    campaigns: int = 4
    runs_per_campaign: int = 4  # over the report's period and the one before it
    history_days: int = 365
    raw_days: int = 30

    @property
    def per_run(self) -> int:
        return self.deliveries // (self.campaigns * self.runs_per_campaign)


@dataclass(frozen=True)
class Layout:
    """Where the fill puts things, shared with the naive baseline and the report config."""

    now: datetime
    sizes: Sizes

    @property
    def raw_start(self) -> datetime:
        return floor_hour(self.now - timedelta(days=self.sizes.raw_days))

    @property
    def history_start(self) -> datetime:
        return floor_hour(self.now - timedelta(days=self.sizes.history_days))

    def check_names(self) -> list[str]:
        return [f"check-{i:02d}" for i in range(self.sizes.checks)]

    def campaign_names(self) -> list[str]:
        return [f"news-{c}" for c in range(self.sizes.campaigns)]

    def run_at(self, campaign: int, run: int) -> datetime:
        """Runs 3.5 days apart from the start of the previous period, an hour per campaign."""
        first = floor_hour(self.now - timedelta(days=14)) + timedelta(hours=1)
        return first + timedelta(hours=84 * run + campaign)

    @property
    def outage(self) -> tuple[datetime, datetime]:
        """check-03 fails for 45 minutes while news-0's last run is sending."""
        start = self.run_at(0, self.sizes.runs_per_campaign - 1) + timedelta(minutes=30)
        return start, start + timedelta(minutes=45)

    @property
    def maintenance(self) -> tuple[datetime, timedelta]:
        return floor_hour(self.now - timedelta(days=2, hours=10)), timedelta(hours=2)


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def fill(path: Path, lay: Layout) -> dict[str, int]:
    """Rows written per table (before retention's rollup)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MB: the index inserts stay in memory
        conn.execute("BEGIN")
        _check_results(conn, lay)
        _old_rollups(conn, lay)
        _runs_and_deliveries(conn, lay)
        _events(conn, lay)
        _incident(conn, lay)
        conn.execute("COMMIT")
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("check_results", "check_rollups", "check_latency_rollups",
                          "runs", "deliveries", "tracking_events", "incidents")}
    finally:
        conn.close()


def _check_results(conn: sqlite3.Connection, lay: Layout) -> None:
    """One result a minute per check, check i at second i of the minute: ~1% failures, an
    outage on check-03, a few 'unknown' (the guard could not see), latency 20-35 ms."""
    base = _epoch(lay.raw_start)
    minutes = (_epoch(lay.now) - base) // 60
    out_a, out_b = (_epoch(t) for t in lay.outage)
    sql = f"""
        WITH RECURSIVE m(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM m WHERE k < :n - 1),
        r AS (SELECT k, :base + k * 60 + :i AS t,
                     CASE WHEN (:i = 3 AND :base + k * 60 + :i >= :oa
                                AND :base + k * 60 + :i < :ob)
                               OR (k * 7 + :i * 13) % 97 = 0 THEN 'fail'
                          WHEN :i = 7 AND k % 1000 = 5 THEN 'unknown'
                          ELSE 'ok' END AS outcome FROM m)
        INSERT INTO check_results (check_name, at, outcome, latency_ms)
        SELECT :name, {TS.format('t')}, outcome,
               CASE WHEN outcome = 'ok' THEN 20.0 + (k * 31 + :i * 17) % 16 END
        FROM r WHERE t < :now"""
    for i, name in enumerate(lay.check_names()):
        conn.execute(sql, {"n": minutes + 1, "base": base, "i": i, "oa": out_a, "ob": out_b,
                           "name": name, "now": _epoch(lay.now)})


def _old_rollups(conn: sqlite3.Connection, lay: Layout) -> None:
    """Hourly aggregates for the hours before the raw rows: what the rollup left of them
    (60 results an hour, a failure now and then, six latency buckets)."""
    base = _epoch(lay.history_start)
    hours = (_epoch(lay.raw_start) - base) // 3600
    hours_cte = "WITH RECURSIVE h(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM h WHERE k < :n - 1)"
    rows = f"""{hours_cte}
        INSERT INTO check_rollups (check_name, grain, start, ok_s, fail_s, unknown_s,
                                   maintenance_s, results, failures)
        SELECT :name, 'hour', {TS.format(':base + k * 3600')},
               3600.0 - f * 60.0, f * 60.0, 0.0, 0.0, 60, f
        FROM (SELECT k, CASE WHEN (k + :i) % 50 = 0 THEN 1 ELSE 0 END AS f FROM h)"""
    lat = f"""{hours_cte}, b(j) AS (SELECT 31 UNION ALL SELECT j + 1 FROM b WHERE j < 36)
        INSERT INTO check_latency_rollups (check_name, grain, start, bucket, n)
        SELECT :name, 'hour', {TS.format(':base + k * 3600')}, j,
               CASE WHEN j = 31 AND (k + :i) % 50 = 0 THEN 9 ELSE 10 END
        FROM h CROSS JOIN b ORDER BY k, j"""
    for i, name in enumerate(lay.check_names()):
        params = {"n": hours, "base": base, "i": i, "name": name}
        conn.execute(rows, params)
        conn.execute(lat, params)
    conn.execute("INSERT INTO rollup_cursors (name, until) VALUES ('checks:hour', ?)",
                 (_text(lay.raw_start),))


def _runs_and_deliveries(conn: sqlite3.Connection, lay: Layout) -> None:
    """Per run: 96% sent over two hours, the rest failed, bounced, unknown, skipped (half of
    them suppressed) and pending."""
    n = lay.sizes.per_run
    sql = f"""
        WITH RECURSIVE m(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM m WHERE j < :n - 1),
        s AS (SELECT j, CASE j % 200 WHEN 0 THEN 'failed' WHEN 1 THEN 'failed'
                          WHEN 2 THEN 'bounced' WHEN 3 THEN 'bounced' WHEN 4 THEN 'unknown'
                          WHEN 5 THEN 'skipped' WHEN 6 THEN 'skipped' WHEN 7 THEN 'pending'
                          ELSE 'sent' END AS status FROM m)
        INSERT INTO deliveries (run_id, recipient, status, attempts, last_error, sent_at,
                                on_wire)
        SELECT :run, 'r' || j || '@c' || :c || '.example', status, 1,
               CASE WHEN j % 200 = 5 THEN 'suppressed' WHEN status IN ('failed', 'bounced')
                    THEN '550 no such user' END,
               CASE WHEN status = 'sent' THEN {TS.format(':at + j * 7200 / :n')} END, 0
        FROM s"""
    for c, name in enumerate(lay.campaign_names()):
        for r in range(lay.sizes.runs_per_campaign):
            at = lay.run_at(c, r)
            done = at + timedelta(hours=2)
            run_id = conn.execute(
                "INSERT INTO runs (schedule_key, campaign, kind, scheduled_at, local_slot, "
                "\"trigger\", status, node, claimed_at, started_at, finished_at, lease_gen) "
                "VALUES (?, ?, 'newsletter', ?, ?, 'schedule', 'done', 'bench', ?, ?, ?, 1)",
                (name, name, _text(at), at.isoformat(), _text(at), _text(at), _text(done)),
            ).lastrowid
            conn.execute(sql, {"n": n, "run": run_id, "c": c, "at": _epoch(at)})


def _events(conn: sqlite3.Connection, lay: Layout) -> None:
    """~0.3 events per delivery: human opens (some twice), Apple privacy-proxy prefetches,
    human clicks (some twice), unsubscribes. ``first`` marks each delivery's first event
    of a (kind, traffic), as the recorder does."""
    shift = "strftime('%Y-%m-%d %H:%M:%S', d.sent_at, '+' || ({}) || ' seconds') || '.000000'"
    kinds = [  # (kind, traffic, agent, first, which deliveries, seconds after the send, url)
        ("opened", "human", None, 1, "d.id % 6 = 0", "600 + d.id % 7200", None),
        ("opened", "human", None, 0, "d.id % 30 = 0", "11400 + d.id % 7200", None),
        ("opened", "machine", "apple_mpp", 1, "d.id % 16 = 1", "1", None),
        ("clicked", "human", None, 1, "d.id % 24 = 0", "660 + d.id % 7200",
         f"'https://acme.example/p' || (d.id % {URLS})"),
        ("clicked", "human", None, 0, "d.id % 120 = 0", "11460 + d.id % 7200",
         f"'https://acme.example/p' || (d.id % {URLS})"),
        ("unsubscribed", None, None, None, "d.id % 500 = 3", "86400", None),
    ]
    for kind, traffic, agent, first, where, after_s, url in kinds:
        conn.execute(f"""
            INSERT INTO tracking_events (at, kind, campaign, run_id, delivery_id, recipient,
                                         url, ip, user_agent, after_send_s, traffic, agent,
                                         first)
            SELECT {shift.format(after_s)}, ?, r.campaign, d.run_id, d.id, d.recipient,
                   {url or 'NULL'}, '198.51.100.7', 'Mozilla/5.0', {after_s}, ?, ?, ?
            FROM deliveries d JOIN runs r ON r.id = d.run_id
            WHERE d.status = 'sent' AND {where} ORDER BY d.id""",
            (kind, traffic, agent, first))


def _incident(conn: sqlite3.Connection, lay: Layout) -> None:
    """check-03's outage: the guard's incident (down after three failures) and the pause of
    the campaign it guards, as events."""
    start, end = lay.outage
    down, up = start + timedelta(minutes=3), end + timedelta(minutes=2)
    conn.execute("INSERT INTO incidents (check_name, started_at, ended_at, detail, campaigns) "
                 "VALUES ('check-03', ?, ?, 'connection refused', '[\"news-0\"]')",
                 (_text(down), _text(up)))
    for kind, at, detail in (("paused", down, "guard:check-03: connection refused"),
                             ("resumed", up, "guard:check-03")):
        conn.execute("INSERT INTO tracking_events (at, kind, campaign, detail) "
                     "VALUES (?, ?, 'news-0', ?)", (_text(at), kind, detail))
