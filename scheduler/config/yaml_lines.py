"""Load YAML and remember the line of every key, so errors can say ``file:line``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from scheduler.config.yaml_build import PlainBuilder, QuickResolve, Unusual
from scheduler.errors import Problem
from scheduler.gcpause import gc_paused

PathKey = tuple[str | int, ...]


class YamlLoader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans: ``on:``, ``no``, ``yes`` stay strings.

    YAML 1.1 turns ``on: [down]`` into ``True: [down]`` and the country code ``NO`` into
    False — surprises a hand-written config must not have.
    """


# YAML 1.1 also reads 10:00 as the base-60 integer 600 and 1:30.5 as a float: a calendar's
# `time: 10:00` must stay text. Numbers keep their YAML 1.2 forms only.
_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _DuplicateFlag:
    """Notices equal sibling keys while constructing, so the happy path keeps no node tree.

    Only a flag: the exact report (lines, paths) comes from re-composing the file with line
    bookkeeping, which happens only when something is wrong.
    """

    duplicate_keys = False

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)  # type: ignore[misc]
        # After flattening merges, as _record_lines sees them; same key text as it compares.
        keys = [k.value if isinstance(k, yaml.ScalarNode) else id(k) for k, _v in node.value]
        if len(keys) != len(mapping) or len(set(keys)) != len(keys):
            self.duplicate_keys = True
        return mapping


class _CheckedLoader(_DuplicateFlag, YamlLoader):
    pass


# libyaml (when PyYAML was built with it) parses ~10x faster: 10,000 schedules must load in
# well under a second. Same resolvers as YamlLoader, so both give identical data.
_FastBase: Any = getattr(yaml, "CSafeLoader", None)
FastYamlLoader: Any = None
_CheckedFastLoader: Any = None
if _FastBase is not None:
    FastYamlLoader = type("FastYamlLoader", (QuickResolve, _FastBase), {
        "yaml_implicit_resolvers": YamlLoader.yaml_implicit_resolvers})
    _CheckedFastLoader = type("_CheckedFastLoader", (_DuplicateFlag, FastYamlLoader), {})


def _parse(text: str) -> tuple[Any, bool]:
    """The data of ``text`` and whether any mapping repeats a key. No node tree is kept."""
    loader = (FastYamlLoader or YamlLoader)(text)
    try:
        with gc_paused():
            node = loader.get_single_node()
            if node is None:
                return None, False
            builder = PlainBuilder(loader)
            try:
                return builder.build(node), builder.duplicate_keys
            except (Unusual, yaml.YAMLError):
                pass  # PyYAML's constructor builds it, or reports the error its own way
    finally:
        loader.dispose()
    return _parse_checked(text)


def _parse_checked(text: str) -> tuple[Any, bool]:
    """``_parse`` through PyYAML's own constructor: merges, tags, recursive aliases."""
    loader = (_CheckedFastLoader or _CheckedLoader)(text)
    try:
        with gc_paused():
            data = loader.get_single_data()
    finally:
        loader.dispose()
    return data, bool(loader.duplicate_keys)


def _compose(text: str) -> yaml.Node | None:
    """The node tree of ``text``, merges flattened (as construction leaves it), for lines."""
    loader = (FastYamlLoader or YamlLoader)(text)
    try:
        with gc_paused():
            node = loader.get_single_node()
            if node is not None:
                loader.construct_document(node)  # flattens `<<` merges in the tree
    finally:
        loader.dispose()
    return node


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class YamlDocument:
    """A parsed YAML file: its data plus a map from key paths to 1-based line numbers.

    The line map is built on first use, by composing the text again: a file without problems
    never needs it, and for 10,000 schedules it costs as much as the parse itself.
    """

    def __init__(self, file: str, data: Any, lines: dict[PathKey, int] | None = None,
                 *, text: str | None = None) -> None:
        self.file = file
        self.data = data
        self._lines = lines
        self._text = text

    @property
    def lines(self) -> dict[PathKey, int]:
        if self._lines is None:
            self._lines, _duplicates = _line_map(self._text)
            self._text = None
        return self._lines

    def line_of(self, path: PathKey) -> int | None:
        """The line of the deepest known prefix of ``path``."""
        lines = self.lines
        for end in range(len(path), -1, -1):
            line = lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def problem(self, path: PathKey, message: str) -> Problem:
        return Problem(self.file, self.line_of(path), ".".join(str(p) for p in path), message)


def _line_map(text: str | None) -> tuple[dict[PathKey, int], list[tuple[PathKey, int, int]]]:
    lines: dict[PathKey, int] = {}
    duplicates: list[tuple[PathKey, int, int]] = []
    node = _compose(text) if text is not None else None
    if node is not None:
        _record_lines(node, (), lines, duplicates)
    return lines, duplicates


def _record_lines(node: yaml.Node, path: PathKey, lines: dict[PathKey, int],
                  duplicates: list[tuple[PathKey, int, int]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if child in lines:
                # PyYAML silently keeps the last of two equal keys; a person meant one.
                duplicates.append((child, lines[child], line))
            lines[child] = line
            _record_lines(value_node, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines, duplicates)


def load_yaml(path: Path, display: str | None = None) -> tuple[YamlDocument | None, list[Problem]]:
    """Parse ``path``; on failure return the problems (syntax errors carry their line)."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(name, None, "", f"cannot read file: {exc}")]
    try:
        data, duplicate_keys = _parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = exc.problem or str(exc)
        return None, [Problem(name, line, "", f"YAML syntax error: {reason}")]
    except yaml.YAMLError as exc:
        return None, [Problem(name, None, "", f"YAML syntax error: {exc}")]
    doc = YamlDocument(name, data, text=text)
    problems: list[Problem] = []
    # Only a string can hold "${": raw text without it (or an escape that could spell it)
    # has nothing to substitute, so the walk over every value is skipped.
    if "${" in text or "\\" in text:
        doc.data, problems = _substitute_env(doc, data, ())
    if duplicate_keys:
        doc._lines, duplicates = _line_map(text)
        for key, first, again in duplicates:
            problems.append(Problem(name, again, ".".join(str(p) for p in key),
                                    f"duplicate key (first on line {first}); only one is kept"))
    return doc, problems


def _substitute_env(doc: YamlDocument, value: Any, path: PathKey) -> tuple[Any, list[Problem]]:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in strings: secrets stay out of files."""
    problems: list[Problem] = []
    if isinstance(value, str) and "${" in value:
        def repl(match: re.Match[str]) -> str:
            var, default = match.group(1), match.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            problems.append(doc.problem(path, f"environment variable {var} is not set"))
            return ""

        return _ENV_REF.sub(repl, value), problems
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key], sub = _substitute_env(doc, item, (*path, key))
            problems += sub
        return out, problems
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            new, sub = _substitute_env(doc, item, (*path, index))
            items.append(new)
            problems += sub
        return items, problems
    return value, problems
