"""Alert routing: who gets an alert, on which platform, and when — and escalation of ignored critical alerts.

`route_alerts` turns freshly raised alerts into outbox deliveries in the caller's transaction:

- target: the owner's Slack DM if they have a Slack id, else their Telegram chat; with no linked owner (none,
  inactive, or no chat identity) the team channel of `[routing]`;
- quiet hours in the recipient's time zone: a non-critical alert raised in them is delivered at the next
  `quiet_end` (its delivery's `next_attempt_at`); a critical one goes at once;
- a per-owner daily budget: the local day is the day the owner *receives* the message (held alerts count on the
  morning they arrive), counting deliveries already in the outbox. Alerts over budget are not sent; they are
  flagged `details["digest"] = True` for the owner's daily digest. Critical alerts count but are never held back,
  and the most severe alerts of a batch are placed first.

`escalate` sends a critical alert still `open` after `escalate_after_hours` to the owner's manager, once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlmodel import Session, col

from bot.alert_cards import alert_reply
from bot.i18n import add_messages, t
from bot.messages import Reply
from bot.notifier import reply_to_payload
from lifecycle.alerts import AlertConfig, RoutingConfig
from lifecycle.models import Account, Alert, Delivery, User
from lifecycle.outbox import enqueue

log = logging.getLogger("csbot.routing")

SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}
ALERT_KIND = "alert"
ESCALATION_KIND = "escalation"

add_messages(
    {
        "esc_text": {
            "en": "⏫ Escalation: {owner} has not acknowledged this critical alert for {hours} hours.",
            "zh": "⏫ 升级：{owner} 已有 {hours} 小时未确认这条严重告警。",
        },
        "esc_nobody": {"en": "nobody", "zh": "无人"},
    }
)


# ------------------------------------------------------------------------------------------------- time zones


def zone(name: str | None) -> ZoneInfo:
    """The named time zone; UTC for an unknown or empty name (a typo must not stop every delivery)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r; using UTC", name)
        return ZoneInfo("UTC")


def to_local(now: datetime, tz: ZoneInfo) -> datetime:
    """A stored naive-UTC instant as an aware local time."""
    return now.replace(tzinfo=UTC).astimezone(tz)


def to_utc(local: datetime) -> datetime:
    """An aware local time as the naive UTC that is stored."""
    return local.astimezone(UTC).replace(tzinfo=None)


def local_at(day: date, at: time, tz: ZoneInfo) -> datetime:
    """`at` o'clock on `day` in `tz`, as naive UTC."""
    return to_utc(datetime.combine(day, at, tzinfo=tz))


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    """Whether a local time of day falls in [start, end), a window that may span midnight (20:00–08:00)."""
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def release_time(now: datetime, tz: ZoneInfo, routing: RoutingConfig) -> datetime | None:
    """When a non-critical message raised at `now` may be delivered: None right away, else the next local
    `quiet_end` (naive UTC)."""
    local = to_local(now, tz)
    if not in_quiet_hours(local.time(), routing.quiet_start, routing.quiet_end):
        return None
    day = local.date() if local.time() < routing.quiet_end else local.date() + timedelta(days=1)
    return local_at(day, routing.quiet_end, tz)


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A chat destination: the platform, its user/channel id, and whose time zone and language apply."""

    platform: str
    target: str
    tz: ZoneInfo
    lang: str
    owner_id: int | None  # None for the team channel, which has no budget


def user_target(user: User | None, routing: RoutingConfig) -> Target | None:
    """A user's direct messages: Slack first, else Telegram; None without an active chat identity."""
    if user is None or not user.active:
        return None
    lang = user.lang or routing.lang
    if user.slack_user_id:
        return Target("slack", user.slack_user_id, zone(user.timezone), lang, user.id)
    if user.telegram_user_id:
        return Target("telegram", user.telegram_user_id, zone(user.timezone), lang, user.id)
    return None


def team_target(routing: RoutingConfig) -> Target | None:
    """The team channel (Slack first); None when none is configured."""
    tz = zone(routing.team_timezone)
    if routing.team_slack_channel:
        return Target("slack", routing.team_slack_channel, tz, routing.lang, None)
    if routing.team_telegram_chat:
        return Target("telegram", routing.team_telegram_chat, tz, routing.lang, None)
    return None


def _users(session: Session, ids: Iterable[int | None]) -> dict[int, User]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    rows = session.execute(select(User).where(col(User.id).in_(wanted))).scalars().all()
    return {u.id: u for u in rows if u.id is not None}


def _accounts(session: Session, ids: Iterable[int]) -> dict[int, Account]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.execute(select(Account).where(col(Account.id).in_(wanted))).scalars().all()
    return {a.id: a for a in rows if a.id is not None}


# ---------------------------------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class RouteStats:
    """What `route_alerts` did: deliveries enqueued (of which `held` wait for the end of quiet hours and `team`
    went to the team channel), alerts left to the digest by the budget, and alerts with nowhere to go."""

    enqueued: int = 0
    held: int = 0
    team: int = 0
    to_digest: int = 0
    unroutable: int = 0


