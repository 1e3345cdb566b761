"""`csbot db upgrade`: the schema migrations by hand (every start applies them too)."""

from __future__ import annotations

import typer

from adapters.cli.common import console, err, load
from lifecycle.store.db import make_engine, upgrade
from lifecycle.store.errors import ConfigError

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command(name="upgrade")
def db_upgrade(revision: str = typer.Argument("heads")) -> None:
    """Apply the schema migrations (also done automatically on every start)."""
    settings = load()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, revision)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Database at revision {revision}.")
