"""The churn model: training frame from history, time-ordered model selection, calibrated scoring with reasons.

Training data: for monthly observation dates `d` (every `observation_every_days` back from today − horizon, so
that every label is complete), one row per account alive on `d` with features known on `d` only, and the label
"churned within the next `horizon_days`" (`d < churned_on <= d + horizon`). Features are rebuilt from the raw
tables as of `d` (`lifecycle.scoring.signals.build_signals` reads nothing after `d`): the health score and each input
the scorecard reads, the 30-day health change, tickets, NPS, tenure, ARR, seats, and the stage on `d` (replayed
from `stage_transition`). The renewal date on `d` is the stored one stepped back whole years while it stays after
`d` (annual terms), so a renewal that happened later does not leak into an earlier row. ARR, seats, segment and
plan have no history table: their current values are used.

Candidates — a regularised logistic regression and a histogram gradient boosting classifier, each calibrated
(sigmoid, `CalibratedClassifierCV`) — are compared with time-ordered cross-validation: each observation date in
turn is the test set, trained on the dates whose whole label window ends before it (`d_train + horizon <=
d_test`). Out-of-fold predictions are pooled for ROC AUC, PR AUC, top-decile lift and the calibration table, and
the same figures are computed for the health score (100 − score) on the same rows as the baseline. The better
candidate is refitted on all rows and stored in `churn_model` (joblib bytes + JSON metadata), so every replica
scores with the same model.

Reasons: each account's drivers are the features that move its probability most, computed on the uncalibrated
refit (calibration is monotonic, so directions agree). Logistic regression: coefficient × standardised value.
Gradient boosting: probability minus the probability with that feature set to the training median (a categorical
to its most common value). Both are relative to fixed training statistics, so an account's reasons do not depend
on which other accounts are scored with it.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sklearn.calibration import CalibratedClassifierCV
from sqlalchemy import func, select, text, update
from sqlmodel import Session, col
from threadpoolctl import threadpool_limits

from lifecycle.insight.evaluate import Scores, score_summary
from lifecycle.scoring.health import Scorecard, default_scorecard, score_frame
from lifecycle.scoring.signals import USAGE_WINDOW_DAYS, build_signals
from lifecycle.store.bulkwrite import update_rows
from lifecycle.store.errors import ConfigError, CsbotError
from lifecycle.store.models import Account, ChurnModel, utcnow
from lifecycle.store.settings import CONFIG_DIR, get_settings, read_toml, validate_config

DEFAULT_INSIGHT_FILE = CONFIG_DIR / "insight.toml"
MODEL_FORMAT = 1
CANDIDATES = ("logistic", "hist_gradient_boosting")
Candidate = Literal["logistic", "hist_gradient_boosting"]

# Numeric features, in the order reasons break ties in.
NUMERIC_FEATURES = (
    "health_score", "health_change_30", "utilisation", "usage_trend", "logins_per_seat_30",
    "days_since_last_login", "feature_breadth_30", "open_high_tickets", "tickets_30", "nps_last_score",
    "days_since_last_note", "days_to_renewal", "tenure_days", "log_arr", "log_seats",
)
CATEGORICAL_FEATURES = ("stage", "segment", "plan")
FEATURES = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)
MIN_CATEGORY_ROWS = 5  # rarer categories get no column of their own
# Numeric features, measure points and the model matrix are float32: half the memory of float64, and the model's
# inputs (days, counts, ratios, log ARR) need no more than float32's seven significant digits.
FLOAT = np.float32
# Accounts scored (predicted, explained and written) per chunk: bounds the scoring's memory whatever the portfolio.
SCORE_CHUNK = 20_000
UNKNOWN_STAGE = "unknown"


# ------------------------------------------------------------------------------------------------ configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChurnSettings(_Strict):
    horizon_days: int = Field(default=90, ge=7, le=730)
    observation_every_days: int = Field(default=30, ge=7, le=365)
    max_observations: int = Field(default=24, ge=1, le=120)
    min_churned_accounts: int = Field(default=3, ge=1)
    min_churn_labels: int = Field(default=6, ge=2)
    retrain_days: int = Field(default=30, ge=1)
    reasons: int = Field(default=3, ge=1, le=10)


class SegmentSettings(_Strict):
    min_k: int = Field(default=2, ge=2)
    max_k: int = Field(default=6, ge=2, le=20)
    seed: int = 7
    silhouette_sample: int = Field(default=2000, ge=100)


class TierSettings(_Strict):
    enabled: bool = True
    a_min_arr: float = Field(default=150_000, ge=0)
    b_min_arr: float = Field(default=30_000, ge=0)
    growth_utilisation: float = Field(default=0.85, gt=0)
    growth_usage_trend: float = 25.0


class ValueSettings(_Strict):
    gross_margin: float = Field(default=0.8, gt=0, le=1)
    max_lifetime_years: float = Field(default=10.0, gt=0)


class InsightConfig(_Strict):
    """The insight file (`config/insight.toml`, or `CSBOT_INSIGHT_FILE`)."""

    churn: ChurnSettings = ChurnSettings()
    segments: SegmentSettings = SegmentSettings()
    tiers: TierSettings = TierSettings()
    value: ValueSettings = ValueSettings()


def load_insight_config(path: Path | None = None) -> InsightConfig:
    """Read and validate an insight TOML file (the bundled one by default); errors name the file and the key."""
    path = path or DEFAULT_INSIGHT_FILE
    raw = read_toml(path, "insight configuration")
    config = validate_config(InsightConfig, raw, str(path))
    if config.segments.max_k < config.segments.min_k:
        raise ConfigError(f"{path}: segments.max_k: must not be below segments.min_k")
    if config.tiers.a_min_arr < config.tiers.b_min_arr:
        raise ConfigError(f"{path}: tiers.a_min_arr: must not be below tiers.b_min_arr")
    return config


@lru_cache(maxsize=1)
def default_insight_config() -> InsightConfig:
    """The configured insight file (`CSBOT_INSIGHT_FILE`), else the bundled one."""
    return load_insight_config(get_settings().insight_file)


class NotEnoughHistory(CsbotError):
    """Too few churned accounts or churn labels (or no usable history) to train a model."""

    def __init__(self, churned_accounts: int, labels: int, config: ChurnSettings, why: str = "") -> None:
        self.churned_accounts = churned_accounts
        self.labels = labels
        self.needed_accounts = config.min_churned_accounts
        self.needed_labels = config.min_churn_labels
        super().__init__(
            why or (
                f"Not enough churn history to train a model: {churned_accounts} churned account(s) and {labels} "
                f"churn label(s) in the observation windows; at least {config.min_churned_accounts} and "
                f"{config.min_churn_labels} are needed."
            )
        )


# ---------------------------------------------------------------------------------------------------- features


def _raw_rows(session: Session, sql: str) -> list[tuple[Any, ...]]:
    """The driver's own tuples of a query: building SQLAlchemy Row objects for a few hundred thousand rows only to
    hand them to pandas costs more than the query."""
    result = session.execute(text(sql))
    rows = result.cursor.fetchall()  # type: ignore[attr-defined]
    result.close()
    return list(rows)


def _transitions(session: Session) -> pd.DataFrame:
    rows = _raw_rows(session, "SELECT account_id, to_stage, at FROM stage_transition")
    frame = pd.DataFrame.from_records(rows, columns=["account_id", "to_stage", "at"])
    frame["at"] = pd.to_datetime(frame["at"], format="ISO8601") if len(frame) else pd.Series(dtype="datetime64[ns]")
    frame["account_id"] = frame["account_id"].astype("int64")
    return frame.sort_values(["at", "account_id"], kind="stable")


def stage_as_of(signals: pd.DataFrame, transitions: pd.DataFrame, as_of: date) -> pd.Series:
    """Each account's stage on `as_of`: its last transition before the end of that day; else its current stage
    when it has been in it since then; else "unknown"."""
    before = transitions[transitions["at"] < pd.Timestamp(as_of + timedelta(days=1))]
    last = before.groupby("account_id")["to_stage"].last()
    stage = last.reindex(signals.index).astype(object)
    since = pd.to_datetime(signals["stage_since"])
    current_ok = since.notna() & (since < pd.Timestamp(as_of + timedelta(days=1)))
    stage = stage.where(stage.notna(), signals["stage"].where(current_ok, UNKNOWN_STAGE))
    return stage.astype(object)


def renewal_as_of(renewal: pd.Series, as_of: date, max_years: int = 15) -> pd.Series:
    """The renewal date as known on `as_of`: the stored date stepped back whole years while it stays after
    `as_of` (annual terms); NaT stays NaT."""
    current = pd.to_datetime(renewal)
    day = pd.Timestamp(as_of)
    out = current.copy()
    for years in range(1, max_years + 1):
        earlier = current - pd.DateOffset(years=years)
        out = out.where(~(earlier > day), earlier)
    return out


def _health_on(signals: pd.DataFrame, stage: pd.Series, scorecard: Scorecard) -> pd.DataFrame:
    frame = signals.assign(stage=stage)
    return score_frame(frame, scorecard)


@dataclass
class Observation:
    """The features of every account known on one day, with the scorecard's per-measure points."""

    as_of: date
    features: pd.DataFrame  # index account_id; FEATURES + status, churned_on, arr
    points: pd.DataFrame  # index account_id; one column per scorecard measure


