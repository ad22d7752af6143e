"""The YAML dialect people write by hand: 10:00 stays a time, on/no stay words."""

from __future__ import annotations

from pathlib import Path

import pytest

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
