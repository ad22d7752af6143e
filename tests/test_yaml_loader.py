"""The YAML dialect people write by hand: 10:00 stays a time, on/no stay words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import yaml_lines
from scheduler.config.yaml_lines import load_yaml


@pytest.mark.parametrize(("text", "expected"), [
    ("time: 10:00", "10:00"),  # YAML 1.1 would say 600 (base 60)
    ("time: 12:30", "12:30"),
    ("at: 1:30.5", "1:30.5"),
    ("on: [down]", None),
    ("country: NO", "NO"),
    ("n: 42", 42),
    ("x: 1.5", 1.5),
    ("h: 0x1f", 31),
    ("flag: true", True),
])
def test_scalars(tmp_path: Path, text: str, expected: object) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text + "\n")
    doc, problems = load_yaml(path)
    assert doc is not None and problems == []
    key = text.split(":", 1)[0]
    if key == "on":
        assert doc.data == {"on": ["down"]}
    else:
        assert doc.data[key] == expected


# -- the fast builder gives PyYAML's own answer --------------------------------------------

_SCALARS = st.sampled_from([
    "a", "name", "on", "NO", "10:00", "42", "0x1f", "1.5", ".inf", "true", "False", "null", "~",
    "", "2026-03-29", "2026-03-29 02:30:00", "'quoted'", '"7"', "!!str 5", "!!int '5'",
    "Europe/Berlin", "'1'", "01", "1", "<<", "="])
_KEYS = st.sampled_from(["a", "b", "name", "1", "01", "0x1", "true", "'a'", "<<", "? [x]"])


def _document(depth: int) -> st.SearchStrategy[str]:
    leaf = _SCALARS.map(lambda s: " " + s)
    if depth == 0:
        return leaf
    child = _document(depth - 1)
    pad = "  " * (3 - depth)

    def mapping(pairs: list[tuple[str, str]]) -> str:
        return "".join(f"\n{pad}  {k}:{v}" for k, v in pairs) or " {}"

    def sequence(items: list[str]) -> str:
        return "".join(f"\n{pad}  -{v}" for v in items) or " []"

    return st.one_of(leaf, st.lists(st.tuples(_KEYS, child), max_size=4).map(mapping),
                     st.lists(child, max_size=3).map(sequence),
                     st.sampled_from([" &x {k: v}", " &y [1, 2]", " {<<: {m: 1}, n: 2}",
                                      " !!set {a, b}", " !!omap [a: 1]", " !custom x"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_KEYS, _document(2)), min_size=1, max_size=4),
       st.booleans())
def test_fast_parse_matches_pyyaml_constructor(pairs: list[tuple[str, str]],
                                               alias: bool) -> None:
    text = "".join(f"{k}:{v}\n" for k, v in pairs)
    if alias and "&x" in text:
        text += "again: *x\n"

    def outcome(parse: Callable[[str], tuple[Any, bool]]) -> object:
        try:
            return parse(text)
        except yaml.YAMLError as exc:
            return type(exc), str(exc)

    assert outcome(yaml_lines._parse) == outcome(yaml_lines._parse_checked)


def test_aliases_stay_one_object_and_recursion_falls_back(tmp_path: Path) -> None:
    data, duplicates = yaml_lines._parse("a: &x {k: [1]}\nb: *x\n")
    assert data["a"] is data["b"] and not duplicates
    data, _ = yaml_lines._parse("a: &r [*r]\n")  # recursive: PyYAML's constructor builds it
    assert data["a"][0] is data["a"]
    assert yaml_lines._parse("a: 1\n0x1: 2\n'a': 3\n") == ({"a": 3, 1: 2}, True)
