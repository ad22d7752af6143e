"""``martech validate`` reports newsletter problems as file:line: field: message."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from jobs.newsletter.kind import NewsletterJob, send_run
from martech.compose import load_config
from scheduler.errors import Problem
from scheduler.store.db import make_engine, upgrade
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import SmtpServer


def _problems(root: Path) -> list[Problem]:
    settings = settings_for(root, f"sqlite:///{root}/m.db")
    config = load_config(settings.config_dir)
    return NewsletterJob().validate(config.campaigns["news"], config, settings)


def test_valid_campaign_has_no_problems(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"])
    assert _problems(tmp_path) == []


def test_missing_template(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"])
    (tmp_path / "templates" / "news.html").unlink()
    [problem] = _problems(tmp_path)
    assert problem.field == "template" and "template not found" in problem.message
    assert problem.file.endswith("news.yaml") and problem.line is not None


def test_template_syntax_error_with_line(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"], html="<p>a</p>\n<p>{% if x %}</p>\n")
    [problem] = _problems(tmp_path)
    assert problem.file.endswith("news.html") and problem.line == 2
    assert "syntax error" in problem.message


def test_undefined_variable_against_first_audience_row(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"],
                 html="<p>{{ first_name }}</p>\n<p>{{ last_name }}</p>\n")
    [problem] = _problems(tmp_path)
    assert problem.file.endswith("news.html") and problem.line == 2
    assert "last_name" in problem.message and "undefined" in problem.message


def test_undefined_variable_in_subject(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"], subject="Hi {{ nickname }}")
    [problem] = _problems(tmp_path)
    assert problem.field == "subject" and "nickname" in problem.message


@pytest.mark.parametrize("csv_text, expected", [
    ("mail,first_name\na@example.com,A\n", "no 'email' column"),
    (None, "cannot read audience file"),
])
def test_bad_audience_file(tmp_path: Path, csv_text: str | None, expected: str) -> None:
    write_config(tmp_path, csv_text=csv_text or "email\n")
    if csv_text is None:
        (tmp_path / "config" / "audiences" / "list.csv").unlink()
    [problem] = _problems(tmp_path)
    assert problem.field == "audience" and expected in problem.message
    assert problem.file.endswith("list.csv")


def test_bad_context_file(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"], extra={"context_file": "content/c.yaml"})
    (tmp_path / "config" / "content").mkdir()
    (tmp_path / "config" / "content" / "c.yaml").write_text("a: [1, 2\nb: 3\n")
    [problem] = _problems(tmp_path)
    assert problem.field == "context_file" and problem.file.endswith("c.yaml")
    assert "invalid YAML" in problem.message and problem.line is not None


def test_bad_from_and_reply_to(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"],
                 extra={"from": "Acme <not an address>", "reply_to": "also@bad@example.com"})
    problems = _problems(tmp_path)
    assert sorted(p.field for p in problems) == ["from", "reply_to"]
    assert all(p.file.endswith("news.yaml") and p.line for p in problems)


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: x@evil.example", "Hi {{ first_name }}\nBcc: x"],
                         ids=["static", "rendered"])
def test_a_line_break_in_the_subject_fails_validate(tmp_path: Path, subject: str) -> None:
    write_config(tmp_path, rows=["a@example.com"], subject=subject)
    [problem] = _problems(tmp_path)
    assert problem.field == "subject" and problem.file.endswith("news.yaml")
    assert problem.line is not None and "line break" in problem.message


def test_an_overlong_or_unencoded_header_fails_validate(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"], extra={"from": f"{'N' * 1200} <n@acme.example>"})
    problems = _problems(tmp_path)
    assert [p.field for p in problems] == ["from"]  # the built message, as the relay sees it
    assert "header From: a line of" in problems[0].message and "at most 998" in problems[0].message


async def test_the_send_refuses_a_static_subject_with_a_line_break_once(
        tmp_path: Path, t0: datetime) -> None:
    write_config(tmp_path, rows=["a@example.com", "b@example.com"],
                 subject="Hi\r\nBcc: x@evil.example")
    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(make_engine(url))
    with SmtpServer() as smtp:
        ctx = context_for(settings_for(tmp_path, url, port=smtp.port))
        result = await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0),
                                on_pause="return")
    assert result.status == "failed"  # not "done" with every recipient failed
    assert "header 'Subject' contains a line break" in (result.detail or "")
    assert smtp.received == []
