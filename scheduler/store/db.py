"""Engines and migrations. SQLite runs in WAL mode; PostgreSQL through psycopg 3."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from scheduler.store.tables import metadata

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 10
# pg_advisory_lock key every node takes around its migrations. Any constant works as long as
# all releases agree on it: it is "martech\x01" read as a big-endian 64-bit integer.
MIGRATION_LOCK_KEY = 0x6D61727465636801
# What autogenerate compares, shared by env.py (`alembic revision --autogenerate`) and
# schema_diff (the drift test), so both see the same differences.
COMPARE_OPTIONS: dict[str, Any] = {"compare_type": True}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers (status, reports) run while the sender writes; NORMAL is durable
    # across process crashes in WAL mode, which is the failure we guard against.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; creates the directory of a SQLite file if needed."""
    parsed = sa.engine.make_url(url)
    # hide_parameters: statement parameters (addresses, payloads with webhook URLs) never
    # appear in exception messages, which end up in logs.
    kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so that
        # `BEGIN IMMEDIATE` style locking behaves predictably under concurrent writers.
        sa.event.listen(engine, "connect", _disable_pysqlite_begin)
        sa.event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    # Without it libpq waits for the kernel's TCP timeout (minutes) on a silent host.
    kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    kwargs["pool_pre_ping"] = True
    kwargs["pool_size"] = 10
    kwargs["max_overflow"] = 20
    return sa.create_engine(url, **kwargs)


def _disable_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None


def _sqlite_begin_immediate(conn: sa.Connection) -> None:
    # Take the write lock at BEGIN: avoids deadlock-style "database is locked" failures
    # when two transactions both read then try to upgrade to writing.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` on ``engine``; concurrent callers migrate once."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn, _migration_lock(conn), conn.begin():
        # SQLite needs no lock of its own: this BEGIN is BEGIN IMMEDIATE (make_engine), so a
        # second upgrader waits for the first to commit, then finds nothing to do.
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@contextmanager
def _migration_lock(conn: sa.Connection) -> Iterator[None]:
    """On PostgreSQL, hold the migration advisory lock on ``conn`` (a session lock).

    Issue 9: nodes starting together on an empty database all ran 0001, and the losers died on
    pg_type's unique index. Behind the lock the later ones read the version table only after
    the first committed. A session lock rather than pg_advisory_xact_lock so that a future
    migration using autocommit_block (CREATE INDEX CONCURRENTLY) cannot release it midway.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    key = {"key": MIGRATION_LOCK_KEY}
    if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
        # Says why a starting node sits still: it is not hung, it waits for another's migration.
        log.info("another node is migrating the database; waiting for it to finish")
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
    conn.commit()
    try:
        yield
    finally:
        # An invalidated connection has lost its session, and the server its lock with it.
        if not conn.invalidated:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
            conn.commit()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision this code ships."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def needs_upgrade(engine: Engine) -> bool:
    """True unless the database is at this code's head (empty, behind, or from a newer release)."""
    return current_revision(engine) != head_revision()


def schema_diff(engine: Engine) -> list[Any]:
    """How the database differs from the models (tables.py), as `alembic check` reports it."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=COMPARE_OPTIONS)
        diff: list[Any] = compare_metadata(context, metadata)
        return diff
