"""Alert routing: who gets an alert, on which platform, and when — and escalation of ignored critical alerts.

`route_alerts` turns freshly raised alerts into outbox deliveries in the caller's transaction:

- target (`route`): the owner's direct messages on the first configured platform they have an id on (Slack, then
  Telegram); else the team channel of `[routing]` on a configured platform; when neither can be reached (no owner,
  no chat id, or only ids on platforms without a bot token) the delivery is recorded `undeliverable` with the
  reason in words, never left pending and never dropped. "Configured" is `RoutingConfig.platforms`, which
  `with_platforms` fills in from the settings' bot tokens;
- quiet hours in the recipient's time zone: a non-critical alert raised in them is delivered at the next
  `quiet_end` (its delivery's `next_attempt_at`); a critical one goes at once;
- a per-owner daily budget: the local day is the day the owner *receives* the message (held alerts count on the
  morning they arrive), counting deliveries already in the outbox. Alerts over budget are not sent; they are
  flagged `details["digest"] = True` for the owner's daily digest. Critical alerts count but are never held back,
  and the most severe alerts of a batch are placed first.

`escalate` sends a critical alert still `open` after `escalate_after_hours` to the owner's manager, once.

Every routed delivery's payload says whom it was for (`to`: the person and whether the team channel comes next)
and whom it concerns (`about`: the account and its owner), so `bot.push.undelivered` can route it again later and the
owner's digest can list what could not be delivered.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlmodel import Session, col

from bot.core.i18n import t
from bot.core.messages import Reply
from bot.push.notifier import reply_to_payload
from bot.views.alert_cards import alert_reply
from lifecycle.scoring.alerts import AlertConfig, RoutingConfig
from lifecycle.store.models import Account, Alert, Delivery, User
from lifecycle.store.outbox import UNDELIVERABLE, enqueue
from lifecycle.store.settings import PLATFORM_TOKENS

log = logging.getLogger("csbot.routing")

SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}
ALERT_KIND = "alert"
ESCALATION_KIND = "escalation"


PLATFORM_NAMES = {"slack": "Slack", "telegram": "Telegram", "feishu": "Feishu"}
TO_KEY, ABOUT_KEY, WHY_KEY = "to", "about", "why"  # payload keys: the recipient, whom it concerns, why undelivered


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


Why = dict[str, str]  # one reason, JSON-safe: {"why": "off", "platform": "slack"}, {"why": "no_id", …}
Reasons = tuple[tuple[Why, ...], ...]  # one group per recipient tried (the person, then the team channel)


def _platform_name(platform: str) -> str:
    return PLATFORM_NAMES.get(platform, platform)


def why_text(reasons: Sequence[Sequence[Why]], lang: str) -> str:
    """The reasons in words: "Slack is not configured (SLACK_BOT_TOKEN) and Priya Raman has no Telegram id"."""
    groups = []
    for group in reasons:
        phrases: list[str] = []
        missing: dict[str, list[str]] = {}  # who → platforms they have no id on, said once: "no Slack or Telegram id"
        for part in group:
            if part.get("why") == "no_id":
                missing.setdefault(part.get("who", ""), []).append(_platform_name(part.get("platform", "")))
                continue
            phrases.append(_why_phrase(part, lang))
        phrases += [t("why_no_id", lang, who=who, platforms=t("why_or", lang).join(names))
                    for who, names in missing.items()]
        if phrases:
            groups.append(t("why_and", lang).join(phrases))
    return t("why_then", lang).join(groups)


def _why_phrase(part: Why, lang: str) -> str:
    why, platform = part.get("why", ""), part.get("platform", "")
    if why in ("off", "team_off"):
        return t(f"why_{why}", lang, platform=_platform_name(platform), env=PLATFORM_TOKENS.get(platform, "?"))
    if why in ("inactive", "no_manager", "gone"):
        return t(f"why_{why}", lang, who=part.get("who", ""))
    if why in ("no_owner", "no_team", "nobody"):
        return t(f"why_{why}", lang)
    return why


def configured_platforms(routing: RoutingConfig) -> tuple[str, ...]:
    """The platforms deliveries may go to; every known one when the routing does not say (tests, tools)."""
    return routing.platforms if routing.platforms is not None else tuple(PLATFORM_TOKENS)


def with_platforms(config: AlertConfig, platforms: Collection[str]) -> AlertConfig:
    """`config` routing only to `platforms` (what the settings' bot tokens configure, `Settings.delivery_platforms`)."""
    ordered = tuple(p for p in PLATFORM_TOKENS if p in platforms)
    return config.model_copy(update={"routing": config.routing.model_copy(update={"platforms": ordered})})


@dataclass(frozen=True)
class Recipient:
    """Whom a message is for, in the order tried: a person (`user_id`), then the team channel (`team`).

    `missing` says why there is no person ("no_owner", or "no_manager" with `name` the owner's); `contact_id` is a
    customer contact (surveys, routed by `bot.push.surveys`). Stored in the payload (`to`) to route it again later."""

    user_id: int | None = None
    team: bool = False
    name: str = ""
    missing: str | None = None
    contact_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in (("user", self.user_id), ("team", self.team), ("name", self.name),
                                              ("missing", self.missing), ("contact", self.contact_id)) if value}

    @classmethod
    def from_json(cls, data: Any) -> Recipient | None:
        if not isinstance(data, dict):
            return None
        user, contact = data.get("user"), data.get("contact")
        return cls(user_id=int(user) if user else None, team=bool(data.get("team")), name=str(data.get("name", "")),
                   missing=data.get("missing") or None, contact_id=int(contact) if contact else None)


