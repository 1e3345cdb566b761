"""Renewal prompts: at 120/90/60/30 days (`[renewal_prompts].windows`) before an active account's renewal date,
its owner gets one message with the health and its trend, NPS, the open risks, and what the account achieved over
the contract — usage growth, features adopted, tickets resolved, promoter quotes — so the renewal talk can start
from what was won and look ahead to growth.

Each (account, window, renewal date) is prompted once ever: the prompt is an `Alert` with rule `renewal_prompt`
and the dedupe key `{account}:renewal:{renewal date}:{window}`, inserted with ON CONFLICT DO NOTHING, so the
database's unique key holds "once" even when two replicas run the job. Only the current window fires (the
smallest one at or above the days left): an account that enters the job late is not sent every window it missed.
A new prompt resolves the account's earlier ones. Everything is gathered for the whole batch with a handful of
queries; delivery goes through `bot.push.routing.route_alerts` in the caller's transaction.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, func, select, update
from sqlmodel import Session, col

from bot.core.i18n import t
from bot.push.routing import RouteStats, route_alerts
from bot.views.alert_cards import RENEWAL_PROMPT
from lifecycle.scoring.alerts import AlertConfig
from lifecycle.scoring.health import trends
from lifecycle.store.db import upsert
from lifecycle.store.models import Account, Alert, NpsResponse, Ticket, UsageDaily

PROMOTER_MIN = 9
FIRST_MONTH = timedelta(days=30)
CONTRACT_FALLBACK = timedelta(days=365)  # no contract start: the year before the renewal is the contract
MAX_FEATURES = 10
MAX_QUOTES = 2
LIVE = ("open", "acknowledged", "snoozed")
_CHUNK = 5_000


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start:start + _CHUNK])


def _frame(session: Session, stmt: Any, ids: Sequence[int], columns: list[str]) -> pd.DataFrame:
    """`stmt` (with an expanding `ids` parameter) run over `ids` in chunks, as one frame."""
    rows: list[Any] = []
    for chunk in _chunks(ids):
        rows += session.execute(stmt, {"ids": chunk}).all()
    return pd.DataFrame.from_records(rows, columns=columns)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else round(number, 1)


def due_prompts(accounts: pd.DataFrame, today: date, windows: Sequence[int]) -> pd.DataFrame:
    """The current window of each account (`window`, `days_left`; rows without one dropped) and its dedupe key.

    `accounts` has `account_id` and `renewal_date`. The current window is the smallest at or above the days left.
    """
    ascending = np.array(sorted(windows), dtype=float)
    days_left = (pd.to_datetime(accounts["renewal_date"]) - pd.Timestamp(today)).dt.days.to_numpy(dtype=float)
    position = np.searchsorted(ascending, days_left, side="left")
    has_window = (days_left >= 0) & (position < len(ascending))
    out = accounts.loc[has_window].copy()
    out["days_left"] = days_left[has_window].astype(int)
    out["window"] = ascending[position[has_window]].astype(int)
    out["dedupe_key"] = [
        f"{a}:renewal:{d.isoformat()}:{w}"
        for a, d, w in zip(out["account_id"], out["renewal_date"], out["window"], strict=True)
    ]
    return out


def _candidates(session: Session, today: date, horizon: int) -> pd.DataFrame:
    stmt = select(
        col(Account.id), col(Account.owner_id), col(Account.renewal_date), col(Account.contract_start),
        col(Account.arr), col(Account.currency), col(Account.stage), col(Account.health_score),
        col(Account.health_grade),
    ).where(
        col(Account.status) == "active", col(Account.renewal_date).is_not(None),
        col(Account.renewal_date) >= today, col(Account.renewal_date) <= today + timedelta(days=horizon),
    ).order_by(col(Account.id))
    columns = ["account_id", "owner_id", "renewal_date", "contract_start", "arr", "currency", "stage",
               "health_score", "health_grade"]
    return pd.DataFrame.from_records(session.execute(stmt).all(), columns=columns)


def _existing_keys(session: Session, keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start:start + _CHUNK])
        found |= set(session.execute(select(col(Alert.dedupe_key)).where(col(Alert.dedupe_key).in_(chunk))).scalars())
    return found


def _starts(due: pd.DataFrame) -> pd.Series:
    """Each account's contract start (the year before the renewal when unknown), indexed by account."""
    renewal = pd.to_datetime(due["renewal_date"])
    start = pd.to_datetime(due["contract_start"]).fillna(renewal - pd.Timedelta(CONTRACT_FALLBACK))
    return pd.Series(start.to_numpy(), index=due["account_id"].astype("int64"), name="start")


