"""Run outcomes recorded in group commits: every run that finished meanwhile, one transaction.

A thousand runs due at once used to hand a thousand ``finish`` calls to the thread pool: six
threads fighting the event loop for the GIL (and, on SQLite, for the one write lock) while
the loop was still starting the rest, so the last runs started ~120 ms late. Now a run's
outcome waits in a queue, and one writer records the queue in a transaction at a time
(docs/ARCHITECTURE.md, "The engine"). Each outcome is still written under its own run's
fence, and a run only counts as recorded once its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from scheduler.context import ServiceContext
from scheduler.kinds import RunResult
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.engine")

# Bounds one transaction (and how long the write lock is held) when a big batch finishes.
GROUP_MAX = 1000

Outcome = tuple[RunRow, RunResult]
WriteAll = Callable[[Sequence[Outcome]], list[bool]]


class OutcomeWriter:
    """Queues outcomes and writes them with ``write_all`` (one transaction per call)."""

    def __init__(self, ctx: ServiceContext, write_all: WriteAll) -> None:
        self.ctx = ctx
        self.write_all = write_all
        self._queue: list[tuple[Outcome, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, run: RunRow, result: RunResult) -> bool:
        """Write ``result`` for ``run``; True once committed, False when fenced out.

        Raises what the write raised (an outage): the caller retries, as for any run error.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(((run, result), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="run-outcomes")
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # runs finishing in this same tick join the first group
        while self._queue:
            group, self._queue = self._queue[:GROUP_MAX], self._queue[GROUP_MAX:]
            outcomes = [outcome for outcome, _future in group]
            try:
                answers: list[bool | BaseException] = list(
                    await self.ctx.in_thread(self.write_all, outcomes))
            except Exception:
                # One outcome the database refuses must not hold back the others: each is
                # written on its own, and only the failing ones see their error.
                answers = await self.ctx.in_thread(self._one_by_one, outcomes)
            for (_outcome, future), answer in zip(group, answers, strict=True):
                if future.done():  # its run was cancelled (shutdown) while waiting
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    def _one_by_one(self, outcomes: Sequence[Outcome]) -> list[bool | BaseException]:
        answers: list[bool | BaseException] = []
        for outcome in outcomes:
            try:
                answers.append(self.write_all([outcome])[0])
            except Exception as exc:
                answers.append(exc)
        return answers
