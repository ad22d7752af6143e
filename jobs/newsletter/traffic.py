"""Who opened or clicked: a person, a machine (privacy proxy, link scanner), or suspect.

The verdict is drawn once, when the event is recorded, from the signals stored beside it:
the client's user agent and address (``data/machine_traffic.json``, shipped as data so IT
can extend it) and the seconds since the message was handed to the relay. A machine match
wins; otherwise an event within ``SUSPECT_WITHIN_S`` of delivery is ``suspect`` (nobody reads
and clicks that fast: Mautic's rule), and the rest is ``human``.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HUMAN, MACHINE, SUSPECT = "human", "machine", "suspect"
TRAFFIC_CLASSES = (HUMAN, MACHINE, SUSPECT)
SUSPECT_WITHIN_S = 2.0
DATA_FILE = Path(__file__).resolve().parent / "data" / "machine_traffic.json"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class MachineAgent:
    name: str
    label: str
    user_agents: tuple[str, ...]  # lower-cased substrings
    user_agent_exact: tuple[str, ...]
    networks: tuple[Network, ...]


@dataclass(frozen=True)
class Verdict:
    traffic: str  # human | machine | suspect
    agent: str | None  # the machine's name, "fast" for suspect, None for human


@lru_cache(maxsize=4)
def load_agents(path: Path = DATA_FILE) -> tuple[MachineAgent, ...]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return tuple(
        MachineAgent(a["name"], a["label"], tuple(s.lower() for s in a.get("user_agents", [])),
                     tuple(a.get("user_agent_exact", [])),
                     tuple(ipaddress.ip_network(n) for n in a.get("networks", [])))
        for a in raw["agents"])


def _address(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not ip:
        return None
    try:
        return ipaddress.ip_address(ip.strip())
    except ValueError:
        return None


def machine_of(user_agent: str | None, ip: str | None,
               agents: tuple[MachineAgent, ...] | None = None) -> str | None:
    """The name of the machine these signals belong to, or None."""
    agents = agents if agents is not None else load_agents()
    ua = (user_agent or "").strip()
    ua_lower = ua.lower()
    address = _address(ip)
    for agent in agents:
        if ua and (ua in agent.user_agent_exact or any(s in ua_lower for s in agent.user_agents)):
            return agent.name
        if address is not None and any(address in net for net in agent.networks
                                       if net.version == address.version):
            return agent.name
    return None


def classify(user_agent: str | None, ip: str | None, after_send_s: float | None) -> Verdict:
    machine = machine_of(user_agent, ip)
    if machine is not None:
        return Verdict(MACHINE, machine)
    if after_send_s is not None and after_send_s < SUSPECT_WITHIN_S:
        return Verdict(SUSPECT, "fast")
    return Verdict(HUMAN, None)


def agent_labels() -> dict[str, str]:
    return {a.name: a.label for a in load_agents()} | {"fast": "within 2 s of delivery"}
