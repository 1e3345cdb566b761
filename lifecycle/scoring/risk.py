"""The at-risk definition, one for the `at-risk` list (lifecycle/reports/portfolio.py) and the at_risk alert rule
(lifecycle/scoring/alerts.py), so the list and the owner's warning never disagree.

An active account is at risk when any of these holds, each a reason the list and the alert name:
- `red`: its health grade is red;
- `critical`: a critical signal of the scorecard holds (usage halved, nobody logging in, …), one reason each;
- `falling`: it is yellow or red and lost at least `[at_risk] falling_points` in 7 or in 30 days;
- `churn`: its churn probability is at least `[at_risk] churn_probability` (quiet without a churn model).

The masks are computed on whole columns; the reasons are assembled only for the accounts at risk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from lifecycle.scoring.health import Lang, RiskDefinition, Scorecard, critical_text

ReasonKind = Literal["red", "critical", "falling", "churn"]


@dataclass(frozen=True)
class RiskReason:
    """Why an account is at risk: its kind, and what was measured.

    `value` is the critical signal's value, the points lost (negative) for `falling`, or the probability for
    `churn`; `days` is the span of the fall (7 or 30); `name` the critical signal."""

    kind: ReasonKind
    name: str | None = None
    value: float | None = None
    days: int | None = None


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _signals(value: Any) -> list[Mapping[str, Any]]:
    """The critical signals of one account: a list of {"name", "value"} (as snapshots store them), or nothing."""
    if isinstance(value, Mapping):
        value = value.get("signals")
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [s for s in value if isinstance(s, Mapping) and s.get("name")]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def reasons(frame: pd.DataFrame, definition: RiskDefinition) -> pd.Series:
    """Per account of `frame`, its reasons for being at risk (an empty list when it is not), red first, then
    the critical signals in scorecard order, the fall, the churn probability.

    `frame` has the columns `health_grade`, `delta_7` and `delta_30` (score change in points), `churn_probability`,
    and `critical` (per account the critical signals that hold: a list of {"name", "value"}, or a snapshot's
    `_critical` entry, or None); a missing column is no data. The caller passes active accounts only.
    """
    n = len(frame)
    grade = frame["health_grade"].astype(object).to_numpy() if "health_grade" in frame.columns else np.full(n, None)
    red = grade == "red"
    delta_7, delta_30 = _numbers(frame, "delta_7"), _numbers(frame, "delta_30")
    limit = -definition.falling_points
    falls_7 = np.nan_to_num(np.round(delta_7, 6), nan=np.inf) <= limit
    falls_30 = np.nan_to_num(np.round(delta_30, 6), nan=np.inf) <= limit
    falling = (red | (grade == "yellow")) & (falls_7 | falls_30)
    probability = _numbers(frame, "churn_probability")
    churn = np.nan_to_num(probability, nan=-np.inf) >= definition.churn_probability
    critical = frame["critical"].to_numpy(dtype=object) if "critical" in frame.columns else np.full(n, None)
    has_critical = np.array([bool(_signals(c)) for c in critical], dtype=bool)

    out: list[list[RiskReason]] = [[] for _ in range(n)]
    for row in np.flatnonzero(red | has_critical | falling | churn).tolist():
        found: list[RiskReason] = []
        if red[row]:
            found.append(RiskReason("red"))
        found += [RiskReason("critical", name=str(s["name"]), value=_number(s.get("value")))
                  for s in _signals(critical[row])]
        if falling[row]:
            days, fall = (7, delta_7[row]) if falls_7[row] else (30, delta_30[row])
            found.append(RiskReason("falling", value=float(fall), days=days))
        if churn[row]:
            found.append(RiskReason("churn", value=float(probability[row])))
        out[row] = found
    return pd.Series(out, index=frame.index, dtype=object)


def reason_text(reason: RiskReason, lang: str = "en", scorecard: Scorecard | None = None) -> str:
    """One reason in words: "red", "usage −92 % in the last 30 days vs the 30 before", "down 14 points in 7
    days", "churn risk 62 %" (and in Chinese)."""
    zh = lang == "zh"
    language: Lang = "zh" if zh else "en"
    if reason.kind == "red":
        return "红色" if zh else "red"
    if reason.kind == "critical":
        return critical_text({"name": reason.name, "value": reason.value}, language, scorecard)
    if reason.kind == "falling":
        points = abs(round(reason.value or 0.0))
        return f"{reason.days} 天内下降 {points} 分" if zh else f"down {points} points in {reason.days} days"
    percent = round(100 * (reason.value or 0.0))
    return f"流失风险 {percent}%" if zh else f"churn risk {percent} %"


def reasons_text(found: Sequence[RiskReason], lang: str = "en", scorecard: Scorecard | None = None) -> str:
    """The reasons of one account in a line: "red; usage −92 % in the last 30 days vs the 30 before; …"."""
    return ("；" if lang == "zh" else "; ").join(reason_text(r, lang, scorecard) for r in found)
