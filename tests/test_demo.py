"""The demo portfolio generator: determinism, shape of the book, and the usage patterns the demo relies on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from lifecycle.intake.demo import (
    CHURN_REASONS,
    DEMO_USERS,
    FEATURES,
    DemoSummary,
    account_names,
    default_days,
    is_empty,
    seed_demo,
)
from lifecycle.store.db import make_engine
from lifecycle.store.errors import CsbotError

TODAY = date(2025, 6, 15)
TABLES = ("user", "account", "contact", "stage_transition", "usage_daily", "ticket", "nps_response", "note")


def rows(session: Session, sql: str, **params: Any) -> list[Any]:
    return list(session.execute(text(sql), params).all())


def scalar(session: Session, sql: str, **params: Any) -> Any:
    return session.execute(text(sql), params).scalar_one()


@pytest.fixture
def seeded(session: Session) -> tuple[Session, DemoSummary]:
    summary = seed_demo(session, today=TODAY)
    session.commit()
    return session, summary


def is_chinese(name: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in name)


def test_default_portfolio_counts_match_the_summary(seeded: tuple[Session, DemoSummary]) -> None:
    session, summary = seeded
    assert summary.accounts == 60 and summary.users == 6 and summary.days == 365
    assert (summary.first_day, summary.last_day) == (date(2024, 6, 15), date(2025, 6, 14))
    table_of = {"users": "user", "accounts": "account", "contacts": "contact",
                "stage_transitions": "stage_transition", "usage_rows": "usage_daily", "tickets": "ticket",
                "nps_responses": "nps_response", "notes": "note"}
    for field, table in table_of.items():
        assert scalar(session, f'SELECT COUNT(*) FROM "{table}"') == getattr(summary, field), table
    assert scalar(session, "SELECT COUNT(*) FROM account WHERE status = 'churned'") == summary.churned == 5
    assert summary.slipping == 9  # 15 % of 60
    ids = [r[0] for r in rows(session, "SELECT external_id FROM account ORDER BY id")]
    assert ids[0] == "ACC-00001" and ids[-1] == "ACC-00060"


def test_users_are_a_manager_four_csms_and_an_admin(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    users = rows(session, "SELECT id, name, role, manager_id, slack_user_id, telegram_user_id, timezone "
                          'FROM "user"')
    assert [u.name for u in users] == [u[0] for u in DEMO_USERS]
    assert Counter(u.role for u in users) == {"manager": 1, "csm": 4, "admin": 1}
    manager = next(u for u in users if u.role == "manager")
    assert manager.name == "Maya Chen"
    assert all(u.manager_id == manager.id for u in users if u.role == "csm")
    assert [u.slack_user_id for u in users] == [f"U0DEMO0{i}" for i in range(1, 7)]
    assert all(u.telegram_user_id for u in users)
    assert len({u.timezone for u in users}) >= 5
    owners = {r[0] for r in rows(session, "SELECT DISTINCT owner_id FROM account")}
    assert owners == {u.id for u in users if u.role == "csm"}


def test_accounts_look_like_a_real_book(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    accounts = rows(session, "SELECT name, name_key, segment, arr, seats, currency, plan FROM account")
    names = [a.name for a in accounts]
    assert len(set(names)) == 60
    assert {"北京星辰科技", "上海云帆数据", "深圳蓝海软件"} <= set(names)
    assert sum(map(is_chinese, names)) >= 3
    assert all(a.name_key == a.name.casefold() for a in accounts)
    assert {a.segment for a in accounts} == {"enterprise", "mid-market", "smb"}
    assert {a.currency for a in accounts} <= {"USD", "EUR"}
    seat_ranges = {"enterprise": (250, 2500), "mid-market": (50, 300), "smb": (5, 50)}
    for a in accounts:
        low, high = seat_ranges[a.segment]
        assert low <= a.seats <= high and a.arr > 0 and a.plan
    smb = [a.arr for a in accounts if a.segment == "smb"]
    enterprise = [a.arr for a in accounts if a.segment == "enterprise"]
    assert max(smb) < min(enterprise)


def test_renewals_spread_over_the_coming_year(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    active = rows(session, "SELECT contract_start, renewal_date FROM account WHERE status = 'active'")
    renewals = [date.fromisoformat(str(r.renewal_date)) for r in active]
    assert all(TODAY < d <= TODAY + timedelta(days=366) for d in renewals)
    assert len({d.month for d in renewals}) >= 10
    for r in active:  # the renewal is an anniversary of the contract start
        start, renewal = date.fromisoformat(str(r.contract_start)), date.fromisoformat(str(r.renewal_date))
        assert (renewal.month, renewal.day) == (start.month, start.day) or (start.month, start.day) == (2, 29)
        assert TODAY - timedelta(days=3 * 365 + 1) <= start < TODAY


def test_stage_matches_contract_and_history(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    accounts = rows(session, "SELECT id, stage, status, contract_start, renewal_date, stage_since "
                             "FROM account")
    history: dict[int, list[Any]] = {}
    for t in rows(session, "SELECT account_id, from_stage, to_stage, at FROM stage_transition ORDER BY id"):
        history.setdefault(t.account_id, []).append(t)
    stages = Counter(a.stage for a in accounts)
    known = {"onboarding", "adoption", "expansion", "renewal", "advocacy", "churned", "win-back"}
    assert set(stages) <= known
    assert stages["churned"] == 5 and stages["renewal"] > 0 and stages["onboarding"] > 0
    for a in accounts:
        moves = history[a.id]
        assert moves[0].from_stage is None and moves[0].to_stage == "onboarding"
        assert all(m.from_stage == prev.to_stage for prev, m in pairwise(moves))
        assert [m.at for m in moves] == sorted(m.at for m in moves)
        assert moves[-1].to_stage == a.stage and moves[-1].at == a.stage_since
        days_to_renewal = (date.fromisoformat(str(a.renewal_date)) - TODAY).days
        age = (TODAY - date.fromisoformat(str(a.contract_start))).days
        if a.status == "churned":
            assert a.stage == "churned"
        elif age < 60:
            assert a.stage == "onboarding"
        elif age > 90:
            assert (a.stage == "renewal") == (days_to_renewal <= 120)


def test_churned_accounts_stop_using_the_product(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    churned = rows(session, "SELECT id, churned_on, churn_reason FROM account WHERE status = 'churned'")
    assert len(churned) == 5
    for a in churned:
        assert a.churned_on is not None and a.churn_reason in CHURN_REASONS
        churned_on = date.fromisoformat(str(a.churned_on))
        after = scalar(session, "SELECT COUNT(*) FROM usage_daily WHERE account_id = :a AND day >= :d",
                       a=a.id, d=churned_on)
        assert after == 0
        # Usage decays before the churn: its last month is far below the account's level half a year earlier.
        last_month = scalar(session, "SELECT AVG(active_users) FROM usage_daily WHERE account_id = :a "
                            "AND feature = '' AND day >= :d", a=a.id, d=churned_on - timedelta(days=30))
        first_month = scalar(session, "SELECT AVG(active_users) FROM usage_daily WHERE account_id = :a "
                             "AND feature = '' AND day < :d150 AND day >= :d180", a=a.id,
                             d150=churned_on - timedelta(days=150), d180=churned_on - timedelta(days=180))
        if first_month is not None:
            assert float(last_month) < 0.5 * float(first_month)
    active_with_churn = "SELECT COUNT(*) FROM account WHERE status = 'active' AND churned_on IS NOT NULL"
    assert scalar(session, active_with_churn) == 0


def test_usage_covers_a_year_with_feature_rows(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    first, last, n_days = rows(session, "SELECT MIN(day), MAX(day), COUNT(DISTINCT day) FROM usage_daily")[0]
    assert (str(first), str(last), n_days) == ("2024-06-15", "2025-06-14", 365)
    features = {r[0] for r in rows(session, "SELECT DISTINCT feature FROM usage_daily")}
    assert features == {"", *FEATURES}
    over_seats = scalar(session, "SELECT COUNT(*) FROM usage_daily u JOIN account a ON a.id = u.account_id "
                        "WHERE u.active_users > a.seats")
    assert over_seats == 0
    # Feature usage never exceeds the account's total for that day.
    over_total = scalar(session, "SELECT COUNT(*) FROM usage_daily f JOIN usage_daily t ON t.account_id = "
                        "f.account_id AND t.day = f.day AND t.feature = '' WHERE f.feature != '' "
                        "AND f.active_users > t.active_users")
    assert over_total == 0
    # last_usage_date is the last day with any active user.
    mismatched = scalar(session, "SELECT COUNT(*) FROM account a WHERE a.last_usage_date IS DISTINCT FROM "
                        "(SELECT MAX(day) FROM usage_daily u WHERE u.account_id = a.id AND u.feature = '' "
                        "AND u.active_users > 0)")
    assert mismatched == 0


def test_weekends_are_quieter_than_weekdays(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    totals: dict[int, list[float]] = {}
    for day, users in rows(session, "SELECT day, SUM(active_users) FROM usage_daily WHERE feature = '' "
                                    "GROUP BY day"):
        totals.setdefault(date.fromisoformat(str(day)).isoweekday(), []).append(users)
    by_dow = {d: sum(v) / len(v) for d, v in totals.items()}
    weekend = (by_dow[6] + by_dow[7]) / 2
    weekday = sum(by_dow[d] for d in range(1, 6)) / 5
    assert weekend < 0.5 * weekday


def test_some_accounts_are_slipping_today(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    trend = rows(session, """
        SELECT a.id,
               SUM(CASE WHEN u.day >= '2025-05-16' THEN u.active_users END) AS recent,
               SUM(CASE WHEN u.day < '2025-05-16' AND u.day >= '2025-04-16' THEN u.active_users END) AS prior
        FROM account a JOIN usage_daily u ON u.account_id = a.id AND u.feature = ''
        WHERE a.status = 'active' AND a.contract_start < '2025-01-01'
        GROUP BY a.id""")
    dropping = [t.id for t in trend if t.prior and t.recent <= 0.7 * t.prior]
    steady = [t.id for t in trend if t.prior and t.recent > 0.9 * t.prior]
    assert len(dropping) >= 3
    assert len(steady) > len(dropping)
    # Slipping accounts file more tickets and answer NPS as detractors.
    def recent_nps(ids: list[int]) -> float:
        marks = ",".join(map(str, ids))
        return float(scalar(session, f"SELECT AVG(score) FROM nps_response WHERE account_id IN ({marks}) "
                                     "AND responded_at >= '2025-03-15'"))
    assert recent_nps(dropping) < 7 < recent_nps(steady)


def test_tickets_nps_and_notes(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    assert scalar(session, "SELECT COUNT(*) FROM ticket WHERE status = 'open' AND priority = 'urgent'") >= 1
    assert scalar(session, "SELECT COUNT(*) FROM ticket WHERE status = 'closed' AND closed_at IS NULL") == 0
    assert scalar(session, "SELECT COUNT(*) FROM ticket WHERE status = 'open' AND closed_at IS NOT NULL") == 0
    assert scalar(session, "SELECT COUNT(*) FROM ticket WHERE closed_at < opened_at") == 0
    assert scalar(session, "SELECT COUNT(*) FROM ticket t JOIN account a ON a.id = t.account_id "
                           "WHERE t.opened_at < a.contract_start OR t.opened_at >= :now",
                  now=TODAY.isoformat()) == 0
    scores = [r[0] for r in rows(session, "SELECT score FROM nps_response")]
    assert min(scores) <= 6 and max(scores) >= 9 and all(0 <= s <= 10 for s in scores)
    comments = [r[0] for r in rows(session, "SELECT comment FROM nps_response WHERE comment IS NOT NULL")]
    assert any(is_chinese(c) for c in comments) and any(not is_chinese(c) for c in comments)
    # Every response comes from one of the account's contacts, under the contact's key.
    orphans = scalar(session, "SELECT COUNT(*) FROM nps_response r LEFT JOIN contact c "
                              "ON c.id = r.contact_id "
                              "AND c.account_id = r.account_id AND c.key = r.contact_key WHERE c.id IS NULL")
    assert orphans == 0
    # Some live accounts have had no touchpoint for 60+ days although they had earlier ones.
    neglected = scalar(session, """
        SELECT COUNT(*) FROM account a WHERE a.status = 'active'
        AND EXISTS (SELECT 1 FROM note n WHERE n.account_id = a.id)
        AND NOT EXISTS (SELECT 1 FROM note n WHERE n.account_id = a.id AND n.created_at >= '2025-04-16')""")
    assert neglected >= 3
    authors = scalar(session, "SELECT COUNT(*) FROM note n JOIN account a ON a.id = n.account_id "
                              "WHERE n.author_id != a.owner_id")
    assert authors == 0


def test_contacts_have_chat_identities(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    per_account = Counter(r[0] for r in rows(session, "SELECT account_id FROM contact"))
    assert len(per_account) == 60 and set(per_account.values()) <= {2, 3}
    contacts = rows(session, "SELECT key, email, name, role, slack_user_id, slack_channel_id, "
                             "telegram_user_id, telegram_chat_id FROM contact")
    assert all(c.key == c.email == c.email.lower() and "@" in c.email and c.name and c.role for c in contacts)
    assert any(c.slack_channel_id and c.slack_channel_id.startswith("C0CUST") for c in contacts)
    assert any(c.slack_user_id for c in contacts) and any(c.telegram_user_id for c in contacts)
    assert any(c.telegram_chat_id for c in contacts)
    assert any(is_chinese(c.name) for c in contacts)
    assert all(c.slack_channel_id for c in contacts if c.slack_user_id)


def table_contents(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.exec_driver_sql(f'SELECT * FROM "{t}" ORDER BY id')]
                for t in TABLES}


def test_same_seed_and_day_give_identical_databases(engine: Engine, new_db_url: Callable[..., str]) -> None:
    other = make_engine(new_db_url("other"))
    for eng in (engine, other):
        with Session(eng) as s:
            seed_demo(s, accounts=40, days=45, seed=11, today=TODAY)
            s.commit()
    first, second = table_contents(engine), table_contents(other)
    assert all(first[t] for t in TABLES)
    assert first == second
    third = make_engine(new_db_url("third"))
    with Session(third) as s:
        seed_demo(s, accounts=40, days=45, seed=12, today=TODAY)
        s.commit()
    assert table_contents(third)["usage_daily"] != first["usage_daily"]
    for eng in (other, third):
        eng.dispose()


def test_nothing_is_committed_and_a_filled_database_is_refused(session: Session) -> None:
    assert is_empty(session)
    seed_demo(session, accounts=5, days=10, today=TODAY)
    assert not is_empty(session)
    with pytest.raises(CsbotError):
        seed_demo(session, accounts=5, days=10, today=TODAY)
    session.rollback()
    assert is_empty(session)
    assert scalar(session, 'SELECT COUNT(*) FROM "user"') == 0


def test_five_hundred_accounts_with_unique_names_and_progress(session: Session) -> None:
    seen: list[tuple[str, int, int]] = []
    summary = seed_demo(session, accounts=500, days=30, today=TODAY, progress=lambda *p: seen.append(p))
    assert summary.accounts == 500 and summary.days == 30 and summary.churned == 40 and summary.slipping == 75
    names = [r[0] for r in rows(session, "SELECT name FROM account")]
    assert len(names) == len(set(names)) == 500
    assert scalar(session, "SELECT COUNT(DISTINCT day) FROM usage_daily") == 30
    assert scalar(session, "SELECT COUNT(*) FROM usage_daily WHERE feature != ''") > 0
    phases = [p for p, _done, _total in seen]
    assert phases[0] == "users" and phases[-1] == "notes"
    assert {"accounts", "contacts", "stages", "usage", "tickets", "nps"} <= set(phases)
    usage = [(done, total) for p, done, total in seen if p == "usage"]
    assert usage[-1] == (500, 500) and [d for d, _ in usage] == sorted(d for d, _ in usage)


def test_generated_names_stay_unique_at_scale() -> None:
    names = account_names(20_000)
    assert len({n for n, _d, _cn in names}) == 20_000
    assert len({d for _n, d, _cn in names}) == 20_000
    assert names[0][0] == "Acme Logistics"
    assert sum(cn for _n, _d, cn in names) > 400  # a Chinese company now and then among generated names
    assert all(cn == is_chinese(n) for n, _d, cn in names)


def test_default_usage_window_depends_on_portfolio_size() -> None:
    assert default_days(60) == 365
    assert default_days(5_000) == 365
    assert default_days(5_001) == 90
    assert default_days(100_000) == 90


def test_revenue_history_ends_in_each_account_s_current_arr(seeded: tuple[Session, DemoSummary]) -> None:
    session, summary = seeded
    assert scalar(session, "SELECT COUNT(*) FROM arr_change") == summary.arr_changes
    last = rows(session, """
        SELECT a.id, a.arr, a.seats, a.status, c.kind, c.arr_before, c.arr_after, c.seats_after
        FROM account a JOIN arr_change c ON c.account_id = a.id
        WHERE c.day = (SELECT MAX(day) FROM arr_change d WHERE d.account_id = a.id)""")
    assert len(last) == 60  # every account has a history
    for r in last:
        if r.status == "active":
            assert r.kind != "churn" and (r.arr_after, r.seats_after) == (r.arr, r.seats)
        else:
            assert r.kind == "churn" and r.arr_before == r.arr and r.arr_after == 0
    kinds = dict(session.execute(text("SELECT kind, COUNT(*) FROM arr_change GROUP BY kind")).all())
    assert kinds["new"] == 60  # one first contract each
    assert kinds["churn"] == summary.churned + summary.won_back and kinds["reactivation"] == summary.won_back == 2
    assert kinds["contraction"] == 3 and kinds["expansion"] >= 5
    # A new logo's contract mostly starts mid-month.
    starts = [date.fromisoformat(str(d)) for (d,) in rows(session, "SELECT day FROM arr_change WHERE kind = 'new'")]
    assert sum(d.day != 1 for d in starts) > 40


def test_won_back_accounts_churned_on_an_earlier_contract_and_came_back(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    back = rows(session, """
        SELECT a.id, a.contract_start, a.created_at, a.status, a.churned_on, c.day AS back_on
        FROM account a JOIN arr_change c ON c.account_id = a.id AND c.kind = 'reactivation'""")
    assert len(back) == 2
    for r in back:
        assert r.status == "active" and r.churned_on is None and str(r.back_on) == str(r.contract_start)
        moves = [(m.from_stage, m.to_stage) for m in rows(
            session, "SELECT from_stage, to_stage FROM stage_transition WHERE account_id = :a ORDER BY at", a=r.id)]
        assert ("renewal", "churned") in moves and ("churned", "win-back") in moves
        assert moves.index(("churned", "win-back")) == moves.index(("renewal", "churned")) + 1
        assert str(r.created_at)[:10] < str(r.contract_start)  # the account exists since its first contract


def test_advocates_record_the_references_they_gave(seeded: tuple[Session, DemoSummary]) -> None:
    session, _ = seeded
    stages = {r.stage for r in rows(session, """
        SELECT DISTINCT a.stage FROM note n JOIN account a ON a.id = n.account_id WHERE n.kind = 'reference'""")}
    assert stages == {"advocacy"}
