"""Group commit for the usage ingest: small requests that arrive close together are applied in one transaction.

Each `POST /api/usage` with a single event would otherwise pay for a whole transaction of its own (a handful of
statements and a commit), which caps concurrent single-event senders at a few hundred events a second. The
`IngestBatcher` collects the requests that arrive within a short window (`CSBOT_INGEST_BATCH_WINDOW_MS`, default
5 ms), and requests that arrive while a group is being written join the next group without waiting further.
A group is applied with `lifecycle.intake.ingest.ingest_group`, so every request gets its own result, exactly what it
would have got alone (a messageId sent twice has one effect, wherever the copies land).

If a group fails (one request whose data the database refuses), the group's transaction is rolled back and each
of its requests is applied again on its own: the others are accepted, only the failing one gets the error, and
nothing of it (or of anyone else) is half applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from lifecycle.intake.ingest import AnyCall, IngestOptions, IngestRequest, IngestResult, ingest_group
from lifecycle.store.db import session_scope
from lifecycle.store.models import utcnow

# A request with more calls than this is already a batch: it is applied on its own, without waiting.
GROUP_REQUEST_MAX_CALLS = 100
# Calls in one group at most: a bigger group would hold its transaction (and PostgreSQL's row locks) too long.
GROUP_MAX_CALLS = 2_000

log = logging.getLogger("csbot.ingest")


@dataclass
class _Waiting:
    request: IngestRequest
    done: asyncio.Future[IngestResult]


def apply_group(engine: Engine, requests: Sequence[IngestRequest], options: IngestOptions) -> list[Any]:
    """Apply `requests` in one committed transaction; if it fails, each request on its own. Returns per request
    its `IngestResult` or the exception that request raised."""
    try:
        with session_scope(engine) as session:
            return list(ingest_group(session, requests, options=options, now=utcnow()))
    except Exception as exc:  # which request failed shows when each is applied alone
        if len(requests) == 1:
            return [exc]
        log.warning("ingest group of %d requests failed (%s); applying them one by one", len(requests), exc)
    out: list[Any] = []
    for request in requests:
        try:
            with session_scope(engine) as session:
                out.append(ingest_group(session, [request], options=options, now=utcnow())[0])
        except Exception as exc:  # handed to that request's caller
            out.append(exc)
    return out


class IngestBatcher:
    """Collects small requests for `window` seconds and applies them together (see the module docstring).

    Lives on one event loop (the server's); `submit` is awaited by each request handler."""

    def __init__(self, engine: Engine, options: IngestOptions, *, window: float) -> None:
        self.engine = engine
        self.options = options
        self.window = window
        self._waiting: list[_Waiting] = []
        self._calls = 0
        self._full: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self.groups = 0  # groups written so far (for tests and metrics)

    async def submit(
        self, calls: Sequence[AnyCall], raws: Sequence[Any] | None = None, *, source: str | None = None
    ) -> IngestResult:
        """Apply one request's calls, grouped with the requests around it; raises what applying it raised."""
        request = IngestRequest(calls, raws, source)
        if self.window <= 0 or len(calls) > GROUP_REQUEST_MAX_CALLS:
            (outcome,) = await asyncio.to_thread(apply_group, self.engine, [request], self.options)
            return _unwrap(outcome)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, loop.create_future())
        self._waiting.append(waiting)
        self._calls += len(calls)
        if self._full is None:
            self._full = asyncio.Event()
        if self._calls >= GROUP_MAX_CALLS:
            self._full.set()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await asyncio.shield(waiting.done)

    async def _run(self) -> None:
        assert self._full is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.window)
        while self._waiting:
            group, size = self._take()
            self.groups += 1
            try:
                outcomes = await asyncio.to_thread(apply_group, self.engine, [w.request for w in group], self.options)
            except BaseException as exc:  # the thread itself failed or the loop is shutting down
                for w in group:
                    if not w.done.done():
                        w.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("ingest stopped"))
                raise
            for w, outcome in zip(group, outcomes, strict=True):
                if w.done.done():
                    continue
                if isinstance(outcome, BaseException):
                    w.done.set_exception(outcome)
                else:
                    w.done.set_result(outcome)
            log.debug("ingest group of %d requests (%d calls) applied", len(group), size)

    def _take(self) -> tuple[list[_Waiting], int]:
        """The next group: waiting requests in arrival order, up to GROUP_MAX_CALLS calls (at least one)."""
        group: list[_Waiting] = []
        size = 0
        while self._waiting and (not group or size + len(self._waiting[0].request.calls) <= GROUP_MAX_CALLS):
            w = self._waiting.pop(0)
            group.append(w)
            size += len(w.request.calls)
        self._calls -= size
        assert self._full is not None
        if self._calls < GROUP_MAX_CALLS:
            self._full.clear()
        return group, size


def _unwrap(outcome: Any) -> IngestResult:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
