"""``martech preview``, ``send-test`` and ``send --now`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from martech.cli import main
from tests.newsletter_fixtures import SECRET, write_config
from tests.smtp_server import SmtpServer

REPO = Path(__file__).resolve().parent.parent


def _env(root: Path, port: int = 0, transport: str = "file") -> dict[str, str]:
    return {
        "MARTECH_CONFIG_DIR": str(root / "config"),
        "MARTECH_TEMPLATES_DIR": str(root / "templates"), "MARTECH_VAR_DIR": str(root / "var"),
        "MARTECH_DATABASE_URL": f"sqlite:///{root}/m.db", "MARTECH_TRANSPORT": transport,
        "MARTECH_SMTP_HOST": "127.0.0.1", "MARTECH_SMTP_PORT": str(port),
        "MARTECH_PUBLIC_BASE_URL": "https://mt.acme.example", "MARTECH_NODE_NAME": "cli-test",
        "MARTECH_SECRET_KEY": SECRET,
    }


def test_preview_writes_html_text_and_headers(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com", "b@example.com"])
    result = CliRunner().invoke(main, ["preview", "news", "--recipient", "B@example.com"],
                                env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "var" / "previews" / "news"
    html = (out / "b_at_example.com.html").read_text()
    headers = (out / "b_at_example.com.headers.txt").read_text()
    assert "Hello Name1," in html
    assert "Hello Name1," in (out / "b_at_example.com.txt").read_text()
    assert "Subject: =?utf-8?b?" in headers and "List-Unsubscribe:" in headers
    assert str(out / "b_at_example.com.html") in result.output.replace("\n", "")


def test_preview_template_error_names_template_line_and_variable(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"], html="<p>ok</p>\n<p>{{ headline }}</p>\n")
    result = CliRunner().invoke(main, ["preview", "news"], env=_env(tmp_path))
    assert result.exit_code == 1
    assert "news.html:2" in result.output and "headline" in result.output
    assert "Traceback" not in result.output


def test_send_test_goes_to_the_given_address(tmp_path: Path) -> None:
    write_config(tmp_path, rows=["a@example.com"])
    with SmtpServer() as server:
        result = CliRunner().invoke(main, ["send-test", "news", "--to", "me@acme.example"],
                                    env=_env(tmp_path, server.port, "smtp"))
    assert result.exit_code == 0, result.output
    [item] = server.received
    assert item.rcpt_tos == ["me@acme.example"]
    assert item.parsed()["Subject"] == "[TEST] Hello Name0 — news"


def _martech(root: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")},
           **_env(root, port, "smtp"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "martech", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_send_now_honours_manual_pause_and_resume(tmp_path: Path) -> None:
    recipients = [f"p{i}@example.com" for i in range(80)]
    # 10/s: the rest of the list takes ~6 s, room for the `martech pause` process to start
    # (~2 s on a loaded 2-core machine) before the send is over.
    write_config(tmp_path, rows=recipients, send={"rate_per_s": 10, "batch_size": 10})
    with SmtpServer() as server:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")},
               **_env(tmp_path, server.port, "smtp"), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "martech", "send", "news", "--now"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while len(server.received) < 15:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        paused = _martech(tmp_path, server.port, "pause", "news", "--reason", "typo in subject")
        assert paused.returncode == 0, paused.stderr
        at_pause = len(server.received)
        time.sleep(1.5)  # real time for the sender to notice; nothing more must arrive
        stalled = len(server.received)
        assert stalled - at_pause <= 10  # at most the batch in flight
        time.sleep(0.5)
        assert len(server.received) == stalled and proc.poll() is None
        assert _martech(tmp_path, server.port, "resume", "news").returncode == 0
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "sent 80" in out.replace("\n", " ")
    assert server.per_recipient() == {r: 1 for r in recipients}


def test_resume_send_clears_only_the_senders_pauses(tmp_path: Path) -> None:
    from scheduler.clock import SystemClock
    from scheduler.store import pauses
    from scheduler.store.db import make_engine, upgrade

    write_config(tmp_path, rows=["a@example.com"])
    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    upgrade(engine)
    with engine.begin() as conn:
        for reason in (pauses.ERROR_BUDGET, pauses.MANUAL):
            pauses.add(conn, "news", reason, SystemClock().now())
    result = CliRunner().invoke(main, ["resume-send", "news"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "cleared error_budget" in result.output and "still paused by manual" in result.output
    with engine.begin() as conn:
        assert [p.reason for p in pauses.reasons(conn, "news")] == [pauses.MANUAL]
    engine.dispose()
