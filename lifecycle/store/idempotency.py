"""Deliveries already handled, shared through the database: `first_time(engine, key, ttl=…)` is True for the
first caller of a key on any replica until the key expires, False for every repeat.

The chat adapters use it for what a platform may deliver twice — a Slack retry of an event, the same button
press, a replayed signed request, a Telegram update sent again — so each has one effect even when the repeat
reaches another replica. The primary key decides: an INSERT that conflicts means someone was first.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from lifecycle.store.models import SeenKey, utcnow

PRUNE_EVERY = 500  # calls per process between sweeps of expired keys
_calls = itertools.count(1)


def first_time(engine: Engine, key: str, *, ttl: timedelta, now: datetime | None = None) -> bool:
    """Claim `key` for `ttl`; False when it is already claimed and not yet expired."""
    moment = now or utcnow()
    table = SeenKey.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        if next(_calls) % PRUNE_EVERY == 0:
            conn.execute(delete(table).where(table.c.expires_at < moment))
        else:
            conn.execute(delete(table).where(table.c.key == key, table.c.expires_at < moment))
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(key=key, expires_at=moment + ttl))
    except IntegrityError:
        return False
    return True