class FeatureBuilder:
    """Builds feature frames as of any day, caching signals per day (the 30-day health change needs d − 30)."""

    def __init__(self, session: Session, scorecard: Scorecard, *, activation_ratio: float = 0.6,
                 activation_window: int = 14) -> None:
        self.session = session
        self.scorecard = scorecard
        self.activation = (activation_ratio, activation_window)
        self._transitions: pd.DataFrame | None = None
        self._health: dict[date, tuple[pd.DataFrame, pd.DataFrame, pd.Series]] = {}

    @property
    def transitions(self) -> pd.DataFrame:
        if self._transitions is None:
            self._transitions = _transitions(self.session)
        return self._transitions

    def _scored(self, day: date, signals: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
        if day not in self._health:
            if signals is None:
                signals = build_signals(self.session, day, activation_ratio=self.activation[0],
                                        activation_window=self.activation[1])
            # The stored renewal date may already be a later term's: the health of a past day must see that day's.
            renewal = renewal_as_of(signals["renewal_date"], day)
            signals = signals.assign(
                renewal_date=renewal,
                days_to_renewal=((renewal - pd.Timestamp(day)) / pd.Timedelta(days=1)).astype(float),
            )
            stage = stage_as_of(signals, self.transitions, day)
            scored = _health_on(signals, stage, self.scorecard)
            # Only the score and the measure points are read from the scored frame: the rest is not kept.
            kept = ["score", *(f"{name}_points" for name in self.scorecard.measures)]
            self._health[day] = (signals, scored[kept].copy(), stage)
        return self._health[day]

    def keep_only(self, days: set[date]) -> None:
        """Drop the cached frames of every day not in `days` (training knows which days its remaining
        observation dates still read)."""
        for cached in [d for d in self._health if d not in days]:
            del self._health[cached]

    def observe(self, as_of: date, signals: pd.DataFrame | None = None) -> Observation:
        """Features of every account on `as_of` (churned ones included; callers filter)."""
        sig, scored, stage = self._scored(as_of, signals)
        _prior_sig, prior, _ = self._scored(as_of - timedelta(days=USAGE_WINDOW_DAYS))
        seats = sig["seats"].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            trend = (sig["events_30"] - sig["events_prior_30"]) / sig["events_prior_30"] * 100.0
            logins_per_seat = sig["logins_30"] / seats
        features = pd.DataFrame(index=sig.index)
        features["health_score"] = scored["score"].astype(float)
        features["health_change_30"] = scored["score"] - prior["score"].reindex(sig.index)
        features["utilisation"] = sig["utilisation"].astype(float)
        features["usage_trend"] = trend.where(sig["events_prior_30"] > 0).clip(-100.0, 300.0)
        features["logins_per_seat_30"] = logins_per_seat.where(seats > 0)
        features["days_since_last_login"] = sig["days_since_last_login"].astype(float)
        features["feature_breadth_30"] = sig["feature_breadth_30"].astype(float)
        features["open_high_tickets"] = sig["open_high_tickets"].astype(float)
        features["tickets_30"] = sig["tickets_30"].astype(float)
        features["nps_last_score"] = sig["nps_last_score"].astype(float)
        features["days_since_last_note"] = sig["days_since_last_note"].astype(float)
        features["days_to_renewal"] = sig["days_to_renewal"].astype(float)
        features["tenure_days"] = sig["days_since_contract_start"].astype(float)
        features["log_arr"] = np.log1p(sig["arr"].astype(float).clip(lower=0))
        features["log_seats"] = np.log1p(seats.clip(lower=0))
        features["stage"] = stage
        features["segment"] = sig["segment"].astype(object)
        features["plan"] = sig["plan"].astype(object)
        features["status"] = sig["status"].astype(object)
        features["contract_start"] = pd.to_datetime(sig["contract_start"])
        features["arr"] = sig["arr"].astype(float)
        features = features.astype({name: FLOAT for name in NUMERIC_FEATURES})
        points = pd.DataFrame(
            {name: scored[f"{name}_points"].astype(FLOAT) for name in self.scorecard.measures}, index=sig.index
        )
        return Observation(as_of=as_of, features=features, points=points)


def _churn_dates(session: Session) -> pd.Series:
    rows = _raw_rows(session, "SELECT id, churned_on FROM account")
    frame = pd.DataFrame.from_records(rows, columns=["account_id", "churned_on"])
    series = pd.to_datetime(frame["churned_on"]).set_axis(frame["account_id"].astype("int64"))
    return series.rename("churned_on")


def _first_usage_day(session: Session) -> date | None:
    day = session.execute(text("SELECT MIN(day) FROM usage_daily WHERE feature = ''")).scalar_one()
    if day is None:
        return None
    return day if isinstance(day, date) else date.fromisoformat(str(day)[:10])


def observation_dates(session: Session, today: date, config: ChurnSettings) -> list[date]:
    """Observation dates, oldest first: every `observation_every_days` back from today − horizon, while the date's
    30-day usage window lies within the recorded usage history (earlier windows may be partial: their trends are
    then unknown or weaker, which the model sees as such)."""
    first = _first_usage_day(session)
    if first is None:
        return []
    earliest = first + timedelta(days=USAGE_WINDOW_DAYS - 1)
    end = today - timedelta(days=config.horizon_days)
    dates = []
    for k in range(config.max_observations):
        day = end - timedelta(days=k * config.observation_every_days)
        if day < earliest:
            break
        dates.append(day)
    return sorted(dates)


@dataclass
class TrainingSet:
    """Rows of (account, observation date): features, label, the health score on that date and measure points."""

    features: pd.DataFrame  # FEATURES columns
    label: np.ndarray  # 1 = churned within the horizon after the date
    dates: np.ndarray  # observation date of each row (datetime64[D])
    account_ids: np.ndarray
    points: pd.DataFrame
    horizon_days: int

    @property
    def positives(self) -> int:
        return int(self.label.sum())

    @property
    def churned_accounts(self) -> int:
        return len(set(self.account_ids[self.label == 1].tolist()))


def training_set(
    session: Session,
    *,
    today: date,
    config: ChurnSettings,
    scorecard: Scorecard | None = None,
    builder: FeatureBuilder | None = None,
) -> TrainingSet:
    """The labelled rows of every observation date (see the module docstring)."""
    builder = builder or FeatureBuilder(session, scorecard or default_scorecard())
    churned_on = _churn_dates(session)
    parts, points, labels, dates = [], [], [], []
    observed = observation_dates(session, today, config)
    for position, day in enumerate(observed):
        obs = builder.observe(day)
        # One date's frames at a time: keep only the days the later dates read (a date 30 days after this one
        # reads this one's frame again).
        later = observed[position + 1:]
        builder.keep_only({*later, *(d - timedelta(days=USAGE_WINDOW_DAYS) for d in later)})
        f = obs.features
        ts = pd.Timestamp(day)
        gone = churned_on.reindex(f.index)
        started = f["contract_start"].isna() | (f["contract_start"] <= ts)
        # Churned accounts without a churn date cannot be placed in time: they are left out.
        undated = (f["status"] == "churned") & gone.isna()
        alive = started & ~undated & (gone.isna() | (gone > ts))
        label = (gone > ts) & (gone <= ts + pd.Timedelta(days=config.horizon_days))
        keep = alive.to_numpy(dtype=bool)
        parts.append(f.loc[keep, list(FEATURES)])
        points.append(obs.points.loc[keep])
        labels.append(label.to_numpy(dtype=bool)[keep].astype(int))
        dates.append(np.full(int(keep.sum()), np.datetime64(day, "D")))
    if not parts:
        empty = pd.DataFrame(columns=list(FEATURES))
        return TrainingSet(empty, np.zeros(0, dtype=int), np.zeros(0, dtype="datetime64[D]"),
                           np.zeros(0, dtype=np.int64), pd.DataFrame(), config.horizon_days)
    features = pd.concat(parts)
    return TrainingSet(
        features=features.reset_index(drop=True),
        label=np.concatenate(labels),
        dates=np.concatenate(dates),
        account_ids=features.index.to_numpy(dtype=np.int64),
        points=pd.concat(points).reset_index(drop=True),
        horizon_days=config.horizon_days,
    )


# ------------------------------------------------------------------------------------------------ the encoding


@dataclass
class Encoding:
    """How raw features become the model's matrix: the categories that get a column, and the baseline row."""

    categories: dict[str, list[str]]
    medians: dict[str, float]
    modes: dict[str, str | None]

    @property
    def columns(self) -> list[str]:
        return [*NUMERIC_FEATURES, *(f"{c}={v}" for c in CATEGORICAL_FEATURES for v in self.categories[c])]

    def groups(self) -> dict[str, list[int]]:
        """Matrix columns of each raw feature (a categorical owns its one-hot columns)."""
        out: dict[str, list[int]] = {name: [i] for i, name in enumerate(NUMERIC_FEATURES)}
        start = len(NUMERIC_FEATURES)
        for c in CATEGORICAL_FEATURES:
            width = len(self.categories[c])
            out[c] = list(range(start, start + width))
            start += width
        return out

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        numeric = features[list(NUMERIC_FEATURES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=FLOAT)
        blocks = [numeric]
        for c in CATEGORICAL_FEATURES:
            values = features[c].astype(object).where(features[c].notna(), None).to_numpy()
            cats = self.categories[c]
            blocks.append(np.column_stack([values == v for v in cats]).astype(FLOAT) if cats
                          else np.zeros((len(features), 0), dtype=FLOAT))
        return np.hstack(blocks)


def fit_encoding(features: pd.DataFrame) -> Encoding:
    categories = {}
    modes: dict[str, str | None] = {}
    for c in CATEGORICAL_FEATURES:
        counts = features[c].dropna().astype(str).value_counts()
        kept = sorted(str(v) for v, n in counts.items() if n >= MIN_CATEGORY_ROWS)
        categories[c] = kept
        modes[c] = str(counts.index[0]) if len(counts) else None
    medians = {}
    for name in NUMERIC_FEATURES:
        median = pd.to_numeric(features[name], errors="coerce").median()
        medians[name] = float(median) if pd.notna(median) else 0.0
    return Encoding(categories=categories, medians=medians, modes=modes)


# ---------------------------------------------------------------------------------------------------- the model


def candidate(name: Candidate) -> Any:
    """An unfitted candidate estimator on the encoded matrix (missing values handled inside)."""
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    if name == "logistic":
        return Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(C=0.3, max_iter=2000)),
        ])
    return HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=150, max_depth=3, min_samples_leaf=20, l2_regularization=1.0, random_state=0
    )


