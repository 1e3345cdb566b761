"""The baseline the recompute is measured against: health scored one account at a time through the ORM.

This is the straightforward implementation a first version would have: for each account, load it, query its
usage rows of the window, its last usage day, its tickets, its latest NPS answer and its latest note (one query
each), derive the same facts as `lifecycle.scoring.signals` in plain Python, score them with the same scorecard, and
add a
`HealthSnapshot` and the account's new score through the session. It exists only to be timed and to check that the
vectorised recompute gives exactly the same scores; nothing in csbot uses it.

The arithmetic follows `lifecycle.scoring.health.score_frame` operation for operation (same divisions, NumPy's `nansum`
and `round` for the total, then the critical signals' caps), so the scores compare for equality rather than within
a tolerance.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
from sqlmodel import Session, col, func, select

from lifecycle.scoring.health import Scorecard
from lifecycle.scoring.signals import NO_LOGIN_IN_WINDOW, NPS_RECENT_DAYS, RECENT_DAYS, USAGE_WINDOW_DAYS
from lifecycle.store.models import Account, HealthSnapshot, Note, NpsResponse, Ticket, UsageDaily, utcnow

Facts = dict[str, float | None]


@dataclass(frozen=True)
class OrmScore:
    """One account's score by the per-account implementation (None when it has too little data)."""

    account_id: int
    score: float | None
    grade: str


@dataclass(frozen=True)
class OrmRun:
    """A timed pass over some accounts: their scores and the wall time it took."""

    scores: list[OrmScore]
    seconds: float

    @property
    def per_account(self) -> float:
        return self.seconds / max(len(self.scores), 1)


def _days(later: date, earlier: date | None) -> float | None:
    return None if earlier is None else float((later - earlier).days)


def account_facts(session: Session, account: Account, as_of: date) -> Facts:
    """The facts the scorecard reads for one account on `as_of`, with one query per kind of data."""
    assert account.id is not None
    d30 = as_of - timedelta(days=USAGE_WINDOW_DAYS - 1)
    d60 = as_of - timedelta(days=2 * USAGE_WINDOW_DAYS - 1)
    next_day = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    start30 = datetime.combine(d30, datetime.min.time())
    start60 = datetime.combine(d60, datetime.min.time())

    usage = session.exec(
        select(UsageDaily).where(UsageDaily.account_id == account.id, col(UsageDaily.day) >= d60,
                                 col(UsageDaily.day) <= as_of)
    ).all()
    totals = [u for u in usage if u.feature == ""]
    recent = [u for u in totals if u.day >= d30]
    prior = [u for u in totals if u.day < d30]
    d7 = as_of - timedelta(days=RECENT_DAYS - 1)
    week = [u for u in recent if u.day >= d7]
    rest = [u for u in recent if u.day < d7]
    logged_in = [u.day for u in totals if u.logins > 0]
    last_usage = session.exec(
        select(func.max(UsageDaily.day)).where(UsageDaily.account_id == account.id, UsageDaily.feature == "",
                                               col(UsageDaily.day) <= as_of)
    ).one()
    has_features = session.exec(
        select(UsageDaily.id).where(UsageDaily.account_id == account.id, UsageDaily.feature != "",
                                    col(UsageDaily.day) <= as_of).limit(1)
    ).first() is not None
    breadth = len({u.feature for u in usage if u.feature != "" and u.day >= d30 and u.events > 0})

    tickets = session.exec(
        select(Ticket).where(Ticket.account_id == account.id, col(Ticket.opened_at) < next_day)
    ).all()

    def still_open(t: Ticket) -> bool:
        return (t.closed_at is None and t.status.lower() != "closed") or (
            t.closed_at is not None and t.closed_at >= next_day)

    nps = session.exec(
        select(NpsResponse).where(NpsResponse.account_id == account.id, col(NpsResponse.responded_at) < next_day)
        .order_by(col(NpsResponse.responded_at).desc(), col(NpsResponse.id).desc()).limit(1)
    ).first()
    last_note = session.exec(
        select(func.max(Note.created_at)).where(Note.account_id == account.id, col(Note.created_at) < next_day)
    ).one()
    start90 = datetime.combine(as_of - timedelta(days=NPS_RECENT_DAYS - 1), datetime.min.time())
    latest_answers: dict[str, NpsResponse] = {}
    for answer in session.exec(
        select(NpsResponse).where(NpsResponse.account_id == account.id, col(NpsResponse.responded_at) >= start90,
                                  col(NpsResponse.responded_at) < next_day).order_by(col(NpsResponse.responded_at))
    ).all():
        latest_answers[answer.contact_key] = answer

    seats = float(account.seats or 0)
    peak = max((u.active_users for u in week), default=0)
    since_usage = _days(as_of, last_usage)
    since_login = _days(as_of, max(logged_in, default=None))
    if since_login is None and since_usage is not None:
        since_login = max(float(NO_LOGIN_IN_WINDOW), since_usage)
    events_30, events_prior = float(sum(u.events for u in recent)), float(sum(u.events for u in prior))
    per_day_rest = sum(u.events for u in rest) / len(rest) if rest else None
    per_day_week = (sum(u.events for u in week) / len(week) if week else 0.0) if recent else None
    change_7 = (per_day_week - per_day_rest) / per_day_rest * 100.0 \
        if per_day_week is not None and per_day_rest else None
    change_30 = (events_30 - events_prior) / events_prior * 100.0 if events_prior > 0 else None
    changes = [c for c in (change_7, change_30) if c is not None]
    return {
        "utilisation": float(peak) / seats if seats > 0 and recent else None,
        "events_30": events_30,
        "events_prior_30": events_prior,
        "usage_change": min(changes) if changes else None,
        "usage_change_30": change_30,
        "nps_detractors_90": float(sum(1 for a in latest_answers.values() if a.score <= 6)),
        "logins_30": float(sum(u.logins for u in recent)),
        "logins_prior_30": float(sum(u.logins for u in prior)),
        "usage_days_30": float(len(recent)),
        "feature_breadth_30": float(breadth) if has_features else None,
        "open_high_tickets": float(sum(
            1 for t in tickets if t.priority.lower() in ("high", "urgent") and still_open(t))),
        "urgent_open_tickets": float(sum(1 for t in tickets if t.priority.lower() == "urgent" and still_open(t))),
        "tickets_30": float(sum(1 for t in tickets if t.opened_at >= start30)),
        "tickets_prior_30": float(sum(1 for t in tickets if start60 <= t.opened_at < start30)),
        "nps_last_score": float(nps.score) if nps is not None else None,
        "days_since_last_nps": _days(as_of, nps.responded_at.date()) if nps is not None else None,
        "days_since_last_note": _days(as_of, last_note.date()) if last_note is not None else None,
        "days_since_last_usage": since_usage,
        "days_since_last_login": since_login,
        "days_to_renewal": (
            float((account.renewal_date - as_of).days) if account.renewal_date is not None else None),
        "days_since_contract_start": _days(as_of, account.contract_start),
        "seats": seats,
        "arr": float(account.arr),
    }


