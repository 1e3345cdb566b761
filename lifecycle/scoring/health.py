"""Health scorecards: the scorecard file, vectorised scoring, daily snapshots, trends and explanations.

A scorecard (`config/scorecard.toml`, documented in the file itself) turns the signals frame of
`lifecycle.scoring.signals` into a 0–100 score per account: each measure reads one signal, bands give it points,
and the score is the weighted mean of the points over the measures that have data (weights depend on the
stage and, optionally, the segment). A measure without data is left out and the others' weights
renormalised, so the contributions (points × effective weight) add up to the score. An account whose
measures with data carry less than the scorecard's `min_coverage` of its weight (e.g. nothing known but "no
tickets") has no score: `score` is NaN and `grade` is "unknown"; it gets no snapshot and its account row is
marked so.

Critical signals (`[critical.<name>]`) are conditions no weighted mean may hide (usage halved, nobody logging in):
each one that holds caps the score just below the top of its grade (`cap = "red"` or "yellow"), so that the
score, the grade, the trend and every list agree; the weighted mean is kept as `uncapped_score` and the signals
are named first in the explanation. `[at_risk]` holds the thresholds of the at-risk definition
(lifecycle/scoring/risk.py).

Snapshots are upserted on (account, day), so recomputing a day twice leaves one row per account with the
latest values. Everything that touches many accounts is done on whole columns (NumPy/pandas) and bulk SQL.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Date, Table, bindparam, text
from sqlmodel import Session

from lifecycle.scoring.signals import NO_LOGIN_IN_WINDOW, SIGNAL_COLUMNS, build_signals
from lifecycle.store.bulkwrite import update_rows, upsert_rows
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, HealthSnapshot, utcnow
from lifecycle.store.settings import read_toml

DEFAULT_SCORECARD = Path(__file__).resolve().parent.parent / "config" / "scorecard.toml"
UNKNOWN_GRADE = "unknown"
GRADES = ("red", "yellow", "green")
FRESHNESS_KEY = "_freshness"  # reserved key of the snapshot's measures JSON
CRITICAL_KEY = "_critical"  # reserved key: the critical signals that held, when any did
Lang = Literal["en", "zh"]

# Signals copied next to each measure so that the explanation can say more than the value.
_DETAIL_SIGNALS = {
    "usage_trend": {"short": "usage_change_7", "long": "usage_change_30"},
    "support_load": {"urgent": "urgent_open_tickets", "recent": "tickets_30", "prior": "tickets_prior_30"},
}
_FRESHNESS_SIGNALS = {
    "usage_days": "days_since_last_usage",
    "nps_days": "days_since_last_nps",
    "note_days": "days_since_last_note",
}


# ----------------------------------------------------------------------------------------------- scorecard


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RisingPenalty(_Strict):
    """Points taken off a measure when a count rises against its baseline (tickets this month vs last)."""

    signal: str
    baseline: str
    ratio: float = Field(default=1.5, gt=0)
    min_count: float = Field(default=3, ge=0)
    points: float = Field(ge=0, le=100)


class MeasureConfig(_Strict):
    """One measure: which signal it reads and the bands that turn the value into points."""

    label: str = Field(min_length=1)
    label_zh: str = Field(min_length=1)
    signal: str
    baseline: str | None = None
    scale: float = 1.0
    bands: list[tuple[float, float]] = Field(min_length=1)
    rising: RisingPenalty | None = None

    @field_validator("bands")
    @classmethod
    def _ordered_bands(cls, bands: list[tuple[float, float]]) -> list[tuple[float, float]]:
        starts = [start for start, _ in bands]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError("band starts must be strictly ascending")
        if any(not 0 <= points <= 100 for _, points in bands):
            raise ValueError("band points must be between 0 and 100")
        return bands

    def points(self, values: np.ndarray) -> np.ndarray:
        """Points of each value through the bands; NaN stays NaN."""
        starts = np.array([start for start, _ in self.bands], dtype=float)
        points = np.array([p for _, p in self.bands], dtype=float)
        index = np.clip(np.searchsorted(starts, values, side="right") - 1, 0, len(starts) - 1)
        return np.where(np.isnan(values), np.nan, points[index])


_MINUS = "−"


def _check_template(template: str) -> str:
    """A critical signal's words may use {value} and {threshold}, with a format spec ({value:.0f})."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template: {exc}") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if conversion or name not in ("value", "threshold"):
            raise ValueError(f"unknown placeholder {{{name}}}: use {{value}} or {{threshold}}")
        try:
            format(-1.5, spec or "")
        except ValueError:
            raise ValueError(f"bad number format {{{name}:{spec}}}") from None
    return template


