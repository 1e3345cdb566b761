"""The `csbot` command line (typer + rich), the composition root: every command and group is registered here, in
the order `csbot --help` lists them; each lives in a module of its own beside this one.

It reads the settings, opens the database (migrating it on first start), and wires the core, the router and the
console adapter together.
"""

from __future__ import annotations

import logging
import sys

import typer

from adapters.cli import chat, data, db, deliveries, ingest, jobs, model, serve, usage
from adapters.cli.common import err
from lifecycle.store.errors import ConfigError

app = typer.Typer(
    help="csbot — the chat-first customer-success assistant.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command(name="demo")(chat.demo)
app.command(name="chat")(chat.chat_cmd)
app.command(name="import")(data.import_cmd)
app.command(name="recompute")(data.recompute_cmd)
app.command(name="rebuild-rollups")(data.rebuild_rollups_cmd)
app.command(name="account")(chat.account_cmd)
app.command(name="accounts")(data.accounts_cmd)
app.command(name="users")(data.users_cmd)
app.command(name="serve")(serve.serve)
app.command(name="deliveries")(deliveries.deliveries_cmd)
app.add_typer(db.app, name="db")
app.add_typer(jobs.app, name="jobs")
app.add_typer(model.app, name="model")
app.add_typer(ingest.app, name="ingest")
app.add_typer(usage.app, name="usage")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(2)
