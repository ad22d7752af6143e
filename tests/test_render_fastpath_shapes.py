"""The fast render path gives exactly what Jinja gives, for generated template *shapes*.

Hypothesis builds templates from fragments — plain outputs, defaults, filter blocks, autoescape
blocks, conditions and loops on shared data, macros, call blocks, block sets — and checks that
whenever the fast path accepts a template its output equals Jinja's for every recipient, and
that the shapes it cannot split fall back to Jinja (issue: ``{% filter upper %}`` and
``{% autoescape false %}`` were substituted after the fact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.delivery.render import CampaignTemplates

SHARED = {"articles": [{"title": "A & <B>"}, {"title": "C"}], "flag": True, "off": False}

LEAVES = st.sampled_from([
    "Hi ", " & <b>text</b> ", "{{ first_name }}", "{{ first_name | default('friend') }}",
    "{{ nick | default('you', true) }}", "{{ flag }}", "{{ articles | length }}",
])


def _wrap(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, inner).map("".join),
        inner.map("{{% filter upper %}}{}{{% endfilter %}}".format),
        inner.map("{{% filter trim %}}  {}  {{% endfilter %}}".format),
        inner.map("{{% autoescape false %}}{}{{% endautoescape %}}".format),
        inner.map("{{% autoescape true %}}{}{{% endautoescape %}}".format),
        inner.map("{{% if flag %}}{}{{% endif %}}".format),
        inner.map("{{% if off %}}{}{{% else %}}-{{% endif %}}".format),
        inner.map("{{% for a in articles %}}{{{{ a.title }}}}{}{{% endfor %}}".format),
        inner.map("{{% macro m() %}}{}{{% endmacro %}}{{{{ m() }}}}".format),
        inner.map("{{% macro w() %}}[{{{{ caller() }}}}]{{% endmacro %}}"
                  "{{% call w() %}}{}{{% endcall %}}".format),
        inner.map("{{% set block %}}{}{{% endset %}}{{{{ block }}}}".format),
        inner.map("{{% with z = 1 %}}{}{{% endwith %}}".format),
    )


SHAPES = st.recursive(LEAVES, _wrap, max_leaves=6)
NAMES = st.one_of(st.none(), st.text(max_size=12))


def _templates(root: Path, html: str, text: str) -> CampaignTemplates:
    root.mkdir(parents=True, exist_ok=True)
    (root / "n.html").write_text(html, encoding="utf-8")
    (root / "n.txt").write_text(text, encoding="utf-8")
    return CampaignTemplates(root, "n", "Hello {{ first_name | default('you') }}", inline=False)


@settings(max_examples=150, deadline=None)
@given(html=SHAPES, text=SHAPES, first=NAMES, nick=NAMES)
def test_fast_path_equals_jinja_for_any_shape(tmp_path_factory: pytest.TempPathFactory,
                                              html: str, text: str, first: str | None,
                                              nick: str | None) -> None:
    templates = _templates(tmp_path_factory.mktemp("t"), html, text)
    row: dict[str, Any] = {k: v for k, v in (("first_name", first), ("nick", nick))
                           if v is not None}
    try:
        expected = templates.render({**SHARED, **row})
    except Exception:
        expected = None  # an undefined variable: the fast path must not invent output
    if not templates.specialise(SHARED):
        return  # Jinja renders every recipient: equal by construction
    got = templates.render_split(row)
    if got is None:
        return  # the fast path deferred this recipient to Jinja
    assert expected is not None, f"fast path rendered what Jinja refuses: {html!r}"
    assert got == expected, f"template {html!r} / {text!r}"


# Jinja escapes the value first and the filter runs on the escaped text: "&AMP;" is its output.
@pytest.mark.parametrize(("html", "expected"), [
    ("{% filter upper %}Hi {{ first_name }}{% endfilter %}", "HI ADA &AMP; BOB"),
    ("{% autoescape false %}<p>{{ first_name }}</p>{% endautoescape %}", "<p>Ada & Bob</p>"),
    ("{% macro m() %}{{ first_name }}!{% endmacro %}{{ m() }}{{ m() }}",
     "Ada &amp; Bob!Ada &amp; Bob!"),
    ("{% set s %}<{{ first_name }}>{% endset %}{{ s | upper }}", "<ADA &AMP; BOB>"),
])
def test_transforming_blocks_render_as_jinja_does(tmp_path: Path, html: str,
                                                  expected: str) -> None:
    templates = _templates(tmp_path, html, "{{ first_name }}")
    assert not templates.specialise(SHARED)  # falls back to Jinja for these shapes
    assert templates.render({**SHARED, "first_name": "Ada & Bob"}).html == expected


def test_plain_outputs_still_take_the_fast_path(tmp_path: Path) -> None:
    templates = _templates(tmp_path, "<p>{{ first_name }} {% for a in articles %}{{ a.title }}"
                           "{% endfor %}</p>", "{{ first_name }}")
    assert templates.specialise(SHARED)
    fast = templates.render_split({"first_name": "Ada & Bob"})
    assert fast is not None and fast.html == "<p>Ada &amp; Bob A &amp; &lt;B&gt;C</p>"