class CriticalSignal(_Strict):
    """A condition no weighted mean may hide: `signal` at least `at_least` (or at most `at_most`) caps the grade
    at `cap` and is named first in the explanation, in the words of `text` / `text_zh`."""

    signal: str
    at_least: float | None = None
    at_most: float | None = None
    cap: Literal["red", "yellow"] = "red"
    text: str = Field(min_length=1)
    text_zh: str = Field(min_length=1)

    @field_validator("text", "text_zh")
    @classmethod
    def _valid_text(cls, value: str) -> str:
        return _check_template(value)

    @model_validator(mode="after")
    def _one_threshold(self) -> CriticalSignal:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("give exactly one of `at_least` or `at_most`")
        threshold = self.threshold
        if not math.isfinite(threshold):
            raise ValueError("the threshold must be a finite number")
        return self

    @property
    def threshold(self) -> float:
        return float(self.at_least if self.at_least is not None else self.at_most)  # type: ignore[arg-type]

    def holds(self, values: np.ndarray) -> np.ndarray:
        """Where the signal is critical; no data (NaN) never is."""
        with np.errstate(invalid="ignore"):
            hit = values >= self.threshold if self.at_least is not None else values <= self.threshold
        return hit & ~np.isnan(values)

    def words(self, value: float | None, lang: Lang = "en") -> str:
        """The signal in words with its value ("usage −92 % in the last 30 days vs the 30 before")."""
        template = self.text_zh if lang == "zh" else self.text
        out = []
        for literal, name, spec, _conversion in string.Formatter().parse(template):
            out.append(literal)
            if name is None:
                continue
            number = self.threshold if name == "threshold" else value
            if number is None or math.isnan(number):
                out.append("未知" if lang == "zh" else "unknown")
            else:
                text_ = format(float(number), spec or "g")
                out.append(_MINUS + text_[1:] if text_.startswith("-") else text_)
        return "".join(out)


class RiskDefinition(_Strict):
    """What makes an account "at risk" besides red and critical signals (`[at_risk]`, see lifecycle/scoring/risk.py)."""

    # A yellow (or red) account that lost at least this many points in 7 or in 30 days is falling fast.
    falling_points: float = Field(default=10, gt=0, le=100)
    # A churn probability at or above this (from the churn model; quiet without one).
    churn_probability: float = Field(default=0.5, gt=0, le=1)


