"""`python -m bench`: csbot's benchmarks, with the baselines measured in the same run, as a table and JSON.

Scenarios (`--only` picks some):
- recompute: the nightly recompute (health + stages + alert rules) at each `--sizes` (default 10,000 and 100,000
  accounts × 90 days; `--large` adds 1,000,000) on SQLite, and on PostgreSQL with `--postgres`; against the
  per-account ORM implementation of `bench.orm_baseline` (run on a sample, extrapolated per account, its scores
  checked equal to the vectorised ones) and against the SQL floor (`bench.measures.floor_sql`).
- lookup: `/cs account <name>` through the Slack adapter at each size up to 100,000, p50/p95/p99, against a
  no-op Bolt app measured the same way, and the same lookups with the KPIs computed live (no stored card facts).
- outbox: delivery to a fake Slack API, unthrottled and with 429 + Retry-After injected.
- model: churn model training and portfolio scoring (`lifecycle.insight.churn`) at each size up to 100,000, against the
  whole-portfolio signal frames they read (one frame timed, times the frames each needs), with peak RSS.
- ingest: Segment-style usage batches through `lifecycle.intake.ingest.ingest_body`, then resent (idempotency); then 50
  concurrent clients sending one event per request to `POST /api/usage` (`bench.scale_io`), with group commit and,
  as the baseline, with the batching window at 0.
- import: `csbot import usage` of accounts × 60 days (`--import-accounts`, default 10,000 and 100,000) on SQLite,
  and on PostgreSQL with `--postgres`, against a bare executemany / COPY of the same rows (`bench.scale_io`).
- shards: on PostgreSQL only (`--postgres`), the sharded nightly recompute (`lifecycle.shards`, `bench.shards`) at
  `--shards-accounts` accounts × 90 days (default 100,000), worked by one process and by two (a second replica),
  on the same data and the same run, and the ratio.
- nl: the natural-language layer on the evaluation corpus (`bench.nl`): exact-command accuracy per language on the
  held-out part, out-of-scope detection, clarification rate, parse latency at 60 and 100,000 accounts (5,000 with
  `--quick`), and a question's end-to-end time against its command's.

Every measurement runs in a child process of its own; its peak RSS and CPU time come from `os.wait4`. Results go
to `<results>/<scenario>.json` and, combined, `<results>/latest.json`, with the machine they were taken on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import datasets

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = ("recompute", "lookup", "outbox", "model", "ingest", "nl", "import", "shards")
SHARDS_SIZE = 100_000  # accounts of the shards scenario (`--shards-accounts`), × 90 days
SHARDS = 8
IMPORT_SIZES = (10_000, 100_000)  # accounts of the import scenario, × IMPORT_DAYS days of usage
IMPORT_DAYS = 60
INGEST_CLIENTS = 50
DEFAULT_SIZES = (10_000, 100_000)
LARGE_SIZE = 1_000_000
QUICK_SIZE = 200
GOAL_SIZE = 100_000
MB = 1024 * 1024

console = Console(stderr=True)


# ---------------------------------------------------------------------------------------------- child processes


class BenchError(RuntimeError):
    """A measurement's child process failed."""


@dataclass(frozen=True)
class Measured:
    """One child process: what its measure function returned, its peak RSS and the CPU it used."""

    result: dict[str, Any]
    peak_rss_mb: float
    cpu_seconds: float


def run_child(name: str, **kwargs: Any) -> Measured:
    """Run `bench.measures.<name>(**kwargs)` in a fresh Python process and collect its resource usage."""
    with tempfile.TemporaryDirectory(prefix="csbot-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.child", name, json.dumps(kwargs), str(out)], cwd=ROOT, env=env
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not out.exists():
            raise BenchError(f"measurement {name} failed (exit {proc.returncode})")
        result = json.loads(out.read_text())
    # Linux reports ru_maxrss in kilobytes.
    return Measured(result, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


# ------------------------------------------------------------------------------------------------------ results


@dataclass
class Goal:
    """One of issue 7's goals, checked against this run's figures."""

    name: str
    value: float
    target: str
    ok: bool


@dataclass
class Row:
    """One line of the printed table."""

    scenario: str
    size: str
    measure: str
    value: str
    baseline: str = ""
    ratio: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(), "machine": platform.machine(), "load_average": [round(x, 2) for x in load],
    }


