"""The benchmark suite (`python -m bench`) at a tiny size: what it reports, never how fast anything was.

The quick run (200 accounts) goes through `bench.__main__.main` with every measurement run in this process (the
child-process runner is swapped for a direct call, which keeps the test fast); one more test runs a measurement in
a real child process to check that the runner collects its result and its peak memory. The dataset cache lives in
a temporary directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench import datasets
from bench.child import MEASURES

RECOMPUTE_KEYS = {
    "database", "accounts", "usage_rows", "seconds", "cpu_seconds", "peak_rss_mb", "steps", "stage_moves",
    "alerts_new", "alerts_resolved", "floor_seconds", "vs_floor", "orm_seconds", "orm_sample", "orm_compared",
    "orm_mismatched", "speedup_vs_orm",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("bench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "CACHE_DIR", path)
        mp.setenv("CSBOT_BENCH_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def quick_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `python -m bench --quick` run, measurements in process; returns the parsed latest.json."""
    results = tmp_path_factory.mktemp("bench-results")

    def in_process(name: str, **kwargs: Any) -> bench_main.Measured:
        return bench_main.Measured(MEASURES[name](**kwargs), peak_rss_mb=1.0, cpu_seconds=0.0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_main, "run_child", in_process)
        assert bench_main.main(["--quick", "--results", str(results)]) == 0
    written = {p.name for p in results.iterdir()}
    assert written == {"latest.json", "recompute.json", "lookup.json", "outbox.json", "model.json", "ingest.json",
                       "nl.json", "import.json"}
    for name in ("recompute", "lookup", "outbox", "model", "ingest", "nl", "import"):
        per_scenario = json.loads((results / f"{name}.json").read_text())
        assert per_scenario["scenario"] == name
        assert {"cpu_count", "python", "sqlite"} <= set(per_scenario["machine"])
    latest: dict[str, Any] = json.loads((results / "latest.json").read_text())
    return latest


def test_quick_run_records_the_machine_and_every_scenario(quick_run: dict[str, Any]) -> None:
    assert quick_run["quick"] is True
    assert quick_run["command"].startswith("python -m bench --quick")
    assert set(quick_run["scenarios"]) == {"recompute", "lookup", "outbox", "model", "ingest", "nl", "import"}
    assert quick_run["table"], "the printed table is kept in the JSON too"


def test_nl_reports_accuracy_per_language_latency_and_the_end_to_end_ratio(quick_run: dict[str, Any]) -> None:
    nl = quick_run["scenarios"]["nl"]
    assert set(nl["heldout"]["by_language"]) == {"en", "zh"}
    for figures in nl["heldout"]["by_language"].values():
        assert figures["utterances"] > 0 and 0 <= figures["accuracy"] <= 1
    assert nl["parse_60"]["p95_ms"] > 0 and nl[f"parse_{nl['accounts_large']}"]["messages"] > 0
    assert nl["end_to_end"]["ratio_median"] > 0
    slack = nl["end_to_end_slack"]
    assert slack["ratio_median"] > 0 and slack["answered"] >= 6 * slack["pairs"] and slack["refused_or_failed"] == 0
    assert any(g["name"].startswith("nl ") for g in quick_run["goals"])


def test_recompute_figures_have_every_key_and_the_orm_scores_match(quick_run: dict[str, Any]) -> None:
    figures = quick_run["scenarios"]["recompute"][str(bench_main.QUICK_SIZE)]
    assert set(figures) >= RECOMPUTE_KEYS
    assert figures["accounts"] == bench_main.QUICK_SIZE
    assert {"signals", "health", "stages", "alerts"} <= set(figures["steps"])
    # Every sampled active account scored by the per-account ORM loop equals the vectorised recompute.
    assert figures["orm_compared"] == figures["orm_sample"] > 30
    assert figures["orm_mismatched"] == 0


