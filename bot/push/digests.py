"""Digests: each owner's daily digest and the managers' weekly portfolio summary, as outbox deliveries.

- `owner_digests`: every active owner (a user with active accounts and a chat identity) whose local time is past
  `[routing].digest_at` gets one message a local day: the alerts raised since their last digest (those the daily
  budget held back are marked as not sent on their own), the renewals left this month, and the biggest 7-day
  health movers of their accounts, up and down; and, when there are any, the messages that became undeliverable
  since their last digest, sent to them or about their accounts, and why (each in one digest only). A digest
  that no configured platform can deliver is itself recorded undeliverable (see `bot.push.routing.route`).
- `manager_weekly`: on `[routing].weekly_day` (Monday) after `digest_at` local, every manager gets the portfolio
  summary of their team (their direct reports and themselves), every admin that of the whole portfolio, with the
  stage-distribution chart, and the lifecycle readings: retention over 12 months and the 90-day funnel, with the
  monthly retention chart.

"Once" is decided from the outbox itself: the delivery rows of kind `digest` / `weekly` to the person's chat. The
latest one per chat (one GROUP BY) tells both whether today's (this week's) went out and where "since the last
digest" starts. An `Alert` row would need an account (the column is a required foreign key) and would show up in
the alert lists and the rules' precision; scheduled jobs run under a PostgreSQL advisory lock, so two replicas
do not race here. The payload also carries a `digest:{user}:{local date}` dedupe key for operators.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlmodel import Session, col

from bot.core.format import grade, money, signed
from bot.core.i18n import t
from bot.core.messages import Card, CardField, Image, Reply, Section
from bot.core.money import total_text, totals_note, with_share
from bot.push.notifier import reply_to_payload
from bot.push.routing import (
    ABOUT_KEY,
    TO_KEY,
    WHY_KEY,
    Target,
    has_chat_identity,
    person,
    post,
    route,
    to_local,
    why_text,
)
from bot.views.alert_cards import RENEWAL_PROMPT, SEVERITY_ICON, alert_title
from bot.views.charts import chart_lang, stage_distribution_png
from bot.views.readings import lifecycle_summary
from lifecycle.reports.analytics import Slice
from lifecycle.reports.money import Rates, load_rates
from lifecycle.reports.overview import GRADE_COLUMNS, stage_table
from lifecycle.scoring.alerts import AlertConfig
from lifecycle.scoring.health import trends
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, Alert, Delivery, User
from lifecycle.store.outbox import UNDELIVERABLE

DIGEST_KIND = "digest"
WEEKLY_KIND = "weekly"
MOVERS = 5
MAX_ALERT_LINES = 15
FIRST_LOOKBACK = timedelta(days=1)  # the first digest covers the day before
MAX_LOOKBACK = timedelta(days=31)  # after a month without digests, start afresh from the day before
SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}

MAX_UNDELIVERED_LINES = 10


# ------------------------------------------------------------------------------------------------------ shared


def _last_sent(session: Session, kind: str, since: datetime) -> dict[tuple[str, str], datetime]:
    """The newest delivery of `kind` per (platform, target) created after `since`."""
    rows = session.execute(
        select(col(Delivery.platform), col(Delivery.target), func.max(col(Delivery.created_at)))
        .where(col(Delivery.kind) == kind, col(Delivery.created_at) > since)
        .group_by(col(Delivery.platform), col(Delivery.target))
    ).all()
    return {(p, x): at for p, x, at in rows if at is not None}


def _due_people(
    users: Sequence[User], last: dict[tuple[str, str], datetime], now: datetime, config: AlertConfig,
    *, weekly: bool = False,
) -> list[tuple[User, Target, datetime, datetime | None]]:
    """(user, target, local now, previous send) for the users whose local time is past `digest_at` (on the weekly
    day, for `weekly`) and who have had nothing of this kind yet on their local day."""
    routing = config.routing
    out = []
    for user in users:
        if not user.active or not has_chat_identity(user):
            continue
        target = route(routing, person(user), user)  # undeliverable when no configured platform reaches them
        local = to_local(now, target.tz)
        if local.time() < routing.digest_at or (weekly and local.weekday() != routing.weekly_day):
            continue
        previous = last.get((target.platform, target.target))
        if previous is not None and to_local(previous, target.tz).date() == local.date():
            continue
        out.append((user, target, local, previous))
    return out


# ------------------------------------------------------------------------------------------------ owner digest


def _owners(session: Session) -> list[User]:
    """Active users who own at least one active account."""
    owns = select(col(Account.owner_id)).where(col(Account.status) == "active", col(Account.owner_id).is_not(None))
    return list(
        session.execute(select(User).where(col(User.active), col(User.id).in_(owns)).order_by(col(User.id)))
        .scalars().all()
    )


def _new_alerts(session: Session, owner_ids: list[int], since: datetime) -> pd.DataFrame:
    stmt = (
        select(col(Alert.id), col(Alert.owner_id), col(Alert.created_at), col(Account.name), Alert)
        .join(Account, col(Account.id) == col(Alert.account_id))
        .where(col(Alert.owner_id).in_(owner_ids), col(Alert.created_at) > since, col(Alert.status) != "resolved")
    )
    rows = session.execute(stmt).all()
    return pd.DataFrame.from_records(rows, columns=["id", "owner_id", "created_at", "account", "alert"])


def _owner_accounts(session: Session, owner_ids: list[int]) -> pd.DataFrame:
    stmt = select(
        col(Account.id), col(Account.owner_id), col(Account.name), col(Account.arr), col(Account.currency),
        col(Account.renewal_date), col(Account.health_grade),
    ).where(col(Account.status) == "active", col(Account.owner_id).in_(owner_ids))
    columns = ["account_id", "owner_id", "name", "arr", "currency", "renewal_date", "health_grade"]
    return pd.DataFrame.from_records(session.execute(stmt).all(), columns=columns)


def _alert_lines(found: pd.DataFrame, lang: str) -> tuple[str, ...]:
    records: list[Any] = list(found.itertuples(index=False))
    ranked = sorted(
        records,
        key=lambda r: (-SEVERITY_RANK.get(r.alert.severity, 0), -r.created_at.timestamp(), -r.id),
    )
    lines = []
    for r in ranked[:MAX_ALERT_LINES]:
        alert: Alert = r.alert
        icon = "📅" if alert.rule == RENEWAL_PROMPT else SEVERITY_ICON.get(alert.severity, "⚪")
        held = t("dg_held", lang) if (alert.details or {}).get("digest") else ""
        lines.append(t("dg_alert_line", lang, icon=icon, id=alert.id, account=r.account,
                       title=alert_title(alert, lang), held=held))
    if len(ranked) > MAX_ALERT_LINES:
        lines.append(t("dg_more", lang, count=len(ranked) - MAX_ALERT_LINES))
    return tuple(lines)


def _renewal_lines(accounts: pd.DataFrame, today: date, lang: str) -> tuple[str, ...]:
    month_end = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    due = accounts[accounts["renewal_date"].map(lambda d: d is not None and not pd.isna(d) and today <= d <= month_end)]
    rows: list[Any] = list(due.sort_values(["renewal_date", "name"]).itertuples(index=False))
    return tuple(
        t("dg_renewal_line", lang, date=r.renewal_date.isoformat(), account=r.name, arr=money(r.arr, r.currency),
          grade=grade(r.health_grade, lang))
        for r in rows
    )


def _mover_lines(movers: pd.DataFrame, lang: str) -> tuple[str, ...]:
    rows: list[Any] = list(movers.itertuples(index=False))
    return tuple(
        t("dg_mover_line", lang, account=r.name, score=f"{r.score:.0f}", delta=signed(r.delta_7)) for r in rows
    )


def owner_digest_reply(
    user: User, lang: str, local_day: date, alerts: pd.DataFrame, accounts: pd.DataFrame,
    undelivered: Sequence[Delivery] = (), names: dict[int, str] | None = None,
) -> Reply:
    """One owner's digest: new alerts, renewals this month, biggest health movers (7-day delta) up and down, and
    what could not be delivered (`undelivered`, with the account `names`), when anything.

    `accounts` are the owner's active accounts with their `score` and `delta_7`."""
    alert_lines = _alert_lines(alerts, lang)
    renewal_lines = _renewal_lines(accounts, local_day, lang)
    moved = accounts.dropna(subset=["delta_7"])
    up = moved[moved["delta_7"] > 0].sort_values(["delta_7", "name"], ascending=[False, True]).head(MOVERS)
    down = moved[moved["delta_7"] < 0].sort_values(["delta_7", "name"]).head(MOVERS)
    sections = (
        Section(t("dg_new_alerts", lang, count=len(alerts)), alert_lines or (t("dg_no_alerts", lang),)),
        Section(t("dg_renewals", lang, count=len(renewal_lines)), renewal_lines or (t("dg_no_renewals", lang),)),
        Section(t("dg_down", lang), _mover_lines(down, lang) or (t("dg_no_movers", lang),)),
        Section(t("dg_up", lang), _mover_lines(up, lang) or (t("dg_no_movers", lang),)),
    )
    extra = (undelivered_section(undelivered, names or {}, lang),) if undelivered else ()
    card = Card(title=t("dg_title", lang, name=user.name), subtitle=local_day.isoformat(),
                sections=(*sections, *extra))
    return Reply(text=t("dg_text", lang, date=local_day.isoformat()), cards=[card])


