"""Fresh within seconds: the server's debounced refresh of accounts whose data just changed.

Every write of recompute inputs marks its account (`lifecycle.scoring.rollups`, triggers on tickets, notes, NPS and
account fields); `csbot serve` (with its scheduler) runs `refresh_once` every `CSBOT_REFRESH_SECONDS` (default 2 s; 0
turns it off), which recomputes the health, snapshot and stage of the marked accounts only, as of today in
`CSBOT_TIMEZONE` (`lifecycle.recompute.refresh_changed`). A burst of ingest calls for one account in that interval
costs one recompute of that account; the account's card shows the new health after the next tick. The alert rules
and the churn model still run with the nightly job. Several replicas may tick at once: each computes the same
results from the same rows, and a mark is cleared only by the run that saw its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine

from lifecycle.recompute import RecomputeSummary, refresh_changed
from lifecycle.scoring.health import Scorecard, load_scorecard
from lifecycle.scoring.stages import StageMachine, load_stage_machine
from lifecycle.store.db import session_scope
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.refresh")


@lru_cache(maxsize=4)
def _config(scorecard_file: str | None, stages_file: str | None) -> tuple[Scorecard, StageMachine]:
    return (load_scorecard(Path(scorecard_file) if scorecard_file else None),
            load_stage_machine(Path(stages_file) if stages_file else None))


def refresh_once(engine: Engine, settings: Settings) -> RecomputeSummary | None:
    """Recompute the marked accounts now (one transaction); None when nothing was marked."""
    scorecard, machine = _config(str(settings.scorecard_file) if settings.scorecard_file else None,
                                 str(settings.stages_file) if settings.stages_file else None)
    today = datetime.now(settings.tz).date()
    with session_scope(engine) as session:
        summary = refresh_changed(session, as_of=today, scorecard=scorecard, machine=machine)
    if summary is not None:
        log.info("refreshed %d changed account(s) in %.3f s", summary.accounts, summary.seconds)
    return summary


async def run_refresher(engine: Engine, settings: Settings, stop: asyncio.Event, interval: float) -> None:
    """Call `refresh_once` every `interval` seconds (in a worker thread) until `stop` is set."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(refresh_once, engine, settings)
        except Exception:  # a failed tick is retried on the next one; the marks are still there
            log.exception("refresh of changed accounts failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
