"""The whole-portfolio recompute (health + stages) on SQLite and PostgreSQL, and console transcripts over it."""

from __future__ import annotations

import io
import re
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from adapters.console import run_console
from bot.core.router import Router, Services
from lifecycle.intake.demo import seed_demo
from lifecycle.intake.importers import import_csv
from lifecycle.recompute import backfill_health, recompute
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.models import Account, HealthSnapshot, StageTransition
from lifecycle.store.settings import load_settings

TODAY = date(2026, 11, 23)


def _snapshots(session: Session) -> list[tuple[int, date, float, str]]:
    rows = session.exec(
        select(HealthSnapshot.account_id, HealthSnapshot.day, HealthSnapshot.score, HealthSnapshot.grade).order_by(
            col(HealthSnapshot.account_id), col(HealthSnapshot.day)
        )
    ).all()
    return [(a, d, s, g) for a, d, s, g in rows]


def _run(session: Session, day: date = TODAY) -> int:
    summary = recompute(session, as_of=day, scorecard=default_scorecard(), machine=load_stage_machine())
    session.commit()
    return summary.stage_moves


def test_recompute_is_idempotent_per_day(session: Session) -> None:
    seed_demo(session, accounts=60, today=TODAY)
    session.commit()
    _run(session)
    first = _snapshots(session)
    transitions = session.exec(select(func.count()).select_from(StageTransition)).one()
    # Every active account scored once for today (churned ones are not rescored), after a backfilled month of
    # daily health: the first recompute of never-scored accounts.
    assert len([row for row in first if row[1] == TODAY]) == 55
    assert {d for _, d, _, _ in first} == {date.fromordinal(TODAY.toordinal() - n) for n in range(31)}
    assert _run(session) == 0
    assert _snapshots(session) == first
    assert session.exec(select(func.count()).select_from(StageTransition)).one() == transitions


def test_recompute_keeps_a_manual_stage(session: Session) -> None:
    seed_demo(session, accounts=60, today=TODAY)
    session.commit()
    _run(session)
    from lifecycle.scoring.stages import move_stage

    account = session.exec(select(Account).where(Account.stage == "renewal")).first()
    assert account is not None
    move_stage(session, account, "expansion", reason="signed an upsell", actor_id=None, machine=load_stage_machine())
    session.commit()
    assert _run(session) == 0
    session.refresh(account)
    assert account.stage == "expansion" and account.stage_pinned


def test_backfill_gives_trends(session: Session) -> None:
    seed_demo(session, accounts=60, today=TODAY)
    session.commit()
    backfill_health(session, today=TODAY, offsets=(30, 7), scorecard=default_scorecard(), machine=load_stage_machine())
    _run(session)
    days: dict[int, set[date]] = {}
    for account_id, day, _, _ in _snapshots(session):
        days.setdefault(account_id, set()).add(day)
    # Accounts the backfill scored keep those days (the ones that began after the first of them, the later ones);
    # an account it could not score at all (usage too young) gets its own daily backfill from the recompute, as
    # any account scored for the first time: every day from its first usage day on.
    kept = [{date(2026, 10, 24), date(2026, 11, 16), TODAY}, {date(2026, 11, 16), TODAY}]
    assert sum(1 for d in days.values() if d == kept[0]) > 40
    for d in days.values():
        first = min(d)
        assert d in kept or d == {date.fromordinal(n) for n in range(first.toordinal(), TODAY.toordinal() + 1)}


def test_console_transcript(engine: Engine, tmp_path: Path) -> None:
    with Session(engine) as session:
        seed_demo(session, accounts=60, today=TODAY)
        session.commit()
        backfill_health(
            session, today=TODAY, offsets=(30, 7), scorecard=default_scorecard(), machine=load_stage_machine()
        )
        _run(session)
    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))
    script = "\n".join(
        [
            "help",
            "account northwind traders",
            "health Quantum Freight",
            "at-risk",
            "renewals 45",
            "note Northwind Traders QBR booked for December",
            'stage "Northwind Traders" expansion asked for 200 more seats',
            "stage Northwind Traders",
            "account Nortwind",
            "renewals soon",
        ]
    )
    out = io.StringIO()
    code = run_console(
        router, "maya.chen@csbot-demo.example", stdin=io.StringIO(script + "\n"), stdout=out, chart_dir=tmp_path
    )
    text = out.getvalue()
    assert code == 0
    assert "`account <account>` — The account card" in text
    assert "━━ Northwind Traders  (ACC-00006) ━━" in text
    assert "Health          " in text and "Why this health:" in text
    assert "Measures:" in text and "licence utilisation:" in text
    assert "At-risk accounts (your team)" in text  # Maya manages four CSMs
    assert "at risk (red, a critical signal, falling fast" in text and "· why: red" in text
    assert "Renewals in the next 45 days (your team)" in text
    assert "Note saved on Northwind Traders." in text
    assert "Northwind Traders moved from Renewal to Expansion (asked for 200 more seats)" in text
    assert "Expansion: 2026" in text and "→ now" in text
    assert "I can't find an account called “Nortwind”. Did you mean: Northwind Traders" in text
    assert "`soon` isn't a valid `<days>` or `mine|all` for `renewals`. Usage: `renewals [days] [mine|all]`" in text

    # without a chart folder of its own, the session's charts go when it ends
    out = io.StringIO()
    run_console(router, "maya.chen@csbot-demo.example", stdin=io.StringIO("portfolio\n"), stdout=out)
    charts = re.findall(r"→ (\S+\.png)\]", out.getvalue())
    assert charts and not any(Path(c).exists() for c in charts)