def owner_digests(session: Session, *, now: datetime, config: AlertConfig) -> int:
    """Enqueue today's digest for every owner past `digest_at` local who has not had it; returns how many.
    Flushes, does not commit."""
    due = _due_people(_owners(session), _last_sent(session, DIGEST_KIND, now - MAX_LOOKBACK), now, config)
    if not due:
        return 0
    owner_ids = [int(u.id) for u, *_rest in due if u.id is not None]
    since = {u.id: previous or now - FIRST_LOOKBACK for u, _target, _local, previous in due}
    alerts = _new_alerts(session, owner_ids, min(since.values()))
    accounts = _owner_accounts(session, owner_ids)
    trend = trends(session, accounts["account_id"].astype(int).tolist(), now.date()) if len(accounts) else None
    if trend is not None:
        accounts = accounts.join(trend, on="account_id")
    else:
        accounts = accounts.assign(score=pd.Series(dtype=float), delta_7=pd.Series(dtype=float))
    undelivered = _undelivered(session, min(since.values()), now)
    names = _account_names(session, undelivered)
    sent = 0
    for user, target, local, _previous in due:
        mine = alerts[(alerts["owner_id"] == user.id) & (alerts["created_at"] > since[user.id])]
        owned = accounts[accounts["owner_id"] == user.id]
        theirs = [d for d in undelivered if d.next_attempt_at > since[user.id] and _concerns(d, user)]
        reply = owner_digest_reply(user, target.lang, local.date(), mine, owned, theirs, names)
        payload = {**reply_to_payload(reply), "dedupe": f"digest:{user.id}:{local.date().isoformat()}"}
        post(session, target, payload=payload, kind=DIGEST_KIND, now=now, about=(user.id, None))
        sent += 1
    return sent


