"""A relay that refuses our credentials (535): pause ``smtp_auth_failed``, tell IT, never retry
the same credentials on our own.

Mail providers lock an account after a few failed logins, so nothing here logs in again with
credentials that were refused. The pause records a reference to the credentials (an HMAC under
the signing key, ``scheduler/keys.py``, of relay, user and password: it proves nothing about
the password to whoever reads ``status``). The relay probe tries AUTH again only once the
running settings have a different reference — IT changed the password or the user and
restarted — and a person may clear the pause with ``martech resume-send`` at any time.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.config.loader import LoadedConfig
from scheduler.keys import signer_for
from scheduler.settings import Settings
from scheduler.store import outbox, pauses
from scheduler.store.tables import pauses as pauses_table

SMTP_AUTH_FAILED = pauses.SMTP_AUTH_FAILED
_REF = re.compile(r"\[credentials ([0-9a-f]{16})\]")


def credentials_ref(settings: Settings) -> str:
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    material = "\x1f".join((settings.smtp_host, str(settings.smtp_port), settings.smtp_user or "",
                            password))
    # Keyed with the current signing key (a key rotation changes the reference: the probe then
    # tries AUTH once more, as after a password change).
    digest = signer_for(settings).digest("smtp-credentials", material)
    assert digest is not None  # the current key is always held
    return digest[:16]


def detail_for(settings: Settings, error: str) -> str:
    ref = credentials_ref(settings)
    return (f"{error[:300]} — fix MARTECH_SMTP_USER / MARTECH_SMTP_PASSWORD and restart, "
            f"then it is retried; or `martech resume-send` [credentials {ref}]")


def ref_in(detail: str | None) -> str | None:
    match = _REF.search(detail or "")
    return match.group(1) if match else None


def pause(conn: sa.Connection, campaign: str, settings: Settings, config: LoadedConfig,
          now: datetime, error: str) -> bool:
    """Pause ``campaign``; on a new pause, queue an alert to every IT route. True if new."""
    added = pauses.add(conn, campaign, SMTP_AUTH_FAILED, now, detail=detail_for(settings, error),
                       by="sender")
    if added:
        alert(conn, [campaign], settings, config, now, error)
    return added


def alert(conn: sa.Connection, campaigns: list[str], settings: Settings, config: LoadedConfig,
          now: datetime, error: str) -> int:
    """Tell IT (the ``down`` routes of checks.yaml's ``alerts:``); returns how many queued."""
    title = f"[martech] SMTP relay refused our credentials — {', '.join(campaigns)} paused"
    text = (f"The relay {settings.smtp_host}:{settings.smtp_port} refused AUTH for user "
            f"{settings.smtp_user!r}: {error[:300]}\n\nPaused (smtp_auth_failed): "
            f"{', '.join(campaigns)}.\nmartech will not log in again with these credentials "
            "(accounts get locked that way). Fix MARTECH_SMTP_USER / MARTECH_SMTP_PASSWORD and "
            "restart the service, or run `martech resume-send CAMPAIGN` to retry as they are.")
    checks = config.checks
    queued = 0
    for index, route in enumerate(checks.alerts):
        if "down" not in route.on:
            continue
        key = f"{SMTP_AUTH_FAILED}:{','.join(campaigns)}:{now.isoformat()}:{index}"
        payload: dict[str, Any]
        if route.email is not None:
            payload = {"from": checks.alert_from, "subject": title, "text": text,
                       "headers": {"X-Martech-Alert": SMTP_AUTH_FAILED}}
            new = outbox.enqueue(conn, topic="alert", channel="email", target=route.email,
                                 payload=payload, now=now, dedupe_key=key)
        else:
            assert route.webhook is not None
            payload = ({"event": SMTP_AUTH_FAILED, "campaigns": campaigns, "detail": error,
                        "at": now.isoformat()} if route.format == "json"
                       else {"text": f"*{title}*\n{text}"})
            new = outbox.enqueue(conn, topic="alert", channel="webhook", target=route.webhook,
                                 payload={**payload, "_format": route.format}, now=now,
                                 dedupe_key=key)
        queued += new is not None
    return queued


def waiting(conn: sa.Connection) -> dict[str, str | None]:
    """Campaigns paused ``smtp_auth_failed`` → the credentials reference that was refused."""
    rows = conn.execute(sa.select(pauses_table.c.campaign, pauses_table.c.detail)
                        .where(pauses_table.c.reason == SMTP_AUTH_FAILED))
    return {row.campaign: ref_in(row.detail) for row in rows}


def record_refused(conn: sa.Connection, campaigns: list[str], settings: Settings,
                   error: str) -> None:
    """New credentials were refused too: remember them, so they are not tried again either."""
    conn.execute(sa.update(pauses_table).where(
        pauses_table.c.reason == SMTP_AUTH_FAILED, pauses_table.c.campaign.in_(campaigns)
    ).values(detail=detail_for(settings, error)))
