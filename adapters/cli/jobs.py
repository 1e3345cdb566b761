"""`csbot jobs list|shards|run`: the scheduled jobs, the nightly recompute's shards, and one run now exactly as
the scheduler would."""

from __future__ import annotations

import typer
from rich.table import Table

from adapters.cli.common import as_of_day, console, err, load, local_time, open_engine
from adapters.ports import open_ports
from bot.push.jobs import JOBS, list_jobs, run_job
from lifecycle.shards import latest_key, run_status
from lifecycle.store.errors import NotFoundError

app = typer.Typer(help="Scheduled jobs: list them, or run one now (cron users, checks).", no_args_is_help=True)


@app.command(name="list")
def jobs_list() -> None:
    """Every scheduled job: its crontab, next run (in CSBOT_TIMEZONE) and what it does."""
    settings = load()
    table = Table("job", "schedule", f"next run ({settings.timezone})", "what it does")
    for info in list_jobs(settings):
        table.add_row(info.name, info.schedule, local_time(info.next_run, settings), info.help)
    console.print(table)


@app.command(name="run")
def jobs_run(
    name: str = typer.Argument(..., help="The job (see `csbot jobs list`)."),
    as_of: str | None = typer.Option(None, help="Day to process (YYYY-MM-DD, default today in CSBOT_TIMEZONE)."),
) -> None:
    """Run one job now, exactly as the scheduler would (with its lock on PostgreSQL); exit 1 when it fails."""
    settings = load()
    day = as_of_day(as_of)
    engine = open_engine(settings)
    try:
        result = run_job(name, engine, settings, today=day, ports=open_ports)
    except NotFoundError:
        err.print(f"[red]No job called {name!r}; the jobs are: {', '.join(JOBS)}.[/red]")
        raise typer.Exit(1) from None
    console.print(result.describe(), markup=False, highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@app.command(name="shards")
def jobs_shards(
    as_of: str | None = typer.Option(None, help="Day of the run (YYYY-MM-DD, default the newest run)."),
) -> None:
    """The nightly recompute's shards (newest run): range, status, worker, attempts, accounts, time, error."""
    settings = load()
    day = as_of_day(as_of)
    engine = open_engine(settings)
    key = latest_key(engine, day)
    if key is None:
        err.print("No sharded recompute run on record (one shard, e.g. SQLite, runs the plain full recompute).")
        raise typer.Exit(1)
    status = run_status(engine, key)
    table = Table("shard", "account ids", "status", "worker", "attempts", "accounts", "seconds", "error",
                  title=f"recompute run {key}")
    rows = [*status.shards, *([status.finish] if status.finish else [])]
    for row in rows:
        name = "whole portfolio" if row.shard < 0 else str(row.shard)
        ids = "—" if row.shard < 0 else f"[{row.lo:,}, {row.hi:,})"
        table.add_row(name, ids, row.status, row.claimed_by or "—", str(row.attempts), f"{row.accounts:,}",
                      f"{row.seconds:.2f}", row.error or "")
    console.print(table)