# ------------------------------------------------------------------------------------- what was not delivered


def _undelivered(session: Session, since: datetime, now: datetime) -> list[Delivery]:
    """Deliveries that became undeliverable in (`since`, `now`] (`next_attempt_at` records when), oldest first."""
    return list(session.execute(
        select(Delivery).where(col(Delivery.status) == UNDELIVERABLE, col(Delivery.next_attempt_at) > since,
                               col(Delivery.next_attempt_at) <= now)
        .order_by(col(Delivery.next_attempt_at), col(Delivery.id))
    ).scalars().all())


def _concerns(delivery: Delivery, user: User) -> bool:
    """Sent to `user`, or about one of their accounts (its owner when it was routed)."""
    to, about = delivery.payload.get(TO_KEY) or {}, delivery.payload.get(ABOUT_KEY) or {}
    return user.id is not None and user.id in (to.get("user"), about.get("owner"))


def _account_names(session: Session, deliveries: Sequence[Delivery]) -> dict[int, str]:
    ids = sorted({int(a) for d in deliveries if (a := (d.payload.get(ABOUT_KEY) or {}).get("account"))})
    if not ids:
        return {}
    return {int(i): str(n) for i, n in session.execute(
        select(col(Account.id), col(Account.name)).where(col(Account.id).in_(ids))).all()}


