"""`csbot demo`, `csbot chat` and `csbot account`: the console chat on the demo portfolio or the current database."""

from __future__ import annotations

import time

import typer
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from adapters.cli.common import console, default_actor, err, load, open_engine, progress_bar, recompute_and_report
from adapters.console import render_text, run_console
from bot.commands.people import greeting_text
from bot.core.messages import Incoming
from bot.core.router import Router, Services
from bot.push.inbox import waiting_for
from bot.push.jobs import run_job
from lifecycle.intake.demo import is_empty, seed_demo
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, User
from lifecycle.store.settings import Settings


def _chat(engine: Engine, settings: Settings, as_email: str | None) -> int:
    actor = as_email or default_actor(engine)
    if not actor:
        err.print("[red]No users yet: import users first (`csbot import users FILE`) or run `csbot demo`.[/red]")
        return 2

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


def _tonight(engine: Engine, settings: Settings) -> None:
    """The demo's nightly run as of today: alert rules, renewal prompts, surveys and digests, so `alerts`,
    `alert-stats` and `csbot deliveries` have something to show. Nothing leaves the machine: without Slack or
    Telegram the messages are kept as undeliverable, to be retried once a platform is configured."""
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


def demo(
    accounts: int = typer.Option(60, help="How many accounts to generate."),
    days: int | None = typer.Option(None, help="Days of usage history (default 365, or 90 above 5,000 accounts)."),
    seed: int = typer.Option(7, help="Random seed: the same seed gives the same portfolio."),
    as_email: str | None = typer.Option(None, "--as", help="Chat as this user (default: the demo manager)."),
    chat: bool = typer.Option(True, help="Open the console chat after seeding."),
) -> None:
    """Seed the demo portfolio into the database when it is empty, then open the console chat."""
    settings = load()
    engine = open_engine(settings)
    with Session(engine) as s:
        empty = is_empty(s)
    if empty:
        started = time.perf_counter()
        with progress_bar() as bar:
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
        recompute_and_report(engine, settings, backfill=accounts <= 5_000)
        if accounts <= 5_000:
            _tonight(engine, settings)
    else:
        with Session(engine) as s:
            count = s.exec(select(func.count()).select_from(Account)).one()
        err.print(f"The database already holds {count:,} accounts; using them as they are.")
    if chat:
        raise typer.Exit(_chat(engine, settings, as_email))


def chat_cmd(as_email: str | None = typer.Option(None, "--as", help="Chat as this user's email.")) -> None:
    """Open the console chat on the current database."""
    settings = load()
    raise typer.Exit(_chat(open_engine(settings), settings, as_email))


def account_cmd(
    name: list[str] = typer.Argument(..., help="Account name or external id."),
    as_email: str | None = typer.Option(None, "--as", help="Look as this user's email."),
) -> None:
    """Print an account card."""
    settings = load()
    engine = open_engine(settings)
    actor = as_email or default_actor(engine)
    router = Router(Services(engine=engine, settings=settings))
    reply = router.handle(Incoming(platform="console", sender_id=actor, text="account " + " ".join(name)))
    console.print(render_text(reply), markup=False, highlight=False)
    if not reply.cards:
        raise typer.Exit(1)
