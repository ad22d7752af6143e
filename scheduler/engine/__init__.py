"""The scheduling engine (docs/ARCHITECTURE.md, "The engine"): one module per job."""

from scheduler.engine.claims import ClaimedRun
from scheduler.engine.core import Engine
from scheduler.engine.execute import OUTAGES
from scheduler.engine.holds import RELEASED
from scheduler.engine.planning import effective_grace, next_fire_times, plan_claims

__all__ = ["OUTAGES", "RELEASED", "ClaimedRun", "Engine", "effective_grace", "next_fire_times",
           "plan_claims"]
