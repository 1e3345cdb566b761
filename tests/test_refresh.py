"""Fresh within seconds: usage posted to the ingest API shows in the account's health and card after the server's
next refresh tick (the tick is called directly: behaviour, not timing)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from adapters.console.render import render_text
from bot.core.messages import Incoming
from bot.core.router import Router, Services
from bot.push.refresh import refresh_once
from lifecycle.recompute import read_marks, recompute
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, User
from lifecycle.store.settings import load_settings
from tests.test_ingest_api import BEARER, TOKEN, serve

TODAY = datetime.now(UTC).date()


@pytest.fixture
def portfolio(engine: Engine) -> Engine:
    with session_scope(engine) as s:
        s.add(User(email="maya@example.com", name="Maya", role="admin"))
        s.add(Account(external_id="A1", name="Acme", name_key="acme", seats=4, stage="adoption",
                      contract_start=TODAY - timedelta(days=200), renewal_date=TODAY + timedelta(days=150)))
    with session_scope(engine) as s:
        recompute(s, as_of=TODAY, scorecard=default_scorecard(), machine=load_stage_machine(), with_insight=False)
    return engine


@pytest.fixture
def http(portfolio: Engine, db_url: str) -> Iterator[httpx.Client]:
    # the server's own ticker is off: the test calls the tick itself
    yield from serve(portfolio, db_url, refresh_seconds=0)


def _track(mid: str, user: str, event: str, at: datetime) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": event, "messageId": mid,
            "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "context": {"groupId": "A1"}}


def _acme(engine: Engine) -> Account:
    with Session(engine) as s:
        return s.exec(select(Account).where(Account.external_id == "A1")).one()


def test_ingested_usage_shows_in_health_and_card_after_the_refresh_tick(http: httpx.Client, portfolio: Engine,
                                                                       db_url: str) -> None:
    before = _acme(portfolio)
    assert before.health_grade == "unknown" and before.health_score is None
    now = datetime.now(UTC).replace(tzinfo=None)
    calls = [_track(f"m{i}-{u}", f"user{u}", "Logged In" if i == 0 else "Report Exported", now - timedelta(minutes=i))
             for u in range(4) for i in range(3)]
    response = http.post("/api/usage", json={"batch": calls}, headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(calls)
    with Session(portfolio) as s:
        assert [a for a, _ in read_marks(s)] == [before.id]

    settings = load_settings(database_url=db_url, ingest_token=TOKEN)
    summary = refresh_once(portfolio, settings)
    assert summary is not None and (summary.accounts, summary.mode) == (1, "incremental")
    after = _acme(portfolio)
    assert after.health_score is not None and after.health_grade != "unknown"
    assert after.health_at == TODAY
    with Session(portfolio) as s:
        # only the run's own stage move (if the rules moved Acme) stays marked, for the next tick
        assert [a for a, _ in read_marks(s)] == ([before.id] if summary.stage_moves else [])
        snapshot = s.execute(text("SELECT score FROM health_snapshot WHERE account_id = :a AND day = :d"),
                             {"a": before.id, "d": TODAY.isoformat() if portfolio.dialect.name == "sqlite"
                              else TODAY}).scalar_one()
    assert snapshot == after.health_score

    router = Router(Services(engine=portfolio, settings=settings, today=lambda: TODAY))
    card = render_text(router.handle(Incoming(platform="console", sender_id="maya@example.com", text="account Acme")))
    assert f"{after.health_score:.0f}" in card, card
    # nothing changed since: the next tick does nothing (after rescoring a stage move, if there was one)
    if summary.stage_moves:
        assert refresh_once(portfolio, settings) is not None
    assert refresh_once(portfolio, settings) is None


def test_the_tick_date_is_today_in_the_configured_timezone(portfolio: Engine, db_url: str) -> None:
    settings = load_settings(database_url=db_url, timezone="Pacific/Kiritimati")
    with session_scope(portfolio) as s:
        s.execute(text("UPDATE account SET seats = 9"))
    summary = refresh_once(portfolio, settings)
    assert summary is not None
    assert summary.as_of == datetime.now(settings.tz).date()
    assert isinstance(summary.as_of, date)
