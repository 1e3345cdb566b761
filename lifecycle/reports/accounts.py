"""Finding accounts by name (case-insensitive, with suggestions) and gathering what is known about one account."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from rapidfuzz import fuzz, process, utils
from sqlalchemy import func
from sqlmodel import Session, col, select

from lifecycle.insight.churn import churned_with_date, default_insight_config, latest_model_info, standing
from lifecycle.insight.clv import expected_lifetime_years
from lifecycle.store.errors import NotFoundError
from lifecycle.store.models import Account, Cohort, HealthSnapshot, Note, NpsResponse, Ticket, User, utcnow


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def suggest_names(session: Session, name: str, limit: int = 3) -> list[str]:
    """The account names closest to `name`, best first."""
    names = [n for (n,) in session.execute(select(Account.name)).all()]
    if not names:
        return []
    matches = process.extract(
        name, names, scorer=fuzz.WRatio, processor=utils.default_process, limit=limit, score_cutoff=50
    )
    return [m[0] for m in matches]


def segment_names(session: Session) -> list[str]:
    """The segments the accounts are in, in lower case and sorted (segments are compared case-insensitively, so
    `SMB` and `smb` are one); what a command's `segment <name>` is checked against."""
    segment = func.lower(col(Account.segment))
    return sorted({s for (s,) in session.execute(select(segment).distinct()).all() if s})


def _exact(session: Session, text: str) -> Account | None:
    key = _key(text)
    return session.exec(
        select(Account).where((col(Account.name_key) == key) | (func.lower(col(Account.external_id)) == key))
    ).first()


def _unique_prefix(session: Session, text: str) -> Account | None:
    key = _key(text)
    if len(key) < 3:
        return None
    found = session.exec(select(Account).where(col(Account.name_key).startswith(key, autoescape=True)).limit(2)).all()
    return found[0] if len(found) == 1 else None


def find_account(session: Session, text: str) -> Account:
    """The account whose name or external id is `text` (any case), or whose name uniquely starts with it.

    Raises `NotFoundError` with the closest names as suggestions.
    """
    text = text.strip()
    account = _exact(session, text) or _unique_prefix(session, text)
    if account is None:
        raise NotFoundError("account", text, suggest_names(session, text))
    return account


def find_account_prefix(session: Session, tokens: Sequence[str]) -> tuple[Account, int]:
    """The account named by the longest leading run of `tokens`; returns it and how many tokens it used.

    Used when more arguments follow a name, as in `stage Acme Corp adoption kickoff done`. Only exact names or
    external ids count here (a loose match could put a note on the wrong account).
    """
    for n in range(len(tokens), 0, -1):
        account = _exact(session, " ".join(tokens[:n]))
        if account is not None:
            return account, n
    if not tokens:
        raise NotFoundError("account", "")
    account = _unique_prefix(session, tokens[0])
    if account is not None:
        return account, 1
    # Nothing matched: suggest against the first word and the whole phrase.
    guess = " ".join(tokens[:3])
    raise NotFoundError("account", tokens[0], suggest_names(session, guess))


@dataclass
class AccountView:
    """Everything the account card shows, gathered in a few queries."""

    account: Account
    owner: User | None
    latest: HealthSnapshot | None
    delta_7: float | None
    delta_30: float | None
    nps_score: int | None
    nps_at: date | None
    open_tickets: int
    open_high_tickets: int
    notes: list[Note] = field(default_factory=list)
    insight: AccountInsight | None = None


def _snapshot_on_or_before(session: Session, account_id: int, day: date) -> HealthSnapshot | None:
    return session.exec(
        select(HealthSnapshot)
        .where(HealthSnapshot.account_id == account_id, HealthSnapshot.day <= day)
        .order_by(col(HealthSnapshot.day).desc())
        .limit(1)
    ).first()


