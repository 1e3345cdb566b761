"""Measurements of data coming in: CSV usage import and concurrent single-event ingest (run by `bench.child`).

- `import_usage`: `csbot import usage` (`lifecycle.intake.importers.import_csv`) of accounts × days rows into an empty
  usage table, against the floor of the same rows sent straight into the same table by the driver (a bare
  `executemany` of plain INSERTs on SQLite, a bare COPY on PostgreSQL), measured in the same run (in a process of
  its own, so that its rows in memory do not count in the import's peak memory); then the same
  file imported again (every row unchanged). The accounts file is imported first and timed too.
- `ingest_clients`: `csbot serve`'s `POST /api/usage` under uvicorn in a process of its own, hit by N concurrent
  clients (aiohttp) each sending one event per request, one request after the other; with group commit and, as
  the baseline, with the batching window at 0 (each request its own transaction).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from lifecycle.store.db import make_engine, session_scope, upgrade

START_DAY = date(2025, 1, 1)


def _write_files(folder: Path, accounts: int, days: int) -> tuple[Path, Path, list[tuple[Any, ...]]]:
    """The accounts and usage CSV files, and the usage rows as the floor sends them (account ids 1..N)."""
    acc = folder / "accounts.csv"
    with acc.open("w", encoding="utf-8") as out:
        out.write("external_id,name\n")
        out.writelines(f"ACC-{a:07d},Account {a}\n" for a in range(1, accounts + 1))
    use = folder / "usage.csv"
    day_texts = [(START_DAY + timedelta(days=d)).isoformat() for d in range(days)]
    rows: list[tuple[Any, ...]] = []
    with use.open("w", encoding="utf-8") as out:
        out.write("account_external_id,date,feature,active_users,logins,events\n")
        for a in range(1, accounts + 1):
            lines = []
            for d, day in enumerate(day_texts):
                users, logins, events = (a + d) % 40, (a * 3 + d) % 90, (a * 7 + d * 13) % 1000
                lines.append(f"ACC-{a:07d},{day},,{users},{logins},{events}\n")
                rows.append((a, "", day, users, logins, events))
            out.writelines(lines)
    return acc, use, rows


def _floor(engine: Any, rows: list[tuple[Any, ...]]) -> float:
    """The same rows straight into usage_daily through the driver, in one transaction: the database's own speed."""
    from lifecycle.store.bulkwrite import SQLITE_BULK_CACHE_KIB

    columns = "account_id, feature, day, active_users, logins, events"
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        started = time.perf_counter()
        if engine.dialect.name == "postgresql":
            with driver.cursor() as cur, cur.copy(f"COPY usage_daily ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            driver.execute(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
            driver.executemany(f"INSERT INTO usage_daily ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
        driver.commit()
        seconds = time.perf_counter() - started
        if engine.dialect.name == "postgresql":
            driver.execute("TRUNCATE usage_daily")
        else:
            driver.execute("DELETE FROM usage_daily")
        driver.commit()
        if engine.dialect.name == "sqlite":
            driver.execute("VACUUM")
    finally:
        raw.close()
    return seconds


def import_prepare(url: str, folder: str, accounts: int, days: int) -> dict[str, Any]:
    """Migrate the empty database, write the files, import the accounts (timed) and measure the floor (in a
    process of its own: the floor's rows in memory must not count in the import's peak memory)."""
    from lifecycle.intake.importers import import_csv

    engine = make_engine(url)
    upgrade(engine)
    acc_file, _usage_file, rows = _write_files(Path(folder), accounts, days)
    started = time.perf_counter()
    with session_scope(engine) as session:
        accounts_report = import_csv(session, "accounts", acc_file)
    accounts_seconds = time.perf_counter() - started
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT MIN(id), MAX(id) FROM account")).one()
    assert tuple(ids) == (1, accounts), f"account ids {tuple(ids)}: the floor's rows assume 1..{accounts}"
    floor_seconds = _floor(engine, rows)
    engine.dispose()
    return {"accounts_seconds": accounts_seconds, "accounts_rows_per_second": accounts_report.rows / accounts_seconds,
            "floor_seconds": floor_seconds, "floor_rows_per_second": len(rows) / floor_seconds}


def import_usage(url: str, folder: str, accounts: int, days: int) -> dict[str, Any]:
    """`import_csv` of the usage file into the prepared database, then the same file again."""
    from lifecycle.intake.importers import import_csv

    usage_file = Path(folder) / "usage.csv"
    engine = make_engine(url)
    started = time.perf_counter()
    with session_scope(engine) as session:
        report = import_csv(session, "usage", usage_file)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    with session_scope(engine) as session:
        again = import_csv(session, "usage", usage_file)
    again_seconds = time.perf_counter() - started
    with engine.connect() as conn:
        stored = int(conn.execute(text("SELECT COUNT(*) FROM usage_daily")).scalar_one())
    engine.dispose()
    n = accounts * days
    return {
        "database": "postgresql" if url.startswith("postgresql") else "sqlite", "accounts": accounts, "days": days,
        "rows": n, "seconds": seconds, "rows_per_second": n / seconds, "inserted": report.inserted,
        "stored": stored, "reimport_seconds": again_seconds, "reimport_unchanged": again.unchanged,
    }


# ------------------------------------------------------------------------------------------ concurrent ingest

TOKEN = "bench-ingest-token-0123456789"


def _serve(url: str, window_ms: float, ports: Any) -> None:
    """The child server: `build_app` under uvicorn on 127.0.0.1, port 0; sends its port back."""
    import logging

    import uvicorn

    from adapters.server import build_app
    from lifecycle.store.settings import load_settings

    logging.disable(logging.WARNING)
    settings = load_settings(database_url=url, ingest_token=TOKEN, ingest_batch_window_ms=window_ms)
    engine = make_engine(url)
    server = uvicorn.Server(uvicorn.Config(build_app(engine, settings), host="127.0.0.1", port=0,
                                           log_level="error", access_log=False, lifespan="on"))

    async def run() -> None:
        config = server.config
        if not config.loaded:
            config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        ports.put(server.servers[0].sockets[0].getsockname()[1])
        await server.main_loop()
        await server.shutdown()

    asyncio.run(run())


async def _clients(port: int, accounts: list[str], clients: int, per_client: int, tag: str) -> dict[str, Any]:
    import aiohttp

    stamp = "2025-06-29T10:00:00Z"
    latencies: list[float] = []
    accepted = 0
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(c: int, session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        for k in range(per_client):
            i = c * per_client + k
            body = json.dumps({"type": "track", "event": "Report Viewed", "userId": f"user-{i % 5000}",
                               "groupId": accounts[(i * 7919) % len(accounts)], "timestamp": stamp,
                               "messageId": f"{tag}-{i}"})
            t0 = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/api/usage", data=body, headers=headers) as answer:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                if answer.status == 200:
                    got = (await answer.json())["accepted"]  # awaited first: `+=` would read a stale total
                    accepted += got
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, session) for c in range(clients)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "events": clients * per_client, "accepted": accepted, "seconds": seconds,
        "events_per_second": clients * per_client / seconds, "statuses": statuses,
        "p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))],
    }


def ingest_clients(url: str, clients: int, per_client: int, window_ms: float) -> dict[str, Any]:
    engine = make_engine(url)
    with engine.connect() as conn:
        accounts = [str(e) for e in conn.execute(text(
            "SELECT external_id FROM account WHERE status = 'active' ORDER BY id")).scalars()]
        before = int(conn.execute(text("SELECT COUNT(*) FROM ingest_message")).scalar_one())
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_serve, args=(url, window_ms, ports), daemon=True)
    server.start()
    try:
        port = int(ports.get(timeout=60))
        asyncio.run(_clients(port, accounts, clients, 1, f"warm-{window_ms}"))
        result = asyncio.run(_clients(port, accounts, clients, per_client, f"run-{window_ms}"))
    finally:
        server.terminate()
        server.join(10)
    with engine.connect() as conn:
        after = int(conn.execute(text("SELECT COUNT(*) FROM ingest_message")).scalar_one())
    engine.dispose()
    return {**result, "clients": clients, "window_ms": window_ms, "claimed": after - before - clients}
