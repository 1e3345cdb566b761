"""Portfolios the chat tests run on: the demo portfolio seeded at a test's date, and the recompute after seeding."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Engine
from sqlmodel import Session

from lifecycle.intake.demo import seed_demo
from lifecycle.recompute import recompute
from lifecycle.scoring.health import load_scorecard
from lifecycle.scoring.stages import load_stage_machine


def recompute_at(engine: Engine, today: date) -> None:
    """Health, risk and stages of every account as of `today`, with the default scorecard and stage machine."""
    with Session(engine) as s:
        recompute(s, as_of=today, scorecard=load_scorecard(None), machine=load_stage_machine(None))
        s.commit()


def seed_demo_at(engine: Engine, today: date, *, accounts: int = 60, recomputed: bool = False) -> None:
    """The demo portfolio (`csbot demo`) as of `today`; `recomputed` also runs the recompute on it."""
    with Session(engine) as s:
        seed_demo(s, accounts=accounts, today=today)
        s.commit()
    if recomputed:
        recompute_at(engine, today)
