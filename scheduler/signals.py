"""Wake-ups that reach every node at once: pause changes and unsubscribes (ARCHITECTURE.md,
invariants 4, 8).

A change is announced in its own transaction (``scheduler/store/signals.py``: ``NOTIFY
martech_<topic>`` on PostgreSQL). Each node runs one :class:`Listener` — a dedicated psycopg
connection that LISTENs and reconnects with backoff — which fires the node's :class:`Signals`;
``ServiceContext.begin`` also fires it for changes this process committed itself. Waiters
never depend on it: they :meth:`Signals.wait` with their old poll interval as the timeout, so
a missed notification (SQLite between processes, the listener reconnecting) costs one poll,
never a lost wake-up.

Waiting without a lost wake-up: take a :class:`Mark` *before* reading the state, then wait on
it; a signal fired in between makes the wait return at once::

    mark = ctx.signals.mark(PAUSES, SUPPRESSIONS)
    ... re-read pause state and suppressions ...
    await ctx.signals.wait(mark, timeout_s=poll_s, stop=ctx.stopping)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass

import sqlalchemy as sa

from scheduler.store.signals import TOPICS, channel, topic_of

log = logging.getLogger("martech.signals")

LISTEN_CHECK_S = 10.0  # an idle LISTEN connection is pinged this often (a silent drop)
RECONNECT_S = (0.5, 30.0)  # first and longest wait before reconnecting
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Mark:
    """The versions of some topics when the mark was taken."""

    versions: tuple[tuple[str, int], ...]


class Signals:
    """This process's wake-ups by topic. Thread-safe: ``fire`` from any thread or loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._waiters: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self.listening = False  # a Listener's connection is up: waits end at once on change

    def mark(self, *topics: str) -> Mark:
        with self._lock:
            return Mark(tuple((t, self._versions.get(t, 0)) for t in topics))

    def changed(self, mark: Mark) -> bool:
        """Did any topic of ``mark`` fire since it was taken?"""
        with self._lock:
            return any(self._versions.get(t, 0) != v for t, v in mark.versions)

    def fire(self, *topics: str) -> None:
        with self._lock:
            for topic in topics:
                self._versions[topic] = self._versions.get(topic, 0) + 1
            waiters = list(self._waiters.items())
        for event, loop in waiters:
            with contextlib.suppress(RuntimeError):  # that waiter's loop has closed
                loop.call_soon_threadsafe(event.set)

    async def wait(self, mark: Mark, timeout_s: float, *,
                   stop: asyncio.Event | None = None) -> bool:
        """Wait until a topic of ``mark`` fires (True) or ``timeout_s`` passes or ``stop``
        is set (False). Returns at once if one fired since the mark was taken."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        event = asyncio.Event()
        with self._lock:
            self._waiters[event] = loop
        try:
            while not self.changed(mark):
                remaining = deadline - loop.time()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                event.clear()
                if self.changed(mark):  # fired between the check and the clear
                    break
                await _first(event, stop, remaining)
            return True
        finally:
            with self._lock:
                self._waiters.pop(event, None)


async def _first(event: asyncio.Event, stop: asyncio.Event | None, timeout_s: float) -> None:
    waits = [asyncio.ensure_future(event.wait())]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def conninfo(url: sa.URL) -> str:
    """A libpq URI for the SQLAlchemy URL (its query options, e.g. search_path, kept)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """One LISTEN connection per node feeding ``signals``; reconnects with backoff.

    After every (re)connection all topics fire once: whatever changed while nobody listened
    is re-read by the waiters.
    """

    def __init__(self, url: sa.URL, signals: Signals, topics: tuple[str, ...] = TOPICS
                 ) -> None:
        self.url = url
        self.signals = signals
        self.topics = topics
        self.connected = asyncio.Event()  # set while listening (tests wait for it)
        self.backend_pid: int | None = None  # the server process of the LISTEN connection

    async def run(self, stopping: asyncio.Event) -> None:
        delay_s = RECONNECT_S[0]
        while not stopping.is_set():
            try:
                await self._listen(stopping)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # psycopg's messages may quote the connection string: say what, not how.
                log.warning("LISTEN connection lost (%s); polling until it is back, retry "
                            "in %.1fs", type(exc).__name__, delay_s,
                            extra={"action": "listen_lost"})
            finally:
                self.signals.listening = False
                self.connected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay_s)
            delay_s = min(delay_s * 2, RECONNECT_S[1])

    async def _listen(self, stopping: asyncio.Event) -> None:
        # The driver is loaded on PostgreSQL only (as SQLAlchemy loads it): every process
        # imports this module through ServiceContext, and SQLite users never need psycopg.
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            conninfo(self.url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        async with conn:
            self.backend_pid = conn.info.backend_pid
            for topic in self.topics:
                await conn.execute(f"LISTEN {channel(topic)}")  # type: ignore[arg-type]
            self.signals.listening = True
            self.connected.set()
            self.signals.fire(*self.topics)
            log.info("listening for pause and suppression changes",
                     extra={"action": "listen"})
            while not stopping.is_set():
                async for note in conn.notifies(timeout=LISTEN_CHECK_S):
                    self.signals.fire(topic_of(note.channel))
                    if stopping.is_set():
                        return
                await conn.execute("SELECT 1")  # quiet for a while: is the connection alive?


async def run_listener(url: sa.URL, signals: Signals, stopping: asyncio.Event) -> None:
    """The listener for a database; nothing to do on SQLite (waiters poll)."""
    if url.get_backend_name() != "postgresql":
        return
    await Listener(url, signals).run(stopping)
