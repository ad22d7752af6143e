"""Shared fixtures: databases (SQLite always, PostgreSQL when configured), contexts, clocks."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scheduler.store.db import make_engine, upgrade

PG_URL = os.environ.get("MARTECH_TEST_DATABASE_URL")
REPO = Path(__file__).resolve().parent.parent

DB_PARAMS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="MARTECH_TEST_DATABASE_URL is not set; PostgreSQL tests skipped"
        ),
    ),
]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/martech.db"


def _pg_schema_url() -> tuple[str, str]:
    """A fresh PostgreSQL schema per test, so tests never see each other's rows."""
    assert PG_URL
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:  # fails loudly when the server is unreachable
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def _drop_pg_schema(schema: str) -> None:
    assert PG_URL
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=DB_PARAMS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL: SQLite file, and PostgreSQL (a schema of its own) when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/martech.db"
        return
    url, schema = _pg_schema_url()
    try:
        yield url
    finally:
        _drop_pg_schema(schema)


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A migrated database URL: SQLite file, and PostgreSQL when configured."""
    engine = make_engine(empty_db_url)
    upgrade(engine)
    engine.dispose()
    return empty_db_url


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def t0() -> datetime:
    return datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI installs its own log handler on the root logger; put pytest's back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