def _s(seconds: float) -> str:
    return f"{seconds:,.2f} s" if seconds >= 0.1 else f"{seconds * 1000:,.1f} ms"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _x(ratio: float) -> str:
    return f"{ratio:,.1f}×" if ratio >= 10 else f"{ratio:,.2f}×"


def _size(n: int) -> str:
    return f"{n // 1000:,}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


# ---------------------------------------------------------------------------------------------------- scenarios


@contextmanager
def _postgres(target: str | None) -> Iterator[Callable[[int], str] | None]:
    """Yields a function giving an empty PostgreSQL database URL per size, or None without PostgreSQL.

    `auto` starts a throwaway server (tests/pgserver.py) when the PostgreSQL binaries are installed; a URL names a
    scratch database that the bench empties (drops its `public` schema) before seeding each size."""
    if not target:
        yield None
        return
    if target == "auto":
        from tests.pgserver import PostgresServer, PostgresUnavailable, find_pg_bindir

        if find_pg_bindir() is None:
            console.print("[yellow]PostgreSQL binaries not found: the PostgreSQL runs are skipped.[/yellow]")
            yield None
            return
        try:
            server = PostgresServer().start()
        except PostgresUnavailable as exc:
            console.print(f"[yellow]PostgreSQL could not start ({exc}): its runs are skipped.[/yellow]")
            yield None
            return
        try:
            yield lambda n: server.create_database(f"bench_{n}")
        finally:
            server.stop()
        return

    def empty(_n: int) -> str:
        import psycopg

        dsn = target.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return target

    yield empty


def recompute_scenario(report: Report, sizes: Sequence[int], orm_sample: int, postgres: str | None) -> None:
    per_size: dict[str, Any] = {}
    for n in sizes:
        started = time.perf_counter()
        source = datasets.dataset(n)
        if source.seeded_now:
            report.notes.append(f"seeded {n:,} accounts in {time.perf_counter() - started:,.0f} s (cached)")
        floor = run_child("floor", url=source.url)
        work = datasets.working_copy(source, datasets.CACHE_DIR / f"work-{n}.db")
        nightly = run_child("nightly", url=work.url)
        changed = run_child("incremental", url=work.url)
        read = run_child("signals_read", url=source.url)
        orm = run_child("orm", url=source.url, sample=min(n, orm_sample))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work.path}{suffix}").unlink(missing_ok=True)
        per_size[str(n)] = _recompute_figures(report, "sqlite", n, source.usage_rows, nightly, floor, orm)
        per_size[str(n)] |= _incremental_figures(report, n, changed, read)
    with _postgres(postgres) as database_for:
        if database_for is not None:
            for n in sizes:
                url = database_for(n)
                datasets.seed_url(url, n)
                floor = run_child("floor", url=url)
                nightly = run_child("nightly", url=url)
                per_size[f"postgresql-{n}"] = _recompute_figures(report, "postgresql", n, None, nightly, floor, None)
    _growth(report, sizes, per_size)
    report.data["recompute"] = per_size


