"""JSON Schemas of the config files, so editors can autocomplete and check them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from scheduler.config.campaigns import Campaign, ReportCampaign
from scheduler.config.checks import ChecksFile


class _ReportsFile(BaseModel):
    reports: list[ReportCampaign] = Field(default_factory=list)


def schemas() -> dict[str, dict[str, Any]]:
    campaign = TypeAdapter(Campaign).json_schema(by_alias=True)
    campaign_file = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "martech campaign file",
        "$defs": campaign.pop("$defs", {}),
        "anyOf": [
            campaign,
            {"type": "array", "items": campaign},
            {"type": "object", "properties": {"campaigns": {"type": "array", "items": campaign}},
             "required": ["campaigns"], "additionalProperties": False},
        ],
    }
    checks = ChecksFile.model_json_schema(by_alias=True)
    checks["title"] = "martech checks file"
    reports = _ReportsFile.model_json_schema(by_alias=True)
    reports["title"] = "martech reports file"
    return {"campaign.schema.json": campaign_file, "checks.schema.json": checks,
            "reports.schema.json": reports}


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = out / name
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written
