"""Migrations cannot drift: head matches tables.py, old databases catch up, nodes migrate once.

Every test runs on SQLite and, when MARTECH_TEST_DATABASE_URL is set, on PostgreSQL in a
schema of its own (conftest's empty_db_url); an unreachable server errors, it never skips.
"""

from __future__ import annotations

import hashlib
import pprint
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from scheduler.store.db import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    needs_upgrade,
    schema_diff,
    upgrade,
)
from tests.conftest import REPO

# Released migrations, byte for byte. A database stamped with a revision has exactly what that
# file created when it ran; editing the file later changes nothing there (issue 8 point 5:
# 0001 gained an index after shipping). Change the schema in a new revision, then pin it here.
RELEASED = {
    "0001_initial_schema.py":
        "a7767bd6a346c024d56546497b07cb0a3095db5d08e9aafd7290af43e4c4e749",
    "0002_tracking_events_delivery_kind.py":
        "aaa8dfaed4381ab4304ea8ec8dcca7b3453c4fb2020baf03310e50a0c56b0f40",
    "i13_joins.py":
        "00624bf52468ef99ae1556428a1066c1f4d16de0ca3b8b5fdbcb1b3dea8e4bf3",
    "i9_cluster.py":  # runs.lease_gen, check_leases (issue 9)
        "0f20ffb17e38fabaabd79dcfa8f58759ce3dbedd93de807f679b740fdc37ee9e",
    "i11_reports.py":
        "2df95b7edd4cf9c4d7ce855835110545641af90ea430964fc5c60cd514580baf",
    "i9_ledger.py":  # delivery_claims, deliveries.claim_id and on_wire (issue 9)
        "39a2d8fecd5c94f875b60fa6cacadbeca4b34ad1675b1ddd867ab41143bc5667",
}
ADDED_BY_0002 = "ix_tracking_events_delivery_kind"


@pytest.fixture
def empty_db(empty_db_url: str) -> Iterator[Engine]:
    engine = make_engine(empty_db_url)
    yield engine
    engine.dispose()


def assert_no_drift(engine: Engine) -> None:
    diff = schema_diff(engine)
    assert not diff, "migrations and scheduler/store/tables.py disagree:\n" + "\n".join(
        pprint.pformat(d) for d in diff
    )


def _downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _keys(diff: list[Any]) -> set[str]:
    """Each difference as text ("add_index ix_…", "add_column check_results.findings")."""
    out = set()
    for d in diff:
        if isinstance(d, list):  # alembic groups column modifications in lists
            out |= _keys(d)
        elif d[0] in ("add_index", "remove_index"):
            out.add(f"{d[0]} {d[1].name}")
        elif d[0] in ("add_column", "remove_column"):
            out.add(f"{d[0]} {d[2]}.{d[3].name}")
        else:
            out.add(f"{d[0]} {d[1]!r}")
    return out


def _added_by_0002(engine: Engine) -> set[str]:
    """What the database at 0001 lacks that the same database at 0002 has: compared against
    the models before and after (later revisions add more; those differences stay equal)."""
    before = _keys(schema_diff(engine))
    upgrade(engine, "0002")
    return before - _keys(schema_diff(engine))


def test_released_migrations_are_never_edited() -> None:
    versions = MIGRATIONS_DIR / "versions"
    shipped = {p.name for p in versions.glob("*.py")}
    assert shipped == set(RELEASED), "a new revision: add it (and its sha256) to RELEASED"
    for name, digest in RELEASED.items():
        actual = hashlib.sha256((versions / name).read_bytes()).hexdigest()
        assert actual == digest, f"{name} was released; add a new revision instead of editing it"


def test_head_matches_the_models(empty_db: Engine) -> None:
    upgrade(empty_db)
    assert current_revision(empty_db) == head_revision()
    assert_no_drift(empty_db)


def test_a_database_at_first_shipped_0001_catches_up(empty_db: Engine) -> None:
    upgrade(empty_db, "0001")
    # 0001 is what first shipped: it lacks the index that was later written into it.
    assert _added_by_0002(empty_db) == {f"add_index {ADDED_BY_0002}"}
    upgrade(empty_db)
    assert current_revision(empty_db) == head_revision()
    assert_no_drift(empty_db)


def test_a_database_from_the_rewritten_0001_catches_up(empty_db: Engine) -> None:
    # Created between the rewrite and 0002: stamped 0001 but already has the index.
    upgrade(empty_db, "0001")
    with empty_db.begin() as conn:
        conn.execute(sa.text(f"CREATE INDEX {ADDED_BY_0002} ON tracking_events(delivery_id, kind)"))
    upgrade(empty_db)
    assert current_revision(empty_db) == head_revision()
    assert_no_drift(empty_db)


def test_0002_downgrades_to_first_shipped_0001(empty_db: Engine) -> None:
    upgrade(empty_db, "0002")
    _downgrade(empty_db, "0001")
    assert _added_by_0002(empty_db) == {f"add_index {ADDED_BY_0002}"}


def test_needs_upgrade_until_at_head(empty_db: Engine) -> None:
    assert needs_upgrade(empty_db)
    upgrade(empty_db, "0001")
    assert needs_upgrade(empty_db)
    upgrade(empty_db)
    assert not needs_upgrade(empty_db)


def _lock_is_free(engine: Engine) -> bool:
    # Another engine: engine's pool may hand back upgrade's own session, which would get the
    # (re-entrant) lock even if upgrade had leaked it.
    other = make_engine(engine.url.render_as_string(hide_password=False))
    key = {"key": MIGRATION_LOCK_KEY}
    try:
        with other.connect() as conn:
            got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar())
            if got:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
            return got
    finally:
        other.dispose()


def test_upgrade_releases_the_migration_lock(empty_db: Engine) -> None:
    if empty_db.dialect.name != "postgresql":
        pytest.skip("the advisory lock is PostgreSQL's; SQLite serialises on BEGIN IMMEDIATE")
    with pytest.raises(CommandError):
        upgrade(empty_db, "no-such-revision")
    assert _lock_is_free(empty_db)
    upgrade(empty_db)
    assert _lock_is_free(empty_db)


# Each node connects first, then waits for "go" on stdin, so the upgrades start together.
_NODE = """
import sys
from scheduler.store.db import make_engine, upgrade
engine = make_engine(sys.argv[1])
engine.connect().close()
print("ready", flush=True)
sys.stdin.readline()
upgrade(engine)
"""


def test_three_nodes_starting_together_migrate_once(empty_db_url: str) -> None:
    # Issue 9: without the advisory lock two of three die on pg_type_typname_nsp_index.
    nodes = [
        subprocess.Popen([sys.executable, "-c", _NODE, empty_db_url], cwd=REPO, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        for node in nodes:
            assert node.stdout is not None and node.stdout.readline().strip() == "ready"
        for node in nodes:
            assert node.stdin is not None
            node.stdin.write("go\n")
            node.stdin.flush()
        results = [node.communicate(timeout=60) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    failed = [err for node, (_out, err) in zip(nodes, results, strict=True) if node.returncode]
    assert not failed, "\n---\n".join(failed)
    engine = make_engine(empty_db_url)
    try:
        assert current_revision(engine) == head_revision()
        assert_no_drift(engine)
    finally:
        engine.dispose()
