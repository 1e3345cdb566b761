"""Behaviour cohorts (deterministic KMeans with k by silhouette, described by what sets them apart) and tiers."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlmodel import Session, select

from lifecycle.insight.churn import SegmentSettings, TierSettings
from lifecycle.insight.segments import BEHAVIOUR_FEATURES, save_segmentation, segment, tiers
from lifecycle.store.models import Account, Cohort

SETTINGS = SegmentSettings(min_k=2, max_k=5, seed=7)


def three_groups() -> pd.DataFrame:
    """30 heavy users, 20 light users, 10 struggling accounts with many tickets, plus noise."""
    rng = np.random.default_rng(0)
    rows = []
    for n, util, tickets, nps in ((30, 0.9, 1.0, 9.0), (20, 0.4, 1.0, 8.0), (10, 0.2, 9.0, 3.0)):
        for _ in range(n):
            rows.append({
                "utilisation": util + rng.normal(0, 0.03), "events_per_seat_30": 4 * util + rng.normal(0, 0.1),
                "logins_per_seat_30": 10 * util + rng.normal(0, 0.3), "feature_breadth_30": 5 * util,
                "usage_trend": rng.normal(0, 2), "tickets_30": tickets + rng.normal(0, 0.3),
                "nps_last_score": nps + rng.normal(0, 0.2), "days_since_last_login": 30 * (1 - util),
            })
    return pd.DataFrame(rows, columns=list(BEHAVIOUR_FEATURES), index=pd.RangeIndex(1, 61, name="account_id"))


def test_cohorts_are_deterministic_numbered_by_size_and_described() -> None:
    frame = three_groups()
    first, second = segment(frame, SETTINGS), segment(frame, SETTINGS)
    assert first is not None and second is not None
    assert first.k == 3 and first.silhouettes == second.silhouettes
    pd.testing.assert_series_equal(first.cohort, second.cohort)
    assert first.sizes == {1: 30, 2: 20, 3: 10}
    assert (first.cohort.loc[1:30] == 1).all() and (first.cohort.loc[51:60] == 3).all()
    struggling = {t.feature: t.z for t in first.traits[3]}
    assert struggling["tickets_30"] > 0 and struggling["nps_last_score"] < 0
    assert all(abs(t.z) >= 0.5 for traits in first.traits.values() for t in traits)


def test_too_few_accounts_make_no_cohorts() -> None:
    assert segment(three_groups().iloc[:3], SETTINGS) is None


def test_segmentation_is_stored_on_accounts_and_in_the_cohort_table(session: Session) -> None:
    frame = three_groups()
    for i in frame.index:
        session.add(Account(id=int(i), external_id=f"A{i}", name=f"A{i}", name_key=f"a{i}"))
    session.flush()
    result = segment(frame, SETTINGS)
    assert save_segmentation(session, result) == 60
    session.flush()
    cohorts = sorted(session.exec(select(Cohort)).all(), key=lambda c: c.id)
    assert [(c.id, c.size) for c in cohorts] == [(1, 30), (2, 20), (3, 10)]
    assert session.get(Account, 55).cohort == 3  # type: ignore[union-attr]
    save_segmentation(session, None)
    session.flush()
    session.expire_all()
    assert session.exec(select(Cohort)).first() is None and session.get(Account, 55).cohort is None  # type: ignore[union-attr]


def test_tiers_by_arr_with_growth_potential_moving_up_one() -> None:
    config = TierSettings(a_min_arr=150_000, b_min_arr=30_000, growth_utilisation=0.85, growth_usage_trend=25)
    arr = pd.Series([200_000, 50_000, 10_000, 10_000, 50_000, 29_999])
    utilisation = pd.Series([0.5, 0.9, 0.5, 0.9, np.nan, 0.2])
    trend = pd.Series([0.0, 0.0, 30.0, np.nan, 10.0, 24.9])
    assert tiers(arr, utilisation, trend, config).tolist() == ["A", "A", "B", "B", "B", "C"]
