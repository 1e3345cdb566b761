"""Lifecycle analytics: stage KPIs against their goals, the stage funnel and time in stage, stage distribution over
time, and revenue/logo retention with cohorts.

Every function reads a slice of the portfolio (`lifecycle.scoring.revenue.Slice`: owners, segment, one account) with a
handful of aggregate queries and computes in pandas, whatever the number of accounts. Definitions:

Retention over a period (`retention`). A period of N days or months ending on `today` covers the days after
`start = today − N` up to and including `today`. "At the start" means at the end of day `start`, "at the end" at
the end of `today`; an account's ARR at a moment is the ARR after its last change on or before that day
(`lifecycle.scoring.revenue.state_at`).
- Starting logos: accounts that are customers at the start (ARR state active). Only they count in logo churn,
  GRR and NRR; logos that start during the period (new) and accounts that come back during it (reactivated) are
  reported on their own (`new_logos`/`new_arr`, `reactivated`/`reactivated_arr`, ARR at the end).
- Logo churn rate = starting logos that are not customers at the end ÷ starting logos. A starting logo that
  churned and came back within the period is not churned.
- NRR = ARR at the end of the starting logos ÷ their ARR at the start.
- GRR = Σ min(end ARR, start ARR) over the starting logos ÷ their ARR at the start (expansion never lifts it).
- Churned ARR by reason: the ARR lost by the churn events of the period, by the reason recorded with them.
- Win-back rate = accounts that came back (a reactivation in the period) ÷ accounts that were churned at some
  point of the period (churned at the start, or churning during it).
Monthly retention (`retention_monthly`) applies the same to each calendar month (the current one up to today).
Money: every ARR is converted into the reporting currency first (`lifecycle.reports.money`, constant currency: today's
rates for every date). When an account's currency has no rate, the revenue figures cannot be combined: the
summary then holds them per currency (`by_currency`; the logo figures still cover everyone), and the monthly and
cohort ARR ratios that would mix currencies are NaN.

Cohorts (`cohorts`): accounts grouped by the quarter of their first contract start (their first revenue change);
the curve gives, k quarters later (k × 3 months after each account's own start), the share of the cohort still a
customer and the cohort's ARR then ÷ its starting ARR. A point appears once every account of the cohort is that old.

Funnel (`funnel`): for each funnel stage, the accounts that were in it at some time in the period; "moved on" are
those whose stay ended within the period with a move the funnel counts as progress (`StageMachine.moves_on`),
"churned" those that left it for an exit stage (e.g. churned). Time in stage: median and 90th percentile of the
stays that ended within the period. Stuck: accounts in the stage now for longer than that 90th percentile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, select
from sqlmodel import Session, col

from lifecycle.reports.money import Rates, load_rates
from lifecycle.scoring.revenue import Slice, revenue_events, state_at
from lifecycle.scoring.stages import KpiDef, StageMachine
from lifecycle.store.errors import CsbotError
from lifecycle.store.models import Account, Note, NpsResponse, StageTransition, UsageDaily, utcnow

__all__ = [
    "CohortTable", "FunnelReport", "KpiResult", "KpiValue", "Period", "RetentionSummary", "Slice", "StageKpi",
    "StuckAccount",
    "account_kpis", "cohorts", "funnel", "parse_period", "retention", "retention_monthly", "stage_distribution_monthly",
    "stage_kpis", "stage_p90_days", "stage_visits",
]

PROMOTER_FROM = 9
DEFAULT_REFERENCE_KINDS = ("reference",)


# ------------------------------------------------------------------------------------------------------ periods


@dataclass(frozen=True)
class Period:
    """A look-back of `amount` days or months."""

    amount: int
    unit: Literal["d", "m"]

    def start(self, today: date) -> date:
        """The day whose end opens the period (the period covers the days after it up to `today`)."""
        if self.unit == "d":
            return today - timedelta(days=self.amount)
        return (pd.Timestamp(today) - pd.DateOffset(months=self.amount)).date()

    def label(self, lang: str = "en") -> str:
        if self.unit == "d":
            return f"{self.amount} 天" if lang == "zh" else f"{self.amount} days"
        if lang == "zh":
            return f"{self.amount} 个月"
        return f"{self.amount} month" + ("s" if self.amount != 1 else "")


_PERIOD = re.compile(r"^(\d{1,4})\s*(d|day|days|天|w|wk|week|weeks|周|m|mo|month|months|个月|月|y|yr|year|years|年)$")


def parse_period(text: str) -> Period:
    """`90d`, `12w`, `6m`, `1y` (also `90 days`, `6个月`, `1年`) as a Period; CsbotError when it is not one."""
    m = _PERIOD.match(text.strip().casefold())
    if not m or int(m.group(1)) <= 0:
        raise CsbotError(f"`{text}` is not a period; write it like 90d, 12w, 6m or 1y.")
    n, unit = int(m.group(1)), m.group(2)
    if unit in ("w", "wk", "week", "weeks", "周"):
        return Period(7 * n, "d")
    if unit in ("y", "yr", "year", "years", "年"):
        return Period(12 * n, "m")
    if unit in ("m", "mo", "month", "months", "个月", "月"):
        return Period(n, "m")
    return Period(n, "d")


def _ts(day: date) -> pd.Timestamp:
    return pd.Timestamp(day)


# ---------------------------------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class RetentionSummary:
    """Logo and revenue retention of one period (see the module docstring for the definitions)."""

    start: date  # the period covers the days after `start` up to and including `end`
    end: date
    logos_start: int
    logos_churned: int
    arr_start: float
    arr_end: float
    arr_retained: float  # Σ min(end, start) over the starting logos
    expansion_arr: float
    contraction_arr: float
    churned_arr: float  # start ARR of the starting logos not customers at the end
    new_logos: int
    new_arr: float
    reactivated: int
    reactivated_arr: float
    churned_pool: int  # accounts churned at the start or during the period
    won_back: int
    churn_by_reason: dict[str, float] = field(default_factory=dict)
    churn_events: int = 0
    currency: str | None = None  # of every amount above; None when they are only known per currency:
    by_currency: dict[str, RetentionSummary] = field(default_factory=dict)  # … then here, one summary each
    currencies: tuple[str, ...] = ()  # the accounts' own currencies

    @property
    def logo_churn_rate(self) -> float | None:
        return self.logos_churned / self.logos_start if self.logos_start else None

    @property
    def grr(self) -> float | None:
        return self.arr_retained / self.arr_start if self.arr_start else None

    @property
    def nrr(self) -> float | None:
        return self.arr_end / self.arr_start if self.arr_start else None

    @property
    def win_back_rate(self) -> float | None:
        return self.won_back / self.churned_pool if self.churned_pool else None


def _retention_from(events: pd.DataFrame, start: date, end: date) -> RetentionSummary:
    before, after = state_at(events, start), state_at(events, end)
    starting = before.index[before["active"].to_numpy(dtype=bool)]
    s_arr = before.loc[starting, "arr"]
    e = after.reindex(starting)
    e_active = e["active"].fillna(False).astype(bool)
    e_arr = e["arr"].fillna(0.0).where(e_active, 0.0)
    delta = e_arr - s_arr
    kept = e_active.to_numpy(dtype=bool)
    in_period = events.loc[(events["day"] > _ts(start)) & (events["day"] <= _ts(end))]
    first_day = events.groupby("account_id")["day"].min()
    new_ids = first_day.index[(first_day > _ts(start)) & (first_day <= _ts(end))]
    active_end = after.index[after["active"].to_numpy(dtype=bool)]
    new_active = new_ids.intersection(active_end)
    churned_at_start = before.index[~before["active"].to_numpy(dtype=bool)]
    back_ids = churned_at_start.intersection(active_end)
    churns = in_period.loc[in_period["kind"] == "churn"]
    pool = churned_at_start.union(pd.Index(churns["account_id"].unique()))
    reactivated_in = pd.Index(in_period.loc[in_period["kind"] == "reactivation", "account_id"].unique())
    reasons = churns["reason"].astype(object).where(churns["reason"].notna(), "—").replace("", "—")
    by_reason = churns.assign(reason=reasons).groupby("reason")["arr_before"].sum().sort_values(ascending=False)
    return RetentionSummary(
        start=start, end=end,
        logos_start=len(starting),
        logos_churned=int((~kept).sum()),
        arr_start=float(s_arr.sum()),
        arr_end=float(e_arr.sum()),
        arr_retained=float(np.minimum(e_arr, s_arr).sum()),
        expansion_arr=float(delta[kept].clip(lower=0).sum()),
        contraction_arr=float((-delta[kept]).clip(lower=0).sum()),
        churned_arr=float(s_arr[~kept].sum()),
        new_logos=len(new_active),
        new_arr=float(after.loc[new_active, "arr"].sum()),
        reactivated=len(back_ids),
        reactivated_arr=float(after.loc[back_ids, "arr"].sum()),
        churned_pool=len(pool),
        won_back=len(pool.intersection(reactivated_in)),
        churn_by_reason={str(k): float(v) for k, v in by_reason.items()},
        churn_events=len(churns),
    )


_MONEY_FIELDS = tuple(f.name for f in fields(RetentionSummary) if f.type == "float")


def _events(session: Session, scope: Slice | None, today: date, rates: Rates) -> pd.DataFrame:
    """The slice's revenue events, with `own_currency` (the account's). When every currency in them has a rate,
    ARR is in the reporting currency (`currency`); otherwise it stays as recorded, to be read per currency."""
    events = revenue_events(session, scope, until=today)
    events["own_currency"] = events["currency"].astype(str).str.upper()
    if rates.basis_of(events["own_currency"]).missing:
        events["currency"] = events["own_currency"]
        return events
    return rates.in_reporting(events, ["arr_before", "arr_after"])


def _retention(events: pd.DataFrame, start: date, end: date, rates: Rates) -> RetentionSummary:
    summary = _retention_from(events, start, end)
    own = tuple(sorted(set(events["own_currency"]), key=lambda c: (c != rates.currency, c)))
    currencies = sorted(set(events["currency"]), key=lambda c: (c != rates.currency, c))
    if len(currencies) <= 1:
        return replace(summary, currency=currencies[0] if currencies else rates.currency, currencies=own)
    per = {c: replace(_retention_from(events.loc[events["currency"] == c], start, end), currency=c, currencies=(c,))
           for c in currencies}
    unknown: dict[str, Any] = {name: float("nan") for name in _MONEY_FIELDS}
    return replace(summary, **unknown, churn_by_reason={}, by_currency=per, currencies=own)


def retention(session: Session, period: Period, *, today: date, scope: Slice | None = None,
              rates: Rates | None = None) -> RetentionSummary:
    """Retention of the slice over `period` ending on `today` (one query, pandas)."""
    rates = rates or load_rates(session, on=today)
    return _retention(_events(session, scope, today, rates), period.start(today), today, rates)


def _month_ends(today: date, months: int) -> list[tuple[date, date]]:
    """(day before the month, last day counted) for the last `months` calendar months, the current one to date."""
    out = []
    first = today.replace(day=1)
    for back in range(months - 1, -1, -1):
        m0 = (pd.Timestamp(first) - pd.DateOffset(months=back)).date()
        m1 = (pd.Timestamp(m0) + pd.DateOffset(months=1)).date() - timedelta(days=1)
        out.append((m0 - timedelta(days=1), min(m1, today)))
    return out


def retention_monthly(session: Session, *, today: date, months: int = 12, scope: Slice | None = None,
                      rates: Rates | None = None) -> pd.DataFrame:
    """Retention per calendar month for the last `months` months (the current one up to today), oldest first.

    Indexed by each month's first day (`month`); columns logos_start, logos_churned, logo_churn_rate, arr_start,
    arr_end, grr, nrr, new_logos, new_arr, reactivated, churned_arr. Rates are NaN without starting logos, the
    ARR columns and GRR/NRR NaN when they would mix currencies without a rate.
    """
    rates = rates or load_rates(session, on=today)
    events = _events(session, scope, today, rates)
    rows = []
    for before, last in _month_ends(today, months):
        r = _retention(events, before, last, rates)
        rows.append({
            "month": pd.Timestamp(before + timedelta(days=1)), "logos_start": r.logos_start,
            "logos_churned": r.logos_churned, "logo_churn_rate": _nan(r.logo_churn_rate), "arr_start": r.arr_start,
            "arr_end": r.arr_end, "grr": _nan(r.grr), "nrr": _nan(r.nrr), "new_logos": r.new_logos,
            "new_arr": r.new_arr, "reactivated": r.reactivated, "churned_arr": r.churned_arr,
        })
    return pd.DataFrame(rows).set_index("month")


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class CohortTable:
    """Cohort curves: rows are cohorts ("2024Q1"), columns quarters since start (0, 1, …); NaN = not yet."""

    logos: pd.DataFrame  # share of the cohort's accounts still customers
    arr: pd.DataFrame  # cohort ARR then ÷ cohort starting ARR
    sizes: pd.Series  # accounts per cohort


def cohorts(session: Session, *, today: date, scope: Slice | None = None, max_quarters: int = 12,
            rates: Rates | None = None) -> CohortTable:
    """Logo and ARR retention of each contract-start quarter's cohort, k = 0 … quarters later (k × 3 months); a
    cohort whose accounts are in currencies without a common rate has no ARR retention (NaN)."""
    events = _events(session, scope, today, rates or load_rates(session, on=today))
    empty = CohortTable(pd.DataFrame(dtype=float), pd.DataFrame(dtype=float), pd.Series(dtype="int64"))
    if events.empty:
        return empty
    firsts = events.groupby("account_id").first()
    first = firsts["day"]
    start_arr = firsts["arr_after"].astype(float)
    quarter = first.dt.to_period("Q")
    quarter_end = quarter.dt.end_time.dt.normalize()
    checks = []
    for k in range(max_quarters + 1):
        when = first + pd.DateOffset(months=3 * k)
        mature = quarter_end + pd.DateOffset(months=3 * k)
        checks.append(pd.DataFrame({"account_id": first.index, "k": k, "check": when.to_numpy(),
                                    "mature": mature.to_numpy()}))
    grid = pd.concat(checks, ignore_index=True)
    grid["cohort"] = quarter.reindex(grid["account_id"]).astype(str).to_numpy()
    # A cohort's point k appears only when every member is that old, i.e. its quarter's end + k quarters is past.
    cohort_mature = grid.groupby(["cohort", "k"])["mature"].transform("max")
    grid = grid.loc[cohort_mature <= _ts(today)].sort_values("check")
    right = events[["account_id", "day", "kind", "arr_after", "currency"]].sort_values("day")
    found = pd.merge_asof(grid, right, left_on="check", right_on="day", by="account_id", direction="backward")
    found["alive"] = found["kind"].notna() & (found["kind"] != "churn")
    found["arr_then"] = found["arr_after"].where(found["alive"], 0.0).astype(float)
    found["arr0"] = start_arr.reindex(found["account_id"]).to_numpy()
    sums = found.groupby(["cohort", "k"]).agg(alive=("alive", "sum"), n=("alive", "size"), arr=("arr_then", "sum"),
                                              arr0=("arr0", "sum"))
    logos = (sums["alive"] / sums["n"]).unstack("k").sort_index()
    arr_ratio = sums["arr"] / sums["arr0"].where(sums["arr0"] > 0)
    mixed = found.groupby("cohort")["currency"].nunique() > 1
    arr_ratio[arr_ratio.index.get_level_values("cohort").isin(mixed.index[mixed])] = np.nan
    arr = arr_ratio.unstack("k").sort_index()
    sizes = quarter.astype(str).value_counts().sort_index()
    sizes = sizes.reindex(logos.index).astype("int64")
    return CohortTable(logos=logos, arr=arr, sizes=sizes)


# ------------------------------------------------------------------------------------------ stages over time


def stage_visits(session: Session, *, scope: Slice | None = None, now: datetime | None = None) -> pd.DataFrame:
    """Every stay of every account of the slice in a stage: account_id, stage, entered, left (NaT while open),
    next_stage (where it went; None while open). One query; built as `lifecycle.scoring.stages.stage_history` builds one
    account's (the stage before the first transition counts from the account's creation)."""
    scope = scope or Slice()
    end = pd.Timestamp(now or utcnow())
    t = StageTransition.__table__  # type: ignore[attr-defined]
    a = Account.__table__  # type: ignore[attr-defined]
    stmt = (
        select(a.c.id, a.c.stage, a.c.stage_since, a.c.created_at, t.c.from_stage, t.c.to_stage, t.c.at)
        .select_from(a.outerjoin(t, and_(t.c.account_id == a.c.id, t.c.at <= end.to_pydatetime())))
        .order_by(a.c.id, t.c.at, t.c.id)
    )
    rows = session.execute(scope.where(stmt)).all()
    df = pd.DataFrame.from_records(
        rows, columns=["account_id", "current", "stage_since", "created_at", "from_stage", "to_stage", "at"]
    )
    columns = ["account_id", "stage", "entered", "left", "next_stage"]
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype="datetime64[ns]" if c in ("entered", "left") else object)
                             for c in columns})
    none = df["to_stage"].isna()
    df["stage"] = df["to_stage"].where(~none, df["current"])
    df["entered"] = pd.to_datetime(df["at"].where(~none, df["stage_since"]))
    first = df.loc[~none].drop_duplicates("account_id")
    first = first.loc[first["from_stage"].notna() & (pd.to_datetime(first["created_at"]) <= first["entered"])]
    before = pd.DataFrame({"account_id": first["account_id"], "stage": first["from_stage"],
                           "entered": pd.to_datetime(first["created_at"]), "order": 0})
    df = pd.concat([before, df.assign(order=1)], ignore_index=True).sort_values(
        ["account_id", "order", "entered"], kind="stable")
    grouped = df.groupby("account_id")
    df["left"] = grouped["entered"].shift(-1)
    df["next_stage"] = grouped["stage"].shift(-1)
    out = df[columns].reset_index(drop=True)
    out["entered"] = pd.to_datetime(out["entered"]).astype("datetime64[ns]")
    out["left"] = pd.to_datetime(out["left"]).astype("datetime64[ns]")
    return out


@dataclass(frozen=True)
class StuckAccount:
    account_id: int
    name: str
    stage: str
    days: float
    p90_days: float


@dataclass(frozen=True)
class FunnelReport:
    """Per funnel stage (index, in funnel order): accounts, moved_on, churned, rate (moved_on ÷ accounts, NaN
    without accounts), completed (stays ended in the period), median_days, p90_days, current, stuck."""

    start: datetime
    end: datetime
    stages: pd.DataFrame
    stuck: list[StuckAccount]


def _days(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 86400.0


def funnel(
    session: Session, machine: StageMachine, period: Period, *, today: date, scope: Slice | None = None,
    now: datetime | None = None,
) -> FunnelReport:
    """The funnel over `period` ending on `today` (stays and moves up to `now`, default the end of `today`)."""
    end = pd.Timestamp(now) if now is not None else pd.Timestamp(today) + pd.Timedelta(days=1)
    start = pd.Timestamp(period.start(today)) + pd.Timedelta(days=1)
    visits = stage_visits(session, scope=scope, now=end.to_pydatetime())
    exits = set(machine.reachable_from_anywhere)
    order = machine.funnel_stages()
    v = visits.loc[visits["stage"].isin(order)].copy()
    overlaps = (v["entered"] < end) & (v["left"].isna() | (v["left"] > start))
    ended = v["left"].notna() & (v["left"] > start) & (v["left"] <= end)
    progress = pd.MultiIndex.from_tuples([(s, n) for s in order for n in machine.moves_on(s)] or [("", "")])
    v["on"] = pd.MultiIndex.from_arrays([v["stage"], v["next_stage"]]).isin(progress)
    v["out"] = v["next_stage"].isin(list(exits)).to_numpy(dtype=bool)
    v["days"] = _days(v["left"].fillna(end) - v["entered"])
    seen = v.loc[overlaps]
    per_account = seen.assign(on=seen["on"] & ended[overlaps], out=seen["out"] & ended[overlaps]).groupby(
        ["stage", "account_id"])[["on", "out"]].any()
    counts = per_account.groupby("stage").agg(accounts=("on", "size"), moved_on=("on", "sum"), churned=("out", "sum"))
    done = v.loc[ended]
    times = done.groupby("stage")["days"].agg(completed="size", median_days="median",
                                              p90_days=lambda d: float(np.percentile(d, 90)))
    current = v.loc[v["left"].isna()]
    table = pd.DataFrame(index=pd.Index(order, name="stage")).join(counts).join(times)
    table[["accounts", "moved_on", "churned", "completed"]] = (
        table[["accounts", "moved_on", "churned", "completed"]].fillna(0).astype("int64"))
    with np.errstate(invalid="ignore", divide="ignore"):
        table["rate"] = table["moved_on"] / table["accounts"].where(table["accounts"] > 0)
    table["current"] = current.groupby("stage").size().reindex(table.index).fillna(0).astype("int64")
    p90 = table["p90_days"].reindex(current["stage"]).to_numpy(dtype=float)
    stuck_rows = current.loc[np.nan_to_num(current["days"].to_numpy(dtype=float) - p90, nan=-1.0) > 0]
    table["stuck"] = stuck_rows.groupby("stage").size().reindex(table.index).fillna(0).astype("int64")
    names = _names(session, stuck_rows["account_id"].astype(int).tolist())
    p90_by_stage = table["p90_days"].to_dict()
    stuck = sorted(
        (StuckAccount(int(a), names.get(int(a), str(a)), str(s), float(d), float(p90_by_stage[s]))
         for a, s, d in zip(stuck_rows["account_id"], stuck_rows["stage"], stuck_rows["days"], strict=True)),
        key=lambda x: (order.index(x.stage), -x.days, x.name),
    )
    cols = ["accounts", "moved_on", "churned", "rate", "completed", "median_days", "p90_days", "current", "stuck"]
    return FunnelReport(start=start.to_pydatetime(), end=end.to_pydatetime(), stages=table[cols], stuck=stuck)


def _names(session: Session, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(col(Account.id), col(Account.name)).where(col(Account.id).in_(list(ids))))
    return {int(i): str(n) for i, n in rows}


def stage_p90_days(
    session: Session, machine: StageMachine, *, today: date, lookback_days: int = 365
) -> pd.DataFrame:
    """Per active account: its current stage's `days_in_stage` and that stage's 90th-percentile stay
    (`stage_p90_days`, of the stays that ended in the last `lookback_days`), for the `stuck_in_stage` rule."""
    report = funnel(session, machine, Period(lookback_days, "d"), today=today)
    visits = stage_visits(session, now=report.end)
    current = visits.loc[visits["left"].isna()].set_index("account_id")
    out = pd.DataFrame({
        "days_in_stage": _days(pd.Timestamp(report.end) - current["entered"]).to_numpy(dtype=float),
        "stage_p90_days": report.stages["p90_days"].reindex(current["stage"]).to_numpy(dtype=float),
    }, index=current.index.astype("int64"))
    return out


def stage_distribution_monthly(
    session: Session, machine: StageMachine, *, today: date, months: int = 12, scope: Slice | None = None
) -> pd.DataFrame:
    """Accounts per stage at the end of each of the last `months` calendar months (today for the current one),
    rebuilt from the stage history. Indexed by month start; one column per stage (machine order first)."""
    end = pd.Timestamp(today) + pd.Timedelta(days=1)
    visits = stage_visits(session, scope=scope, now=end.to_pydatetime())
    counts = {}
    for before, last in _month_ends(today, months):
        at = pd.Timestamp(last) + pd.Timedelta(days=1)  # the end of the month's last counted day
        live = (visits["entered"] < at) & (visits["left"].isna() | (visits["left"] >= at))
        counts[pd.Timestamp(before + timedelta(days=1))] = visits.loc[live].groupby("stage").size()
    frame = pd.DataFrame(counts).T.fillna(0).astype("int64")
    frame.index.name = "month"
    names = machine.stage_names
    cols = [s for s in names if s in frame.columns] + sorted(c for c in frame.columns if c not in names)
    return frame.reindex(columns=cols)


# ---------------------------------------------------------------------------------------------------- stage KPIs


@dataclass(frozen=True)
class KpiValue:
    """A stage KPI's value against its goal; `value` None = no data yet (`met` None too)."""

    stage: str
    key: str
    label: str
    label_zh: str
    unit: str
    better: str  # "higher" or "lower"
    goal: float
    value: float | None
    met: bool | None

    @classmethod
    def fields_of(cls, kpi: KpiDef, value: float | None) -> dict[str, Any]:
        """The shared fields for `kpi` measured at `value`."""
        return {"stage": kpi.stage, "key": kpi.key, "label": kpi.title("en"), "label_zh": kpi.title("zh"),
                "unit": kpi.spec.unit, "better": kpi.spec.better, "goal": kpi.goal, "value": value,
                "met": None if value is None else kpi.met(value)}


