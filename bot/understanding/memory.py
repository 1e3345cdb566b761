"""Conversation memory: the last account and question, and a pending clarification or confirmation, per person and
conversation, in the `conversation_state` table (so every replica shares it), forgotten after the idle time.

The state is a small JSON object written and read only here:
`{"account": {"id", "name"}, "intent", "command", "query": {...}, "pending": {...}, "lang"}`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from bot.core.messages import Incoming
from lifecycle.store.models import ConversationState, utcnow

MAX_STATE = 8_000  # characters: a state is a few hundred; anything larger is not ours
_UPSERTS: dict[str, Any] = {"sqlite": sqlite_insert, "postgresql": pg_insert}


def conversation_key(incoming: Incoming) -> str:
    """platform:sender:conversation — a console session, a Slack DM or thread, a Telegram chat."""
    where = incoming.channel_id or "direct"
    thread = incoming.raw_ids.get("thread_ts")
    if thread:
        where = f"{where}/{thread}"
    return f"{incoming.platform}:{incoming.sender_id}:{where}"[:250]


_RECALL = select(col(ConversationState.state), col(ConversationState.updated_at)).where(
    col(ConversationState.key) == bindparam("key"))


def recall(session: Session, key: str, *, ttl_minutes: int) -> dict[str, Any]:
    row: Any
    if session.get_bind().dialect.name in _UPSERTS:
        # Core, not the ORM (a third of the cost): the row is only ever written by `remember`'s one statement
        row = session.connection().execute(_RECALL, {"key": key}).one_or_none()
    else:
        row = session.get(ConversationState, key)
    if row is None or row.updated_at < utcnow() - timedelta(minutes=ttl_minutes):
        return {}
    try:
        state = json.loads(row.state)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def pending_elsewhere(session: Session, incoming: Incoming, *, ttl_minutes: int) -> tuple[str, dict[str, Any]] | None:
    """The sender's latest conversation with a question still waiting (within the idle time): a yes that arrives
    where the question was not asked (it was asked in a group and answered in a private chat) still finds it."""
    prefix = f"{incoming.platform}:{incoming.sender_id}:"
    rows = session.exec(
        select(ConversationState)
        .where(col(ConversationState.key).startswith(prefix, autoescape=True),
               col(ConversationState.updated_at) >= utcnow() - timedelta(minutes=ttl_minutes))
        .order_by(col(ConversationState.updated_at).desc()).limit(5)
    ).all()
    for row in rows:
        try:
            state = json.loads(row.state)
        except ValueError:
            continue
        if isinstance(state, dict) and isinstance(state.get("pending"), dict):
            return row.key, state
    return None


def remember(session: Session, key: str, state: dict[str, Any]) -> None:
    text = json.dumps(state, ensure_ascii=False, default=str)
    if len(text) > MAX_STATE:
        state = {k: v for k, v in state.items() if k != "pending"}
        text = json.dumps(state, ensure_ascii=False, default=str)[:MAX_STATE]
    now = utcnow()
    dialect = session.get_bind().dialect.name
    if dialect in _UPSERTS:
        # one statement, whether or not the conversation has a row yet (and no race between two replicas)
        session.connection().execute(_upsert(dialect), {"key": key, "state": text, "updated_at": now})
        loaded = session.identity_map.get(identity_key(ConversationState, key))
        if loaded is not None:
            session.expire(loaded)  # read again if asked for in this session
        return
    row = session.get(ConversationState, key)
    if row is None:
        session.add(ConversationState(key=key, state=text, updated_at=now))
    else:
        row.state = text
        row.updated_at = now
        session.add(row)


@lru_cache(maxsize=2)
def _upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT (key) DO UPDATE, built once per dialect (its values are bound per call)."""
    stmt = _UPSERTS[dialect](ConversationState).values(
        key=bindparam("key"), state=bindparam("state"), updated_at=bindparam("updated_at"))
    return stmt.on_conflict_do_update(index_elements=["key"], set_={"state": stmt.excluded.state,
                                                                    "updated_at": stmt.excluded.updated_at})


def forget_idle(session: Session, *, ttl_minutes: int) -> int:
    """Delete conversations idle longer than the TTL (run by the nightly job); returns how many."""
    result = session.execute(
        delete(ConversationState).where(col(ConversationState.updated_at) < utcnow() - timedelta(minutes=ttl_minutes))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