def calibrated(estimator: Any, y: np.ndarray) -> CalibratedClassifierCV:
    """Sigmoid calibration over stratified folds (as many as the rarer class allows, at most 3)."""
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold
    minority = int(min(np.sum(y == 1), np.sum(y == 0)))
    folds = max(2, min(3, minority))
    return CalibratedClassifierCV(clone(estimator), method="sigmoid",
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=0))


@dataclass(frozen=True)
class Driver:
    """One reason behind an account's churn probability: which feature, which way, by how much, its value."""

    feature: str
    direction: Literal["up", "down"]  # up = raises the probability
    contribution: float
    value: float | str | None

    def as_json(self) -> dict[str, Any]:
        return {"feature": self.feature, "direction": self.direction,
                "contribution": round(self.contribution, 4), "value": self.value}


@dataclass
class TrainedModel:
    """What is pickled into `churn_model.payload`: the calibrated model, its explainer and the encoding."""

    kind: Candidate
    horizon_days: int
    encoding: Encoding
    model: CalibratedClassifierCV
    explainer: Any  # the same candidate refitted without calibration, for the reasons
    version: str = ""
    format: int = MODEL_FORMAT

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        if features.empty:
            return np.zeros(0)
        return np.asarray(self.model.predict_proba(self.encoding.matrix(features))[:, 1], dtype=float)

    def contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Per account and raw feature, how much it moves the probability (see the module docstring)."""
        X = self.encoding.matrix(features)
        groups = self.encoding.groups()
        out = np.zeros((len(X), len(groups)))
        if len(X) == 0:
            return pd.DataFrame(out, index=features.index, columns=list(groups))
        if self.kind == "logistic":
            impute, scale, model = (self.explainer.named_steps[k] for k in ("impute", "scale", "model"))
            z = scale.transform(impute.transform(X))
            terms = z * model.coef_[0]
            for j, cols in enumerate(groups.values()):
                out[:, j] = terms[:, cols].sum(axis=1)
        else:
            base = self.explainer.predict_proba(X)[:, 1]
            baseline = self.encoding.matrix(self._baseline_row())[0]
            for j, cols in enumerate(groups.values()):
                swapped = X.copy()
                swapped[:, cols] = baseline[cols]
                out[:, j] = base - self.explainer.predict_proba(swapped)[:, 1]
        return pd.DataFrame(out, index=features.index, columns=list(groups))

    def _baseline_row(self) -> pd.DataFrame:
        row: dict[str, Any] = {name: [self.encoding.medians[name]] for name in NUMERIC_FEATURES}
        row |= {c: [self.encoding.modes[c]] for c in CATEGORICAL_FEATURES}
        return pd.DataFrame(row)

    def drivers(self, features: pd.DataFrame, top: int = 3) -> list[list[Driver]]:
        """The `top` drivers of each row, largest |contribution| first (feature order breaks ties)."""
        with threadpool_limits(limits=1):
            contrib = self.contributions(features)
        values = contrib.to_numpy()
        names = list(contrib.columns)
        order = np.argsort(-np.abs(np.round(values, 10)), axis=1, kind="stable")[:, :top]
        out: list[list[Driver]] = []
        # Column arrays read by position: far cheaper than a DataFrame lookup per cell.
        raw = [features[name].to_numpy(dtype=object) for name in names]
        chosen = np.take_along_axis(values, order, axis=1).tolist()
        for i, (columns, amounts) in enumerate(zip(order.tolist(), chosen, strict=True)):
            row: list[Driver] = []
            for j, amount in zip(columns, amounts, strict=True):
                if abs(amount) < 1e-9:
                    continue
                row.append(Driver(names[j], "up" if amount > 0 else "down", amount, _json_value(raw[j][i])))
            out.append(row)
        return out


def _json_value(value: Any) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return None if math.isnan(number) else round(number, 4)


@dataclass
class CandidateResult:
    name: str
    scores: Scores | None  # pooled out-of-fold figures; None when no fold could be evaluated


@dataclass
class TrainResult:
    """A stored model and how it was chosen."""

    version: str
    kind: str
    rows: int
    positives: int
    churned_accounts: int
    window: tuple[date, date]
    folds: int
    candidates: list[CandidateResult]
    baseline: Scores | None
    calibration: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def time_folds(dates: np.ndarray, y: np.ndarray, horizon_days: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: each observation date is a test set once, trained on the dates whose label
    windows close before it; folds without both classes on each side are skipped."""
    folds = []
    horizon = np.timedelta64(horizon_days, "D")
    for day in np.unique(dates):
        test = np.flatnonzero(dates == day)
        train = np.flatnonzero(dates + horizon <= day)
        if len(train) == 0:
            continue
        if len(np.unique(y[test])) < 2 or np.sum(y[train]) < 2 or np.sum(y[train] == 0) < 2:
            continue
        folds.append((train, test))
    return folds


