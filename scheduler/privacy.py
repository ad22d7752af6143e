"""A person's data: what is held about an address (``export-person``), and forgetting it.

Forgetting works on the shared tables, whatever kind wrote them:

* ``deliveries``: the recipient becomes ``forgotten:<id>`` (no link between runs), its variables
  are dropped, and a row still pending is skipped;
* ``tracking_events``: the recipient is cleared (the event still counts in reports);
* ``suppressions``: the address's row is replaced by a keyed hash, ``~<key id>~<hmac>``, so
  materialisation keeps excluding the person (see :class:`ForgottenMatcher`) although the
  address itself is gone;
* ``outbox``: a row addressed to the person is failed and its target cleared;
* every other text or JSON column of every table (errors, run details and stats, payloads): the
  address, plain or URL-encoded, is replaced by ``[forgotten]``.

The hash is keyed with the signing keys (``scheduler/keys.py``), so the database alone does not
tell whether a given address was forgotten. A forgotten address hashed under a key this process
does not hold could be mailed again, so materialisation refuses to go on (fail closed):
keep rotated-out keys in ``MARTECH_PREVIOUS_SECRET_KEYS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from scheduler.delivery.tokens import KEY_ID_BYTES, Signer
from scheduler.errors import MartechError
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import deliveries, metadata, outbox, runs, suppressions
from scheduler.store.tables import tracking_events as events

PSEUDONYM_PREFIX = "forgotten:"
HASH_PREFIX = "~"
SCRUBBED = "[forgotten]"
PERSON = "person"  # the digest purpose of suppression hashes
_KEY_ID = re.compile(rf"^[0-9a-f]{{{2 * KEY_ID_BYTES}}}$")


class NotAnAddress(MartechError):
    """``forget`` and ``export-person`` take one e-mail address."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"{value!r} is not an e-mail address")


class ForgottenKeyMissing(MartechError):
    """Forgotten addresses are hashed with a key this process does not hold."""

    def __init__(self, key_ids: list[str], count: int) -> None:
        self.key_ids = key_ids
        self.count = count
        super().__init__(
            f"{count} forgotten address(es) are hashed with key id(s) {', '.join(key_ids)}, "
            "which neither MARTECH_SECRET_KEY nor MARTECH_PREVIOUS_SECRET_KEYS holds: sending "
            "could mail them again, so it is refused. Add the old key(s) to "
            "MARTECH_PREVIOUS_SECRET_KEYS (`martech keygen --id KEY` shows a key's id).")


def normalise(email: str) -> str:
    value = email.strip().lower()
    if value.count("@") != 1 or not value.partition("@")[0] or "." not in value.partition("@")[2]:
        raise NotAnAddress(email)
    return value


def is_pseudonym(recipient: str) -> bool:
    return recipient.startswith(PSEUDONYM_PREFIX)


def suppression_key(signer: Signer, email: str) -> str:
    """What stays of a forgotten address in ``suppressions.email``."""
    return f"{HASH_PREFIX}{signer.key_id}{HASH_PREFIX}{signer.digest(PERSON, normalise(email))}"


class ForgottenMatcher:
    """Is an address one of the forgotten? Built from the hashed suppressions."""

    def __init__(self, signer: Signer, hashed: list[str]) -> None:
        self.signer = signer
        self.by_kid: dict[str, set[str]] = {}
        for entry in hashed:
            kid, _sep, digest = entry[len(HASH_PREFIX):].partition(HASH_PREFIX)
            if not _KEY_ID.match(kid):  # not ours: no key can match it, so fail closed
                kid = f"(malformed {entry[:20]!r})"
            self.by_kid.setdefault(kid, set()).add(digest)
        held = set(signer.key_ids)
        missing = sorted(kid for kid in self.by_kid if kid not in held)
        self.missing = missing
        self.missing_count = sum(len(self.by_kid[k]) for k in missing)

    def __bool__(self) -> bool:
        return bool(self.by_kid)

    def matches(self, email: str) -> bool:
        norm = email.strip().lower()
        return any(self.signer.digest(PERSON, norm, kid) in digests
                   for kid, digests in self.by_kid.items() if kid not in self.missing)