@dataclass(frozen=True)
class KpiResult(KpiValue):
    """One account's value of a stage KPI against its goal."""

    note: str = ""  # "not_reached": time to value not reached yet (value = days so far)


@dataclass(frozen=True)
class StageKpi(KpiValue):
    """A stage KPI over a slice of the portfolio: the aggregate value against the goal and how many accounts
    meet it. `accounts` counts the accounts with a value; `total` is the sum of the values (money KPIs)."""

    accounts: int
    accounts_met: int
    total: float


def _accounts(session: Session, scope: Slice) -> pd.DataFrame:
    stmt = select(col(Account.id), col(Account.stage), col(Account.status), col(Account.seats),
                  col(Account.contract_start), col(Account.renewal_date), col(Account.created_at),
                  col(Account.currency))
    rows = session.execute(scope.where(stmt)).all()
    frame = pd.DataFrame.from_records(
        rows, columns=["account_id", "stage", "status", "seats", "contract_start", "renewal_date", "created_at",
                       "currency"])
    frame["start"] = pd.to_datetime(frame["contract_start"]).fillna(pd.to_datetime(frame["created_at"]).dt.normalize())
    frame["renewal_date"] = pd.to_datetime(frame["renewal_date"])
    return frame.set_index("account_id")


def _grouped(session: Session, scope: Slice, stmt: Any) -> pd.Series:
    """A (account_id, value) aggregate as a float Series indexed by account."""
    rows = session.execute(scope.where(stmt)).all()
    if not rows:
        return pd.Series(dtype=float)
    ids, values = zip(*rows, strict=True)
    return pd.Series([np.nan if v is None else float(v) for v in values], index=pd.Index(ids, dtype="int64"))