def _oof(name: Candidate, X: np.ndarray, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]
         ) -> tuple[np.ndarray, np.ndarray]:
    idx = np.concatenate([test for _, test in folds])
    preds = np.concatenate([
        calibrated(candidate(name), y[train]).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
        for train, test in folds
    ])
    return idx, preds


def train(
    session: Session,
    *,
    today: date,
    config: ChurnSettings | None = None,
    scorecard: Scorecard | None = None,
    builder: FeatureBuilder | None = None,
    now: datetime | None = None,
) -> TrainResult:
    """Build the training set, compare the candidates, fit and store the chosen one (flushes; caller commits).

    Raises `NotEnoughHistory` when the churn labels are too few to learn from.
    """
    started = time.perf_counter()
    config = config or default_insight_config().churn
    with threadpool_limits(limits=1):
        return _train(session, today=today, config=config, scorecard=scorecard, builder=builder, now=now,
                      started=started)


def _train(session: Session, *, today: date, config: ChurnSettings, scorecard: Scorecard | None,
           builder: FeatureBuilder | None, now: datetime | None, started: float) -> TrainResult:
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.base import clone
    data = training_set(session, today=today, config=config, scorecard=scorecard, builder=builder)
    if data.churned_accounts < config.min_churned_accounts or data.positives < config.min_churn_labels:
        raise NotEnoughHistory(data.churned_accounts, data.positives, config)
    encoding = fit_encoding(data.features)
    X = encoding.matrix(data.features)
    y = data.label
    folds = time_folds(data.dates, y, config.horizon_days)
    results: list[CandidateResult] = []
    oof: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in CANDIDATES:
        if folds:
            idx, preds = _oof(name, X, y, folds)  # type: ignore[arg-type]
            oof[name] = (idx, preds)
            results.append(CandidateResult(name, score_summary(y[idx], preds)))
        else:
            results.append(CandidateResult(name, None))
    scored = [r for r in results if r.scores is not None and not math.isnan(r.scores.roc_auc)]
    # Ties and the no-fold case go to the logistic regression: simpler, and its reasons read directly.
    best: Candidate = "logistic"
    if scored:
        top = max(scored, key=lambda r: (r.scores.roc_auc if r.scores else 0.0, r.name == "logistic"))
        best = top.name  # type: ignore[assignment]
    baseline = None
    calibration: list[dict[str, float]] = []
    if best in oof:
        idx, preds = oof[best]
        health = data.features["health_score"].to_numpy(dtype=float)[idx]
        known = ~np.isnan(health)
        if known.any():
            baseline = score_summary(y[idx][known], (100.0 - health[known]) / 100.0)
        calibration = calibration_table(y[idx], preds)
    model = TrainedModel(
        kind=best, horizon_days=config.horizon_days, encoding=encoding,
        model=calibrated(candidate(best), y).fit(X, y), explainer=clone(candidate(best)).fit(X, y),
    )
    now = now or utcnow()
    window = (pd.Timestamp(data.dates.min()).date(), pd.Timestamp(data.dates.max()).date())
    version = f"{now:%Y%m%d%H%M%S}-{best}"
    model.version = version
    result = TrainResult(
        version=version, kind=best, rows=len(y), positives=data.positives, churned_accounts=data.churned_accounts,
        window=window, folds=len(folds), candidates=results, baseline=baseline, calibration=calibration,
        seconds=round(time.perf_counter() - started, 2),
    )
    save_model(session, model, result, trained_at=now)
    return result


