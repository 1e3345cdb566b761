"""`alert-stats`: per-rule counts and precision (useful ÷ rated) over a period, and the settings file for rules."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from bot.core.messages import Incoming
from bot.core.router import Router, Services
from lifecycle.scoring.alerts import alert_stats
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, Alert, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 6, 30)


@pytest.fixture
def seeded(engine: Engine) -> tuple[int, int]:
    with Session(engine) as s:
        boss = User(email="boss@example.com", name="Bea Boss", role="manager")
        csm = User(email="csm@example.com", name="Cy Csm", role="csm")
        s.add_all([boss, csm])
        s.flush()
        acme = Account(external_id="A", name="Acme", name_key="acme", owner_id=csm.id)
        s.add(acme)
        s.flush()

        def alert(n: int, rule: str, owner: int | None, feedback: str | None, day: date, acked: bool = False) -> Alert:
            created = datetime.combine(day, datetime.min.time())
            return Alert(
                account_id=acme.id or 0,
                owner_id=owner,
                rule=rule,
                dedupe_key=f"{n}",
                feedback=feedback,
                created_at=created,
                acknowledged_at=created if acked else None,
            )

        s.add_all(
            [
                # usage_drop: 3 raised in the window, 2 rated useful, 1 not useful → precision 2/3
                alert(1, "usage_drop", csm.id, "useful", date(2026, 6, 1), acked=True),
                alert(2, "usage_drop", csm.id, "useful", date(2026, 6, 10)),
                alert(3, "usage_drop", boss.id, "not_useful", date(2026, 6, 20)),
                # grade_red: 1 raised, not rated
                alert(4, "grade_red", csm.id, None, date(2026, 6, 25), acked=True),
                # outside the 90-day window, and a renewal prompt: neither counts
                alert(5, "usage_drop", csm.id, "not_useful", date(2026, 1, 2)),
                alert(6, "renewal_prompt", csm.id, None, date(2026, 6, 5)),
            ]
        )
        s.commit()
        return boss.id or 0, csm.id or 0


def test_counts_and_precision_per_rule(engine: Engine, seeded: tuple[int, int]) -> None:
    with Session(engine) as s:
        stats = {r.rule: r for r in alert_stats(s, since=datetime(2026, 4, 1))}
    assert set(stats) == {"usage_drop", "grade_red"}
    drop = stats["usage_drop"]
    assert (drop.raised, drop.acknowledged, drop.useful, drop.not_useful) == (3, 1, 2, 1)
    assert drop.precision == pytest.approx(2 / 3)
    assert stats["grade_red"].precision is None and stats["grade_red"].acknowledged == 1


def test_owner_filter(engine: Engine, seeded: tuple[int, int]) -> None:
    _, csm = seeded
    with Session(engine) as s:
        stats = {r.rule: r for r in alert_stats(s, since=datetime(2026, 4, 1), owner_id=csm)}
    assert stats["usage_drop"].raised == 2 and stats["usage_drop"].precision == 1.0


def test_command_for_a_manager_and_a_csm(engine: Engine, seeded: tuple[int, int]) -> None:
    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))
    manager = router.handle(Incoming(platform="console", sender_id="boss@example.com", text="alert-stats"))
    card = manager.cards[0]
    assert card.title == "Alert rules — last 90 days (all owners)"
    assert card.subtitle.startswith("4 alerts; 3 rated, 67% (2/3) found useful.")
    assert "usage_drop: 3 raised · 1 acknowledged · precision 67% (2/3)" in card.sections[0].lines
    assert "grade_red: 1 raised · 1 acknowledged · precision not rated yet" in card.sections[0].lines
    mine = router.handle(Incoming(platform="console", sender_id="csm@example.com", text="alert-stats 30"))
    assert mine.cards[0].title == "Alert rules — last 30 days (mine)"
    assert "usage_drop: 2 raised · 1 acknowledged · precision 100% (2/2)" in mine.cards[0].sections[0].lines
    empty = router.handle(Incoming(platform="console", sender_id="boss@example.com", text="alert-stats 1"))
    assert empty.text == "No alerts in the last 1 days (all owners)."


def test_alerts_file_setting_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CSBOT_ALERTS_FILE"):
        load_settings(alerts_file=tmp_path / "missing.toml")
