"""The account card's stored facts (lifecycle/reports/cardfacts.py): the same KPIs as the live computation, used only
while nothing they came from has changed, and the same card text either way."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from adapters.console.render import render_card
from bot.core.messages import Incoming
from bot.core.router import Router, Services
from lifecycle.intake.demo import seed_demo
from lifecycle.recompute import recompute
from lifecycle.reports import cardfacts
from lifecycle.reports.accounts import add_note
from lifecycle.reports.analytics import account_kpis, portfolio_account_kpis
from lifecycle.reports.money import load_rates
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import StageMachine, load_stage_machine, move_stage
from lifecycle.store.models import Account
from lifecycle.store.settings import load_settings

TODAY = date(2025, 6, 15)
MANAGER = "U0DEMO01"  # the demo's CS manager, who sees every account


@pytest.fixture
def machine() -> StageMachine:
    return load_stage_machine()


@pytest.fixture
def world(session: Session, machine: StageMachine) -> Session:
    seed_demo(session, today=TODAY)
    recompute(session, as_of=TODAY, scorecard=default_scorecard(), machine=machine, with_insight=False)
    session.commit()
    return session


def _ids(session: Session) -> list[int]:
    return [int(i) for i in session.execute(text("SELECT id FROM account ORDER BY id")).scalars()]


@pytest.mark.parametrize("offset", [0, 40, -20])
def test_the_portfolio_pass_gives_each_accounts_own_kpis(world: Session, machine: StageMachine, offset: int) -> None:
    day = TODAY - timedelta(days=offset)
    rates = load_rates(world, on=day)
    together = portfolio_account_kpis(world, machine, today=day, rates=rates)
    assert sorted(together) == _ids(world)
    for account_id in _ids(world):
        assert together[account_id] == account_kpis(world, machine, account_id, today=day, rates=rates)
    assert any(r.value is not None for results in together.values() for r in results)


def test_stored_facts_are_used_for_their_day_and_equal_the_live_ones(world: Session, machine: StageMachine) -> None:
    rates = load_rates(world, on=TODAY)
    note = cardfacts.store(world, as_of=TODAY, machine=machine, rates=rates)
    world.commit()
    assert note.startswith(f"card facts of {len(_ids(world))} accounts")
    for account_id in _ids(world):
        stored = cardfacts.stored_account_kpis(world, machine, account_id, today=TODAY, rates=rates)
        assert stored is not None
        assert stored == account_kpis(world, machine, account_id, today=TODAY, rates=rates)
    some = _ids(world)[0]
    assert cardfacts.stored_account_kpis(world, machine, some, today=TODAY + timedelta(days=1), rates=rates) is None
    other_currency = load_rates(world, "EUR", on=TODAY)
    if other_currency.factor("USD") != 1.0:
        assert cardfacts.stored_account_kpis(world, machine, some, today=TODAY, rates=other_currency) is None


def test_any_change_to_an_input_falls_back_to_the_live_kpis(world: Session, machine: StageMachine) -> None:
    rates = load_rates(world, on=TODAY)
    cardfacts.store(world, as_of=TODAY, machine=machine, rates=rates)
    world.commit()
    a, b, c, d, e = _ids(world)[:5]

    def fresh(account_id: int) -> bool:
        return cardfacts.stored_account_kpis(world, machine, account_id, today=TODAY, rates=rates) is not None

    add_note(world, world.get(Account, a), "renewal call booked", author_id=None, kind="call")  # type: ignore[arg-type]
    # A corrected day of usage: same rows, other figures.
    world.execute(text("UPDATE usage_daily SET active_users = active_users + 1 WHERE account_id = :id AND day = "
                       "(SELECT MAX(day) FROM usage_daily WHERE account_id = :id)"), {"id": b})
    target = world.get(Account, c)
    assert target is not None
    move_stage(world, target, "expansion" if target.stage != "expansion" else "adoption", machine=machine,
               reason="upsell signed", actor_id=None)
    world.execute(text("UPDATE account SET seats = seats + 5 WHERE id = :id"), {"id": d})
    world.flush()
    assert [fresh(x) for x in (a, b, c, d, e)] == [False, False, False, False, True]
    for account_id in (a, b, c, d, e):
        assert (cardfacts.card_kpis(world, machine, account_id, today=TODAY, rates=rates)
                == account_kpis(world, machine, account_id, today=TODAY, rates=rates))


def test_the_card_text_is_the_same_with_and_without_stored_facts(world: Session, engine: Engine,
                                                                 machine: StageMachine) -> None:
    settings = load_settings(database_url="sqlite://", csm_read_scope="all")
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
    names = [str(n) for n in world.execute(text("SELECT external_id FROM account ORDER BY id")).scalars()]

    def cards() -> list[str]:
        out = []
        for name in names:
            reply = router.handle(Incoming(platform="slack", sender_id=MANAGER, text=f"account {name}"))
            assert reply.cards, reply.text
            out.append("\n".join(render_card(card) for card in reply.cards))
        return out

    live = cards()
    cardfacts.store(world, as_of=TODAY, machine=machine)
    world.commit()
    assert world.execute(text("SELECT COUNT(*) FROM account_card_fact")).scalar_one() == len(names)
    assert cards() == live
    assert sum(" KPIs" in card for card in live) >= len(names) // 2  # most cards show their stage KPIs


def test_the_nightly_insight_step_stores_the_card_facts(world: Session, machine: StageMachine) -> None:
    summary = recompute(world, as_of=TODAY, scorecard=default_scorecard(), machine=machine)
    world.commit()
    assert "card facts of" in summary.insight
    day = world.execute(text("SELECT MIN(as_of), MAX(as_of), COUNT(*) FROM account_card_fact")).one()
    assert (str(day[0])[:10], str(day[1])[:10], day[2]) == (TODAY.isoformat(), TODAY.isoformat(), len(_ids(world)))
