"""The signals frame on a tiny hand-built portfolio: windows and their boundaries, tickets, NPS, notes, and
nothing after `as_of` leaking in."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from lifecycle.scoring.signals import SIGNAL_COLUMNS, build_signals
from lifecycle.store.models import Account, Note, NpsResponse, Ticket, UsageDaily

AS_OF = date(2025, 3, 31)


def day(offset: int) -> date:
    """The day `offset` days before AS_OF (negative: after)."""
    return AS_OF - timedelta(days=offset)


@pytest.fixture
def portfolio(session: Session) -> dict[str, int]:
    return build_portfolio(session)


def build_portfolio(session: Session) -> dict[str, int]:
    acme = Account(
        external_id="A1", name="Acme", name_key="acme", seats=20, segment="enterprise", stage="adoption",
        contract_start=date(2024, 4, 1), renewal_date=date(2025, 5, 1), arr=12000.0,
    )
    idle = Account(external_id="B1", name="Bare", name_key="bare", seats=0, status="churned")
    # The stored last-usage day lies after AS_OF (a past day replayed): it must be ignored.
    stale = Account(external_id="C1", name="Stale", name_key="stale", seats=5, last_usage_date=date(2025, 4, 5))
    session.add_all([acme, idle, stale])
    session.commit()
    assert acme.id is not None and idle.id is not None and stale.id is not None

    totals = [  # (days before AS_OF, active users, logins, events)
        (0, 6, 3, 100),
        (6, 5, 0, 5),  # day 7: last day of the "last 7 days"
        (7, 9, 0, 1),  # day 8: first of the 23 days before them
        (13, 7, 0, 10),  # first day of the 14-day activation window
        (14, 10, 0, 20),  # just outside it; still in the last 30
        (29, 8, 0, 50),  # day 30: last day of the "last 30"
        (30, 9, 2, 70),  # day 31: first day of the prior 30
        (59, 1, 1, 30),  # day 60: last day of the prior 30
        (60, 10, 5, 1000),  # day 61: outside the window
        (-1, 10, 9, 999),  # after AS_OF
    ]
    session.add_all(
        UsageDaily(account_id=acme.id, day=day(o), active_users=a, logins=lg, events=e) for o, a, lg, e in totals
    )
    features = [("reports", 20, 5), ("api", 10, 0), ("export", 30, 3), ("alerts", -1, 4)]
    session.add_all(
        UsageDaily(account_id=acme.id, day=day(o), feature=f, active_users=1, logins=0, events=e)
        for f, o, e in features
    )
    session.add(UsageDaily(account_id=stale.id, day=date(2024, 12, 1), active_users=2, logins=0, events=5))

    def at(offset: int, hour: int = 10, minute: int = 0, second: int = 0) -> datetime:
        d = day(offset)
        return datetime(d.year, d.month, d.day, hour, minute, second)

    session.add_all(
        [
            Ticket(account_id=acme.id, ticket_id="T1", opened_at=at(11), priority="urgent"),
            Ticket(account_id=acme.id, ticket_id="T2", opened_at=at(30), priority="high", status="closed",
                   closed_at=at(6)),
            # Closed only after AS_OF: still open on AS_OF.
            Ticket(account_id=acme.id, ticket_id="T3", opened_at=at(29, 0), priority="high", status="closed",
                   closed_at=at(-2)),
            Ticket(account_id=acme.id, ticket_id="T4", opened_at=at(44), priority="low"),
            Ticket(account_id=acme.id, ticket_id="T5", opened_at=at(-1), priority="urgent"),
            # Marked closed without a closing time: closed.
            Ticket(account_id=acme.id, ticket_id="T6", opened_at=at(21), priority="high", status="closed"),
            Ticket(account_id=acme.id, ticket_id="T7", opened_at=at(61), priority="normal"),
        ]
    )
    session.add_all(
        [
            NpsResponse(account_id=acme.id, contact_key="a@x", score=9, responded_at=at(58)),
            NpsResponse(account_id=acme.id, contact_key="b@x", score=4, responded_at=at(16)),
            NpsResponse(account_id=acme.id, contact_key="c@x", score=10, responded_at=at(-1)),
            # A detractor who answered again as a promoter no longer counts as one; one 90+ days ago neither.
            NpsResponse(account_id=acme.id, contact_key="d@x", score=3, responded_at=at(40)),
            NpsResponse(account_id=acme.id, contact_key="d@x", score=9, responded_at=at(20)),
            NpsResponse(account_id=acme.id, contact_key="e@x", score=2, responded_at=at(90)),
            Note(account_id=acme.id, text="kick-off", created_at=at(30)),
            Note(account_id=acme.id, text="late call", created_at=at(0, 23, 59, 59)),
            Note(account_id=acme.id, text="tomorrow", created_at=at(-1, 0)),
        ]
    )
    session.commit()
    return {"acme": acme.id, "idle": idle.id, "stale": stale.id}


def test_one_row_per_account_with_the_contract_columns(session: Session, portfolio: dict[str, int]) -> None:
    frame = build_signals(session, AS_OF)
    assert sorted(frame.index) == sorted(portfolio.values())
    assert frame.index.name == "account_id"
    assert set(SIGNAL_COLUMNS) <= set(frame.columns)
    assert frame.loc[portfolio["idle"], "status"] == "churned"


def test_usage_windows_and_their_boundaries(session: Session, portfolio: dict[str, int]) -> None:
    acme = build_signals(session, AS_OF).loc[portfolio["acme"]]
    assert acme["active_users_peak_30"] == 10
    assert acme["active_users_peak_7"] == 6
    assert acme["utilisation"] == pytest.approx(6 / 20)  # the last 7 days' peak, not the 30 days'
    assert acme["events_30"] == 100 + 5 + 1 + 10 + 20 + 50
    assert acme["events_prior_30"] == 70 + 30
    assert acme["events_7"] == 105 and acme["usage_days_7"] == 2
    assert acme["events_per_day_7"] == pytest.approx(105 / 2)
    assert acme["events_per_day_8_30"] == pytest.approx((1 + 10 + 20 + 50) / 4)
    assert acme["usage_change_7"] == pytest.approx((105 / 2 - 81 / 4) / (81 / 4) * 100)
    assert acme["usage_change_30"] == pytest.approx((186 - 100) / 100 * 100)
    assert acme["logins_30"] == 3
    assert acme["logins_prior_30"] == 3
    assert acme["usage_days_30"] == 6
    assert acme["last_login_date"] == pd.Timestamp(AS_OF)
    assert acme["last_usage_date"] == pd.Timestamp(AS_OF)
    assert acme["days_since_last_login"] == 0
    assert acme["days_since_last_usage"] == 0
    # "reports" only: "api" had no events and "export" was used on day 31.
    assert acme["feature_breadth_30"] == 1


def test_activation_days_count_days_at_the_ratio_of_seats(session: Session, portfolio: dict[str, int]) -> None:
    assert build_signals(session, AS_OF).loc[portfolio["acme"], "activation_days"] == 0  # 0.6 × 20 = 12 users
    relaxed = build_signals(session, AS_OF, activation_ratio=0.3)  # 6 users: days 0, 7 and 13, not 6 or 14
    assert relaxed.loc[portfolio["acme"], "activation_days"] == 3
    assert relaxed["activation_days"].isna()[portfolio["idle"]]  # no seats


def test_contract_dates_become_day_counts(session: Session, portfolio: dict[str, int]) -> None:
    frame = build_signals(session, AS_OF)
    acme = frame.loc[portfolio["acme"]]
    assert acme["days_to_renewal"] == 31
    assert acme["days_since_contract_start"] == 364
    assert acme["contract_start"] == pd.Timestamp(2024, 4, 1)
    assert frame["days_to_renewal"].isna()[portfolio["idle"]]


def test_tickets_open_on_the_day_and_opened_per_window(session: Session, portfolio: dict[str, int]) -> None:
    acme = build_signals(session, AS_OF).loc[portfolio["acme"]]
    assert acme["open_high_tickets"] == 2  # T1, and T3 which closed after AS_OF
    assert acme["urgent_open_tickets"] == 1
    assert acme["tickets_30"] == 3  # T1, T3 (day 30), T6
    assert acme["tickets_prior_30"] == 2  # T2 (day 31), T4


def test_latest_nps_and_note_at_or_before_the_day(session: Session, portfolio: dict[str, int]) -> None:
    acme = build_signals(session, AS_OF).loc[portfolio["acme"]]
    assert acme["nps_last_score"] == 4
    assert acme["nps_last_at"] == pd.Timestamp(2025, 3, 15, 10)
    assert acme["days_since_last_nps"] == 16
    assert acme["nps_detractors_90"] == 1  # b@x; d@x answered 9 since, e@x is 90 days old
    assert acme["last_note_at"] == pd.Timestamp(2025, 3, 31, 23, 59, 59)
    assert acme["days_since_last_note"] == 0


def test_data_after_the_day_is_ignored_and_used_once_the_day_comes(
    session: Session, portfolio: dict[str, int]
) -> None:
    later = build_signals(session, AS_OF + timedelta(days=1)).loc[portfolio["acme"]]
    assert later["nps_last_score"] == 10
    assert later["events_30"] == 999 + 100 + 5 + 1 + 10 + 20  # the old day 30 has moved to the prior window
    assert later["events_prior_30"] == 50 + 70
    assert later["open_high_tickets"] == 3  # T5 opened
    assert later["feature_breadth_30"] == 2  # "alerts"
    # A week without any usage row after days with usage: nobody used it, utilisation 0 and usage down 100 %.
    quiet = build_signals(session, AS_OF + timedelta(days=8)).loc[portfolio["acme"]]
    assert quiet["usage_days_7"] == 0 and quiet["usage_days_30"] > 0
    assert quiet["utilisation"] == 0 and quiet["events_per_day_7"] == 0 and quiet["usage_change_7"] == -100


def test_accounts_without_data_get_no_data_not_zero(session: Session, portfolio: dict[str, int]) -> None:
    frame = build_signals(session, AS_OF)
    idle = frame.loc[portfolio["idle"]]
    assert pd.isna(idle["utilisation"])
    assert idle["events_30"] == 0 and idle["open_high_tickets"] == 0
    assert pd.isna(idle["last_login_date"]) and pd.isna(idle["last_usage_date"])
    assert pd.isna(idle["days_since_last_login"])
    assert pd.isna(idle["feature_breadth_30"])
    assert pd.isna(idle["nps_last_score"])
    assert pd.isna(idle["last_note_at"])


def test_last_usage_any_time_and_login_recency_lower_bound(session: Session, portfolio: dict[str, int]) -> None:
    stale = build_signals(session, AS_OF).loc[portfolio["stale"]]
    assert stale["last_usage_date"] == pd.Timestamp(2024, 12, 1)
    assert stale["days_since_last_usage"] == 120
    assert pd.isna(stale["last_login_date"])
    assert stale["days_since_last_login"] == 120  # never less than the time since any usage
    assert pd.isna(stale["utilisation"])
    # Once the day is past the importers' cached last-usage day, the cache is used as is.
    later = build_signals(session, date(2025, 4, 6)).loc[portfolio["stale"]]
    assert later["last_usage_date"] == pd.Timestamp(2025, 4, 5)


def test_empty_portfolio_gives_an_empty_frame(session: Session) -> None:
    frame = build_signals(session, AS_OF)
    assert frame.empty
    assert set(SIGNAL_COLUMNS) <= set(frame.columns)


def test_same_signals_on_postgresql(pg_engine: Engine) -> None:
    with Session(pg_engine) as session:
        ids = build_portfolio(session)
        frame = build_signals(session, AS_OF, activation_ratio=0.3)
    acme, stale = frame.loc[ids["acme"]], frame.loc[ids["stale"]]
    assert (acme["events_30"], acme["events_prior_30"], acme["usage_days_30"]) == (186, 100, 6)
    assert acme["utilisation"] == pytest.approx(0.3) and acme["activation_days"] == 3
    assert acme["usage_change_7"] == pytest.approx((105 / 2 - 81 / 4) / (81 / 4) * 100)
    assert acme["nps_detractors_90"] == 1
    assert acme["feature_breadth_30"] == 1
    assert (acme["open_high_tickets"], acme["urgent_open_tickets"], acme["tickets_30"]) == (2, 1, 3)
    assert acme["nps_last_score"] == 4 and acme["nps_last_at"] == pd.Timestamp(2025, 3, 15, 10)
    assert acme["last_note_at"] == pd.Timestamp(2025, 3, 31, 23, 59, 59)
    assert acme["days_to_renewal"] == 31 and acme["last_login_date"] == pd.Timestamp(AS_OF)
    assert stale["last_usage_date"] == pd.Timestamp(2024, 12, 1) and stale["days_since_last_login"] == 120
