"""`csbot model …`: train and report the churn model, evaluate candidates on any labelled CSV, backtest the scorecard.

Thin wrappers over `lifecycle.insight.churn` and `lifecycle.insight.evaluate` that print rich tables; registered on the
main app in
`adapters.cli.app`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from adapters.cli.common import load, open_engine
from lifecycle.insight.churn import (
    NotEnoughHistory,
    churn_label_counts,
    default_insight_config,
    latest_model_info,
    load_model,
    score_portfolio,
)
from lifecycle.insight.churn import backtest as run_backtest
from lifecycle.insight.churn import train as train_model
from lifecycle.insight.evaluate import evaluate_file
from lifecycle.scoring.health import load_scorecard
from lifecycle.store.db import session_scope
from lifecycle.store.errors import ConfigError, CsbotError

app = typer.Typer(help="The churn model: train, report, evaluate on a CSV, backtest the health score.",
                  no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _engine() -> Engine:
    return open_engine(load())


def _insight() -> Any:
    try:
        return default_insight_config()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    number = float(value)
    return "—" if math.isnan(number) else f"{number:.{digits}f}"


def _scores_row(name: str, scores: Mapping[str, Any] | None, *extra: str) -> list[str]:
    if not scores:
        return [name, "—", "—", "—", "—", *extra]
    return [name, _fmt(scores.get("roc_auc")), _fmt(scores.get("pr_auc")), _fmt(scores.get("top_decile_lift"), 2),
            f"{int(scores.get('positives', 0))}/{int(scores.get('rows', 0))}", *extra]


@app.command()
def train(as_of: str | None = typer.Option(None, help="Day to train as of (YYYY-MM-DD, default today).")) -> None:
    """Train the churn model on the history (time-ordered CV picks the candidate), store it and score every account."""
    settings = load()
    engine = _engine()
    config = _insight()
    day = date.fromisoformat(as_of) if as_of else date.today()
    try:
        with session_scope(engine) as session:
            result = train_model(session, today=day, config=config.churn,
                                 scorecard=load_scorecard(settings.scorecard_file))
            model = load_model(session, result.version)
            assert model is not None
            run = score_portfolio(session, model, as_of=day, reasons=config.churn.reasons)
    except NotEnoughHistory as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(1) from None
    table = Table("candidate", "ROC AUC", "PR AUC", "top-decile lift", "churned/rows", "chosen",
                  title=f"Time-ordered CV over {result.folds} observation date(s)")
    for c in result.candidates:
        table.add_row(*_scores_row(c.name, c.scores.as_json() if c.scores else None,
                                   "✓" if c.name == result.kind else ""))
    console.print(table)
    console.print(
        f"Model {result.version}: {result.rows:,} rows ({result.positives} churned within "
        f"{config.churn.horizon_days} days, {result.churned_accounts} accounts), observation dates "
        f"{result.window[0]} → {result.window[1]}; trained in {result.seconds:.1f} s; scored {run.scored:,} accounts."
    )


@app.command()
def report() -> None:
    """The stored model: ROC AUC, PR AUC, top-decile lift and calibration, next to the health score's figures."""


    engine = _engine()
    with Session(engine) as session:
        info = latest_model_info(session)
        churned, total = churn_label_counts(session)
    if info is None:
        err.print(f"No churn model yet ({churned} churned account(s) with a churn date among {total:,}). "
                  "Run `csbot model train` once there is churn history.")
        raise typer.Exit(1)
    meta = info.meta
    console.print(
        f"Model {info.version} ({info.kind}), trained {info.trained_at:%Y-%m-%d %H:%M} UTC; predicts churn within "
        f"{info.horizon_days} days. Observation dates {meta.get('window', ['?', '?'])[0]} → "
        f"{meta.get('window', ['?', '?'])[1]}: {meta.get('rows', 0):,} rows, {meta.get('positives', 0)} churned "
        f"({meta.get('churned_accounts', 0)} accounts); {meta.get('folds', 0)} time-ordered folds."
    )
    table = Table("ranking by", "ROC AUC", "PR AUC", "top-decile lift", "churned/rows", "",
                  title="Out-of-fold figures (each date predicted by a model trained on earlier dates only)")
    for name, scores in (meta.get("candidates") or {}).items():
        table.add_row(*_scores_row(name, scores, "chosen" if name == info.kind else ""))
    table.add_row(*_scores_row("health score (100 − score)", meta.get("baseline"), "baseline"))
    console.print(table)
    calibration = meta.get("calibration") or []
    if calibration:
        cal = Table("predicted band", "rows", "mean predicted", "observed churn", title="Calibration (chosen model)")
        for row in calibration:
            cal.add_row(f"{100 * row['from']:.0f}–{100 * row['to']:.0f} %", str(row["rows"]),
                        f"{100 * row['predicted']:.1f} %", f"{100 * row['observed']:.1f} %")
        console.print(cal)
    console.print(f"Features: {', '.join(meta.get('features') or [])}.")


