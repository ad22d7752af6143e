"""What ``martech validate`` checks in a built message's header block, as a relay would.

The builder already refuses CR/LF in header values (``HeaderInjectionError``); this looks at the
bytes it produced: every line ASCII (non-ASCII text must be RFC 2047 encoded-words), no line over
RFC 5322's hard limit of 998 octets, no stray CR or LF inside a line.
"""

from __future__ import annotations

MAX_LINE_OCTETS = 998


def header_problems(data: bytes) -> list[tuple[str, str]]:
    """``(header name, problem)`` for the header block of the message ``data`` (CRLF ends)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    problems: list[tuple[str, str]] = []
    name = ""
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].decode("ascii", "replace")
        if b"\r" in line or b"\n" in line:
            problems.append((name, f"header {name}: a bare CR or LF inside a line"))
        if len(line) > MAX_LINE_OCTETS:
            problems.append((name, f"header {name}: a line of {len(line)} octets (at most "
                                   f"{MAX_LINE_OCTETS})"))
        if any(byte > 0x7E or (byte < 0x20 and byte != 0x09) for byte in line):
            problems.append((name, f"header {name}: raw non-ASCII or control characters "
                                   "(not encoded)"))
    return problems
