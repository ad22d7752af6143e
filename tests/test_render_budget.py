"""Every render has a work budget; a runaway template fails as a template error naming the file
and line, and the service keeps answering /healthz and sending other campaigns meanwhile."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from jobs.newsletter import ledger
from jobs.newsletter.kind import send_run
from jobs.reminders.render import ReminderView, render_email
from jobs.report.data import ReportData
from jobs.report.render import render_html
from martech.cli import main
from martech.compose import build_registry, load_config
from scheduler.context import ServiceContext
from scheduler.delivery import budget
from scheduler.delivery.budget import TemplateBudgetExceeded
from scheduler.delivery.render import make_environment
from scheduler.http_app import run_http_app
from scheduler.store import heartbeats, pauses
from tests.conftest import REPO
from tests.newsletter_fixtures import SECRET, claim_run, settings_for, write_config
from tests.smtp_server import SmtpServer

BUDGET_MS = 200
NESTED = """<html><body>
<p>Hello {{ first_name }}</p>
{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}
</body></html>
"""
# A per-recipient value through a filter: the template cannot be rendered once for the run
# (fastrender), so it runs per recipient, in the send's batch.
NESTED_PER_RECIPIENT = NESTED.replace(".{% endfor %}", "{{ first_name | upper }}{% endfor %}")


@pytest.fixture
def small_budget() -> Iterator[None]:
    before = budget.default_ms()
    budget.configure(BUDGET_MS)
    yield
    budget.configure(before)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(60) }}",
    "{{ 'x' * 100000000 }}",
    "{{ 7 ** 100000000 }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ 'x' | center(1000000000) }}",
    "{{ '%999999999d' | format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{% set s = 'x' * 100000 %}{{ s | replace('x', s) }}",
    "{{ range(3) | batch(1000000000, 'x') | list }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}",
    "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}",
    "{{ lipsum(1000000) }}",
], ids=["nested-loops", "recursion", "repeat", "power", "ljust", "center", "printf-width",
        "format-width", "replace", "batch", "concat-doubling", "list-doubling", "lipsum"])
def test_runaway_templates_fail_within_the_budget(small_budget: None, source: str) -> None:
    template = make_environment(None, html=True).from_string("line one\n" + source)
    started = time.perf_counter()
    with pytest.raises(TemplateBudgetExceeded) as err:
        template.render()
    assert time.perf_counter() - started < BUDGET_MS / 1000 * 5
    assert err.value.line == 2 and err.value.template == "<template>"


def test_ordinary_templates_are_untouched(small_budget: None) -> None:
    source = ("{% for a in items %}{{ loop.index }}/{{ loop.length }}:{{ a ~ '!' }} {% endfor %}"
              "{{ '{:,}'.format(1234567) }} {{ '-' * 20 }} {{ 2 ** 64 }} {{ '%05.1f'|format(3) }}"
              "{{ 'ab'|replace('a', 'c') }}{{ 'x'|center(5) }}{{ [1] + [2] }}")
    out = make_environment(None, html=False).from_string(source).render(items=["p", "q"])
    assert out == ("1/2:p! 2/2:q! 1,234,567 -------------------- 18446744073709551616 003.0"
                   "cb  x  [1, 2]")


def _cli_env(root: Path) -> dict[str, str]:
    return {"MARTECH_CONFIG_DIR": str(root / "config"),
            "MARTECH_TEMPLATES_DIR": str(root / "templates"), "MARTECH_VAR_DIR": str(root / "var"),
            "MARTECH_DATABASE_URL": f"sqlite:///{root}/m.db", "MARTECH_SECRET_KEY": SECRET,
            "MARTECH_RENDER_BUDGET_MS": str(BUDGET_MS)}


@pytest.mark.parametrize("html", [NESTED, NESTED_PER_RECIPIENT], ids=["shared", "per-recipient"])
@pytest.mark.parametrize("command", ["validate", "preview"])
def test_validate_and_preview_return_with_the_file_and_line(tmp_path: Path, html: str,
                                                            command: str) -> None:
    write_config(tmp_path, rows=["ann@example.com"], html=html)
    args = ["validate"] if command == "validate" else ["preview", "news"]
    started = time.perf_counter()
    result = CliRunner().invoke(main, args, env=_cli_env(tmp_path))
    assert time.perf_counter() - started < 10  # it never returned before
    assert result.exit_code == 1, result.output
    assert "news.html:3: " in result.output
    assert "render budget of 200 ms" in result.output
    assert "Traceback" not in result.output


def _second_campaign(config: Path) -> None:
    good = yaml.safe_load((config / "campaigns" / "news.yaml").read_text())
    good.update(name="good", template="good")
    (config / "campaigns" / "good.yaml").write_text(yaml.safe_dump(good))
    (config.parent / "templates" / "good.html").write_text(
        "<html><body><p>Hi {{ first_name }}</p></body></html>\n")


async def _poll_healthz(url: str, stop: asyncio.Event) -> list[tuple[int, float]]:
    answers = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(url + "/healthz") as resp:
                answers.append((resp.status, time.perf_counter() - started))
            await asyncio.sleep(0.02)  # a client's pace, not a clock
    return answers


@pytest.mark.parametrize("html", [NESTED, NESTED_PER_RECIPIENT], ids=["shared", "per-recipient"])
async def test_a_runaway_send_leaves_healthz_and_other_campaigns_running(
        tmp_path: Path, db: Engine, t0: datetime, html: str) -> None:
    rows = [f"r{i}@example.com" for i in range(5)]
    config = write_config(tmp_path, rows=rows, html=html)
    _second_campaign(config)
    (config / "checks.yaml").write_text("checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n")
    with SmtpServer() as smtp:
        settings = settings_for(tmp_path, db.url.render_as_string(hide_password=False),
                                port=smtp.port, http_port=0, render_budget_ms=BUDGET_MS)
        ctx = ServiceContext(settings, load_config(config), db)
        with ctx.begin() as conn:
            heartbeats.beat(conn, ctx.node, "service", ctx.clock.now())
        app = asyncio.create_task(run_http_app(ctx, build_registry().http_routes))
        while "http_port" not in ctx.extras:  # a real bind
            assert not app.done(), app.exception()
            await asyncio.sleep(0.01)
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll_healthz(f"http://127.0.0.1:{ctx.extras['http_port']}",
                                                   stop))
        await asyncio.sleep(0.1)  # the poller is answering before the runs start
        bad_run = claim_run(ctx, t0)
        started = time.perf_counter()
        bad, good = await asyncio.gather(
            send_run(ctx, ctx.config.campaigns["news"], bad_run, on_pause="return"),
            send_run(ctx, ctx.config.campaigns["good"], claim_run(ctx, t0, "good"),
                     on_pause="return"))
        elapsed = time.perf_counter() - started
        stop.set()
        answers = await poller
        ctx.stopping.set()
        await app
    assert good.status == "done" and good.stats["sent"] == 5
    assert elapsed < 10
    assert answers and all(status == 200 for status, _s in answers)
    assert max(s for _status, s in answers) < 1.0, answers
    with ctx.begin() as conn:
        paused = [(p.reason, p.detail) for p in pauses.reasons(conn, "news")]
        statuses = ledger.counts(conn, bad_run)
    if html is NESTED:  # the shared part is rendered once: the run fails before sending
        assert bad.status == "failed"
        assert "news.html:3: the template exceeded its render budget" in (bad.detail or "")
        assert paused == []
    else:  # per recipient: three over budget in a row pause the campaign, the rest wait
        assert bad.status == "held"
        [(reason, detail)] = paused
        assert reason == pauses.ERROR_BUDGET
        assert "3 renders in a row: news.html:3: the template exceeded" in (detail or "")
        assert statuses == {"failed": 3, "pending": 2}
    assert [m.rcpt_tos[0] for m in smtp.received if "news" in m.parsed()["X-Martech-Campaign"]
            ] == []


def test_reminder_and_report_renders_are_budgeted(small_budget: None, tmp_path: Path) -> None:
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    (tmp_path / "post-reminder.txt").write_text("Post {{ campaign }}\n" + loops)
    (tmp_path / "post-reminder.html").write_text("<p>ok</p>")
    (tmp_path / "report.html").write_text("<h1>{{ data.name }}</h1>\n" + loops)
    view = ReminderView(campaign="c", post_id="p", post_at_local="", lead_text="1h",
                        due_text="in 1 hour", networks=[], link=None, link_status=None,
                        link_broken=False, image=None, notes=None, held_note=None, done_hint="")
    with pytest.raises(TemplateBudgetExceeded) as err:
        render_email(view, tmp_path)
    assert (err.value.template, err.value.line) == ("post-reminder.txt", 2)
    now = datetime(2026, 1, 1)
    with pytest.raises(TemplateBudgetExceeded) as err:
        render_html(ReportData("r", now, now, now, [], []), tmp_path)
    assert (err.value.template, err.value.line) == ("report.html", 2)


def test_validate_renders_reminder_and_report_templates_under_the_budget(tmp_path: Path
                                                                         ) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "templates" / "email", tmp_path / "templates")
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    for name in ("post-reminder.txt", "report.html"):
        path = tmp_path / "templates" / name
        path.write_text(path.read_text() + loops + "\n")
    lines = {name: (tmp_path / "templates" / name).read_text().count("\n")
             for name in ("post-reminder.txt", "report.html")}
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["validate"], env=_cli_env(tmp_path))
    assert time.perf_counter() - started < 20
    assert result.exit_code == 1, result.output
    for name, line in lines.items():
        assert f"{name}:{line}: template: the template exceeded its render budget" in \
            result.output
