"""Behaviour cohorts (KMeans) and value tiers (A/B/C by ARR and growth potential).

Cohorts: the active accounts' behaviour features (below) are imputed with the median and standardised; KMeans
runs for every k in `[min_k, max_k]` with a fixed seed and the k with the best silhouette score wins (ties to
the smaller k). Cohorts are numbered by size, 1 = the largest, so the numbering does not depend on KMeans' label
order. Each cohort is described by the features whose cohort mean lies furthest from the portfolio mean, in
standard deviations (`Trait`): what sets it apart, worded by the bot.

Tiers: A from `a_min_arr`, B from `b_min_arr`, C below; growth potential (licence utilisation at or above
`growth_utilisation`, or usage up `growth_usage_trend` % or more against the prior 30 days) moves an account
up one tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import delete, update
from sqlmodel import Session
from threadpoolctl import threadpool_limits

from lifecycle.insight.churn import SegmentSettings, TierSettings
from lifecycle.store.bulkwrite import update_rows
from lifecycle.store.db import upsert
from lifecycle.store.models import Account, Cohort, utcnow

BEHAVIOUR_FEATURES = (
    "utilisation", "events_per_seat_30", "logins_per_seat_30", "feature_breadth_30", "usage_trend",
    "tickets_30", "nps_last_score", "days_since_last_login",
)
TRAIT_THRESHOLD = 0.5  # standard deviations from the portfolio mean for a feature to describe a cohort
MAX_TRAITS = 3
TIERS = ("A", "B", "C")
FIT_SAMPLE = 10_000  # accounts KMeans is fitted on; the rest are assigned to the nearest centre


def behaviour_frame(signals: pd.DataFrame) -> pd.DataFrame:
    """The behaviour features of every active account of a signals frame (NaN where unknown)."""
    active = signals[signals["status"] == "active"]
    seats = active["seats"].astype(float).where(active["seats"] > 0)
    prior = active["events_prior_30"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        trend = (active["events_30"] - prior) / prior * 100.0
    return pd.DataFrame({
        "utilisation": active["utilisation"].astype(float),
        "events_per_seat_30": np.log1p(active["events_30"].astype(float) / seats),
        "logins_per_seat_30": active["logins_30"].astype(float) / seats,
        "feature_breadth_30": active["feature_breadth_30"].astype(float),
        "usage_trend": trend.where(prior > 0).clip(-100.0, 300.0),
        "tickets_30": active["tickets_30"].astype(float),
        "nps_last_score": active["nps_last_score"].astype(float),
        "days_since_last_login": active["days_since_last_login"].astype(float),
    }, index=active.index)


@dataclass(frozen=True)
class Trait:
    """A feature on which a cohort differs from the portfolio: its mean there, and by how many SDs."""

    feature: str
    z: float
    mean: float

    def as_json(self) -> dict[str, float | str]:
        return {"feature": self.feature, "z": round(self.z, 2), "mean": round(self.mean, 3)}


@dataclass
class Segmentation:
    k: int
    silhouette: float
    cohort: pd.Series  # index account_id → cohort number (1 = largest)
    sizes: dict[int, int]
    traits: dict[int, list[Trait]]
    silhouettes: dict[int, float]


def segment(behaviour: pd.DataFrame, config: SegmentSettings) -> Segmentation | None:
    """Cluster the accounts; None when there are too few accounts (or no varying feature) to form cohorts."""
    # scikit-learn takes seconds to import: loaded when a model is fitted or scored, not by every
    # command that imports this module.
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    usable = [c for c in behaviour.columns if behaviour[c].notna().any()]
    frame = behaviour[usable]
    medians = frame.median()
    filled = frame.fillna(medians)
    spread = filled.std(ddof=0)
    varying = [c for c in usable if spread[c] > 0]
    if not varying or len(filled) < 2 * config.min_k + 1:
        return None
    z = ((filled[varying] - filled[varying].mean()) / spread[varying]).to_numpy()
    best: tuple[float, int, np.ndarray] | None = None
    silhouettes: dict[int, float] = {}
    rng_state = np.random.RandomState(config.seed)
    sample = min(len(z), config.silhouette_sample)
    sample_idx = np.sort(rng_state.choice(len(z), size=sample, replace=False)) if sample < len(z) else None
    # Large books: centres are fitted on a seeded sample, then every account is assigned to its nearest centre.
    fit_rows = np.sort(rng_state.choice(len(z), size=FIT_SAMPLE, replace=False)) if len(z) > FIT_SAMPLE else None
    for k in range(config.min_k, min(config.max_k, len(z) - 1) + 1):
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=config.seed)
        labels = kmeans.fit(z[fit_rows] if fit_rows is not None else z).predict(z)
        if len(np.unique(labels)) < 2:
            continue
        if sample_idx is not None:
            score = float(silhouette_score(z[sample_idx], labels[sample_idx]))
        else:
            score = float(silhouette_score(z, labels))
        silhouettes[k] = round(score, 4)
        if best is None or score > best[0] + 1e-12:
            best = (score, k, labels)
    if best is None:
        return None
    score, k, labels = best
    counts = pd.Series(labels).value_counts()
    # Largest first; equal sizes by the smallest first member, which KMeans' seed fixes.
    sizes_by_label = {int(lab): int(n) for lab, n in zip(counts.index.tolist(), counts.tolist(), strict=True)}
    first = {lab: int(np.flatnonzero(labels == lab)[0]) for lab in sizes_by_label}
    order = sorted(sizes_by_label, key=lambda lab: (-sizes_by_label[lab], first[lab]))
    number = {lab: i + 1 for i, lab in enumerate(order)}
    cohort = pd.Series([number[int(lab)] for lab in labels], index=behaviour.index, name="cohort")
    traits: dict[int, list[Trait]] = {}
    zframe = pd.DataFrame(z, columns=varying, index=behaviour.index)
    for c in sorted(set(number.values())):
        members = cohort == c
        centre = zframe[members].mean()
        ranked = sorted(varying, key=lambda f: (-abs(float(centre[f])), varying.index(f)))
        traits[c] = [Trait(f, float(centre[f]), float(filled.loc[members, f].mean()))
                     for f in ranked if abs(float(centre[f])) >= TRAIT_THRESHOLD][:MAX_TRAITS]
    sizes = {number[lab]: n for lab, n in sizes_by_label.items()}
    sizes = dict(sorted(sizes.items()))
    return Segmentation(k=k, silhouette=round(score, 4), cohort=cohort, sizes=sizes, traits=traits,
                        silhouettes=silhouettes)


def save_segmentation(session: Session, result: Segmentation | None, *, now: datetime | None = None) -> int:
    """Store each active account's cohort and replace the cohort table (bulk statements; the caller commits)."""
    table = Account.__table__  # type: ignore[attr-defined]
    session.execute(update(table).where(table.c.cohort.is_not(None)).values(cohort=None))
    session.execute(delete(Cohort.__table__))  # type: ignore[attr-defined]
    if result is None:
        return 0
    params = list(zip(result.cohort.index.tolist(), result.cohort.tolist(), strict=True))
    update_rows(session, table, ("id",), ("cohort",), params)
    stamp = now or utcnow()
    rows = [{"id": c, "size": result.sizes.get(c, 0), "traits": [t.as_json() for t in traits], "computed_at": stamp}
            for c, traits in result.traits.items()]
    upsert(session, Cohort, rows, conflict=["id"])
    return len(params)


