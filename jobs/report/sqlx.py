"""The few SQL expressions that differ between SQLite and PostgreSQL, for the aggregates.

Timestamps are naive UTC text on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``, compared as text, so
a bucket start must be written in exactly that shape) and ``timestamptz`` on PostgreSQL.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

# Response-time histogram: bucket b holds latencies in [1.1^b - 1, 1.1^(b+1) - 1) ms, a
# resolution of 10% that sums across hours and days.
LATENCY_BASE = 1.1


def latency_bucket(latency_ms: float) -> int:
    return math.floor(math.log(max(latency_ms, 0.0) + 1.0) / math.log(LATENCY_BASE))


def bucket_upper_ms(bucket: int) -> float:
    return float(LATENCY_BASE ** (bucket + 1) - 1.0)


def latency_bucket_sql(col: Any) -> Any:
    return sa.cast(sa.func.floor(sa.func.ln(col + 1.0) / math.log(LATENCY_BASE)), sa.Integer)


def truncate(col: Any, grain: str, dialect: str) -> Any:
    """The start of the hour/day ``col`` falls in, as a value comparable with stored ones."""
    if dialect == "sqlite":
        # The stored text cut and padded, not strftime(): no date parsing per row (a third
        # of the time of the ledger's one pass over a million deliveries).
        if grain == "hour":
            return sa.func.substr(col, 1, 13).concat(":00:00.000000")
        return sa.func.substr(col, 1, 10).concat(" 00:00:00.000000")
    utc_naive = sa.func.timezone("UTC", col)
    return sa.func.timezone("UTC", sa.func.date_trunc(grain, utc_naive))


def seconds_between(start: Any, end: Any, dialect: str) -> Any:
    if dialect == "sqlite":
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
    return sa.extract("epoch", end - start)


def least(a: Any, b: Any, dialect: str) -> Any:
    return sa.func.min(a, b) if dialect == "sqlite" else sa.func.least(a, b)
