"""Every table. Uniqueness constraints carry the invariants (ARCHITECTURE.md, invariants 2, 3,
4)."""

from __future__ import annotations

import sqlalchemy as sa

from scheduler.store.types import UtcDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Per schedule, the last occurrence already considered: catch-up starts after it
# (APScheduler issue #696 drops missed runs when jobs are re-added; we never rely on that).
schedule_cursors = sa.Table(
    "schedule_cursors",
    metadata,
    sa.Column("schedule_key", sa.String(300), primary_key=True),
    sa.Column("campaign", sa.String(200), nullable=False),
    sa.Column("last_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# One row per scheduled occurrence. Whoever inserts it owns it.
# status: pending | running | done | failed | missed | skipped | held | coalesced
# lease_gen is the run's fencing token: bumped whenever another node (or a restart) takes the
# run over, and every status change is conditional on it (ARCHITECTURE.md, invariant 8).
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("schedule_key", sa.String(300), nullable=False),
    sa.Column("campaign", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("scheduled_at", UtcDateTime(), nullable=False),
    sa.Column("local_slot", sa.String(40), nullable=False),
    sa.Column("trigger", sa.String(20), nullable=False, server_default="schedule"),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("node", sa.String(200)),
    sa.Column("claimed_at", UtcDateTime(), nullable=False),
    sa.Column("started_at", UtcDateTime()),
    sa.Column("finished_at", UtcDateTime()),
    sa.Column("detail", sa.Text),
    sa.Column("stats", sa.JSON),
    sa.Column("lease_gen", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("schedule_key", "scheduled_at"),
    sa.UniqueConstraint("schedule_key", "local_slot"),
)

# One row per recipient of a run, materialised before anything is sent.
# status: pending | sending | sent | failed | bounced | unknown | skipped | suppressed
# ``claim_id`` names the delivery_claims row (the lease) a ``sending`` row belongs to;
# ``on_wire`` says its end-of-DATA may have been written under that claim (ARCHITECTURE.md,
# invariant 3): only such rows are in doubt when their claim dies.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("recipient", sa.String(400), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime()),
    sa.Column("last_error", sa.Text),
    sa.Column("last_code", sa.Integer),
    sa.Column("message_id", sa.String(300)),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("claimed_at", UtcDateTime()),
    sa.Column("sent_at", UtcDateTime()),
    sa.Column("variables", sa.JSON),
    # When this row may be sent at the earliest (per-recipient time zones: 09:00 in each
    # recipient's zone); NULL = as soon as the run starts. The claim hands out due rows only.
    sa.Column("due_at", UtcDateTime()),
    sa.Column("claim_id", sa.Integer),
    sa.Column("on_wire", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("run_id", "recipient"),
    # (run, status) for the sender's claims; sent_at too, so reports count a run's sends per
    # hour on the index alone (jobs/report/campaigns.py).
    sa.Index("ix_deliveries_run_status_sent", "run_id", "status", "sent_at"),
)

# One row per claimed batch of deliveries: its id is the fencing token every write of the
# batch is conditional on; the row exists while the lease is held. ``expires_at`` and
# ``deadline`` are the database's clock (never a node's): a claim is renewed until its
# deadline (the batch's worst case) and adopted by any live node once expired. AUTOINCREMENT
# on SQLite: a token is never handed out twice, even after its row is deleted.
delivery_claims = sa.Table(
    "delivery_claims",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("node", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("claimed_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("deadline", UtcDateTime(), nullable=False),
    sqlite_autoincrement=True,
)

# A campaign sends only while it has no row here. reason: manual | guard:<check> |
# maintenance:<window> | error_budget | smtp_unreachable | smtp_auth_failed
pauses = sa.Table(
    "pauses",
    metadata,
    sa.Column("campaign", sa.String(200), primary_key=True),
    sa.Column("reason", sa.String(300), primary_key=True),
    sa.Column("detail", sa.Text),
    sa.Column("since", UtcDateTime(), nullable=False),
    sa.Column("by", sa.String(200)),
)

# Raw evidence, kept apart from the verdict (ARCHITECTURE.md, invariant 5).
check_results = sa.Table(
    "check_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("check_name", sa.String(200), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),  # ok | fail | unknown
    sa.Column("latency_ms", sa.Float),
    sa.Column("detail", sa.Text),
    sa.Column("node", sa.String(200)),
    # Structured findings of probes that measure many things (the page check), for reports.
    sa.Column("findings", sa.JSON),
    sa.Index("ix_check_results_check_at", "check_name", "at"),
)

# The guard's verdict per check, with the counters hysteresis needs; survives restarts.
check_state = sa.Table(
    "check_state",
    metadata,
    sa.Column("check_name", sa.String(200), primary_key=True),
    sa.Column("verdict", sa.String(20), nullable=False),  # pending | up | down | unknown
    sa.Column("since", UtcDateTime(), nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("consecutive_successes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("recent", sa.String(200), nullable=False, server_default=""),  # e.g. "ooxox"
    sa.Column("last_result_at", UtcDateTime()),
    sa.Column("last_detail", sa.Text),
    sa.Column("last_alert_at", UtcDateTime()),
)

# Who probes each check: one node at a time, cluster-wide, so a check runs once per interval
# and hysteresis counts results, not nodes. expires_at is the database's clock (dbclock.py);
# gen is the fencing token a result must carry to be recorded.
check_leases = sa.Table(
    "check_leases",
    metadata,
    sa.Column("check_name", sa.String(200), primary_key=True),
    sa.Column("node", sa.String(200), nullable=False),
    sa.Column("gen", sa.Integer, nullable=False, server_default="1"),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("email", sa.String(400), primary_key=True),  # lower-cased
    # unsubscribed | hard_bounce | soft_bounce | complaint | manual
    sa.Column("reason", sa.String(40), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("campaign", sa.String(200)),
    sa.Column("detail", sa.Text),
)

# kind: sent | delivered | bounced | opened | clicked | unsubscribed | paused | resumed | held
#       | skipped | missed | posted | link_broken | alert | soft_bounce | complained | ramp —
#       free text on purpose: a new kind needs no migration, and reports count every kind.
# Opens and clicks also carry their signals (ip, user_agent, after_send_s) and the verdict
# drawn from them at recording time: traffic = human | machine | suspect, agent = which
# machine (apple_mpp, google_proxy, safelinks, …) or why suspect; first = first event of its
# (delivery, kind, traffic), so unique counts survive being rolled up into sums.
tracking_events = sa.Table(
    "tracking_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("campaign", sa.String(200)),
    sa.Column("run_id", sa.Integer),
    sa.Column("delivery_id", sa.Integer),
    sa.Column("recipient", sa.String(400)),
    sa.Column("url", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("ip", sa.String(64)),
    sa.Column("user_agent", sa.Text),
    sa.Column("after_send_s", sa.Float),
    sa.Column("traffic", sa.String(20)),
    sa.Column("agent", sa.String(60)),
    sa.Column("first", sa.Boolean),
    sa.Index("ix_tracking_events_campaign_at", "campaign", "at"),
    # "opened at most once per delivery" looks events up by delivery.
    sa.Index("ix_tracking_events_delivery_kind", "delivery_id", "kind"),
    # Reports read events of a period's runs; retention rolls opens and clicks up by time,
    # and reports find the rare kinds (unsubscribes, pauses) by kind and time.
    sa.Index("ix_tracking_events_run_kind", "run_id", "kind"),
    sa.Index("ix_tracking_events_kind_at", "kind", "at"),
)

# One row per time a check was down (the guard's verdict, not a single failed result):
# opened on the down transition, closed on the up one. campaigns: those it paused.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("check_name", sa.String(200), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("ended_at", UtcDateTime()),
    sa.Column("detail", sa.Text),
    sa.Column("campaigns", sa.JSON),
    sa.Index("ix_incidents_check_started", "check_name", "started_at"),
)

# Retention (jobs/report/retention.py): raw check results and events rolled up per hour
# (grain "hour") and per day ("day"); reports read these where the raw rows are gone.
# A result's time (until the next result, capped) is counted in the bucket it was taken in.
check_rollups = sa.Table(
    "check_rollups",
    metadata,
    sa.Column("check_name", sa.String(200), primary_key=True),
    sa.Column("grain", sa.String(8), primary_key=True),
    sa.Column("start", UtcDateTime(), primary_key=True),
    sa.Column("ok_s", sa.Float, nullable=False),
    sa.Column("fail_s", sa.Float, nullable=False),
    sa.Column("unknown_s", sa.Float, nullable=False),
    sa.Column("maintenance_s", sa.Float, nullable=False),
    sa.Column("results", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Index("ix_check_rollups_grain_start", "grain", "start"),
)

# Response times per bucket as a log histogram (bucket b holds latencies in
# [1.1^b - 1, 1.1^(b+1) - 1) ms), so p50/p95 can be read from any sum of buckets.
check_latency_rollups = sa.Table(
    "check_latency_rollups",
    metadata,
    sa.Column("check_name", sa.String(200), primary_key=True),
    sa.Column("grain", sa.String(8), primary_key=True),
    sa.Column("start", UtcDateTime(), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)

event_rollups = sa.Table(
    "event_rollups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("grain", sa.String(8), nullable=False),
    sa.Column("start", UtcDateTime(), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("campaign", sa.String(200)),
    sa.Column("run_id", sa.Integer),
    sa.Column("traffic", sa.String(20)),
    sa.Column("agent", sa.String(60)),  # the machine or suspect signal that classified it
    sa.Column("url", sa.Text),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("n_first", sa.Integer, nullable=False),
    sa.Index("ix_event_rollups_grain_start", "grain", "start"),
    sa.Index("ix_event_rollups_run_kind", "run_id", "kind"),
)

# How far each rollup has got: name = "<source>:<grain>" (rolled up before ``until``) or
# "<source>:<tier>_pruned" (rows before ``until`` deleted). Sources: checks, events.
rollup_cursors = sa.Table(
    "rollup_cursors",
    metadata,
    sa.Column("name", sa.String(60), primary_key=True),
    sa.Column("until", UtcDateTime(), nullable=False),
)

node_heartbeats = sa.Table(
    "node_heartbeats",
    metadata,
    sa.Column("node", sa.String(200), primary_key=True),
    sa.Column("role", sa.String(40), primary_key=True),  # service | guard | sender
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("pid", sa.Integer),
    sa.Column("info", sa.Text),
)

# Token buckets that survive a restart (rate limits per campaign / transport).
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# Alerts and notifications are an outbox: written first, sent after, retried until sent.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("topic", sa.String(60), nullable=False),  # alert | reminder | report
    sa.Column("channel", sa.String(20), nullable=False),  # email | webhook
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | sent | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime()),
    sa.Column("last_error", sa.Text),
    sa.Column("sent_at", UtcDateTime()),
    sa.Column("dedupe_key", sa.String(400), unique=True),
)

# Social posts marked as done by a person.
posts_done = sa.Table(
    "posts_done",
    metadata,
    sa.Column("campaign", sa.String(200), primary_key=True),
    sa.Column("post_id", sa.String(300), primary_key=True),
    sa.Column("done_at", UtcDateTime(), nullable=False),
    sa.Column("by", sa.String(200)),
)
