"""A work budget for every template render: time, and the size of what it builds.

Jinja2's sandbox stops a template from reaching Python, but not from working forever: two nested
``range(100000)`` loops are 10^10 iterations, each one allowed. So every environment made by
:func:`scheduler.delivery.render.make_environment` compiles templates with checks on the paths
where work multiplies, and every render runs under a deadline (``MARTECH_RENDER_BUDGET_MS`` per
message):

* each iteration of every ``{% for %}``, each call from the template (globals, methods, macros)
  and each filter checks the deadline;
* what multiplies size — ``*``, ``**``, ``+`` and ``~`` on strings and lists, the size arguments
  of filters and ``str`` methods (``center``, ``indent``, ``batch``, ``ljust``, ``replace``, a
  format width) — is refused past :data:`MAX_ITEMS` at once, and charged against
  :data:`MAX_RENDER_CHARS` per render, as is the output itself.

Exceeding the budget raises :class:`TemplateBudgetExceeded`, a template error naming the file and
line. The checks are Python-level: they cost about a microsecond per loop iteration and nothing
on the per-recipient fast path (``fastrender``), which runs no Jinja at all. Renders that could
be slow must still run off the event loop (a thread), so the service keeps answering meanwhile.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from functools import wraps
from itertools import islice
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

from scheduler.errors import TemplateError

MAX_ITEMS = 1_000_000  # characters or items one operation may produce
MAX_RENDER_CHARS = 20_000_000  # characters built (operations + output) in one render
MAX_POWER_BITS = 100_000  # ``a ** b`` beyond this many bits is refused before computing it
MAX_FORMAT_WIDTH = 10_000
_SIZE_FILTER_ARGS = {"center", "indent", "batch", "slice", "wordwrap", "truncate"}
_AMPLIFYING_FILTERS = _SIZE_FILTER_ARGS | {"format", "replace", "join", "list", "sum", "string",
                                         "tojson", "pprint", "urlize", "xmlattr"}
_SIZE_STR_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs"}
_PRINTF_NUMBER = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DEFAULT_MS = [1000]


class RenderBudgetExceeded(Exception):
    """Raised inside a render; turned into :class:`TemplateBudgetExceeded` by the renderer."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class TemplateBudgetExceeded(TemplateError):
    """A template used more than its work budget (time or size)."""


@dataclass
class Budget:
    limit_ms: int
    deadline: float
    chars: int = 0

    def describe(self) -> str:
        return (f"the template exceeded its render budget of {self.limit_ms} ms "
                "(MARTECH_RENDER_BUDGET_MS): it does too much work (loops inside loops?)")


_ACTIVE: ContextVar[Budget | None] = ContextVar("martech_render_budget", default=None)


def configure(default_ms: int) -> None:
    """The budget of renders that name none (``MARTECH_RENDER_BUDGET_MS``; set at startup)."""
    _DEFAULT_MS[0] = int(default_ms)


def default_ms() -> int:
    return _DEFAULT_MS[0]


class _Scope:
    """The context manager :func:`render_budget` returns (a class: it is on the per-message
    path, and a generator-based one costs several times more)."""

    __slots__ = ("budget", "fresh", "limit_ms", "token")

    def __init__(self, limit_ms: int | None, fresh: bool) -> None:
        self.limit_ms, self.fresh = limit_ms, fresh
        self.token: Token[Budget | None] | None = None

    def __enter__(self) -> Budget:
        active = _ACTIVE.get()
        if active is not None and not self.fresh:
            return active
        ms = self.limit_ms or _DEFAULT_MS[0]
        budget = Budget(ms, time.perf_counter() + ms / 1000.0)
        self.token = _ACTIVE.set(budget)
        return budget

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _ACTIVE.reset(self.token)
            self.token = None


def render_budget(limit_ms: int | None = None, *, fresh: bool = False) -> _Scope:
    """Run a render (or one message's renders) under a budget; nested uses share the outer
    one unless ``fresh``."""
    return _Scope(limit_ms, fresh)