def _what(delivery: Delivery, lang: str) -> str:
    key = f"dk_{delivery.kind}"
    if delivery.kind in ("alert", "escalation", "alert_comment"):
        return t(key, lang, id=delivery.alert_id or "?")
    if delivery.kind in ("survey", "survey_reminder", "advocacy", DIGEST_KIND, WEEKLY_KIND):
        return t(key, lang)
    return t("dk_other", lang, kind=delivery.kind)


def undelivered_section(deliveries: Sequence[Delivery], names: dict[int, str], lang: str) -> Section:
    """"Not delivered (N)": one line per message — what, to whom, on which account — and why, then how to resend."""
    lines = []
    for delivery in deliveries[:MAX_UNDELIVERED_LINES]:
        to, about = delivery.payload.get(TO_KEY) or {}, delivery.payload.get(ABOUT_KEY) or {}
        whom = t("dg_undelivered_whom", lang, name=to["name"]) if to.get("name") else ""
        account = names.get(int(about.get("account") or 0))
        if account:
            whom += t("dg_undelivered_account", lang, account=account)
        why = why_text(delivery.payload.get(WHY_KEY) or [], lang) or (delivery.last_error or "")
        lines.append(t("dg_undelivered_line", lang, what=_what(delivery, lang), whom=whom, why=why))
    if len(deliveries) > MAX_UNDELIVERED_LINES:
        lines.append(t("dg_undelivered_more", lang, count=len(deliveries) - MAX_UNDELIVERED_LINES))
    lines.append(t("dg_undelivered_hint", lang))
    return Section(t("dg_undelivered", lang, count=len(deliveries)), tuple(lines))


# ------------------------------------------------------------------------------------------------ weekly summary


def _portfolio_frame(session: Session) -> pd.DataFrame:
    """Active accounts per owner × stage × grade: count, ARR, score sum and scored count (one GROUP BY)."""
    graded = func.coalesce(col(Account.health_grade), "unknown")
    stmt = (
        select(col(Account.owner_id), col(Account.stage), graded, col(Account.currency), func.count(col(Account.id)),
               func.coalesce(func.sum(col(Account.arr)), 0.0), func.coalesce(func.sum(col(Account.health_score)), 0.0),
               func.count(col(Account.health_score)))
        .where(col(Account.status) == "active")
        .group_by(col(Account.owner_id), col(Account.stage), graded, col(Account.currency))
    )
    columns = ["owner_id", "stage", "grade", "currency", "accounts", "arr", "score_sum", "scored"]
    frame = pd.DataFrame.from_records(session.execute(stmt).all(), columns=columns)
    frame.loc[~frame["grade"].isin(GRADE_COLUMNS), "grade"] = "unknown"
    return frame


def _stage_machine() -> Any:
    try:
        return load_stage_machine()
    except ConfigError:
        return None


