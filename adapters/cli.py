"""The `csbot` command line (typer + rich): demo, chat, import, db, recompute, account, serve, jobs, deliveries,
ingest.

This is the composition root: it reads the settings, opens the database (migrating it on first start), and wires
the core, the router and the console adapter together.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from adapters.console import render_text, run_console
from adapters.logsafe import install_redaction
from adapters.model_cli import app as model_app
from bot.core.messages import Incoming
from bot.core.router import Router, Services
from lifecycle.config import Settings, get_settings
from lifecycle.db import ensure_schema, make_engine, session_scope, upgrade
from lifecycle.errors import ConfigError, CsbotError, ImportFailed, NotFoundError
from lifecycle.models import Account, User

app = typer.Typer(
    help="csbot — the chat-first customer-success assistant.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
jobs_app = typer.Typer(help="Scheduled jobs: list them, or run one now (cron users, checks).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(model_app, name="model")
ingest_app = typer.Typer(help="Usage ingest (POST /api/usage): data freshness and upkeep.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
console = Console()
SHOWN_ROWS = 50  # skipped row numbers listed after an import
err = Console(stderr=True)
_redaction_installed = False


class Kind(StrEnum):
    users = "users"
    accounts = "accounts"
    contacts = "contacts"
    usage = "usage"
    tickets = "tickets"
    nps = "nps"
    rates = "rates"


def _settings() -> Settings:
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


def _engine(settings: Settings) -> Engine:
    engine = make_engine(settings.database_url)
    try:
        # A database server still starting (or failing over) is retried with backoff for CSBOT_DB_CONNECT_TIMEOUT
        # seconds; then start-up stops with exit code 2 and a message naming the database.
        ensure_schema(engine, connect_timeout=settings.db_connect_timeout)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return engine


def _progress_bar() -> Progress:
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


def _default_actor(engine: Engine) -> str:
    """The console speaks as the first admin or manager (the person running the terminal owns the data)."""
    with Session(engine) as s:
        for role in ("admin", "manager", "csm"):
            user = s.exec(select(User).where(User.role == role, User.active == True).order_by(col(User.id))).first()  # noqa: E712
            if user:
                return user.email
    return ""


def _chat(engine: Engine, settings: Settings, as_email: str | None) -> int:
    actor = as_email or _default_actor(engine)
    if not actor:
        err.print("[red]No users yet: import users first (`csbot import users FILE`) or run `csbot demo`.[/red]")
        return 2
    from adapters.console.render import render_text
    from bot.commands.people import greeting_text
    from bot.push.inbox import waiting_for

    with Session(engine) as s:
        user = s.exec(select(User).where(col(User.email) == actor)).first()
        if user is not None:  # who the console speaks as (an unknown email gets the router's own refusal)
            err.print(greeting_text(s, user, settings.lang).replace("*", ""), markup=False, highlight=False)
            waiting = waiting_for(s, user)
            if waiting is not None:  # what tonight's run wrote to them that no platform has carried
                err.print(render_text(waiting), markup=False, highlight=False)
    router = Router(Services(engine=engine, settings=settings))
    router.warm_up()
    return run_console(router, actor)


def _recompute(engine: Engine, settings: Settings, as_of: date | None = None, *, backfill: bool = True,
               full: bool = True) -> None:
    from lifecycle.health import load_scorecard
    from lifecycle.recompute import recompute, recompute_changed
    from lifecycle.stages import load_stage_machine

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


def _tonight(engine: Engine, settings: Settings) -> None:
    """The demo's nightly run as of today: alert rules, renewal prompts, surveys and digests, so `alerts`,
    `alert-stats` and `csbot deliveries` have something to show. Nothing leaves the machine: without Slack or
    Telegram the messages are kept as undeliverable, to be retried once a platform is configured."""
    from bot.push.jobs import run_job

    result = run_job("nightly", engine, settings)
    counts = {step.name: step.counts for step in result.steps}
    alerts = counts.get("alerts", {})
    err.print(
        f"Ran tonight's rules as of {result.today}: {alerts.get('new', 0)} alert(s) raised, "
        f"{counts.get('renewal_prompts', {}).get('prompts', 0)} renewal prompt(s), "
        f"{counts.get('surveys', {}).get('sent', 0)} NPS survey(s), "
        f"{counts.get('digests', {}).get('digests', 0)} digest(s). Nothing left this machine: with neither Slack "
        "nor Telegram configured they are kept as undeliverable (`csbot deliveries`), and `csbot deliveries --retry` "
        "sends them once one is."
    )


@app.command()
def demo(
    accounts: int = typer.Option(60, help="How many accounts to generate."),
    days: int | None = typer.Option(None, help="Days of usage history (default 365, or 90 above 5,000 accounts)."),
    seed: int = typer.Option(7, help="Random seed: the same seed gives the same portfolio."),
    as_email: str | None = typer.Option(None, "--as", help="Chat as this user (default: the demo manager)."),
    chat: bool = typer.Option(True, help="Open the console chat after seeding."),
) -> None:
    """Seed the demo portfolio into the database when it is empty, then open the console chat."""
    from lifecycle.demo import is_empty, seed_demo

    settings = _settings()
    engine = _engine(settings)
    with Session(engine) as s:
        empty = is_empty(s)
    if empty:
        started = time.perf_counter()
        with _progress_bar() as bar:
            tasks: dict[str, object] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

            with session_scope(engine) as session:
                summary = seed_demo(session, accounts=accounts, days=days, seed=seed, progress=progress)
        err.print(
            f"Seeded the demo portfolio in {time.perf_counter() - started:.1f} s: {summary.accounts:,} accounts, "
            f"{summary.users} users, {summary.usage_rows:,} usage rows over {summary.days} days, "
            f"{summary.tickets:,} tickets, {summary.nps_responses:,} NPS answers, {summary.notes:,} notes."
        )
        # The first recompute backfills a month of daily health, which gives the demo its trends (skipped for large
        # scale portfolios, where it would take minutes).
        _recompute(engine, settings, backfill=accounts <= 5_000)
        if accounts <= 5_000:
            _tonight(engine, settings)
    else:
        with Session(engine) as s:
            count = s.exec(select(func.count()).select_from(Account)).one()
        err.print(f"The database already holds {count:,} accounts; using them as they are.")
    if chat:
        raise typer.Exit(_chat(engine, settings, as_email))


@app.command(name="chat")
def chat_cmd(as_email: str | None = typer.Option(None, "--as", help="Chat as this user's email.")) -> None:
    """Open the console chat on the current database."""
    settings = _settings()
    raise typer.Exit(_chat(_engine(settings), settings, as_email))


@app.command(name="import")
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
    from lifecycle.importers import MissingColumns, import_csv, parse_column_map

    settings = _settings()
    try:
        mapping = parse_column_map(column_map or [])
    except ImportFailed as exc:
        err.print(f"[red]--map: {exc.problems[0]}[/red]")
        raise typer.Exit(2) from None
    engine = _engine(settings)
    with _progress_bar() as bar:
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
            f"NPS {_signed(n.nps or 0.0)} over {n.responses:,} responses: {n.promoters:,} promoters, "
            f"{n.passives:,} passives, {n.detractors:,} detractors.",
            highlight=False,
        )


def _signed(value: float) -> str:
    """`−24.7`, `+12.0`, `0.0` (a real minus sign, as chat replies write it)."""
    if value < 0:
        return f"\u2212{abs(value):.1f}"
    return f"+{value:.1f}" if value > 0 else f"{value:.1f}"


@ingest_app.command(name="status")
def ingest_status(
    days: int | None = typer.Option(
        None, min=1, help="Accounts with no usage for this many days (default: the stale_data alert rule's days)."
    ),
    limit: int = typer.Option(50, min=1, help="How many stale accounts to list (oldest usage first)."),
) -> None:
    """Accounts without fresh usage, and the last ingest from each source."""
    from lifecycle.alerts import load_alert_config
    from lifecycle.ingest import source_status, stale_accounts

    settings = _settings()
    engine = _engine(settings)
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
            a.external_id, a.name, a.owner or "—", _local_time(a.last_usage_at, settings) if a.last_usage_at
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
            src.source, _local_time(src.last_received_at, settings), _local_time(src.last_event_at, settings),
            f"{src.requests:,}", f"{src.accepted:,}", f"{src.duplicates:,}", f"{src.unknown:,}",
        )
    if sources:
        console.print(feeds)
    else:
        console.print("Nothing received on POST /api/usage yet.")


@ingest_app.command(name="prune")
def ingest_prune(
    keep_days: int = typer.Option(90, min=1, help="Keep message ids and per-day user sets this many days."),
) -> None:
    """Forget old message ids and per-day active-user sets (resends and late events older than this count
    again)."""
    from lifecycle.ingest import prune

    settings = _settings()
    engine = _engine(settings)
    with session_scope(engine) as s:
        done = prune(s, keep_days=keep_days)
    console.print(f"Pruned {done.messages:,} message ids and {done.user_days:,} user-day rows.")


@db_app.command(name="upgrade")
def db_upgrade(revision: str = typer.Argument("heads")) -> None:
    """Apply the schema migrations (also done automatically on every start)."""
    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, revision)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Database at revision {revision}.")


@app.command(name="recompute")
def recompute_cmd(
    as_of: str | None = typer.Option(None, help="Day to compute for (YYYY-MM-DD, default today)."),
    full: bool = typer.Option(False, "--full", help="Recompute every account, even when only a few changed."),
) -> None:
    """Recompute health and stages: only the accounts whose data changed since the last full recompute of the
    same day (a new day, or a changed scorecard or stage file, recomputes all); prints a summary and the time."""
    settings = _settings()
    day = date.fromisoformat(as_of) if as_of else None
    _recompute(_engine(settings), settings, day, full=full)


@app.command(name="rebuild-rollups")
def rebuild_rollups_cmd() -> None:
    """Rebuild the per-account usage roll-ups from the raw usage rows (after usage was changed by hand in SQL)."""
    from lifecycle.rollups import rebuild

    settings = _settings()
    engine = _engine(settings)
    started = time.perf_counter()
    with session_scope(engine) as session:
        accounts = rebuild(session.connection())
    console.print(f"Rebuilt the usage roll-ups of {accounts:,} account(s) from the raw usage rows in "
                  f"{time.perf_counter() - started:.2f} s.")


@app.command(name="account")
def account_cmd(
    name: list[str] = typer.Argument(..., help="Account name or external id."),
    as_email: str | None = typer.Option(None, "--as", help="Look as this user's email."),
) -> None:
    """Print an account card."""
    settings = _settings()
    engine = _engine(settings)
    actor = as_email or _default_actor(engine)
    router = Router(Services(engine=engine, settings=settings))
    reply = router.handle(Incoming(platform="console", sender_id=actor, text="account " + " ".join(name)))
    console.print(render_text(reply), markup=False, highlight=False)
    if not reply.cards:
        raise typer.Exit(1)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Address to listen on (default CSBOT_HOST)."),
    port: int | None = typer.Option(None, help="Port to listen on (default CSBOT_PORT)."),
    telegram_polling: bool = typer.Option(False, "--telegram-polling", help="Long-poll Telegram (no webhook)."),
    feishu_webhook: bool = typer.Option(
        False, "--feishu-webhook", help="Receive Feishu/Lark events on /feishu/events instead of the long connection."
    ),
    no_scheduler: bool = typer.Option(
        False, "--no-scheduler", help="Serve chat only: no scheduled jobs and no outbox worker in this process."
    ),
) -> None:
    """Serve Slack (/slack/events or Socket Mode), Telegram (/telegram/webhook or polling), Feishu/Lark (long
    connection or /feishu/events), usage ingest (/api/usage), /healthz and /metrics; run the scheduled jobs and
    the delivery worker."""
    import uvicorn

    from adapters.server import build_app

    settings = _settings()
    logging.getLogger().setLevel(settings.log_level)
    engine = _engine(settings)
    try:
        asgi = build_app(engine, settings, telegram_polling=telegram_polling, scheduler=not no_scheduler,
                         feishu_webhook=feishu_webhook)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    uvicorn.run(
        asgi,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


@app.command(name="accounts")
def accounts_cmd(limit: int = typer.Option(20, help="How many to list.")) -> None:
    """List accounts with their stage and health (largest ARR in the reporting currency first)."""
    from lifecycle.money import load_rates

    settings = _settings()
    engine = _engine(settings)
    table = Table("external id", "name", "stage", "health", "ARR")
    with Session(engine) as s:
        largest = load_rates(s, settings.reporting_currency).in_sql(col(Account.arr), col(Account.currency),
                                                                     as_written=True)
        for a in s.exec(select(Account).order_by(largest.desc()).limit(limit)).all():
            score = f"{a.health_score:.0f} {a.health_grade}" if a.health_score is not None else "—"
            table.add_row(a.external_id, a.name, a.stage, score, f"{a.arr:,.0f} {a.currency}")
    console.print(table)


@app.command(name="users")
def users_cmd(
    all_users: bool = typer.Option(False, "--all", help="Include deactivated people."),
) -> None:
    """List people with their ids: email (what `csbot chat --as` takes), role, manager, chat ids, language."""
    settings = _settings()
    engine = _engine(settings)
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


def _local_time(moment: datetime | None, settings: Settings) -> str:
    if moment is None:
        return "—"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M %Z")


@jobs_app.command(name="list")
def jobs_list() -> None:
    """Every scheduled job: its crontab, next run (in CSBOT_TIMEZONE) and what it does."""
    from bot.push.jobs import list_jobs

    settings = _settings()
    table = Table("job", "schedule", f"next run ({settings.timezone})", "what it does")
    for info in list_jobs(settings):
        table.add_row(info.name, info.schedule, _local_time(info.next_run, settings), info.help)
    console.print(table)


@jobs_app.command(name="run")
def jobs_run(
    name: str = typer.Argument(..., help="The job (see `csbot jobs list`)."),
    as_of: str | None = typer.Option(None, help="Day to process (YYYY-MM-DD, default today in CSBOT_TIMEZONE)."),
) -> None:
    """Run one job now, exactly as the scheduler would (with its lock on PostgreSQL); exit 1 when it fails."""
    from adapters.ports import open_ports
    from bot.push.jobs import run_job

    settings = _settings()
    try:
        day = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        err.print(f"[red]--as-of: not a date (YYYY-MM-DD): {as_of}[/red]")
        raise typer.Exit(1) from None
    engine = _engine(settings)
    try:
        result = run_job(name, engine, settings, today=day, ports=open_ports)
    except NotFoundError:
        from bot.push.jobs import JOBS

        err.print(f"[red]No job called {name!r}; the jobs are: {', '.join(JOBS)}.[/red]")
        raise typer.Exit(1) from None
    console.print(result.describe(), markup=False, highlight=False)
    if not result.ok:
        raise typer.Exit(1)


class DeliveryStatus(StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    undeliverable = "undeliverable"


@app.command(name="deliveries")
def deliveries_cmd(
    ids: list[int] | None = typer.Argument(None, help="With --retry: the deliveries to requeue."),
    status: DeliveryStatus | None = typer.Option(
        None, help="Only deliveries in this state (with --retry: failed or undeliverable)."
    ),
    limit: int = typer.Option(50, min=1, help="How many to list (newest first)."),
    retry: bool = typer.Option(
        False, "--retry", help="Requeue failed deliveries and route undeliverable ones again (the given ids, or all)."
    ),
) -> None:
    """The delivery outbox: list messages and their state (an undeliverable one with why), or requeue failed
    and undeliverable ones with --retry."""
    from lifecycle import outbox

    settings = _settings()
    engine = _engine(settings)
    if ids and not retry:
        err.print("[red]Delivery ids are only taken with --retry.[/red]")
        raise typer.Exit(2)
    if retry:
        if status not in (None, DeliveryStatus.failed, DeliveryStatus.undeliverable):
            err.print("[red]--retry takes --status failed or --status undeliverable.[/red]")
            raise typer.Exit(2)
        _retry_deliveries(engine, settings, ids or None, status)
        return
    with Session(engine) as s:
        rows = outbox.list_deliveries(s, status.value if status else None, limit=limit)
        counts = outbox.status_counts(s)
    table = Table("id", "platform", "target", "kind", "status", "attempts", "next attempt", "last error")
    for d in rows:
        waiting = d.status in (outbox.PENDING, outbox.SENDING)
        table.add_row(
            str(d.id), d.platform or "—", d.target or "—", d.kind, d.status, str(d.attempts),
            _local_time(d.next_attempt_at, settings) if waiting else "—", Text(d.last_error or ""),
        )
    console.print(table)
    if not rows:
        console.print("No deliveries" + (f" {status.value}." if status else "."))
    if status is not None:
        return
    if any(counts.values()):
        summary = ", ".join(f"{n:,} {state}" for state, n in counts.items() if n)
        console.print(f"Outbox: {summary}.", highlight=False)
    if counts[outbox.UNDELIVERABLE]:
        console.print(
            "Undeliverable: no configured platform reaches the recipient; the reason is under \"last error\". "
            "Set up the platform (SLACK_BOT_TOKEN, TELEGRAM_BOT_TOKEN), the person's chat id or the team channel, "
            "then `csbot deliveries --retry` routes them again.", highlight=False,
        )


def _retry_deliveries(engine: Engine, settings: Settings, ids: list[int] | None, status: DeliveryStatus | None) -> None:
    """`csbot deliveries --retry`: failed rows back in the queue; undeliverable rows routed again."""
    from bot.push.undelivered import Routes, requeue
    from lifecycle import outbox
    from lifecycle.models import Delivery, utcnow

    kinds = {outbox.FAILED, outbox.UNDELIVERABLE} if status is None else {status.value}
    with session_scope(engine) as s:
        failed_ids = stuck_ids = None
        if ids:
            found = {d.id: d.status for d in s.exec(select(Delivery).where(col(Delivery.id).in_(ids))).all()}
            missing = [i for i in ids if i not in found]
            if missing:
                err.print(f"[red]No delivery with id {', '.join(map(str, missing))}.[/red]")
                raise typer.Exit(1)
            for i in ids:
                if found[i] not in kinds:
                    err.print(f"[yellow]Delivery {i} is {found[i]}, not {' or '.join(sorted(kinds))}: left as it "
                              "is.[/yellow]")
            failed_ids = [i for i in ids if found[i] == outbox.FAILED]
            stuck_ids = [i for i in ids if found[i] == outbox.UNDELIVERABLE]
        if outbox.FAILED in kinds and (failed_ids is None or failed_ids):
            requeued = outbox.retry_failed(s, failed_ids)
            noun = "delivery" if requeued == 1 else "deliveries"
            console.print(f"Requeued {requeued} failed {noun}; they go out on the next run.")
        if outbox.UNDELIVERABLE not in kinds or stuck_ids == []:
            return
        moved = requeue(s, Routes.from_settings(settings), now=utcnow(), ids=stuck_ids)
    total = moved.routed + len(moved.reasons) + moved.stale
    if not total and status is None and not ids:
        return
    noun = "delivery" if total == 1 else "deliveries"
    console.print(f"Routed {total} undeliverable {noun} again: {moved.routed} go out on the next run, "
                  f"{len(moved.reasons)} still cannot be delivered.", highlight=False)
    for delivery_id, reason in moved.reasons:
        console.print(f"  #{delivery_id}: {reason}", markup=False, highlight=False)
    if moved.stale:
        console.print(f"  {moved.stale} survey message(s) left as they are: the survey was answered, expired or "
                      "replaced by a newer one.", highlight=False)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(2)


if __name__ == "__main__":
    main()
