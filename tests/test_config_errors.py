"""Bad config: every problem names the file, the field and (where YAML gives it) the line."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from martech.compose import build_registry
from scheduler.errors import ConfigError, Problem
from scheduler.service import load_and_validate
from scheduler.settings import Settings

REPO = Path(__file__).resolve().parent.parent

NEWSLETTER = """\
name: news
kind: newsletter
schedule: {cron: "0 9 * * MON", timezone: Europe/Berlin, misfire_grace: 2h}
audience: {csv: audiences/people.csv}
from: "Acme <news@acme.example>"
subject: "Hello {{ first_name | default('friend') }}"
template: news
requires: [website]
tags: [newsletter]
"""

CHECKS = """\
checks:
  website: {http: {url: "http://127.0.0.1:9/", status: [200]}}
guards:
  - {check: website, pauses: {tags: [newsletter]}}
"""

REPORTS = """\
reports:
  - name: weekly-report
    schedule: {cron: "0 8 * * MON", timezone: Europe/Berlin}
    campaigns: [news]
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A small valid config (plus its templates) that each test breaks in one place."""
    root = tmp_path / "config"
    files = {
        "campaigns/news.yaml": NEWSLETTER,
        "checks.yaml": CHECKS,
        "reports.yaml": REPORTS,
        "audiences/people.csv": "email,first_name,tags\nann@example.com,Ann,newsletter\n",
    }
    for rel, text in files.items():
        write(root, rel, text)
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "news.html").write_text("<p>Hi {{ first_name }}</p>\n")
    (templates / "news.txt").write_text("Hi {{ first_name }}\n")
    shutil.copy(REPO / "templates" / "email" / "report.html", templates / "report.html")
    return root


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def settings_for(root: Path) -> Settings:
    return Settings(config_dir=root, templates_dir=root.parent / "templates",
                    var_dir=root.parent / "var", database_url="sqlite:///unused.db",
                    _env_file=None)  # type: ignore[call-arg]


def problems(root: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_and_validate(settings_for(root), build_registry())
    assert info.value.problems
    return info.value.problems


def find(found: list[Problem], file_end: str, field: str) -> Problem:
    """The problem about ``field`` in the file ending with ``file_end``."""
    for problem in found:
        if problem.file.endswith(file_end) and problem.field == field:
            return problem
    raise AssertionError(f"no problem for {file_end} {field!r} in:\n"
                         + "\n".join(map(str, found)))


def edit(root: Path, rel: str, change: Callable[[str], str]) -> None:
    path = root / rel
    path.write_text(change(path.read_text()))


def test_the_base_config_is_valid(cfg: Path) -> None:
    config = load_and_validate(settings_for(cfg), build_registry())
    assert set(config.campaigns) == {"news", "weekly-report"}


# -- YAML and schema -------------------------------------------------------------------------

def test_yaml_syntax_error_has_file_and_line(cfg: Path) -> None:
    write(cfg, "campaigns/news.yaml", NEWSLETTER + "tags: [a, b\nname: x\n")
    found = problems(cfg)
    problem = find(found, "campaigns/news.yaml", "")
    assert "YAML syntax error" in problem.message
    assert problem.line in (11, 12)
    assert str(problem).startswith(f"{cfg}/campaigns/news.yaml:{problem.line}: ")


def test_unknown_key(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("subject:", "subjct:"))
    found = problems(cfg)
    problem = find(found, "campaigns/news.yaml", "subjct")
    assert problem.line == 6 and "unknown key" in problem.message
    # ...and the real field is then missing, on the mapping's line.
    assert find(found, "campaigns/news.yaml", "subject").message == "required field is missing"


def test_unknown_nested_key(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml",
         lambda t: t.replace("misfire_grace: 2h", "misfire_grace: 2h, timezon: UTC"))
    problem = find(problems(cfg), "campaigns/news.yaml", "schedule.timezon")
    assert problem.line == 3 and "unknown key" in problem.message


def test_wrong_type(cfg: Path) -> None:
    write(cfg, "campaigns/news.yaml", NEWSLETTER + "send:\n  connections: many\n")
    problem = find(problems(cfg), "campaigns/news.yaml", "send.connections")
    assert problem.line == 11 and "integer" in problem.message


def test_value_out_of_range(cfg: Path) -> None:
    write(cfg, "campaigns/news.yaml", NEWSLETTER + "send:\n  connections: 0\n")
    problem = find(problems(cfg), "campaigns/news.yaml", "send.connections")
    assert problem.line == 11 and "greater than or equal to 1" in problem.message


def test_bad_cron(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace('"0 9 * * MON"', '"0 25 * * MON"'))
    problem = find(problems(cfg), "campaigns/news.yaml", "schedule.cron")
    assert problem.line == 3
    assert "bad cron expression" in problem.message and "hour" in problem.message


def test_unknown_timezone(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("Europe/Berlin", "Europe/Berlinn"))
    problem = find(problems(cfg), "campaigns/news.yaml", "schedule.timezone")
    assert problem.line == 3 and "unknown timezone 'Europe/Berlinn'" in problem.message


def test_bad_duration(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml",
         lambda t: t.replace("misfire_grace: 2h", "misfire_grace: 2hours"))
    problem = find(problems(cfg), "campaigns/news.yaml", "schedule.misfire_grace")
    assert problem.line == 3 and "not a duration" in problem.message


def test_missing_required_field(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("template: news\n", ""))
    problem = find(problems(cfg), "campaigns/news.yaml", "template")
    assert problem.message == "required field is missing"
    assert problem.line == 1  # the campaign mapping starts there


def test_two_schedule_kinds_at_once(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("misfire_grace: 2h", "every: 1h"))
    problem = find(problems(cfg), "campaigns/news.yaml", "schedule")
    assert problem.line == 3 and "exactly one of cron, every, at" in problem.message


def test_bad_one_off_date(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml",
         lambda t: t.replace('cron: "0 9 * * MON"', 'at: "next friday"'))
    problem = find(problems(cfg), "campaigns/news.yaml", "schedule.at")
    assert problem.line == 3 and "not a date-time" in problem.message


def test_unknown_kind(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("kind: newsletter", "kind: sms"))
    problem = find(problems(cfg), "campaigns/news.yaml", "kind")
    assert problem.line == 2 and "newsletter, post_reminder" in problem.message


def test_missing_kind(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("kind: newsletter\n", ""))
    problem = find(problems(cfg), "campaigns/news.yaml", "kind")
    assert "kind is missing" in problem.message


def test_bad_campaign_name(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("name: news", "name: Weekly News!"))
    problem = find(problems(cfg), "campaigns/news.yaml", "name")
    assert problem.line == 1 and "not a valid name" in problem.message


def test_not_a_mapping(cfg: Path) -> None:
    write(cfg, "campaigns/other.yaml", "just a sentence\n")
    problem = find(problems(cfg), "campaigns/other.yaml", "")
    assert "expected a campaign" in problem.message


def test_second_campaign_in_a_list_is_located(cfg: Path) -> None:
    doc = "campaigns:\n" + textwrap.indent("- " + NEWSLETTER.replace("\n", "\n  ", 8), "  ")
    doc += "  - name: news2\n    kind: newsletter\n    schedule: {every: 0s}\n"
    write(cfg, "campaigns/news.yaml", doc)
    found = problems(cfg)
    problem = find(found, "campaigns/news.yaml", "campaigns.1.schedule")
    assert problem.line == 13 and "at least 1s" in problem.message


# -- references across files -----------------------------------------------------------------

def test_duplicate_campaign_name(cfg: Path) -> None:
    write(cfg, "campaigns/zz-copy.yaml", NEWSLETTER)
    problem = find(problems(cfg), "campaigns/zz-copy.yaml", "name")
    assert problem.line == 1
    assert "duplicate campaign name 'news'" in problem.message
    assert "campaigns/news.yaml:1" in problem.message


def test_unknown_check_required(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("[website]", "[website, webiste]"))
    problem = find(problems(cfg), "campaigns/news.yaml", "requires")
    assert problem.line == 8
    assert "unknown check 'webiste'" in problem.message and "known: website" in problem.message


def test_unknown_guard_check(cfg: Path) -> None:
    edit(cfg, "checks.yaml", lambda t: t.replace("{check: website", "{check: smtp-relay"))
    problem = find(problems(cfg), "checks.yaml", "guards.0.check")
    assert problem.line == 4 and "unknown check 'smtp-relay'" in problem.message


def test_guard_names_unknown_campaign(cfg: Path) -> None:
    edit(cfg, "checks.yaml", lambda t: t.replace("{tags: [newsletter]}", "{names: [newz]}"))
    problem = find(problems(cfg), "checks.yaml", "guards.0.pauses.names")
    assert problem.line == 4 and "unknown campaign 'newz'" in problem.message


def test_report_names_unknown_campaign(cfg: Path) -> None:
    edit(cfg, "reports.yaml", lambda t: t.replace("campaigns: [news]", "campaigns: [nws]"))
    problem = find(problems(cfg), "reports.yaml", "campaigns")
    assert problem.line == 4 and "unknown campaign 'nws'" in problem.message


def test_check_with_two_probes(cfg: Path) -> None:
    edit(cfg, "checks.yaml", lambda t: t.replace(
        'status: [200]}}', 'status: [200]}, tcp: {host: 127.0.0.1, port: 9}}'))
    problem = find(problems(cfg), "checks.yaml", "checks.website")
    assert problem.line == 2 and "exactly one of http, tcp" in problem.message


def test_maintenance_window_without_end(cfg: Path) -> None:
    window = 'maintenance:\n  - {name: db, start: "2026-12-01 22:00"}\n'
    write(cfg, "checks.yaml", CHECKS + window)
    problem = find(problems(cfg), "checks.yaml", "maintenance.0")
    assert problem.line == 6 and "needs end or duration" in problem.message


def test_env_var_not_set(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARTECH_TEST_HOOK_URL", raising=False)
    write(cfg, "checks.yaml", CHECKS + "alerts:\n  - {webhook: \"${MARTECH_TEST_HOOK_URL}\"}\n")
    problem = find(problems(cfg), "checks.yaml", "alerts.0.webhook")
    assert problem.line == 6
    assert "environment variable MARTECH_TEST_HOOK_URL is not set" in problem.message


def test_env_var_set_is_substituted(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARTECH_TEST_HOOK_URL", "http://127.0.0.1:9/hook")
    write(cfg, "checks.yaml", CHECKS + "alerts:\n  - {webhook: \"${MARTECH_TEST_HOOK_URL}\"}\n")
    config = load_and_validate(settings_for(cfg), build_registry())
    assert config.checks.alerts[0].webhook == "http://127.0.0.1:9/hook"


def test_every_problem_is_reported_at_once(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("Europe/Berlin", "Mars/Olympus"))
    edit(cfg, "checks.yaml", lambda t: t.replace("{check: website", "{check: nope"))
    found = problems(cfg)
    find(found, "campaigns/news.yaml", "schedule.timezone")
    find(found, "checks.yaml", "guards.0.check")


# -- per-kind checks: templates and audiences (jobs/newsletter.py validate) -------------------

def test_missing_template(cfg: Path) -> None:
    (cfg.parent / "templates" / "news.html").unlink()
    (cfg.parent / "templates" / "news.txt").unlink()
    problem = find(problems(cfg), "campaigns/news.yaml", "template")
    assert "news" in problem.message


def test_template_syntax_error(cfg: Path) -> None:
    (cfg.parent / "templates" / "news.html").write_text("<p>\n{% if first_name %}Hi</p>\n")
    # The problem is in the template file itself, so that is the file (and line) named.
    problem = find(problems(cfg), "templates/news.html", "template")
    assert problem.line in (2, 3) and "endif" in problem.message


def test_subject_template_syntax_error(cfg: Path) -> None:
    edit(cfg, "campaigns/news.yaml", lambda t: t.replace("| default('friend') }}", "| }}"))
    problem = find(problems(cfg), "campaigns/news.yaml", "subject")
    assert problem.line == 6


def test_undefined_variable_in_template(cfg: Path) -> None:
    (cfg.parent / "templates" / "news.html").write_text("<p>{{ article.title }}</p>\n")
    problem = find(problems(cfg), "templates/news.html", "template")
    assert problem.line == 1 and "'article' is undefined" in problem.message


def test_unreadable_audience(cfg: Path) -> None:
    (cfg / "audiences" / "people.csv").unlink()
    problem = find(problems(cfg), "audiences/people.csv", "audience")
    assert "cannot read audience file" in problem.message


def test_missing_report_template(cfg: Path) -> None:
    (cfg.parent / "templates" / "report.html").unlink()
    problem = find(problems(cfg), "reports.yaml", "formats")
    assert problem.line == 2 and "report.html not found" in problem.message


def test_duplicate_yaml_key(cfg: Path) -> None:
    write(cfg, "campaigns/news.yaml", NEWSLETTER + "tags: [product]\n")
    problem = find(problems(cfg), "campaigns/news.yaml", "tags")
    assert problem.line == 10 and "duplicate key (first on line 9)" in problem.message