def _recompute_figures(report: Report, db: str, n: int, usage_rows: int | None, nightly: Measured,
                       floor: Measured, orm: Measured | None) -> dict[str, Any]:
    seconds = float(nightly.result["seconds"])
    floor_s = float(floor.result["seconds"])
    label = f"{_size(n)} {db}"
    steps = ", ".join(f"{k} {v:.2f}" for k, v in nightly.result["steps"].items())
    report.rows.append(Row("recompute", label, "nightly recompute (health + stages + alert rules)", _s(seconds),
                           f"floor {_s(floor_s)}", _x(seconds / floor_s) + " of floor"))
    report.rows.append(Row("recompute", label, "  steps (s)", steps))
    report.rows.append(Row("recompute", label, "  peak RSS / CPU", f"{nightly.peak_rss_mb:,.0f} MB",
                           "", f"CPU {_s(nightly.cpu_seconds)}"))
    figures: dict[str, Any] = {
        "database": db, "accounts": n, "usage_rows": usage_rows, "seconds": seconds, "cpu_seconds":
        nightly.cpu_seconds, "peak_rss_mb": nightly.peak_rss_mb, "steps": nightly.result["steps"],
        "stage_moves": nightly.result["stage_moves"], "alerts_new": nightly.result["alerts_new"],
        "alerts_resolved": nightly.result["alerts_resolved"], "floor_seconds": floor_s,
        "floor_peak_rss_mb": floor.peak_rss_mb, "vs_floor": seconds / floor_s,
    }
    if orm is not None:
        o = orm.result
        extrapolated = float(o["extrapolated_seconds"])
        how = "measured" if o["sample"] >= n * 0.9 else f"{o['sample']:,} accounts, extrapolated"
        report.rows.append(Row("recompute", label, f"per-account ORM loop ({how})", _s(extrapolated),
                               _s(seconds), _x(extrapolated / seconds) + " faster"))
        report.rows.append(Row("recompute", label, "  ORM scores equal vectorised",
                               f"{o['compared'] - o['mismatched']:,}/{o['compared']:,}"))
        figures |= {"orm_seconds": extrapolated, "orm_sample": o["sample"], "orm_per_account": o["per_account"],
                    "orm_compared": o["compared"], "orm_mismatched": o["mismatched"],
                    "orm_examples": o["examples"], "speedup_vs_orm": extrapolated / seconds}
    if n == GOAL_SIZE and db == "sqlite":
        report.goals += [
            Goal("recompute at 100k on SQLite ≤ 10 s", seconds, "≤ 10 s", seconds <= 10),
            Goal("recompute ≤ 2× the SQL floor", seconds / floor_s, "≤ 2×", seconds / floor_s <= 2),
            Goal("recompute peak RSS ≤ 1 GB", nightly.peak_rss_mb, "≤ 1024 MB", nightly.peak_rss_mb <= 1024),
        ]
        if orm is not None:
            speedup = float(figures["speedup_vs_orm"])
            report.goals.append(Goal("recompute ≥ 20× faster than the ORM loop", speedup, "≥ 20×", speedup >= 20))
    if orm is not None and orm.result["mismatched"]:
        report.notes.append(f"{label}: {orm.result['mismatched']} ORM scores differ: {orm.result['examples']}")
    return figures


def _incremental_figures(report: Report, n: int, changed: Measured, read: Measured) -> dict[str, Any]:
    c, r = changed.result, read.result
    label = f"{_size(n)} sqlite"
    report.rows.append(Row("recompute", label, f"incremental recompute ({c['changed']:,} accounts with new usage)",
                           _s(c["seconds"]), f"full {_s(c['full_seconds'])}",
                           _x(c["full_seconds"] / c["seconds"]) + " faster" if c["seconds"] else ""))
    report.rows.append(Row("recompute", label, "signals frame from roll-ups", _s(r["rollups_seconds"]),
                           f"raw rows {_s(r['raw_seconds'])}",
                           ("equal frames" if r["equal"] else "FRAMES DIFFER")))
    report.rows.append(Row("recompute", label, "ingest-to-fresh (ingest + refresh tick)", _s(c["fresh_seconds"]),
                           f"ingest {_s(c['fresh_ingest_seconds'])}",
                           "health is today's" if c["fresh_is_today"] else "HEALTH NOT REFRESHED"))
    if not r["equal"]:
        report.notes.append(f"{label}: the signals frame from the roll-ups differs from the raw one")
    if n == GOAL_SIZE:
        report.goals += [
            Goal("incremental recompute (1 % changed) ≤ 1 s", c["seconds"], "≤ 1 s", c["seconds"] <= 1),
            Goal("ingest-to-fresh ≤ 5 s", c["fresh_seconds"], "≤ 5 s", c["fresh_seconds"] <= 5),
        ]
    return {"incremental_seconds": c["seconds"], "incremental_changed": c["changed"],
            "incremental_accounts": c["accounts"], "incremental_mode": c["mode"], "incremental_steps": c["steps"],
            "full_same_day_seconds": c["full_seconds"], "ingest_to_fresh_seconds": c["fresh_seconds"],
            "fresh_is_today": c["fresh_is_today"], "signals_rollups_seconds": r["rollups_seconds"],
            "signals_raw_seconds": r["raw_seconds"], "signals_equal": r["equal"],
            "incremental_peak_rss_mb": changed.peak_rss_mb, "signals_read_peak_rss_mb": read.peak_rss_mb}


