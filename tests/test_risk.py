"""Risk a CSM would see from the first recompute: a portfolio imported from CSV files, one nightly run, and the
collapsed account is red, first in `at-risk` with its reasons, and alerted to its owner; each critical signal caps
the grade; a bad critical signal in the scorecard is reported clearly; the at-risk definition's reasons."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from bot.push.jobs import run_job
from lifecycle.intake.importers import import_csv
from lifecycle.scoring.health import (
    CRITICAL_KEY,
    DEFAULT_SCORECARD,
    default_scorecard,
    explain,
    load_scorecard,
    score_frame,
)
from lifecycle.scoring.risk import RiskReason, reasons, reasons_text
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, Alert, HealthSnapshot, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 11, 23)
NIGHTLY_AT = datetime(2026, 11, 23, 2, 0)


def _day(days_ago: int) -> str:
    return (TODAY - timedelta(days=days_ago)).isoformat()


USERS = """email,name,role,slack_user_id,telegram_user_id,timezone,manager_email
lee@example.com,Lee Lead,manager,,,UTC,
cas@example.com,Cas Csm,csm,,,UTC,lee@example.com
"""
ACCOUNTS = """external_id,name,owner_email,segment,plan,arr,currency,seats,contract_start,renewal_date,status
COL-1,Collapse Co,cas@example.com,enterprise,Pro,120000,USD,50,2025-01-01,2027-06-01,active
BIG-1,Bigger Steady,cas@example.com,enterprise,Pro,300000,USD,40,2025-01-01,2027-06-01,active
SML-1,Small Slide,cas@example.com,smb,Starter,9000,USD,10,2025-01-01,2027-06-01,active
"""


def _usage() -> str:
    """90 days up to yesterday. Collapse Co: 45 of 50 seats active daily, then from a month ago 3 (6 %), one of
    whom still logs in every day; the others steady."""
    lines = ["account_external_id,date,active_users,logins,events"]
    for ago in range(90, 0, -1):
        collapsed = ago <= 30
        lines.append(f"COL-1,{_day(ago)},{3 if collapsed else 45},{1 if collapsed else 60},"
                     f"{60 if collapsed else 2000}")
        lines.append(f"BIG-1,{_day(ago)},32,50,1500")
        lines.append(f"SML-1,{_day(ago)},8,12,300")
    return "\n".join(lines) + "\n"


def _tickets() -> str:
    lines = ["account_external_id,ticket_id,opened_at,closed_at,priority,status"]
    lines += [f"COL-1,T-{n},{_day(20 - 3 * n)}T09:00:00,,{'urgent' if n < 2 else 'high'},open" for n in range(5)]
    lines.append(f"BIG-1,T-9,{_day(40)}T09:00:00,{_day(38)}T09:00:00,low,closed")
    return "\n".join(lines) + "\n"


def _nps() -> str:
    return "\n".join([
        "account_external_id,contact_email,score,responded_at,comment",
        f"COL-1,ana@collapse.test,9,{_day(120)}T10:00:00,Great start",
        f"COL-1,ana@collapse.test,0,{_day(10)}T10:00:00,Nobody uses it any more",
        f"BIG-1,bo@bigger.test,9,{_day(30)}T10:00:00,",
        f"SML-1,cy@small.test,5,{_day(20)}T10:00:00,Too slow",
    ]) + "\n"


def _import_all(engine: Engine, folder: Path) -> None:
    files = {"users": USERS, "accounts": ACCOUNTS, "usage": _usage(), "tickets": _tickets(), "nps": _nps()}
    with Session(engine) as session:
        for kind, content in files.items():
            path = folder / f"{kind}.csv"
            path.write_text(content, encoding="utf-8")
            import_csv(session, kind, path)
        session.commit()


def _ask(router: Router, text: str, who: str = "lee@example.com") -> Reply:
    return router.handle(Incoming(platform="console", sender_id=who, text=text))


def test_a_collapsed_account_is_red_first_at_risk_and_alerted_after_one_import_and_nightly(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    _import_all(engine, tmp_path)
    result = run_job("nightly", engine, load_settings(database_url=db_url), now=NIGHTLY_AT)
    assert result.status == "ok", result.describe()

    with Session(engine) as s:
        accounts = {a.external_id: a for a in s.exec(select(Account)).all()}
        collapse = accounts["COL-1"]
        assert collapse.health_grade == "red" and collapse.health_score is not None
        assert collapse.health_score < default_scorecard().grades.red_below
        assert accounts["BIG-1"].health_grade == "green"
        # The first recompute backfilled a month of daily health from the imported history: trends on day one.
        days = set(s.exec(select(HealthSnapshot.day).where(HealthSnapshot.account_id == collapse.id)).all())
        assert days == {TODAY - timedelta(days=n) for n in range(31)}
        today = s.exec(select(HealthSnapshot).where(HealthSnapshot.account_id == collapse.id,
                                                    HealthSnapshot.day == TODAY)).one()
        critical = [c["name"] for c in today.measures[CRITICAL_KEY]["signals"]]
        assert critical == ["usage_collapse", "detractor", "support_escalation"]

        # The nightly rules warned the owner the same night.
        cas = s.exec(select(User).where(User.email == "cas@example.com")).one()
        alerts = s.exec(select(Alert).where(Alert.account_id == collapse.id, col(Alert.status) == "open")).all()
        at_risk = next(a for a in alerts if a.rule == "at_risk")
        assert at_risk.owner_id == cas.id
        assert at_risk.title.startswith("At risk: red; usage −9")
        assert "5 high/urgent tickets open" in at_risk.title
        assert at_risk.details["title_zh"].startswith("风险客户：红色；近30天用量较前30天 −9")
        assert not any(a.rule == "at_risk" for a in s.exec(select(Alert).where(
            Alert.account_id == accounts["BIG-1"].id)).all())

    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))
    card = _ask(router, "at-risk").cards[0]
    rows = card.sections[0].lines
    assert card.subtitle.startswith("2 at risk")
    assert rows[0].startswith("*Collapse Co* · $120,000 · ")
    assert re.search(r"why: red; usage −9\d % in the last 30 days vs the 30 before; detractor NPS answers in the "
                     r"last 90 days: 1; 5 high/urgent tickets open; down \d+ points in 30 days", rows[0]), rows[0]
    assert rows[1].startswith("*Small Slide*") and "why: detractor NPS answers in the last 90 days: 1" in rows[1]
    assert not any("Bigger Steady" in row for row in rows)

    why = next(sec.lines for sec in _ask(router, "account Collapse Co").cards[0].sections
               if sec.title == "Why this health")[0]
    # Red for a month already (the backfill knows it): unchanged in 7 days, the critical signals named first.
    assert re.match(r"\d+, red, unchanged in 7 days; critical: usage −9\d % in the last 30 days vs the 30 before, "
                    r"detractor NPS answers in the last 90 days: 1, 5 high/urgent tickets open; main drags: "
                    r"licence utilisation 6 % \(−\d+\)", why), why


def _excellent() -> dict[str, float | str]:
    """Signals on which every default measure scores (nearly) full points."""
    return {
        "status": "active", "stage": "adoption", "segment": "mid-market", "utilisation": 0.95, "usage_change": 15.0,
        "days_since_last_login": 0.0, "feature_breadth_30": 6.0, "open_high_tickets": 0.0, "tickets_30": 0.0,
        "tickets_prior_30": 0.0, "nps_last_score": 10.0, "days_since_last_note": 3.0, "days_to_renewal": 300.0,
        "usage_change_30": 5.0, "nps_detractors_90": 0.0,
    }


@pytest.mark.parametrize(
    ("signal", "value", "cap", "words"),
    [
        ("usage_change_30", -50.0, "red", "usage −50 % in the last 30 days vs the 30 before"),
        ("days_since_last_login", 14.0, "red", "no login by anyone for 14 days"),
        ("nps_detractors_90", 1.0, "yellow", "detractor NPS answers in the last 90 days: 1"),
        ("open_high_tickets", 3.0, "yellow", "3 high/urgent tickets open"),
    ],
)
def test_each_critical_signal_caps_the_grade_and_is_named_first(
    signal: str, value: float, cap: str, words: str
) -> None:
    card = default_scorecard()
    frame = pd.DataFrame([_excellent(), {**_excellent(), signal: value}], index=pd.Index([1, 2], name="account_id"))
    # Just short of the threshold, nothing is capped.
    short = {"usage_change_30": -49.9, "days_since_last_login": 13.0, "nps_detractors_90": 0.0,
             "open_high_tickets": 2.0}[signal]
    frame.loc[3] = {**_excellent(), signal: short}
    scored = score_frame(frame, card)
    assert scored.loc[1, "grade"] == "green" and scored.loc[3, "grade"] == "green"
    assert scored.loc[2, "grade"] == cap
    assert scored.loc[2, "score"] == card.ceiling(cap)  # 49 (red) or 74 (yellow)
    assert scored.loc[2, "uncapped_score"] > card.grades.green_from  # what the weighted mean alone said

    from lifecycle.scoring.health import snapshot_rows

    measures = snapshot_rows(scored.loc[[2]], TODAY, card)[0]["measures"]
    sentence = explain(scored.loc[2, "score"], cap, measures, scorecard=card)
    uncapped = round(scored.loc[2, "uncapped_score"])
    assert sentence.startswith(f"{card.ceiling(cap):.0f}, {cap}; critical: {words} (capped at {cap}; {uncapped} on "
                               "the measures alone)")
    zh = explain(scored.loc[2, "score"], cap, measures, scorecard=card, lang="zh")
    assert "；关键信号：" in zh and f"仅按指标为 {uncapped}" in zh


def test_critical_signals_do_not_cap_accounts_without_a_score() -> None:
    frame = pd.DataFrame([{"status": "active", "open_high_tickets": 5.0}], index=pd.Index([1], name="account_id"))
    scored = score_frame(frame, default_scorecard())
    assert scored.loc[1, "grade"] == "unknown" and np.isnan(scored.loc[1, "score"])
    assert not scored.loc[1, "critical_support_escalation"]


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_SCORECARD.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "scorecard.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('signal = "usage_change_30"', 'signal = "usage_change_31"',
         "critical.usage_collapse.signal: unknown signal 'usage_change_31'"),
        ("at_most = -50\n", "", "critical.usage_collapse: Value error, give exactly one of `at_least` or `at_most`"),
        ("at_least = 14\n", "at_least = 14\nat_most = 30\n",
         "critical.no_login: Value error, give exactly one of `at_least` or `at_most`"),
        ('cap = "yellow"', 'cap = "orange"', "critical.detractor.cap: Input should be 'red' or 'yellow'"),
        ('text = "{value:.0f} high/urgent tickets open"', 'text = "{count} high/urgent tickets open"',
         "critical.support_escalation.text: Value error, unknown placeholder {count}: use {value} or {threshold}"),
        ("red_below = 50", "red_below = 0", 'critical.usage_collapse.cap: \'red\' needs grades.red_below above 0'),
    ],
)
def test_a_bad_critical_signal_is_reported_naming_its_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as error:
        load_scorecard(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_at_risk_reasons_red_critical_falling_and_churn() -> None:
    definition = default_scorecard().at_risk  # falling 10 points, churn probability 0.5
    frame = pd.DataFrame(
        [
            {"health_grade": "green", "delta_7": -15.0, "delta_30": -20.0, "churn_probability": 0.1, "critical": None},
            {"health_grade": "yellow", "delta_7": -9.9, "delta_30": -10.0, "churn_probability": None,
             "critical": []},
            {"health_grade": "red", "delta_7": 2.0, "delta_30": np.nan, "churn_probability": 0.5,
             "critical": {"uncapped": 70.0, "signals": [{"name": "no_login", "value": 21.0}]}},
            {"health_grade": "yellow", "delta_7": -3.0, "delta_30": -4.0, "churn_probability": 0.49,
             "critical": None},
        ],
        index=pd.Index([1, 2, 3, 4], name="account_id"),
    )
    found = reasons(frame, definition)
    assert found[1] == []  # green: falling alone does not make a healthy account at risk
    assert found[2] == [RiskReason("falling", value=-10.0, days=30)]
    assert found[3] == [RiskReason("red"), RiskReason("critical", name="no_login", value=21.0),
                        RiskReason("churn", value=0.5)]
    assert found[4] == []
    assert reasons_text(found[3]) == "red; no login by anyone for 21 days; churn risk 50 %"
    assert reasons_text(found[3], "zh") == "红色；21 天无人登录；流失风险 50%"
    assert reasons_text(found[2], "zh") == "30 天内下降 10 分"


def test_the_at_risk_list_reads_the_stored_critical_signals_on_postgresql(pg_engine: Engine) -> None:
    """The list reads each account's critical signals out of its snapshot's JSON: the same on PostgreSQL."""
    from lifecycle.reports.portfolio import Scope, at_risk

    with Session(pg_engine) as s:
        quiet = Account(external_id="Q-1", name="Quiet", name_key="quiet", arr=50_000, health_score=70.0,
                        health_grade="yellow", health_at=TODAY)
        capped = Account(external_id="C-1", name="Capped", name_key="capped", arr=10_000, health_score=74.0,
                         health_grade="yellow", health_at=TODAY)
        s.add_all([quiet, capped])
        s.flush()
        critical = {"uncapped": 88.0, "signals": [{"name": "support_escalation", "value": 4.0, "threshold": 3.0,
                                                   "cap": "yellow"}]}
        s.add_all([
            HealthSnapshot(account_id=quiet.id or 0, day=TODAY, score=70.0, grade="yellow", measures={},
                           scorecard_version="t"),
            HealthSnapshot(account_id=capped.id or 0, day=TODAY, score=74.0, grade="yellow",
                           measures={CRITICAL_KEY: critical}, scorecard_version="t"),
        ])
        s.commit()
        rows, count, _arr = at_risk(s, Scope())
    assert count == 1 and rows[0].name == "Capped"
    assert reasons_text(rows[0].reasons) == "4 high/urgent tickets open"
