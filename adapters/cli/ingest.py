"""`csbot ingest status|prune`: usage ingest freshness and upkeep."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table
from sqlmodel import Session

from adapters.cli.common import console, err, load, local_time, open_engine
from lifecycle.intake.ingest import prune, source_status, stale_accounts
from lifecycle.scoring.alerts import load_alert_config
from lifecycle.store.db import session_scope
from lifecycle.store.errors import ConfigError

app = typer.Typer(help="Usage ingest (POST /api/usage): data freshness and upkeep.", no_args_is_help=True)


@app.command(name="status")
def ingest_status(
    days: int | None = typer.Option(
        None, min=1, help="Accounts with no usage for this many days (default: the stale_data alert rule's days)."
    ),
    limit: int = typer.Option(50, min=1, help="How many stale accounts to list (oldest usage first)."),
) -> None:
    """Accounts without fresh usage, and the last ingest from each source."""
    settings = load()
    engine = open_engine(settings)
    if days is None:
        try:
            days = load_alert_config(settings.alerts_file).rules.stale_data.days
        except ConfigError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    today = datetime.now(settings.tz).date()
    with Session(engine) as s:
        stale = stale_accounts(s, days=days, today=today)
        sources = source_status(s)
    table = Table("external id", "account", "owner", "last usage", "days", title=f"No usage for {days}+ days")
    for a in stale[:limit]:
        table.add_row(
            a.external_id, a.name, a.owner or "—", local_time(a.last_usage_at, settings) if a.last_usage_at
            else (a.last_usage_date.isoformat() if a.last_usage_date else "never"),
            str(a.days) if a.days is not None else "—",
        )
    if stale:
        console.print(table)
        if len(stale) > limit:
            console.print(f"… and {len(stale) - limit:,} more.")
    else:
        console.print(f"Every active account has usage from the last {days} days.")
    feeds = Table(
        "source", f"last ingest ({settings.timezone})", "newest event", "requests", "accepted", "duplicates",
        "unknown account", title="Ingest by source",
    )
    for src in sources:
        feeds.add_row(
            src.source, local_time(src.last_received_at, settings), local_time(src.last_event_at, settings),
            f"{src.requests:,}", f"{src.accepted:,}", f"{src.duplicates:,}", f"{src.unknown:,}",
        )
    if sources:
        console.print(feeds)
    else:
        console.print("Nothing received on POST /api/usage yet.")


@app.command(name="prune")
def ingest_prune(
    keep_days: int = typer.Option(90, min=1, help="Keep message ids and per-day user sets this many days."),
) -> None:
    """Forget old message ids and per-day active-user sets (resends and late events older than this count
    again)."""
    settings = load()
    engine = open_engine(settings)
    with session_scope(engine) as s:
        done = prune(s, keep_days=keep_days)
    console.print(f"Pruned {done.messages:,} message ids and {done.user_days:,} user-day rows.")
