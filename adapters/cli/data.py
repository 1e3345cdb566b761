"""`csbot import`, `recompute`, `rebuild-rollups`, `accounts` and `users`: the portfolio's data from the terminal."""

from __future__ import annotations

import time
from datetime import date
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table
from sqlalchemy import func
from sqlmodel import Session, col, select

from adapters.cli.common import console, err, load, open_engine, progress_bar, recompute_and_report, signed
from lifecycle.intake.importers import MissingColumns, import_csv, parse_column_map
from lifecycle.reports.money import load_rates
from lifecycle.scoring.rollups import rebuild
from lifecycle.store.db import session_scope
from lifecycle.store.errors import CsbotError, ImportFailed
from lifecycle.store.models import Account, User

SHOWN_ROWS = 50  # skipped row numbers listed after an import


class Kind(StrEnum):
    users = "users"
    accounts = "accounts"
    contacts = "contacts"
    usage = "usage"
    tickets = "tickets"
    nps = "nps"
    rates = "rates"


def import_cmd(
    kind: Kind = typer.Argument(..., help="What the file holds."),
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; write nothing."),
    preset: str | None = typer.Option(
        None, "--preset", help="CRM export headers (accounts, contacts): hubspot or salesforce."
    ),
    column_map: list[str] | None = typer.Option(
        None, "--map", help="'Their Column=our_column' (repeatable; wins over --preset; 'Col=' ignores Col)."
    ),
    account: str | None = typer.Option(
        None, "--account", help="Every row belongs to this account (external id or name), for files without one."
    ),
    date_format: str | None = typer.Option(
        None, "--date-format", help="auto (default: detect 31/01 vs 01/31), iso, day-first, month-first or a "
        "strptime pattern such as '%d.%m.%Y %H:%M'."
    ),
    chunk_rows: int = typer.Option(
        250_000, "--chunk-rows", min=1, help="Usage files: rows read and checked at a time (memory vs. speed)."
    ),
) -> None:
    """Import a CSV file (all-or-nothing: any bad row leaves the database unchanged)."""
    settings = load()
    try:
        mapping = parse_column_map(column_map or [])
    except ImportFailed as exc:
        err.print(f"[red]--map: {exc.problems[0]}[/red]")
        raise typer.Exit(2) from None
    engine = open_engine(settings)
    with progress_bar() as bar:
        task = bar.add_task(f"importing {kind.value}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            with session_scope(engine) as session:
                report = import_csv(
                    session, kind.value, file, dry_run=dry_run, progress=progress, column_map=mapping,
                    preset=preset, account=account, date_format=date_format, chunk_rows=chunk_rows,
                )
        except ImportFailed as exc:
            bar.stop()
            err.print(f"[red]{file}: {exc}[/red]", markup=True, highlight=False)
            for problem in exc.problems:
                err.print(f"  {problem}", markup=False, highlight=False)
            if isinstance(exc, MissingColumns):
                example = exc.missing[0]
                err.print(f"  Map one of your columns onto it: --map 'Their Column={example}'.", markup=False)
            raise typer.Exit(1) from None
        except CsbotError as exc:
            bar.stop()
            err.print(f"[red]{file}: {exc}[/red]")
            raise typer.Exit(1) from None
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    verb = "would import" if dry_run else "imported"
    skipped = f"; {len(report.skipped):,} skipped" if report.skipped else ""
    console.print(
        f"{kind.value}: {verb} {report.rows:,} rows — {report.inserted:,} inserted, {report.updated:,} updated, "
        f"{report.unchanged:,} unchanged{skipped}.",
        highlight=False,
    )
    if report.skipped:
        shown = ", ".join(str(n) for n in report.skipped[:SHOWN_ROWS])
        more = f" … and {len(report.skipped) - SHOWN_ROWS} more" if len(report.skipped) > SHOWN_ROWS else ""
        console.print(f"Skipped, {report.skipped_reason}: rows {shown}{more}.", highlight=False)
    if report.nps is not None and report.nps.nps is not None:
        n = report.nps
        console.print(
            f"NPS {signed(n.nps or 0.0)} over {n.responses:,} responses: {n.promoters:,} promoters, "
            f"{n.passives:,} passives, {n.detractors:,} detractors.",
            highlight=False,
        )


def recompute_cmd(
    as_of: str | None = typer.Option(None, help="Day to compute for (YYYY-MM-DD, default today)."),
    full: bool = typer.Option(False, "--full", help="Recompute every account, even when only a few changed."),
) -> None:
    """Recompute health and stages: only the accounts whose data changed since the last full recompute of the
    same day (a new day, or a changed scorecard or stage file, recomputes all); prints a summary and the time."""
    settings = load()
    day = date.fromisoformat(as_of) if as_of else None
    recompute_and_report(open_engine(settings), settings, day, full=full)


def rebuild_rollups_cmd() -> None:
    """Rebuild the per-account usage roll-ups from the raw usage rows (after usage was changed by hand in SQL)."""
    settings = load()
    engine = open_engine(settings)
    started = time.perf_counter()
    with session_scope(engine) as session:
        accounts = rebuild(session.connection())
    console.print(f"Rebuilt the usage roll-ups of {accounts:,} account(s) from the raw usage rows in "
                  f"{time.perf_counter() - started:.2f} s.")


def accounts_cmd(limit: int = typer.Option(20, help="How many to list.")) -> None:
    """List accounts with their stage and health (largest ARR in the reporting currency first)."""
    settings = load()
    engine = open_engine(settings)
    table = Table("external id", "name", "stage", "health", "ARR")
    with Session(engine) as s:
        largest = load_rates(s, settings.reporting_currency).in_sql(col(Account.arr), col(Account.currency),
                                                                     as_written=True)
        for a in s.exec(select(Account).order_by(largest.desc()).limit(limit)).all():
            score = f"{a.health_score:.0f} {a.health_grade}" if a.health_score is not None else "—"
            table.add_row(a.external_id, a.name, a.stage, score, f"{a.arr:,.0f} {a.currency}")
    console.print(table)


def users_cmd(
    all_users: bool = typer.Option(False, "--all", help="Include deactivated people."),
) -> None:
    """List people with their ids: email (what `csbot chat --as` takes), role, manager, chat ids, language."""
    settings = load()
    engine = open_engine(settings)
    table = Table("id", "email", "name", "role", "manager", "Slack id", "Telegram id", "lang", "accounts")
    with Session(engine) as s:
        owned = dict(s.exec(select(Account.owner_id, func.count()).where(col(Account.owner_id).is_not(None))
                            .group_by(col(Account.owner_id))).all())
        people = s.exec(select(User).order_by(col(User.role), col(User.name))).all()
        names = {u.id: u.name for u in people}
        for u in people:
            if not u.active and not all_users:
                continue
            table.add_row(str(u.id), u.email, u.name + ("" if u.active else " (inactive)"), u.role,
                          names.get(u.manager_id, "—") if u.manager_id else "—", u.slack_user_id or "—",
                          u.telegram_user_id or "—", u.lang or f"{settings.lang} (default)", str(owned.get(u.id, 0)))
    console.print(table)
