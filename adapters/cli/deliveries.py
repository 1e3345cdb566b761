"""`csbot deliveries [--retry]`: the delivery outbox, and requeueing what failed or could not be delivered."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from adapters.cli.common import console, err, load, local_time, open_engine
from bot.push.undelivered import Routes, requeue
from lifecycle.store import outbox
from lifecycle.store.db import session_scope
from lifecycle.store.models import Delivery, utcnow
from lifecycle.store.settings import Settings


class DeliveryStatus(StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    undeliverable = "undeliverable"


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
    settings = load()
    engine = open_engine(settings)
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
            local_time(d.next_attempt_at, settings) if waiting else "—", Text(d.last_error or ""),
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
