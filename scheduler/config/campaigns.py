"""What every campaign file has in common, and the union of campaign kinds built from them.

Each job kind owns its campaign model (``jobs/<kind>/config.py``, a :class:`CampaignBase` with a
``kind: Literal[...]`` field); :class:`CampaignTypes` joins whichever models the registry holds
into one discriminated union, so a new kind needs no line here (docs/ARCHITECTURE.md, "Adding a
job kind").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, TypeAdapter, model_validator

from scheduler.config.base import Name, StrictModel


class UtmConfig(StrictModel):
    source: str | None = None
    medium: str | None = None
    campaign: str | None = Field(default=None, description="defaults to the campaign name")
    content: str | None = None
    term: str | None = None


class CampaignBase(StrictModel):
    name: Name
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    requires: list[str] = Field(default_factory=list, description="checks this campaign needs")
    enabled: bool = True

    def schedule_text(self) -> str:
        """How ``martech status`` describes a campaign without a ``schedule:`` of its own."""
        return "—"


class NotifyTarget(StrictModel):
    """Where a reminder or alert goes: an e-mail address or a webhook URL."""

    email: str | None = None
    webhook: str | None = None
    format: Literal["slack", "json"] = "slack"

    @model_validator(mode="after")
    def _one_target(self) -> NotifyTarget:
        if (self.email is None) == (self.webhook is None):
            raise ValueError("give exactly one of email or webhook")
        return self


@dataclass(frozen=True)
class ListFile:
    """A config file other than ``campaigns/*.yaml`` holding a list of one kind, e.g.
    ``reports.yaml`` with ``reports: [...]`` (each entry gets ``kind: report``)."""

    filename: str
    key: str
    kind: str


@dataclass(frozen=True)
class CampaignTypes:
    """The campaign kinds a configuration may use: their models and their extra list files."""

    models: tuple[type[CampaignBase], ...]
    list_files: tuple[ListFile, ...] = field(default=())

    @staticmethod
    def kind_of(model: type[CampaignBase]) -> str:
        (kind,) = get_args(model.model_fields["kind"].annotation)
        return str(kind)

    @cached_property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.kind_of(m) for m in self.models)

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        """One discriminated union over every registered model (pydantic needs two or more
        members for a union; a single kind is validated as itself)."""
        if not self.models:
            raise ValueError("no campaign kinds registered")
        members: Any = self.models[0] if len(self.models) == 1 else Union[tuple(self.models)]  # noqa: UP007
        if len(self.models) > 1:
            members = Annotated[members, Field(discriminator="kind")]
        return TypeAdapter(members)

    def model(self, kind: str) -> type[CampaignBase]:
        return self.models[self.kinds.index(kind)]

    @classmethod
    def of(cls, models: Sequence[type[CampaignBase]],
           list_files: Sequence[ListFile] = ()) -> CampaignTypes:
        return cls(tuple(models), tuple(list_files))


__all__ = ["CampaignBase", "CampaignTypes", "ListFile", "NotifyTarget", "UtmConfig"]