def _usage() -> Any:
    u = UsageDaily.__table__  # type: ignore[attr-defined]
    a = Account.__table__  # type: ignore[attr-defined]
    return u, a, u.join(a, a.c.id == u.c.account_id)


def _kpi_events(session: Session, scope: Slice, today: date, rates: Rates) -> pd.DataFrame:
    """Revenue events with each account's ARR in the reporting currency where its currency has a rate (per-account
    KPI values; an account without a rate gets no money value)."""
    return rates.in_reporting(revenue_events(session, scope, until=today), ["arr_before", "arr_after"])


def _window(kpi: KpiDef, today: date) -> tuple[date, date]:
    return today - timedelta(days=kpi.days - 1), today


def _metric(session: Session, kpi: KpiDef, accounts: pd.DataFrame, scope: Slice, machine: StageMachine,
            today: date, events: pd.DataFrame | None, rates: Rates) -> tuple[pd.Series, pd.Series]:
    """Per account (of `accounts`): the KPI's value, and a note ("not_reached" for time to value). Money values
    are in the reporting currency; an account whose currency has no rate has none."""
    idx = accounts.index
    notes = pd.Series("", index=idx, dtype=object)
    u, a, usage = _usage()
    lo, hi = _window(kpi, today)
    m = kpi.metric
    start_day = func.coalesce(a.c.contract_start, func.date(a.c.created_at))
    if m == "time_to_value":
        stmt = (select(u.c.account_id, func.min(u.c.day)).select_from(usage)
                .where(u.c.feature == "", a.c.seats > 0, u.c.active_users >= machine.activation.ratio * a.c.seats,
                       u.c.day >= start_day, u.c.day <= today).group_by(u.c.account_id))
        rows = session.execute(scope.where(stmt)).all()
        first = pd.Series({int(i): pd.Timestamp(d) for i, d in rows}, dtype="datetime64[ns]")
        reached = (first.reindex(idx) - accounts["start"]).dt.days.astype(float)
        so_far = (_ts(today) - accounts["start"]).dt.days.astype(float)
        late = reached.isna() & (so_far > kpi.goal)
        value = reached.where(~late, so_far)
        notes[late] = "not_reached"
        return value, notes
    if m in ("seat_activation", "licence_utilisation"):
        since = start_day if m == "seat_activation" else lo
        stmt = (select(u.c.account_id, func.max(u.c.active_users)).select_from(usage)
                .where(u.c.feature == "", u.c.day >= since, u.c.day <= today).group_by(u.c.account_id))
        peak = _grouped(session, scope, stmt).reindex(idx)
        seats = accounts["seats"].astype(float).where(accounts["seats"] > 0)
        return (100.0 * peak / seats).where(peak.notna(), np.nan), notes
    if m == "feature_breadth":
        stmt = (select(u.c.account_id, func.count(func.distinct(u.c.feature))).select_from(usage)
                .where(u.c.feature > "", u.c.events > 0, u.c.day >= lo, u.c.day <= hi).group_by(u.c.account_id))
        return _grouped(session, scope, stmt).reindex(idx).fillna(0.0), notes
    if m in ("feature_days", "feature_events", "active_days"):
        feature = kpi.feature or ""
        measure = (func.count() if m != "feature_events" else func.coalesce(func.sum(u.c.events), 0))
        used = u.c.events > 0 if m != "active_days" else u.c.active_users > 0
        stmt = (select(u.c.account_id, measure).select_from(usage)
                .where(u.c.feature == feature, used, u.c.day >= lo, u.c.day <= hi).group_by(u.c.account_id))
        return _grouped(session, scope, stmt).reindex(idx).fillna(0.0), notes
    if m in ("seat_growth", "upsell_arr"):
        ev = events if events is not None else _kpi_events(session, scope, today, rates)
        if m == "upsell_arr":
            window = ev.loc[(ev["kind"] == "expansion") & (ev["day"] >= _ts(lo)) & (ev["day"] <= _ts(hi))]
            gained = (window["arr_after"] - window["arr_before"]).groupby(window["account_id"]).sum()
            no_rate = np.isnan(rates.convert(np.ones(len(accounts)), accounts["currency"]))
            return gained.reindex(idx).fillna(0.0).where(~no_rate, np.nan), notes
        now_state = state_at(ev, today)
        then_state = state_at(ev, lo - timedelta(days=1))
        first_seats = ev.groupby("account_id")["seats_after"].first().astype(float)
        then = then_state["seats"].astype(float).where(then_state["active"]).reindex(idx)
        then = then.fillna(first_seats.reindex(idx))
        now_seats = now_state["seats"].astype(float).where(now_state["active"]).reindex(idx)
        return (100.0 * (now_seats - then) / then.where(then > 0)), notes
    if m == "renewal_rate":
        ev = events if events is not None else _kpi_events(session, scope, today, rates)
        return _renewal_rate(accounts, ev, today - timedelta(days=kpi.days), today), notes
    if m == "renewal_coverage":
        n = Note.__table__  # type: ignore[attr-defined]
        stmt = select(n.c.account_id, func.max(n.c.created_at)).select_from(n.join(a, a.c.id == n.c.account_id))
        if kpi.note_kinds:
            stmt = stmt.where(n.c.kind.in_(kpi.note_kinds))
        stmt = stmt.where(n.c.created_at < datetime.combine(today + timedelta(days=1), datetime.min.time()))
        rows = session.execute(scope.where(stmt.group_by(n.c.account_id))).all()
        last = pd.Series({int(i): pd.Timestamp(d) for i, d in rows}, dtype="datetime64[ns]").reindex(idx)
        due = ((accounts["status"] == "active") & (accounts["renewal_date"] >= _ts(today))
               & (accounts["renewal_date"] <= _ts(today + timedelta(days=kpi.days))))
        touched = last.notna() & (last.dt.normalize() > _ts(today - timedelta(days=kpi.touch_days)))
        return (100.0 * touched.astype(float)).where(due), notes
    if m == "promoters":
        r = NpsResponse.__table__  # type: ignore[attr-defined]
        stmt = (select(r.c.account_id, func.count()).select_from(r.join(a, a.c.id == r.c.account_id))
                .where(r.c.score >= PROMOTER_FROM, r.c.responded_at >= datetime.combine(lo, datetime.min.time()),
                       r.c.responded_at < datetime.combine(hi + timedelta(days=1), datetime.min.time()))
                .group_by(r.c.account_id))
        return _grouped(session, scope, stmt).reindex(idx).fillna(0.0), notes
    if m == "references":
        n = Note.__table__  # type: ignore[attr-defined]
        kinds = kpi.note_kinds or list(DEFAULT_REFERENCE_KINDS)
        stmt = (select(n.c.account_id, func.count()).select_from(n.join(a, a.c.id == n.c.account_id))
                .where(n.c.kind.in_(kinds), n.c.created_at >= datetime.combine(lo, datetime.min.time()),
                       n.c.created_at < datetime.combine(hi + timedelta(days=1), datetime.min.time()))
                .group_by(n.c.account_id))
        return _grouped(session, scope, stmt).reindex(idx).fillna(0.0), notes
    raise CsbotError(f"no computation for the KPI metric {m!r}")  # the stage config validated the name


