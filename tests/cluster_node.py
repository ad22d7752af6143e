"""A ``martech`` entry point with one more job kind, for tests of several real nodes.

``python -m tests.cluster_node run`` is ``martech run`` with every built-in kind plus ``gate``:
a run of a gate campaign appends ``<node> <run id> <lease>`` to ``<var>/gate-started``, waits
until the file ``<var>/gate-open`` exists (the test decides how long a run lasts), then appends
the same line to ``<var>/gate-done`` and reports which node finished it. Nodes sharing one
var directory (the tests give them one) write to the same files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from martech.compose import build_registry
from scheduler.cli import make_cli
from scheduler.config.base import ScheduleConfig
from scheduler.config.campaigns import CampaignBase
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import Problem
from scheduler.kinds import RunResult, ScheduleSpec
from scheduler.settings import Settings
from scheduler.store.runs import RunRow

GATE_POLL_S = 0.05


class GateCampaign(CampaignBase):
    kind: Literal["gate"]
    schedule: ScheduleConfig


class GateKind:
    kind = "gate"
    campaign_model = GateCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        schedule = campaign.schedule
        return [ScheduleSpec(campaign.name, campaign.name, self.kind, schedule.to_schedule(),
                             schedule.misfire_grace, schedule.missed)]

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        var = Path(ctx.settings.var_dir)
        line = f"{ctx.node} {run.id} {run.lease_gen}\n"
        _append(var / "gate-started", line)
        while not (var / "gate-open").exists():
            await asyncio.sleep(GATE_POLL_S)  # the job's own work: waiting for the gate
        _append(var / "gate-done", line)
        return RunResult("done", f"finished by {ctx.node}")

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings
                 ) -> list[Problem]:
        return []


def _append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line)


def main() -> None:
    registry = build_registry()
    registry.add_kind(GateKind())
    make_cli(registry)()


if __name__ == "__main__":
    main()