def forgotten_matcher(conn: sa.Connection, signer: Signer, *, strict: bool = True
                      ) -> ForgottenMatcher:
    """:raises ForgottenKeyMissing: ``strict`` and some hashes need a key we do not hold."""
    hashed = conn.execute(sa.select(suppressions.c.email).where(
        suppressions.c.email.startswith(HASH_PREFIX, autoescape=True))).scalars().all()
    matcher = ForgottenMatcher(signer, list(hashed))
    if strict and matcher.missing:
        raise ForgottenKeyMissing(matcher.missing, matcher.missing_count)
    return matcher


def exclude_forgotten(conn: sa.Connection, signer: Signer, run_id: int) -> int:
    """Mark a run's pending rows of forgotten people ``skipped`` — and drop the address the
    audience brought back in, keeping the row as ``forgotten:<id>``; return how many."""
    matcher = forgotten_matcher(conn, signer)
    if not matcher:
        return 0
    pending = conn.execute(sa.select(deliveries.c.id, deliveries.c.recipient).where(
        deliveries.c.run_id == run_id, deliveries.c.status == "pending"))
    ids = [row.id for row in pending if matcher.matches(row.recipient)]
    for start in range(0, len(ids), 500):
        conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(ids[start:start + 500]))
                     .values(status="skipped", last_error="suppressed", variables=None,
                             recipient=sa.literal(PSEUDONYM_PREFIX)
                             + sa.cast(deliveries.c.id, sa.String)))
    return len(ids)


# -- finding an address in every table ---------------------------------------------------------

def _forms(norm: str) -> list[str]:
    """The spellings of an address worth looking for: plain and URL-encoded."""
    return sorted({norm, quote(norm, safe=""), quote(norm, safe="@")}, key=len, reverse=True)


def _text_columns(table: sa.Table) -> list[sa.Column[Any]]:
    return [c for c in table.columns if isinstance(c.type, sa.String | sa.Text | sa.JSON)]


def _like(column: sa.Column[Any], forms: list[str]) -> sa.ColumnElement[bool]:
    as_text = sa.func.lower(sa.cast(column, sa.Text)) if isinstance(column.type, sa.JSON) \
        else sa.func.lower(column)
    return sa.or_(*(as_text.contains(form, autoescape=True) for form in forms))


def mentions(conn: sa.Connection, norm: str) -> Iterator[tuple[sa.Table, sa.Column[Any], Any]]:
    """``(table, column, row)`` for every text or JSON cell that mentions the address."""
    forms = _forms(norm)
    for table in metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        for column in _text_columns(table):
            if table is suppressions and column is suppressions.c.email:
                continue  # hashes and other addresses only
            stmt = sa.select(*pk, column).where(_like(column, forms))
            for row in conn.execute(stmt):
                yield table, column, row


def _scrub(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(SCRUBBED, value)
    if isinstance(value, list):
        return [_scrub(v, pattern) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, pattern): _scrub(v, pattern) for k, v in value.items()}
    return value