def _record(path: Path, entry: Mapping[str, Any]) -> None:
    """Add or replace this dataset's entry in a JSON results file."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
    results = {r["dataset"]: r for r in data.get("results", []) if isinstance(r, dict) and "dataset" in r}
    results[str(entry["dataset"])] = dict(entry)
    data = {"what": "csbot model evaluate: 5-fold stratified shuffled CV (seed 0), out-of-fold ROC AUC, PR AUC and "
                    "top-decile lift per candidate",
            "results": sorted(results.values(), key=lambda r: str(r["dataset"]))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@app.command()
def evaluate(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="A labelled CSV file."),
    target: str = typer.Option(..., "--target", help="The label column."),
    id_column: str | None = typer.Option(None, "--id", help="An identifier column to leave out."),
    positive: str | None = typer.Option(None, "--positive", help="The label value that means churn."),
    folds: int = typer.Option(5, min=2, max=20, help="Cross-validation folds."),
    record: Path | None = typer.Option(None, "--record", help="Also write the figures into this JSON file."),
    signal: list[str] | None = typer.Option(
        None, "--signal", help="'Column=signal' (repeatable): also score each row with the health scorecard, "
        "reading that scorecard signal (e.g. days_since_last_login) from that column."
    ),
) -> None:
    """Cross-validate every candidate on a labelled CSV (stratified, shuffled) and print AUC and lift; with
    `--signal`, the health scorecard's own AUC on the same rows too."""
    signals: dict[str, str] = {}
    for item in signal or []:
        column, sep, name = item.rpartition("=")
        if not sep or not column.strip() or not name.strip():
            err.print(f"[red]--signal {item!r}: write it as 'Column=signal', e.g. "
                      "'Days.Since.Last.Login=days_since_last_login'.[/red]")
            raise typer.Exit(2)
        signals[column.strip()] = name.strip()
    try:
        scorecard = load_scorecard(load().scorecard_file) if signals else None
        result = evaluate_file(file, target, id_column=id_column, positive=positive, folds=folds,
                               progress=lambda name: err.print(f"cross-validating {name} …"), signals=signals,
                               scorecard=scorecard)
    except CsbotError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"{result.dataset}: {result.rows:,} rows, {result.positives:,} positive ({result.target_share:.1f} % "
        f"“{result.positive}”); {len(result.numeric)} numeric and {len(result.categorical)} categorical columns"
        + (f"; left out as identifiers: {', '.join(result.dropped)}" if result.dropped else "")
        + (f"; read as numbers: {', '.join(result.coerced)}" if result.coerced else "") + "."
    )
    table = Table("candidate", "ROC AUC", "PR AUC", "top-decile lift", "seconds", "",
                  title=f"{result.folds}-fold stratified cross-validation")
    for c in result.candidates:
        table.add_row(c.name, f"{c.scores.roc_auc:.3f}", f"{c.scores.pr_auc:.3f}", f"{c.scores.top_decile_lift:.2f}",
                      f"{c.seconds:.1f}", "chosen" if c.name == result.chosen else "")
    health = result.health
    if health is not None:
        h = health.scores
        table.add_row("health score (100 − score)", f"{h.roc_auc:.3f}", f"{h.pr_auc:.3f}",
                      f"{h.top_decile_lift:.2f}", "—", "scorecard")
    console.print(table)
    best = next(c for c in result.candidates if c.name == result.chosen)
    console.print(f"Chosen: {result.chosen} — ROC AUC {best.scores.roc_auc:.3f}, "
                  f"top-decile lift {best.scores.top_decile_lift:.2f}.")
    if health is not None and scorecard is not None:
        mapped = ", ".join(f"{column} → {name}" for column, name in health.signals.items())
        capped = ", ".join(f"{name} on {rows:,} rows" for name, rows in health.critical.items())
        console.print(
            f"Health score (scorecard {health.scorecard_version}, not fitted: the score itself ranks the rows) on "
            f"{health.scored:,} of {result.rows:,} rows, from {', '.join(scorecard.label(m) for m in health.measures)}"
            f" ({mapped}); ROC AUC {health.scores.roc_auc:.3f}."
            + (f" Critical signals capped the score: {capped}." if capped else "")
        )
    if record is not None:
        _record(record, result.as_json())
        console.print(f"Recorded in {record}.")


@app.command()
def backtest(as_of: str | None = typer.Option(None, help="Day to look back from (YYYY-MM-DD, default today).")) -> None:
    """How well the health score ranked accounts that later churned (AUC of 100 − score), and fitted weights."""


    settings = load()
    engine = _engine()
    config = _insight()
    day = date.fromisoformat(as_of) if as_of else date.today()
    scorecard = load_scorecard(settings.scorecard_file)
    with Session(engine) as session:
        result = run_backtest(session, today=day, config=config.churn, scorecard=scorecard)
    if result.scores is None:
        err.print(f"No churn within {result.horizon_days} days of any observation date ({result.rows:,} rows): "
                  "nothing to backtest the health score against yet.")
        raise typer.Exit(1)
    console.print(
        f"Health score {scorecard.version} replayed on {len(result.by_date)} observation date(s): {result.rows:,} "
        f"rows, {result.positives} churned within {result.horizon_days} days."
    )
    console.print(f"Scorecard AUC (100 − score vs churned within {result.horizon_days} days): "
                  f"{result.scores.roc_auc:.3f}; PR AUC {result.scores.pr_auc:.3f}; "
                  f"top-decile lift {result.scores.top_decile_lift:.2f}.")
    dates = Table("observation date", "accounts", "churned", "AUC", title="By observation date")
    for day_, rows, churned, auc in result.by_date:
        dates.add_row(day_.isoformat(), str(rows), str(churned), _fmt(auc))
    console.print(dates)
    weights = Table("measure", "current weight", "suggested weight",
                    title="Default weights vs weights fitted from the data")
    for name, weight in result.current_weights.items():
        weights.add_row(scorecard.label(name), f"{weight:g}", _fmt(result.suggested_weights.get(name), 1))
    console.print(weights)
    if result.suggested_scores is not None:
        console.print(f"With the suggested weights the AUC on the same rows would be "
                      f"{result.suggested_scores.roc_auc:.3f} (in-sample: check it on new history before adopting).")