@dataclass(frozen=True)
class Target:
    """A chat destination: the platform, its user/channel id, and whose time zone and language apply.

    With `reasons` the recipient cannot be reached on any configured platform: the delivery is recorded
    undeliverable, at the platform and id it would have used ("" when there is none)."""

    platform: str
    target: str
    tz: ZoneInfo
    lang: str
    owner_id: int | None  # None for the team channel (which has no budget) and undeliverable targets
    to: Recipient = Recipient()
    reasons: Reasons = ()

    @property
    def deliverable(self) -> bool:
        return not self.reasons


def user_ids(user: User) -> dict[str, str | None]:
    return {"slack": user.slack_user_id, "telegram": user.telegram_user_id, "feishu": user.feishu_open_id}


def has_chat_identity(user: User) -> bool:
    return any(user_ids(user).values())


def route(routing: RoutingConfig, recipient: Recipient, user: User | None) -> Target:
    """Where a message for `recipient` goes: the first configured platform `user` has an id on (Slack first), else
    the team channel on a configured platform (when `recipient.team`); else an undeliverable target with why."""
    configured = configured_platforms(routing)
    reasons: list[tuple[Why, ...]] = []
    wanted: tuple[str, str] | None = None  # the first destination that exists but is not configured
    if user is not None and user.active:
        ids = user_ids(user)
        for platform, ident in ids.items():
            if ident and platform in configured:
                return Target(platform, ident, zone(user.timezone), user.lang or routing.lang, user.id, recipient)
        parts: list[Why] = []
        for platform, ident in ids.items():
            if ident:
                parts.append({"why": "off", "platform": platform})
                wanted = wanted or (platform, ident)
        # A missing id matters only on a platform csbot could send on (all of them when none is).
        lacking = [p for p, ident in ids.items() if not ident]
        parts += [{"why": "no_id", "platform": p, "who": user.name}
                  for p in ([p for p in lacking if p in configured] or lacking)]
        reasons.append(tuple(parts))
    elif user is not None:
        reasons.append(({"why": "inactive", "who": user.name},))
    elif recipient.user_id is not None:  # deleted since the message was written
        reasons.append(({"why": "gone", "who": recipient.name},))
    elif recipient.missing:
        reasons.append(({"why": recipient.missing, "who": recipient.name},))
    team_tz = zone(routing.team_timezone)
    if recipient.team:
        channels = {"slack": routing.team_slack_channel, "telegram": routing.team_telegram_chat,
                    "feishu": routing.team_feishu_chat}
        for platform, channel in channels.items():
            if channel and platform in configured:
                return Target(platform, channel, team_tz, routing.lang, None, recipient)
        off: list[Why] = [{"why": "team_off", "platform": p} for p, channel in channels.items() if channel]
        reasons.append(tuple(off) or ({"why": "no_team"},))
        wanted = wanted or next(((p, c) for p, c in channels.items() if c), None)
    active = user if user is not None and user.active else None
    platform, ident = wanted or ("", "")
    if not reasons:
        reasons.append(({"why": "nobody"},))
    return Target(platform, ident, zone(active.timezone) if active else team_tz,
                  (active.lang if active else None) or routing.lang, None, recipient, tuple(reasons))


def person(user: User | None, *, team: bool = False, missing: str | None = None, name: str = "") -> Recipient:
    """The recipient for a user's direct messages (then the team channel, with `team`)."""
    if user is not None:
        return Recipient(user_id=user.id, team=team, name=user.name)
    return Recipient(team=team, missing=missing, name=name)


def post(
    session: Session,
    target: Target,
    *,
    payload: dict[str, Any],
    kind: str,
    now: datetime,
    due: datetime | None = None,
    about: tuple[int | None, int | None] = (None, None),
    alert_id: int | None = None,
    dedupe: str | None = None,
) -> Delivery:
    """Enqueue `payload` to `target`, dated on the caller's clock and due at `due` (default `now`); an undeliverable
    target's row is recorded `undeliverable` with the reason in words. The payload also carries the recipient and
    `about` (the owner and the account it concerns). Flushes, does not commit."""
    owner_id, account_id = about
    body = payload | {TO_KEY: target.to.to_json(), ABOUT_KEY: {"owner": owner_id, "account": account_id}}
    reason = None
    if not target.deliverable:
        body[WHY_KEY] = [list(group) for group in target.reasons]
        reason = why_text(target.reasons, "en")
    row = enqueue(session, platform=target.platform, target=target.target, payload=body, kind=kind,
                  alert_id=alert_id, dedupe=dedupe, undeliverable=reason)
    # Dated on the caller's clock (not the outbox's): budgets and "once a day" read these times back.
    row.created_at = now
    row.next_attempt_at = (due or now) if reason is None else now
    session.add(row)
    return row