@dataclass
class Forgotten:
    """What ``forget`` changed, counted per place (never the address)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, place: str, n: int) -> None:
        if n:
            self.counts[place] = self.counts.get(place, 0) + n


def forget(conn: sa.Connection, signer: Signer, email: str, now: datetime) -> Forgotten:
    """Remove or pseudonymise ``email`` everywhere; keep a keyed hash in the suppression list.

    :raises NotAnAddress: ``email`` is not one address.
    """
    norm = normalise(email)
    done = Forgotten()
    rows = conn.execute(sa.select(deliveries.c.id, deliveries.c.status).where(
        sa.func.lower(deliveries.c.recipient) == norm)).all()
    for row in rows:
        values: dict[str, Any] = {"recipient": f"{PSEUDONYM_PREFIX}{row.id}", "variables": None}
        if row.status == "pending":
            values.update(status="skipped", last_error="forgotten", next_attempt_at=None)
        conn.execute(sa.update(deliveries).where(deliveries.c.id == row.id).values(**values))
    done.add("deliveries", len(rows))
    result = conn.execute(sa.update(events).where(sa.func.lower(events.c.recipient) == norm)
                          .values(recipient=None))
    done.add("tracking_events", int(result.rowcount or 0))
    result = conn.execute(sa.update(outbox).where(sa.func.lower(outbox.c.target) == norm)
                          .values(target=f"{PSEUDONYM_PREFIX}outbox", status=sa.case(
                              (outbox.c.status == "pending", "failed"), else_=outbox.c.status),
                                  last_error="recipient forgotten"))
    done.add("outbox", int(result.rowcount or 0))
    result = conn.execute(sa.delete(suppressions).where(suppressions.c.email == norm))
    done.add("suppressions", int(result.rowcount or 0))
    suppression_store.add(conn, suppression_key(signer, norm), "forgotten", now)
    pattern = re.compile("|".join(re.escape(f) for f in _forms(norm)), re.IGNORECASE)
    for table, column, row in list(mentions(conn, norm)):
        pk = list(table.primary_key.columns)
        raw = row[-1]
        if isinstance(column.type, sa.JSON):
            value = _scrub(json.loads(raw) if isinstance(raw, str) else raw, pattern)
        else:
            value = pattern.sub(SCRUBBED, raw)
        conn.execute(sa.update(table).where(*(c == row[i] for i, c in enumerate(pk)))
                     .values({column.name: value}))
        done.add(f"{table.name}.{column.name}", 1)
    return done


def record_request(conn: sa.Connection, kind: str, now: datetime, detail: dict[str, Any]
                   ) -> None:
    """``person_forgotten`` / ``person_exported`` as an event: counts, never the address."""
    conn.execute(sa.insert(events).values(at=now, kind=kind, detail=json.dumps(detail)))


def export_person(conn: sa.Connection, signer: Signer, email: str) -> dict[str, Any]:
    """Everything held about ``email``, as JSON-ready data."""
    norm = normalise(email)
    suppression = conn.execute(sa.select(suppressions).where(
        suppressions.c.email == norm)).mappings().first()
    matcher = forgotten_matcher(conn, signer, strict=False)
    delivered = conn.execute(
        sa.select(deliveries.c.id, runs.c.campaign, deliveries.c.run_id, deliveries.c.status,
                  deliveries.c.attempts, deliveries.c.sent_at, deliveries.c.last_error,
                  deliveries.c.variables)
        .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
        .where(sa.func.lower(deliveries.c.recipient) == norm)
        .order_by(deliveries.c.id)).mappings().all()
    tracked = conn.execute(
        sa.select(events.c.at, events.c.kind, events.c.campaign, events.c.run_id,
                  events.c.delivery_id, events.c.url, events.c.detail)
        .where(sa.func.lower(events.c.recipient) == norm).order_by(events.c.id)).mappings().all()
    queued = conn.execute(
        sa.select(outbox.c.id, outbox.c.created_at, outbox.c.topic, outbox.c.channel,
                  outbox.c.status).where(sa.func.lower(outbox.c.target) == norm)
        .order_by(outbox.c.id)).mappings().all()
    other: dict[str, int] = {}
    for table, column, _row in mentions(conn, norm):
        if (table.name, column.name) not in (("deliveries", "recipient"),
                                            ("tracking_events", "recipient"),
                                            ("outbox", "target")):
            key = f"{table.name}.{column.name}"
            other[key] = other.get(key, 0) + 1
    return {
        "address": norm,
        "suppressed": dict(suppression) if suppression else None,
        "forgotten": matcher.matches(norm),
        "deliveries": [dict(r) for r in delivered],
        "events": [dict(r) for r in tracked],
        "outbox": [dict(r) for r in queued],
        "also_mentioned_in": other,
    }
