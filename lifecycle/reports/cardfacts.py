"""What the account card shows that would otherwise be recomputed on every lookup, stored at recompute time.

The account card's stage KPIs (`lifecycle.reports.analytics.account_kpis`) cost a dozen aggregate queries and their
pandas work per lookup. The nightly recompute (its insight step) computes them for every account at once
(`analytics.portfolio_account_kpis`, one pass of the same aggregates over the portfolio) and stores them in
`account_card_fact`, one row per account, with the day they are for and a freshness stamp of everything they
were computed from:

- the account's own columns the KPIs read (stage, status, seats, contract start, renewal date, creation time,
  currency);
- per input table, the number of the account's rows and their largest id (notes, NPS answers, ARR changes), and
  for usage also the sums of events and active users (so a re-imported day with other figures changes it);
- the exchange rate of the account's currency into the reporting currency, and a digest of the KPI definitions
  (the stage configuration and the activation rule).

A lookup reads the stored row by its key and the stamp's inputs with a few indexed reads (one range of each
table's account index); the stored values are used only when they are for the lookup's day and the stamp is the
same, otherwise the KPIs are computed live as before. Either way the card says exactly what a live computation
would: a note logged, an NPS answer, an ARR change, new or corrected usage or a stage move since the recompute
simply means the live path for that account until the next recompute.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from sqlalchemy import JSON, Date, String, delete, text
from sqlmodel import Session

from lifecycle.reports.analytics import KpiResult, account_kpis, portfolio_account_kpis
from lifecycle.reports.money import Rates, load_rates
from lifecycle.scoring.stages import StageMachine
from lifecycle.store.bulkwrite import insert_rows
from lifecycle.store.models import AccountCardFact, utcnow

# Rows per bulk insert (one COPY on PostgreSQL, one executemany on SQLite): bounds the converted rows held at once.
WRITE_BATCH = 20_000

_ACCOUNT_SQL = ("SELECT id, stage, status, seats, contract_start, renewal_date, created_at, currency FROM account")
# (table, the aggregates of the account's rows): counted per account, through each table's account index.
_INPUTS: tuple[tuple[str, str], ...] = (
    ("note", "COUNT(*), MAX(id)"),
    ("nps_response", "COUNT(*), MAX(id)"),
    ("arr_change", "COUNT(*), MAX(id)"),
    ("usage_daily", "COUNT(*), MAX(id), SUM(events), SUM(active_users)"),
)
_EMPTY: dict[str, tuple[Any, ...]] = {"note": (0, None), "nps_response": (0, None), "arr_change": (0, None),
                                      "usage_daily": (0, None, None, None)}


def definitions_digest(machine: StageMachine) -> str:
    """A digest of what the KPI values depend on in the configuration: the KPI definitions and the activation
    rule (time to value)."""
    spec = [k.model_dump(mode="json") for k in machine.kpis]
    activation = [machine.activation.ratio, machine.activation.window_days]
    return hashlib.sha1(json.dumps([spec, activation], sort_keys=True).encode()).hexdigest()[:16]


def _stamp(account: tuple[Any, ...], inputs: Mapping[str, tuple[Any, ...]], factor: float | None,
           reporting: str, digest: str) -> str:
    parts = [[str(v) if v is not None else None for v in account[1:]],
             {name: [None if v is None else str(v) for v in inputs[name]] for name, _ in _INPUTS},
             None if factor is None else repr(float(factor)), reporting, digest]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _stamps(session: Session, account_id: int | None, rates: Rates, digest: str) -> dict[int, tuple[str, str]]:
    """The freshness stamp and current stage of one account (`account_id`) or of every account (None), from the
    same queries."""
    where = "" if account_id is None else " WHERE {col} = :account_id"
    params = {} if account_id is None else {"account_id": account_id}
    accounts = session.execute(text(_ACCOUNT_SQL + where.format(col="id")), params).all()
    inputs: dict[str, dict[int, tuple[Any, ...]]] = {}
    for table, aggregates in _INPUTS:
        rows = session.execute(text(f"SELECT account_id, {aggregates} FROM {table}"
                                    + where.format(col="account_id") + " GROUP BY account_id"), params).all()
        inputs[table] = {int(r[0]): tuple(r[1:]) for r in rows}
    out = {}
    for row in accounts:
        aid = int(row[0])
        mine = {table: inputs[table].get(aid, _EMPTY[table]) for table, _ in _INPUTS}
        out[aid] = (_stamp(tuple(row), mine, rates.factor(str(row[7])), rates.currency, digest), str(row[1]))
    return out


def _encode(results: Iterable[KpiResult]) -> list[list[Any]]:
    return [[r.key, r.value, r.note] for r in results]


_FACT_COLUMNS = ("account_id", "as_of", "stamp", "kpis", "computed_at")


def store(session: Session, *, as_of: date, machine: StageMachine, rates: Rates | None = None) -> str:
    """Compute and store every account's card facts for `as_of` (replacing the stored ones; the caller commits).
    Returns a one-line note of what was stored."""
    started = time.perf_counter()
    rates = rates or load_rates(session, on=as_of)
    digest = definitions_digest(machine)
    kpis = portfolio_account_kpis(session, machine, today=as_of, rates=rates)
    stamps = _stamps(session, None, rates, digest)
    now = utcnow()
    table = AccountCardFact.__table__  # type: ignore[attr-defined]
    session.execute(delete(table))
    rows = [(aid, as_of, stamps[aid][0], _encode(results), now) for aid, results in kpis.items() if aid in stamps]
    for start in range(0, len(rows), WRITE_BATCH):
        insert_rows(session, table, _FACT_COLUMNS, rows[start:start + WRITE_BATCH])
    return f"card facts of {len(rows)} accounts in {time.perf_counter() - started:.1f} s"


_STORED_SQL = text("SELECT as_of, stamp, kpis FROM account_card_fact WHERE account_id = :account_id").columns(
    as_of=Date(), stamp=String(), kpis=JSON())


def stored_account_kpis(session: Session, machine: StageMachine, account_id: int, *, today: date,
                        rates: Rates) -> list[KpiResult] | None:
    """The account's stage KPIs as stored by the last recompute, when they are for `today` and nothing they were
    computed from has changed since; None otherwise."""
    row = session.execute(_STORED_SQL, {"account_id": account_id}).first()
    if row is None or row[0] != today:
        return None
    current = _stamps(session, account_id, rates, definitions_digest(machine)).get(account_id)
    if current is None or current[0] != row[1]:
        return None
    by_key = {str(key): (value, note) for key, value, note in row[2]}
    out = []
    for kpi in machine.stage_kpis(current[1]):
        if kpi.key not in by_key:
            return None
        value, note = by_key[kpi.key]
        out.append(KpiResult(**KpiResult.fields_of(kpi, None if value is None else float(value)), note=str(note)))
    return out


def card_kpis(session: Session, machine: StageMachine, account_id: int, *, today: date,
              rates: Rates) -> list[KpiResult]:
    """The account card's stage KPIs: the stored ones when they are fresh (`stored_account_kpis`), else computed
    live (`lifecycle.reports.analytics.account_kpis`); the same values either way."""
    stored = stored_account_kpis(session, machine, account_id, today=today, rates=rates)
    if stored is not None:
        return stored
    return account_kpis(session, machine, account_id, today=today, rates=rates)