def tick() -> None:
    budget = _ACTIVE.get()
    if budget is not None and time.perf_counter() > budget.deadline:
        raise RenderBudgetExceeded(budget.describe())


def charge(size: int, *, timed: bool = True) -> None:
    budget = _ACTIVE.get()
    if budget is None:
        return
    budget.chars += size
    if budget.chars > MAX_RENDER_CHARS:
        raise RenderBudgetExceeded(f"the template built more than {MAX_RENDER_CHARS:,} "
                                   "characters in one render: simplify it")
    if timed and time.perf_counter() > budget.deadline:
        raise RenderBudgetExceeded(budget.describe())


def _too_big(what: str, size: int) -> RenderBudgetExceeded:
    return RenderBudgetExceeded(f"{what} would build {size:,} characters or items "
                                f"(at most {MAX_ITEMS:,} at once)")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


def template_line(exc: BaseException, filename: str) -> int | None:
    """The template line of an error, from Jinja's rewritten traceback."""
    line = getattr(exc, "lineno", None)
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(filename):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def budget_error(exc: RenderBudgetExceeded, name: str, filename: str | None
                 ) -> TemplateBudgetExceeded:
    return TemplateBudgetExceeded(name, exc.message, template_line(exc, filename or name))


# -- compiled templates ------------------------------------------------------------------------

_MARK = "_martech_budget_iter"


