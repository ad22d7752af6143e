"""``martech keygen``, ``martech forget EMAIL`` and ``martech export-person EMAIL``.

Registered by the composition root (``martech/compose.py``) like a kind's commands, since they
build on ``scheduler.cli``'s shared state and error handling.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from scheduler import privacy
from scheduler.cli import State, console, friendly_errors
from scheduler.clock import SystemClock
from scheduler.delivery.tokens import key_id
from scheduler.keys import generate_key, signer_for

log = logging.getLogger("martech.privacy")


@click.command()
@click.option("--id", "show_id", metavar="KEY", help="Print the key id of KEY instead.")
def keygen(show_id: str | None) -> None:
    """Print a new random secret key (for MARTECH_SECRET_KEY) and its key id.

    To rotate: set MARTECH_SECRET_KEY to the new key and put the old one first in
    MARTECH_PREVIOUS_SECRET_KEYS; links signed with it keep working.
    """
    if show_id is not None:
        click.echo(key_id(show_id.encode("utf-8")).hex())
        return
    key = generate_key()
    click.echo(key)
    click.echo(f"key id: {key_id(key.encode('utf-8')).hex()}", err=True)


def _remove_previews(var_dir: Path, norm: str) -> int:
    """``martech preview`` writes files named after the address."""
    removed = 0
    for path in (var_dir / "previews").glob(f"*/{norm.replace('@', '_at_')}.*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


@click.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@friendly_errors
def forget(state: State, email: str, yes: bool) -> None:
    """Remove EMAIL from deliveries, events, run details and the outbox for good.

    Only a keyed hash stays in the suppression list, so the address is never mailed again.
    Audience files and CRM tables are yours: remove the person there too.
    """
    norm = privacy.normalise(email)
    if not yes:
        click.confirm(f"Forget {norm} everywhere? This cannot be undone", abort=True)
    signer = signer_for(state.settings)
    now = SystemClock().now()
    db = state.db()
    try:
        with db.begin() as conn:
            done = privacy.forget(conn, signer, norm, now)
            done.add("previews", _remove_previews(Path(state.settings.var_dir), norm))
            privacy.record_request(conn, "person_forgotten", now, done.counts)
    finally:
        db.dispose()
    log.info("person forgotten", extra={"action": "forget", **done.counts})
    places = ", ".join(f"{k} {v}" for k, v in sorted(done.counts.items())) or "nothing held"
    console.print(f"forgotten: {places}; the suppression list keeps a keyed hash", markup=False)


@click.command("export-person")
@click.argument("email")
@click.pass_obj
@friendly_errors
def export_person(state: State, email: str) -> None:
    """Print, as JSON, everything held about EMAIL (a data subject access request)."""
    signer = signer_for(state.settings)
    now = SystemClock().now()
    db = state.db()
    try:
        with db.begin() as conn:
            data = privacy.export_person(conn, signer, email)
            summary = {"deliveries": len(data["deliveries"]), "events": len(data["events"]),
                       "outbox": len(data["outbox"])}
            privacy.record_request(conn, "person_exported", now, summary)
    finally:
        db.dispose()
    log.info("person exported", extra={"action": "export_person", **summary})
    click.echo(json.dumps({"generated_at": now.isoformat(), **data}, indent=2, default=str))


def register(group: click.Group) -> None:
    for command in (keygen, forget, export_person):
        group.add_command(command)
