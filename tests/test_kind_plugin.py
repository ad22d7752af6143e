"""A job kind plugs in without a line changed in scheduler/: a fake kind, registered in the
test, appears in ``martech schema`` and ``martech validate`` (ARCHITECTURE.md, "Adding a job
kind")."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import click
import pytest
from click.testing import CliRunner

from martech.compose import build_registry
from scheduler.cli import make_cli
from scheduler.config.campaigns import CampaignBase
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import Problem
from scheduler.kinds import RunResult, ScheduleSpec
from scheduler.schedules import Schedule
from scheduler.settings import Settings
from scheduler.store.runs import RunRow
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("restore_logging")


class WebinarCampaign(CampaignBase):
    """A kind the product does not have: a webinar reminder with a start time."""

    kind: Literal["webinar"]
    starts_at: str
    speakers: list[str]


class WebinarKind:
    kind = "webinar"
    campaign_model = WebinarCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        return [ScheduleSpec(campaign.name, campaign.name, self.kind,
                             Schedule(cron="0 9 * * *"), misfire_grace=timedelta(minutes=5))]

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        return RunResult("done")

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings
                 ) -> list[Problem]:
        if not campaign.speakers:
            return [config.campaign_problem(campaign.name, ("speakers",), "name a speaker")]
        return []


def _cli() -> click.Group:
    registry = build_registry()
    registry.add_kind(WebinarKind())
    return make_cli(registry)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    shutil.copytree(REPO / "config", tmp_path / "config")
    return {"MARTECH_CONFIG_DIR": str(tmp_path / "config"),
            "MARTECH_TEMPLATES_DIR": str(REPO / "templates" / "email"),
            "MARTECH_VAR_DIR": str(tmp_path / "var")}


def test_the_fake_kind_is_in_the_campaign_schema(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    schema = json.loads((tmp_path / "campaign.schema.json").read_text())
    webinar = schema["$defs"]["WebinarCampaign"]
    assert webinar["properties"]["kind"]["const"] == "webinar"
    assert set(webinar["required"]) >= {"name", "kind", "starts_at", "speakers"}
    # The built-in kinds are still there, and reports.yaml keeps its own schema.
    assert {"NewsletterCampaign", "ReportCampaign"} <= set(schema["$defs"])
    assert (tmp_path / "reports.schema.json").exists()


def test_validate_accepts_and_checks_the_fake_kind(env: dict[str, str]) -> None:
    campaigns = Path(env["MARTECH_CONFIG_DIR"]) / "campaigns"
    webinar = campaigns / "webinar.yaml"
    webinar.write_text("name: spring-webinar\nkind: webinar\nstarts_at: '2027-03-01 10:00'\n"
                       "speakers: [Ada]\n")
    ok = CliRunner().invoke(_cli(), ["validate"], env=env)
    assert ok.exit_code == 0, ok.output
    # three example campaign files, the report in reports.yaml, and the webinar
    assert "ok: 5 campaign(s)" in ok.output

    webinar.write_text("name: spring-webinar\nkind: webinar\nstarts_at: '2027-03-01 10:00'\n"
                       "speakers: []\nspeaker_notes: x\n")
    bad = CliRunner().invoke(_cli(), ["validate"], env=env)
    assert bad.exit_code == 1
    assert f"{webinar}:5: speaker_notes: unknown key" in bad.output
    # The same file with the schema fixed reaches the kind's own validate().
    webinar.write_text("name: spring-webinar\nkind: webinar\nstarts_at: '2027-03-01 10:00'\n"
                       "speakers: []\n")
    empty = CliRunner().invoke(_cli(), ["validate"], env=env)
    assert empty.exit_code == 1
    assert f"{webinar}:4: speakers: name a speaker" in empty.output


def test_without_the_kind_the_file_is_rejected_by_name(env: dict[str, str]) -> None:
    webinar = Path(env["MARTECH_CONFIG_DIR"]) / "campaigns" / "webinar.yaml"
    webinar.write_text("name: spring-webinar\nkind: webinar\nstarts_at: x\nspeakers: [Ada]\n")
    result = CliRunner().invoke(make_cli(build_registry()), ["validate"], env=env)
    assert result.exit_code == 1
    assert "kind must be one of newsletter, post_reminder, report" in result.output