def _growth(report: Report, sizes: Sequence[int], per_size: dict[str, Any]) -> None:
    ordered = [n for n in sorted(sizes) if str(n) in per_size]
    for small, large in itertools.pairwise(ordered):
        t_small, t_large = per_size[str(small)]["seconds"], per_size[str(large)]["seconds"]
        report.rows.append(Row("recompute", f"{_size(small)} → {_size(large)}", "growth of the nightly time",
                               _x(t_large / t_small), f"accounts {_x(large / small)}",
                               f"{t_large / large * 1e6:,.1f} µs/account"))
        for key, what in (("incremental_seconds", "incremental recompute"), ("signals_rollups_seconds",
                          "signals from roll-ups"), ("signals_raw_seconds", "signals from raw rows"),
                          ("ingest_to_fresh_seconds", "ingest-to-fresh")):
            small_s, large_s = per_size[str(small)].get(key), per_size[str(large)].get(key)
            if small_s and large_s:
                report.rows.append(Row("recompute", f"{_size(small)} → {_size(large)}", f"growth of {what}",
                                       _x(large_s / small_s), f"accounts {_x(large / small)}"))


def lookup_scenario(report: Report, sizes: Sequence[int], requests: int) -> None:
    per_size: dict[str, Any] = {}
    for size in sizes:
        source = datasets.dataset(size)
        work = datasets.working_copy(source, datasets.CACHE_DIR / f"lookup-{size}.db")
        measured = run_child("lookup", url=work.url, requests=requests)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work.path}{suffix}").unlink(missing_ok=True)
        r = measured.result
        app, noop, live = r["app"], r["noop"], r["live"]
        label = _size(size)
        for p in ("p50", "p95", "p99"):
            report.rows.append(Row("lookup", label, f"/cs account <name> {p}", _ms(app[p]),
                                   f"no-op Bolt {_ms(noop[p])}", _x(app[p] / noop[p])))
        report.rows.append(Row("lookup", label, "  same, KPIs computed live (no card facts) p95", _ms(live["p95"]),
                               f"no-op Bolt {_ms(noop['p95'])}", _x(live["p95"] / noop["p95"])))
        report.rows.append(Row("lookup", label, "  card facts stored for the day (nightly step)",
                               _s(r["store_seconds"])))
        report.rows.append(Row("lookup", label, "  answered / peak RSS",
                               f"{r['answered']:,} answers, {r['errors']} errors", f"{measured.peak_rss_mb:,.0f} MB"))
        ratio = app["p95"] / noop["p95"]
        per_size[str(size)] = {**r, "size": size, "peak_rss_mb": measured.peak_rss_mb, "p95_vs_noop": ratio,
                               "live_p95_vs_noop": live["p95"] / noop["p95"]}
        if size == max(sizes):
            report.goals.append(Goal("lookup p95 ≤ 1.5× the Bolt floor", ratio, "≤ 1.5×", ratio <= 1.5))
    for small, large in itertools.pairwise(sorted(int(k) for k in per_size)):
        a, b = per_size[str(small)]["app"]["p95"], per_size[str(large)]["app"]["p95"]
        report.rows.append(Row("lookup", f"{_size(small)} → {_size(large)}", "growth of the lookup p95", _x(b / a),
                               f"accounts {_x(large / small)}"))
    # The largest size's figures at the top level, as before; every size under "sizes".
    report.data["lookup"] = {**per_size[str(max(sizes))], "sizes": per_size}


def outbox_scenario(report: Report, messages: int) -> None:
    plain = run_child("outbox_delivery", messages=messages)
    throttled = run_child("outbox_delivery", messages=messages, throttle_every=2)
    for name, m in (("unthrottled", plain), ("429 + Retry-After", throttled)):
        r = m.result
        report.rows.append(Row("outbox", f"{messages:,} msgs", f"delivery, {name}", f"{r['per_second']:,.0f} msg/s",
                               f"{r['rate_limited']} × 429", f"lost {r['lost']}, duplicated {r['duplicated']}"))
    p, t = plain.result, throttled.result
    report.goals += [
        Goal("outbox ≥ 200 deliveries/s", p["per_second"], "≥ 200/s", p["per_second"] >= 200),
        Goal("outbox with 429s: all delivered, 0 lost, 0 duplicated", t["lost"] + t["duplicated"], "0",
             t["delivered"] == messages and t["lost"] == 0 and t["duplicated"] == 0 and p["lost"] == 0
             and p["duplicated"] == 0),
    ]
    report.data["outbox"] = {"unthrottled": {**p, "peak_rss_mb": plain.peak_rss_mb},
                             "throttled": {**t, "peak_rss_mb": throttled.peak_rss_mb}}


