"""The posts of a reminder campaign: inline ``posts``, ``series`` and a content calendar file.

A calendar is a CSV (header: date,time,network,copy,link[,image,notes,id]) or a YAML list of
the same fields. Each row is one post; a bad row is reported by file and line and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import re
import weakref
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobs.reminders.config import PostConfig, PostReminderCampaign, PostSeriesConfig
from jobs.reminders.render import copy_problem
from scheduler.config.loader import LoadedConfig
from scheduler.config.yaml_lines import load_yaml
from scheduler.errors import Problem
from scheduler.schedules import local_datetime

FIELDS = ("id", "date", "time", "at", "network", "copy", "link", "image", "notes")
REQUIRED_CSV = ("date", "time", "network", "copy")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


@dataclass(frozen=True)
class Post:
    """One post (``at``) or a recurring one (``cron``), normalised from any source."""

    id: str
    networks: tuple[str, ...]
    copy: str | dict[str, str]
    link: str | None
    image: str | None
    notes: str | None
    source: str  # "file:line" or "campaign posts[2]"
    at: datetime | None = None  # aware UTC
    cron: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def occurrence_id(self, slot: str) -> str:
        """A one-off post is its own occurrence; a series occurrence adds its local slot."""
        return self.id if self.cron is None else f"{self.id}@{slot[:16]}"


def networks_of(value: str | list[str]) -> tuple[str, ...]:
    items = value if isinstance(value, list) else re.split(r"[|,+]", value)
    return tuple(n.strip().lower() for n in items if n.strip())


def derive_id(local: datetime, networks: tuple[str, ...]) -> str:
    """Stable without an explicit id: the same post keeps the same id across reloads."""
    return f"{local:%Y%m%d-%H%M}-{'-'.join(networks)}"


def _series_id(series: PostSeriesConfig, networks: tuple[str, ...]) -> str:
    digest = hashlib.sha256(series.cron.encode()).hexdigest()[:8]
    return f"series-{'-'.join(networks)}-{digest}"


def _link_problem(link: str | None) -> str | None:
    if link and urlsplit(link).scheme not in ("http", "https"):
        return f"link {link!r} is not an http(s) URL"
    return None


def from_post(post: PostConfig, tz: str, source: str) -> Post:
    local = datetime.fromisoformat(post.at.strip())
    nets = networks_of(post.network)
    return Post(post.id or derive_id(local, nets), nets, post.copy_, post.link, post.image,
                post.notes, source, at=local_datetime(post.at, tz))


def from_series(series: PostSeriesConfig, tz: str, source: str) -> Post:
    nets = networks_of(series.network)
    return Post(series.id or _series_id(series, nets), nets, series.copy_, series.link,
                series.image, series.notes, source, cron=series.cron,
                start=local_datetime(series.start, tz) if series.start else None,
                end=local_datetime(series.end, tz) if series.end else None)


def _row_post(row: dict[str, Any], tz: str, file: str, line: int | None,
              problems: list[Problem]) -> Post | None:
    """One calendar row → a Post, or problems (each naming file, line and field)."""
    before = len(problems)

    def bad(field: str, message: str) -> None:
        problems.append(Problem(file, line, field, message))

    for key in row:
        if key not in FIELDS:
            bad(str(key), f"unknown column (expected {', '.join(FIELDS)})")
    text = {k: ("" if v is None else str(v).strip()) for k, v in row.items()}
    local: datetime | None = None
    if text.get("at"):
        try:
            local = datetime.fromisoformat(text["at"])
        except ValueError:
            bad("at", f"{text['at']!r} is not a date-time; expected e.g. 2026-11-27 10:00")
    else:
        try:
            day = date.fromisoformat(text.get("date", ""))
        except ValueError:
            bad("date", f"{text.get('date')!r} is not a date; expected YYYY-MM-DD")
            day = None
        try:
            hour = time.fromisoformat(text.get("time", ""))
        except ValueError:
            bad("time", f"{text.get('time')!r} is not a time; expected HH:MM")
            hour = None
        if day is not None and hour is not None:
            local = datetime.combine(day, hour)
    nets = networks_of(text.get("network", ""))
    if not nets:
        bad("network", "required (e.g. linkedin, x, facebook, instagram)")
    copy = text.get("copy", "")
    if not copy:
        bad("copy", "required: the text to post")
    elif (why := copy_problem(copy)) is not None:
        bad("copy", why)
    link = text.get("link") or None
    if (why := _link_problem(link)) is not None:
        bad("link", why)
    post_id = text.get("id") or None
    if post_id and not _ID.match(post_id):
        bad("id", f"{post_id!r}: use letters, digits, '-', '_', '.', ':'")
    if len(problems) > before or local is None:
        return None
    return Post(post_id or derive_id(local, nets), nets, copy, link, text.get("image") or None,
                text.get("notes") or None, f"{file}:{line}",
                at=local_datetime(local, tz))


def _load_csv(path: Path, display: str, tz: str) -> tuple[list[Post], list[Problem]]:
    """csv.reader, not DictReader: DictReader skips blank lines without counting them, so
    ``line_num`` bookkeeping is the only way to name the physical line of each record
    (blank lines, CRLF and multi-line quoted cells included; the BOM is dropped by utf-8-sig)."""
    problems: list[Problem] = []
    posts: list[Post] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        last = 0  # physical lines consumed so far
        for cells in reader:
            start, last = last + 1, reader.line_num  # first physical line of this record
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                missing = [c for c in REQUIRED_CSV if c not in header]
                if missing:
                    return [], [Problem(display, start, ",".join(missing),
                                        "missing column(s) in the header line")]
                continue
            if len(cells) > len(header):
                problems.append(Problem(display, start, "", "more cells than columns"))
                continue
            row: dict[str, Any] = dict(zip(header, cells, strict=False))
            row.update({name: None for name in header[len(cells):]})
            post = _row_post(row, tz, display, start, problems)
            if post:
                posts.append(post)
    if header is None:
        return [], [Problem(display, 1, ",".join(REQUIRED_CSV),
                            "missing column(s) in the header line")]
    return posts, problems


def load_calendar(path: Path, display: str, tz: str) -> tuple[list[Post], list[Problem]]:
    problems: list[Problem] = []
    posts: list[Post] = []
    if not path.is_file():
        return [], [Problem(display, None, "calendar", "calendar file not found")]
    if path.suffix.lower() == ".csv":
        try:
            return _load_csv(path, display, tz)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return [], [Problem(display, None, "calendar", f"cannot read CSV: {exc}")]
    doc, file_problems = load_yaml(path, display)
    if doc is None:
        return [], file_problems
    data = doc.data.get("posts") if isinstance(doc.data, dict) else doc.data
    base: tuple[str, ...] = ("posts",) if isinstance(doc.data, dict) else ()
    if not isinstance(data, list):
        return [], [*file_problems, doc.problem(base, "expected a list of posts")]
    for index, item in enumerate(data):
        line = doc.line_of((*base, index))
        if not isinstance(item, dict):
            problems.append(Problem(display, line, "", "expected a mapping (date, time, …)"))
            continue
        post = _row_post(item, tz, display, line, problems)
        if post:
            posts.append(post)
    return posts, [*file_problems, *problems]


# Calendar files parsed for one loaded configuration, keyed by ``id(config)``; LoadedConfig is
# an unhashable dataclass, so no WeakKeyDictionary: a finalizer drops the entry with the config.
# A run must use the posts of the configuration that was validated, never the file as it is on
# disk now: a reload rejected for a broken calendar keeps the old config — and its old posts.
_snapshots: dict[int, dict[tuple[Path, str], tuple[list[Post], list[Problem]]]] = {}


def _snapshot(config: LoadedConfig) -> dict[tuple[Path, str], tuple[list[Post], list[Problem]]]:
    key = id(config)
    snap = _snapshots.get(key)
    if snap is None:
        snap = _snapshots[key] = {}
        weakref.finalize(config, _snapshots.pop, key, None)
    return snap


def campaign_posts(campaign: PostReminderCampaign, config: LoadedConfig
                   ) -> tuple[list[Post], list[Problem]]:
    """Every post of the campaign (bad calendar rows left out, and reported).

    The calendar file is read the first time ``config`` is asked about it (its validation) and
    the result kept for that config's lifetime: later edits on disk only count after a reload.
    """
    src = config.sources.get(campaign.name)
    where = src.file if src else campaign.name
    tz = campaign.timezone
    posts = [from_post(p, tz, f"{where} posts[{i}]") for i, p in enumerate(campaign.posts)]
    posts += [from_series(s, tz, f"{where} series[{i}]") for i, s in enumerate(campaign.series)]
    problems: list[Problem] = []
    entries: list[tuple[str, PostConfig | PostSeriesConfig]] = [
        *((f"posts[{i}]", p) for i, p in enumerate(campaign.posts)),
        *((f"series[{i}]", s) for i, s in enumerate(campaign.series)),
    ]
    line = src.line if src else None
    for field, entry in entries:
        copies = [entry.copy_] if isinstance(entry.copy_, str) else list(entry.copy_.values())
        for text in copies:
            if (why := copy_problem(text)) is not None:
                problems.append(Problem(where, line, f"{field}.copy", why))
        if (why := _link_problem(entry.link)) is not None:
            problems.append(Problem(where, line, f"{field}.link", why))
        if entry.id and not _ID.match(entry.id):
            problems.append(Problem(where, line, f"{field}.id",
                                    f"{entry.id!r}: use letters, digits, '-', '_', '.', ':'"))
    if campaign.calendar:
        path = config.path(campaign.calendar)
        snap = _snapshot(config)
        if (path, tz) not in snap:  # read once per loaded config (at validate/schedules)
            snap[(path, tz)] = load_calendar(path, str(path), tz)
        cal_posts, cal_problems = snap[(path, tz)]
        posts += cal_posts
        problems += cal_problems
    seen: dict[str, Post] = {}
    unique: list[Post] = []
    for post in posts:
        if post.id in seen:
            file, _, num = post.source.rpartition(":")
            problems.append(Problem(file if num.isdigit() else post.source,
                                    int(num) if num.isdigit() else None, "id",
                                    f"duplicate post id {post.id!r} (also {seen[post.id].source})"))
            continue
        seen[post.id] = post
        unique.append(post)
    return unique, problems
