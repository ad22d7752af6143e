"""Rendering: sandbox, autoescape, StrictUndefined with line numbers, CSS inlining, UTM, text."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.delivery.render import CampaignTemplates, html_to_text
from scheduler.delivery.utm import UtmTagger
from scheduler.errors import TemplateError

STYLED = """<html><head><style>p { color: red; } a { color: blue; }</style></head>
<body>
<p>Hi {{ first_name }},</p>
<ul>{% for a in articles %}<li><a href="{{ a.url }}">{{ a.title }}</a></li>{% endfor %}</ul>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
VARS = {"first_name": "Ada <script>", "unsubscribe_url": "https://mt.example/unsubscribe/t",
        "articles": [{"url": "https://acme.example/a?x=1", "title": "A & B"}]}


def _templates(tmp_path: Path, html: str, *, txt: str | None = None, subject: str = "Hi",
               utm: dict[str, str] | None = None) -> CampaignTemplates:
    (tmp_path / "n.html").write_text(html, encoding="utf-8")
    if txt is not None:
        (tmp_path / "n.txt").write_text(txt, encoding="utf-8")
    return CampaignTemplates(tmp_path, "n", subject, utm=utm,
                             skip_utm_prefixes=("https://mt.example",))


def test_css_inlined_once_per_run_and_html_autoescaped(tmp_path: Path) -> None:
    t = _templates(tmp_path, STYLED, utm={"utm_source": "nl"})
    assert not t.inline_per_recipient  # inlined into the template source, not per message
    r = t.render(VARS)
    assert '<p style="color: red;">Hi Ada &lt;script&gt;,</p>' in r.html
    assert "<style" not in r.html
    assert 'href="https://acme.example/a?x=1&amp;utm_source=nl" style="color: blue;"' in r.html
    assert "A &amp; B" in r.html
    # the unsubscribe link is ours: no UTM on it
    assert 'href="https://mt.example/unsubscribe/t"' in r.html


def test_text_part_derived_from_html_when_no_twin(tmp_path: Path) -> None:
    t = _templates(tmp_path, STYLED, utm={"utm_source": "nl"})
    assert not t.derive_text_per_recipient
    text = t.render(VARS).text
    assert "Hi Ada <script>," in text  # plain text is not HTML-escaped
    assert "* A & B (https://acme.example/a?x=1&utm_source=nl)" in text
    assert "color" not in text


def test_text_twin_used_and_tagged(tmp_path: Path) -> None:
    t = _templates(tmp_path, STYLED, txt="Hi {{ first_name }}\n{{ articles[0].url }}\n",
                   utm={"utm_source": "nl", "utm_medium": "email"})
    assert t.render(VARS).text == ("Hi Ada <script>\n"
                                   "https://acme.example/a?x=1&utm_source=nl&utm_medium=email\n")


def test_a_moved_tag_falls_back_to_per_recipient_inlining(tmp_path: Path) -> None:
    # A Jinja tag inside a <table> is foster-parented by the HTML parser: unsafe to pre-inline.
    html = ("<html><head><style>td { color: red; }</style></head><body><table>"
            "{% for a in articles %}<tr><td>{{ a.title }}</td></tr>{% endfor %}"
            "</table></body></html>")
    t = _templates(tmp_path, html)
    assert t.inline_per_recipient
    assert '<td style="color: red;">A &amp; B</td>' in t.render(VARS).html


@pytest.mark.parametrize("expr", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ articles.append(1) }}",
    "{{ (articles|first).__class__ }}",
    "{{ self._TemplateReference__context }}",
])
def test_sandbox_escapes_are_refused(tmp_path: Path, expr: str) -> None:
    t = _templates(tmp_path, f"<p>{expr}</p>")
    with pytest.raises(TemplateError) as err:
        t.render(VARS)
    assert "n.html" in str(err.value)


def test_undefined_variable_names_template_line_and_variable(tmp_path: Path) -> None:
    t = _templates(tmp_path, "<p>one</p>\n<p>two</p>\n<p>{{ headline }}</p>\n")
    with pytest.raises(TemplateError) as err:
        t.check(VARS)
    assert err.value.template == "n.html"
    assert err.value.line == 3
    assert "headline" in err.value.message


def test_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as err:
        _templates(tmp_path, "<p>ok</p>\n{% for x in y %}\n<p>never closed</p>\n")
    assert err.value.template == "n.html" and err.value.line is not None
    assert "syntax error" in err.value.message


def test_subject_is_a_template(tmp_path: Path) -> None:
    t = _templates(tmp_path, "<p>x</p>", subject="Hello {{ first_name | default('friend') }}")
    assert t.render_subject({"first_name": "Zoë"}) == "Hello Zoë"
    assert t.render_subject({}) == "Hello friend"


def test_utm_keeps_existing_parameters_and_skips_other_schemes() -> None:
    tagger = UtmTagger({"utm_source": "nl", "utm_campaign": "c"})
    assert tagger.url("https://a.example/?utm_source=keep") == \
        "https://a.example/?utm_source=keep&utm_campaign=c"
    html = '<a href="mailto:x@y.example">m</a><a href=\'http://a.example/p#f\'>h</a>'
    assert tagger.html(html) == ('<a href="mailto:x@y.example">m</a>'
                                 "<a href='http://a.example/p?utm_source=nl&amp;utm_campaign=c#f'"
                                 ">h</a>")


def test_html_to_text_skips_style_and_keeps_structure() -> None:
    text = html_to_text("<style>p{}</style><h1>Title</h1><p>Para <b>bold</b></p>"
                        "<ul><li>one</li><li>two</li></ul>")
    assert text == "Title\n\nPara bold\n\n* one\n* two\n"