class Grades(_Strict):
    """Grade thresholds: score < red_below is red, score >= green_from is green, yellow in between."""

    red_below: float = Field(default=50, ge=0, le=100)
    green_from: float = Field(default=75, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Grades:
        if self.green_from < self.red_below:
            raise ValueError("green_from must not be below red_below")
        return self


class Scorecard(_Strict):
    """A validated scorecard file."""

    version: str = Field(min_length=1)
    # Share of the account's total weight that must have data for a score; below it the grade is "unknown".
    min_coverage: float = Field(default=0.0, ge=0, le=1)
    grades: Grades = Grades()
    measures: dict[str, MeasureConfig] = Field(min_length=1)
    weights: dict[str, dict[str, float]]
    segment_weights: dict[str, dict[str, float]] = {}
    critical: dict[str, CriticalSignal] = {}
    at_risk: RiskDefinition = RiskDefinition()

    def weights_for(self, stage: str | None) -> dict[str, float]:
        """Raw weight of every measure for accounts in `stage` (the stage's table over the default)."""
        merged = {name: 0.0 for name in self.measures}
        merged.update(self.weights.get("default", {}))
        if stage is not None:
            merged.update(self.weights.get(stage, {}))
        return merged

    def multipliers_for(self, segment: str | None) -> dict[str, float]:
        table = self.segment_weights.get(segment, {}) if segment is not None else {}
        return {name: table.get(name, 1.0) for name in self.measures}

    def grade(self, score: float | None) -> str:
        if score is None or math.isnan(score):
            return UNKNOWN_GRADE
        if score < self.grades.red_below:
            return "red"
        return "green" if score >= self.grades.green_from else "yellow"

    def label(self, measure: str, lang: Lang = "en") -> str:
        config = self.measures.get(measure)
        if config is None:
            return measure.replace("_", " ")
        return config.label_zh if lang == "zh" else config.label

    def ceiling(self, cap: str) -> float:
        """The highest score a critical signal with this cap leaves: just below green, or just below yellow."""
        top = self.grades.red_below if cap == "red" else self.grades.green_from
        return max(top - 1.0, 0.0)


def _check_references(card: Scorecard, source: str) -> None:
    """Cross-key checks pydantic cannot express per field; each error names the offending key."""
    known = set(SIGNAL_COLUMNS)
    for name, measure in card.measures.items():
        signals = {"signal": measure.signal, "baseline": measure.baseline}
        if measure.rising is not None:
            signals |= {"rising.signal": measure.rising.signal, "rising.baseline": measure.rising.baseline}
        for key, signal in signals.items():
            if signal is not None and signal not in known:
                raise ConfigError(f"{source}: measures.{name}.{key}: unknown signal {signal!r}")
    if "default" not in card.weights:
        raise ConfigError(f"{source}: weights.default: missing (every measure needs a default weight)")
    for table_name, tables in (("weights", card.weights), ("segment_weights", card.segment_weights)):
        for group, table in tables.items():
            for measure_name, weight in table.items():
                key = f"{table_name}.{group}.{measure_name}"
                if measure_name not in card.measures:
                    raise ConfigError(f"{source}: {key}: unknown measure")
                if not math.isfinite(weight) or weight < 0:
                    raise ConfigError(f"{source}: {key}: must be a number >= 0")
    if sum(card.weights["default"].values()) <= 0:
        raise ConfigError(f"{source}: weights.default: at least one weight must be above 0")
    for name, critical in card.critical.items():
        if critical.signal not in known:
            raise ConfigError(f"{source}: critical.{name}.signal: unknown signal {critical.signal!r}")
        top = card.grades.red_below if critical.cap == "red" else card.grades.green_from
        if top <= 0:
            bound = "red_below" if critical.cap == "red" else "green_from"
            raise ConfigError(f"{source}: critical.{name}.cap: {critical.cap!r} needs grades.{bound} above 0")


def parse_scorecard(raw: Mapping[str, Any], source: str = "scorecard") -> Scorecard:
    """Validate an already-parsed scorecard; errors raise `ConfigError` naming `source` and the key."""
    try:
        card = Scorecard.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
    _check_references(card, source)
    return card


def load_scorecard(path: Path | None = None) -> Scorecard:
    """Read and validate a scorecard TOML file (the bundled one by default)."""
    path = path or DEFAULT_SCORECARD
    raw = read_toml(path, "scorecard")
    return parse_scorecard(raw, str(path))


@lru_cache(maxsize=1)
def default_scorecard() -> Scorecard:
    return load_scorecard()


# ------------------------------------------------------------------------------------------------- scoring


def _column(signals: pd.DataFrame, name: str) -> np.ndarray:
    # A signal absent from the frame counts as "no data" rather than an error: partial frames stay scoreable.
    if name not in signals.columns:
        return np.full(len(signals), np.nan)
    return pd.to_numeric(signals[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def measure_values(signals: pd.DataFrame, config: MeasureConfig) -> np.ndarray:
    """The measure's value per account (NaN = no data): the scaled signal, or its % change vs a baseline."""
    current = _column(signals, config.signal)
    if config.baseline is None:
        return current * config.scale
    baseline = _column(signals, config.baseline)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (current - baseline) / baseline * 100.0
    return np.where(baseline > 0, change, np.nan)


def _rising(signals: pd.DataFrame, rule: RisingPenalty) -> np.ndarray:
    current = np.nan_to_num(_column(signals, rule.signal))
    baseline = np.nan_to_num(_column(signals, rule.baseline))
    return (current >= rule.min_count) & (current >= rule.ratio * baseline)


def _group_matrix(keys: pd.Series, rows: Any, measures: Sequence[str]) -> np.ndarray:
    """One row of per-measure numbers per account, computed once per distinct key (stage or segment)."""
    codes, uniques = pd.factorize(keys, use_na_sentinel=True)
    table = np.array([[rows(key)[m] for m in measures] for key in [*uniques, None]], dtype=float)
    return table[codes]  # code -1 (missing key) picks the trailing `None` row


def score_frame(signals: pd.DataFrame, scorecard: Scorecard) -> pd.DataFrame:
    """Score every account of a signals frame at once.

    Returns, indexed like `signals`: `score` (0–100, one decimal; NaN when the measures with data carry less
    than `min_coverage` of the weight, or none; capped by the critical signals that hold), `uncapped_score` (the
    weighted mean before the caps), `grade` (red/yellow/green/unknown), `coverage` (that share),
    `critical_<name>` (whether that critical signal holds) and `critical_<name>_value` (its value where it does),
    and per measure `<m>_value`, `<m>_points`, `<m>_weight` (effective,
    renormalised over the measures with data; an account's weights sum to 1) and `<m>_contribution`
    (points × weight; they add up to the score) — all NaN for a measure without data. Also `<m>_rising` for
    measures with a rising penalty, the detail and freshness signals the explanation needs, and
    `stage`/`segment` when present.
    """
    names = list(scorecard.measures)
    n = len(signals)
    values = np.empty((n, len(names)))
    points = np.empty((n, len(names)))
    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        config = scorecard.measures[name]
        values[:, j] = measure_values(signals, config)
        points[:, j] = config.points(values[:, j])
        if config.rising is not None:
            rising = _rising(signals, config.rising) & ~np.isnan(values[:, j])
            penalised = np.maximum(points[:, j] - config.rising.points, 0.0)
            points[:, j] = np.where(rising, penalised, points[:, j])
            out[f"{name}_rising"] = rising

    absent = pd.Series([None] * n, index=signals.index, dtype=object)
    stages = signals["stage"] if "stage" in signals.columns else absent
    segments = signals["segment"] if "segment" in signals.columns else absent
    raw = _group_matrix(stages, scorecard.weights_for, names) * _group_matrix(
        segments, scorecard.multipliers_for, names
    )
    has_data = ~np.isnan(values)
    possible = raw.sum(axis=1)
    raw = np.where(has_data, raw, 0.0)
    totals = raw.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = np.where(possible > 0, totals[:, 0] / possible, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(totals > 0, raw / totals, np.nan)
    weights = np.where(has_data, weights, np.nan)
    contributions = weights * points
    scored = (totals[:, 0] > 0) & (coverage >= scorecard.min_coverage - 1e-9)
    uncapped = np.where(scored, np.round(np.nansum(contributions, axis=1), 1), np.nan)

    # Critical signals cap scored accounts only: an account graded "unknown" has too little data to be scored.
    ceiling = np.full(n, np.inf)
    for name, critical in scorecard.critical.items():
        values_ = _column(signals, critical.signal)
        holds = critical.holds(values_) & scored
        out[f"critical_{name}"] = holds
        out[f"critical_{name}_value"] = np.where(holds, values_, np.nan)
        ceiling = np.where(holds, np.minimum(ceiling, scorecard.ceiling(critical.cap)), ceiling)
    score = np.minimum(uncapped, ceiling)

    red, green = scorecard.grades.red_below, scorecard.grades.green_from
    grade = np.select(
        [~scored, score < red, score >= green], [UNKNOWN_GRADE, "red", "green"], default="yellow"
    )
    result = pd.DataFrame({"score": score, "grade": grade, "coverage": coverage, "uncapped_score": uncapped},
                          index=signals.index)
    for column in ("stage", "segment"):
        if column in signals.columns:
            result[column] = signals[column].to_numpy()
    for j, name in enumerate(names):
        result[f"{name}_value"] = values[:, j]
        result[f"{name}_points"] = points[:, j]
        result[f"{name}_weight"] = weights[:, j]
        result[f"{name}_contribution"] = contributions[:, j]
    for column, values_ in out.items():
        result[column] = values_
    for signal in sorted({s for detail in _DETAIL_SIGNALS.values() for s in detail.values()}):
        result[signal] = _column(signals, signal)
    for signal in _FRESHNESS_SIGNALS.values():
        result[signal] = _column(signals, signal)
    result.attrs["scorecard_version"] = scorecard.version
    return result


# ----------------------------------------------------------------------------------------------- snapshots


def _json_column(frame: pd.DataFrame, column: str) -> list[float | None]:
    """A numeric column as JSON-ready Python numbers (rounded; None for NaN), converted in one go."""
    if column not in frame.columns:
        return [None] * len(frame)
    values = np.round(pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan), 4)
    return pd.Series(values, dtype=object).where(~np.isnan(values), None).tolist()


def critical_entries(scored: pd.DataFrame, scorecard: Scorecard) -> list[dict[str, Any] | None]:
    """Per row of `scored`, the snapshot's `_critical` entry — {"uncapped": the weighted mean, "signals": [{"name",
    "value", "threshold", "cap"}, …] in scorecard order} — or None when no critical signal holds."""
    out: list[dict[str, Any] | None] = [None] * len(scored)
    if not scorecard.critical or scored.empty:
        return out
    names = list(scorecard.critical)
    holds = np.column_stack([
        scored[f"critical_{n}"].to_numpy(dtype=bool) if f"critical_{n}" in scored.columns
        else np.zeros(len(scored), dtype=bool)
        for n in names
    ])
    uncapped = _json_column(scored, "uncapped_score")
    values = {n: _json_column(scored, f"critical_{n}_value") for n in names}
    for row in np.flatnonzero(holds.any(axis=1)).tolist():
        signals = [
            {"name": n, "value": values[n][row], "threshold": scorecard.critical[n].threshold,
             "cap": scorecard.critical[n].cap}
            for j, n in enumerate(names) if holds[row, j]
        ]
        out[row] = {"uncapped": uncapped[row], "signals": signals}
    return out


def critical_frame(signals: pd.DataFrame, scorecard: Scorecard) -> pd.Series:
    """Per account of a signals frame whose health is filled in, the critical signals that hold ([{"name",
    "value"}, …] in scorecard order, empty when none): what `score_frame` found for the same frame. Accounts
    graded "unknown" (or not graded) have none, as they are not capped."""
    n = len(signals)
    out: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    if not scorecard.critical or not n:
        return pd.Series(out, index=signals.index, dtype=object)
    graded = signals["health_grade"].isin(GRADES).to_numpy() if "health_grade" in signals.columns \
        else np.zeros(n, dtype=bool)
    for name, critical in scorecard.critical.items():
        values = _column(signals, critical.signal)
        for row in np.flatnonzero(critical.holds(values) & graded).tolist():
            out[row].append({"name": name, "value": float(values[row])})
    return pd.Series(out, index=signals.index, dtype=object)


def snapshot_rows(scored: pd.DataFrame, as_of: date, scorecard: Scorecard) -> list[dict[str, Any]]:
    """Rows for `HealthSnapshot`, one per scored account (accounts without a score get none).

    `measures` maps each measure to {"value", "points", "weight", "contribution", "data"} (plus detail such
    as "urgent"/"recent"/"prior"/"rising" where the explanation uses it); the reserved key `_freshness` holds
    the age in days of the usage, NPS and note data (None when there is none).
    """
    known = scored[scored["score"].notna()]
    fields = ("value", "points", "weight", "contribution")
    # Built column-wise: per measure, one list of entry dicts; then zipped into one measures dict per account.
    per_measure: dict[str, list[dict[str, Any]]] = {}
    for name in scorecard.measures:
        columns = [_json_column(known, f"{name}_{field}") for field in fields]
        entries = [
            {"value": v, "points": p, "weight": w, "contribution": c, "data": v is not None}
            for v, p, w, c in zip(*columns, strict=True)
        ]
        extra: dict[str, list[Any]] = {
            key: _json_column(known, signal) for key, signal in _DETAIL_SIGNALS.get(name, {}).items()
        }
        if f"{name}_rising" in known.columns:
            extra["rising"] = known[f"{name}_rising"].astype(bool).tolist()
        for key, values in extra.items():
            for entry, value in zip(entries, values, strict=True):
                entry[key] = value
        per_measure[name] = entries
    fresh_columns = [_json_column(known, signal) for signal in _FRESHNESS_SIGNALS.values()]
    per_measure[FRESHNESS_KEY] = [
        dict(zip(_FRESHNESS_SIGNALS, ages, strict=True)) for ages in zip(*fresh_columns, strict=True)
    ]
    critical = critical_entries(known, scorecard)

    keys = list(per_measure)
    now = utcnow()
    return [
        {
            "account_id": account_id,
            "day": as_of,
            "score": score,
            "grade": grade,
            "measures": {**dict(zip(keys, entries, strict=True)),
                         **({CRITICAL_KEY: entry} if entry is not None else {})},
            "scorecard_version": scorecard.version,
            "computed_at": now,
        }
        for account_id, score, grade, entry, *entries in zip(
            known.index.astype("int64").tolist(),
            known["score"].astype(float).tolist(),
            known["grade"].astype(str).tolist(),
            critical,
            *per_measure.values(),
            strict=True,
        )
    ]


def _json_literals(frame: pd.DataFrame, column: str) -> list[str]:
    """A numeric column as JSON number literals, rounded as `_json_column` rounds (`null` for NaN).

    Each distinct value is formatted once: most measure columns (points, weights, day counts) hold a few dozen
    distinct values over the whole portfolio, and formatting floats one by one is what made snapshots slow.
    """
    if column not in frame.columns:
        return ["null"] * len(frame)
    values = np.round(pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan), 4)
    uniques, inverse = np.unique(values, return_inverse=True)
    # repr is what json.dumps writes for a finite float; it alone is three times cheaper.
    literals = np.array(
        ["null" if math.isnan(u) else repr(u) if math.isfinite(u) else json.dumps(u) for u in uniques.tolist()],
        dtype=object,
    )
    return list(literals[inverse.reshape(-1)].tolist())


def snapshot_json(scored: pd.DataFrame, scorecard: Scorecard) -> list[str]:
    """The `measures` JSON of `snapshot_rows`, as text, for each row of `scored` (the caller picks the rows).

    Same keys, order and numbers as `json.dumps` of the dicts `snapshot_rows` builds, assembled column by
    column from literals instead of dict by dict: a nightly run writes one such document per account.
    """
    per_measure: list[list[str]] = []
    for name in scorecard.measures:
        value, points, weight, contribution = (
            _json_literals(scored, f"{name}_{field}") for field in ("value", "points", "weight", "contribution")
        )
        key = json.dumps(name)
        entries = [
            f'{key}: {{"value": {v}, "points": {p}, "weight": {w}, "contribution": {c}, "data": '
            + ("false" if v == "null" else "true")
            for v, p, w, c in zip(value, points, weight, contribution, strict=True)
        ]
        extra = [(json.dumps(k), _json_literals(scored, signal)) for k, signal in _DETAIL_SIGNALS.get(name, {}).items()]
        if f"{name}_rising" in scored.columns:
            flags = scored[f"{name}_rising"].astype(bool).tolist()
            extra.append(('"rising"', ["true" if f else "false" for f in flags]))
        for extra_key, literals in extra:
            entries = [f"{e}, {extra_key}: {x}" for e, x in zip(entries, literals, strict=True)]
        per_measure.append([e + "}" for e in entries])
    ages = [_json_literals(scored, signal) for signal in _FRESHNESS_SIGNALS.values()]
    keys = [json.dumps(k) for k in _FRESHNESS_SIGNALS]
    per_measure.append([
        f"{json.dumps(FRESHNESS_KEY)}: {{{keys[0]}: {u}, {keys[1]}: {n}, {keys[2]}: {t}}}"
        for u, n, t in zip(*ages, strict=True)
    ])
    critical_key = json.dumps(CRITICAL_KEY)
    critical = ["" if entry is None else f", {critical_key}: {json.dumps(entry)}"
                for entry in critical_entries(scored, scorecard)]
    return ["{" + ", ".join(parts) + extra + "}"
            for *parts, extra in zip(*per_measure, critical, strict=True)]


_WRITE_CHUNK = 20_000
_SNAPSHOT_COLUMNS = ("account_id", "day", "score", "grade", "measures", "scorecard_version", "computed_at")
_SNAPSHOT_UPDATE = _SNAPSHOT_COLUMNS[2:]
_HEALTH_COLUMNS = ("health_score", "health_grade", "health_at")


def _snapshot_table() -> Table:
    return HealthSnapshot.__table__  # type: ignore[attr-defined]


def _account_table() -> Table:
    return Account.__table__  # type: ignore[attr-defined]


def write_snapshots(session: Session, scored: pd.DataFrame, as_of: date, scorecard: Scorecard) -> int:
    """Upsert the snapshots of every scored account of `scored` on (account, day) and copy score, grade and day
    onto the accounts (accounts without a score get grade "unknown"); returns the number of snapshots.

    The bulk path of the nightly recompute (`lifecycle.store.bulkwrite`): the snapshots through one staged upsert per
    chunk (COPY on PostgreSQL), the accounts through one staged `UPDATE … FROM`.
    """
    known = scored[scored["score"].notna()]
    now = utcnow()
    ids = known.index.astype("int64").tolist()
    scores = known["score"].astype(float).tolist()
    grades = known["grade"].astype(str).tolist()
    documents = snapshot_json(known, scorecard)
    for start in range(0, len(ids), _WRITE_CHUNK):
        stop = start + _WRITE_CHUNK
        upsert_rows(session, _snapshot_table(), _SNAPSHOT_COLUMNS, [
            (a, as_of, s, g, d, scorecard.version, now)
            for a, s, g, d in zip(ids[start:stop], scores[start:stop], grades[start:stop], documents[start:stop],
                                  strict=True)
        ], conflict=("account_id", "day"), update=_SNAPSHOT_UPDATE)
    unknown = scored.index[scored["score"].isna()].astype("int64").tolist()
    update_rows(session, _account_table(), ("id",), _HEALTH_COLUMNS, [
        *zip(ids, scores, grades, [as_of] * len(ids), strict=True),
        *((a, None, UNKNOWN_GRADE, as_of) for a in unknown),
    ])
    return len(ids)


def update_account_health(session: Session, records: Sequence[Mapping[str, Any]]) -> int:
    """Copy score, grade and day onto the account rows (one staged UPDATE, `lifecycle.store.bulkwrite.update_rows`)."""
    rows = [(r["account_id"], r["score"], r["grade"], r["day"]) for r in records]
    update_rows(session, _account_table(), ("id",), _HEALTH_COLUMNS, rows)
    return len(rows)


def save_snapshots(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Upsert snapshots on (account, day) — a re-run of the same day overwrites — and update the accounts."""
    now = utcnow()
    upsert_rows(session, _snapshot_table(), _SNAPSHOT_COLUMNS,
                [tuple(r.get(c, now) if c == "computed_at" else r[c] for c in _SNAPSHOT_COLUMNS) for r in rows],
                conflict=("account_id", "day"), update=_SNAPSHOT_UPDATE)
    update_account_health(session, rows)
    return len(rows)


@dataclass(frozen=True)
class HealthRun:
    """The outcome of a recompute: the signals (health columns filled) and the scored frame."""

    as_of: date
    signals: pd.DataFrame
    scored: pd.DataFrame
    snapshots: int


def recompute_health(
    session: Session, as_of: date, scorecard: Scorecard | None = None, *, signals: pd.DataFrame | None = None
) -> HealthRun:
    """Score every active account for `as_of`, store snapshots, update the accounts (idempotent per day).

    `signals` is the frame of `build_signals(session, as_of)` when the caller has it already; its health
    columns are filled in. Churned accounts are not scored: their last health stays as it was when they left.
    """
    scorecard = scorecard or default_scorecard()
    if signals is None:
        signals = build_signals(session, as_of)
    scored = score_frame(signals[signals["status"] == "active"], scorecard)
    written = write_snapshots(session, scored, as_of, scorecard)
    signals["health_score"] = scored["score"].reindex(signals.index)
    signals["health_grade"] = scored["grade"].reindex(signals.index)
    return HealthRun(as_of=as_of, signals=signals, scored=scored, snapshots=written)


# -------------------------------------------------------------------------------------------------- trends


def _score_on_or_before(param: str) -> str:
    return (
        "(SELECT h.score FROM health_snapshot h WHERE h.account_id = a.id AND h.day <= :" + param
        + " ORDER BY h.day DESC LIMIT 1)"
    )


_TRENDS_SQL = (
    f"SELECT a.id AS account_id, {_score_on_or_before('d0')} AS score, "
    f"{_score_on_or_before('d7')} AS score_7, {_score_on_or_before('d30')} AS score_30 FROM account a"
)
_MAX_IDS_IN_QUERY = 10_000


def trends(session: Session, account_ids: Sequence[int] | None, as_of: date) -> pd.DataFrame:
    """Score change per account: `score` (latest snapshot on or before `as_of`), `delta_7` and `delta_30`.

    A delta is the score minus the latest snapshot on or before `as_of - 7` (`- 30`) days; NaN when either is
    missing. One SQL query (an index lookup per account and reference day).
    """
    dates = {"d0": as_of, "d7": as_of - timedelta(days=7), "d30": as_of - timedelta(days=30)}
    ids = None if account_ids is None else sorted({int(a) for a in account_ids})
    sql = _TRENDS_SQL
    if ids is not None and len(ids) <= _MAX_IDS_IN_QUERY:
        sql += " WHERE a.id IN :ids"
    stmt = text(sql).bindparams(*(bindparam(name, type_=Date()) for name in dates))
    params: dict[str, Any] = dict(dates)
    if " IN :ids" in sql:
        stmt = stmt.bindparams(bindparam("ids", expanding=True))
        params["ids"] = ids
    result = session.execute(stmt, params)
    frame = pd.DataFrame.from_records(result.all(), columns=list(result.keys()))
    frame = frame.set_index("account_id").astype(float)
    frame.index = frame.index.astype("int64")
    if ids is not None:
        frame = frame.reindex(pd.Index(ids, dtype="int64", name="account_id"))
    frame["delta_7"] = frame["score"] - frame["score_7"]
    frame["delta_30"] = frame["score"] - frame["score_30"]
    return frame[["score", "delta_7", "delta_30"]].sort_index()


# --------------------------------------------------------------------------------------------- explanation

_GRADE_ZH = {"red": "红色", "yellow": "黄色", "green": "绿色", UNKNOWN_GRADE: "未知"}


def _round(value: float) -> int:
    """Round half away from zero, as people do (Python's round() goes to even)."""
    return math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)


def _signed(value: float) -> str:
    number = _round(value)
    return f"{_MINUS}{-number}" if number < 0 else f"+{number}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _number(value: Any) -> float | None:
    """A stored number, or None for "no data" (None or NaN)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _present(value: Any) -> bool:
    return _number(value) is not None


def split_measures(measures: Mapping[str, Any]) -> tuple[dict[str, Mapping[str, Any]], dict[str, Any]]:
    """A snapshot's measures JSON as (measures, freshness)."""
    freshness = dict(measures.get(FRESHNESS_KEY) or {})
    return {k: v for k, v in measures.items() if not k.startswith("_")}, freshness


def _days_ago(days: int, lang: Lang, subject_en: str, subject_zh: str) -> str:
    if lang == "zh":
        return f"{subject_zh}今天" if days == 0 else f"{subject_zh} {days} 天前"
    if days == 0:
        return f"{subject_en} today"
    return f"{subject_en} yesterday" if days == 1 else f"{subject_en} {days} days ago"


def value_text(
    name: str, entry: Mapping[str, Any], lang: Lang = "en", scorecard: Scorecard | None = None
) -> str:
    """What a measure's value says, in words ("2 urgent tickets open", "最近一次 NPS 评分 6")."""
    card = scorecard or default_scorecard()
    v = _number(entry.get("value"))
    if v is None:
        return "无数据" if lang == "zh" else "no data"
    n = _round(v)
    zh = lang == "zh"
    if name == "licence_utilisation":
        return f"{card.label(name, lang)} {n}%" if zh else f"{card.label(name, lang)} {n} %"
    if name == "usage_trend":
        return _usage_trend_text(v, entry, card.measures.get(name), zh)
    if name == "login_recency":
        if n >= NO_LOGIN_IN_WINDOW:
            return "超过 60 天未登录" if zh else "no login in over 60 days"
        return _days_ago(n, lang, "last login", "最近登录于")
    if name == "feature_breadth":
        return f"近30天使用了 {n} 个功能" if zh else f"{_plural(n, 'feature')} used in 30 days"
    if name == "support_load":
        return _support_text(n, entry, zh)
    if name == "nps":
        return f"最近一次 NPS 评分 {n}" if zh else f"latest NPS score {n}"
    if name == "engagement_recency":
        return _days_ago(n, lang, "last CSM note", "最近 CSM 记录于")
    if name == "renewal_proximity":
        if n < 0:
            return f"续约已逾期 {-n} 天" if zh else f"renewal {_plural(-n, 'day')} overdue"
        if n == 0:
            return "今天续约" if zh else "renewal today"
        return f"距续约 {n} 天" if zh else f"renewal in {_plural(n, 'day')}"
    return f"{card.label(name, lang)} {v:g}"


def _usage_trend_text(value: float, entry: Mapping[str, Any], config: MeasureConfig | None, zh: bool) -> str:
    """The usage trend in the words of the windows it compared: the short trend (last 7 days against the 23 days
    before) when that is the value, else the 30-day one."""
    short = _number(entry.get("short"))
    reads_short = config is not None and config.baseline is None and config.signal in ("usage_change",
                                                                                         "usage_change_7")
    if reads_short and short is not None and _round(short) == _round(value):
        if zh:
            return f"近7天日均用量较之前23天 {_signed(value)}%"
        return f"daily usage {_signed(value)} % in the last 7 days vs the 23 days before"
    return f"用量较前30天 {_signed(value)}%" if zh else f"usage {_signed(value)} % vs the prior 30 days"


def critical_signals(measures: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], float | None]:
    """The critical signals a snapshot's measures JSON records, and its score before their cap (None if none)."""
    entry = measures.get(CRITICAL_KEY)
    if not isinstance(entry, Mapping):
        return [], None
    signals = [s for s in entry.get("signals") or [] if isinstance(s, Mapping) and s.get("name")]
    return signals, _number(entry.get("uncapped"))


def critical_text(signal: Mapping[str, Any], lang: Lang = "en", scorecard: Scorecard | None = None) -> str:
    """One recorded critical signal in words, as the scorecard words it (its name when the scorecard no longer
    has it)."""
    card = scorecard or default_scorecard()
    name = str(signal.get("name"))
    config = card.critical.get(name)
    value = _number(signal.get("value"))
    if config is None:
        return name.replace("_", " ") + ("" if value is None else f" {value:g}")
    return config.words(value, lang)


def _support_text(open_high: int, entry: Mapping[str, Any], zh: bool) -> str:
    urgent_number = _number(entry.get("urgent"))
    urgent = None if urgent_number is None else _round(urgent_number)
    if open_high == 0:
        en, zh_text = "no high/urgent tickets open", "没有未关闭的高/紧急工单"
    elif urgent == open_high:
        en, zh_text = f"{_plural(open_high, 'urgent ticket')} open", f"{open_high} 个紧急工单未关闭"
    elif urgent == 0:
        en = f"{_plural(open_high, 'high-priority ticket')} open"
        zh_text = f"{open_high} 个高优先级工单未关闭"
    elif urgent is None:
        en, zh_text = f"{open_high} high/urgent tickets open", f"{open_high} 个高/紧急工单未关闭"
    else:
        en = f"{open_high} high/urgent tickets open ({urgent} urgent)"
        zh_text = f"{open_high} 个高/紧急工单未关闭（其中 {urgent} 个紧急）"
    recent, prior = _number(entry.get("recent")), _number(entry.get("prior"))
    if entry.get("rising") and recent is not None and prior is not None:
        en += f", tickets up to {_round(recent)} from {_round(prior)} in 30 days"
        zh_text += f"，近30天工单由 {_round(prior)} 增至 {_round(recent)}"
    return zh_text if zh else en


def measure_lines(
    measures: Mapping[str, Any], lang: Lang = "en", scorecard: Scorecard | None = None
) -> list[tuple[str, str, float | None, float | None]]:
    """Per-measure detail rows (label, value in words, points, contribution), in scorecard order."""
    card = scorecard or default_scorecard()
    entries, _ = split_measures(measures)
    order = [m for m in card.measures if m in entries] + [m for m in entries if m not in card.measures]
    lines = []
    for name in order:
        entry = entries[name]
        points = entry.get("points") if _present(entry.get("points")) else None
        contribution = entry.get("contribution") if _present(entry.get("contribution")) else None
        lines.append((card.label(name, lang), value_text(name, entry, lang, card), points, contribution))
    return lines


def _trend_text(delta_7: float | None, delta_30: float | None, zh: bool) -> str:
    for delta, days in ((_number(delta_7), 7), (_number(delta_30), 30)):
        if delta is not None:
            moved = _round(delta)
            if zh:
                word = "持平" if moved == 0 else ("上升" if moved > 0 else "下降")
                return f"，{days}天内{word}" + ("" if moved == 0 else str(abs(moved)))
            if moved == 0:
                return f", unchanged in {days} days"
            return f", {'up' if moved > 0 else 'down'} {abs(moved)} in {days} days"
    return ""


def _freshness_text(freshness: Mapping[str, Any], zh: bool) -> str:
    days = _number(freshness.get("usage_days"))
    if days is None:
        return "无用量数据" if zh else "no usage data"
    n = _round(days)
    if zh:
        return "用量数据为今天" if n == 0 else f"用量数据为 {n} 天前"
    return "usage data from today" if n == 0 else f"usage data {_plural(n, 'day')} old"


def explain(
    score: float | None,
    grade: str,
    measures: Mapping[str, Any],
    *,
    delta_7: float | None = None,
    delta_30: float | None = None,
    freshness: Mapping[str, Any] | None = None,
    lang: Lang = "en",
    scorecard: Scorecard | None = None,
) -> str:
    """The health in one sentence, e.g. "58, yellow, down 14 in 7 days: usage −40 % vs the prior 30 days (−9),
    2 urgent tickets open (−5); usage data 1 day old".

    Critical signals come first, right after the score: "49, red, down 19 in 7 days; critical: usage −92 % in the
    last 30 days vs the 30 before (capped at red; 68 on the measures alone); main drags: …". Red and yellow accounts
    then list the top three drags, each with the points it costs against a perfect score (effective weight ×
    (100 − points)); green ones list what holds them up, with their contributions. The 7-day trend is given
    (the 30-day one when there is no 7-day reference). Measures without data are named at the end. `measures`
    is a snapshot's measures JSON; `freshness` defaults to its `_freshness` entry.
    """
    card = scorecard or default_scorecard()
    zh = lang == "zh"
    comma, sep, colon, brackets = ("，", "；", "：", "（）") if zh else (", ", "; ", ": ", " ()")
    entries, stored_freshness = split_measures(measures)
    # Scorecard order makes ties stable whatever order the database returned the JSON keys in.
    names = [m for m in card.measures if m in entries] + [m for m in entries if m not in card.measures]
    fresh = _freshness_text(freshness if freshness is not None else stored_freshness, zh)
    missing = [card.label(name, lang) for name in names if _number(entries[name].get("value")) is None]
    no_data = ""
    if missing:
        no_data = f"{sep}无数据：{'、'.join(missing)}" if zh else f"{sep}no data: {', '.join(missing)}"
    if score is None or math.isnan(score):
        head = "暂无评分：所有指标均无数据" if zh else "no score yet: no measure has data"
        return f"{head}{sep}{fresh}"

    # (name, entry, weight, points, contribution) of the measures that count in the score.
    counted = []
    for name in names:
        entry = entries[name]
        value, weight = _number(entry.get("value")), _number(entry.get("weight"))
        points, contribution = _number(entry.get("points")), _number(entry.get("contribution"))
        if value is not None and weight is not None and points is not None:
            counted.append((name, entry, weight, points, contribution or 0.0))
    if grade == "green":
        amounts = [(n, e, _round(c)) for n, e, _, _, c in counted]
        sign, intro = "+", ("主要支撑：" if zh else "held up by ")
    else:
        amounts = [(n, e, _round(w * (100.0 - p))) for n, e, w, p, _ in counted]
        sign, intro = _MINUS, ""
    items = [item for item in sorted(amounts, key=lambda item: -item[2]) if item[2] > 0][:3]
    parts = [
        f"{value_text(name, entry, lang, card)}{brackets[:-1]}{sign}{amount}{brackets[-1]}"
        for name, entry, amount in items
    ]
    critical = _critical_part(measures, score, lang, card)
    if critical and parts and grade != "green":
        # After the critical signals the drags need their own name, or they read as more critical signals.
        intro = "主要拖累：" if zh else "main drags: "
    body = (f"{sep if critical else colon}{intro}{comma.join(parts)}") if parts else ""
    grade_text = _GRADE_ZH.get(grade, grade) if zh else grade
    head = f"{_round(score)}{comma}{grade_text}{_trend_text(delta_7, delta_30, zh)}"
    return f"{head}{critical}{body}{sep}{fresh}{no_data}"


def _critical_part(measures: Mapping[str, Any], score: float, lang: Lang, card: Scorecard) -> str:
    signals, uncapped = critical_signals(measures)
    if not signals:
        return ""
    zh = lang == "zh"
    caps = {str(s.get("cap")) for s in signals}
    cap = "red" if "red" in caps else "yellow"
    texts = [critical_text(s, lang, card) for s in signals]
    # The cap is worth a word only where it lowered the score; a score already below it speaks for itself.
    lowered = uncapped is not None and _round(uncapped) > _round(score)
    if zh:
        note = f"（分数上限为{_GRADE_ZH[cap]}，仅按指标为 {_round(uncapped or 0)}）" if lowered else ""
        return f"；关键信号：{'、'.join(texts)}{note}"
    note = f" (capped at {cap}; {_round(uncapped or 0)} on the measures alone)" if lowered else ""
    return f"; critical: {', '.join(texts)}{note}"