def _renewal_rate(accounts: pd.DataFrame, events: pd.DataFrame, after: date, until: date) -> pd.Series:
    """Per account: % of its renewals due in (after, until] that renewed (NaN when none was due).

    Due: every contract anniversary in the window on which the account was a customer the day before, and
    every churn in the window not on such an anniversary (a cancellation is a renewal lost). Renewed: still a
    customer at the end of the anniversary.
    """
    start = accounts["start"].dropna()
    years = int((_ts(until) - start.min()).days // 365) + 2 if len(start) else 0
    parts = []
    for k in range(1, years + 1):
        day = start + pd.DateOffset(years=k)
        inside = (day > _ts(after)) & (day <= _ts(until))
        parts.append(pd.DataFrame({"account_id": day.index[inside], "day": day[inside].to_numpy()}))
    due = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["account_id", "day"])
    due["account_id"] = due["account_id"].astype("int64")
    due["day"] = pd.to_datetime(due["day"]).astype("datetime64[ns]")
    right = events[["account_id", "day", "kind"]].rename(columns={"day": "at"}).sort_values("at")
    right["at"] = right["at"].astype("datetime64[ns]")
    due = due.sort_values("day")
    due["day_before"] = due["day"] - pd.Timedelta(days=1)
    prior = pd.merge_asof(due, right, left_on="day_before", right_on="at", by="account_id", direction="backward")
    was_customer = (prior["kind"].notna() & (prior["kind"] != "churn")).to_numpy(dtype=bool)
    due = due.loc[was_customer].copy()
    after_state = pd.merge_asof(due, right, left_on="day", right_on="at", by="account_id", direction="backward")
    due["renewed"] = (after_state["kind"] != "churn").to_numpy(dtype=bool)
    churns = events.loc[(events["kind"] == "churn") & (events["day"] > _ts(after)) & (events["day"] <= _ts(until)),
                        ["account_id", "day"]]
    known = set(zip(due["account_id"].tolist(), due["day"].tolist(), strict=True))
    extra = churns.loc[[(a, d) not in known for a, d in zip(churns["account_id"], churns["day"], strict=True)]]
    extra = extra.loc[extra["account_id"].isin(accounts.index)].assign(renewed=False)
    both = pd.concat([due[["account_id", "renewed"]], extra[["account_id", "renewed"]]], ignore_index=True)
    rate = 100.0 * both.groupby("account_id")["renewed"].mean().astype(float)
    return rate.reindex(accounts.index)


