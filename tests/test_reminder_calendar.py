"""Content calendars (CSV and YAML): posts, bad rows reported by file and line; the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.reminders.calendar import campaign_posts, load_calendar
from jobs.reminders.kind import register
from jobs.reminders.plan import lead_text
from martech.compose import load_config
from scheduler.kinds import Registry
from scheduler.settings import Settings
from tests.conftest import REPO

CSV_GOOD_AND_BAD = """\
date,time,network,copy,link,id
2026-11-28,09:00,instagram,"Day 2 — link in bio",https://acme.example/bf,
2026-11-31,09:00,linkedin,"Bad date",https://acme.example/bf,
2026-12-01,25:00,x,"Bad time",,
2026-12-02,10:00,,"No network",,
2026-12-03,10:00,x,,https://acme.example/,
2026-12-04,10:00,x,"Broken {{ link ",https://acme.example/,
2026-12-05,10:00,x,"Not a URL",ftp://acme.example/,
2026-12-06,10:00,linkedin|x,"Multi
line copy: {{ link }}",https://acme.example/c,cyber
2026-12-07,10:00,x,"Same id twice",,cyber
"""


def test_csv_calendar_reports_each_bad_row_by_line(tmp_path: Path) -> None:
    path = tmp_path / "cal.csv"
    path.write_text(CSV_GOOD_AND_BAD, encoding="utf-8")
    posts, problems = load_calendar(path, "content/cal.csv", "Europe/Berlin")
    found = {(p.line, p.field) for p in problems}
    assert found == {(3, "date"), (4, "time"), (5, "network"), (6, "copy"), (7, "copy"),
                     (8, "link")}
    assert all(p.file == "content/cal.csv" for p in problems)
    assert "expected YYYY-MM-DD" in str(next(p for p in problems if p.field == "date"))
    assert [p.id for p in posts] == ["20261128-0900-instagram", "cyber", "cyber"]
    multi = posts[1]
    assert multi.networks == ("linkedin", "x") and multi.source == "content/cal.csv:9"
    assert posts[2].source == "content/cal.csv:11"  # the record after a two-line cell


def test_yaml_calendar_and_duplicate_ids_in_a_campaign(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    (cfg / "campaigns").mkdir(parents=True)
    (cfg / "content").mkdir()
    (cfg / "content" / "posts.yaml").write_text(
        "- {date: 2026-11-28, time: '09:00', network: x, copy: 'ok {{ link }}', "
        "link: 'https://acme.example/a'}\n"
        "- {date: 2026-11-29, time: '9h', network: x, copy: 'bad time'}\n"
        "- {at: '2026-11-30 10:00', network: facebook, copy: 'fine', id: dup}\n"
        "- {at: '2026-12-01 10:00', network: facebook, copy: 'again', id: dup}\n"
        "- {date: 2026-12-02, time: '10:00', network: x, copy: 'x', colour: red}\n",
        encoding="utf-8")
    (cfg / "campaigns" / "c.yaml").write_text(
        "name: c\nkind: post_reminder\ncalendar: content/posts.yaml\n"
        "notify: [{email: a@acme.example}]\n", encoding="utf-8")
    config = load_config(cfg)
    posts, problems = campaign_posts(config.campaigns["c"], config)
    by_line = {(p.line, p.field): p.message for p in problems}
    assert set(by_line) == {(2, "time"), (4, "id"), (5, "colour")}
    assert "duplicate post id 'dup'" in by_line[(4, "id")]
    assert [p.id for p in posts] == ["20261128-0900-x", "dup"]
    # The registry's validate reports the same problems (so `martech validate` fails).
    registry = Registry()
    register(registry)
    settings = Settings(config_dir=cfg, templates_dir=REPO / "templates" / "email")
    assert len(registry.validate(config, settings)) == 3


def test_example_config_is_valid_and_has_calendar_posts() -> None:
    config = load_config(REPO / "config")
    registry = Registry()
    register(registry)
    settings = Settings(config_dir=REPO / "config", templates_dir=REPO / "templates" / "email")
    assert registry.validate(config, settings) == []
    specs = [k for k in registry.specs(config) if k.startswith("black-friday-posts/")]
    assert "black-friday-posts/cyber-monday/1h" in specs
    assert "black-friday-posts/tuesday-tips/0m" in specs


@pytest.mark.parametrize(("seconds", "text"), [(0, "0m"), (86400, "1d"), (3600, "1h"),
                                                (5400, "90m"), (45, "45s")])
def test_lead_text(seconds: int, text: str) -> None:
    from datetime import timedelta

    assert lead_text(timedelta(seconds=seconds)) == text


def test_cli_posted_and_calendar(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from martech.cli import main

    soon = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%d 10:00")
    cfg = tmp_path / "config"
    (cfg / "campaigns").mkdir(parents=True)
    (cfg / "campaigns" / "social.yaml").write_text(
        "name: social\nkind: post_reminder\nposts:\n"
        f"  - {{id: launch, at: '{soon}', network: x, copy: 'Launch!'}}\n"
        f"  - {{at: '{soon}', network: linkedin, copy: 'Launch!'}}\n"
        "remind_before: [1d, 1h]\nnotify: [{email: a@acme.example}]\n", encoding="utf-8")
    (cfg / "campaigns" / "news.yaml").write_text(
        "name: news\nkind: report\nschedule: {cron: '0 8 * * MON'}\n", encoding="utf-8")
    env = {"MARTECH_CONFIG_DIR": str(cfg),
           "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
           "MARTECH_TEMPLATES_DIR": str(REPO / "templates" / "email"),
           "MARTECH_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "160"}
    runner = CliRunner()
    result = runner.invoke(main, ["posted", "social", "--post", "launch"], env=env)
    assert result.exit_code == 0, result.output
    assert "launch marked as posted" in result.output
    again = runner.invoke(main, ["posted", "social", "--post", "launch"], env=env)
    assert "already marked as posted" in again.output
    # Without --post: two posts share the slot, one is done, so the other one is meant.
    nearest = runner.invoke(main, ["posted", "social"], env=env)
    assert nearest.exit_code == 0 and "-linkedin marked as posted" in nearest.output
    unknown = runner.invoke(main, ["posted", "social", "--post", "nope"], env=env)
    assert unknown.exit_code == 1 and "no post 'nope'" in unknown.output
    assert "Traceback" not in unknown.output
    wrong_kind = runner.invoke(main, ["posted", "news"], env=env)
    assert wrong_kind.exit_code == 1 and "not a post_reminder" in wrong_kind.output
    cal = runner.invoke(main, ["calendar", "--days", "7"], env=env)
    assert cal.exit_code == 0, cal.output
    assert "launch" in cal.output and cal.output.count("done") == 2


def test_csv_line_numbers_survive_bom_crlf_blank_lines_and_multiline_cells(
        tmp_path: Path) -> None:
    lines = ["\ufeffdate,time,network,copy,id", "", "2026-11-28,09:00,x,Good,a", "", "",
             '2026-11-29,09:00,x,"two', 'lines",b', "", "2026-11-31,09:00,x,Bad date,c",
             "2026-12-01,09:00,x,Too,many,cells", ""]
    path = tmp_path / "cal.csv"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    posts, problems = load_calendar(path, "cal.csv", "Europe/Berlin")
    assert {(p.line, p.field) for p in problems} == {(9, "date"), (10, "")}
    assert [(p.id, p.source) for p in posts] == [("a", "cal.csv:3"), ("b", "cal.csv:6")]
    assert posts[1].copy == "two\r\nlines"


def test_csv_without_header_columns_is_reported_on_the_header_line(tmp_path: Path) -> None:
    path = tmp_path / "cal.csv"
    path.write_text("\n\ndate,time,copy\n2026-11-28,09:00,Hi\n", encoding="utf-8")
    posts, problems = load_calendar(path, "cal.csv", "UTC")
    assert posts == [] and [(p.line, p.field) for p in problems] == [(3, "network")]
