"""`csbot usage partitions|prune`: the raw usage table's monthly partitions (PostgreSQL) and its retention."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table
from sqlmodel import Session

from adapters.cli.common import console, err, load, open_engine
from lifecycle.store.db import session_scope
from lifecycle.store.errors import ConfigError
from lifecycle.store.partitions import describe_partitions, prune_usage

app = typer.Typer(help="Raw usage storage: monthly partitions (PostgreSQL) and retention.", no_args_is_help=True)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n //= 1024
    return f"{n:,} TB"


@app.command(name="partitions")
def usage_partitions() -> None:
    """List the partitions of the raw usage table: range, estimated rows, size on disk."""
    engine = open_engine(load())
    with Session(engine) as s:
        parts = describe_partitions(s)
    table = Table("partition", "from", "until", "rows (estimate)", "size", title="usage_daily")
    for p in parts:
        table.add_row(p.name, p.start.isoformat() if p.start else ("default" if p.name.endswith("default") else "—"),
                      p.end.isoformat() if p.end else "—", f"{p.rows:,}" if p.rows is not None else "—",
                      _size(p.bytes))
    console.print(table)
    if len(parts) == 1 and parts[0].start is None and not parts[0].name.endswith("default"):
        console.print("Not partitioned (SQLite, or PostgreSQL before migration 0014): one plain table.")


@app.command(name="prune")
def usage_prune(
    keep_months: int | None = typer.Option(
        None, min=1, help="Keep the current month and this many whole months before it "
        "(default CSBOT_USAGE_RETENTION_MONTHS; at least 4)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing."),
) -> None:
    """Drop raw usage older than the retention: whole monthly partitions on PostgreSQL, a DELETE on SQLite."""
    settings = load()
    keep = keep_months if keep_months is not None else settings.usage_retention_months
    if not keep:
        err.print("[red]Usage retention is off: set CSBOT_USAGE_RETENTION_MONTHS or give --keep-months.[/red]")
        raise typer.Exit(2)
    engine = open_engine(settings)
    today = datetime.now(settings.tz).date()
    try:
        with session_scope(engine) as s:
            done = prune_usage(s, keep_months=keep, today=today, dry_run=dry_run)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    lines = [f"Usage before {done.cutoff.isoformat()}{' (dry run: nothing changed)' if dry_run else ''}:"]
    if done.partitions:
        lines.append(f"{'would drop' if dry_run else 'dropped'} {len(done.partitions)} partition(s) "
                     f"({', '.join(done.partitions)}; about {done.rows_estimate:,} rows)")
    lines.append(f"{'would delete' if dry_run else 'deleted'} {done.rows_deleted:,} row(s)")
    console.print(" ".join(lines[:1]) + " " + "; ".join(lines[1:]) + ".")
