"""Renewal prompts: each window exactly once per account over a daily run, and a prompt that recalls what the
account achieved over the contract (usage growth, features, tickets resolved, promoter quotes) next to health,
NPS and open risks."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pandas as pd
from sqlmodel import Session, col, select

from bot.push.notifier import payload_to_reply
from bot.push.renewals import due_prompts, renewal_prompts
from bot.views.alert_cards import alert_reply
from lifecycle.scoring.alerts import AlertConfig, RenewalPromptConfig, default_alert_config
from lifecycle.store.models import Account, Alert, Delivery, HealthSnapshot, NpsResponse, Ticket, UsageDaily, User

START = date(2026, 1, 1)


def _owner(session: Session) -> User:
    user = User(email="sam@example.com", name="Sam", role="csm", slack_user_id="USAM")
    session.add(user)
    session.commit()
    return user


def _account(session: Session, key: str, owner: User, renewal: date | None, **fields: object) -> Account:
    account = Account(external_id=key, name=f"{key} Inc", name_key=f"{key.lower()} inc", owner_id=owner.id,
                      renewal_date=renewal, arr=80_000.0, **fields)  # type: ignore[arg-type]
    session.add(account)
    session.commit()
    return account


def _prompts(session: Session) -> list[Alert]:
    return list(session.exec(select(Alert).where(Alert.rule == "renewal_prompt").order_by(col(Alert.id))).all())


def test_current_window_is_the_smallest_at_or_above_the_days_left() -> None:
    accounts = pd.DataFrame({
        "account_id": [1, 2, 3, 4, 5, 6],
        "renewal_date": [START + timedelta(days=d) for d in (121, 120, 91, 30, 0, 5)],
    })
    due = due_prompts(accounts, START, (120, 90, 60, 30))
    assert due["account_id"].tolist() == [2, 3, 4, 5, 6]
    assert due["window"].tolist() == [120, 120, 30, 30, 30]
    assert due["dedupe_key"].tolist()[:2] == ["2:renewal:2026-05-01:120", "3:renewal:2026-04-02:120"]


def test_each_window_exactly_once_over_130_daily_runs(session: Session) -> None:
    owner = _owner(session)
    early = _account(session, "EARLY", owner, START + timedelta(days=125))
    late = _account(session, "LATE", owner, START + timedelta(days=100))  # first seen inside the 120 window
    churned = _account(session, "GONE", owner, START + timedelta(days=60), status="churned")
    _account(session, "NODATE", owner, None)
    config = default_alert_config()
    raised = []
    for offset in range(131):
        today = START + timedelta(days=offset)
        raised.append(renewal_prompts(session, today=today, now=datetime.combine(today, time(12)), config=config))
        session.commit()

    prompts = _prompts(session)
    by_account = {a.id: [p for p in prompts if p.account_id == a.id] for a in (early, late, churned)}
    assert [p.details["window"] for p in by_account[early.id]] == [120, 90, 60, 30]
    assert [p.details["days_left"] for p in by_account[early.id]] == [120, 90, 60, 30]
    assert [p.created_at.date() for p in by_account[early.id]] == [
        START + timedelta(days=d) for d in (5, 35, 65, 95)
    ]
    assert [p.details["window"] for p in by_account[late.id]] == [120, 90, 60, 30]
    assert [p.details["days_left"] for p in by_account[late.id]] == [100, 90, 60, 30]
    assert by_account[churned.id] == []
    assert sum(raised) == 8
    # One delivery per prompt to the owner; each new prompt resolves the one before.
    sent = session.exec(select(Delivery).where(Delivery.kind == "alert")).all()
    assert sorted(d.alert_id or 0 for d in sent) == sorted(p.id or 0 for p in prompts)
    assert {d.target for d in sent} == {"USAM"}
    assert [p.status for p in by_account[early.id]] == ["resolved", "resolved", "resolved", "open"]


def test_same_day_rerun_and_configured_windows(session: Session) -> None:
    owner = _owner(session)
    account = _account(session, "ACME", owner, START + timedelta(days=45))
    config = default_alert_config()
    now = datetime.combine(START, time(12))
    assert renewal_prompts(session, today=START, now=now, config=config) == 1
    assert renewal_prompts(session, today=START, now=now + timedelta(hours=1), config=config) == 0
    session.commit()
    assert [p.dedupe_key for p in _prompts(session)] == [f"{account.id}:renewal:2026-02-15:60"]

    custom = config.model_copy(update={"renewal_prompts": RenewalPromptConfig(windows=(50, 45))})
    assert renewal_prompts(session, today=START, now=now, config=custom) == 1
    off = config.model_copy(update={"renewal_prompts": RenewalPromptConfig(enabled=False)})
    assert renewal_prompts(session, today=START + timedelta(days=15), now=now, config=off) == 0


def _seed_history(session: Session, account: Account, today: date) -> None:
    a = int(account.id or 0)
    contract = account.contract_start
    assert contract is not None
    rows: list[object] = []
    for i in range(30):  # first month: 10 active users a day
        rows.append(UsageDaily(account_id=a, day=contract + timedelta(days=i), active_users=10, events=100))
    for i in range(30):  # last 30 days: 25 a day
        rows.append(UsageDaily(account_id=a, day=today - timedelta(days=i), active_users=25, events=300))
    rows += [
        UsageDaily(account_id=a, day=contract + timedelta(days=3), feature="reports", events=5),
        UsageDaily(account_id=a, day=today - timedelta(days=2), feature="api", events=7),
        UsageDaily(account_id=a, day=contract - timedelta(days=10), feature="legacy", events=9),  # before contract
        UsageDaily(account_id=a, day=today - timedelta(days=2), feature="exports", events=0),  # never really used
    ]
    closed = datetime.combine(contract, time(9))
    rows += [
        Ticket(account_id=a, ticket_id=f"T{i}", opened_at=closed + timedelta(days=i), status="closed",
               closed_at=closed + timedelta(days=i + 2))
        for i in range(3)
    ]
    rows += [
        Ticket(account_id=a, ticket_id="OLD", opened_at=closed - timedelta(days=20), status="closed",
               closed_at=closed - timedelta(days=15)),
        Ticket(account_id=a, ticket_id="OPEN", opened_at=closed + timedelta(days=40)),
    ]
    at = datetime.combine(today, time(10))
    rows += [
        NpsResponse(account_id=a, contact_key="old@x", score=10, comment="Great pilot", responded_at=closed
                    - timedelta(days=30)),
        NpsResponse(account_id=a, contact_key="d@x", score=3, comment="Slow exports", responded_at=at
                    - timedelta(days=90)),
        NpsResponse(account_id=a, contact_key="p@x", score=10, comment="Saved us hours every week",
                    responded_at=at - timedelta(days=40)),
        NpsResponse(account_id=a, contact_key="q@x", score=9, comment="", responded_at=at - timedelta(days=5)),
    ]
    rows += [
        HealthSnapshot(account_id=a, day=today, score=72.0, grade="yellow", scorecard_version="t"),
        HealthSnapshot(account_id=a, day=today - timedelta(days=7), score=80.0, grade="green", scorecard_version="t"),
        Alert(account_id=a, owner_id=account.owner_id, rule="usage_drop", severity="warning", dedupe_key="risk-1",
              title="Usage fell 40 % vs the prior 30 days", details={"title_zh": "用量较前 30 天下降 40%"}),
        Alert(account_id=a, owner_id=account.owner_id, rule="stale_data", severity="info", dedupe_key="risk-2",
              status="resolved", title="No usage data for 4 days"),
    ]
    session.add_all(rows)
    session.commit()


def test_prompt_recalls_health_nps_risks_and_achievements(session: Session) -> None:
    owner = _owner(session)
    today = date(2026, 9, 2)
    account = _account(session, "ACME", owner, today + timedelta(days=90), contract_start=date(2025, 12, 1),
                       health_score=72.0, health_grade="yellow", stage="renewal")
    _seed_history(session, account, today)
    config: AlertConfig = default_alert_config()

    assert renewal_prompts(session, today=today, now=datetime.combine(today, time(12)), config=config) == 1
    session.commit()
    [delivery] = session.exec(select(Delivery)).all()
    reply = payload_to_reply(delivery.payload)
    card = reply.cards[0]
    assert reply.text == "📅 ACME Inc: Renewal in 90 days (2026-12-01)"
    fields = {f.label: f.value for f in card.fields}
    assert fields["Renewal"] == "2026-12-01 (in 90 d)"
    assert fields["Health"] == "72 🟡 yellow · 7 d −8"
    assert fields["NPS (latest)"] == "9 (2026-08-28)"
    sections = {s.title: s.lines for s in card.sections}
    assert sections["Open risks"] == (f"🟠 #{_risk_id(session)} Usage fell 40 % vs the prior 30 days",)
    assert sections["Achievements since 2025-12-01"] == (
        "Usage: 10 → 25 average daily active users (first month vs last 30 days, +150 %)",
        "Features adopted: 2 (api, reports)",
        "Support tickets resolved: 3",
        "“Saved us hours every week” — NPS 10",
    )
    assert sections["Looking ahead"] == (config.renewal_prompts.next_steps,)

    prompt = _prompts(session)[0]
    zh = alert_reply(prompt, account, "zh").cards[0]
    zh_sections = {s.title: s.lines for s in zh.sections}
    assert zh.title == "📅 ACME Inc — 90 天后续约（2026-12-01）"
    assert zh_sections["自 2025-12-01 以来的成果"][1:3] == ("已采用功能：2 个（api, reports）", "已解决工单：3 个")
    assert zh_sections["未决风险"] == (f"🟠 #{_risk_id(session)} 用量较前 30 天下降 40%",)


def test_prompt_without_history_says_so(session: Session) -> None:
    owner = _owner(session)
    _account(session, "NEW", owner, START + timedelta(days=30))
    renewal_prompts(session, today=START, now=datetime.combine(START, time(12)), config=default_alert_config())
    card = payload_to_reply(session.exec(select(Delivery)).one().payload).cards[0]
    sections = {s.title: s.lines for s in card.sections}
    assert sections["Open risks"] == ("No open alerts.",)
    assert sections["Achievements since 2025-01-31"] == (
        "Usage growth: not enough usage data", "Features adopted: none recorded", "Support tickets resolved: 0",
        "No promoter quotes yet.",
    )
    assert {f.label: f.value for f in card.fields}["NPS (latest)"] == "none"


def _risk_id(session: Session) -> int:
    return int(session.exec(select(Alert.id).where(Alert.dedupe_key == "risk-1")).one() or 0)