def calibration_table(y: np.ndarray, p: np.ndarray, edges: Sequence[float] = (0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
                      ) -> list[dict[str, float]]:
    """Predicted vs observed churn rate per probability band (empty bands left out)."""
    rows = []
    bins = np.clip(np.searchsorted(np.asarray(edges), p, side="right") - 1, 0, len(edges) - 2)
    for b in range(len(edges) - 1):
        mask = bins == b
        if mask.any():
            rows.append({"from": float(edges[b]), "to": float(edges[b + 1]), "rows": int(mask.sum()),
                         "predicted": round(float(p[mask].mean()), 4), "observed": round(float(y[mask].mean()), 4)})
    return rows


# ---------------------------------------------------------------------------------------------------- storage


def _scores_json(scores: Scores | None) -> dict[str, float] | None:
    return None if scores is None else scores.as_json()


def save_model(session: Session, model: TrainedModel, result: TrainResult, *, trained_at: datetime) -> ChurnModel:
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=3)
    meta = {
        "format": MODEL_FORMAT,
        "features": list(FEATURES),
        "columns": model.encoding.columns,
        "window": [result.window[0].isoformat(), result.window[1].isoformat()],
        "rows": result.rows,
        "positives": result.positives,
        "churned_accounts": result.churned_accounts,
        "folds": result.folds,
        "candidates": {c.name: _scores_json(c.scores) for c in result.candidates},
        "baseline": _scores_json(result.baseline),
        "calibration": result.calibration,
        "seconds": result.seconds,
    }
    row = ChurnModel(version=result.version, kind=result.kind, horizon_days=model.horizon_days,
                     trained_at=trained_at, meta=meta, payload=buffer.getvalue())
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class ModelInfo:
    """The stored model's metadata, read without its bytes."""

    version: str
    kind: str
    horizon_days: int
    trained_at: datetime
    meta: Mapping[str, Any]


