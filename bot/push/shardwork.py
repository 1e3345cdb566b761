"""Helping with the nightly recompute: every `csbot serve` replica works on the shards of an open run.

The replica whose scheduler runs the nightly job plans the day's run (`lifecycle.shards`) and works on it; every
other replica (with its scheduler) looks for an open run every `CSBOT_SHARD_POLL_SECONDS` (default 5 s; 0 turns
it off) and claims its pending shards one at a time, until none is left. A run planned with another configuration
(a replica whose scorecard or stage file differs) is left alone: its results would not be the run's. Only on
PostgreSQL, where replicas share a database; SQLite has one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy import Engine

from bot.push.refresh import _config
from lifecycle.recompute import config_digest
from lifecycle.shards import ShardResult, open_runs, work
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.shards")


def help_once(engine: Engine, settings: Settings) -> list[ShardResult]:
    """Work every claimable shard of the open runs planned with this replica's configuration."""
    scorecard, machine = _config(str(settings.scorecard_file) if settings.scorecard_file else None,
                                 str(settings.stages_file) if settings.stages_file else None)
    digest = config_digest(scorecard, machine)
    lease = timedelta(seconds=settings.recompute_lease_seconds)
    done: list[ShardResult] = []
    for key in open_runs(engine):
        if not key.endswith(f":{digest}"):
            log.warning("recompute run %s has another configuration than this replica's (%s): not helping", key,
                        digest)
            continue
        done += work(engine, key, scorecard=scorecard, machine=machine, lease=lease, blocking=False)
    if done:
        log.info("helped with the recompute: %d shard(s)", len(done))
    return done


async def run_shard_helper(engine: Engine, settings: Settings, stop: asyncio.Event, interval: float) -> None:
    """Call `help_once` every `interval` seconds (in a worker thread) until `stop` is set."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(help_once, engine, settings)
        except Exception:  # a failed look is tried again on the next tick; a claimed shard's lease covers it
            log.exception("helping with the recompute failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
