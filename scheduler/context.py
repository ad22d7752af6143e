"""What every job and service component gets: settings, config, database, clock, transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scheduler.clock import Clock, SystemClock
from scheduler.config.loader import LoadedConfig
from scheduler.settings import Settings
from scheduler.signals import Signals
from scheduler.store import signals as store_signals

T = TypeVar("T")


@dataclass
class ServiceContext:
    settings: Settings
    config: LoadedConfig  # replaced on reload; read it afresh at the start of each unit of work
    db: Engine
    clock: Clock = field(default_factory=SystemClock)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    extras: dict[str, Any] = field(default_factory=dict)  # per-kind shared objects (pools, …)
    signals: Signals = field(default_factory=Signals)  # pause/suppression wake-ups (signals.py)

    @property
    def node(self) -> str:
        return self.settings.node_name

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One transaction; changes it announced (``store.signals.notify``) wake this
        process's waiters once it has committed."""
        with self.db.begin() as conn:
            try:
                yield conn
            finally:
                topics = store_signals.take_pending(conn)
        if topics:
            self.signals.fire(*topics)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database work off the event loop."""
        return await asyncio.to_thread(fn, *args)

    def log(self, name: str) -> logging.Logger:
        return logging.getLogger(name)
