"""Alert rules: their TOML configuration, vectorised evaluation over the portfolio, and raising/resolving alerts.

The rules (`config/alerts.toml`, documented in the file itself) read the signals frame of `lifecycle.scoring.signals`
with the health columns filled in, plus each account's health 7 and 30 days ago and its grade on the previous
snapshot (`previous_health`, one SQL query). The `at_risk` rule applies the at-risk definition of
`lifecycle.scoring.risk` (the same as the `at-risk` list) with the scorecard's critical signals and thresholds.
`evaluate` is a pure function: pandas masks over the whole portfolio, one row per account × rule that fires.
`raise_alerts` turns those rows into `Alert` rows with bulk statements:

- an (account, rule) with an open, acknowledged or still-snoozed alert raises nothing new;
- a snoozed alert whose snooze has ended comes back (status open) if its condition still holds;
- open and acknowledged alerts whose condition no longer holds are resolved, so the next occurrence alerts
  again; `grade_red` fires on the day the grade turns red but holds for as long as the account stays red;
- `at_risk` is not raised for an account while a `grade_red` or `churn_risk` alert stands for it (or is raised in
  the same run): those already carry the warning, and the owner gets one message, not two.

Nothing here commits; the caller does. Delivery (chat, routing, outbox) lives elsewhere.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Date, and_, bindparam, case, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from lifecycle.reports.analytics import stage_p90_days
from lifecycle.scoring import risk
from lifecycle.scoring.health import Scorecard, critical_frame, default_scorecard, split_measures, value_text
from lifecycle.scoring.signals import SIGNAL_COLUMNS, build_signals
from lifecycle.scoring.stages import load_stage_machine, transition_time
from lifecycle.store.db import upsert
from lifecycle.store.models import Account, Alert, HealthSnapshot
from lifecycle.store.settings import CONFIG_DIR, PLATFORM_TOKENS, read_toml, validate_config

DEFAULT_ALERTS_FILE = CONFIG_DIR / "alerts.toml"
RULE_NAMES = (
    "health_drop", "grade_red", "usage_drop", "low_utilisation", "urgent_tickets", "nps_detractor",
    "no_touchpoint", "stale_data", "churn_risk", "renewal_risk",
)
# Rules that may be left out of an alerts file; they take their defaults (stuck_in_stage off, at_risk on).
OPTIONAL_RULE_NAMES = ("at_risk", "stuck_in_stage")
FIRED_COLUMNS = ["account_id", "rule", "severity", "title", "title_zh", "value", "threshold"]
PREVIOUS_COLUMNS = ["score_7", "score_30", "prev_grade"]
# A rule whose alert, while it stands, already says what another rule would: that one is not raised as well.
SUBSUMED_BY = {"at_risk": ("grade_red", "churn_risk")}
# Statuses under which an alert still stands for its condition (resolved ones are history).
LIVE_STATUSES = ("open", "acknowledged", "snoozed")
TOP_DRIVERS = 3
_PLACEHOLDERS = frozenset({"value", "threshold", "churn_probability", "days_in_stage", "stage_p90_days",
                           "risk_reasons", *PREVIOUS_COLUMNS, *SIGNAL_COLUMNS})
# Scores are stored with one decimal and ratios come from integer counts: rounding away float noise lets a value
# that is exactly at its threshold compare as such (80 − 65.1 must be 14.9, not 14.900000000000006).
_DECIMALS = 6
_IDS_PER_QUERY = 5_000
_GRADE_COLUMNS = ("health_grade", "prev_grade")
_GRADE_ZH = {"red": "红色", "yellow": "黄色", "green": "绿色", "unknown": "未知"}

Severity = Literal["info", "warning", "critical"]
Lang = Literal["en", "zh"]


# ------------------------------------------------------------------------------------------------ configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_template(template: str) -> str:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template: {exc}") from None
    for _literal, name, _spec, conversion in parsed:
        if name is None:
            continue
        if conversion or name not in _PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}}: use {{value}}, {{threshold}}, {{score_7}}, {{score_30}}, "
                "{prev_grade}, {risk_reasons} or a signals column"
            )
    return template


class RuleConfig(_Strict):
    """What every rule has: on/off, severity, headline templates and a playbook of next steps."""

    enabled: bool = True
    severity: Severity
    title: str = Field(min_length=1)
    title_zh: str = Field(min_length=1)
    playbook: dict[str, str]

    @field_validator("title", "title_zh")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        return _check_template(value)

    @field_validator("playbook")
    @classmethod
    def _valid_playbook(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("default", "").strip():
            raise ValueError("needs a non-empty `default` entry")
        for key, steps in value.items():
            if not steps.strip():
                raise ValueError(f"{key}: must not be empty")
            if key.endswith("_zh") and key.removesuffix("_zh") not in value:
                raise ValueError(f"{key}: has no English entry {key.removesuffix('_zh')!r}")
        return value

    def next_steps(self, stage: str | None, lang: Lang = "en") -> str:
        """The playbook entry for `stage` (falling back to `default`); Chinese falls back to English."""
        key = stage if stage is not None and stage in self.playbook and not stage.endswith("_zh") else "default"
        if lang == "zh":
            return self.playbook.get(f"{key}_zh") or self.playbook[key]
        return self.playbook[key]


class HealthDropRule(RuleConfig):
    points: float = Field(default=15, gt=0, le=100)


class GradeRedRule(RuleConfig):
    pass


class UsageDropRule(RuleConfig):
    percent: float = Field(default=30, gt=0, le=100)


class LowUtilisationRule(RuleConfig):
    below_percent: float = Field(default=40, gt=0)
    skip_stages: tuple[str, ...] = ("onboarding",)


class UrgentTicketsRule(RuleConfig):
    min_urgent_open: int = Field(default=1, ge=1)
    spike_min_tickets: int = Field(default=3, ge=1)
    spike_ratio: float = Field(default=2.0, gt=0)


class NpsDetractorRule(RuleConfig):
    max_score: int = Field(default=6, ge=0, le=10)
    within_days: int = Field(default=7, ge=1)


class NoTouchpointRule(RuleConfig):
    days: int = Field(default=45, ge=1)
    min_arr: float = Field(default=50_000, ge=0)


class StaleDataRule(RuleConfig):
    days: int = Field(default=3, ge=1)


class ChurnRiskRule(RuleConfig):
    probability: float = Field(default=0.5, gt=0, le=1)


class RenewalRiskRule(RuleConfig):
    within_days: int = Field(default=90, ge=0)
    grades: tuple[Literal["red", "yellow", "green"], ...] = Field(default=("yellow", "red"), min_length=1)


class AtRiskRule(RuleConfig):
    """Accounts at risk by the definition of the `at-risk` list (lifecycle/scoring/risk.py: red, a critical signal,
    falling fast, a high churn probability); its thresholds are the scorecard's `[at_risk]` and `[critical.*]`."""

    enabled: bool = True
    severity: Severity = "warning"
    title: str = "At risk: {risk_reasons}"
    title_zh: str = "风险客户：{risk_reasons}"
    playbook: dict[str, str] = Field(default_factory=lambda: {
        "default": "Read why it is at risk, call the main contact within two days and agree a recovery plan; log "
                   "a note.",
        "default_zh": "查看风险原因，两天内联系主要联系人并商定挽回计划，然后记录备注。",
    })


