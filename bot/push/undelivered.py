"""Messages no configured platform could deliver: routing waiting ones again, and requeueing undeliverable ones.

- `reroute_waiting` (the `deliver` job and the `csbot serve` worker): pending rows for a platform that is not
  configured in this process are routed again exactly like new ones, from the recipient recorded in their payload
  (`bot.push.routing.route`; customer contacts by `bot.push.surveys.contact_target`): to a configured platform the
  person has an id on, else the team channel; when neither can be reached they become `undeliverable`, with the reason.
  Rows written before recipients were recorded are matched to a user or the team channel by their target.
- `requeue` (`csbot deliveries --retry`): undeliverable rows routed again, after a platform was configured or an
  id or a team channel was added; those that still cannot go stay undeliverable, with their reason brought up to
  date. A survey question goes again only while its survey is still undelivered (a newer survey to the contact
  replaces it); it gets a fresh expiry and a token signed with the current survey secret.

Every change is fenced on the row's status, so a worker that claimed a row in the meantime wins.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, or_, select
from sqlmodel import Session, col

from bot.push.digests import DIGEST_KIND, WEEKLY_KIND
from bot.push.notifier import SURVEY_ID_KEY, SURVEY_KIND, reply_to_payload
from bot.push.routing import (
    ABOUT_KEY,
    TO_KEY,
    WHY_KEY,
    Recipient,
    Target,
    configured_platforms,
    person,
    route,
    users_by_id,
    why_text,
    with_platforms,
)
from bot.push.surveys import REMINDER_KIND, contact_target, mention_for, question_reply, survey_config
from lifecycle import surveys as core
from lifecycle.scoring.alerts import AlertConfig, load_alert_config
from lifecycle.store import outbox
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, Alert, Contact, Delivery, NpsSurvey, User, utcnow
from lifecycle.store.settings import Settings

SURVEY_KINDS = (SURVEY_KIND, REMINDER_KIND)
PERSONAL_KINDS = (DIGEST_KIND, WEEKLY_KIND)  # for one person only: no team channel after them
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class Routes:
    """What routing again needs: the alert routing (with the configured platforms), the survey rules and the key
    that signs survey buttons."""

    config: AlertConfig
    surveys: core.SurveyConfig
    secret: bytes

    @property
    def platforms(self) -> tuple[str, ...]:
        return configured_platforms(self.config.routing)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, platforms: Collection[str] | None = None, config: AlertConfig | None = None
    ) -> Routes:
        """From the configured files; `platforms` default to those with a bot token (`Settings.delivery_platforms`)."""
        base = config if config is not None else load_alert_config(settings.alerts_file)
        wanted = settings.delivery_platforms if platforms is None else platforms
        return cls(with_platforms(base, wanted), survey_config(settings), core.survey_secret(settings))


@dataclass
class Rerouted:
    """What routing again did: rows now pending on a configured platform, rows (still) undeliverable with why, and
    survey rows left as they are because their survey was answered, expired or replaced since."""

    routed: int = 0
    undeliverable: int = 0
    stale: int = 0
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (delivery id, why) of the undeliverable ones


def reroute_waiting(session: Session, routes: Routes, *, now: datetime) -> Rerouted:
    """Route again every pending row whose platform is not configured (`routes.platforms`). With no platform
    configured nothing can be sent from here at all, and the outbox is left as it is. Flushes."""
    if not routes.platforms:
        return Rerouted()
    rows = session.execute(
        select(Delivery).where(col(Delivery.status) == outbox.PENDING,
                               col(Delivery.platform).not_in(list(routes.platforms)))
        .order_by(col(Delivery.id))
    ).scalars().all()
    return _route_again(session, list(rows), routes, now=now, expected=outbox.PENDING)


def rerouter(engine: Engine, settings: Settings, platforms: Collection[str]) -> Callable[[], Rerouted]:
    """`reroute_waiting` in a transaction of its own, for the outbox worker of `csbot serve` (its ports' platforms)."""
    routes = Routes.from_settings(settings, platforms=platforms)

    def run() -> Rerouted:
        with session_scope(engine) as session:
            return reroute_waiting(session, routes, now=utcnow())

    return run


def requeue(session: Session, routes: Routes, *, now: datetime, ids: Sequence[int] | None = None) -> Rerouted:
    """Route the undeliverable rows (all, or those in `ids`) again: pending, due now, where a configured platform
    reaches the recipient; still undeliverable otherwise. Flushes."""
    stmt = select(Delivery).where(col(Delivery.status) == outbox.UNDELIVERABLE).order_by(col(Delivery.id))
    if ids is not None:
        stmt = stmt.where(col(Delivery.id).in_(list(ids)))
    rows = session.execute(stmt).scalars().all()
    return _route_again(session, list(rows), routes, now=now, expected=outbox.UNDELIVERABLE)


def _route_again(session: Session, rows: list[Delivery], routes: Routes, *, now: datetime, expected: str) -> Rerouted:
    done = Rerouted()
    _route_people(session, [r for r in rows if r.kind not in SURVEY_KINDS], routes, now, expected, done)
    _route_contacts(session, [r for r in rows if r.kind in SURVEY_KINDS], routes, now, expected, done)
    session.flush()
    for row in rows:  # changed by UPDATE statements: read afresh when next used
        session.expire(row)
    return done


def _apply(
    session: Session, row: Delivery, target: Target, body: dict[str, Any], *, now: datetime, expected: str,
    done: Rerouted,
) -> bool:
    """Point `row` at `target` (pending) or record it undeliverable with why; returns whether the row changed."""
    assert row.id is not None
    body = {key: value for key, value in body.items() if key != WHY_KEY}
    if target.deliverable:
        # A waiting row keeps its due time (the end of quiet hours); a requeued one is due now.
        due = row.next_attempt_at if expected == outbox.PENDING else now
        changed = outbox.redirect(session, row.id, expected=expected, platform=target.platform,
                                  target=target.target, payload=body, due=due)
        done.routed += changed
        return changed
    reason = why_text(target.reasons, "en")
    body[WHY_KEY] = [list(group) for group in target.reasons]
    # The digest lists a row once, from the moment it became undeliverable: a failed requeue keeps that moment.
    due = now if expected == outbox.PENDING else row.next_attempt_at
    changed = outbox.redirect(session, row.id, expected=expected, platform=target.platform or row.platform,
                              target=target.target or row.target, payload=body, due=due, undeliverable=reason)
    if changed:
        done.undeliverable += 1
        done.reasons.append((row.id, reason))
    return changed


def _stuck_where_it_is(row: Delivery, lang: str) -> Target:
    """A row csbot cannot route again: it can only go where it is, which is not configured."""
    return Target(row.platform, row.target, _UTC, lang, None, Recipient(),
                  (({"why": "off", "platform": row.platform},),) if row.platform else (({"why": "no_team"},),))


# ------------------------------------------------------------------------------------------------ internal people


def _route_people(
    session: Session, rows: list[Delivery], routes: Routes, now: datetime, expected: str, done: Rerouted
) -> None:
    if not rows:
        return
    routing = routes.config.routing
    recipients = {r.id: Recipient.from_json(r.payload.get(TO_KEY)) for r in rows}
    recipients |= _guess(session, [r for r in rows if recipients[r.id] is None], routes.config)
    users = users_by_id(session, (x.user_id for x in recipients.values() if x is not None))
    abouts = _abouts(session, rows)
    for row in rows:
        recipient = recipients.get(row.id)
        if recipient is None:
            target = (_stuck_where_it_is(row, routing.lang) if row.platform not in routes.platforms
                      else Target(row.platform, row.target, _UTC, routing.lang, None))
        else:
            target = route(routing, recipient, users.get(recipient.user_id) if recipient.user_id else None)
        body = dict(row.payload) | {ABOUT_KEY: abouts.get(row.id, {})}
        if recipient is not None:
            body[TO_KEY] = recipient.to_json()
        _apply(session, row, target, body, now=now, expected=expected, done=done)


def _guess(session: Session, rows: list[Delivery], config: AlertConfig) -> dict[int | None, Recipient | None]:
    """Recipients of rows written before recipients were recorded: the user or team channel at their target."""
    if not rows:
        return {}
    slack = sorted({r.target for r in rows if r.platform == "slack"})
    telegram = sorted({r.target for r in rows if r.platform == "telegram"})
    feishu = sorted({r.target for r in rows if r.platform == "feishu"})
    found = session.execute(
        select(User).where(or_(col(User.slack_user_id).in_(slack), col(User.telegram_user_id).in_(telegram),
                               col(User.feishu_open_id).in_(feishu)))
    ).scalars().all()
    by_target: dict[tuple[str, str | None], User] = {}
    for user in found:
        by_target[("slack", user.slack_user_id)] = user
        by_target[("telegram", user.telegram_user_id)] = user
        by_target[("feishu", user.feishu_open_id)] = user
    routing = config.routing
    team = {("slack", routing.team_slack_channel), ("telegram", routing.team_telegram_chat),
            ("feishu", routing.team_feishu_chat)}
    out: dict[int | None, Recipient | None] = {}
    for row in rows:
        user = by_target.get((row.platform, row.target))
        if user is not None:
            out[row.id] = person(user, team=row.kind not in PERSONAL_KINDS)
        elif (row.platform, row.target) in team:
            out[row.id] = Recipient(team=True)
    return out


def _abouts(session: Session, rows: list[Delivery]) -> dict[int | None, dict[str, Any]]:
    """Whom each row concerns (`{"owner", "account"}`): as recorded, else from its alert."""
    out: dict[int | None, dict[str, Any]] = {r.id: r.payload[ABOUT_KEY] for r in rows
                                            if isinstance(r.payload.get(ABOUT_KEY), dict)}
    alert_ids = sorted({r.alert_id for r in rows if r.id not in out and r.alert_id is not None})
    if alert_ids:
        alerts = {a.id: a for a in session.execute(
            select(Alert).where(col(Alert.id).in_(alert_ids))).scalars().all()}
        for row in rows:
            alert = alerts.get(row.alert_id) if row.id not in out else None
            if alert is not None:
                out[row.id] = {"owner": alert.owner_id, "account": alert.account_id}
    return out


# ----------------------------------------------------------------------------------------------- customer contacts


def _route_contacts(
    session: Session, rows: list[Delivery], routes: Routes, now: datetime, expected: str, done: Rerouted
) -> None:
    """Survey questions and reminders: to the contact on a configured platform (their survey then expects the
    answer there), with the question rebuilt for it; else undeliverable."""
    if not rows:
        return
    survey_ids = sorted({int(r.payload.get(SURVEY_ID_KEY) or 0) for r in rows})
    surveys = {s.id: s for s in session.execute(
        select(NpsSurvey).where(col(NpsSurvey.id).in_(survey_ids))).scalars().all()}
    contact_ids = sorted({s.contact_id for s in surveys.values() if s.contact_id is not None})
    contacts = {c.id: c for c in session.execute(
        select(Contact).where(col(Contact.id).in_(contact_ids))).scalars().all()} if contact_ids else {}
    account_ids = sorted({s.account_id for s in surveys.values()})
    accounts = {a.id: a for a in session.execute(
        select(Account).where(col(Account.id).in_(account_ids))).scalars().all()} if account_ids else {}
    for row in rows:
        survey = surveys.get(int(row.payload.get(SURVEY_ID_KEY) or 0))
        contact = contacts.get(survey.contact_id) if survey is not None and survey.contact_id else None
        account = accounts.get(survey.account_id) if survey is not None else None
        question = row.kind == SURVEY_KIND
        if survey is None or contact is None or account is None or not _still_open(survey, question, expected):
            if expected == outbox.PENDING:  # it cannot go where it waits, nor anywhere else
                _apply(session, row, _stuck_where_it_is(row, "en"), dict(row.payload), now=now, expected=expected,
                       done=done)
            else:
                done.stale += 1
            continue
        target, channel = contact_target(contact, routes.surveys, routes.platforms, survey.lang)
        body = dict(row.payload) | {TO_KEY: target.to.to_json(),
                                    ABOUT_KEY: {"owner": account.owner_id, "account": account.id}}
        if not target.deliverable:
            if _apply(session, row, target, body, now=now, expected=expected, done=done) and question:
                survey.status = core.UNDELIVERABLE
                session.add(survey)
            continue
        assert survey.id is not None
        token = core.make_token(routes.secret, survey.id, survey.account_id, survey.contact_id)
        due = row.next_attempt_at if expected == outbox.PENDING else now
        expires = survey.expires_at if expected == outbox.PENDING and survey.expires_at else due + routes.surveys.expiry
        reply = question_reply(
            token=token, lang=survey.lang, product=routes.surveys.delivery.product, contact_name=contact.name,
            account_name=account.name, mention=mention_for(contact, target.platform, target.target),
            expires_at=expires if question else None, reminder=not question,
        )
        body = body | reply_to_payload(reply) | {SURVEY_ID_KEY: survey.id}
        if _apply(session, row, target, body, now=now, expected=expected, done=done):
            survey.platform, survey.channel_id, survey.token = target.platform, channel or None, token
            if question:
                survey.status, survey.expires_at = core.PENDING, expires
            session.add(survey)


def _still_open(survey: NpsSurvey, question: bool, expected: str) -> bool:
    """Whether the survey still wants this message: a question while it has not gone out, a reminder while it is
    unanswered."""
    if not question:
        return survey.status == core.SENT
    return survey.status == (core.PENDING if expected == outbox.PENDING else core.UNDELIVERABLE)
