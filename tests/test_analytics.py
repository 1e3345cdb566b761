"""Lifecycle analytics on hand-built histories: ARR changes, retention (logo churn, GRR, NRR, churn by reason,
win-back), cohorts, the funnel with time in stage and stuck accounts, stage distribution over time, stage KPIs and
the stuck_in_stage alert rule. Every expected figure is worked out by hand in the comments."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlmodel import Session, col, select

from lifecycle.reports.analytics import (
    Period,
    Slice,
    account_kpis,
    cohorts,
    funnel,
    parse_period,
    retention,
    retention_monthly,
    stage_distribution_monthly,
    stage_kpis,
    stage_p90_days,
)
from lifecycle.scoring.alerts import evaluate, load_alert_config, parse_alert_config
from lifecycle.scoring.revenue import ArrUpdate, record_arr_changes, revenue_events, state_at
from lifecycle.scoring.stages import DEFAULT_STAGES_FILE, StageMachine, load_stage_machine
from lifecycle.store.errors import CsbotError
from lifecycle.store.models import Account, ArrChange, Note, NpsResponse, StageTransition, UsageDaily, User

TODAY = date(2025, 3, 14)


@pytest.fixture(scope="module")
def machine() -> StageMachine:
    return load_stage_machine(DEFAULT_STAGES_FILE)


def _account(session: Session, key: str, **fields: Any) -> int:
    account = Account(external_id=key, name=key, name_key=key.casefold(), **fields)
    session.add(account)
    session.flush()
    return int(account.id or 0)


def _change(session: Session, account_id: int, day: str, kind: str, before: float, after: float,
            seats: tuple[int, int] = (0, 0), reason: str | None = None) -> None:
    session.add(ArrChange(account_id=account_id, day=date.fromisoformat(day), kind=kind, arr_before=before,
                          arr_after=after, seats_before=seats[0], seats_after=seats[1], reason=reason))


# ------------------------------------------------------------------------------------------------ ARR changes


def test_record_arr_changes_classifies_each_kind_and_is_idempotent(session: Session) -> None:
    ids = [_account(session, f"A{i}") for i in range(6)]
    updates = [
        ArrUpdate(ids[0], arr_after=10_000, seats_after=10),  # no previous status: new
        ArrUpdate(ids[1], arr_before=10_000, status_before="active", seats_before=10, arr_after=12_000,
                  seats_after=12),  # expansion
        ArrUpdate(ids[2], arr_before=10_000, status_before="active", seats_before=10, arr_after=8_000,
                  seats_after=8),  # downgrade
        ArrUpdate(ids[3], arr_before=10_000, status_before="active", seats_before=10, arr_after=10_000,
                  seats_after=10, status_after="churned", reason="budget cuts"),  # churn: loses everything
        ArrUpdate(ids[4], arr_before=9_000, status_before="churned", seats_before=9, arr_after=7_000,
                  seats_after=7),  # came back: starts from zero
        ArrUpdate(ids[5], arr_before=5_000, status_before="active", seats_before=5, arr_after=5_000,
                  seats_after=5),  # nothing changed
    ]
    day = date(2025, 1, 15)
    assert record_arr_changes(session, updates, day=day) == 5
    assert record_arr_changes(session, updates, day=day) == 5  # the same rows again, not new ones
    rows = session.exec(select(ArrChange).order_by(col(ArrChange.account_id))).all()
    got = [(r.account_id, r.kind, r.arr_before, r.arr_after, r.seats_before, r.seats_after, r.reason) for r in rows]
    assert got == [
        (ids[0], "new", 0.0, 10_000.0, 0, 10, None),
        (ids[1], "expansion", 10_000.0, 12_000.0, 10, 12, None),
        (ids[2], "contraction", 10_000.0, 8_000.0, 10, 8, None),
        (ids[3], "churn", 10_000.0, 0.0, 10, 0, "budget cuts"),
        (ids[4], "reactivation", 0.0, 7_000.0, 0, 7, None),
    ]


def test_seat_only_change_is_an_expansion_and_nothing_is_written_for_an_empty_batch(session: Session) -> None:
    a = _account(session, "Seats")
    assert record_arr_changes(session, [], day=TODAY) == 0
    update = ArrUpdate(a, arr_before=1_000, status_before="active", seats_before=3, arr_after=1_000, seats_after=4)
    assert record_arr_changes(session, [update], day=TODAY) == 1
    assert session.exec(select(ArrChange.kind)).all() == ["expansion"]


def test_accounts_without_history_get_one_from_the_account(session: Session) -> None:
    _account(session, "Plain", arr=5_000.0, seats=5, contract_start=date(2024, 2, 10))
    _account(session, "Gone", arr=7_000.0, seats=7, contract_start=date(2023, 5, 1), status="churned",
             churned_on=date(2024, 5, 1), churn_reason="acquired")
    events = revenue_events(session)
    assert [(str(d.date()), k, b, a, r) for d, k, b, a, r in zip(
        events["day"], events["kind"], events["arr_before"], events["arr_after"], events["reason"], strict=True)] == [
        ("2024-02-10", "new", 0.0, 5_000.0, None),
        ("2023-05-01", "new", 0.0, 7_000.0, None),
        ("2024-05-01", "churn", 7_000.0, 0.0, "acquired"),
    ]
    state = state_at(events, date(2024, 5, 1))  # the churn day's end: already gone
    assert state["active"].tolist() == [True, False] and state["arr"].tolist() == [5_000.0, 0.0]
    assert len(state_at(events, date(2023, 4, 30))) == 0  # nobody was a customer yet


# -------------------------------------------------------------------------------------------------- retention


@pytest.fixture
def revenue_world(session: Session) -> dict[str, int]:
    """A: expands · B: downgrades · C: churns · D: churned before, comes back · E: new logo mid-month ·
    F: churns and comes back within the year · G: churned long ago, stays away."""
    sam = User(email="sam@example.com", name="Sam", role="csm")
    session.add(sam)
    session.flush()
    ids = {k: _account(session, k, segment="smb" if k in "AB" else "enterprise",
                       owner_id=sam.id if k in "ABE" else None) for k in "ABCDEFG"}
    ids["sam"] = int(sam.id or 0)
    _change(session, ids["A"], "2023-01-10", "new", 0, 100_000, (0, 10))
    _change(session, ids["A"], "2024-06-15", "expansion", 100_000, 120_000, (10, 12))
    _change(session, ids["B"], "2023-05-20", "new", 0, 50_000, (0, 5))
    _change(session, ids["B"], "2024-05-20", "contraction", 50_000, 40_000, (5, 4))
    _change(session, ids["C"], "2023-02-01", "new", 0, 30_000, (0, 3))
    _change(session, ids["C"], "2024-08-01", "churn", 30_000, 0, (3, 0), "budget cuts")
    _change(session, ids["D"], "2022-07-01", "new", 0, 30_000, (0, 3))
    _change(session, ids["D"], "2023-07-01", "churn", 30_000, 0, (3, 0), "moved to competitor")
    _change(session, ids["D"], "2024-10-15", "reactivation", 0, 20_000, (0, 2))
    _change(session, ids["E"], "2024-09-16", "new", 0, 60_000, (0, 6))
    _change(session, ids["F"], "2023-04-10", "new", 0, 40_000, (0, 4))
    _change(session, ids["F"], "2024-04-10", "churn", 40_000, 0, (4, 0), "low adoption")
    _change(session, ids["F"], "2024-12-01", "reactivation", 0, 35_000, (0, 3))
    _change(session, ids["G"], "2022-01-01", "new", 0, 10_000, (0, 1))
    _change(session, ids["G"], "2023-01-01", "churn", 10_000, 0, (1, 0), "acquired")
    session.commit()
    return ids


def test_retention_over_twelve_months(session: Session, revenue_world: dict[str, int]) -> None:
    r = retention(session, Period(12, "m"), today=TODAY)
    # Customers at the end of 2024-03-14: A 100k, B 50k, C 30k, F 40k (D and G had churned, E not signed yet).
    assert (r.start, r.end) == (date(2024, 3, 14), TODAY)
    assert (r.logos_start, r.arr_start) == (4, 220_000.0)
    # At the end: A 120k, B 40k, C gone, F back at 35k → C is the only starting logo lost (F came back).
    assert r.logos_churned == 1 and r.logo_churn_rate == pytest.approx(0.25)
    assert r.arr_end == 195_000.0 and r.nrr == pytest.approx(195 / 220)
    # GRR caps each account at its start: 100 + 40 + 0 + 35.
    assert r.arr_retained == 175_000.0 and r.grr == pytest.approx(175 / 220)
    assert (r.expansion_arr, r.contraction_arr, r.churned_arr) == (20_000.0, 15_000.0, 30_000.0)
    assert r.arr_start + r.expansion_arr - r.contraction_arr - r.churned_arr == r.arr_end
    # E signed mid-month inside the period: a new logo, outside NRR/GRR. D was churned at the start: reactivated.
    assert (r.new_logos, r.new_arr, r.reactivated, r.reactivated_arr) == (1, 60_000.0, 1, 20_000.0)
    # Churned at some point of the period: D, G (at the start), C, F (during it); D and F came back.
    assert (r.churned_pool, r.won_back) == (4, 2) and r.win_back_rate == pytest.approx(0.5)
    assert r.churn_by_reason == {"low adoption": 40_000.0, "budget cuts": 30_000.0} and r.churn_events == 2


def test_retention_of_a_segment_and_of_an_owner(session: Session, revenue_world: dict[str, int]) -> None:
    smb = retention(session, Period(12, "m"), today=TODAY, scope=Slice(segment="SMB"))
    # A and B only: 150k → 160k; GRR 100 + 40.
    assert (smb.logos_start, smb.arr_start, smb.arr_end, smb.arr_retained) == (2, 150_000.0, 160_000.0, 140_000.0)
    mine = retention(session, Period(90, "d"), today=TODAY, scope=Slice(owner_ids=(revenue_world["sam"],)))
    # 90 days: the end of 2024-12-14. A 120k, B 40k, E 60k, all still there.
    assert (mine.start, mine.logos_start, mine.arr_start, mine.nrr) == (date(2024, 12, 14), 3, 220_000.0, 1.0)


def test_retention_per_month(session: Session, revenue_world: dict[str, int]) -> None:
    monthly = retention_monthly(session, today=TODAY, months=12)
    assert monthly.index[0] == pd.Timestamp("2024-04-01") and monthly.index[-1] == pd.Timestamp("2025-03-01")
    april = monthly.loc["2024-04-01"]
    # End of March: A 100k, B 50k, C 30k, F 40k; F churns on 10 April.
    assert (april["logos_start"], april["logos_churned"]) == (4, 1)
    assert (april["arr_start"], april["arr_end"]) == (220_000, 180_000)
    assert april["logo_churn_rate"] == pytest.approx(0.25) and april["grr"] == pytest.approx(180 / 220)
    june = monthly.loc["2024-06-01"]
    # A expands from 100k to 120k in June; B had already dropped to 40k in May.
    assert (june["arr_start"], june["arr_end"], june["nrr"], june["grr"]) == (170_000, 190_000, 190 / 170, 1.0)
    august = monthly.loc["2024-08-01"]
    assert (august["logos_start"], august["logos_churned"], august["nrr"]) == (3, 1, pytest.approx(160 / 190))
    september = monthly.loc["2024-09-01"]
    assert (september["new_logos"], september["new_arr"]) == (1, 60_000)
    assert monthly.loc["2024-10-01", "reactivated"] == 1 and monthly.loc["2024-12-01", "reactivated"] == 1


def test_cohorts_by_first_contract_quarter(session: Session, revenue_world: dict[str, int]) -> None:
    table = cohorts(session, today=TODAY)
    assert table.sizes.to_dict() == {"2022Q1": 1, "2022Q3": 1, "2023Q1": 2, "2023Q2": 2, "2024Q3": 1}
    q1 = table.logos.loc["2023Q1"]
    # A (2023-01-10) and C (2023-02-01): both there a year later; C churned on 2024-08-01, its 18-month point.
    assert (q1[0], q1[4], q1[5], q1[6], q1[7]) == (1.0, 1.0, 1.0, 0.5, 0.5)
    assert pd.isna(q1[8])  # 2023-03-31 + 24 months is after today
    # A had expanded to 120k by its 18-month point: 120 ÷ (100 + 30).
    assert table.arr.loc["2023Q1", 6] == pytest.approx(120 / 130)
    q2 = table.logos.loc["2023Q2"]
    # F churned on its first anniversary (2024-04-10), B renewed with fewer seats (still a customer).
    assert (q2[3], q2[4], q2[6]) == (1.0, 0.5, 0.5)
    assert pd.isna(q2[7])  # F came back by then, but 2023-06-30 + 21 months is not reached yet
    assert table.arr.loc["2023Q2", 4] == pytest.approx(40 / 90)
    assert table.logos.loc["2022Q3", 4] == 0.0  # D churned on its anniversary
    assert list(table.logos.loc["2024Q3"].dropna()) == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------- the funnel


def _row(table: pd.DataFrame, stage: str, columns: list[str]) -> list[Any]:
    return [table.at[stage, c] for c in columns]


def _journey(session: Session, key: str, moves: list[tuple[str | None, str, str]]) -> int:
    """An account whose transitions are `moves` (from, to, ISO date at midnight); created on the first one."""
    first = datetime.fromisoformat(moves[0][2])
    last_stage, last_at = moves[-1][1], datetime.fromisoformat(moves[-1][2])
    status = "churned" if last_stage == "churned" else "active"
    account_id = _account(session, key, created_at=first, stage=last_stage, stage_since=last_at, status=status)
    for frm, to, at in moves:
        session.add(StageTransition(account_id=account_id, from_stage=frm, to_stage=to,
                                    at=datetime.fromisoformat(at), source="import"))
    return account_id


@pytest.fixture
def stage_world(session: Session) -> dict[str, int]:
    ids = {
        "P": _journey(session, "P", [(None, "onboarding", "2024-10-01"), ("onboarding", "adoption", "2025-01-10")]),
        "Q": _journey(session, "Q", [(None, "onboarding", "2024-12-20")]),
        "R": _journey(session, "R", [(None, "onboarding", "2024-06-01"), ("onboarding", "adoption", "2024-08-30"),
                                     ("adoption", "renewal", "2025-02-01")]),
        "S": _journey(session, "S", [(None, "onboarding", "2024-01-01"), ("onboarding", "adoption", "2024-03-01"),
                                     ("adoption", "renewal", "2024-11-01"), ("renewal", "churned", "2025-01-15")]),
        "U": _journey(session, "U", [(None, "onboarding", "2024-09-01"), ("onboarding", "adoption", "2024-11-20")]),
        "V": _journey(session, "V", [(None, "onboarding", "2024-01-05"), ("onboarding", "adoption", "2024-03-05")]),
        "W": _journey(session, "W", [(None, "onboarding", "2024-11-01"), ("onboarding", "adoption", "2025-01-30")]),
    }
    session.commit()
    return ids


def test_funnel_over_ninety_days(session: Session, machine: StageMachine, stage_world: dict[str, int]) -> None:
    report = funnel(session, machine, Period(90, "d"), today=TODAY)
    # The period: from 2024-12-15 00:00 to the end of 2025-03-14.
    assert (report.start, report.end) == (datetime(2024, 12, 15), datetime(2025, 3, 15))
    t = report.stages
    assert list(t.index) == ["onboarding", "adoption", "expansion", "renewal", "advocacy"]
    # Onboarding in the period: P (left for adoption on 01-10), Q (still there), W (left on 01-30).
    assert _row(t, "onboarding", ["accounts", "moved_on", "churned"]) == [3, 2, 0]
    assert t.loc["onboarding", "rate"] == pytest.approx(2 / 3)
    # Stays that ended in the period: P 101 days, W 90 days → median 95.5, p90 90 + 0.9 × 11.
    assert t.loc["onboarding", "completed"] == 2
    assert t.loc["onboarding", "median_days"] == pytest.approx(95.5)
    assert t.loc["onboarding", "p90_days"] == pytest.approx(99.9)
    # Adoption: P, R (on to renewal on 02-01), U, V, W; only R moved on. Its stay: 2024-08-30 → 2025-02-01.
    assert _row(t, "adoption", ["accounts", "moved_on", "completed", "current"]) == [5, 1, 1, 4]
    assert t.loc["adoption", "rate"] == pytest.approx(0.2) and t.loc["adoption", "p90_days"] == 155.0
    # Renewal: R (still there) and S, which churned: churning is not moving on.
    assert _row(t, "renewal", ["accounts", "moved_on", "churned", "completed"]) == [2, 0, 1, 1]
    assert t.loc["renewal", "median_days"] == 75.0
    assert t.loc["expansion", "accounts"] == 0 and t["rate"].isna()["expansion"]
    # V has been in adoption since 2024-03-05 (375 days), beyond the 155-day p90; Q (85 d < 99.9) is not stuck.
    assert [(s.name, s.stage, s.days, s.p90_days) for s in report.stuck] == [("V", "adoption", 375.0, 155.0)]
    assert t["stuck"].sum() == 1


def test_funnel_of_a_longer_period_sees_older_moves(session: Session, machine: StageMachine,
                                                    stage_world: dict[str, int]) -> None:
    t = funnel(session, machine, Period(12, "m"), today=TODAY).stages
    # Since 2024-03-15: onboarding stays of P, Q, R, U, W overlap (S and V left before); P, R, U, W moved on.
    assert _row(t, "onboarding", ["accounts", "moved_on", "completed"]) == [5, 4, 4]
    # Completed onboarding stays: R 90, U 80, P 101, W 90 days.
    assert t.loc["onboarding", "median_days"] == 90.0


def test_stage_distribution_at_each_month_end(session: Session, machine: StageMachine,
                                              stage_world: dict[str, int]) -> None:
    mix = stage_distribution_monthly(session, machine, today=TODAY, months=3)
    assert list(mix.index) == [pd.Timestamp("2025-01-01"), pd.Timestamp("2025-02-01"), pd.Timestamp("2025-03-01")]
    assert list(mix.columns) == ["onboarding", "adoption", "renewal", "churned"]
    # End of January: Q onboarding; P, R, U, V, W adoption (R enters renewal on 1 February); S churned.
    assert list(mix.loc["2025-01-01"]) == [1, 5, 0, 1]
    assert list(mix.loc["2025-02-01"]) == [1, 4, 1, 1]
    # December's end (from a 4-month window): P, Q, W onboarding; R, U, V adoption; S in renewal.
    december = stage_distribution_monthly(session, machine, today=TODAY, months=4).loc["2024-12-01"]
    assert december.to_dict() == {"onboarding": 3, "adoption": 3, "renewal": 1, "churned": 0}


def test_stage_p90_and_the_stuck_in_stage_rule(session: Session, machine: StageMachine,
                                              stage_world: dict[str, int]) -> None:
    stats = stage_p90_days(session, machine, today=TODAY, lookback_days=90)
    v, q = stage_world["V"], stage_world["Q"]
    assert (stats.loc[v, "days_in_stage"], stats.loc[v, "stage_p90_days"]) == (375.0, 155.0)
    assert stats.loc[q, "stage_p90_days"] == pytest.approx(99.9)
    raw = load_alert_config().model_dump(mode="json")
    assert raw["rules"]["stuck_in_stage"]["enabled"] is False  # optional, off by default
    raw["rules"]["stuck_in_stage"]["enabled"] = True
    config = parse_alert_config(raw)
    frame = pd.DataFrame({
        "status": ["active"] * 4, "stage": ["adoption", "adoption", "onboarding", "churned"],
        "days_in_stage": [375.0, 100.0, 25.0, 900.0], "stage_p90_days": [155.0, 155.0, 20.0, 10.0],
    }, index=pd.Index([1, 2, 3, 4], name="account_id"))
    fired = evaluate(frame, pd.DataFrame(), config, TODAY)
    stuck = fired[fired["rule"] == "stuck_in_stage"]
    # 3 is past its p90 but not past min_days (30); 4 is in a skipped stage.
    assert stuck[["account_id", "value", "threshold"]].values.tolist() == [[1, 375.0, 155.0]]
    assert stuck["title"].tolist() == ["Stuck in adoption for 375 days (90 % of stays end within 155)"]
    assert evaluate(frame, pd.DataFrame(), load_alert_config(), TODAY).query("rule == 'stuck_in_stage'").empty


# ------------------------------------------------------------------------------------------------ stage KPIs


def _usage(session: Session, account_id: int, day: str, active_users: int, feature: str = "", events: int = 0) -> None:
    session.add(UsageDaily(account_id=account_id, day=date.fromisoformat(day), feature=feature,
                           active_users=active_users, events=events))


@pytest.fixture
def kpi_world(session: Session) -> dict[str, int]:
    ids = {
        # Onboarding, signed mid-month; 6 of 10 seats active (the 0.6 activation ratio) first on 01-25.
        "K1": _account(session, "K1", stage="onboarding", seats=10, contract_start=date(2025, 1, 16),
                       renewal_date=date(2026, 1, 16)),
        # Onboarding since 01-01 and never above 5 of 20 seats.
        "K2": _account(session, "K2", stage="onboarding", seats=20, contract_start=date(2025, 1, 1),
                       renewal_date=date(2026, 1, 1)),
        "K3": _account(session, "K3", stage="adoption", seats=10, contract_start=date(2022, 5, 10),
                       renewal_date=date(2025, 5, 10)),
        "K4": _account(session, "K4", stage="expansion", seats=66, arr=66_000.0, contract_start=date(2023, 6, 15),
                       renewal_date=date(2025, 6, 15)),
        "K5": _account(session, "K5", stage="churned", status="churned", seats=5, arr=5_000.0,
                       contract_start=date(2023, 8, 20), churned_on=date(2024, 8, 20), churn_reason="budget cuts"),
        "K6": _account(session, "K6", stage="advocacy", seats=8, contract_start=date(2024, 6, 1),
                       renewal_date=date(2025, 6, 1)),
    }
    k1, k2, k3, k4, k6 = ids["K1"], ids["K2"], ids["K3"], ids["K4"], ids["K6"]
    _usage(session, k1, "2025-01-20", 3)
    _usage(session, k1, "2025-01-25", 6)
    _usage(session, k1, "2025-02-10", 8)
    _usage(session, k2, "2025-02-01", 5)
    _usage(session, k3, "2025-01-01", 10)  # before the 30-day window
    _usage(session, k3, "2025-03-01", 7)
    _usage(session, k3, "2025-03-10", 9)
    _usage(session, k3, "2025-03-01", 5, "reports", 40)
    _usage(session, k3, "2025-03-05", 2, "reports", 0)  # opened but nothing done: not a day of use
    _usage(session, k3, "2025-03-10", 4, "reports", 25)
    _usage(session, k3, "2025-03-10", 1, "dashboards", 5)
    _usage(session, k3, "2025-02-01", 3, "api", 100)  # before the window
    _change(session, k4, "2023-06-15", "new", 0, 50_000, (0, 50))
    _change(session, k4, "2024-09-15", "expansion", 50_000, 60_000, (50, 60))
    _change(session, k4, "2025-02-01", "expansion", 60_000, 66_000, (60, 66))
    session.add_all([
        Note(account_id=k3, kind="call", text="check-in", created_at=datetime(2025, 3, 1, 10)),
        Note(account_id=k6, kind="reference", text="reference call", created_at=datetime(2024, 10, 10, 10)),
        Note(account_id=k6, kind="reference", text="case study", created_at=datetime(2025, 1, 10, 10)),
        NpsResponse(account_id=k6, contact_key="a", score=10, responded_at=datetime(2024, 2, 1, 9)),
        NpsResponse(account_id=k6, contact_key="a", score=9, responded_at=datetime(2024, 11, 11, 9)),
        NpsResponse(account_id=k6, contact_key="b", score=7, responded_at=datetime(2025, 2, 2, 9)),
    ])
    session.commit()
    return ids


def _by_key(kpis: list[Any]) -> dict[str, Any]:
    return {k.key: k for k in kpis}


def test_stage_kpis_of_the_portfolio(session: Session, machine: StageMachine, kpi_world: dict[str, int]) -> None:
    k = _by_key(stage_kpis(session, machine, today=TODAY))
    # Time to value: K1 9 days; K2 not there after 72 days (past the 30-day goal, so it counts as 72).
    ttv = k["time_to_value"]
    assert (ttv.value, ttv.goal, ttv.met, ttv.accounts, ttv.accounts_met) == (40.5, 30.0, False, 2, 1)
    # Seat activation: best day 8 of 10 and 5 of 20 → (80 + 25) ÷ 2.
    act = k["seat_activation"]
    assert (act.value, act.met, act.accounts_met) == (52.5, False, 1)
    # K3 in the last 30 days: best day 9 of 10 seats; reports and dashboards used; reports on 2 days, 65 events.
    assert (k["licence_utilisation"].value, k["licence_utilisation"].met) == (90.0, True)
    assert (k["feature_breadth"].value, k["feature_breadth"].met) == (2.0, False)
    assert (k["feature_days:reports"].value, k["feature_events:reports"].value) == (2.0, 65.0)
    # K4: 50 seats a year ago, 66 now; 10k + 6k of expansion ARR within the last 365 days.
    assert k["seat_growth"].value == pytest.approx(32.0) and k["seat_growth"].met is True
    assert (k["upsell_arr"].value, k["upsell_arr"].total) == (16_000.0, 16_000.0)
    # Anniversaries since 2024-03-14: K3 (2024-05-10) and K4 (2024-06-15) renewed, K5 churned on 2024-08-20.
    rate = k["renewal_rate"]
    assert (rate.value, rate.accounts, rate.accounts_met, rate.met) == (pytest.approx(200 / 3), 3, 2, False)
    # Renewals in the next 120 days: K3 (note 13 days ago), K4 (never), K6 (last note 63 days ago).
    cover = k["renewal_coverage"]
    assert (cover.value, cover.accounts, cover.accounts_met) == (pytest.approx(100 / 3), 3, 1)
    # K6: one promoter answer within 365 days (the 2024-02-01 one is older); two references.
    assert (k["promoters"].value, k["references"].value, k["references"].met) == (1.0, 2.0, True)


def test_stage_kpis_of_one_stage_and_one_owner(session: Session, machine: StageMachine,
                                               kpi_world: dict[str, int]) -> None:
    only = stage_kpis(session, machine, today=TODAY, stage="advocacy")
    assert [k.key for k in only] == ["promoters", "references"]
    assert stage_kpis(session, machine, today=TODAY, stage="win-back") == []
    nobody = _by_key(stage_kpis(session, machine, today=TODAY, scope=Slice(owner_ids=(999,))))
    assert nobody["time_to_value"].value is None and nobody["time_to_value"].met is None


def test_account_kpis_for_the_card(session: Session, machine: StageMachine, kpi_world: dict[str, int]) -> None:
    k1 = account_kpis(session, machine, kpi_world["K1"], today=TODAY)
    assert [(r.key, r.value, r.goal, r.met, r.note) for r in k1] == [
        ("time_to_value", 9.0, 30.0, True, ""), ("seat_activation", 80.0, 60.0, True, "")]
    k2 = _by_key(account_kpis(session, machine, kpi_world["K2"], today=TODAY))
    assert (k2["time_to_value"].value, k2["time_to_value"].met, k2["time_to_value"].note) == (72.0, False,
                                                                                              "not_reached")
    k3 = _by_key(account_kpis(session, machine, kpi_world["K3"], today=TODAY))
    assert k3["feature_events:reports"].label == "Reports created (30 days)"
    assert k3["feature_events:reports"].met is False  # 65 of a 1000 goal
    assert account_kpis(session, machine, 10_000, today=TODAY) == []


def test_time_to_value_is_pending_while_within_the_goal(session: Session, machine: StageMachine) -> None:
    fresh = _account(session, "Fresh", stage="onboarding", seats=10, contract_start=date(2025, 3, 1))
    session.commit()
    ttv = _by_key(account_kpis(session, machine, fresh, today=TODAY))["time_to_value"]
    assert (ttv.value, ttv.met) == (None, None)


# ----------------------------------------------------------------------------------------------------- periods


@pytest.mark.parametrize(("text", "period", "start"), [
    ("90d", Period(90, "d"), date(2024, 12, 14)), ("12m", Period(12, "m"), date(2024, 3, 14)),
    ("1y", Period(12, "m"), date(2024, 3, 14)), ("2w", Period(14, "d"), date(2025, 2, 28)),
    ("6个月", Period(6, "m"), date(2024, 9, 14)), ("30 days", Period(30, "d"), date(2025, 2, 12)),
])
def test_periods(text: str, period: Period, start: date) -> None:
    assert parse_period(text) == period
    assert period.start(TODAY) == start


@pytest.mark.parametrize("text", ["", "0d", "soon", "12x"])
def test_bad_periods(text: str) -> None:
    with pytest.raises(CsbotError):
        parse_period(text)


def test_the_default_funnel_and_b2c_stages(machine: StageMachine) -> None:
    b2c = load_stage_machine(DEFAULT_STAGES_FILE.parent / "stages_b2c.toml")
    assert b2c.funnel_stages() == ["reach", "acquire", "convert", "retain", "loyal", "advocate"]
    assert b2c.moves_on("loyal") == ["advocate"]
    assert machine.moves_on("renewal") == ["adoption", "expansion", "advocacy"]
    assert machine.moves_on("onboarding") == ["adoption", "expansion", "renewal", "advocacy"]
    assert np.array([k.stage for k in b2c.kpis]).tolist() == ["convert", "retain", "loyal", "advocate", "advocate"]