class StuckInStageRule(RuleConfig):
    """Accounts in their stage for longer than the stage's 90th-percentile stay (of stays ended in the last
    `lookback_days`) and at least `min_days`, outside `skip_stages`."""

    enabled: bool = False
    severity: Severity = "info"
    title: str = "Stuck in {stage} for {value:.0f} days (90 % of stays end within {threshold:.0f})"
    title_zh: str = "已在{stage}阶段停留 {value:.0f} 天（90% 的停留在 {threshold:.0f} 天内结束）"
    playbook: dict[str, str] = Field(default_factory=lambda: {
        "default": "Find what blocks the next step with the champion and agree a date for it.",
        "default_zh": "与内部支持者一起找出阻碍下一步的原因，并商定完成日期。",
    })
    min_days: float = Field(default=30, ge=0)
    lookback_days: int = Field(default=365, ge=30)
    skip_stages: tuple[str, ...] = ("churned",)


class Rules(_Strict):
    """Every rule must be declared (set `enabled = false` to switch one off), except the optional ones."""

    health_drop: HealthDropRule
    grade_red: GradeRedRule
    usage_drop: UsageDropRule
    low_utilisation: LowUtilisationRule
    urgent_tickets: UrgentTicketsRule
    nps_detractor: NpsDetractorRule
    no_touchpoint: NoTouchpointRule
    stale_data: StaleDataRule
    churn_risk: ChurnRiskRule
    renewal_risk: RenewalRiskRule
    at_risk: AtRiskRule = Field(default_factory=AtRiskRule)
    stuck_in_stage: StuckInStageRule = Field(default_factory=StuckInStageRule)