def _kpi_frame(session: Session, machine: StageMachine, kpis: Sequence[KpiDef], scope: Slice, today: date,
               accounts: pd.DataFrame, rates: Rates | None) -> list[tuple[KpiDef, pd.Series, pd.Series]]:
    rates = rates or load_rates(session, on=today)
    needs_events = any(k.metric in ("seat_growth", "upsell_arr", "renewal_rate") for k in kpis)
    events = _kpi_events(session, scope, today, rates) if needs_events else None
    return [(k, *_metric(session, k, accounts, scope, machine, today, events, rates)) for k in kpis]


def _population(kpi: KpiDef, accounts: pd.DataFrame) -> pd.Series:
    """Which accounts a portfolio KPI covers: renewal KPIs read every account (those with a renewal in their
    window); the others the active accounts now in the KPI's stage."""
    if kpi.metric in ("renewal_rate", "renewal_coverage"):
        return pd.Series(True, index=accounts.index)
    return (accounts["stage"] == kpi.stage) & (accounts["status"] == "active")


def stage_kpis(
    session: Session, machine: StageMachine, *, today: date, stage: str | None = None, scope: Slice | None = None,
    rates: Rates | None = None,
) -> list[StageKpi]:
    """Every stage KPI (or those of `stage`) over the slice, in the configuration's order (money KPIs in the
    reporting currency)."""
    scope = scope or Slice()
    kpis = [k for k in machine.kpis if stage is None or k.stage == stage]
    if not kpis:
        return []
    accounts = _accounts(session, scope)
    out = []
    for kpi, values, _notes in _kpi_frame(session, machine, kpis, scope, today, accounts, rates):
        v = values.loc[_population(kpi, accounts)].dropna()
        value = None if v.empty else float(v.median() if kpi.spec.aggregate == "median" else v.mean())
        met_each = v.map(kpi.met) if len(v) else pd.Series(dtype=bool)
        out.append(StageKpi(**StageKpi.fields_of(kpi, value), accounts=len(v), accounts_met=int(met_each.sum()),
                            total=float(v.sum())))
    return out


