"""Audiences, streamed: a CSV file or a SQL query, never loaded whole.

Rows come out one at a time as ``(email, variables)``. Invalid addresses are skipped and
counted (a few examples kept for the report); duplicates are dropped by the ledger's unique
constraint at materialisation, so deduplicating a million rows costs no memory here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs.newsletter.config import AudienceConfig, SegmentConfig
from scheduler.delivery.message import valid_address
from scheduler.errors import MartechError

SQL_YIELD_PER = 2000
MAX_EXAMPLES = 20
# An audience database that is down or a query that never ends must fail the run with a clear
# error, not hang it. The statement timeout applies per statement (a streamed result is fetched
# in several), so it bounds a slow query, not a long list; SQLite has no statement timeout,
# only a wait for locks.
SQL_CONNECT_TIMEOUT_S = 10
SQL_STATEMENT_TIMEOUT_S = 300.0
SQL_POOL_TIMEOUT_S = 30.0


class AudienceError(MartechError):
    """The audience cannot be read at all (missing file, no email column, bad SQL)."""

    def __init__(self, source: str, message: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass
class AudienceStats:
    rows: int = 0
    invalid: int = 0
    filtered: int = 0  # not in the segment
    examples: list[str] = field(default_factory=list)  # "line 7: 'bob@' is not an address"

    def bad(self, where: str, why: str) -> None:
        self.invalid += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {why}")


def _tags(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if not value:
        return []
    return [t.strip() for t in str(value).replace(",", "|").split("|") if t.strip()]


def in_segment(variables: dict[str, Any], segment: SegmentConfig | None) -> bool:
    if segment is None:
        return True
    tags = set(_tags(variables.get("tags")))
    if segment.tags_any and not tags.intersection(segment.tags_any):
        return False
    if segment.tags_all and not tags.issuperset(segment.tags_all):
        return False
    if segment.tags_none and tags.intersection(segment.tags_none):
        return False
    return all(str(variables.get(k, "")) == v for k, v in segment.where.items())


def normalise(address: str) -> str:
    return address.strip().lower()


def iter_csv(path: Path, audience: AudienceConfig, stats: AudienceStats
             ) -> Iterator[tuple[str, dict[str, Any], int]]:
    """``(email, variables, line)`` per valid row of a CSV file."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise AudienceError(str(path), f"cannot read audience file: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle, delimiter=audience.delimiter)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as exc:
            raise AudienceError(str(path), f"malformed CSV: {exc}", 1) from exc
        if not header or audience.email_column not in header:
            raise AudienceError(str(path), f"no {audience.email_column!r} column in the header "
                                f"(found: {', '.join(header or []) or 'nothing'})", 1)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                stats.rows += 1
                stats.bad(f"line {reader.line_num}", f"unreadable row: {exc}")
                continue
            stats.rows += 1
            raw = row.get(audience.email_column) or ""
            email = normalise(raw)
            if not valid_address(email):
                stats.bad(f"line {reader.line_num}", f"{raw!r} is not an e-mail address")
                continue
            variables = {k: v for k, v in row.items() if k is not None and k != ""}
            variables["tags"] = _tags(variables.get("tags"))
            yield email, variables, reader.line_num


def engine_options(url: str, *, statement_timeout_s: float) -> dict[str, Any]:
    """``create_engine`` keyword arguments that put timeouts on an audience database."""
    parsed = sa.engine.make_url(url)
    options: dict[str, Any] = {"pool_timeout": SQL_POOL_TIMEOUT_S}
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        existing = parsed.query.get("options")  # connect_args would replace it: keep it
        if isinstance(existing, tuple):
            existing = " ".join(existing)
        statement = f"-c statement_timeout={round(statement_timeout_s * 1000)}"
        options["connect_args"] = {
            "connect_timeout": SQL_CONNECT_TIMEOUT_S,
            "options": f"{existing} {statement}" if existing else statement}
    elif backend == "sqlite":
        options["connect_args"] = {"timeout": statement_timeout_s}
        if parsed.database in (None, "", ":memory:"):
            del options["pool_timeout"]  # a SingletonThreadPool has no timeout
    return options


def _failure(exc: sa.exc.SQLAlchemyError, statement_timeout_s: float) -> AudienceError:
    first = str(exc).splitlines()[0]
    if "statement timeout" in first:
        return AudienceError("audience.sql", f"query cancelled: it ran longer than the "
                             f"statement timeout ({statement_timeout_s:g} s)")
    return AudienceError("audience.sql", f"query failed: {type(exc).__name__}: {first}")


def iter_sql(audience: AudienceConfig, stats: AudienceStats
             ) -> Iterator[tuple[str, dict[str, Any], int]]:
    """Rows of a SELECT, streamed with a server-side cursor where the driver has one."""
    assert audience.sql is not None and audience.database is not None
    timeout_s = SQL_STATEMENT_TIMEOUT_S
    try:
        engine = sa.create_engine(audience.database,
                                  **engine_options(audience.database,
                                                   statement_timeout_s=timeout_s))
    except Exception as exc:
        raise AudienceError("audience.database", f"bad database URL: {exc}") from exc
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=SQL_YIELD_PER) \
                .execute(sa.text(audience.sql))
            keys = list(result.keys())
            if audience.email_column not in keys:
                raise AudienceError("audience.sql", f"the query returns no "
                                    f"{audience.email_column!r} column (got: {', '.join(keys)})")
            for number, row in enumerate(result, start=1):
                stats.rows += 1
                variables = {k: _plain(v) for k, v in row._mapping.items()}
                raw = str(variables.get(audience.email_column) or "")
                email = normalise(raw)
                if not valid_address(email):
                    stats.bad(f"row {number}", f"{raw!r} is not an e-mail address")
                    continue
                variables["tags"] = _tags(variables.get("tags"))
                yield email, variables, number
    except sa.exc.SQLAlchemyError as exc:
        raise _failure(exc, timeout_s) from exc
    finally:
        engine.dispose()


def _plain(value: Any) -> Any:
    """JSON-able values only: the row is stored with its delivery."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def iter_audience(audience: AudienceConfig, segment: SegmentConfig | None, base_dir: Path,
                  stats: AudienceStats) -> Iterator[tuple[str, dict[str, Any]]]:
    """Valid rows in the segment, in source order."""
    if audience.csv is not None:
        path = Path(audience.csv)
        rows = iter_csv(path if path.is_absolute() else base_dir / path, audience, stats)
    else:
        rows = iter_sql(audience, stats)
    for email, variables, _line in rows:
        if not in_segment(variables, segment):
            stats.filtered += 1
            continue
        yield email, variables