def _budget_used(
    session: Session, targets: Sequence[Target], now: datetime
) -> Counter[tuple[str, str, date]]:
    """Alert messages per (platform, target, local day of arrival) already in the outbox, from yesterday on.

    A message arrives when it was sent, or (not sent yet) when it is next due. One query for all targets."""
    counts: Counter[tuple[str, str, date]] = Counter()
    by_key = {(x.platform, x.target): x for x in targets}
    if not by_key:
        return counts
    arrives = func.coalesce(col(Delivery.sent_at), col(Delivery.next_attempt_at))
    rows = session.execute(
        select(col(Delivery.platform), col(Delivery.target), arrives)
        .where(col(Delivery.kind) == ALERT_KIND, col(Delivery.target).in_(sorted({x.target for x in targets})),
               arrives >= now - timedelta(days=2))
    ).all()
    for platform, target, at in rows:
        found = by_key.get((platform, target))
        if found is not None and at is not None:
            counts[(platform, target, to_local(at, found.tz).date())] += 1
    return counts


def _ordered(alerts: Sequence[Alert]) -> list[Alert]:
    """Most severe first, then oldest: when the budget runs out, it is the least severe that wait."""
    return sorted(alerts, key=lambda a: (-SEVERITY_RANK.get(a.severity, 0), a.created_at, a.id or 0))


def route_alerts(
    session: Session, alerts: list[Alert], *, now: datetime, config: AlertConfig, budget: bool = True
) -> RouteStats:
    """Enqueue one delivery per alert to its owner (or the team channel), honouring quiet hours and the daily
    budget; over-budget alerts are flagged for the digest instead. `budget=False` is for alerts a person just
    caused (a detractor's answer): they count against the budget but are never held back by it. Flushes, does
    not commit."""
    routing = config.routing
    owners = _users(session, (a.owner_id for a in alerts))
    accounts = _accounts(session, (a.account_id for a in alerts))
    team = team_target(routing)
    routed = [
        (alert, user_target(owners.get(alert.owner_id) if alert.owner_id is not None else None, routing) or team)
        for alert in _ordered(alerts)
    ]
    used = _budget_used(session, [x for _a, x in routed if x is not None and x.owner_id is not None], now)

    enqueued = held = to_team = to_digest = unroutable = 0
    for alert, target in routed:
        account = accounts.get(alert.account_id)
        if target is None or account is None:
            log.warning("alert %s has no owner chat and no team channel is configured; not delivered", alert.id)
            unroutable += 1
            continue
        critical = alert.severity == "critical"
        release = None if critical else release_time(now, target.tz, routing)
        arrives = release or now
        if target.owner_id is not None:
            key = (target.platform, target.target, to_local(arrives, target.tz).date())
            if budget and not critical and used[key] >= routing.daily_budget:
                alert.details = {**(alert.details or {}), "digest": True}
                session.add(alert)
                to_digest += 1
                continue
            used[key] += 1
        else:
            to_team += 1
        delivery = enqueue(
            session, platform=target.platform, target=target.target,
            payload=reply_to_payload(alert_reply(alert, account, target.lang)), kind=ALERT_KIND, alert_id=alert.id,
        )
        # Due on the caller's clock (not the outbox's): the budget reads these times back.
        delivery.created_at = now
        delivery.next_attempt_at = arrives
        session.add(delivery)
        held += release is not None
        enqueued += 1
    session.flush()
    return RouteStats(enqueued=enqueued, held=held, team=to_team, to_digest=to_digest, unroutable=unroutable)


# ------------------------------------------------------------------------------------------------- escalation


def escalate(session: Session, *, now: datetime, config: AlertConfig) -> int:
    """Send each critical alert still open `escalate_after_hours` after it was raised to the owner's manager
    (their DMs, else the team channel), once: `details["escalated_at"]` records it. Flushes, does not commit.
    Returns how many alerts were escalated."""
    routing = config.routing
    cutoff = now - timedelta(hours=routing.escalate_after_hours)
    candidates = session.execute(
        select(Alert).where(col(Alert.severity) == "critical", col(Alert.status) == "open",
                            col(Alert.created_at) <= cutoff).order_by(col(Alert.id))
    ).scalars().all()
    due = [a for a in candidates if not (a.details or {}).get("escalated_at")]
    if not due:
        return 0
    owners = _users(session, (a.owner_id for a in due))
    managers = _users(session, (o.manager_id for o in owners.values()))
    accounts = _accounts(session, (a.account_id for a in due))
    team = team_target(routing)
    hours = f"{routing.escalate_after_hours:g}"
    escalated = 0
    for alert in due:
        owner = owners.get(alert.owner_id) if alert.owner_id is not None else None
        manager = managers.get(owner.manager_id) if owner is not None and owner.manager_id is not None else None
        target = user_target(manager, routing) or team
        account = accounts.get(alert.account_id)
        if target is None or account is None:
            continue  # tried again next run, once someone is reachable
        card = alert_reply(alert, account, target.lang)
        text = t("esc_text", target.lang, owner=owner.name if owner else t("esc_nobody", target.lang), hours=hours)
        sent = enqueue(
            session, platform=target.platform, target=target.target,
            payload=reply_to_payload(Reply(text=text, cards=card.cards)), kind=ESCALATION_KIND, alert_id=alert.id,
        )
        sent.created_at = sent.next_attempt_at = now
        alert.details = {**(alert.details or {}), "escalated_at": now.isoformat(),
                         "escalated_to": manager.id if manager is not None else None}
        session.add(alert)
        escalated += 1
    session.flush()
    return escalated