META_KEYS = ("dedupe", TO_KEY, ABOUT_KEY, WHY_KEY)


def replace_reply(delivery: Delivery, reply: Reply) -> None:
    """Rewrite a waiting delivery's message, keeping what routing (and the outbox's dedupe) recorded in its payload."""
    delivery.payload = reply_to_payload(reply) | {key: delivery.payload[key] for key in META_KEYS
                                                  if key in delivery.payload}


def users_by_id(session: Session, ids: Iterable[int | None]) -> dict[int, User]:
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
    went to the team channel), alerts left to the digest by the budget, and alerts no configured platform reaches
    (recorded undeliverable)."""

    enqueued: int = 0
    held: int = 0
    team: int = 0
    to_digest: int = 0
    undeliverable: int = 0


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
               col(Delivery.status) != UNDELIVERABLE, arrives >= now - timedelta(days=2))
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
    budget; over-budget alerts are flagged for the digest instead, and alerts nobody can be reached for are
    recorded undeliverable. `budget=False` is for alerts a person just caused (a detractor's answer): they count
    against the budget but are never held back by it. Flushes, does not commit."""
    routing = config.routing
    owners = users_by_id(session, (a.owner_id for a in alerts))
    accounts = _accounts(session, (a.account_id for a in alerts))
    routed = []
    for alert in _ordered(alerts):
        owner = owners.get(alert.owner_id) if alert.owner_id is not None else None
        routed.append((alert, route(routing, person(owner, team=True, missing="no_owner"), owner)))
    used = _budget_used(session, [x for _a, x in routed if x.owner_id is not None], now)

    enqueued = held = to_team = to_digest = undeliverable = 0
    for alert, target in routed:
        account = accounts.get(alert.account_id)
        if account is None:
            log.warning("alert %s: its account is gone; not delivered", alert.id)
            continue
        about = (alert.owner_id, alert.account_id)
        payload = reply_to_payload(alert_reply(alert, account, target.lang))
        if not target.deliverable:
            post(session, target, payload=payload, kind=ALERT_KIND, now=now, about=about, alert_id=alert.id)
            undeliverable += 1
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
        post(session, target, payload=payload, kind=ALERT_KIND, now=now, due=arrives, about=about, alert_id=alert.id)
        held += release is not None
        enqueued += 1
    session.flush()
    return RouteStats(enqueued=enqueued, held=held, team=to_team, to_digest=to_digest, undeliverable=undeliverable)


# ------------------------------------------------------------------------------------------------- escalation


def _escalation_reply(alert: Alert, account: Account, owner: User | None, lang: str, config: AlertConfig) -> Reply:
    """The alert card under "⏫ Escalation: <owner> has not acknowledged this critical alert for N hours."."""
    card = alert_reply(alert, account, lang)
    hours = f"{config.routing.escalate_after_hours:g}"
    text = t("esc_text", lang, owner=owner.name if owner else t("esc_nobody", lang), hours=hours)
    return Reply(text=text, cards=card.cards)


def escalate(session: Session, *, now: datetime, config: AlertConfig) -> int:
    """Send each critical alert still open `escalate_after_hours` after it was raised to the owner's manager
    (their DMs, else the team channel), once: `details["escalated_at"]` records it; when neither can be reached,
    the escalation is recorded undeliverable (and counts as done). Flushes, does not commit. Returns how many
    alerts were escalated."""
    routing = config.routing
    cutoff = now - timedelta(hours=routing.escalate_after_hours)
    candidates = session.execute(
        select(Alert).where(col(Alert.severity) == "critical", col(Alert.status) == "open",
                            col(Alert.created_at) <= cutoff).order_by(col(Alert.id))
    ).scalars().all()
    due = [a for a in candidates if not (a.details or {}).get("escalated_at")]
    if not due:
        return 0
    owners = users_by_id(session, (a.owner_id for a in due))
    managers = users_by_id(session, (o.manager_id for o in owners.values()))
    accounts = _accounts(session, (a.account_id for a in due))
    escalated = 0
    for alert in due:
        owner = owners.get(alert.owner_id) if alert.owner_id is not None else None
        manager = managers.get(owner.manager_id) if owner is not None and owner.manager_id is not None else None
        account = accounts.get(alert.account_id)
        if account is None:
            continue
        recipient = person(manager, team=True, missing="no_manager" if owner is not None else "no_owner",
                           name=owner.name if owner is not None else "")
        target = route(routing, recipient, manager)
        post(session, target, payload=reply_to_payload(_escalation_reply(alert, account, owner, target.lang, config)),
             kind=ESCALATION_KIND, now=now, about=(alert.owner_id, alert.account_id), alert_id=alert.id)
        alert.details = {**(alert.details or {}), "escalated_at": now.isoformat(),
                         "escalated_to": target.owner_id}  # the manager, or None for the team channel
        session.add(alert)
        escalated += 1
    session.flush()
    return escalated
