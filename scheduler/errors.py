"""One exception root; each subclass carries the facts a person needs to fix the problem."""

from __future__ import annotations

from dataclasses import dataclass


class MartechError(Exception):
    """Something went wrong in martech."""


@dataclass(frozen=True)
class Problem:
    """One problem in a config file, printed as ``file:line: field: message``."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class ConfigError(MartechError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class TemplateError(MartechError):
    """A template failed to compile or render."""

    def __init__(self, template: str, message: str, line: int | None = None) -> None:
        self.template = template
        self.line = line
        self.message = message
        where = f"{template}:{line}" if line else template
        super().__init__(f"{where}: {message}")


class HeaderInjectionError(MartechError):
    """A header value contains CR or LF, which would let it forge other headers."""

    def __init__(self, header: str) -> None:
        self.header = header
        super().__init__(f"header {header!r} contains a line break (CR/LF); refused")


class DeliveryError(MartechError):
    """Sending one message failed."""

    def __init__(
        self,
        message: str,
        *,
        recipient: str | None = None,
        code: int | None = None,
        permanent: bool = False,
    ) -> None:
        self.recipient = recipient
        self.code = code
        self.permanent = permanent
        super().__init__(message)


class TransportUnavailable(MartechError):
    """The transport (e.g. the SMTP relay) cannot be reached at all."""


class UnknownCampaign(MartechError):
    """No campaign of that name is configured."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no campaign named {name!r} in the configuration")


class DatabaseUnavailable(MartechError):
    """The database cannot be reached."""
