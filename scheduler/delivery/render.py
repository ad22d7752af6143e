"""Rendering: sandboxed Jinja2, CSS inlined once per run, UTM on every http(s) link.

Marketers are trusted with content, not code: templates run in an immutable sandbox, HTML is
autoescaped, and a missing variable is an error (StrictUndefined) rather than a blank in 100k
inboxes. What is the same for every recipient is done once per run: the CSS is inlined into the
*template source* (Jinja tags protected by placeholders) and the text twin, when there is no
``.txt``, is derived from the HTML template once — each with a fall-back to per-recipient work
if the HTML parser moved a Jinja tag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import css_inline
import jinja2
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from scheduler.delivery.budget import (
    BudgetedSandbox,
    RenderBudgetExceeded,
    TemplateBudgetExceeded,
    budget_error,
    join_output,
    render_budget,
    template_line,
)
from scheduler.delivery.fastrender import SplitTemplate, split_template
from scheduler.delivery.utm import UtmTagger
from scheduler.errors import TemplateError

_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"MTJX(\d{5})X")
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)


def _protect(source: str) -> tuple[str, list[str]]:
    tags: list[str] = []

    def repl(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"MTJX{len(tags) - 1:05d}X"

    return _JINJA_TAG.sub(repl, source), tags


def _restore(text: str, tags: list[str]) -> str | None:
    """Put the Jinja tags back; None if the HTML parser dropped, duplicated or moved one.

    Block tags (``{% %}``) must keep their order; an expression (``{{ }}``) may move (a link's
    URL printed after its text) but never across a block tag, or its meaning would change.
    """
    found = [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]
    if sorted(found) != list(range(len(tags))):
        return None
    is_block = [not tag.startswith("{{") for tag in tags]
    blocks_seen = 0
    segment_of = []
    for index in range(len(tags)):
        segment_of.append(blocks_seen)
        blocks_seen += is_block[index]
    blocks_seen = 0
    for index in found:
        if is_block[index]:
            if segment_of[index] != blocks_seen:
                return None
            blocks_seen += 1
        elif segment_of[index] != blocks_seen:
            return None
    return _PLACEHOLDER.sub(lambda m: tags[int(m.group(1))], text)


def inline_css(html: str) -> str:
    return str(_INLINER.inline(html))


class _TextExtractor(HTMLParser):
    """HTML → readable plain text: block elements break lines, links show their URL."""

    BLOCKS = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table",
              "tr", "section", "article", "header", "footer", "hr", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self._skip += 1
        elif tag == "li":
            self.out.append("\n* ")
        elif tag in self.BLOCKS:
            self.out.append("\n")
        if tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and not href.startswith("#"):
                self.out.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.out).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n"


def make_environment(templates_dir: Path | Sequence[Path] | None, *,
                     html: bool | Callable[[str | None], bool],
                     finalize: Callable[[Any], Any] | None = None,
                     keep_trailing_newline: bool = True) -> ImmutableSandboxedEnvironment:
    """The one Jinja2 environment factory: sandboxed, StrictUndefined, autoescape for HTML.

    Every template people edit — newsletters, reminders, alerts, reports — goes through here, so
    the sandbox is hardened in one place, and every render has a work budget
    (:mod:`scheduler.delivery.budget`). ``html`` may be a ``select_autoescape`` callable.
    """
    if templates_dir is None:
        loader = None
    else:
        dirs = [templates_dir] if isinstance(templates_dir, Path) else list(templates_dir)
        loader = jinja2.FileSystemLoader([str(d) for d in dirs])
    return BudgetedSandbox(
        loader=loader, autoescape=html, undefined=StrictUndefined,
        keep_trailing_newline=keep_trailing_newline, auto_reload=False, finalize=finalize)


@dataclass
class Rendered:
    subject: str
    html: str
    text: str


class CampaignTemplates:
    """A campaign's compiled subject, HTML and text templates, ready to render many times."""

    def __init__(self, templates_dir: Path, template: str, subject: str, *,
                 utm: Mapping[str, str] | None = None, skip_utm_prefixes: tuple[str, ...] = (),
                 inline: bool = True, budget_ms: int | None = None) -> None:
        self.name = template
        self.budget_ms = budget_ms  # per message; None: MARTECH_RENDER_BUDGET_MS
        self.html_name = f"{template}.html"
        self.text_name = f"{template}.txt"
        self.utm = UtmTagger(utm or {}, skip_utm_prefixes)
        self.html_env = make_environment(templates_dir, html=True, finalize=self._finalize)
        self.text_env = make_environment(templates_dir, html=False, finalize=self._finalize)
        subject_env = make_environment(None, html=False)
        self.subject_tpl = self._compile(subject_env, subject, "subject")
        self.subject_const: str | None = None
        if not meta.find_undeclared_variables(subject_env.parse(subject)):
            self.subject_const = self._render(self.subject_tpl, {}, "subject").strip()

        html_path = templates_dir / self.html_name
        try:
            html_source = html_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(self.html_name, f"cannot read template: {exc}") from exc
        # The original, for error messages with the marketer's own line numbers.
        self.html_original = self._compile(self.html_env, html_source, self.html_name)
        # Links written in the template get their UTM once, here; links that come from
        # variables get theirs in ``_finalize`` (a cached lookup per printed value).
        protected, tags = _protect(html_source)
        tagged = self.utm.html(protected)
        self.html_final = _restore(tagged, tags) or html_source
        self.html_tpl = self._compile(self.html_env, self.html_final, self.html_name)
        self.inline_per_recipient = False
        if inline and "<style" in html_source.lower():
            restored = _restore(inline_css(tagged), tags)
            if restored is None:
                self.inline_per_recipient = True
            else:
                self.html_final = restored
                self.html_tpl = self._compile(self.html_env, restored, self.html_name)

        self.text_final: str | None = None
        self.text_tpl: jinja2.Template | None = None
        self.derive_text_per_recipient = False
        self._prepare_text(templates_dir / self.text_name, tagged, tags)
        self.subject_source = subject
        self.subject_env = subject_env
        self.split: tuple[SplitTemplate, SplitTemplate | None, SplitTemplate] | None = None
        self.shared_names: frozenset[str] = frozenset()
        # Jinja's globals (range, cycler, …) merged once: rendering then shares the caller's
        # variables dict instead of copying globals + variables for every recipient.
        self.globals = dict(self.html_env.globals)

    def _prepare_text(self, text_path: Path, tagged_html: str, tags: list[str]) -> None:
        """The plain-text part: the marketer's ``.txt`` (UTM-tagged), else derived from the
        HTML — once here when the derived text keeps its template tags intact, otherwise per
        recipient."""
        if text_path.exists():
            text_source = text_path.read_text(encoding="utf-8")
            self._compile(self.text_env, text_source, self.text_name)  # errors: own lines
            protected_text, text_tags = _protect(text_source)
            restored_text = _restore(self.utm.text(protected_text), text_tags) or text_source
            self.text_final = restored_text
            self.text_tpl = self._compile(self.text_env, restored_text, self.text_name)
            return
        restored = _restore(html_to_text(tagged_html), tags)
        if restored is None:
            self.derive_text_per_recipient = True
        else:
            self.text_final = restored
            self.text_tpl = self._compile(self.text_env, restored, self.text_name)

    def specialise(self, shared: Mapping[str, Any]) -> bool:
        """Render once with the run's shared variables when the templates allow it (see
        :mod:`scheduler.delivery.fastrender`); afterwards :meth:`render` only substitutes
        per-recipient values. Returns whether that worked."""
        if self.inline_per_recipient or self.text_final is None:
            return False
        with render_budget(self.budget_ms):  # one render: over budget is a TemplateError
            return self._specialise({**self.globals, **shared}, self.text_final)

    def _specialise(self, shared: Mapping[str, Any], text_final: str) -> bool:
        names: set[str] = set()
        for env, source in ((self.html_env, self.html_final), (self.text_env, text_final),
                            (self.subject_env, self.subject_source)):
            names |= meta.find_undeclared_variables(env.parse(source))
        recipient = frozenset(n for n in names if n not in shared)
        try:
            html = split_template(self.html_env, self.html_final, recipient, shared, html=True,
                                  finalize=self._finalize)
        except TemplateBudgetExceeded as exc:
            raise self._located(exc, shared, recipient) from None
        try:
            text = split_template(self.text_env, text_final, recipient, shared, html=False,
                                  finalize=self._finalize)
        except TemplateBudgetExceeded as exc:
            raise TemplateBudgetExceeded(self.text_name, exc.message, exc.line) from None
        try:
            subject = (None if self.subject_const is not None else split_template(
                self.subject_env, self.subject_source, recipient, shared, html=False,
                finalize=None))
        except TemplateBudgetExceeded as exc:
            raise TemplateBudgetExceeded("subject", exc.message, exc.line) from None
        if html is None or text is None or (subject is None and self.subject_const is None):
            return False
        self.split = (html, subject, text)
        self.shared_names = frozenset(n for n in names if n in shared)
        return True

    def _located(self, exc: TemplateBudgetExceeded, shared: Mapping[str, Any],
                 recipient: frozenset[str]) -> TemplateBudgetExceeded:
        """The error on the marketer's own line: the prepared source (CSS inlined) may differ,
        so the original is rendered once more, under a budget of its own, to find the line."""
        variables = {**shared, **{name: "" for name in recipient}}
        try:
            with render_budget(self.budget_ms, fresh=True):
                self._render(self.html_original, variables, self.html_name)
        except TemplateBudgetExceeded as located:
            return located
        except TemplateError:
            pass
        return TemplateBudgetExceeded(self.html_name, exc.message, None)

    def render_split(self, variables: Mapping[str, Any]) -> Rendered | None:
        """The fast path; None when this recipient needs Jinja (a value is missing)."""
        assert self.split is not None
        html_t, subject_t, text_t = self.split
        html = html_t.render(variables)
        text = text_t.render(variables)
        subject = self.subject_const if subject_t is None else subject_t.render(variables)
        if html is None or text is None or subject is None:
            return None
        return Rendered(subject.strip(), html, text)

    def _finalize(self, value: Any) -> Any:
        if isinstance(value, str) and "http" in value:
            if isinstance(value, Markup):
                return Markup(self.utm.html(str(value)))
            if value.startswith(("http://", "https://")) and " " not in value:
                return self.utm.url(value)
            return self.utm.text(value)
        return value

    @staticmethod
    def _compile(env: jinja2.Environment, source: str, name: str) -> jinja2.Template:
        try:
            return env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(name, f"syntax error: {exc.message}", exc.lineno) from exc

    @staticmethod
    def _render(template: jinja2.Template, variables: Mapping[str, Any], name: str) -> str:
        try:
            try:
                # Template.render() minus two dict copies: ``variables`` already holds the
                # globals (see ``self.globals``) and is never mutated by a sandboxed template.
                ctx = template.new_context(dict(variables) if not isinstance(variables, dict)
                                           else variables, shared=True)
                with render_budget():  # the message's budget when inside render()
                    return join_output(template.root_render_func(ctx))
            except Exception:
                template.environment.handle_exception()  # re-raises, traceback on template lines
                raise
        except RenderBudgetExceeded as exc:
            raise budget_error(exc, name, "<template>") from None
        except SecurityError as exc:
            raise TemplateError(name, f"refused by the sandbox: {exc}",
                                template_line(exc, name)) from exc
        except jinja2.UndefinedError as exc:
            raise TemplateError(name, f"undefined variable: {exc.message}",
                                template_line(exc, "<template>")) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(name, str(exc), template_line(exc, "<template>")) from exc
        except Exception as exc:  # a filter raising on bad data, e.g. int('x')
            raise TemplateError(name, f"{type(exc).__name__}: {exc}",
                                template_line(exc, "<template>")) from exc

    def render_subject(self, variables: Mapping[str, Any]) -> str:
        if self.subject_const is not None:
            return self.subject_const
        return self._render(self.subject_tpl, variables, "subject").strip()

    def render(self, variables: Mapping[str, Any], *, has_globals: bool = False) -> Rendered:
        """``has_globals``: the caller built ``variables`` on top of ``self.globals`` (the
        per-recipient fast path); otherwise they are merged here."""
        if not has_globals:
            variables = {**self.globals, **variables}
        with render_budget(self.budget_ms):  # one budget for the whole message
            return self._render_all(variables)

    def _render_all(self, variables: Mapping[str, Any]) -> Rendered:
        subject = self.render_subject(variables)
        html = self._render(self.html_tpl, variables, self.html_name)
        if self.inline_per_recipient:
            html = inline_css(html)
        if self.text_tpl is not None:
            text = self._render(self.text_tpl, variables, self.text_name)
        else:
            text = html_to_text(html)
        return Rendered(subject, html, text)

    def check(self, variables: Mapping[str, Any]) -> Rendered:
        """Render against the *original* sources so errors carry the marketer's line numbers."""
        variables = {**self.globals, **variables}
        with render_budget(self.budget_ms):
            self._render(self.html_original, variables, self.html_name)
        return self.render(variables, has_globals=True)


TemplateFactory = Callable[[], CampaignTemplates]