USERS_CSV = """email,name,role,slack_user_id,telegram_user_id,timezone,manager_email
lead@example.com,Lee Lead,manager,,,UTC,
csm@example.com,Cas Csm,csm,,,UTC,lead@example.com
"""
ACCOUNTS_CSV = """external_id,name,owner_email,segment,plan,arr,currency,seats,contract_start,renewal_date,status
P-1,Polar Labs,csm@example.com,smb,Pro,12000,USD,10,2025-06-10,2027-06-10,active
P-2,Pine Works,csm@example.com,smb,Pro,24000,USD,10,2025-03-01,2026-12-20,active
"""


def _usage_csv() -> str:
    lines = ["account_external_id,date,active_users,logins,feature,events"]
    for offset in range(60, 0, -1):
        day = date.fromordinal(TODAY.toordinal() - offset).isoformat()
        lines.append(f"P-1,{day},7,20,,400")
        busy = 8 if offset > 30 else 2  # Pine Works fades over the last 30 days
        lines.append(f"P-2,{day},{busy},{busy * 2},,{busy * 40}")
    return "\n".join(lines) + "\n"


def _import_and_recompute(engine: Engine, folder: Path) -> dict[str, tuple[float | None, str | None, str]]:
    files = {"users": USERS_CSV, "accounts": ACCOUNTS_CSV, "usage": _usage_csv()}
    with Session(engine) as session:
        for kind, content in files.items():
            path = folder / f"{kind}.csv"
            path.write_text(content, encoding="utf-8")
            import_csv(session, kind, path)
        session.commit()
        _run(session)
        return {a.name: (a.health_score, a.health_grade, a.stage) for a in session.exec(select(Account)).all()}


def _reimport_changes_nothing(engine: Engine, folder: Path) -> None:
    with Session(engine) as session:
        for kind in ("users", "accounts", "usage"):
            report = import_csv(session, kind, folder / f"{kind}.csv")
            assert (report.inserted, report.updated) == (0, 0)


def test_import_and_recompute_on_sqlite(engine: Engine, tmp_path: Path) -> None:
    result = _import_and_recompute(engine, tmp_path)
    assert result["Polar Labs"][1] == "green"
    pine, polar = result["Pine Works"][0], result["Polar Labs"][0]
    assert pine is not None and polar is not None and pine < polar
    assert result["Pine Works"][2] == "renewal"  # renews within 120 days of TODAY
    assert result["Polar Labs"][2] == "adoption"  # onboarding complete: 70% of seats active for 14+ days
    _reimport_changes_nothing(engine, tmp_path)


@pytest.mark.postgres
def test_import_and_recompute_on_postgresql(pg_engine: Engine, engine: Engine, tmp_path: Path) -> None:
    """The same files give the same scores, grades and stages on PostgreSQL as on SQLite."""
    on_pg = _import_and_recompute(pg_engine, tmp_path)
    on_sqlite = _import_and_recompute(engine, tmp_path)
    assert on_pg == on_sqlite
    _reimport_changes_nothing(pg_engine, tmp_path)
    with Session(pg_engine) as session:
        # Today's two, and the month before backfilled by the first recompute (both have 60 days of usage).
        assert session.exec(select(func.count()).select_from(HealthSnapshot)).one() == 2 * 31


def test_the_first_recompute_of_an_account_backfills_its_month_and_only_its_own(engine: Engine, tmp_path: Path) -> None:
    _import_and_recompute(engine, tmp_path)
    later = date.fromordinal(TODAY.toordinal() + 1)
    newcomer = tmp_path / "newcomer"
    newcomer.mkdir()
    (newcomer / "accounts.csv").write_text(
        "external_id,name,owner_email,seats,contract_start,renewal_date\n"
        "P-3,Pecan Soft,csm@example.com,10,2026-10-01,2027-10-01\n"
        "P-4,Plum Empty,csm@example.com,10,2026-10-01,2027-10-01\n", encoding="utf-8")
    # Pecan's usage starts 12 days before the recompute: its backfill starts there, not a month back.
    (newcomer / "usage.csv").write_text("account_external_id,date,active_users,logins,events\n" + "".join(
        f"P-3,{date.fromordinal(later.toordinal() - n).isoformat()},6,9,200\n" for n in range(12, 0, -1)),
        encoding="utf-8")
    with Session(engine) as session:
        for kind in ("accounts", "usage"):
            import_csv(session, kind, newcomer / f"{kind}.csv")
        session.commit()
        summary = recompute(session, as_of=later, scorecard=default_scorecard(), machine=load_stage_machine())
        session.commit()
        assert summary.backfilled == 12
        days: dict[str, list[date]] = {}
        for name, day in session.exec(
            select(Account.name, HealthSnapshot.day).join(HealthSnapshot, col(HealthSnapshot.account_id) == Account.id)
            .order_by(col(HealthSnapshot.day))
        ).all():
            days.setdefault(name, []).append(day)
    assert days["Pecan Soft"] == [date.fromordinal(later.toordinal() - n) for n in range(12, -1, -1)]
    assert "Plum Empty" not in days  # no usage to score: nothing backfilled, and no score today
    # Plum's usage arrives after that recompute: the next one still backfills it (it was never scored).
    (newcomer / "usage.csv").write_text("account_external_id,date,active_users,logins,events\n" + "".join(
        f"P-4,{date.fromordinal(later.toordinal() - n).isoformat()},6,9,200\n" for n in range(20, 0, -1)),
        encoding="utf-8")
    with Session(engine) as session:
        import_csv(session, "usage", newcomer / "usage.csv")
        session.commit()
        assert recompute(session, as_of=later, scorecard=default_scorecard(), machine=load_stage_machine(),
                         with_insight=False).backfilled == 20
    # The accounts scored before keep their history as it was: one more day, nothing rewritten.
    assert days["Polar Labs"] == [date.fromordinal(TODAY.toordinal() - n) for n in range(30, -2, -1)]
