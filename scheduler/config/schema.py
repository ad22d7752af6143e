"""JSON Schemas of the config files, so editors can autocomplete and check them.

Built from the registered campaign kinds (:class:`CampaignTypes`): a kind's model appears in the
campaign schema, and a kind with a list file (``reports.yaml``) gets a schema of that file too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, create_model

from scheduler.config.campaigns import CampaignTypes
from scheduler.config.checks import ChecksFile

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schemas(types: CampaignTypes) -> dict[str, dict[str, Any]]:
    campaign = types.adapter.json_schema(by_alias=True)
    campaign_file = {
        "$schema": _DRAFT,
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
    out = {"campaign.schema.json": campaign_file, "checks.schema.json": checks}
    for list_file in types.list_files:
        model = types.model(list_file.kind)
        fields: dict[str, Any] = {list_file.key: (list[model], Field(default_factory=list))}  # type: ignore[valid-type]
        file_model = create_model(f"{list_file.key.title()}File", **fields)  # {"reports": [...]}
        schema = file_model.model_json_schema(by_alias=True)
        schema["title"] = f"martech {list_file.key} file"
        out[f"{Path(list_file.filename).stem}.schema.json"] = schema
    return out


def write_schemas(out: Path, types: CampaignTypes) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas(types).items():
        path = out / name
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written