def model_scenario(report: Report, sizes: Sequence[int]) -> None:
    per_size: dict[str, Any] = {}
    for size in sizes:
        source = datasets.dataset(size)
        work = datasets.working_copy(source, datasets.CACHE_DIR / f"model-{size}.db")
        measured = run_child("model", url=work.url)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work.path}{suffix}").unlink(missing_ok=True)
        r = measured.result
        label = _size(size)
        floor = float(r["signals_seconds"]) * int(r["signal_days"])
        if "train_seconds" in r:
            report.rows.append(Row("model", label, f"churn model training ({r['horizon_days']}-day horizon, "
                                   f"{r['observation_dates']} dates)", _s(r["train_seconds"]),
                                   f"{r['signal_days']} signal frames {_s(floor)}",
                                   _x(r["train_seconds"] / floor) + " of the frames"))
        else:
            report.rows.append(Row("model", label, "churn model training", "not trained", r.get("train_error", "")))
        if "score_seconds" in r:
            report.rows.append(Row("model", label, "churn scoring of the portfolio", _s(r["score_seconds"]),
                                   f"2 signal frames {_s(2 * r['signals_seconds'])}", f"{r['scored']:,} accounts"))
        report.rows.append(Row("model", label, "  peak RSS (training + scoring)", f"{measured.peak_rss_mb:,.0f} MB"))
        per_size[str(size)] = {**r, "size": size, "peak_rss_mb": measured.peak_rss_mb, "signal_frames_seconds": floor}
        if size == GOAL_SIZE:
            train_s, score_s = float(r.get("train_seconds", math.inf)), float(r.get("score_seconds", math.inf))
            report.goals += [
                Goal("model training at 100k ≤ 20 s", train_s, "≤ 20 s", train_s <= 20),
                Goal("model scoring at 100k ≤ 5 s", score_s, "≤ 5 s", score_s <= 5),
                Goal("model peak RSS at 100k ≤ 1 GB", measured.peak_rss_mb, "≤ 1024 MB", measured.peak_rss_mb <= 1024),
            ]
    for small, large in itertools.pairwise(sorted(int(k) for k in per_size)):
        a, b = per_size[str(small)], per_size[str(large)]
        if "train_seconds" in a and "train_seconds" in b:
            report.rows.append(Row("model", f"{_size(small)} → {_size(large)}", "growth of training / scoring",
                                   f"{_x(b['train_seconds'] / a['train_seconds'])} / "
                                   f"{_x(b['score_seconds'] / a['score_seconds'])}", f"accounts {_x(large / small)}"))
    report.data["model"] = {**per_size[str(max(sizes))], "sizes": per_size}


def ingest_scenario(report: Report, size: int, requests: int, calls: int, clients: int = INGEST_CLIENTS,
                    per_client: int = 40) -> None:
    source = datasets.dataset(size)
    work = datasets.working_copy(source, datasets.CACHE_DIR / f"ingest-{size}.db")
    measured = run_child("ingest", url=work.url, requests=requests, calls_per_request=calls)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work.path}{suffix}").unlink(missing_ok=True)
    r = measured.result
    label = f"{_size(size)} accounts"
    report.rows.append(Row("ingest", label, f"usage ingest, {calls} calls per request",
                           f"{r['calls_per_second']:,.0f} calls/s", f"p95 {_ms(r['latency']['p95'])} per request",
                           f"{measured.peak_rss_mb:,.0f} MB peak"))
    report.rows.append(Row("ingest", label, "  resent requests", f"{r['resent_duplicates']:,} duplicates",
                           "usage changed" if r["resend_changed_usage"] else "usage unchanged"))
    report.data["ingest"] = {**r, "size": size, "peak_rss_mb": measured.peak_rss_mb}
    report.data["ingest"]["concurrent"] = ingest_clients_figures(report, source, label, clients, per_client)