def account_kpis(session: Session, machine: StageMachine, account_id: int, *, today: date,
                 rates: Rates | None = None) -> list[KpiResult]:
    """The KPIs of the account's current stage, each with the account's value and whether it meets the goal.

    For the account card. Renewal KPIs give no value (None) when the account had no renewal in the window; money
    KPIs are in the reporting currency, like their goals.
    """
    scope = Slice(account_id=account_id)
    accounts = _accounts(session, scope)
    if accounts.empty:
        return []
    stage = str(accounts["stage"].iloc[0])
    kpis = machine.stage_kpis(stage)
    out = []
    for kpi, values, notes in _kpi_frame(session, machine, kpis, scope, today, accounts, rates):
        raw = values.get(account_id)
        value = None if raw is None or pd.isna(raw) else float(raw)
        out.append(KpiResult(**KpiResult.fields_of(kpi, value), note=str(notes.get(account_id, "") or "")))
    return out


def portfolio_account_kpis(session: Session, machine: StageMachine, *, today: date,
                           rates: Rates | None = None) -> dict[int, list[KpiResult]]:
    """`account_kpis` of every account at once (each account's values for the KPIs of its current stage): the
    same per-account values, from one pass of the aggregate queries over the whole portfolio (what
    `lifecycle.reports.cardfacts` stores at recompute time)."""
    accounts = _accounts(session, Slice())
    if accounts.empty or not machine.kpis:
        return {int(i): [] for i in accounts.index}
    columns = _kpi_frame(session, machine, machine.kpis, Slice(), today, accounts, rates)
    by_stage: dict[str, list[tuple[KpiDef, dict[Any, Any], dict[Any, Any]]]] = {}
    for kpi, value_series, note_series in columns:
        by_stage.setdefault(kpi.stage, []).append((kpi, value_series.to_dict(), note_series.to_dict()))
    out: dict[int, list[KpiResult]] = {}
    for account_id, stage in zip(accounts.index.tolist(), accounts["stage"].tolist(), strict=True):
        results = []
        for kpi, values, notes in by_stage.get(str(stage), []):
            raw = values.get(account_id)
            value = None if raw is None or pd.isna(raw) else float(raw)
            results.append(KpiResult(**KpiResult.fields_of(kpi, value), note=str(notes.get(account_id, "") or "")))
        out[int(account_id)] = results
    return out