def latest_model_info(session: Session) -> ModelInfo | None:
    row = session.execute(
        select(col(ChurnModel.version), col(ChurnModel.kind), col(ChurnModel.horizon_days),
               col(ChurnModel.trained_at), col(ChurnModel.meta))
        .order_by(col(ChurnModel.trained_at).desc(), col(ChurnModel.id).desc()).limit(1)
    ).first()
    if row is None:
        return None
    return ModelInfo(str(row[0]), str(row[1]), int(row[2]), row[3], dict(row[4] or {}))


def load_model(session: Session, version: str | None = None) -> TrainedModel | None:
    """The stored model (`version`, or the newest); None when none is stored."""
    stmt = select(col(ChurnModel.version), col(ChurnModel.payload))
    if version is not None:
        stmt = stmt.where(col(ChurnModel.version) == version)
    row = session.execute(stmt.order_by(col(ChurnModel.trained_at).desc(), col(ChurnModel.id).desc()).limit(1)).first()
    if row is None:
        return None
    model = joblib.load(io.BytesIO(bytes(row[1])))
    if not isinstance(model, TrainedModel) or model.format != MODEL_FORMAT:
        raise CsbotError(f"Stored churn model {row[0]} has an unknown format; retrain it with `csbot model train`.")
    model.version = str(row[0])
    return model