def ingest_clients_figures(report: Report, source: datasets.Dataset, label: str, clients: int,
                           per_client: int) -> dict[str, Any]:
    """N concurrent single-event clients through HTTP, with group commit and without (window 0)."""
    figures: dict[str, Any] = {}
    for name, window in (("grouped", 5.0), ("alone", 0.0)):
        work = datasets.working_copy(source, datasets.CACHE_DIR / f"ingest-clients-{source.accounts}.db")
        m = run_child("ingest_clients", url=work.url, clients=clients, per_client=per_client, window_ms=window)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work.path}{suffix}").unlink(missing_ok=True)
        figures[name] = {**m.result, "peak_rss_mb": m.peak_rss_mb}
    g, a = figures["grouped"], figures["alone"]
    report.rows.append(Row("ingest", label, f"{clients} concurrent clients, 1 event per request (group commit)",
                           f"{g['events_per_second']:,.0f} events/s",
                           f"window 0: {a['events_per_second']:,.0f} events/s",
                           _x(g["events_per_second"] / a["events_per_second"])))
    report.rows.append(Row("ingest", label, "  latency p50 / p95 per request",
                           f"{_ms(g['p50'])} / {_ms(g['p95'])}", f"window 0: {_ms(a['p50'])} / {_ms(a['p95'])}",
                           f"accepted {g['accepted']:,}/{g['events']:,}"))
    report.goals.append(Goal(f"ingest {clients} concurrent single-event clients ≥ 2,000 events/s",
                             g["events_per_second"], "≥ 2,000/s", g["events_per_second"] >= 2000))
    return figures


def import_scenario(report: Report, sizes: Sequence[int], days: int, postgres: str | None) -> None:
    per_size: dict[str, Any] = {}
    runs: list[tuple[str, int, str | None]] = [("sqlite", n, None) for n in sizes]
    with _postgres(postgres) as database_for:
        if database_for is not None:
            runs += [("postgresql", n, database_for(n)) for n in sizes]
        for db, n, url in runs:
            with tempfile.TemporaryDirectory(prefix="csbot-bench-import-") as folder:
                target = url or f"sqlite:///{Path(folder) / 'import.db'}"
                prepared = run_child("import_prepare", url=target, folder=folder, accounts=n, days=days)
                m = run_child("import_usage", url=target, folder=folder, accounts=n, days=days)
            floor = prepared.result
            r = {**m.result, **floor, "vs_floor": m.result["seconds"] / floor["floor_seconds"],
                 "peak_rss_mb": m.peak_rss_mb, "cpu_seconds": m.cpu_seconds}
            per_size[f"{db}-{n}"] = r
            label = f"{_size(n)} × {days} d {db}"
            report.rows.append(Row("import", label, f"csbot import usage ({r['rows']:,} rows)",
                                   f"{r['rows_per_second']:,.0f} rows/s ({_s(r['seconds'])})",
                                   f"bare {'COPY' if db == 'postgresql' else 'executemany'} "
                                   f"{r['floor_rows_per_second']:,.0f} rows/s", _x(r["vs_floor"]) + " of floor"))
            report.rows.append(Row("import", label, "  same file again (all unchanged) / peak RSS",
                                   _s(r["reimport_seconds"]), f"{m.peak_rss_mb:,.0f} MB"))
            report.rows.append(Row("import", label, f"  csbot import accounts ({n:,} rows)",
                                   f"{r['accounts_rows_per_second']:,.0f} rows/s", _s(r["accounts_seconds"])))
            if n == GOAL_SIZE:
                goal = 200_000 if db == "sqlite" else 300_000
                report.goals.append(Goal(f"import usage on {db} ≥ {goal:,} rows/s", r["rows_per_second"],
                                         f"≥ {goal:,}/s", r["rows_per_second"] >= goal))
                report.goals.append(Goal(f"import usage on {db} peak RSS ≤ 1 GB", m.peak_rss_mb, "≤ 1024 MB",
                                         m.peak_rss_mb <= 1024))
    for db in ("sqlite", "postgresql"):
        ordered = [n for n in sorted(sizes) if f"{db}-{n}" in per_size]
        for small, large in itertools.pairwise(ordered):
            t_small, t_large = per_size[f"{db}-{small}"]["seconds"], per_size[f"{db}-{large}"]["seconds"]
            report.rows.append(Row("import", f"{_size(small)} → {_size(large)} {db}", "growth of the import time",
                                   _x(t_large / t_small), f"rows {_x(large / small)}"))
    report.data["import"] = per_size


