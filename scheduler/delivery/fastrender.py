"""Render once per run, substitute per recipient: the common case made cheap.

Most newsletters use per-recipient variables only as plain outputs — ``{{ first_name }}``,
``{{ first_name | default('friend') }}``, ``{{ unsubscribe_url }}`` — while loops, conditions
and everything else depend on the shared context (the articles of the week). For such a
template we rewrite each of those outputs into a sentinel, render the template *once* with the
shared context, and per recipient only join the pieces with the recipient's values, escaped and
finalized exactly as Jinja would (autoescape, then the UTM finalizer). Any other use of a
per-recipient variable (a filter, a condition, a loop variable of the same name) makes the
template ineligible, and it is rendered by Jinja for every recipient as before — and so does
any node that transforms or re-runs the output around a site (``{% filter %}``,
``{% autoescape %}``, macros, call blocks, block ``{% set %}``, includes and inheritance): the
sentinel would pass through those unchanged while the real value would not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from markupsafe import escape

from scheduler.delivery.budget import TemplateBudgetExceeded

SENTINEL = "\x02MT{}\x03"


@dataclass(frozen=True)
class Site:
    name: str
    default: Any  # _MISSING when the output has no ``default`` filter
    boolean: bool = False


_MISSING = object()

# Nodes whose body is filtered, re-escaped, captured, called or defined elsewhere: a site in
# (or behind) one of them cannot be substituted after the fact, so the template is not split.
_TRANSFORMING: tuple[type[nodes.Node], ...] = (
    nodes.FilterBlock, nodes.EvalContextModifier, nodes.Macro, nodes.CallBlock,
    nodes.AssignBlock, nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport,
)


def _site_of(node: nodes.Expr, recipient_vars: frozenset[str]) -> Site | None:
    if isinstance(node, nodes.Name) and node.name in recipient_vars:
        return Site(node.name, _MISSING)
    if (isinstance(node, nodes.Filter) and node.name in ("default", "d")
            and isinstance(node.node, nodes.Name) and node.node.name in recipient_vars
            and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None
            and 1 <= len(node.args) <= 2 and all(isinstance(a, nodes.Const) for a in node.args)):
        args = [a.value for a in node.args if isinstance(a, nodes.Const)]
        return Site(node.node.name, args[0], bool(args[1]) if len(args) == 2 else False)
    return None


class SplitTemplate:
    """A template split into constant pieces and per-recipient sites."""

    def __init__(self, pieces: list[str], sites: list[Site], html: bool,
                 finalize: Callable[[Any], Any] | None) -> None:
        self.pieces = pieces
        self.sites = sites
        self.html = html
        self.finalize = finalize

    def render(self, values: Mapping[str, Any]) -> str | None:
        """The output for one recipient, or None when Jinja must decide (a missing value)."""
        out = [self.pieces[0]]
        finalize = self.finalize
        for index, site in enumerate(self.sites):
            if site.name in values:
                value = values[site.name]
                if site.boolean and not value and site.default is not _MISSING:
                    value = site.default
            elif site.default is not _MISSING:
                value = site.default
            else:
                return None  # StrictUndefined: let Jinja raise its proper error
            if finalize is not None:
                value = finalize(value)
            out.append(str(escape(value)) if self.html else str(value))
            out.append(self.pieces[index + 1])
        return "".join(out)


def split_template(env: jinja2.Environment, source: str, recipient_vars: frozenset[str],
                   shared: Mapping[str, Any], *, html: bool,
                   finalize: Callable[[Any], Any] | None) -> SplitTemplate | None:
    """Render ``source`` once with ``shared``; None if the template is not eligible."""
    if "\x02" in source or "\x03" in source:
        return None
    ast = env.parse(source)
    if any(True for _node in ast.find_all(_TRANSFORMING)):
        return None
    # A per-recipient name assigned anywhere (loop target, set, macro argument) would shadow it.
    for store in ast.find_all(nodes.Name):
        if store.ctx != "load" and store.name in recipient_vars:
            return None
    sites: list[Site] = []
    for output in ast.find_all(nodes.Output):
        new_nodes: list[nodes.Expr] = []
        for child in output.nodes:
            site = _site_of(child, recipient_vars) if isinstance(child, nodes.Expr) else None
            if site is None:
                new_nodes.append(child)
                continue
            new_nodes.append(nodes.TemplateData(SENTINEL.format(len(sites))))
            sites.append(site)
        output.nodes = new_nodes
    # Any remaining reference to a per-recipient variable is a use we cannot split.
    for name in ast.find_all(nodes.Name):
        if name.name in recipient_vars:
            return None
    if not sites:
        return None
    try:
        template = env.from_string(ast)
        once = template.render(dict(shared))
    except TemplateBudgetExceeded:
        raise  # it would be over budget for every recipient: say so once, now
    except Exception:  # e.g. the shared context alone is incomplete: Jinja per recipient
        return None
    pieces: list[str] = []
    rest = once
    for index in range(len(sites)):
        marker = SENTINEL.format(index)
        before, found, rest = rest.partition(marker)
        if not found:  # a site inside a loop or condition that did not render exactly once
            return None
        pieces.append(before)
    if "\x02MT" in rest:
        return None
    pieces.append(rest)
    return SplitTemplate(pieces, sites, html, finalize)