class BudgetCodeGenerator(CodeGenerator):
    """Every loop's iterable and every ``~`` concatenation go through the environment.

    Jinja forbids new node types, so a loop's iterable is wrapped in a unary ``+`` node marked
    as ours, which :meth:`visit_Pos` compiles to ``environment.budget_iter(...)``.
    """

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if not node.recursive and not getattr(node.iter, _MARK, False):
            wrapped = nodes.Pos(node.iter, lineno=node.iter.lineno)
            setattr(wrapped, _MARK, True)
            node.iter = wrapped
        super().visit_For(node, frame)

    def visit_Pos(self, node: nodes.UnaryExpr, frame: Frame) -> None:
        if not getattr(node, _MARK, False):
            super().visit_Pos(node, frame)
            return
        self.write("environment.budget_iter(")
        self.visit(node.node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.budget_sized(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Iterable:
    """An iterable whose iterations tick the budget; ``len`` still works (``loop.length``)."""

    def __init__(self, inner: Iterable[Any]) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Any]:
        for item in self.inner:
            tick()
            yield item

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class BudgetedTemplate(jinja2.Template):
    def render(self, *args: Any, **kwargs: Any) -> str:
        """:raises TemplateBudgetExceeded: over budget, naming the file and line."""
        ctx = self.new_context(dict(*args, **kwargs))
        with render_budget():
            try:
                try:
                    return join_output(self.root_render_func(ctx))
                except Exception:
                    self.environment.handle_exception()
            except RenderBudgetExceeded as exc:
                raise budget_error(exc, self.name or "<template>", self.filename) from None


def join_output(chunks: Iterable[str]) -> str:
    """``"".join(chunks)``, charging the output against the render's budget as it grows (in
    slices, so the counting runs in C: this is on every full render's path)."""
    budget = _ACTIVE.get()
    if budget is None:
        return "".join(chunks)
    it = iter(chunks)
    out: list[str] = []
    while part := list(islice(it, 64)):
        out += part
        # Size only: the deadline is checked inside the template, where the line is known.
        charge(sum(map(len, part)), timed=False)
    return "".join(out)


# -- the environment ---------------------------------------------------------------------------

def _wide(spec: str) -> RenderBudgetExceeded:
    return RenderBudgetExceeded(f"the format {spec!r} asks for a width or precision above "
                                f"{MAX_FORMAT_WIDTH:,} (or a computed one)")


def _check_printf(fmt: Any) -> None:
    for match in _PRINTF_NUMBER.finditer(str(fmt)):
        for number in match.groups():
            if number == "*" or (number and int(number) > MAX_FORMAT_WIDTH):
                raise _wide(match.group(0))


def _check_format_spec(fmt: str) -> None:
    for _literal, _field, spec, _conv in string.Formatter().parse(fmt):
        if spec and ("{" in spec or any(int(n) > MAX_FORMAT_WIDTH
                                        for n in re.findall(r"\d+", spec))):
            raise _wide(spec)


def _check_replace(value: Any, old: Any, new: Any, count: Any = -1) -> None:
    text, old_s, new_s = str(value), str(old), str(new)
    hits = text.count(old_s) if old_s else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    size = len(text) + hits * (len(new_s) - len(old_s))
    if size > MAX_ITEMS:
        raise _too_big("replace", size)


def _check_filter_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name in _SIZE_FILTER_ARGS:
        for arg in (*args[1:], *kwargs.values()):
            if isinstance(arg, int) and arg > MAX_ITEMS:
                raise _too_big(f"the filter {name}", arg)
            if name == "indent" and isinstance(arg, str):
                lines = str(args[0]).count("\n") + 1 if args else 1
                if len(arg) * lines > MAX_ITEMS:
                    raise _too_big("the filter indent", len(arg) * lines)
    elif name == "format" and args:
        _check_printf(args[0])
    elif name == "join" and len(args) >= 2 and isinstance(args[1], str):
        items = len(args[0]) if isinstance(args[0], list | tuple | str | range) else 0
        if items * len(args[1]) > MAX_ITEMS:
            raise _too_big("the filter join", items * len(args[1]))
    elif name == "replace" and len(args) >= 3:
        _check_replace(*args[:4])


def _budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if name not in _AMPLIFYING_FILTERS:  # output about the size of the input: time only
        @wraps(func)  # keeps jinja_pass_arg (pass_context & co.)
        def timed(*args: Any, **kwargs: Any) -> Any:
            tick()
            return func(*args, **kwargs)

        return timed

    @wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        tick()
        plain = args[1:] if getattr(func, "jinja_pass_arg", None) is not None else args
        _check_filter_args(name, plain, kwargs)
        result = func(*args, **kwargs)
        charge(_sized(result))
        return result

    return checked


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n * max > 100_000:
        raise _too_big("lipsum", n * max)
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the work budget compiled into every template."""

    code_generator_class = BudgetCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.template_class = BudgetedTemplate
        self.filters = {name: _budgeted_filter(name, f) for name, f in self.filters.items()}
        self.globals["lipsum"] = _lipsum

    def budget_iter(self, iterable: Any) -> Any:
        return _Iterable(iterable)

    def budget_sized(self, value: Any) -> Any:
        charge(_sized(value))
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        tick()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            bits = max(abs(left).bit_length(), 1) * right
            if bits > MAX_POWER_BITS and abs(left) > 1:
                raise _too_big("a power", bits // 3)
        if operator == "*":
            seq, times = (left, right) if _sized(left) else (right, left)
            if _sized(seq) and isinstance(times, int) and _sized(seq) * times > MAX_ITEMS:
                raise _too_big("a repetition", _sized(seq) * times)
        result = super().call_binop(context, operator, left, right)
        charge(_sized(result))
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        tick()
        # str.format is wrapped by the sandbox at attribute access; the bound method is inside.
        owner = getattr(__obj, "__self__", None) or getattr(
            getattr(__obj, "__wrapped__", None), "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in _SIZE_STR_METHODS:
                width = args[0] if args else next(iter(kwargs.values()), 0)
                factor = owner.count("\t") + 1 if name == "expandtabs" else 1
                if isinstance(width, int) and width * factor > MAX_ITEMS:
                    raise _too_big(f"str.{name}", width * factor)
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, *args[:3])
            elif name in ("format", "format_map"):
                _check_format_spec(owner)
        result = super().call(__context, __obj, *args, **kwargs)
        charge(_sized(result))
        return result