def _value(facts: Facts, name: str) -> float:
    value = facts.get(name)
    return math.nan if value is None else float(value)


def score_account(facts: Facts, stage: str | None, segment: str | None, card: Scorecard) -> tuple[float, str,
                                                                                                  dict[str, object]]:
    """Score one account's facts: (score or NaN, grade, per-measure detail for the snapshot)."""
    stage_weights, multipliers = card.weights_for(stage), card.multipliers_for(segment)
    names = list(card.measures)
    values, points, raw = [], [], []
    for name in names:
        config = card.measures[name]
        current = _value(facts, config.signal)
        if config.baseline is None:
            value = current * config.scale
        else:
            baseline = _value(facts, config.baseline)
            value = (current - baseline) / baseline * 100.0 if baseline > 0 else math.nan
        if math.isnan(value):
            point = math.nan
        else:
            starts = [start for start, _ in config.bands]
            index = min(max(bisect.bisect_right(starts, value) - 1, 0), len(starts) - 1)
            point = float(config.bands[index][1])
            rule = config.rising
            if rule is not None:
                now = np.nan_to_num(_value(facts, rule.signal))
                before = np.nan_to_num(_value(facts, rule.baseline))
                if now >= rule.min_count and now >= rule.ratio * before:
                    point = max(point - rule.points, 0.0)
        values.append(value)
        points.append(point)
        raw.append(stage_weights[name] * multipliers[name])
    possible = sum(raw)
    total = sum(w for w, v in zip(raw, values, strict=True) if not math.isnan(v))
    coverage = total / possible if possible > 0 else 0.0
    weights = [w / total if total > 0 and not math.isnan(v) else math.nan
               for w, v in zip(raw, values, strict=True)]
    contributions = [w * p for w, p in zip(weights, points, strict=True)]
    scored = total > 0 and coverage >= card.min_coverage - 1e-9
    score = float(np.round(np.nansum(np.array(contributions)), 1)) if scored else math.nan
    if scored:
        for critical in card.critical.values():
            if bool(critical.holds(np.array([_value(facts, critical.signal)]))[0]):
                score = min(score, card.ceiling(critical.cap))
    detail: dict[str, object] = {
        name: {"value": None if math.isnan(v) else v, "points": None if math.isnan(p) else p,
               "weight": None if math.isnan(w) else w, "contribution": None if math.isnan(c) else c}
        for name, v, p, w, c in zip(names, values, points, weights, contributions, strict=True)
    }
    return score, card.grade(score), detail


def run(session: Session, account_ids: Sequence[int], as_of: date, card: Scorecard) -> OrmRun:
    """Score `account_ids` one by one and add their snapshots and scores to the session (flushed, not
    committed: the caller decides), timing the whole pass."""
    started = time.perf_counter()
    scores: list[OrmScore] = []
    now = utcnow()
    for account_id in account_ids:
        account = session.get(Account, account_id)
        if account is None or account.status != "active":
            continue
        facts = account_facts(session, account, as_of)
        score, grade, detail = score_account(facts, account.stage, account.segment, card)
        known = not math.isnan(score)
        if known:
            session.add(HealthSnapshot(account_id=account_id, day=as_of, score=score, grade=grade,
                                       measures=detail, scorecard_version=card.version, computed_at=now))
        account.health_score = score if known else None
        account.health_grade = grade
        account.health_at = as_of
        session.add(account)
        scores.append(OrmScore(account_id, score if known else None, grade))
    session.flush()
    return OrmRun(scores=scores, seconds=time.perf_counter() - started)