def test_lookup_answers_every_request_of_both_apps(quick_run: dict[str, Any]) -> None:
    lookup = quick_run["scenarios"]["lookup"]
    assert lookup["errors"] == 0
    # 20 timed and 10 warm-up requests for each of the three runs (csbot with the stored card facts, the no-op Bolt
    # app, csbot computing the KPIs live), each answered through the response URL.
    assert lookup["answered"] == 3 * (20 + 10)
    for app in ("app", "noop", "live"):
        assert lookup[app]["n"] == 20
        assert 0 < lookup[app]["p50"] <= lookup[app]["p95"] <= lookup[app]["p99"]
    assert lookup["store_seconds"] > 0


def test_outbox_loses_and_duplicates_nothing_with_or_without_429s(quick_run: dict[str, Any]) -> None:
    outbox = quick_run["scenarios"]["outbox"]
    for run in ("unthrottled", "throttled"):
        assert outbox[run]["delivered"] == outbox[run]["messages"] == 60
        assert outbox[run]["lost"] == outbox[run]["duplicated"] == 0
        assert outbox[run]["statuses"] == {"sent": 60}
    assert outbox["unthrottled"]["rate_limited"] == 0
    assert outbox["throttled"]["rate_limited"] == outbox["throttled"]["injected"] > 0


def test_ingest_applies_every_call_once_and_a_resend_changes_nothing(quick_run: dict[str, Any]) -> None:
    ingest = quick_run["scenarios"]["ingest"]
    assert ingest["calls"] == ingest["accepted"] == 4 * 500
    assert ingest["resent_duplicates"] == ingest["calls"]
    assert ingest["resend_changed_usage"] is False
    for run in ingest["concurrent"].values():  # 50 single-event clients, grouped and alone: every event once
        assert run["accepted"] == run["events"] == run["claimed"] == 50 * 2
        assert run["statuses"] == {"200": 100}


def test_import_stores_every_row_and_measures_the_floor_beside_it(quick_run: dict[str, Any]) -> None:
    run = quick_run["scenarios"]["import"]["sqlite-200"]
    assert run["rows"] == run["inserted"] == run["stored"] == 200 * 10
    assert run["reimport_unchanged"] == run["rows"]
    assert run["floor_seconds"] > 0 and run["vs_floor"] == run["seconds"] / run["floor_seconds"]


def test_model_reports_its_timings_or_why_it_could_not_train(quick_run: dict[str, Any]) -> None:
    model = quick_run["scenarios"]["model"]
    assert ("train_seconds" in model) != ("train_error" in model)
    if "train_error" in model:
        assert "churn" in model["train_error"]
    assert model["signals_seconds"] > 0 and model["signal_days"] >= 2 * model["observation_dates"] > 0


def test_goals_are_judged_from_the_figures(quick_run: dict[str, Any]) -> None:
    goals = {g["name"]: g for g in quick_run["goals"]}
    zero_loss = goals["outbox with 429s: all delivered, 0 lost, 0 duplicated"]
    assert zero_loss["ok"] is True and zero_loss["value"] == 0
    lookup = goals["lookup p95 ≤ 1.5× the Bolt floor"]
    assert lookup["value"] == pytest.approx(quick_run["scenarios"]["lookup"]["p95_vs_noop"])
    assert lookup["ok"] is (lookup["value"] <= 1.5)


def test_a_measurement_in_a_child_process_reports_its_result_and_peak_memory(cache: Path) -> None:
    source = datasets.dataset(bench_main.QUICK_SIZE)
    measured = bench_main.run_child("floor", url=source.url)
    active_with_usage = measured.result["accounts"]
    assert 0 < active_with_usage <= bench_main.QUICK_SIZE
    assert measured.peak_rss_mb > 10  # a Python process with SQLAlchemy loaded, read from the child's rusage
    assert measured.cpu_seconds > 0


def test_a_failing_measurement_raises(cache: Path) -> None:
    with pytest.raises(bench_main.BenchError, match="floor failed"):
        bench_main.run_child("floor", url=f"sqlite:///{cache / 'missing' / 'none.db'}")
