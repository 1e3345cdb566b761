"""Customer lifetime value and ARR at risk on hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlmodel import Session

from lifecycle.insight.churn import ValueSettings
from lifecycle.insight.clv import annual_churn_rate, expected_lifetime_years, lifetime_value, portfolio_value
from lifecycle.store.models import Account

VALUE = ValueSettings(gross_margin=0.8, max_lifetime_years=10)


def test_lifetime_follows_the_annualised_churn_rate_and_its_cap() -> None:
    # p = 0.2 within 90 days: r = 1 − 0.8^(365/90) = 0.5953…; L = 1 / r = 1.6798… years.
    rate = 1 - 0.8 ** (365 / 90)
    assert annual_churn_rate([0.2], 90)[0] == pytest.approx(rate)
    years = expected_lifetime_years([0.2, 0.0, 0.001, math.nan], 90, 10)
    assert years[0] == pytest.approx(1 / rate)
    assert years[1] == 10 and years[2] == 10  # no churn, or 1/r beyond the cap: the cap
    assert math.isnan(years[3])
    # A 365-day horizon: the annual rate is p itself.
    assert expected_lifetime_years([0.25], 365, 10)[0] == pytest.approx(4.0)


def test_clv_is_arr_times_margin_times_lifetime() -> None:
    clv = lifetime_value([100_000.0, 50_000.0], [0.25, 0.0], 365, VALUE)
    np.testing.assert_allclose(clv, [100_000 * 0.8 * 4.0, 50_000 * 0.8 * 10])


def test_portfolio_value_sums_arr_at_risk_and_clv_over_scored_active_accounts(session: Session) -> None:
    def account(ext: str, arr: float, p: float | None, status: str = "active") -> Account:
        return Account(external_id=ext, name=ext, name_key=ext.casefold(), arr=arr, churn_probability=p,
                       status=status)

    session.add_all([
        account("A", 100_000, 0.25), account("B", 40_000, 0.5), account("C", 10_000, None),
        account("D", 99_000, 0.9, status="churned"),
    ])
    session.flush()
    value = portfolio_value(session, horizon_days=365, config=VALUE)
    assert value.arr_at_risk.amount == pytest.approx(100_000 * 0.25 + 40_000 * 0.5)  # 45,000
    assert value.lifetime_value.amount == pytest.approx(100_000 * 0.8 * 4.0 + 40_000 * 0.8 * 2.0)  # 384,000
    assert (value.scored, value.active, value.scored_arr.amount) == (2, 3, 140_000)
    assert value.risk_share == pytest.approx(100 * 45_000 / 140_000)