def account_view(session: Session, account: Account, *, notes: int = 3) -> AccountView:
    assert account.id is not None
    latest = _snapshot_on_or_before(session, account.id, date.max)
    delta_7 = delta_30 = None
    if latest is not None:
        for days in (7, 30):
            past = _snapshot_on_or_before(session, account.id, latest.day - timedelta(days=days))
            if past is not None:
                if days == 7:
                    delta_7 = latest.score - past.score
                else:
                    delta_30 = latest.score - past.score
    nps = session.exec(
        select(NpsResponse)
        .where(NpsResponse.account_id == account.id)
        .order_by(col(NpsResponse.responded_at).desc())
        .limit(1)
    ).first()
    open_filter = (
        (col(Ticket.account_id) == account.id) & col(Ticket.closed_at).is_(None) & (col(Ticket.status) != "closed")
    )
    open_tickets = session.exec(select(func.count()).select_from(Ticket).where(open_filter)).one()
    open_high = session.exec(
        select(func.count()).select_from(Ticket).where(open_filter & col(Ticket.priority).in_(("high", "urgent")))
    ).one()
    recent_notes = list(
        session.exec(
            select(Note).where(Note.account_id == account.id).order_by(col(Note.created_at).desc()).limit(notes)
        ).all()
    )
    owner = session.get(User, account.owner_id) if account.owner_id else None
    return AccountView(
        account=account,
        owner=owner,
        latest=latest,
        delta_7=delta_7,
        delta_30=delta_30,
        nps_score=nps.score if nps else None,
        nps_at=nps.responded_at.date() if nps else None,
        open_tickets=int(open_tickets),
        open_high_tickets=int(open_high),
        notes=recent_notes,
        insight=account_insight(session, account),
    )


def add_note(session: Session, account: Account, text: str, *, author_id: int | None, kind: str = "note") -> Note:
    """Record a note/touchpoint on an account (the caller commits)."""
    text = text.strip()
    if not text:
        raise ValueError("a note needs some text")
    note = Note(account_id=account.id or 0, author_id=author_id, kind=kind, text=text, created_at=utcnow())
    session.add(note)
    session.flush()
    return note


def nps_category(score: int) -> str:
    """9–10 promoter, 7–8 passive, 0–6 detractor."""
    if score >= 9:
        return "promoter"
    if score >= 7:
        return "passive"
    return "detractor"


@dataclass(frozen=True)
class AccountInsight:
    """What the churn model, the cohorts, the tiers and CLV say about one account.

    `model` is "scored" (a probability is stored), "no_model" (none trained yet: `churned_accounts` of the
    `needed_accounts` churned accounts with a date exist) or "not_scored" (a model exists but this account has no
    score, e.g. it churned or was added since the last recompute).
    """

    model: str
    probability: float | None = None
    reasons: tuple[Mapping[str, Any], ...] = ()
    horizon_days: int = 90
    standing: str | None = None  # low / typical / high for this portfolio
    percentile: float | None = None
    scored_at: datetime | None = None
    churned_accounts: int = 0
    needed_accounts: int = 0
    cohort: int | None = None
    cohort_size: int | None = None
    cohort_traits: tuple[Mapping[str, Any], ...] = ()
    tier: str | None = None
    lifetime_value: float | None = None
    lifetime_years: float | None = None
    gross_margin: float = 0.8


def account_insight(session: Session, account: Account) -> AccountInsight:
    """Churn probability with its reasons and standing, cohort with its traits, tier and CLV of one account."""
    config = default_insight_config()
    cohort = session.get(Cohort, account.cohort) if account.cohort is not None else None
    common: dict[str, Any] = {
        "cohort": account.cohort,
        "cohort_size": cohort.size if cohort else None,
        "cohort_traits": tuple(cohort.traits) if cohort else (),
        "tier": account.tier,
        "gross_margin": config.value.gross_margin,
    }
    info = latest_model_info(session)
    if info is None:
        return AccountInsight(model="no_model", churned_accounts=churned_with_date(session),
                              needed_accounts=config.churn.min_churned_accounts,
                              horizon_days=config.churn.horizon_days, **common)
    if account.churn_probability is None:
        return AccountInsight(model="not_scored", horizon_days=info.horizon_days, **common)
    p = float(account.churn_probability)
    place = standing(session, p)
    years = float(expected_lifetime_years([p], info.horizon_days, config.value.max_lifetime_years)[0])
    return AccountInsight(
        model="scored", probability=p, reasons=tuple(account.churn_reasons or ()), horizon_days=info.horizon_days,
        standing=place.level, percentile=place.percentile, scored_at=account.churn_scored_at,
        lifetime_value=account.arr * config.value.gross_margin * years, lifetime_years=years, **common,
    )