def weekly_reply(
    part: pd.DataFrame, *, lang: str, team: bool, local_day: date, rates: Rates, machine: Any = None,
    lifecycle: tuple[Section, Image] | None = None,
) -> Reply:
    """A portfolio summary (accounts, ARR by grade, average health, stages) with the stage chart; `lifecycle`
    (a section and a chart, `bot.commands.analytics.lifecycle_summary`) joins it when given. Totals convert with
    `rates`."""
    scope = t("wk_scope_team" if team else "wk_scope_all", lang)
    text = t("wk_text", lang, scope=scope)
    if part.empty or not int(part["accounts"].sum()):
        return Reply(text=text + "\n" + t("wk_empty", lang))
    total_arr = rates.sum(part["arr"], part["currency"])
    fields = [CardField(t("wk_accounts", lang), str(int(part["accounts"].sum()))),
              CardField(t("wk_arr", lang), total_text(total_arr))]
    arr_by_grade = rates.totals(part, "grade")
    for g in ("green", "yellow", "red"):
        if g in arr_by_grade:
            arr = arr_by_grade[g]
            fields.append(CardField(t("wk_arr_grade", lang, grade=grade(g, lang)), with_share(arr, total_arr)))
    scored = int(part["scored"].sum())
    if scored:
        fields.append(CardField(t("wk_avg", lang), f"{float(part['score_sum'].sum()) / scored:.0f}"))
    order = list(machine.stage_names) if machine is not None else []
    dist = stage_table(part, order, rates)
    labels = {str(s): (machine.label(str(s), lang) if machine is not None else str(s)) for s in dist.index}
    lines = tuple(
        t("wk_stage_line", lang, stage=labels[str(stage)], count=int(r["accounts"]), arr=total_text(r["arr"]),
          red=int(r["red"]), yellow=int(r["yellow"]), green=int(r["green"]))
        for stage, r in dist.iterrows()
    )
    png = stage_distribution_png(dist, t("wk_chart", lang), lang=lang, stage_labels=labels,
                                 arr_labels={str(s): total_text(a) for s, a in dist["arr"].items()},
                                 note=totals_note(rates, *dist["arr"], lang=chart_lang(lang)))
    sections = [Section(t("wk_stages", lang), lines)]
    images = [Image(png=png, filename="stages.png", title=t("wk_chart", lang))]
    if lifecycle is not None:
        sections.append(lifecycle[0])
        images.append(lifecycle[1])
    card = Card(title=t("wk_title", lang, date=local_day.isoformat()), subtitle=scope, fields=tuple(fields),
                sections=tuple(sections),
                freshness=totals_note(rates, total_arr, *arr_by_grade.values(), *dist["arr"], lang=lang))
    return Reply(text=text, cards=[card], images=images)


def manager_weekly(session: Session, *, now: datetime, config: AlertConfig, machine: Any = None) -> int:
    """Enqueue the weekly summary for every manager (their team) and admin (everything) on the weekly day after
    `digest_at` local, once that day; returns how many. `machine` (the stage machine) orders and labels the
    stages, by default the configured one. Flushes, does not commit."""
    leads = list(session.execute(
        select(User).where(col(User.active), col(User.role).in_(("manager", "admin"))).order_by(col(User.id))
    ).scalars().all())
    due = _due_people(leads, _last_sent(session, WEEKLY_KIND, now - timedelta(days=8)), now, config, weekly=True)
    if not due:
        return 0
    machine = machine if machine is not None else _stage_machine()
    frame = _portfolio_frame(session)
    rates = load_rates(session, on=now.date())
    reports = pd.DataFrame.from_records(
        session.execute(select(col(User.id), col(User.manager_id)).where(col(User.manager_id).is_not(None))).all(),
        columns=["id", "manager_id"],
    )
    sent = 0
    for user, target, local, _previous in due:
        everyone = user.role == "admin"
        if everyone:
            part = frame
            owners: tuple[int, ...] | None = None
        else:
            team = {user.id, *reports.loc[reports["manager_id"] == user.id, "id"].tolist()}
            part = frame[frame["owner_id"].isin(team)]
            owners = tuple(sorted(int(i) for i in team if i is not None))
        lifecycle = None
        if machine is not None and not part.empty:
            lifecycle = lifecycle_summary(session, machine, today=local.date(), scope=Slice(owner_ids=owners),
                                          lang=target.lang, rates=rates)
        reply = weekly_reply(part, lang=target.lang, team=not everyone, local_day=local.date(), rates=rates,
                             machine=machine, lifecycle=lifecycle)
        payload = {**reply_to_payload(reply), "dedupe": f"weekly:{user.id}:{local.date().isoformat()}"}
        post(session, target, payload=payload, kind=WEEKLY_KIND, now=now, about=(user.id, None))
        sent += 1
    return sent
