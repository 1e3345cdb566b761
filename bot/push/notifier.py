"""The outbox worker: drains `lifecycle.store.outbox` through one `DeliveryPort` per chat platform.

Each claimed row is already committed as `sending` before its port is called, and its outcome is committed right
after, one row at a time, so a crash loses at most the knowledge of one in-flight message. A row that has been
tried before (its worker died, or an earlier call failed in a way that may still have reached the platform) is
first looked up on the platform with `find_sent`: a port that can search its history (Slack, through the message
metadata carrying the delivery id) turns a would-be duplicate into a recorded send. A port that cannot search
(Telegram) answers None, and the message may be sent again: there delivery is at least once, the window being
the time between the platform accepting the message and the commit that follows.

Also here: the JSON form of a neutral `Reply` stored in `Delivery.payload`. A survey question's row (kind `survey`)
also marks its survey sent once the platform has it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine

from bot.core.messages import Button, Card, CardField, Image, Mention, Reply, Section
from lifecycle.store import outbox
from lifecycle.store.db import session_scope
from lifecycle.store.models import Delivery, utcnow
from lifecycle.surveys import mark_sent as mark_survey_sent

log = logging.getLogger("csbot.notifier")

PAYLOAD_VERSION = 1
SURVEY_KIND = "survey"  # a survey question; its payload names the survey, marked sent when the question is out
SURVEY_ID_KEY = "survey_id"
REROUTE_EVERY = 60.0  # seconds between the worker's passes over rows waiting for a platform it cannot send on


# --- the payload -------------------------------------------------------------------------------------------


def _button_json(b: Button) -> dict[str, Any]:
    return {"label": b.label, "action_id": b.action_id, "value": b.value, "style": b.style, "row": b.row}


def reply_to_payload(reply: Reply) -> dict[str, Any]:
    """A `Reply` as JSON-safe data for `Delivery.payload` (chart PNGs as base64)."""
    return {
        "v": PAYLOAD_VERSION,
        "text": reply.text,
        "cards": [
            {
                "title": c.title,
                "subtitle": c.subtitle,
                "fields": [{"label": f.label, "value": f.value} for f in c.fields],
                "sections": [{"title": s.title, "lines": list(s.lines)} for s in c.sections],
                "freshness": c.freshness,
                "buttons": [_button_json(b) for b in c.buttons],
            }
            for c in reply.cards
        ],
        "images": [
            {"png": base64.b64encode(i.png).decode("ascii"), "filename": i.filename, "title": i.title}
            for i in reply.images
        ],
        "buttons": [_button_json(b) for b in reply.buttons],
        "private": reply.private,
        "error_id": reply.error_id,
        "mention": {"user_id": reply.mention.user_id, "name": reply.mention.name} if reply.mention else None,
    }


def _button(data: Mapping[str, Any]) -> Button:
    return Button(label=data["label"], action_id=data["action_id"], value=data["value"],
                  style=data.get("style", "default"), row=int(data.get("row", 0)))


def payload_to_reply(payload: Mapping[str, Any]) -> Reply:
    """The `Reply` stored by `reply_to_payload`; keys it does not know (e.g. the outbox's dedupe) are ignored.

    Raises KeyError, TypeError or ValueError when the payload is not one."""
    if payload.get("v") != PAYLOAD_VERSION:
        raise ValueError(f"unknown delivery payload version {payload.get('v')!r}")
    mention = payload.get("mention")
    return Reply(
        text=payload.get("text", ""),
        cards=[
            Card(
                title=c["title"],
                subtitle=c.get("subtitle", ""),
                fields=tuple(CardField(f["label"], f["value"]) for f in c.get("fields", [])),
                sections=tuple(Section(s["title"], tuple(s.get("lines", []))) for s in c.get("sections", [])),
                freshness=c.get("freshness", ""),
                buttons=tuple(_button(b) for b in c.get("buttons", [])),
            )
            for c in payload.get("cards", [])
        ],
        images=[
            Image(png=base64.b64decode(i["png"]), filename=i["filename"], title=i.get("title", ""))
            for i in payload.get("images", [])
        ],
        buttons=[_button(b) for b in payload.get("buttons", [])],
        private=bool(payload.get("private", False)),
        error_id=payload.get("error_id"),
        mention=Mention(str(mention["user_id"]), str(mention.get("name", ""))) if mention else None,
    )


# --- the port ----------------------------------------------------------------------------------------------


class RetryLater(Exception):
    """The platform asked us to slow down; `retry_after` is its wait in seconds (None when it gave none)."""

    def __init__(self, retry_after: float | None, message: str = "rate limited") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryPort(Protocol):
    """What the worker needs from a chat platform."""

    platform: str

    async def send(self, target: str, reply: Reply, *, delivery_id: int) -> str:
        """Post `reply` to `target`, marked with `delivery_id` where the platform allows; the message ref."""
        ...

    async def find_sent(self, target: str, delivery_id: int) -> str | None:
        """The ref of a message already posted to `target` for `delivery_id`, or None (also: cannot tell)."""
        ...


# --- the worker --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainStats:
    """What one pass did: `sent` includes `reconciled` (found already posted, so not posted again)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    reconciled: int = 0

    @property
    def handled(self) -> int:
        return self.sent + self.retried + self.failed


@dataclass
class _Tally:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    reconciled: int = 0

    def freeze(self) -> DrainStats:
        return DrainStats(self.sent, self.retried, self.failed, self.reconciled)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(
    engine: Engine, limit: int, now: datetime, lease: timedelta, worker: str, platforms: list[str]
) -> list[Delivery]:
    with session_scope(engine) as session:
        return outbox.claim(session, limit=limit, now=now, lease=lease, worker=worker, platforms=platforms)


def _sent(engine: Engine, row: Delivery, ref: str | None, now: datetime) -> None:
    assert row.id is not None
    with session_scope(engine) as session:
        outbox.mark_sent(session, row.id, ref, now=now)
        survey_id = row.payload.get(SURVEY_ID_KEY) if row.kind == SURVEY_KIND else None
        if survey_id is not None:  # the question is out: the survey counts as sent from now
            mark_survey_sent(session, int(survey_id), ref, now)


def _retry(
    engine: Engine, row: Delivery, error: str, retry_after: float | None, now: datetime, max_attempts: int
) -> str:
    assert row.id is not None
    with session_scope(engine) as session:
        return outbox.mark_retry(
            session, row.id, error, retry_after, now, attempt=row.attempts, max_attempts=max_attempts
        )


def _failed(engine: Engine, row: Delivery, error: str, now: datetime) -> str:
    assert row.id is not None
    with session_scope(engine) as session:
        return outbox.mark_failed(session, row.id, error, attempt=row.attempts, now=now)


def _tried_before(row: Delivery) -> bool:
    """Whether an earlier attempt may have reached the platform (a crash, a timeout, a manual retry)."""
    return row.attempts > 1 or row.last_error is not None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _deliver(
    engine: Engine, port: DeliveryPort, row: Delivery, *, clock: Any, max_attempts: int, tally: _Tally
) -> None:
    assert row.id is not None
    try:
        reply = payload_to_reply(row.payload)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # no later attempt can read it either
        await asyncio.to_thread(_failed, engine, row, f"unreadable payload: {_describe(exc)}", clock())
        tally.failed += 1
        return
    try:
        if _tried_before(row):
            ref = await port.find_sent(row.target, row.id)
            if ref is not None:
                await asyncio.to_thread(_sent, engine, row, ref, clock())
                tally.sent += 1
                tally.reconciled += 1
                return
        if row.attempts > max_attempts:  # a worker died holding its last attempt; it was not posted
            await asyncio.to_thread(_failed, engine, row, row.last_error or "worker lost", clock())
            tally.failed += 1
            return
        ref = await port.send(row.target, reply, delivery_id=row.id)
    except RetryLater as exc:
        status = await asyncio.to_thread(_retry, engine, row, _describe(exc), exc.retry_after, clock(),
                                         max_attempts)
    except Exception as exc:  # any platform or network error: the outbox retries it, nothing is dropped
        log.warning("delivery %s to %s:%s failed: %s", row.id, row.platform, row.target, _describe(exc))
        status = await asyncio.to_thread(_retry, engine, row, _describe(exc), None, clock(), max_attempts)
    else:
        await asyncio.to_thread(_sent, engine, row, ref, clock())
        tally.sent += 1
        return
    if status == outbox.FAILED:
        tally.failed += 1
    else:
        tally.retried += 1


async def drain_once(
    engine: Engine,
    ports: Mapping[str, DeliveryPort],
    *,
    now: datetime | None = None,
    limit: int = 50,
    worker: str = "w",
    lease: timedelta = outbox.DEFAULT_LEASE,
    max_attempts: int = outbox.MAX_ATTEMPTS,
) -> DrainStats:
    """Claim one batch of due deliveries for the platforms in `ports` and send them one after another.

    `now` pins the clock (tests); otherwise each step reads the current time. Returns what happened.
    """

    def clock() -> datetime:
        return now if now is not None else utcnow()

    rows = await asyncio.to_thread(_claim, engine, limit, clock(), lease, worker, list(ports))
    tally = _Tally()
    for row in rows:
        if now is None and utcnow() >= row.next_attempt_at:
            # The lease ran out while earlier rows were slow: another worker may hold this row now.
            log.warning("outbox worker %s: lease on delivery %s expired before its turn", worker, row.id)
            continue
        await _deliver(engine, ports[row.platform], row, clock=clock, max_attempts=max_attempts, tally=tally)
    return tally.freeze()


async def run_worker(
    engine: Engine,
    ports: Mapping[str, DeliveryPort],
    stop_event: asyncio.Event,
    interval: float = 2.0,
    *,
    limit: int = 50,
    worker: str | None = None,
    reroute: Callable[[], object] | None = None,
    reroute_every: float = REROUTE_EVERY,
) -> None:
    """Drain the outbox until `stop_event` is set: again at once after a full batch, else every `interval` s.
    `reroute` (run in a thread at the start and every `reroute_every` s) routes again what waits for a platform
    this worker has no port for (`bot.push.undelivered.reroute_waiting`).

    A database error is logged and the loop carries on (the rows stay in the outbox)."""
    name = worker or default_worker_name()
    rerouted_at: float | None = None
    while not stop_event.is_set():
        full = False
        now = time.monotonic()
        if reroute is not None and (rerouted_at is None or now - rerouted_at >= reroute_every):
            rerouted_at = now
            try:
                await asyncio.to_thread(reroute)
            except Exception:
                log.exception("outbox worker %s: routing waiting deliveries again failed", name)
        try:
            stats = await drain_once(engine, ports, limit=limit, worker=name)
            full = stats.handled >= limit
        except Exception:
            log.exception("outbox worker %s: drain failed", name)
        if full:
            continue
        with contextlib.suppress(TimeoutError):  # the interval passed without a stop: drain again
            await asyncio.wait_for(stop_event.wait(), interval)