# ---------------------------------------------------------------------------------------------------------- CLI


def shards_scenario(report: Report, sizes: Sequence[int], postgres: str | None) -> None:
    figures: dict[str, Any] = {}
    with _postgres(postgres) as database_for:
        if database_for is None:
            report.notes.append("shards: needs PostgreSQL (--postgres auto or a URL); skipped")
            return
        for n in sizes:
            url = database_for(n)
            loaded = run_child("shards_generate", url=url, accounts=n)
            one = run_child("shards_run", url=url, workers=1, shard_count=SHARDS)
            two = run_child("shards_run", url=url, workers=2, shard_count=SHARDS)
            ratio = two.result["seconds"] / one.result["seconds"]
            rows = loaded.result["usage_rows"]
            figures[str(n)] = {"usage_rows": rows, "load_seconds": loaded.result["seconds"],
                               "one_worker": one.result, "two_workers": two.result, "ratio": ratio}
            label = f"{_size(n)} × 90 d"
            report.rows.append(Row("shards", label, f"nightly recompute, {SHARDS} shards, 2 workers",
                                   _s(two.result["seconds"]), f"1 worker {_s(one.result['seconds'])}", _x(ratio)))
            report.notes.append(f"shards {_size(n)}: loaded {rows:,} usage rows in "
                                f"{loaded.result['seconds']['total']:,.0f} s (SQL generate_series); whole-portfolio "
                                f"step {one.result['finish_seconds']:.1f} s / {two.result['finish_seconds']:.1f} s")
            report.goals.append(Goal(f"shards two workers vs one at {_size(n)}", ratio, "≤ 0.6×", ratio <= 0.6))
    report.data["shards"] = figures