class RoutingConfig(_Strict):
    """Where alerts go and when (`[routing]`): team channel, quiet hours, daily budget, escalation, digests.

    Times are local to the recipient: the owner's `User.timezone`, or `team_timezone` for the team channel.
    """

    team_slack_channel: str | None = None
    team_telegram_chat: str | None = None
    team_feishu_chat: str | None = None  # a Feishu/Lark group chat id (oc_…)
    team_timezone: str = "UTC"
    lang: Lang = "en"
    quiet_start: time = time(20, 0)
    quiet_end: time = time(8, 0)
    daily_budget: int = Field(default=5, ge=0)
    escalate_after_hours: float = Field(default=24, gt=0)
    digest_at: time = time(9, 0)
    weekly_day: int = Field(default=0, ge=0, le=6)  # Monday = 0, as date.weekday()
    # The platforms messages can be delivered on. Not a setting of this file: csbot fills it in from the bot tokens
    # (`bot.push.routing.with_platforms`). None = not known, every platform is taken to be configured.
    platforms: tuple[str, ...] | None = Field(default=None, exclude=True)

    @field_validator("platforms", mode="before")
    @classmethod
    def _not_from_the_file(cls, value: object) -> object:
        if value is not None:
            raise ValueError("is not set here: csbot delivers on every platform whose bot token is set "
                             f"({', '.join(PLATFORM_TOKENS.values())})")
        return value

    @field_validator("team_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class RenewalPromptConfig(_Strict):
    """Renewal prompts (`[renewal_prompts]`): days before `renewal_date` at which the owner is prompted, once each."""

    enabled: bool = True
    windows: tuple[int, ...] = Field(default=(120, 90, 60, 30), min_length=1)
    severity: Severity = "info"
    next_steps: str = Field(
        default="Book the renewal call: recap what was achieved, agree the goals for the next term and "
        "settle every open risk first.",
        min_length=1,
    )
    next_steps_zh: str = Field(
        default="预约续约沟通：回顾已取得的成果，商定下一期目标，并先解决所有未决风险。", min_length=1
    )

    @field_validator("windows")
    @classmethod
    def _valid_windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(w <= 0 for w in value):
            raise ValueError("windows must be positive numbers of days")
        if len(set(value)) != len(value):
            raise ValueError("windows must not repeat")
        return tuple(sorted(value, reverse=True))


class AlertConfig(_Strict):
    """A validated alert-rules file."""

    rules: Rules
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    renewal_prompts: RenewalPromptConfig = Field(default_factory=RenewalPromptConfig)

    def rule(self, name: str) -> RuleConfig:
        config: RuleConfig = getattr(self.rules, name)
        return config

    def enabled_rules(self) -> list[str]:
        return [name for name in (*RULE_NAMES, *OPTIONAL_RULE_NAMES) if self.rule(name).enabled]


def parse_alert_config(raw: Mapping[str, Any], source: str = "alert rules") -> AlertConfig:
    """Validate an already-parsed alert configuration; errors raise `ConfigError` naming `source` and the key."""
    return validate_config(AlertConfig, raw, source)


def load_alert_config(path: Path | None = None) -> AlertConfig:
    """Read and validate an alert-rules TOML file (the bundled one by default)."""
    path = Path(path) if path is not None else DEFAULT_ALERTS_FILE
    raw = read_toml(path, "alert rules")
    return parse_alert_config(raw, str(path))


@lru_cache(maxsize=1)
def default_alert_config() -> AlertConfig:
    return load_alert_config()


# --------------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Check:
    """A rule's outcome over the portfolio: who fires, what was measured, against which threshold."""

    mask: np.ndarray
    value: np.ndarray
    threshold: np.ndarray


class _Inputs:
    """Column access for the rules: missing columns read as "no data", dates as whole days relative to as_of."""

    def __init__(self, frame: pd.DataFrame, previous: pd.DataFrame, as_of: date) -> None:
        self.frame = frame
        self.previous = previous
        self.as_of = pd.Timestamp(as_of)
        self.n = len(frame)

    def _series(self, name: str) -> pd.Series | None:
        if name in self.frame.columns:
            return self.frame[name]
        if name in self.previous.columns:
            return self.previous[name]
        return None

    def num(self, name: str) -> np.ndarray:
        series = self._series(name)
        if series is None:
            return np.full(self.n, np.nan)
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return np.round(values, _DECIMALS)

    def text(self, name: str) -> np.ndarray:
        series = self._series(name)
        if series is None:
            return np.full(self.n, None, dtype=object)
        return series.astype(object).where(series.notna(), None).to_numpy(dtype=object)

    def days_since(self, name: str) -> np.ndarray:
        """Whole calendar days from the column's date to as_of (negative for a future date; NaN if unknown)."""
        series = self._series(name)
        if series is None:
            return np.full(self.n, np.nan)
        days = pd.to_datetime(series, errors="coerce")
        if isinstance(days.dtype, pd.DatetimeTZDtype):
            days = days.dt.tz_convert("UTC").dt.tz_localize(None)
        delta = (self.as_of - days.dt.normalize()) / pd.Timedelta(days=1)
        return pd.to_numeric(delta, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _full(n: int, value: float) -> np.ndarray:
    return np.full(n, float(value))


def _isin(values: np.ndarray, allowed: Sequence[str]) -> np.ndarray:
    # pandas rather than np.isin: object arrays holding None next to strings cannot be sorted.
    return pd.Series(values, dtype=object).isin(list(allowed)).to_numpy(dtype=bool)


def _health_drop(x: _Inputs, rule: HealthDropRule) -> _Check:
    drop = np.round(x.num("score_7") - x.num("health_score"), _DECIMALS)
    return _Check(np.nan_to_num(drop, nan=-np.inf) >= rule.points, drop, _full(x.n, rule.points))


def _grade_red(x: _Inputs, rule: GradeRedRule) -> _Check:
    grade, previous = x.text("health_grade"), x.text("prev_grade")
    mask = (grade == "red") & (previous != "red")
    return _Check(mask, x.num("health_score"), _full(x.n, np.nan))


def _usage_drop(x: _Inputs, rule: UsageDropRule) -> _Check:
    recent, prior = x.num("events_30"), x.num("events_prior_30")
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(prior > 0, np.round((prior - recent) / prior * 100.0, _DECIMALS), np.nan)
    return _Check(np.nan_to_num(drop, nan=-np.inf) >= rule.percent, drop, _full(x.n, rule.percent))


def _low_utilisation(x: _Inputs, rule: LowUtilisationRule) -> _Check:
    percent = np.round(x.num("utilisation") * 100.0, _DECIMALS)
    in_scope = ~_isin(x.text("stage"), rule.skip_stages)
    mask = (np.nan_to_num(percent, nan=np.inf) < rule.below_percent) & in_scope
    return _Check(mask, percent, _full(x.n, rule.below_percent))


def _urgent_tickets(x: _Inputs, rule: UrgentTicketsRule) -> _Check:
    urgent = np.nan_to_num(x.num("urgent_open_tickets"))
    recent, prior = np.nan_to_num(x.num("tickets_30")), np.nan_to_num(x.num("tickets_prior_30"))
    urgent_open = urgent >= rule.min_urgent_open
    spike_at = np.maximum(float(rule.spike_min_tickets), np.round(rule.spike_ratio * prior, _DECIMALS))
    spike = recent >= spike_at
    # An urgent ticket is the stronger signal, so it is what the alert reports when both hold.
    value = np.where(urgent_open, urgent, recent)
    threshold = np.where(urgent_open, float(rule.min_urgent_open), spike_at)
    return _Check(urgent_open | spike, value, threshold)


def _nps_detractor(x: _Inputs, rule: NpsDetractorRule) -> _Check:
    score, age = x.num("nps_last_score"), x.days_since("nps_last_at")
    recent = (np.nan_to_num(age, nan=np.inf) >= 0) & (np.nan_to_num(age, nan=np.inf) < rule.within_days)
    return _Check((np.nan_to_num(score, nan=np.inf) <= rule.max_score) & recent, score, _full(x.n, rule.max_score))


def _no_touchpoint(x: _Inputs, rule: NoTouchpointRule) -> _Check:
    # Never noted: count from the contract start, so a new account is not flagged on its first day.
    days = x.days_since("last_note_at")
    days = np.where(np.isnan(days), x.days_since("contract_start"), days)
    arr = np.nan_to_num(x.num("arr"))
    mask = (np.nan_to_num(days, nan=-np.inf) >= rule.days) & (arr >= rule.min_arr)
    return _Check(mask, days, _full(x.n, rule.days))


def _stale_data(x: _Inputs, rule: StaleDataRule) -> _Check:
    days = x.days_since("last_usage_date")
    days = np.where(np.isnan(days), x.days_since("contract_start"), days)
    return _Check(np.nan_to_num(days, nan=-np.inf) >= rule.days, days, _full(x.n, rule.days))


def _with_churn_probability(session: Session, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each account's stored churn probability (NaN without a model), for the churn_risk rule."""
    rows = session.execute(select(col(Account.id), col(Account.churn_probability))).all()
    stored = pd.Series({int(a): (np.nan if p is None else float(p)) for a, p in rows}, dtype=float)
    ids = frame["account_id"] if "account_id" in frame.columns else frame.index.to_series()
    return frame.assign(churn_probability=stored.reindex(ids.astype("int64").to_numpy()).to_numpy())


def _churn_risk(x: _Inputs, rule: ChurnRiskRule) -> _Check:
    # Until the churn model fills `churn_probability`, the column is absent and the rule stays quiet.
    probability = x.num("churn_probability")
    return _Check(np.nan_to_num(probability, nan=-np.inf) >= rule.probability, probability,
                  _full(x.n, rule.probability))


def _renewal_risk(x: _Inputs, rule: RenewalRiskRule) -> _Check:
    days = -x.days_since("renewal_date")
    known = ~np.isnan(days)
    inside = known & (np.nan_to_num(days) >= 0) & (np.nan_to_num(days) <= rule.within_days)
    return _Check(inside & _isin(x.text("health_grade"), rule.grades), days, _full(x.n, rule.within_days))


def _at_risk(x: _Inputs, rule: AtRiskRule) -> _Check:
    # `evaluate` adds `risk_count` (how many reasons the account has) before the rules run.
    count = np.nan_to_num(x.num("risk_count"))
    return _Check(count > 0, x.num("health_score"), _full(x.n, np.nan))


def _stuck_in_stage(x: _Inputs, rule: StuckInStageRule) -> _Check:
    # Quiet until the frame carries the stage statistics (run_alert_rules adds them when the rule is on).
    days, p90 = x.num("days_in_stage"), x.num("stage_p90_days")
    threshold = np.maximum(p90, rule.min_days)
    mask = (np.nan_to_num(days, nan=-np.inf) > np.nan_to_num(threshold, nan=np.inf)) & ~_isin(
        x.text("stage"), rule.skip_stages)
    return _Check(mask, days, threshold)


_CHECKS: dict[str, Callable[[_Inputs, Any], _Check]] = {
    "health_drop": _health_drop, "grade_red": _grade_red, "usage_drop": _usage_drop,
    "low_utilisation": _low_utilisation, "urgent_tickets": _urgent_tickets, "nps_detractor": _nps_detractor,
    "no_touchpoint": _no_touchpoint, "stale_data": _stale_data, "churn_risk": _churn_risk,
    "renewal_risk": _renewal_risk, "at_risk": _at_risk, "stuck_in_stage": _stuck_in_stage,
}


def _format(value: Any, spec: str, unknown: str) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return unknown
    if isinstance(value, pd.Timestamp | datetime):
        stamp = pd.Timestamp(value)
        if not spec:
            return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat(sep=" ")
    if isinstance(value, float | np.floating) and not spec and float(value).is_integer():
        return str(int(value))
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _render(template: str, context: pd.DataFrame, lang: Lang) -> np.ndarray:
    """The template filled in for every row of `context`, one placeholder (column) at a time."""
    unknown = "未知" if lang == "zh" else "unknown"
    out = pd.Series("", index=context.index, dtype=object)
    for literal, name, spec, _conversion in string.Formatter().parse(template):
        out = out + literal
        if name is None:
            continue
        if lang == "zh" and f"{name}_zh" in context.columns:
            values = context[f"{name}_zh"].astype(object)
        elif name in context.columns:
            values = context[name].astype(object)
            if lang == "zh" and name in _GRADE_COLUMNS:
                values = values.map(lambda v: _GRADE_ZH.get(v, v) if isinstance(v, str) else v)
        else:
            values = pd.Series([None] * len(context), index=context.index, dtype=object)
        out = out + values.map(lambda v, s=spec or "": _format(v, s, unknown))
    return out.to_numpy(dtype=object)


def _indexed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.set_index("account_id") if "account_id" in frame.columns else frame.copy(deep=False)
    frame.index = frame.index.astype("int64")
    return frame


def _with_risk(frame: pd.DataFrame, previous: pd.DataFrame, scorecard: Scorecard) -> pd.DataFrame:
    """The frame with the at-risk reasons of every active account: `risk_count`, and `risk_reasons` /
    `risk_reasons_zh` in words (lifecycle/scoring/risk.py, as the `at-risk` list words them)."""
    score = pd.to_numeric(frame["health_score"], errors="coerce") if "health_score" in frame.columns else np.nan
    inputs = pd.DataFrame({
        "health_grade": frame["health_grade"] if "health_grade" in frame.columns else None,
        "delta_7": score - previous["score_7"],
        "delta_30": score - previous["score_30"],
        "churn_probability": frame["churn_probability"] if "churn_probability" in frame.columns else np.nan,
        "critical": critical_frame(frame, scorecard),
    }, index=frame.index)
    active = (frame["status"] == "active").to_numpy() if "status" in frame.columns else np.ones(len(frame), bool)
    found = risk.reasons(inputs, scorecard.at_risk).where(active, pd.Series([[]] * len(frame), index=frame.index))
    return frame.assign(
        risk_count=found.map(len).astype(float),
        risk_reasons=found.map(lambda r: risk.reasons_text(r, "en", scorecard)),
        risk_reasons_zh=found.map(lambda r: risk.reasons_text(r, "zh", scorecard)),
    )


def evaluate(
    frame: pd.DataFrame, previous: pd.DataFrame, config: AlertConfig, as_of: date, scorecard: Scorecard | None = None
) -> pd.DataFrame:
    """Every enabled rule over every active account of `frame`: one row per account × rule that fires.

    `frame` is the signals frame with `health_score`/`health_grade` filled in (index or column `account_id`),
    optionally with `churn_probability`; `previous` holds per account `score_7` and `score_30` (health on or
    before 7 and 30 days ago) and `prev_grade` (grade on the previous snapshot), as `previous_health` returns.
    `scorecard` (default: the bundled one) gives the at_risk rule its critical signals and thresholds. Columns of
    the result: account_id, rule, severity, title, title_zh, value (what the rule measured), threshold (NaN for
    grade_red and at_risk).
    """
    frame = _indexed(frame)
    previous = _indexed(previous) if len(previous.columns) else previous
    previous = previous.reindex(columns=PREVIOUS_COLUMNS).reindex(frame.index)
    if config.rules.at_risk.enabled:
        frame = _with_risk(frame, previous, scorecard or default_scorecard())
    inputs = _Inputs(frame, previous, as_of)
    active = inputs.text("status") == "active"
    parts: list[pd.DataFrame] = []
    for name in config.enabled_rules():
        rule = config.rule(name)
        check = _CHECKS[name](inputs, rule)
        rows = np.flatnonzero(check.mask & active)
        if not len(rows):
            continue
        context = frame.iloc[rows].join(previous.iloc[rows].drop(columns=frame.columns, errors="ignore"))
        context = context.assign(value=check.value[rows], threshold=check.threshold[rows])
        parts.append(pd.DataFrame({
            "account_id": frame.index.to_numpy()[rows],
            "rule": name,
            "severity": rule.severity,
            "title": _render(rule.title, context, "en"),
            "title_zh": _render(rule.title_zh, context, "zh"),
            "value": check.value[rows],
            "threshold": check.threshold[rows],
        }))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("value", "threshold") else "object")
                             for c in FIRED_COLUMNS}).astype({"account_id": "int64"})
    order = {name: i for i, name in enumerate((*RULE_NAMES, *OPTIONAL_RULE_NAMES))}
    fired = pd.concat(parts, ignore_index=True)
    fired["account_id"] = fired["account_id"].astype("int64")
    fired["value"] = fired["value"].astype(float)
    fired["threshold"] = fired["threshold"].astype(float)
    fired = fired.sort_values(["account_id", "rule"], key=lambda s: s.map(order) if s.name == "rule" else s)
    return fired.reset_index(drop=True)[FIRED_COLUMNS]


