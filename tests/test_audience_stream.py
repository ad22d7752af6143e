"""Audiences stream in bounded memory; bad rows are skipped and counted, never fatal."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.newsletter.audiences import AudienceError, AudienceStats, iter_audience
from jobs.newsletter.config import AudienceConfig, SegmentConfig


def _write_big_csv(path: Path, rows: int) -> tuple[int, int]:
    """Every 50th row invalid, every 77th a broken-quote row; returns (valid, invalid)."""
    valid = invalid = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("email,first_name,tags\n")
        for i in range(rows):
            if i % 50 == 7:
                f.write(f"user{i}-at-example.com,Bad{i},newsletter\n")
                invalid += 1
            elif i % 77 == 3:
                f.write(f"  USER{i}@Example.COM ,Ünï{i},newsletter|vip\n")
                valid += 1
            else:
                f.write(f"user{i}@example.com,Name{i},newsletter\n")
                valid += 1
    return valid, invalid


def test_100k_rows_with_bad_rows_stream_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    valid, invalid = _write_big_csv(path, 100_000)
    stats = AudienceStats()
    tracemalloc.start()
    seen = 0
    first = None
    for email, variables in iter_audience(AudienceConfig(csv=str(path)), None, tmp_path, stats):
        seen += 1
        if first is None:
            first = (email, variables)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (seen, stats.invalid, stats.rows) == (valid, invalid, 100_000)
    assert peak < 2_000_000, f"peak {peak} bytes: the audience is not streamed"
    assert first == ("user0@example.com", {"email": "user0@example.com", "first_name": "Name0",
                                           "tags": ["newsletter"]})
    assert len(stats.examples) == 20 and "is not an e-mail address" in stats.examples[0]


def test_segment_filters_by_tags_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("email,tags,country\na@x.example,newsletter|vip,de\nb@x.example,newsletter,fr\n"
                    "c@x.example,product,de\n", encoding="utf-8")
    stats = AudienceStats()
    seg = SegmentConfig(tags_any=["newsletter"], where={"country": "de"})
    got = [e for e, _v in iter_audience(AudienceConfig(csv="a.csv"), seg, tmp_path, stats)]
    assert got == ["a@x.example"] and stats.filtered == 2


def test_missing_email_column_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("mail,name\nx@y.example,X\n", encoding="utf-8")
    with pytest.raises(AudienceError) as err:
        list(iter_audience(AudienceConfig(csv="a.csv"), None, tmp_path, AudienceStats()))
    assert err.value.line == 1 and "'email'" in err.value.message


def test_sql_audience_streams_from_the_client_database(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE contacts (email TEXT, first_name TEXT, active INT)"))
        conn.execute(sa.text("INSERT INTO contacts VALUES (:e, :n, :a)"),
                     [{"e": f"c{i}@example.com" if i % 10 != 1 else "broken", "n": f"N{i}",
                       "a": i % 2} for i in range(5000)])
    engine.dispose()
    stats = AudienceStats()
    audience = AudienceConfig(sql="SELECT email, first_name FROM contacts WHERE active = 1 "
                                  "ORDER BY first_name", database=db_url)
    rows = list(iter_audience(audience, None, Path("."), stats))
    assert stats.rows == 2500 and stats.invalid == 500
    assert len(rows) == 2000 and rows[0][1]["first_name"].startswith("N")
    bad = AudienceConfig(sql="SELECT nope FROM contacts", database=db_url)
    with pytest.raises(AudienceError):
        list(iter_audience(bad, None, Path("."), AudienceStats()))
