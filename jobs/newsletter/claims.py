"""Whose ``sending`` rows may a newcomer resolve? Only a dead claimer's (ARCHITECTURE.md,
invariants 3, 8).

A ``sending`` row is a batch some sender claimed and has not recorded yet. Re-queueing (or
marking ``unknown``) a *live* sender's batch would mail those recipients twice, so a sender
starting on a run resolves only rows claimed by:

* its own node name — a restart of this node after a crash (a CLI process has a name of its
  own, ``<node>:cli:<pid>``, so it never passes for the service or vice versa);
* a node known dead — a ``<this node>:cli:<pid>`` whose pid no longer exists on this host
  (a killed ``martech send --now``), or a node whose heartbeats have all gone stale
  (older than 4 heartbeat intervals, the engine's rule);
* anyone, once the claim is older than ``SENDING_LEASE``.

A node with no heartbeat at all (a test, a tool) is not presumed dead: only the lease frees
its rows. Rows of another sender *in this process* on the same run are never resolved.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobs.newsletter import ledger
from scheduler.clock import utc
from scheduler.settings import Settings
from scheduler.store import heartbeats
from scheduler.store.tables import deliveries, node_heartbeats

# A batch is claimed, sent and recorded in seconds (minutes on a very slow relay, bounded by
# the SMTP timeouts and retries); a claim older than this is presumed abandoned even when we
# cannot tell whether its claimer is alive. After a crash of a node that left no heartbeat,
# its in-flight batch is resolved this long after it was claimed.
SENDING_LEASE = timedelta(minutes=10)
HEARTBEAT_STALE_FACTOR = 4  # as the engine's adoption rule: 4 missed beats = dead
SENDER_ROLE = "sender"

_CLI = re.compile(r"^(?P<base>.*):cli:(?P<pid>\d+)$")

# (database URL, node, run id) -> senders active in this process.
_ACTIVE: Counter[tuple[str, str, int]] = Counter()


def cli_node_name(node_name: str, pid: int | None = None) -> str:
    """The node name of a CLI process: distinct from the service's and from other CLIs'."""
    return f"{base_node(node_name)}:cli:{os.getpid() if pid is None else pid}"


def base_node(node_name: str) -> str:
    match = _CLI.match(node_name)
    return match["base"] if match else node_name


def cli_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"node_name": cli_node_name(settings.node_name)})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def active(db_url: str, node: str, run_id: int) -> Iterator[None]:
    """Mark a sender active on ``run_id`` in this process (see ``others_active``)."""
    key = (db_url, node, run_id)
    _ACTIVE[key] += 1
    try:
        yield
    finally:
        _ACTIVE[key] -= 1
        if not _ACTIVE[key]:
            del _ACTIVE[key]


def others_active(db_url: str, node: str, run_id: int) -> bool:
    """Is another sender of this process (besides the caller, inside ``active``) on the run?"""
    return _ACTIVE[(db_url, node, run_id)] > 1


def dead_claimers(conn: sa.Connection, run_id: int, now: datetime, *, node: str,
                  settings: Settings) -> list[str]:
    """Claimers of this run's ``sending`` rows known to be dead (see the module docstring)."""
    claimers = conn.execute(
        sa.select(deliveries.c.claimed_by).distinct().where(
            deliveries.c.run_id == run_id, deliveries.c.status == "sending",
            deliveries.c.claimed_by.is_not(None))).scalars().all()
    here = base_node(node)
    stale_before = now - timedelta(seconds=settings.heartbeat_interval_s
                                   * HEARTBEAT_STALE_FACTOR)
    dead = []
    for claimer in claimers:
        cli = _CLI.match(claimer)
        if cli and cli["base"] == here:  # a CLI on this host: its pid says it all
            if not _pid_alive(int(cli["pid"])):
                dead.append(claimer)
            continue
        beats = conn.execute(sa.select(node_heartbeats.c.at).where(
            node_heartbeats.c.node == claimer)).scalars().all()
        if beats and all(utc(at) < stale_before for at in beats):
            dead.append(claimer)
    return dead


def recover(conn: sa.Connection, run_id: int, policy: str, now: datetime, *, node: str,
            settings: Settings, own_live: bool = False) -> int:
    """Resolve the ``sending`` rows of dead claimers by ``policy``; return how many.

    ``own_live``: another sender of this process is on the run, so rows claimed under our
    own node name are its in-flight batch, not crash leftovers.
    """
    dead = dead_claimers(conn, run_id, now, node=node, settings=settings)
    if not own_live:
        dead.append(node)
    return ledger.recover(conn, run_id, policy, now, claimers=dead, lease=SENDING_LEASE)


def beat(conn: sa.Connection, node: str, now: datetime) -> None:
    """A CLI sender's heartbeat, so the service (and other nodes) see it alive."""
    heartbeats.beat(conn, node, SENDER_ROLE, now)


def forget(conn: sa.Connection, node: str) -> None:
    conn.execute(sa.delete(node_heartbeats).where(node_heartbeats.c.node == node,
                                                  node_heartbeats.c.role == SENDER_ROLE))


def prune_dead_cli(conn: sa.Connection, node: str) -> int:
    """Forget the heartbeats of this host's killed CLI senders (they cannot clean up)."""
    here = base_node(node)
    names = conn.execute(sa.select(node_heartbeats.c.node).where(
        node_heartbeats.c.role == SENDER_ROLE)).scalars().all()
    dead = [n for n in names if (m := _CLI.match(n)) and m["base"] == here
            and not _pid_alive(int(m["pid"]))]
    for name in dead:
        forget(conn, name)
    return len(dead)
