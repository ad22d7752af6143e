"""Sizes as people write them in YAML: ``300kB``, ``2MB``, ``1.5 MB``, ``512KiB``; a bare
number is bytes. ``k``/``M``/``G`` are decimal (1000), ``Ki``/``Mi``/``Gi`` binary (1024), as
browsers' network panels and PageSpeed report page weight."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB]?$")
_FACTOR = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3,
           "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes in ``value``.

    :raises ValueError: if the text is not a size.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size like 300kB or 2MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        return parse_size(str(value))
    if not isinstance(value, str):
        raise ValueError("expected a size like 300kB or 2MB")
    match = _SIZE.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size; expected e.g. 300kB, 2MB, 512KiB")
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * _FACTOR[unit])


def format_size(size_bytes: float) -> str:
    """``2.1 MB``, ``850 kB``, ``512 B``: decimal units, three significant figures."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size_bytes >= factor:
            value = size_bytes / factor
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(size_bytes)} B"


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?\s*([kKmMgG]i?)?[bB]?$"}),
]
