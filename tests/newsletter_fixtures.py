"""Helpers for newsletter tests: a throwaway config directory, settings and a claimed run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from martech.compose import load_config
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.settings import Settings
from scheduler.store import runs as run_store
from scheduler.store.db import make_engine
from scheduler.store.runs import Claim

# What settings_for signs with: with a public URL the key must be >= 32 bytes.
SECRET = "test-secret-0123456789-abcdefghijklmnop"

HTML = """<html><head><style>p { color: #123456; }</style></head><body>
<p>Hello {{ first_name }},</p>
<p><a href="https://acme.example/news">News</a> ·
<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""


def write_config(root: Path, *, rows: list[str] | None = None, csv_text: str | None = None,
                 send: dict[str, Any] | None = None, budget: dict[str, Any] | None = None,
                 subject: str = "Hello {{ first_name }} — news", html: str = HTML,
                 extra: dict[str, Any] | None = None) -> Path:
    config = root / "config"
    (config / "campaigns").mkdir(parents=True, exist_ok=True)
    (config / "audiences").mkdir(parents=True, exist_ok=True)
    templates = root / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "news.html").write_text(html, encoding="utf-8")
    if csv_text is None:
        lines = (f"{r},Name{i}\n" for i, r in enumerate(rows or []))
        csv_text = "email,first_name\n" + "".join(lines)
    (config / "audiences" / "list.csv").write_text(csv_text, encoding="utf-8")
    campaign: dict[str, Any] = {
        "name": "news", "kind": "newsletter", "schedule": {"cron": "0 9 * * MON"},
        "audience": {"csv": "audiences/list.csv"}, "from": "Acme News <news@acme.example>",
        "subject": subject, "template": "news", "utm": {"source": "nl", "medium": "email"},
        "send": {"batch_size": 10, "connections": 3, "retry_backoff": "10ms",
                 "max_attempts": 3, **(send or {})},
        "error_budget": budget or {"window": 1000, "max_failure_ratio": 1.0},
        # acme.example does not resolve here: tests about links turn the check on themselves.
        "check_links": False,
        **(extra or {}),
    }
    (config / "campaigns" / "news.yaml").write_text(yaml.safe_dump(campaign), encoding="utf-8")
    return config


def settings_for(root: Path, db_url: str, *, port: int = 0, transport: str = "smtp",
                 **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url, "config_dir": root / "config", "templates_dir": root / "templates",
        "var_dir": root / "var", "transport": transport, "smtp_host": "127.0.0.1",
        "smtp_port": port, "smtp_timeout_s": 1.0, "smtp_connect_timeout_s": 1.0,
        "public_base_url": "https://mt.acme.example", "secret_key": SECRET,
        "node_name": "test-node", **overrides}
    return Settings(**values)


def context_for(settings: Settings, config: LoadedConfig | None = None) -> ServiceContext:
    return ServiceContext(settings, config or load_config(settings.config_dir),
                          make_engine(settings.database_url))


def claim_run(ctx: ServiceContext, now: datetime, campaign: str = "news") -> int:
    claim = Claim(f"{campaign}#manual", campaign, "newsletter", now, f"manual:{now.isoformat()}",
                  trigger="manual")
    with ctx.begin() as conn:
        won = run_store.claim(conn, [claim], ctx.node, now)
        run_id = won[(claim.schedule_key, claim.scheduled_at)]
        run_store.set_status(conn, run_id, "running", now)
    return run_id
