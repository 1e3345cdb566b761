"""What every `csbot` command shares: the settings (with log redaction installed on first read), the database
(migrated on open), the consoles, the progress bar, and how a recompute and a time read on a terminal."""

from __future__ import annotations

import resource
from datetime import UTC, date, datetime

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from adapters.logsafe import install_redaction
from lifecycle.recompute import recompute, recompute_changed
from lifecycle.scoring.health import load_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.db import ensure_schema, make_engine, session_scope
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import User
from lifecycle.store.settings import Settings, get_settings

console = Console()
err = Console(stderr=True)
_redaction_installed = False


def load() -> Settings:
    global _redaction_installed
    try:
        settings = get_settings()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if not _redaction_installed:  # from here on no log line shows a token, a secret or the database password
        install_redaction(settings.secrets())
        _redaction_installed = True
    return settings


def open_engine(settings: Settings) -> Engine:
    engine = make_engine(settings.database_url)
    try:
        # A database server still starting (or failing over) is retried with backoff for CSBOT_DB_CONNECT_TIMEOUT
        # seconds; then start-up stops with exit code 2 and a message naming the database.
        ensure_schema(engine, connect_timeout=settings.db_connect_timeout)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return engine


def progress_bar() -> Progress:
    """A progress bar on stderr, drawn only on a terminal and cleared when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def default_actor(engine: Engine) -> str:
    """The console speaks as the first admin or manager (the person running the terminal owns the data)."""
    with Session(engine) as s:
        for role in ("admin", "manager", "csm"):
            user = s.exec(select(User).where(User.role == role, User.active == True).order_by(col(User.id))).first()  # noqa: E712
            if user:
                return user.email
    return ""


def local_time(moment: datetime | None, settings: Settings) -> str:
    if moment is None:
        return "—"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M %Z")


def signed(value: float) -> str:
    """`−24.7`, `+12.0`, `0.0` (a real minus sign, as chat replies write it)."""
    if value < 0:
        return f"\u2212{abs(value):.1f}"
    return f"+{value:.1f}" if value > 0 else f"{value:.1f}"


def recompute_and_report(engine: Engine, settings: Settings, as_of: date | None = None, *, backfill: bool = True,
               full: bool = True) -> None:
    scorecard = load_scorecard(settings.scorecard_file)
    machine = load_stage_machine(settings.stages_file)
    day = as_of or date.today()
    with session_scope(engine) as session:
        if full:
            summary = recompute(session, as_of=day, scorecard=scorecard, machine=machine, backfill=backfill)
        else:
            summary = recompute_changed(session, as_of=day, scorecard=scorecard, machine=machine)
    if summary.mode == "incremental" and not summary.accounts:
        err.print(f"Nothing changed since the last recompute of {summary.as_of}: no account recomputed.")
        return
    grades = ", ".join(f"{g} {n}" for g, n in sorted(summary.grades.items()))
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in summary.timings.items())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backfilled = (f"; {summary.backfilled:,} past daily snapshot(s) backfilled for accounts scored for the first time"
                  if summary.backfilled else "")
    err.print(
        f"Recomputed {summary.accounts:,} accounts ({summary.mode}) as of {summary.as_of}: {grades}; "
        f"{summary.stage_moves} stage move(s){backfilled}; {summary.seconds:.2f} s ({steps}); "
        f"peak memory {peak_mb:,.0f} MB."
    )


def as_of_day(as_of: str | None) -> date | None:
    """The `--as-of` option as a day (None when not given); exit 1 with a clear message when it is not a date."""
    try:
        return date.fromisoformat(as_of) if as_of else None
    except ValueError:
        err.print(f"[red]--as-of: not a date (YYYY-MM-DD): {as_of}[/red]")
        raise typer.Exit(1) from None