def nl_scenario(report: Report, *, quick: bool) -> None:
    from bench import nl

    result = nl.run(quick=quick)
    report.data["nl"] = result
    for part in ("heldout", "dev"):
        for lang, s in result[part]["by_language"].items():
            size = f"{s['utterances']} {lang} ({part})"
            report.rows.append(Row("nl", size, "exact-command accuracy", f"{100 * (s['accuracy'] or 0):.1f} %"))
            if s["out_of_scope_detected"] is not None:
                report.rows.append(Row("nl", size, "out-of-scope detected",
                                       f"{100 * s['out_of_scope_detected']:.1f} %"))
            if s["clarify_rate"] is not None:
                report.rows.append(Row("nl", size, "in-scope questions clarified", f"{100 * s['clarify_rate']:.1f} %"))
    for key in ("parse_60", f"parse_{result['accounts_large']}"):
        figures = result[key]
        report.rows.append(Row("nl", _size(int(key.split("_")[1])), "parse p50 / p95",
                               f"{figures['p50_ms']:.1f} / {figures['p95_ms']:.1f} ms"))
    for key, what in (("end_to_end_slack", "question end to end, Slack (median)"),
                      ("end_to_end", "question in the router alone (median)")):
        e2e = result.get(key) or {}
        if e2e:
            report.rows.append(Row("nl", f"{e2e['pairs']} pairs", what,
                                   f"{e2e['question_ms_median']:.1f} ms", f"{e2e['command_ms_median']:.1f} ms",
                                   _x(e2e["ratio_median"])))
    for name, value, target, ok in nl.goals(result):
        report.goals.append(Goal(f"nl {name}", float(value or 0), target, ok))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES),
                        help="account counts for the recompute, comma-separated (default 10000,100000)")
    parser.add_argument("--large", action="store_true", help="add 1,000,000 accounts to the sizes")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--postgres", default=os.environ.get("CSBOT_BENCH_POSTGRES", ""),
                        help="also run the recompute on PostgreSQL: 'auto' (a throwaway server) or a URL of a "
                             "scratch database the bench empties")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SIZE} accounts, few requests")
    parser.add_argument("--orm-sample", type=int, default=500, help="accounts the ORM loop scores (default 500)")
    parser.add_argument("--requests", type=int, default=400, help="lookup requests per app (default 400)")
    parser.add_argument("--messages", type=int, default=2000, help="outbox messages per run (default 2000)")
    parser.add_argument("--import-accounts", default=",".join(str(s) for s in IMPORT_SIZES),
                        help=f"account counts for the import scenario (× {IMPORT_DAYS} days), comma-separated")
    parser.add_argument("--shards-accounts", default=[SHARDS_SIZE],
                        type=lambda v: [int(s) for s in v.split(",") if s.strip()],
                        help=f"account counts for the shards scenario (× 90 days), comma-separated "
                             f"(default {SHARDS_SIZE})")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the JSON files go")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        console.print(f"[red]Unknown scenario(s): {', '.join(unknown)}; choose among {', '.join(SCENARIOS)}[/red]")
        return 2
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} | ({LARGE_SIZE} if args.large else set()))
    requests, messages, orm_sample, ingest_requests = args.requests, args.messages, args.orm_sample, 40
    import_sizes, import_days, per_client = sorted(int(s) for s in args.import_accounts.split(",") if s.strip()), \
        IMPORT_DAYS, 40
    if args.quick:
        sizes, requests, messages, orm_sample, ingest_requests = [QUICK_SIZE], 20, 60, 50, 4
        import_sizes, import_days, per_client = [QUICK_SIZE], 10, 2
    report = Report()
    started = datetime.now(UTC).replace(tzinfo=None)
    machine = machine_info()
    for scenario in only:
        console.print(f"[bold]{scenario}[/bold] …")
        if scenario == "recompute":
            recompute_scenario(report, sizes, orm_sample, args.postgres or None)
        elif scenario == "lookup":
            lookup_scenario(report, sorted({min(n, GOAL_SIZE) for n in sizes}), requests)
        elif scenario == "outbox":
            outbox_scenario(report, messages)
        elif scenario == "model":
            model_scenario(report, sorted({min(n, GOAL_SIZE) for n in sizes}))
        elif scenario == "ingest":
            ingest_scenario(report, min(max(sizes), GOAL_SIZE), ingest_requests, 500, per_client=per_client)
        elif scenario == "import":
            import_scenario(report, import_sizes, import_days, args.postgres or None)
        elif scenario == "nl":
            nl_scenario(report, quick=bool(args.quick))
        elif scenario == "shards":
            shards_scenario(report, [QUICK_SIZE] if args.quick else args.shards_accounts, args.postgres or None)

    table = Table(title=f"csbot benchmarks — {machine['cpu_count']} CPUs, Python {machine['python']}, "
                        f"SQLite {machine['sqlite']}")
    for column in ("scenario", "size", "measure", "value", "baseline", "ratio"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        table.add_row(row.scenario, row.size, row.measure, row.value, row.baseline, row.ratio)
    out = Console(width=None if sys.stdout.isatty() else 150)
    out.print(table)
    for goal in report.goals:
        mark = "[green]met[/green]" if goal.ok else "[red]missed[/red]"
        out.print(f"{mark}  {goal.name} (this run: {goal.value:,.2f}, goal {goal.target})")
    for note in report.notes:
        out.print(f"[dim]{note}[/dim]")

    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    common = {"started": started.isoformat(timespec="seconds"), "command": command.strip(), "machine": machine,
              "quick": bool(args.quick)}
    args.results.mkdir(parents=True, exist_ok=True)
    for scenario in only:
        if scenario in report.data:
            payload = {**common, "scenario": scenario, "figures": report.data[scenario],
                       "goals": [asdict(g) for g in report.goals if _goal_scenario(g) == scenario]}
            (args.results / f"{scenario}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    latest = {**common, "scenarios": report.data, "goals": [asdict(g) for g in report.goals],
              "table": [asdict(r) for r in report.rows], "notes": report.notes}
    (args.results / "latest.json").write_text(json.dumps(latest, indent=2, default=str) + "\n")
    return 0


def _goal_scenario(goal: Goal) -> str:
    return goal.name.split(" ", 1)[0]


if __name__ == "__main__":
    raise SystemExit(main())