def churned_with_date(session: Session) -> int:
    """Churned accounts with a churn date: one range of the (status, churned_on) index."""
    return int(session.execute(
        select(func.count()).select_from(Account).where(col(Account.status) == "churned",
                                                        col(Account.churned_on).is_not(None))
    ).scalar_one())


def churn_label_counts(session: Session) -> tuple[int, int]:
    """(churned accounts with a churn date, all accounts): what the card says when there is no model yet."""
    churned = session.execute(
        select(func.count()).select_from(Account).where(col(Account.status) == "churned",
                                                        col(Account.churned_on).is_not(None))
    ).scalar_one()
    total = session.execute(select(func.count()).select_from(Account)).scalar_one()
    return int(churned), int(total)


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass
class ScoreRun:
    version: str
    scored: int
    probabilities: pd.Series  # index account_id
    drivers: dict[int, list[Driver]]


def score_portfolio(
    session: Session,
    model: TrainedModel,
    *,
    as_of: date,
    builder: FeatureBuilder | None = None,
    signals: pd.DataFrame | None = None,
    reasons: int = 3,
    now: datetime | None = None,
) -> ScoreRun:
    """Score every active account on `as_of` and store probability, reasons and time on the accounts
    (churned accounts are cleared). One staged UPDATE per chunk of accounts (`lifecycle.store.bulkwrite`); the caller
    commits."""
    builder = builder or FeatureBuilder(session, default_scorecard())
    obs = builder.observe(as_of, signals)
    features = obs.features[obs.features["status"] == "active"]
    stamp = now or utcnow()
    table = Account.__table__  # type: ignore[attr-defined]
    parts: list[pd.Series] = []
    drivers: list[list[Driver]] = []
    # Account chunks: the matrix, the contributions and the UPDATE parameters of one chunk at a time.
    for start in range(0, len(features), SCORE_CHUNK):
        chunk = features.iloc[start:start + SCORE_CHUNK]
        # Small matrices: one thread is faster than a pool fighting over a busy machine's cores.
        with threadpool_limits(limits=1):
            p_chunk = pd.Series(model.predict(chunk), index=chunk.index, name="churn_probability")
            d_chunk = model.drivers(chunk, top=reasons)
        update_rows(session, table, ("id",), ("churn_probability", "churn_reasons", "churn_scored_at"), [
            (int(account_id), round(float(p), 4), [d.as_json() for d in ds], stamp)
            for account_id, p, ds in zip(chunk.index.tolist(), p_chunk.tolist(), d_chunk, strict=True)
        ])
        parts.append(p_chunk)
        drivers.extend(d_chunk)
    probabilities = (pd.concat(parts) if parts
                     else pd.Series(dtype=float, index=features.index, name="churn_probability"))
    session.execute(
        update(table).where(table.c.status != "active", table.c.churn_probability.is_not(None))
        .values(churn_probability=None, churn_reasons=None, churn_scored_at=None)
    )
    return ScoreRun(model.version, len(features), probabilities,
                    dict(zip(features.index.astype(int).tolist(), drivers, strict=True)))


def clear_scores(session: Session) -> None:
    """Forget every stored probability (no model: nothing may look like a prediction)."""
    table = Account.__table__  # type: ignore[attr-defined]
    session.execute(update(table).where(table.c.churn_probability.is_not(None))
                    .values(churn_probability=None, churn_reasons=None, churn_scored_at=None))


@dataclass(frozen=True)
class ChurnStanding:
    """Where one probability sits in the portfolio: share of scored active accounts below it."""

    percentile: float
    level: Literal["low", "typical", "high"]


def standing(session: Session, probability: float) -> ChurnStanding:
    """How `probability` compares with the other active accounts' (one aggregate query)."""
    # Two ranges of the (status, churn_probability) index, counted without reading the table.
    active = col(Account.status) == "active"
    below = session.execute(select(func.count()).select_from(Account)
                            .where(active, col(Account.churn_probability) < probability)).scalar_one()
    total = session.execute(select(func.count()).select_from(Account)
                            .where(active, col(Account.churn_probability).is_not(None))).scalar_one()
    share = float(below or 0) / total if total else 0.0
    level: Literal["low", "typical", "high"] = "high" if share >= 0.75 else "low" if share < 0.25 else "typical"
    return ChurnStanding(round(100 * share, 1), level)


