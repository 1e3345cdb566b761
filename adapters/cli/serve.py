"""`csbot serve`: the chat platforms, usage ingest, health and metrics over HTTP, with the scheduler and the
delivery worker."""

from __future__ import annotations

import logging

import typer
import uvicorn

from adapters.cli.common import err, load, open_engine
from adapters.server import build_app
from lifecycle.store.errors import ConfigError


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


    settings = load()
    logging.getLogger().setLevel(settings.log_level)
    engine = open_engine(settings)
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