def tiers(arr: pd.Series, utilisation: pd.Series, usage_trend: pd.Series, config: TierSettings) -> pd.Series:
    """A, B or C per account: by ARR, one tier up with growth potential."""
    value = arr.astype(float).fillna(0.0).to_numpy()
    rank = np.where(value >= config.a_min_arr, 0, np.where(value >= config.b_min_arr, 1, 2))
    growth = (utilisation.astype(float).fillna(0.0).to_numpy() >= config.growth_utilisation) | (
        usage_trend.astype(float).fillna(-np.inf).to_numpy() >= config.growth_usage_trend)
    rank = np.where(growth, np.maximum(rank - 1, 0), rank)
    return pd.Series(np.array(TIERS, dtype=object)[rank], index=arr.index, name="tier")


def save_tiers(session: Session, tier: pd.Series) -> int:
    table = Account.__table__  # type: ignore[attr-defined]
    params = [(a, str(t)) for a, t in zip(tier.index.tolist(), tier.tolist(), strict=True)]
    update_rows(session, table, ("id",), ("tier",), params)
    return len(params)


def refresh(session: Session, signals: pd.DataFrame, *, segments: SegmentSettings, tier_config: TierSettings,
            now: datetime | None = None) -> str:
    """The nightly cohort and tier step over a signals frame; returns a one-line note."""
    behaviour = behaviour_frame(signals)
    with threadpool_limits(limits=1):
        result = segment(behaviour, segments)
    save_segmentation(session, result, now=now)
    note = f"{result.k} cohorts (silhouette {result.silhouette:.2f})" if result else "too few accounts for cohorts"
    if tier_config.enabled and len(signals):
        # Churned accounts get a tier too (by ARR; no growth potential), so `find tier=…` means one scale.
        growth = behaviour.reindex(signals.index)
        count = save_tiers(session, tiers(signals["arr"], growth["utilisation"], growth["usage_trend"], tier_config))
        note += f", {count} tiers"
    return note