_PREVIOUS_SQL = text(
    """
    SELECT a.id AS account_id,
      (SELECT h.score FROM health_snapshot h WHERE h.account_id = a.id AND h.day <= :d7
        ORDER BY h.day DESC LIMIT 1) AS score_7,
      (SELECT h.score FROM health_snapshot h WHERE h.account_id = a.id AND h.day <= :d30
        ORDER BY h.day DESC LIMIT 1) AS score_30,
      (SELECT h.grade FROM health_snapshot h WHERE h.account_id = a.id AND h.day < :d0
        ORDER BY h.day DESC LIMIT 1) AS prev_grade
    FROM account a WHERE a.status = 'active'
    """
).bindparams(bindparam("d7", type_=Date()), bindparam("d30", type_=Date()), bindparam("d0", type_=Date()))


def previous_health(session: Session, as_of: date) -> pd.DataFrame:
    """Per active account: `score_7` and `score_30` (latest snapshot on or before as_of − 7 / − 30 days, the same
    references as the health trend) and `prev_grade` (latest snapshot before as_of). One SQL query; NaN/None when
    there is none."""
    result = session.execute(
        _PREVIOUS_SQL, {"d7": as_of - timedelta(days=7), "d30": as_of - timedelta(days=30), "d0": as_of}
    )
    frame = pd.DataFrame.from_records(result.all(), columns=["account_id", *PREVIOUS_COLUMNS])
    frame = frame.set_index("account_id")
    frame.index = frame.index.astype("int64")
    for column in ("score_7", "score_30"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    grades = frame["prev_grade"].astype(object)
    frame["prev_grade"] = grades.where(grades.notna(), None)
    return frame.sort_index()


# ------------------------------------------------------------------------------------------------------ raising


@dataclass
class RaiseResult:
    """What a run changed: alerts raised, snoozed alerts that came back, and how many were resolved."""

    new: list[Alert]
    resolved: int
    reopened: list[Alert] = field(default_factory=list)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _rounded(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else round(number, 4)


def top_drivers(
    measures: Mapping[str, Any] | None, scorecard: Scorecard | None = None, limit: int = TOP_DRIVERS
) -> list[dict[str, Any]]:
    """The measures that cost a snapshot the most points against a perfect score (weight × (100 − points)),
    largest first, each with its label and its value in words (as the health explanation words them)."""
    card = scorecard or default_scorecard()
    entries, _freshness = split_measures(measures or {})
    names = [m for m in card.measures if m in entries] + [m for m in entries if m not in card.measures]
    costs: list[tuple[float, str]] = []
    for name in names:
        entry = entries[name]
        if not isinstance(entry, Mapping):
            continue
        value, weight, points = (_number(entry.get(k)) for k in ("value", "weight", "points"))
        if value is None or weight is None or points is None:
            continue
        cost = weight * (100.0 - points)
        if cost > 0:
            costs.append((cost, name))
    costs.sort(key=lambda item: -item[0])  # stable: scorecard order breaks ties
    return [
        {
            "measure": name,
            "label": card.label(name, "en"),
            "label_zh": card.label(name, "zh"),
            "cost": round(cost, 1),
            "text": value_text(name, entries[name], "en", card),
            "text_zh": value_text(name, entries[name], "zh", card),
        }
        for cost, name in costs[:limit]
    ]


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _IDS_PER_QUERY):
        yield list(ids[start:start + _IDS_PER_QUERY])


def _account_context(session: Session, account_ids: Sequence[int], as_of: date) -> dict[int, dict[str, Any]]:
    """Owner, ARR, currency, stage and the latest snapshot's measures (on or before as_of) of each account."""
    snap = aliased(HealthSnapshot)
    inner = aliased(HealthSnapshot)
    latest_day = (
        select(func.max(col(inner.day)))
        .where(col(inner.account_id) == col(Account.id), col(inner.day) <= as_of)
        .scalar_subquery()
    )
    out: dict[int, dict[str, Any]] = {}
    for ids in _chunks(sorted(set(account_ids))):
        stmt = (
            select(col(Account.id), col(Account.owner_id), col(Account.arr), col(Account.currency),
                   col(Account.stage), col(snap.measures), col(snap.score), col(snap.grade),
                   col(Account.churn_probability), col(Account.churn_reasons))
            .outerjoin(snap, and_(col(snap.account_id) == col(Account.id), col(snap.day) == latest_day))
            .where(col(Account.id).in_(ids))
        )
        for account_id, owner_id, arr, currency, stage, measures, score, grade, p_churn, reasons in session.execute(
            stmt
        ).all():
            out[int(account_id)] = {
                "owner_id": owner_id, "arr": float(arr or 0.0), "currency": currency, "stage": stage,
                "measures": measures, "score": score, "grade": grade, "churn_probability": p_churn,
                "churn_reasons": reasons,
            }
    return out


def _details(
    row: Any, context: Mapping[str, Any], config: AlertConfig, scorecard: Scorecard | None
) -> dict[str, Any]:
    rule = config.rule(row.rule)
    stage = context.get("stage")
    churn: dict[str, Any] = {}
    if row.rule == "churn_risk":
        # The model's own reasons travel with the alert, so the card shows why whenever it is delivered.
        churn = {"churn_probability": _rounded(context.get("churn_probability")),
                 "churn_reasons": list(context.get("churn_reasons") or [])}
    return {
        **churn,
        "title": row.title,
        "title_zh": row.title_zh,
        "value": _rounded(row.value),
        "threshold": _rounded(row.threshold),
        "drivers": top_drivers(context.get("measures"), scorecard),
        "health_score": _number(context.get("score")),
        "health_grade": context.get("grade"),
        "arr": context.get("arr", 0.0),
        "currency": context.get("currency"),
        "stage": stage,
        "next_steps": rule.next_steps(stage, "en"),
        "next_steps_zh": rule.next_steps(stage, "zh"),
    }


def _live_alerts(session: Session, rules: Sequence[str]) -> pd.DataFrame:
    stmt = select(
        col(Alert.id), col(Alert.account_id), col(Alert.rule), col(Alert.status), col(Alert.snoozed_until)
    ).where(col(Alert.status).in_(LIVE_STATUSES), col(Alert.rule).in_(list(rules)))
    rows = session.execute(stmt).all()
    live = pd.DataFrame.from_records(rows, columns=["id", "account_id", "rule", "status", "snoozed_until"])
    live["snoozed_until"] = pd.to_datetime(live["snoozed_until"])
    return live


def _holding_pairs(fired: pd.DataFrame, frame: pd.DataFrame, config: AlertConfig) -> set[tuple[int, str]]:
    """(account, rule) pairs whose condition still holds: those firing, plus grade_red while the grade is red."""
    pairs = {(int(a), str(r)) for a, r in zip(fired["account_id"], fired["rule"], strict=True)}
    if config.rules.grade_red.enabled and {"health_grade", "status"} <= set(frame.columns):
        red = frame.index[(frame["health_grade"] == "red") & (frame["status"] == "active")]
        pairs |= {(int(a), "grade_red") for a in red}
    return pairs


def _expire(session: Session, ids: set[int]) -> None:
    # Bulk UPDATEs bypass the identity map; alerts already loaded would otherwise show their old status.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Alert) and obj.id in ids:
            session.expire(obj)


def _load(session: Session, *, ids: Sequence[int] = (), keys: Sequence[str] = ()) -> list[Alert]:
    found: list[Alert] = []
    for chunk in _chunks(list(ids)):
        found += session.execute(
            select(Alert).where(col(Alert.id).in_(chunk)).execution_options(populate_existing=True)
        ).scalars().all()
    for start in range(0, len(keys), _IDS_PER_QUERY):
        found += session.execute(
            select(Alert).where(col(Alert.dedupe_key).in_(list(keys[start:start + _IDS_PER_QUERY])))
            .execution_options(populate_existing=True)
        ).scalars().all()
    return sorted(found, key=lambda a: (a.account_id, RULE_NAMES.index(a.rule) if a.rule in RULE_NAMES else 99))


def raise_alerts(
    session: Session,
    fired: pd.DataFrame,
    as_of: date,
    config: AlertConfig,
    frame: pd.DataFrame,
    *,
    now: datetime | None = None,
    scorecard: Scorecard | None = None,
) -> RaiseResult:
    """Turn the rows of `evaluate` into alerts, deduplicated against the live ones; resolve what cleared.

    Only accounts in `frame` and enabled rules are resolved, so a partial frame leaves other accounts' alerts
    alone. `now` (default: midnight of a past `as_of`, else the current time, as for stage moves) stamps new
    alerts and decides whether a snooze has ended. Bulk statements only; the caller commits.
    """
    now = now or transition_time(as_of)
    frame = _indexed(frame)
    rules = config.enabled_rules()
    fired = fired[fired["rule"].isin(rules)].drop_duplicates(["account_id", "rule"])
    holding = _holding_pairs(fired, frame, config)

    live = _live_alerts(session, rules)
    pair = list(zip(live["account_id"].astype(int), live["rule"].astype(str), strict=True))
    holds = np.array([p in holding for p in pair], dtype=bool)
    in_scope = live["account_id"].isin(frame.index).to_numpy(dtype=bool)
    snoozed = (live["status"] == "snoozed").to_numpy(dtype=bool)
    # A snoozed alert without an end date is treated as ended: it must not hide its condition forever.
    snooze_over = snoozed & ~(live["snoozed_until"] > pd.Timestamp(now)).to_numpy(dtype=bool)
    standing = ~snooze_over  # open, acknowledged, or snoozed and still quiet
    resolve = in_scope & ~holds & (~snoozed | snooze_over)
    blocked = {p for p, s in zip(pair, standing, strict=True) if s}
    # One snoozed alert per pair comes back (the newest), unless another alert already stands for the pair.
    reopen: dict[tuple[int, str], int] = {}
    for alert_id, p, comes_back in zip(live["id"].astype(int), pair, holds & snooze_over, strict=True):
        if comes_back and p not in blocked:
            reopen[p] = max(reopen.get(p, 0), int(alert_id))
    blocked |= set(reopen)

    fired_pairs = list(zip(fired["account_id"].astype(int), fired["rule"].astype(str), strict=True))
    # A subsumed rule waits while one of the rules that say it already stands (or is raised now) for the account.
    speaking = blocked | set(fired_pairs)
    blocked |= {(a, rule) for rule, by in SUBSUMED_BY.items() for a, other in speaking if other in by}
    fresh = fired.loc[np.array([p not in blocked for p in fired_pairs], dtype=bool)]
    fired_by_pair = {p: row for p, row in zip(fired_pairs, fired.itertuples(index=False), strict=True)}

    context = _account_context(session, [*fresh["account_id"].astype(int).tolist(), *(a for a, _ in reopen)], as_of)
    new_rows: list[dict[str, Any]] = []
    fresh_rows: list[Any] = list(fresh.itertuples(index=False))
    for row in fresh_rows:
        account_id = int(row.account_id)
        ctx = context.get(account_id, {})
        new_rows.append({
            "account_id": account_id, "owner_id": ctx.get("owner_id"), "rule": row.rule, "severity": row.severity,
            "dedupe_key": f"{account_id}:{row.rule}:{as_of.isoformat()}", "status": "open", "feedback": None,
            "title": row.title, "details": _details(row, ctx, config, scorecard), "created_at": now,
            "acknowledged_at": None, "snoozed_until": None, "resolved_at": None,
        })
    # The key names the episode's first day: a condition that clears and returns on the same day reuses it.
    upsert(session, Alert, new_rows, conflict=["dedupe_key"],
           update=["status", "severity", "title", "details", "acknowledged_at", "snoozed_until", "resolved_at"])

    table = Alert.__table__  # type: ignore[attr-defined]
    resolve_ids: list[int] = live.loc[resolve, "id"].astype(int).tolist()
    if resolve_ids:
        session.execute(
            update(table).where(table.c.id == bindparam("b_id")).values(status="resolved", resolved_at=now),
            [{"b_id": i} for i in resolve_ids],
        )
    reopen_ids = list(reopen.values())
    refreshed = [
        {"b_id": i, "b_title": fired_by_pair[p].title,
         "b_details": _details(fired_by_pair[p], context.get(p[0], {}), config, scorecard)}
        for p, i in reopen.items() if p in fired_by_pair
    ]
    kept = [{"b_id": i} for p, i in reopen.items() if p not in fired_by_pair]
    reopened = update(table).where(table.c.id == bindparam("b_id"))
    if refreshed:
        session.execute(reopened.values(status="open", snoozed_until=None, resolved_at=None,
                                        title=bindparam("b_title"), details=bindparam("b_details")), refreshed)
    if kept:
        session.execute(reopened.values(status="open", snoozed_until=None, resolved_at=None), kept)
    _expire(session, set(resolve_ids) | set(reopen_ids))

    return RaiseResult(
        new=_load(session, keys=[r["dedupe_key"] for r in new_rows]),
        resolved=len(resolve_ids),
        reopened=_load(session, ids=reopen_ids),
    )


def run_alert_rules(
    session: Session,
    as_of: date,
    *,
    config: AlertConfig | None = None,
    frame: pd.DataFrame | None = None,
    now: datetime | None = None,
    scorecard: Scorecard | None = None,
) -> RaiseResult:
    """Evaluate every rule for the whole portfolio on `as_of` and raise/resolve alerts (the caller commits).

    `frame` is the signals frame with health filled in (recompute's); without it the frame is built here and
    health comes from the accounts' latest scores.
    """
    config = config or default_alert_config()
    if frame is None:
        frame = build_signals(session, as_of)
    if "churn_probability" not in frame.columns:
        frame = _with_churn_probability(session, frame)
    stuck = config.rules.stuck_in_stage
    if stuck.enabled:
        stats = stage_p90_days(session, load_stage_machine(), today=as_of, lookback_days=stuck.lookback_days)
        frame = _indexed(frame).drop(columns=list(stats.columns), errors="ignore").join(stats)
    fired = evaluate(frame, previous_health(session, as_of), config, as_of, scorecard)
    return raise_alerts(session, fired, as_of, config, frame, now=now, scorecard=scorecard)


# Alert rows that are prompts rather than rule findings; they stay out of the rule statistics.
NON_RULE_KINDS = ("renewal_prompt",)


@dataclass(frozen=True)
class RuleStats:
    """How one rule did over a period: how often it fired and how its alerts were rated."""

    rule: str
    raised: int
    acknowledged: int
    useful: int
    not_useful: int

    @property
    def rated(self) -> int:
        return self.useful + self.not_useful

    @property
    def precision(self) -> float | None:
        """Useful ÷ rated; None while nobody has rated an alert of this rule."""
        return self.useful / self.rated if self.rated else None


def alert_stats(session: Session, *, since: datetime, owner_id: int | None = None) -> list[RuleStats]:
    """Per-rule counts and precision for alerts raised since `since` (one GROUP BY), most raised first."""
    table = Alert.__table__  # type: ignore[attr-defined]
    c = table.c
    stmt = (
        select(
            c.rule,
            func.count(),
            func.sum(case((c.acknowledged_at.is_not(None), 1), else_=0)),
            func.sum(case((c.feedback == "useful", 1), else_=0)),
            func.sum(case((c.feedback == "not_useful", 1), else_=0)),
        )
        .where(c.created_at >= since, c.rule.not_in(NON_RULE_KINDS))
        .group_by(c.rule)
    )
    if owner_id is not None:
        stmt = stmt.where(c.owner_id == owner_id)
    rows = [RuleStats(r, int(n), int(a or 0), int(u or 0), int(nu or 0)) for r, n, a, u, nu in session.execute(stmt)]
    return sorted(rows, key=lambda s: (-s.raised, s.rule))


@dataclass(frozen=True)
class _EventRow:
    """What `_details` reads from an evaluated row, for an alert raised by an event rather than the nightly run."""

    rule: str
    title: str
    title_zh: str
    value: float | None
    threshold: float | None


def raise_event_alert(
    session: Session,
    *,
    account_id: int,
    rule: str,
    value: float | None,
    threshold: float | None,
    dedupe_key: str,
    now: datetime,
    config: AlertConfig | None = None,
    scorecard: Scorecard | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Alert, bool]:
    """Raise one alert for something that just happened (e.g. a detractor's NPS answer) with the rule's severity,
    headline and playbook and the account's context, as the nightly run would word it; `extra` joins the details.

    The insert is ON CONFLICT DO NOTHING on `dedupe_key`, so the same event raises one alert however often it is
    reported. Returns the alert and whether this call created it. Flushes, does not commit.
    """
    config = config or default_alert_config()
    rule_config = config.rule(rule)
    values = pd.DataFrame({"value": [value], "threshold": [threshold]})
    row = _EventRow(rule, str(_render(rule_config.title, values, "en")[0]),
                    str(_render(rule_config.title_zh, values, "zh")[0]), value, threshold)
    context = _account_context(session, [account_id], now.date()).get(account_id, {})
    record = {
        "account_id": account_id, "owner_id": context.get("owner_id"), "rule": rule,
        "severity": rule_config.severity, "dedupe_key": dedupe_key, "status": "open", "feedback": None,
        "title": row.title, "details": {**_details(row, context, config, scorecard), **(extra or {})},
        "created_at": now, "acknowledged_at": None, "snoozed_until": None, "resolved_at": None,
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = Alert.__table__  # type: ignore[attr-defined]
    stmt = insert(table).values(**record).on_conflict_do_nothing(index_elements=["dedupe_key"])
    created = bool(getattr(session.connection().execute(stmt), "rowcount", 0))
    found = _load(session, keys=[dedupe_key])
    return found[0], created
