"""The delivery outbox: messages to chat targets stored as rows, claimed by workers, retried until sent or failed.

A `Delivery` is written in the same transaction as whatever caused it (an alert, a digest), so a message exists
exactly when its cause does. Workers `claim` due rows and commit the claim *before* talking to a platform: a row
in `sending` says "a worker may have posted this". Its `next_attempt_at` is then the lease: when a worker dies,
the row becomes claimable again once the lease expires, and `attempts` (bumped by every claim) is the fencing
token that stops a late, stale worker from overwriting the outcome of the attempt that replaced it.

Life of a row: pending → sending → sent; or sending → pending (retry with backoff) → … → failed after
`max_attempts`; failed → pending again on demand (`retry_failed`). A row no configured platform can reach is
`undeliverable` from the start (or from `redirect`, when its platform is not configured where it waits), with the
reason in `last_error`; `redirect` puts it back to pending once it can be routed. Nothing here knows about chat
platforms: the payload is opaque JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from lifecycle.store.errors import NotFoundError
from lifecycle.store.models import Delivery, utcnow

log = logging.getLogger("csbot.outbox")

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
UNDELIVERABLE = "undeliverable"  # no configured platform reaches the recipient; never claimed, requeued on demand
STATUSES = (PENDING, SENDING, SENT, FAILED, UNDELIVERABLE)

MAX_ATTEMPTS = 8
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
DEFAULT_LEASE = timedelta(minutes=5)
ERROR_MAX = 1000  # last_error is for people reading `csbot deliveries`, not a log archive


def enqueue(
    session: Session,
    *,
    platform: str,
    target: str,
    payload: dict[str, Any],
    kind: str = "alert",
    alert_id: int | None = None,
    dedupe: str | None = None,
    undeliverable: str | None = None,
) -> Delivery:
    """Add a pending delivery to the caller's transaction (flushed, not committed: it commits with its cause).

    `dedupe` makes enqueueing idempotent without a schema column: when a delivery of the same kind to the same
    platform and target already carries this key in its payload, that row is returned and nothing is added.
    `undeliverable` records the row as undeliverable instead, with that reason as its `last_error`.
    """
    body = dict(payload)
    if dedupe is not None:
        existing = _find_dedupe(session, platform=platform, target=target, kind=kind, dedupe=dedupe)
        if existing is not None:
            return existing
        body["dedupe"] = dedupe
    row = Delivery(
        alert_id=alert_id, kind=kind, platform=platform, target=target, payload=body,
        status=PENDING if undeliverable is None else UNDELIVERABLE, next_attempt_at=utcnow(),
        last_error=None if undeliverable is None else undeliverable[:ERROR_MAX],
    )
    session.add(row)
    session.flush()
    return row


def _find_dedupe(session: Session, *, platform: str, target: str, kind: str, dedupe: str) -> Delivery | None:
    # JSON path operators differ between SQLite and PostgreSQL; the (platform, target, kind) rows are few.
    rows = session.exec(
        select(Delivery).where(
            Delivery.platform == platform, Delivery.target == target, Delivery.kind == kind
        )
    ).all()
    return next((r for r in rows if r.payload.get("dedupe") == dedupe), None)


def claim(
    session: Session,
    *,
    limit: int,
    now: datetime,
    lease: timedelta = DEFAULT_LEASE,
    worker: str = "worker",
    platforms: Collection[str] | None = None,
) -> list[Delivery]:
    """Take up to `limit` due rows, oldest first, mark them `sending` under a lease, and commit.

    Due means `pending` with `next_attempt_at <= now`, or `sending` whose lease (`next_attempt_at`) expired
    because its worker died. One UPDATE … WHERE id IN (SELECT … LIMIT n) does the taking: on PostgreSQL the
    inner SELECT is `FOR UPDATE SKIP LOCKED`, so concurrent workers split the rows instead of queueing behind
    each other; SQLite has a single writer, and the one statement takes its write lock before reading.
    `platforms` restricts the claim to rows this worker can actually deliver.
    """
    due = (
        select(Delivery.id)
        .where(col(Delivery.status).in_((PENDING, SENDING)), col(Delivery.next_attempt_at) <= now)
        .order_by(col(Delivery.id))
        .limit(limit)
    )
    if platforms is not None:
        due = due.where(col(Delivery.platform).in_(list(platforms)))
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    taken = session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(due.scalar_subquery()))
        .values(status=SENDING, attempts=col(Delivery.attempts) + 1, next_attempt_at=now + lease)
        .returning(col(Delivery.id))
        .execution_options(synchronize_session=False)
    ).scalars().all()
    rows = _load(session, taken)
    for row in rows:  # snapshots of this claim: a later claim in the same session must not rewrite them
        session.expunge(row)
    session.commit()
    if rows:
        log.debug("worker %s claimed deliveries %s", worker, [r.id for r in rows])
    return rows


def _load(session: Session, ids: Sequence[int | None]) -> list[Delivery]:
    if not ids:
        return []
    rows = session.exec(
        select(Delivery).where(col(Delivery.id).in_(list(ids))).order_by(col(Delivery.id))
        .execution_options(populate_existing=True)
    ).all()
    return list(rows)


def backoff(attempts: int) -> timedelta:
    """Wait before the next try after `attempts` tries: 30 s, 60 s, 120 s … doubling, at most one hour."""
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_CAP)


def _fenced(delivery_id: int, attempt: int | None) -> list[Any]:
    """Only the worker holding the current attempt may record its outcome; a stale one changes nothing."""
    conditions: list[Any] = [Delivery.id == delivery_id, Delivery.status == SENDING]
    if attempt is not None:
        conditions.append(Delivery.attempts == attempt)
    return conditions


def mark_sent(
    session: Session, delivery_id: int, message_ref: str | None, *, now: datetime | None = None
) -> bool:
    """Record a delivery as sent with the platform's message reference; commits.

    Not fenced by attempt: if the message was posted, it was posted, whoever posted it. A row already `sent`
    keeps its first reference. Returns whether this call changed the row.
    """
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status != SENT)  # type: ignore[arg-type]
        .values(status=SENT, message_ref=message_ref, sent_at=now or utcnow(), last_error=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return _changed(result)


def mark_retry(
    session: Session,
    delivery_id: int,
    error: str,
    retry_after: float | None,
    now: datetime,
    *,
    attempt: int | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Record a failed attempt: back to `pending` after the backoff (or the platform's Retry-After, whichever
    is longer), or `failed` once `max_attempts` tries are spent; commits. Returns the row's new status
    (or its unchanged status when `attempt` is stale)."""
    row = session.get(Delivery, delivery_id, populate_existing=True)
    if row is None:
        raise NotFoundError("delivery", str(delivery_id))
    attempts = row.attempts if attempt is None else attempt
    if attempts >= max_attempts:
        return mark_failed(session, delivery_id, error, attempt=attempt, now=now)
    wait = backoff(attempts)
    if retry_after is not None:
        wait = max(wait, timedelta(seconds=retry_after))
    result = session.execute(
        update(Delivery)
        .where(*_fenced(delivery_id, attempt))
        .values(status=PENDING, next_attempt_at=now + wait, last_error=error[:ERROR_MAX])
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return PENDING if _changed(result) else _status(session, delivery_id)


def mark_failed(
    session: Session, delivery_id: int, error: str, *, attempt: int | None = None, now: datetime | None = None
) -> str:
    """Give up on a delivery until someone retries it (`retry_failed`); commits. Returns the row's status."""
    result = session.execute(
        update(Delivery)
        .where(*_fenced(delivery_id, attempt))
        .values(status=FAILED, last_error=error[:ERROR_MAX], next_attempt_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if _changed(result):
        log.warning("delivery %s failed for good: %s", delivery_id, error)
        return FAILED
    return _status(session, delivery_id)


def retry_failed(session: Session, ids: Sequence[int] | None = None, *, now: datetime | None = None) -> int:
    """Put failed deliveries (all, or those in `ids`) back in the queue, due now, with a fresh attempt budget;
    commits. Returns how many rows were requeued."""
    stmt = update(Delivery).where(Delivery.status == FAILED)  # type: ignore[arg-type]
    if ids is not None:
        stmt = stmt.where(col(Delivery.id).in_(list(ids)))
    result = session.execute(
        stmt.values(status=PENDING, attempts=0, next_attempt_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def redirect(
    session: Session,
    delivery_id: int,
    *,
    expected: str,
    platform: str,
    target: str,
    payload: dict[str, Any],
    due: datetime,
    undeliverable: str | None = None,
) -> bool:
    """Point a waiting row at another platform and target and make it pending, due at `due`, with a fresh attempt
    budget; or, with `undeliverable` (the reason), record it undeliverable as of `due`. Only while the row is
    still `expected` (pending or undeliverable): a worker's claim in between wins. Flushes; returns whether the
    row changed."""
    values: dict[str, Any] = {"platform": platform, "target": target, "payload": payload, "next_attempt_at": due}
    if undeliverable is None:
        values |= {"status": PENDING, "attempts": 0, "last_error": None}
    else:
        values |= {"status": UNDELIVERABLE, "last_error": undeliverable[:ERROR_MAX]}
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.id) == delivery_id, col(Delivery.status) == expected)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return _changed(result)


def status_counts(session: Session) -> dict[str, int]:
    """How many deliveries are in each state (one GROUP BY); every state is present."""
    rows = session.execute(
        select(col(Delivery.status), func.count()).group_by(col(Delivery.status))
    ).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def list_deliveries(session: Session, status: str | None = None, *, limit: int | None = None) -> list[Delivery]:
    """Deliveries, newest first, optionally of one status."""
    stmt = select(Delivery).order_by(col(Delivery.id).desc())
    if status is not None:
        stmt = stmt.where(Delivery.status == status)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def _changed(result: Any) -> bool:
    return bool(getattr(result, "rowcount", 0))


def _status(session: Session, delivery_id: int) -> str:
    row = session.get(Delivery, delivery_id, populate_existing=True)
    return row.status if row is not None else ""
