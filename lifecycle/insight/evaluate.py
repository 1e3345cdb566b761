"""Model evaluation on any labelled CSV, and the ranking figures every churn report uses.

`evaluate_file` reads a CSV with a binary target column and runs stratified, shuffled k-fold cross-validation
(5 folds by default, seeded) of each candidate:

- `logistic`: numbers imputed with the median (plus a missing-value indicator), a signed log transform and a
  cubic spline basis of the standardised value (so a non-linear effect such as "risk falls fast in the first
  months, then levels off" is representable), all standardised; categoricals imputed and one-hot encoded (rare
  levels pooled); L2-regularised logistic regression.
- `hist_gradient_boosting`: numbers as they are (missing values are native), categoricals ordinal-encoded and
  declared categorical; shallow, regularised boosting (it finds interactions by itself).

Preparation is the same for every file: the target's rows without a value are dropped; an `--id` column, and any
column whose values are all distinct text or all distinct whole numbers (an identifier) are dropped; text columns
whose non-blank values are at least 95 % numbers are read as numbers (blanks become missing). The chosen model is
the candidate with the best out-of-fold ROC AUC. Figures: ROC AUC and PR AUC of the pooled out-of-fold
probabilities, and top-decile lift = churn rate among the 10 % highest-scored ÷ overall churn rate.

With `signals` (file column → scorecard signal, e.g. "Days.Since.Last.Login" → `days_since_last_login`), each
labelled row is also scored with the health scorecard, critical signals included, and the health score's own
discrimination is reported next to the models': the same figures for 100 − score. Only the measures whose signals
the file carries take part (the scorecard renormalises weights over the measures with data; `min_coverage` is not
applied, as a file maps only some of them), with the default weights (no stage or segment).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from lifecycle.scoring.health import Scorecard, default_scorecard, measure_values, score_frame
from lifecycle.store.errors import CsbotError

POSITIVE_WORDS = ("1", "yes", "y", "true", "t", "churn", "churned")
NUMERIC_SHARE = 0.95  # share of non-blank values that must parse as numbers for a text column to be numeric
MIN_ROWS_FOR_ID = 20  # below this, "all values distinct" says little about a column being an identifier


class EvaluationError(CsbotError):
    """The file or its columns cannot be evaluated (missing target, one class only, …)."""


@dataclass(frozen=True)
class Scores:
    """How well probabilities rank the positives."""

    roc_auc: float
    pr_auc: float
    top_decile_lift: float
    rows: int
    positives: int

    def as_json(self) -> dict[str, float]:
        return {"roc_auc": round(self.roc_auc, 4), "pr_auc": round(self.pr_auc, 4),
                "top_decile_lift": round(self.top_decile_lift, 3), "rows": self.rows, "positives": self.positives}


def top_decile_lift(y: np.ndarray, p: np.ndarray) -> float:
    """Positive rate among the 10 % highest-scored rows ÷ the overall positive rate (NaN without positives).

    Ties at the cut are broken by row order (a stable sort), so the figure is deterministic."""
    y = np.asarray(y, dtype=float)
    if len(y) == 0 or y.sum() == 0:
        return float("nan")
    top = max(1, int(np.ceil(0.1 * len(y))))
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")[:top]
    return float(y[order].mean() / y.mean())


def score_summary(y: np.ndarray, p: np.ndarray) -> Scores:
    """ROC AUC, PR AUC and top-decile lift of probabilities `p` for labels `y` (AUCs NaN with one class only)."""
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.metrics import average_precision_score, roc_auc_score
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    both = len(np.unique(y)) == 2
    return Scores(
        roc_auc=float(roc_auc_score(y, p)) if both else float("nan"),
        pr_auc=float(average_precision_score(y, p)) if both else float("nan"),
        top_decile_lift=top_decile_lift(y, p),
        rows=len(y),
        positives=int(y.sum()),
    )


# ------------------------------------------------------------------------------------------------- preparation


@dataclass
class Dataset:
    """A labelled table ready for the candidates."""

    X: pd.DataFrame
    y: np.ndarray
    positive: str
    numeric: list[str]
    categorical: list[str]
    dropped: list[str] = field(default_factory=list)  # identifier columns
    coerced: list[str] = field(default_factory=list)  # text columns read as numbers
    rows: pd.Index | None = None  # the labelled rows of the original table, in the order of X and y


def _blank_to_na(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _is_identifier(values: pd.Series) -> bool:
    present = values.dropna()
    if len(present) < MIN_ROWS_FOR_ID or present.nunique() != len(present):
        return False
    if pd.api.types.is_numeric_dtype(present):
        numbers = present.astype(float)
        return bool(np.all(numbers == np.round(numbers)))
    return True


def _pick_positive(target: pd.Series, positive: str | None) -> str:
    labels = sorted(target.astype(str).unique())
    if positive is not None:
        if positive not in labels:
            raise EvaluationError(f"--positive {positive!r} is not a value of the target (values: {', '.join(labels)})")
        return positive
    if len(labels) != 2:
        raise EvaluationError(f"the target has {len(labels)} values ({', '.join(labels[:10])}); pass --positive")
    for word in POSITIVE_WORDS:
        for label in labels:
            if label.casefold() == word:
                return label
    counts = target.astype(str).value_counts()
    return str(counts.index[-1])  # the rarer class


def prepare(frame: pd.DataFrame, target: str, *, id_column: str | None = None, positive: str | None = None) -> Dataset:
    """Split a labelled table into features and 0/1 labels (see the module docstring for the rules)."""
    if target not in frame.columns:
        raise EvaluationError(f"no column {target!r} (columns: {', '.join(map(str, frame.columns))})")
    if id_column is not None and id_column not in frame.columns:
        raise EvaluationError(f"no id column {id_column!r}")
    raw_target = frame[target]
    if pd.api.types.is_numeric_dtype(raw_target):
        # 1.0 and 1 are the same label: whole numbers are named without a decimal point.
        numbers = raw_target.astype(float)
        raw_target = numbers.map(lambda v: "" if pd.isna(v) else (str(int(v)) if float(v).is_integer() else str(v)))
    labelled = frame[_blank_to_na(raw_target).notna()]
    target_values = _blank_to_na(raw_target[labelled.index]).astype(str)
    chosen = _pick_positive(target_values, positive)
    y = (target_values == chosen).to_numpy(dtype=int)
    if y.sum() == 0 or y.sum() == len(y):
        raise EvaluationError("the target has only one class")
    X = labelled.drop(columns=[target]).reset_index(drop=True)
    dropped = [id_column] if id_column else []
    X = X.drop(columns=dropped)
    coerced: list[str] = []
    for name in list(X.columns):
        column = X[name]
        if not pd.api.types.is_numeric_dtype(column):
            text = _blank_to_na(column)
            numbers = pd.to_numeric(text, errors="coerce")
            present = int(text.notna().sum())
            if present and numbers.notna().sum() >= NUMERIC_SHARE * present:
                X[name] = numbers.astype(float)
                coerced.append(str(name))
            else:
                X[name] = text.astype(object).where(text.notna(), np.nan)
        if _is_identifier(X[name]):
            dropped.append(str(name))
            X = X.drop(columns=[name])
            if name in coerced:
                coerced.remove(str(name))
    numeric = [str(c) for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    categorical = [str(c) for c in X.columns if str(c) not in numeric]
    if not numeric and not categorical:
        raise EvaluationError("no feature columns left")
    return Dataset(X=X, y=y, positive=chosen, numeric=numeric, categorical=categorical, dropped=dropped,
                   coerced=coerced, rows=labelled.index)


def _signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def logistic_candidate(numeric: list[str], categorical: list[str], C: float = 0.3) -> Pipeline:
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, SplineTransformer, StandardScaler
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("log", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                           FunctionTransformer(_signed_log), StandardScaler()), numeric))
        parts.append(("spline", make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                              SplineTransformer(n_knots=4, degree=3, extrapolation="linear"),
                                              StandardScaler()), numeric))
    if categorical:
        parts.append(("onehot", make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"),
                                              OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=10)),
                      categorical))
    return Pipeline([("features", ColumnTransformer(parts)), ("model", LogisticRegression(C=C, max_iter=5000))])


def boosting_candidate(numeric: list[str], categorical: list[str]) -> Pipeline:
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("numbers", "passthrough", numeric))
    if categorical:
        parts.append(("codes", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                              encoded_missing_value=np.nan, min_frequency=10, max_categories=64),
                      categorical))
    mask = [False] * len(numeric) + [True] * len(categorical)
    model = HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=150, max_depth=3, min_samples_leaf=40, l2_regularization=1.0,
        categorical_features=mask if any(mask) else None, early_stopping=False, random_state=0,
    )
    return Pipeline([("features", ColumnTransformer(parts)), ("model", model)])


CANDIDATES: dict[str, Callable[[list[str], list[str]], Pipeline]] = {
    "logistic": logistic_candidate,
    "hist_gradient_boosting": boosting_candidate,
}


# -------------------------------------------------------------------------------------------------- evaluation


@dataclass
class CandidateScore:
    name: str
    scores: Scores
    seconds: float


@dataclass
class HealthScores:
    """How the health scorecard ranks a labelled file: the figures of 100 − score over the rows it could score."""

    scorecard_version: str
    signals: dict[str, str]  # file column → signal
    measures: list[str]  # the scorecard's measures that had data in the file
    scored: int  # rows with a score (the others had no value in any mapped measure)
    scores: Scores
    critical: dict[str, int]  # rows on which each critical signal held (capping the score)

    def as_json(self) -> dict[str, Any]:
        return {"scorecard_version": self.scorecard_version, "signals": self.signals, "measures": self.measures,
                "scored": self.scored, **self.scores.as_json(), "critical": self.critical}


def health_scores(frame: pd.DataFrame, y: np.ndarray, signals: dict[str, str], scorecard: Scorecard) -> HealthScores:
    """Score each row of `frame` (labelled `y`) with `scorecard`, reading the signals from the mapped columns
    (numbers; anything else is no data), and measure how 100 − score ranks the positives."""
    known = set(_read_signals(scorecard))
    for column, signal in signals.items():
        if column not in frame.columns:
            raise EvaluationError(f"--signal {column}={signal}: no column {column!r} in the file")
        if signal not in known:
            raise EvaluationError(
                f"--signal {column}={signal}: the scorecard reads no signal {signal!r} (it reads: "
                f"{', '.join(sorted(known))})")
    table = pd.DataFrame(
        {signal: pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float) for column, signal in
         signals.items()}, index=pd.RangeIndex(len(frame)))
    card = scorecard.model_copy(update={"min_coverage": 0.0})
    scored = score_frame(table, card)
    measures = [m for m, config in card.measures.items() if not np.isnan(measure_values(table, config)).all()]
    if not measures:
        raise EvaluationError("no measure of the scorecard has data in the mapped columns")
    score = scored["score"].to_numpy(dtype=float)
    has = ~np.isnan(score)
    if len(np.unique(y[has])) < 2:
        raise EvaluationError("the rows the scorecard could score hold only one class")
    critical = {name: int(scored[f"critical_{name}"].sum()) for name in card.critical
                if f"critical_{name}" in scored.columns and scored[f"critical_{name}"].any()}
    return HealthScores(scorecard_version=card.version, signals=dict(signals), measures=measures,
                        scored=int(has.sum()), scores=score_summary(y[has], (100.0 - score[has]) / 100.0),
                        critical=critical)


def _read_signals(scorecard: Scorecard) -> list[str]:
    """Every signal the scorecard reads: its measures' (with baselines and rising penalties) and critical ones'."""
    names: list[str] = []
    for config in scorecard.measures.values():
        names += [config.signal, *([config.baseline] if config.baseline else [])]
        if config.rising is not None:
            names += [config.rising.signal, config.rising.baseline]
    names += [critical.signal for critical in scorecard.critical.values()]
    return list(dict.fromkeys(names))


@dataclass
class Evaluation:
    """The cross-validated figures of every candidate on one file, and the chosen one."""

    dataset: str
    rows: int
    positives: int
    positive: str
    folds: int
    numeric: list[str]
    categorical: list[str]
    dropped: list[str]
    coerced: list[str]
    candidates: list[CandidateScore]
    chosen: str
    seconds: float
    health: HealthScores | None = None

    @property
    def target_share(self) -> float:
        """Percentage of rows that are positive."""
        return 100.0 * self.positives / self.rows if self.rows else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "rows": self.rows, "positives": self.positives, "positive": self.positive,
            "folds": self.folds, "dropped": self.dropped, "coerced": self.coerced,
            "candidates": {c.name: {**c.scores.as_json(), "seconds": round(c.seconds, 2)} for c in self.candidates},
            "chosen": self.chosen, "seconds": round(self.seconds, 2),
            **({"health": self.health.as_json()} if self.health is not None else {}),
        }


def cross_validate(data: Dataset, *, folds: int = 5, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> list[CandidateScore]:
    """Out-of-fold probabilities of every candidate over stratified shuffled folds, and their figures."""
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.model_selection import StratifiedKFold
    minority = int(min(data.y.sum(), len(data.y) - data.y.sum()))
    if minority < folds:
        raise EvaluationError(f"{folds}-fold cross-validation needs at least {folds} rows of each class "
                              f"(the rarer class has {minority})")
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(data.X, data.y))
    out = []
    # One thread each: on a shared machine, thread pools for these matrix sizes lose more to contention than they gain.
    with threadpool_limits(limits=1):
        out = _run_candidates(data, splits, progress)
    return out


def _run_candidates(data: Dataset, splits: list[tuple[np.ndarray, np.ndarray]],
                    progress: Callable[[str], None] | None) -> list[CandidateScore]:
    out = []
    for name, build in CANDIDATES.items():
        if progress is not None:
            progress(name)
        started = time.perf_counter()
        oof = np.zeros(len(data.y))
        for train, test in splits:
            model = build(data.numeric, data.categorical)
            model.fit(data.X.iloc[train], data.y[train])
            oof[test] = model.predict_proba(data.X.iloc[test])[:, 1]
        out.append(CandidateScore(name, score_summary(data.y, oof), time.perf_counter() - started))
    return out


def evaluate_frame(frame: pd.DataFrame, target: str, *, name: str = "table", id_column: str | None = None,
                   positive: str | None = None, folds: int = 5, seed: int = 0,
                   progress: Callable[[str], None] | None = None, signals: dict[str, str] | None = None,
                   scorecard: Scorecard | None = None) -> Evaluation:
    started = time.perf_counter()
    data = prepare(frame, target, id_column=id_column, positive=positive)
    health = None
    if signals:
        labelled = frame.loc[data.rows] if data.rows is not None else frame
        health = health_scores(labelled.reset_index(drop=True), data.y, signals, scorecard or default_scorecard())
    results = cross_validate(data, folds=folds, seed=seed, progress=progress)
    chosen = max(results, key=lambda c: c.scores.roc_auc).name
    return Evaluation(
        dataset=name, rows=len(data.y), positives=int(data.y.sum()), positive=data.positive, folds=folds,
        numeric=data.numeric, categorical=data.categorical, dropped=data.dropped, coerced=data.coerced,
        candidates=results, chosen=chosen, seconds=time.perf_counter() - started, health=health,
    )


def evaluate_file(path: Path, target: str, *, id_column: str | None = None, positive: str | None = None,
                  folds: int = 5, seed: int = 0, progress: Callable[[str], None] | None = None,
                  signals: dict[str, str] | None = None, scorecard: Scorecard | None = None) -> Evaluation:
    """Cross-validate every candidate on a labelled CSV file, and with `signals` score it with the health
    scorecard too (see the module docstring)."""
    try:
        frame = pd.read_csv(path, dtype={target: str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise EvaluationError(f"{path}: cannot read it as CSV: {exc}") from None
    if target in frame.columns:
        frame[target] = _blank_to_na(frame[target]).astype(object)
    return evaluate_frame(frame, target, name=path.name, id_column=id_column, positive=positive, folds=folds,
                          seed=seed, progress=progress, signals=signals, scorecard=scorecard)
