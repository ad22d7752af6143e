"""Render-once-then-substitute gives byte-identical output to rendering every recipient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.delivery.render import CampaignTemplates

HTML = """<html><head><style>a { color: red; }</style></head><body>
<h1>Hello {{ first_name | default('friend') }}, {{ email }}</h1>
<ul>{% for a in articles %}<li><a href="{{ a.url }}">{{ a.title }}</a></li>{% endfor %}</ul>
<p><a href="{{ profile }}">profile</a> <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
TEXT = "Hi {{ first_name | default('friend', true) }}\n{{ profile }}\n{{ unsubscribe_url }}\n"
SHARED = {"articles": [{"url": "https://acme.example/a?x=1", "title": "A & <B>"}],
          "campaign": "news"}


def _templates(tmp_path: Path, html: str = HTML, text: str | None = TEXT,
               subject: str = "Hi {{ first_name | default('you') }}") -> CampaignTemplates:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "n.html").write_text(html, encoding="utf-8")
    if text is not None:
        (tmp_path / "n.txt").write_text(text, encoding="utf-8")
    return CampaignTemplates(tmp_path, "n", subject, utm={"utm_source": "nl"},
                             skip_utm_prefixes=("https://mt.example",))


values = st.text(max_size=40)


@settings(max_examples=80, deadline=None)
@given(first=st.one_of(st.none(), values), profile=values, email=values)
def test_fast_path_matches_jinja(tmp_path_factory: pytest.TempPathFactory, first: str | None,
                                 profile: str, email: str) -> None:
    fast = _templates(tmp_path_factory.mktemp("t"))
    assert fast.specialise(SHARED)
    row: dict[str, Any] = {"profile": "https://acme.example/p/" + profile, "email": email,
                           "unsubscribe_url": "https://mt.example/unsubscribe/tok"}
    if first is not None:
        row["first_name"] = first
    got = fast.render_split(row)
    expected = fast.render({**SHARED, **row})
    assert got == expected


def test_ineligible_templates_fall_back(tmp_path: Path) -> None:
    uses_filter = _templates(tmp_path / "a", html="<p>{{ first_name | upper }}</p>", text=None)
    assert not uses_filter.specialise(SHARED)
    in_condition = _templates(tmp_path / "b", text=None,
                              html="{% if first_name %}<p>{{ first_name }}</p>{% endif %}")
    assert not in_condition.specialise(SHARED)
    shadowed = _templates(tmp_path / "c", text=None,
                          html="{% for first_name in articles %}{{ first_name }}{% endfor %}")
    assert not shadowed.specialise(SHARED)


def test_missing_value_without_default_defers_to_jinja(tmp_path: Path) -> None:
    t = _templates(tmp_path, html="<p>{{ nickname }}</p>", text="{{ nickname }}\n", subject="s")
    assert t.specialise(SHARED)
    fast = t.render_split({"nickname": "Ann & Bob"})
    assert fast is not None and fast.html == "<p>Ann &amp; Bob</p>"
    assert t.render_split({}) is None  # Jinja then raises the proper undefined error