def _usage_growth(session: Session, ids: list[int], starts: pd.Series, today: date) -> pd.DataFrame:
    """Average daily active users in the contract's first 30 days and in the last 30 days, and the change in %."""
    stmt = (
        select(col(UsageDaily.account_id), col(UsageDaily.day), col(UsageDaily.active_users))
        .where(col(UsageDaily.account_id).in_(bindparam("ids", expanding=True)), col(UsageDaily.feature) == "",
               col(UsageDaily.day) >= starts.min().date())
    )
    usage = _frame(session, stmt, ids, ["account_id", "day", "active_users"])
    out = pd.DataFrame(index=starts.index, columns=["usage_first", "usage_last", "usage_growth_pct"], dtype=float)
    if usage.empty:
        return out
    usage["day"] = pd.to_datetime(usage["day"])
    start = usage["account_id"].map(starts)
    first = usage[(usage["day"] >= start) & (usage["day"] < start + pd.Timedelta(FIRST_MONTH))]
    last = usage[usage["day"] > pd.Timestamp(today) - pd.Timedelta(FIRST_MONTH)]
    out["usage_first"] = first.groupby("account_id")["active_users"].mean().reindex(out.index)
    out["usage_last"] = last.groupby("account_id")["active_users"].mean().reindex(out.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = (out["usage_last"] - out["usage_first"]) / out["usage_first"] * 100.0
    out["usage_growth_pct"] = growth.where(out["usage_first"] > 0)
    return out


def _features(session: Session, ids: list[int], starts: pd.Series) -> dict[int, list[str]]:
    """Features each account used (any events) since its contract start, by name."""
    stmt = (
        select(col(UsageDaily.account_id), col(UsageDaily.feature), func.max(col(UsageDaily.day)))
        .where(col(UsageDaily.account_id).in_(bindparam("ids", expanding=True)), col(UsageDaily.feature) != "",
               col(UsageDaily.events) > 0, col(UsageDaily.day) >= starts.min().date())
        .group_by(col(UsageDaily.account_id), col(UsageDaily.feature))
    )
    used = _frame(session, stmt, ids, ["account_id", "feature", "last_day"])
    if used.empty:
        return {}
    used = used[pd.to_datetime(used["last_day"]) >= used["account_id"].map(starts)]
    out: dict[int, list[str]] = {}
    for account_id, group in used.groupby("account_id"):
        out[int(str(account_id))] = sorted(group["feature"].astype(str))[:MAX_FEATURES]
    return out


def _tickets_resolved(session: Session, ids: list[int], starts: pd.Series) -> pd.Series:
    stmt = (
        select(col(Ticket.account_id), col(Ticket.closed_at))
        .where(col(Ticket.account_id).in_(bindparam("ids", expanding=True)), col(Ticket.closed_at).is_not(None),
               col(Ticket.closed_at) >= starts.min().to_pydatetime())
    )
    closed = _frame(session, stmt, ids, ["account_id", "closed_at"])
    if closed.empty:
        return pd.Series(0, index=starts.index)
    closed = closed[pd.to_datetime(closed["closed_at"]) >= closed["account_id"].map(starts)]
    return closed.groupby("account_id").size().reindex(starts.index, fill_value=0)


def _nps(
    session: Session, ids: list[int], starts: pd.Series
) -> tuple[dict[int, tuple[int, date]], dict[int, list[dict[str, Any]]]]:
    """The latest NPS answer per account, and its promoters' comments since the contract start (newest first)."""
    stmt = (
        select(col(NpsResponse.account_id), col(NpsResponse.score), col(NpsResponse.comment),
               col(NpsResponse.responded_at))
        .where(col(NpsResponse.account_id).in_(bindparam("ids", expanding=True)))
    )
    answers = _frame(session, stmt, ids, ["account_id", "score", "comment", "responded_at"])
    if answers.empty:
        return {}, {}
    answers["responded_at"] = pd.to_datetime(answers["responded_at"])
    answers = answers.sort_values(["account_id", "responded_at"])
    last = answers.groupby("account_id")[["score", "responded_at"]].last()
    latest = {
        int(a): (int(score), at.date())
        for a, score, at in zip(last.index, last["score"], last["responded_at"], strict=True)
    }
    comment = answers["comment"].fillna("").astype(str).str.strip()
    promoters = answers[(answers["score"] >= PROMOTER_MIN) & (comment != "")
                        & (answers["responded_at"] >= answers["account_id"].map(starts))]
    quotes: dict[int, list[dict[str, Any]]] = {}
    for account_id, group in promoters.sort_values("responded_at", ascending=False).groupby("account_id"):
        rows: list[Any] = list(group.head(MAX_QUOTES).itertuples(index=False))
        quotes[int(str(account_id))] = [
            {"score": int(r.score), "comment": str(r.comment).strip(), "at": r.responded_at.date().isoformat()}
            for r in rows
        ]
    return latest, quotes


def _risks(session: Session, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The account's standing risk alerts (open, acknowledged or snoozed), most recent first."""
    stmt = (
        select(col(Alert.account_id), col(Alert.id), col(Alert.rule), col(Alert.severity), col(Alert.title),
               col(Alert.details))
        .where(col(Alert.account_id).in_(bindparam("ids", expanding=True)), col(Alert.status).in_(LIVE),
               col(Alert.rule) != RENEWAL_PROMPT)
        .order_by(col(Alert.id).desc())
    )
    out: dict[int, list[dict[str, Any]]] = {}
    for chunk in _chunks(ids):
        for account_id, alert_id, rule, severity, title, details in session.execute(stmt, {"ids": chunk}).all():
            out.setdefault(int(account_id), []).append({
                "id": int(alert_id), "rule": rule, "severity": severity, "title": title,
                "title_zh": (details or {}).get("title_zh") or title,
            })
    return out


def _prompt_rows(
    session: Session, due: pd.DataFrame, today: date, now: datetime, config: AlertConfig, batch: str
) -> list[dict[str, Any]]:
    """The alert rows of the due prompts, with everything the message shows in `details`."""
    ids = due["account_id"].astype(int).tolist()
    starts = _starts(due)
    trend = trends(session, ids, today)
    usage = _usage_growth(session, ids, starts, today)
    features = _features(session, ids, starts)
    resolved = _tickets_resolved(session, ids, starts)
    latest_nps, quotes = _nps(session, ids, starts)
    risks = _risks(session, ids)
    prompts = config.renewal_prompts
    rows = []
    records: list[Any] = list(due.itertuples(index=False))
    for row in records:
        a = int(row.account_id)
        renewal: date = row.renewal_date
        nps = latest_nps.get(a)
        details = {
            "title": t("rp_title", "en", days=row.days_left, date=renewal.isoformat()),
            "title_zh": t("rp_title", "zh", days=row.days_left, date=renewal.isoformat()),
            "window": int(row.window), "days_left": int(row.days_left), "renewal_date": renewal.isoformat(),
            "since": starts[a].date().isoformat(),
            "arr": float(row.arr or 0.0), "currency": row.currency, "stage": row.stage,
            "health_score": _number(row.health_score), "health_grade": row.health_grade,
            "delta_7": _number(trend.at[a, "delta_7"]), "delta_30": _number(trend.at[a, "delta_30"]),
            "nps_score": nps[0] if nps is not None else None,
            "nps_at": nps[1].isoformat() if nps is not None else None,
            "risks": risks.get(a, []),
            "achievements": {
                "usage_first": _number(usage.at[a, "usage_first"]),
                "usage_last": _number(usage.at[a, "usage_last"]),
                "usage_growth_pct": _number(usage.at[a, "usage_growth_pct"]),
                "features": features.get(a, []),
                "tickets_resolved": int(resolved.get(a, 0)),
                "quotes": quotes.get(a, []),
            },
            "next_steps": prompts.next_steps, "next_steps_zh": prompts.next_steps_zh,
            "batch": batch,
        }
        rows.append({
            "account_id": a, "owner_id": None if pd.isna(row.owner_id) else int(row.owner_id),
            "rule": RENEWAL_PROMPT, "severity": prompts.severity, "dedupe_key": row.dedupe_key, "status": "open",
            "feedback": None, "title": details["title"], "details": details, "created_at": now,
            "acknowledged_at": None, "snoozed_until": None, "resolved_at": None,
        })
    return rows


def _resolve_earlier(session: Session, account_ids: list[int], keep: set[int], now: datetime) -> None:
    """A new prompt supersedes the account's earlier ones, which leave the open-alert list."""
    table = Alert.__table__  # type: ignore[attr-defined]
    for chunk in _chunks(account_ids):
        session.execute(
            update(table)
            .where(table.c.account_id.in_(chunk), table.c.rule == RENEWAL_PROMPT, table.c.status.in_(LIVE),
                   table.c.id.not_in(sorted(keep)))
            .values(status="resolved", resolved_at=now)
        )


def renewal_prompts(
    session: Session, *, today: date, now: datetime, config: AlertConfig
) -> int:
    """Raise and route the renewal prompts due on `today`; returns how many were raised (the caller commits)."""
    raised, _stats = renewal_prompts_routed(session, today=today, now=now, config=config)
    return raised


def renewal_prompts_routed(
    session: Session, *, today: date, now: datetime, config: AlertConfig
) -> tuple[int, RouteStats]:
    """`renewal_prompts`, also returning what routing did with them."""
    prompts = config.renewal_prompts
    if not prompts.enabled:
        return 0, RouteStats()
    candidates = _candidates(session, today, max(prompts.windows))
    if candidates.empty:
        return 0, RouteStats()
    due = due_prompts(candidates, today, prompts.windows)
    due = due[~due["dedupe_key"].isin(_existing_keys(session, due["dedupe_key"].tolist()))]
    if due.empty:
        return 0, RouteStats()
    batch = uuid.uuid4().hex
    upsert(session, Alert, _prompt_rows(session, due, today, now, config, batch), conflict=["dedupe_key"], update=[])
    # Only the rows this run inserted: a concurrent run that won a key routes its own prompt.
    keys = due["dedupe_key"].tolist()
    mine = [
        alert for start in range(0, len(keys), _CHUNK)
        for alert in session.execute(
            select(Alert).where(col(Alert.dedupe_key).in_(keys[start:start + _CHUNK]))
        ).scalars().all()
        if (alert.details or {}).get("batch") == batch
    ]
    _resolve_earlier(session, sorted({a.account_id for a in mine}), {a.id for a in mine if a.id is not None}, now)
    stats = route_alerts(session, mine, now=now, config=config)
    return len(mine), stats
