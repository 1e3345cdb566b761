"""Digests: the owner's daily digest (once per local day from 09:00, with new alerts, renewals this month and the
biggest health movers) and the managers' weekly portfolio summary (Mondays only, team or whole portfolio)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from sqlmodel import Session, col, select

from bot.core.messages import Reply
from bot.push.digests import manager_weekly, owner_digests
from bot.push.notifier import payload_to_reply
from lifecycle.scoring.alerts import default_alert_config
from lifecycle.store.models import Account, Alert, Delivery, HealthSnapshot, User

CONFIG = default_alert_config()
MONDAY = date(2026, 6, 1)
# Sam works in New York (UTC−4 in June): 09:00 local is 13:00 UTC.
BEFORE_NINE = datetime(2026, 6, 1, 12, 59)
AFTER_NINE = datetime(2026, 6, 1, 13, 30)


@pytest.fixture
def world(session: Session) -> dict[str, int]:
    maya = User(email="maya@example.com", name="Maya", role="manager", slack_user_id="UMAYA")
    ada = User(email="ada@example.com", name="Ada", role="admin", telegram_user_id="900", timezone="Asia/Tokyo")
    session.add_all([maya, ada])
    session.commit()
    sam = User(email="sam@example.com", name="Sam", role="csm", slack_user_id="USAM", timezone="America/New_York",
               manager_id=maya.id)
    kim = User(email="kim@example.com", name="Kim", role="csm", telegram_user_id="333")  # nobody's report
    ghost = User(email="ghost@example.com", name="Ghost", role="csm")  # owns an account, no chat identity
    session.add_all([sam, kim, ghost])
    session.commit()
    specs = [
        ("Rising", sam, date(2026, 6, 20), "adoption", 75.0, 60.0),
        ("Falling", sam, date(2026, 7, 2), "renewal", 62.0, 80.0),
        ("Steady", sam, date(2026, 5, 30), "adoption", 70.0, 70.0),
        ("Kims", kim, date(2026, 6, 10), "onboarding", 40.0, 45.0),
        ("Ghosts", ghost, None, "expansion", 90.0, 90.0),
    ]
    ids: dict[str, int] = {u.name: int(u.id or 0) for u in (maya, ada, sam, kim, ghost)}
    for name, owner, renewal, stage, score, score_7 in specs:
        grade = "green" if score >= 70 else "yellow" if score >= 50 else "red"
        account = Account(external_id=name.upper(), name=name, name_key=name.lower(), owner_id=owner.id,
                          renewal_date=renewal, stage=stage, arr=10_000.0, health_score=score, health_grade=grade)
        session.add(account)
        session.commit()
        ids[name] = int(account.id or 0)
        session.add_all([
            HealthSnapshot(account_id=ids[name], day=MONDAY, score=score, grade=grade, scorecard_version="t"),
            HealthSnapshot(account_id=ids[name], day=MONDAY - timedelta(days=7), score=score_7, grade=grade,
                           scorecard_version="t"),
        ])
    session.commit()
    return ids


def _alert(session: Session, account_id: int, owner_id: int, key: str, created: datetime, **fields: object) -> Alert:
    alert = Alert(account_id=account_id, owner_id=owner_id, rule="usage_drop", dedupe_key=key, created_at=created,
                  title=f"Usage fell ({key})", **fields)  # type: ignore[arg-type]
    session.add(alert)
    session.commit()
    return alert


def _sent(session: Session, kind: str) -> list[tuple[str, Reply]]:
    rows = session.exec(select(Delivery).where(Delivery.kind == kind).order_by(col(Delivery.id))).all()
    return [(d.target, payload_to_reply(d.payload)) for d in rows]


def _sections(reply: Reply) -> dict[str, tuple[str, ...]]:
    return {s.title: s.lines for s in reply.cards[0].sections}


def test_owner_digest_once_per_local_day_from_nine(session: Session, world: dict[str, int]) -> None:
    sam, rising = world["Sam"], world["Rising"]
    held = _alert(session, rising, sam, "held", datetime(2026, 6, 1, 6, 0), severity="warning",
                  details={"digest": True})
    _alert(session, rising, sam, "gone", datetime(2026, 6, 1, 7, 0), status="resolved")
    _alert(session, world["Kims"], world["Kim"], "kims", datetime(2026, 6, 1, 7, 0))

    assert owner_digests(session, now=BEFORE_NINE, config=CONFIG) == 1  # only Kim (UTC) is past 09:00
    assert [target for target, _ in _sent(session, "digest")] == ["333"]
    assert owner_digests(session, now=AFTER_NINE, config=CONFIG) == 1  # now Sam
    session.commit()
    assert owner_digests(session, now=AFTER_NINE + timedelta(hours=9), config=CONFIG) == 0  # 22:30 in New York
    assert [target for target, _ in _sent(session, "digest")] == ["333", "USAM"]

    reply = _sent(session, "digest")[1][1]
    assert reply.text == "☀️ Your daily digest for 2026-06-01"
    assert _sections(reply) == {
        "New alerts (1)": (f"🟠 #{held.id} Rising: Usage fell (held) (not sent separately: daily limit)",),
        "Renewals this month (1)": ("2026-06-20 Rising · $10,000 · 🟢 green",),
        "Biggest health drops (7 days)": ("Falling: 62 (−18)",),
        "Biggest health gains (7 days)": ("Rising: 75 (+15)",),
    }

    # The next local day: only the alerts raised since the last digest.
    later = _alert(session, world["Falling"], sam, "later", AFTER_NINE + timedelta(hours=2), severity="critical")
    next_day = AFTER_NINE + timedelta(days=1)
    assert owner_digests(session, now=next_day, config=CONFIG) == 2  # Sam and Kim again
    session.commit()
    reply = dict(_sent(session, "digest"))["USAM"]  # the latest to Sam
    assert _sections(reply)["New alerts (1)"] == (f"🔴 #{later.id} Falling: Usage fell (later)",)


def test_no_digest_without_accounts_or_chat_identity(session: Session, world: dict[str, int]) -> None:
    owner_digests(session, now=AFTER_NINE + timedelta(hours=3), config=CONFIG)
    targets = {target for target, _ in _sent(session, "digest")}
    assert targets == {"USAM", "333"}  # Maya and Ada own nothing; Ghost cannot be reached


def test_manager_weekly_on_mondays_only(session: Session, world: dict[str, int]) -> None:
    monday_ten_utc = datetime(2026, 6, 1, 10, 0)  # Maya (UTC) 10:00 Monday; Ada (Tokyo) 19:00 Monday
    assert manager_weekly(session, now=monday_ten_utc, config=CONFIG) == 2
    session.commit()
    assert manager_weekly(session, now=monday_ten_utc + timedelta(hours=4), config=CONFIG) == 0
    for day in range(1, 7):  # Tuesday … Sunday
        assert manager_weekly(session, now=monday_ten_utc + timedelta(days=day), config=CONFIG) == 0
    assert manager_weekly(session, now=monday_ten_utc + timedelta(days=7), config=CONFIG) == 2

    sent = dict(_sent(session, "weekly")[:2])
    team, everything = sent["UMAYA"], sent["900"]
    assert team.text == "📊 Weekly portfolio summary (your team)"
    assert {f.label: f.value for f in team.cards[0].fields}["Active accounts"] == "3"  # Sam's three
    assert {f.label: f.value for f in everything.cards[0].fields}["Active accounts"] == "5"
    assert everything.text == "📊 Weekly portfolio summary (all accounts)"
    assert team.images[0].png.startswith(b"\x89PNG")
    stage_lines = _sections(team)["By stage"]
    assert any(line.startswith("Adoption: 2 · $20,000") for line in stage_lines), stage_lines


def test_manager_weekly_not_before_nine_local(session: Session, world: dict[str, int]) -> None:
    # 08:30 UTC Monday: Maya (UTC) is before 09:00, Ada (Tokyo, 17:30 Monday) is after.
    assert manager_weekly(session, now=datetime(2026, 6, 1, 8, 30), config=CONFIG) == 1
    assert [target for target, _ in _sent(session, "weekly")] == ["900"]


def test_manager_weekly_carries_retention_and_funnel_readings(session: Session, world: dict[str, int]) -> None:
    from lifecycle.store.models import ArrChange

    # Sam's "Falling" account signed in 2025 at 10k and lost 4k of it in May 2026: NRR 60 % over 12 months.
    for name in ("Rising", "Steady"):  # no revenue history: counted from their contract start, in January
        account = session.get(Account, world[name])
        assert account is not None
        account.contract_start = date(2026, 1, 15)
        session.add(account)
    session.add_all([
        ArrChange(account_id=world["Falling"], day=date(2025, 3, 1), kind="new", arr_after=10_000.0),
        ArrChange(account_id=world["Falling"], day=date(2026, 5, 1), kind="contraction", arr_before=10_000.0,
                  arr_after=6_000.0),
    ])
    session.commit()
    assert manager_weekly(session, now=datetime(2026, 6, 1, 10, 0), config=CONFIG) == 2
    sent = dict(_sent(session, "weekly")[:2])
    team = sent["UMAYA"]
    lines = _sections(team)["Retention and funnel"]
    # Sam's book: Falling (with its history), Rising and Steady (new logos of January). Only Falling counts at the
    # start of the 12 months.
    assert lines[0] == "NRR 60 % and GRR 60 % over 12 months; 0 of 1 logos churned (0 %)."
    assert len(lines) == 4 and lines[2].endswith(".")
    assert [image.filename for image in team.images] == ["stages.png", "retention.png"]
    assert all(image.png.startswith(b"\x89PNG") for image in team.images)