def refresh(
    session: Session,
    *,
    as_of: date,
    config: InsightConfig | None = None,
    scorecard: Scorecard | None = None,
    signals: pd.DataFrame | None = None,
    activation: tuple[float, int] = (0.6, 14),
    now: datetime | None = None,
) -> str:
    """The nightly churn step: train when there is no model (or it is older than `retrain_days`), then score.
    Returns a one-line note of what happened."""
    config = config or default_insight_config()
    builder = FeatureBuilder(session, scorecard or default_scorecard(), activation_ratio=activation[0],
                             activation_window=activation[1])
    info = latest_model_info(session)
    note = ""
    moment = now or utcnow()
    stale = info is None or (moment - info.trained_at) >= timedelta(days=config.churn.retrain_days)
    if stale and churned_with_date(session) >= config.churn.min_churned_accounts:
        try:
            result = train(session, today=as_of, config=config.churn, builder=builder, now=moment)
            note = f"trained {result.version}; "
        except NotEnoughHistory as exc:
            note = f"not trained ({exc.labels} churn labels, {exc.needed_labels} needed); "
    model = load_model(session)
    if model is None:
        clear_scores(session)
        return note + "no churn model yet"
    run = score_portfolio(session, model, as_of=as_of, builder=builder, signals=signals,
                          reasons=config.churn.reasons, now=moment)
    return note + f"scored {run.scored} accounts with {run.version}"


# --------------------------------------------------------------------------------------------------- backtest


@dataclass
class BacktestResult:
    """How well the health score on each observation date ranked the accounts that churned within the horizon,
    and scorecard weights fitted to the same rows."""

    horizon_days: int
    rows: int
    positives: int
    scores: Scores | None  # of (100 − score) / 100; None without both classes
    by_date: list[tuple[date, int, int, float]]  # date, rows, churned within the horizon, AUC (NaN: one class)
    current_weights: dict[str, float]
    suggested_weights: dict[str, float]
    suggested_scores: Scores | None  # the suggested weights' score on the same rows (in-sample)


def suggest_weights(points: pd.DataFrame, label: np.ndarray, current: Mapping[str, float]) -> dict[str, float]:
    """Weights fitted from data: a logistic regression of churn on the measures' points (a missing measure
    counts as its mean), each weight = max(0, −coefficient), rescaled to the current weights' total.

    Points share one 0–100 scale, so raw coefficients compare directly; a measure whose higher points do not go
    with less churn gets 0. Empty when nothing could be fitted."""
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.linear_model import LogisticRegression
    if len(np.unique(label)) < 2 or points.empty:
        return {}
    filled = points.apply(lambda c: c.fillna(c.mean() if c.notna().any() else 50.0)) / 100.0
    with threadpool_limits(limits=1):
        model = LogisticRegression(C=1.0, max_iter=2000).fit(filled.to_numpy(), label)
    raw = np.maximum(0.0, -model.coef_[0])
    total = float(sum(current.values()))
    if raw.sum() <= 0 or total <= 0:
        return {name: 0.0 for name in points.columns}
    return {name: round(float(w) * total / float(raw.sum()), 1) for name, w in zip(points.columns, raw, strict=True)}


def backtest(session: Session, *, today: date, config: ChurnSettings | None = None,
             scorecard: Scorecard | None = None) -> BacktestResult:
    """Replay the scorecard on every observation date (from the raw tables, not stored snapshots) and measure the
    AUC of (100 − score) against "churned within the horizon"; suggest weights fitted to the same rows."""
    config = config or default_insight_config().churn
    card = scorecard or default_scorecard()
    data = training_set(session, today=today, config=config, scorecard=card)
    health = data.features["health_score"].to_numpy(dtype=float) if len(data.label) else np.zeros(0)
    known = ~np.isnan(health)
    y = data.label[known]
    risk = (100.0 - health[known]) / 100.0
    scores = score_summary(y, risk) if len(np.unique(y)) == 2 else None
    by_date = []
    dates = data.dates[known]
    for day in np.unique(dates):
        mask = dates == day
        auc = score_summary(y[mask], risk[mask]).roc_auc
        by_date.append((pd.Timestamp(day).date(), int(mask.sum()), int(y[mask].sum()), auc))
    current = {name: float(w) for name, w in card.weights_for(None).items()}
    points = data.points.loc[known] if len(data.points) else pd.DataFrame(columns=list(card.measures))
    suggested = suggest_weights(points, y, current)
    suggested_scores = None
    if suggested and sum(suggested.values()) > 0:
        weights = np.array([suggested[m] for m in points.columns])
        present = points.notna().to_numpy()
        effective = np.where(present, weights, 0.0)
        totals = effective.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            refit = np.nansum(points.to_numpy() * effective, axis=1) / totals
        usable = totals > 0
        if len(np.unique(y[usable])) == 2:
            suggested_scores = score_summary(y[usable], (100.0 - refit[usable]) / 100.0)
    return BacktestResult(
        horizon_days=config.horizon_days, rows=int(known.sum()), positives=int(y.sum()), scores=scores,
        by_date=by_date, current_weights=current, suggested_weights=suggested, suggested_scores=suggested_scores,
    )
