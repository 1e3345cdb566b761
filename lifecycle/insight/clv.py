"""Customer lifetime value and ARR at risk, from ARR and the churn model's probability.

With p = probability of churning within the model's horizon of H days, and a constant churn hazard:

    annual churn rate   r = 1 − (1 − p)^(365 / H)
    expected lifetime   L = min(1 / r, max_lifetime_years)   (years; the cap also covers p = 0)
    CLV                   = ARR × gross_margin × L
    ARR at risk           = Σ ARR × p   (the ARR expected to leave within the horizon)

Accounts without a probability (no model yet) have no CLV and add nothing to the ARR at risk; the totals say
how many accounts they cover. CLV and ARR at risk are computed per account in its own currency and totalled with
`lifecycle.reports.money` (converted into the reporting currency, or per currency where a rate is missing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import func, select
from sqlmodel import Session, col

from lifecycle.insight.churn import ValueSettings
from lifecycle.reports.money import Rates, Total, load_rates
from lifecycle.store.models import Account, Owners, owned_by

DAYS_PER_YEAR = 365.0


def annual_churn_rate(probability: npt.ArrayLike, horizon_days: int) -> np.ndarray:
    """r = 1 − (1 − p)^(365 / H), element-wise (NaN stays NaN)."""
    p = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    return 1.0 - np.power(1.0 - p, DAYS_PER_YEAR / horizon_days)


def expected_lifetime_years(probability: npt.ArrayLike, horizon_days: int, cap_years: float) -> np.ndarray:
    """L = min(1 / r, cap) in years (NaN where the probability is unknown)."""
    rate = annual_churn_rate(probability, horizon_days)
    with np.errstate(divide="ignore"):
        lifetime = np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.inf)
    return np.where(np.isnan(rate), np.nan, np.minimum(lifetime, cap_years))


def lifetime_value(arr: npt.ArrayLike, probability: npt.ArrayLike, horizon_days: int, config: ValueSettings
                   ) -> np.ndarray:
    """CLV = ARR × gross margin × expected lifetime, element-wise (NaN without a probability)."""
    years = expected_lifetime_years(probability, horizon_days, config.max_lifetime_years)
    return np.asarray(arr, dtype=float) * config.gross_margin * years


@dataclass(frozen=True)
class PortfolioValue:
    """ARR at risk and lifetime value of the active accounts with a churn probability."""

    arr_at_risk: Total
    lifetime_value: Total
    scored: int  # active accounts with a probability
    active: int
    scored_arr: Total
    horizon_days: int
    gross_margin: float

    @property
    def risk_share(self) -> float | None:
        """ARR at risk as a percentage of the scored ARR; None when they are only known per currency."""
        return self.arr_at_risk.share_of(self.scored_arr)


def portfolio_value(session: Session, *, horizon_days: int, config: ValueSettings, owner_id: Owners = None,
                    segment: str | None = None, rates: Rates | None = None) -> PortfolioValue:
    """ARR at risk and total CLV of the active accounts (one query over the account table)."""
    stmt = select(col(Account.arr), col(Account.churn_probability), col(Account.currency)).where(
        col(Account.status) == "active")
    stmt = owned_by(stmt, owner_id)
    if segment is not None:
        stmt = stmt.where(func.lower(col(Account.segment)) == segment.casefold())
    frame = pd.DataFrame.from_records(session.execute(stmt).all(), columns=["arr", "p", "currency"])
    arr = frame["arr"].astype(float).fillna(0.0).to_numpy()
    p = pd.to_numeric(frame["p"], errors="coerce").to_numpy(dtype=float)
    known = ~np.isnan(p)
    currency = frame["currency"].to_numpy(dtype=object)[known]
    clv = lifetime_value(arr[known], p[known], horizon_days, config)
    rates = rates or load_rates(session)
    return PortfolioValue(
        arr_at_risk=rates.sum(arr[known] * p[known], currency),
        lifetime_value=rates.sum(clv, currency),
        scored=int(known.sum()),
        active=len(frame),
        scored_arr=rates.sum(arr[known], currency),
        horizon_days=horizon_days,
        gross_margin=config.gross_margin,
    )
