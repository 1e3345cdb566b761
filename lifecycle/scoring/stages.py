"""The lifecycle stage machine: its TOML configuration, automatic rules, manual moves and stage history.

A machine is declared in a TOML file (`config/stages.toml` is the default B2B journey; `CSBOT_STAGES_FILE`
overrides it): the stages, the allowed moves between them, and ordered rules whose conditions are written over
the columns of the signals frame (`lifecycle.scoring.signals`). The condition vocabulary is documented at the top of
`config/stages.toml`; conditions are evaluated as pandas boolean masks over the whole portfolio at once.

Automatic moves never undo a manual one: a manual move pins the account, and only rules flagged
`overrides_pin` (such as `churned`) move a pinned account — the transition's reason then says so, and the pin
is cleared.
"""

from __future__ import annotations

import logging
import math
import operator
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from rapidfuzz import fuzz, process
from sqlalchemy import select
from sqlmodel import Session

from lifecycle.store.bulkwrite import insert_rows, update_rows
from lifecycle.store.errors import ConfigError, InvalidTransition, NotFoundError
from lifecycle.store.models import Account, AuditLog, StageTransition, utcnow
from lifecycle.store.settings import CONFIG_DIR, get_settings, read_toml

log = logging.getLogger(__name__)

DEFAULT_STAGES_FILE = CONFIG_DIR / "stages.toml"
B2C_STAGES_FILE = CONFIG_DIR / "stages_b2c.toml"

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
# Longest first, so that `_lte` is not read as `_lt` + "e" and `_not_in` not as `_in`.
_SUFFIXES = ("not_in", "isnull", "lte", "gte", "lt", "gt", "eq", "ne", "in")
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
    "eq": operator.eq, "ne": operator.ne,
}
# Fields a reason template may use besides the frame's columns.
_TEMPLATE_EXTRAS = ("from_stage", "to_stage")
MOVE_COLUMNS = ["account_id", "from_stage", "to_stage", "rule", "reason", "step", "overrode_pin"]

ValueKind = Literal["number", "date", "text", "bool"]


@dataclass(frozen=True)
class Condition:
    """One parsed condition: `column <op> value`, where `kind` decides how the column is read."""

    key: str
    column: str
    op: str
    value: Any
    kind: ValueKind


def _kind_of(value: Any) -> ValueKind | None:
    if isinstance(value, bool):  # before int: bool is an int
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, date):  # datetime is a date too
        return "date"
    if isinstance(value, str):
        return "text"
    return None


def parse_condition(key: str, value: Any) -> Condition:
    """Parse `column[_suffix] = value`; raises ValueError with a message naming the key."""
    column, op = key, "eq"
    for suffix in _SUFFIXES:
        if key.endswith("_" + suffix) and len(key) > len(suffix) + 1:
            column, op = key[: -len(suffix) - 1], suffix
            break
    if op == "isnull":
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false")
        return Condition(key, column, op, value, "bool")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"{key}: expected a non-empty list")
        kinds = {_kind_of(v) for v in value}
        if len(kinds) != 1 or None in kinds:
            raise ValueError(f"{key}: list values must all be numbers, all text, all dates or all booleans")
        return Condition(key, column, op, list(value), kinds.pop())  # type: ignore[arg-type]
    kind = _kind_of(value)
    if kind is None:
        raise ValueError(f"{key}: expected a number, text, date or boolean, got {type(value).__name__}")
    if op in ("lt", "lte", "gt", "gte") and kind not in ("number", "date"):
        raise ValueError(f"{key}: _{op} needs a number or a date")
    if kind == "number" and isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{key}: nan is not a usable value (use {column}_isnull)")
    return Condition(key, column, op, value, kind)


def _template_fields(template: str) -> list[tuple[str, str]]:
    """The (field, format spec) pairs of a reason template; raises ValueError on a malformed one."""
    fields = []
    for _literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier() or conversion:
            raise ValueError(f"reason: placeholder {{{field}}} must be a plain column name")
        fields.append((field, spec or ""))
    return fields


class StageDef(BaseModel):
    """A declared stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    label: str
    label_zh: str = ""
    description: str = ""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _STAGE_NAME.match(value):
            raise ValueError("names are lower-case letters, digits, '-' and '_', starting with a letter")
        return value


class Activation(BaseModel):
    """When a day counts as activated: at least `ratio` × seats active users, over the last `window_days`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float = Field(default=0.6, gt=0, le=1)
    window_days: int = Field(default=14, ge=1, le=60)


class Rule(BaseModel):
    """An automatic move: accounts in a `from` stage whose signals match the conditions go to `to`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    to: str
    from_: list[str] | Literal["*"] = Field(alias="from")
    when: dict[str, Any] = Field(default_factory=dict)
    when_any: list[dict[str, Any]] = Field(default_factory=list)
    reason: str
    overrides_pin: bool = False

    _all: list[Condition] = PrivateAttr(default_factory=list)
    _any: list[list[Condition]] = PrivateAttr(default_factory=list)
    _fields: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _parse(self) -> Rule:
        if not self.when and not self.when_any:
            raise ValueError("a rule needs `when` or `when_any` (without conditions it would move everyone)")
        if any(not group for group in self.when_any):
            raise ValueError("when_any: every entry needs at least one condition")
        self._all = [parse_condition(k, v) for k, v in self.when.items()]
        self._any = [[parse_condition(k, v) for k, v in group.items()] for group in self.when_any]
        self._fields = _template_fields(self.reason)
        return self

    @property
    def from_stages(self) -> tuple[str, ...] | None:
        """The stages the rule applies to; None means any stage."""
        return None if self.from_ == "*" else tuple(self.from_)

    @property
    def conditions(self) -> list[Condition]:
        return list(self._all)

    @property
    def any_conditions(self) -> list[list[Condition]]:
        return [list(group) for group in self._any]

    @property
    def columns(self) -> set[str]:
        """Every signals column the rule reads (conditions and reason placeholders)."""
        cols = {c.column for c in self._all} | {c.column for g in self._any for c in g}
        return cols | {f for f, _ in self._fields if f not in _TEMPLATE_EXTRAS}


@dataclass(frozen=True)
class KpiMetric:
    """A stage KPI the analytics know how to compute: its unit, which way is better, how accounts aggregate."""

    unit: Literal["days", "percent", "count", "money"]
    better: Literal["higher", "lower"]
    aggregate: Literal["median", "mean"]
    label: str
    label_zh: str
    needs_feature: bool = False


# The catalogue of stage KPIs (see lifecycle/reports/analytics.py for how each is computed).
KPI_METRICS: dict[str, KpiMetric] = {
    "time_to_value": KpiMetric("days", "lower", "median", "Time to value", "价值实现时间"),
    "seat_activation": KpiMetric("percent", "higher", "mean", "Seat activation", "席位激活率"),
    "licence_utilisation": KpiMetric("percent", "higher", "mean", "Licence utilisation", "许可使用率"),
    "feature_breadth": KpiMetric("count", "higher", "mean", "Features in use", "使用的功能数"),
    "feature_days": KpiMetric("days", "higher", "mean", "Days the feature was used", "功能使用天数", True),
    "feature_events": KpiMetric("count", "higher", "mean", "Feature events", "功能事件数", True),
    "active_days": KpiMetric("days", "higher", "mean", "Active days", "活跃天数"),
    "seat_growth": KpiMetric("percent", "higher", "mean", "Seat growth", "席位增长"),
    "upsell_arr": KpiMetric("money", "higher", "mean", "Upsell ARR", "增购 ARR"),
    "renewal_rate": KpiMetric("percent", "higher", "mean", "Renewal rate", "续约率"),
    "renewal_coverage": KpiMetric("percent", "higher", "mean", "Renewals with a recent touchpoint",
                                  "近期有跟进的续约"),
    "promoters": KpiMetric("count", "higher", "mean", "Promoters", "推荐者"),
    "references": KpiMetric("count", "higher", "mean", "References given", "提供的推荐"),
}


class KpiDef(BaseModel):
    """A KPI of one stage with its goal; `days` is the look-back window (the look-ahead for renewal coverage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    metric: str
    goal: float
    label: str = ""
    label_zh: str = ""
    feature: str | None = None
    days: int = Field(default=30, ge=1, le=3660)
    touch_days: int = Field(default=30, ge=1, le=3660)
    note_kinds: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_metric(self) -> KpiDef:
        if self.metric not in KPI_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known metrics are {', '.join(KPI_METRICS)}")
        if KPI_METRICS[self.metric].needs_feature and not (self.feature or "").strip():
            raise ValueError(f"metric {self.metric!r} needs `feature` (the per-feature usage name, e.g. \"reports\")")
        return self

    @property
    def key(self) -> str:
        """A name unique within the stage: the metric, with the feature when there is one."""
        return f"{self.metric}:{self.feature}" if self.feature else self.metric

    @property
    def spec(self) -> KpiMetric:
        return KPI_METRICS[self.metric]

    def title(self, lang: str = "en") -> str:
        """The KPI's display label in `lang`."""
        if lang == "zh":
            return self.label_zh or self.label or self.spec.label_zh + (f"（{self.feature}）" if self.feature else "")
        return self.label or self.spec.label + (f" ({self.feature})" if self.feature else "")

    def met(self, value: float) -> bool:
        """Whether `value` reaches the goal (at most the goal for lower-is-better KPIs)."""
        return value <= self.goal if self.spec.better == "lower" else value >= self.goal


class FunnelConfig(BaseModel):
    """The stages of the funnel in order, and per stage the moves that count as moving on (default: later ones)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[str]
    next: dict[str, list[str]] = Field(default_factory=dict)


class StageMachine(BaseModel):
    """A loaded, validated stage machine."""

    model_config = ConfigDict(extra="forbid")

    stages: list[StageDef]
    initial: str
    reachable_from_anywhere: list[str] = Field(default_factory=list)
    transitions: dict[str, list[str]] = Field(default_factory=dict)
    activation: Activation = Field(default_factory=Activation)
    rules: list[Rule] = Field(default_factory=list)
    kpis: list[KpiDef] = Field(default_factory=list)
    funnel: FunnelConfig | None = None
    source: Path | None = None

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> StageDef:
        for s in self.stages:
            if s.name == name:
                return s
        raise NotFoundError("stage", name, self.suggest(name))

    def label(self, name: str, lang: str = "en") -> str:
        """The stage's display label in `lang` ("en" or "zh"); an undeclared stage shows its name."""
        try:
            s = self.stage(name)
        except NotFoundError:
            return name
        return s.label_zh or s.label if lang == "zh" else s.label

    def stage_kpis(self, stage: str) -> list[KpiDef]:
        """The KPIs declared for `stage`, in file order."""
        return [k for k in self.kpis if k.stage == stage]

    def funnel_stages(self) -> list[str]:
        """The funnel's stages in order: as declared, else every stage that is not reachable from anywhere
        (those are exits such as churned) and not reached only from an exit (such as win-back)."""
        if self.funnel is not None:
            return list(self.funnel.stages)
        exits = set(self.reachable_from_anywhere)
        sources: dict[str, set[str]] = {}
        for src, targets in self.transitions.items():
            for target in targets:
                sources.setdefault(target, set()).add(src)
        return [s for s in self.stage_names if s not in exits
                and (s == self.initial or not sources.get(s) or not sources[s] <= exits)]

    def moves_on(self, stage: str) -> list[str]:
        """The stages whose entry from `stage` counts as moving on in the funnel."""
        if self.funnel is not None and stage in self.funnel.next:
            return list(self.funnel.next[stage])
        order = self.funnel_stages()
        return order[order.index(stage) + 1:] if stage in order else []

    def allowed_targets(self, from_stage: str) -> list[str]:
        """Stages a manual move may go to from `from_stage` (any declared stage if it is undeclared)."""
        if from_stage not in self.stage_names:
            return [s for s in self.stage_names if s != from_stage]
        allowed = set(self.transitions.get(from_stage, [])) | set(self.reachable_from_anywhere)
        return [s for s in self.stage_names if s in allowed and s != from_stage]

    def can_move(self, from_stage: str, to_stage: str) -> bool:
        return to_stage in self.allowed_targets(from_stage)

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Declared stage names closest to `name` (matched on names and labels), best first."""
        choices: dict[str, str] = {}
        for s in self.stages:
            for alias in (s.name, s.label, s.label_zh):
                if alias:
                    choices[alias.casefold()] = s.name
        found = process.extract(name.casefold(), list(choices), scorer=fuzz.WRatio, limit=limit * 3,
                                score_cutoff=60)
        out: list[str] = []
        for alias, _score, _idx in found:
            if choices[alias] not in out:
                out.append(choices[alias])
        return out[:limit]

    def resolve(self, name: str) -> str:
        """The stage named or labelled `name` (case-insensitive, '-'/'_'/' ' alike); else NotFoundError."""
        wanted = _fold(name)
        for s in self.stages:
            if wanted in {_fold(s.name), _fold(s.label), _fold(s.label_zh)} - {""}:
                return s.name
        raise NotFoundError("stage", name.strip(), self.suggest(name))


def _fold(text: str) -> str:
    return re.sub(r"[\s_-]+", "-", text.strip().casefold())


# ------------------------------------------------------------------------------------------------------------
# Loading


def _loc(loc: Sequence[int | str], raw: dict[str, Any]) -> str:
    """Render a pydantic error location as a key path, naming the rule or stage an index points to."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            parent = raw.get(str(loc[0])) if i == 1 else None
            if isinstance(parent, list) and part < len(parent) and isinstance(parent[part], dict):
                label = parent[part].get("name")
                if label:
                    out += f" ({label})"
        else:
            out += ("." if out else "") + ("from" if part == "from_" else str(part))
    return out or "(top level)"


def _unknown(path: Path, key: str, name: str, machine: StageMachine) -> ConfigError:
    hint = machine.suggest(name)
    tail = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(
        f"{path}: {key}: unknown stage {name!r}; declared stages are {', '.join(machine.stage_names)}.{tail}"
    )


def _check_references(path: Path, machine: StageMachine) -> None:
    """Every stage named anywhere must be declared, and every rule's move must be an allowed transition."""
    names = machine.stage_names
    seen: set[str] = set()
    for i, s in enumerate(machine.stages):
        if s.name in seen:
            raise ConfigError(f"{path}: stages[{i}].name: stage {s.name!r} is declared twice")
        seen.add(s.name)
    if machine.initial not in names:
        raise _unknown(path, "initial", machine.initial, machine)
    for name in machine.reachable_from_anywhere:
        if name not in names:
            raise _unknown(path, "reachable_from_anywhere", name, machine)
    for source, targets in machine.transitions.items():
        if source not in names:
            raise _unknown(path, f"transitions.{source}", source, machine)
        for target in targets:
            if target not in names:
                raise _unknown(path, f"transitions.{source}", target, machine)
            if target == source:
                raise ConfigError(f"{path}: transitions.{source}: a stage cannot move to itself")
    kpi_keys: set[tuple[str, str]] = set()
    for i, kpi in enumerate(machine.kpis):
        if kpi.stage not in names:
            raise _unknown(path, f"kpis[{i}].stage", kpi.stage, machine)
        if (kpi.stage, kpi.key) in kpi_keys:
            raise ConfigError(f"{path}: kpis[{i}]: {kpi.key!r} is declared twice for stage {kpi.stage!r}")
        kpi_keys.add((kpi.stage, kpi.key))
    if machine.funnel is not None:
        if not machine.funnel.stages:
            raise ConfigError(f"{path}: funnel.stages: list at least one stage")
        for name in machine.funnel.stages:
            if name not in names:
                raise _unknown(path, "funnel.stages", name, machine)
        for source, targets in machine.funnel.next.items():
            if source not in machine.funnel.stages:
                raise ConfigError(f"{path}: funnel.next.{source}: {source!r} is not one of funnel.stages")
            for target in targets:
                if target not in names:
                    raise _unknown(path, f"funnel.next.{source}", target, machine)
    rule_names: set[str] = set()
    for i, rule in enumerate(machine.rules):
        where = f"rules[{i}] ({rule.name})"
        if rule.name in rule_names:
            raise ConfigError(f"{path}: {where}.name: rule {rule.name!r} is declared twice")
        rule_names.add(rule.name)
        if rule.to not in names:
            raise _unknown(path, f"{where}.to", rule.to, machine)
        sources = rule.from_stages
        if sources is None:
            if rule.to not in machine.reachable_from_anywhere and any(
                not machine.can_move(s, rule.to) for s in names if s != rule.to
            ):
                raise ConfigError(
                    f"{path}: {where}.from: '*' needs {rule.to!r} to be reachable from every stage; add it "
                    "to reachable_from_anywhere or list the `from` stages"
                )
            continue
        if not sources:
            raise ConfigError(f"{path}: {where}.from: list at least one stage, or use \"*\"")
        for src in sources:
            if src not in names:
                raise _unknown(path, f"{where}.from", src, machine)
            if src != rule.to and not machine.can_move(src, rule.to):
                raise ConfigError(
                    f"{path}: {where}: moving from {src!r} to {rule.to!r} is not an allowed transition; "
                    f"add it to transitions.{src} or remove {src!r} from `from`"
                )


def load_stage_machine(path: Path | None = None) -> StageMachine:
    """Load and validate a stage machine from `path`, else `CSBOT_STAGES_FILE`, else the shipped default.

    Every problem raises ConfigError naming the file and the key.
    """
    if path is None:
        path = get_settings().stages_file or DEFAULT_STAGES_FILE
    path = Path(path)
    raw = read_toml(path, "stage configuration")
    if "source" in raw:
        raise ConfigError(f"{path}: source: unknown key")
    try:
        machine = StageMachine.model_validate({**raw, "source": path})
    except ValidationError as exc:
        problems = [
            f"{_loc(err['loc'], raw)}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
        ]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    _check_references(path, machine)
    return machine


# ------------------------------------------------------------------------------------------------------------
# Automatic rules


def _condition_mask(frame: pd.DataFrame, cond: Condition) -> np.ndarray:
    col = frame[cond.column]
    if cond.op == "isnull":
        return (col.isna() if cond.value else col.notna()).to_numpy(dtype=bool)
    value: Any = cond.value
    if cond.kind == "number":
        series = pd.to_numeric(col, errors="coerce")
    elif cond.kind == "date":
        series = pd.to_datetime(col, errors="coerce")
        value = [pd.Timestamp(v) for v in value] if isinstance(value, list) else pd.Timestamp(value)
    else:
        series = col.astype(object)
    present = series.notna()
    if cond.op in ("in", "not_in"):
        hit = series.isin(value)
        result = ~hit if cond.op == "not_in" else hit
    else:
        result = _COMPARE[cond.op](series, value)
    # Missing data never satisfies a condition: a rule must not fire on what we do not know.
    return (pd.Series(result, index=frame.index).fillna(False).astype(bool) & present).to_numpy(dtype=bool)


def _rule_mask(frame: pd.DataFrame, rule: Rule) -> np.ndarray:
    mask = np.ones(len(frame), dtype=bool)
    for cond in rule.conditions:
        mask &= _condition_mask(frame, cond)
    if rule.any_conditions:
        any_mask = np.zeros(len(frame), dtype=bool)
        for group in rule.any_conditions:
            group_mask = np.ones(len(frame), dtype=bool)
            for cond in group:
                group_mask &= _condition_mask(frame, cond)
            any_mask |= group_mask
        mask &= any_mask
    return mask


def _format_value(value: Any, spec: str) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "unknown"
    if isinstance(value, pd.Timestamp | datetime) and not spec:
        ts = pd.Timestamp(value)
        return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat(sep=" ", timespec="minutes")
    if isinstance(value, float | np.floating) and not spec and float(value).is_integer():
        return str(int(value))
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _render_reasons(rule: Rule, rows: pd.DataFrame, from_stage: np.ndarray) -> pd.Series:
    """The rule's reason for each row, built column by column rather than row by row."""
    out = pd.Series("", index=rows.index, dtype=object)
    for literal, field, spec, _conv in string.Formatter().parse(rule.reason):
        out = out + literal
        if field is None:
            continue
        if field == "from_stage":
            values = pd.Series(from_stage, index=rows.index, dtype=object)
        elif field == "to_stage":
            values = pd.Series(rule.to, index=rows.index, dtype=object)
        else:
            values = rows[field].astype(object)
        out = out + values.map(lambda v, s=spec or "": _format_value(v, s))
    return out


def _signals_index(frame: pd.DataFrame) -> pd.DataFrame:
    if "account_id" in frame.columns:
        frame = frame.set_index("account_id")
    return frame


def evaluate_rules(frame: pd.DataFrame, machine: StageMachine) -> pd.DataFrame:
    """The stage moves the rules call for, one row per move.

    Columns: account_id, from_stage, to_stage, rule, reason, step, overrode_pin. For each account the first
    rule (in file order) whose `from` list and conditions match decides; a rule whose target is the current
    stage holds the account there. Pinned accounts only see rules with `overrides_pin`. Rules apply again to
    the result (step 2, 3, …) until no account moves, so applying the moves reaches a state the rules leave
    alone; an account never re-enters a stage within one evaluation, which stops rules that would bounce it
    between two stages.
    """
    frame = _signals_index(frame)
    needed = {"stage", "stage_pinned"} | set().union(*(r.columns for r in machine.rules))
    missing = sorted(needed - set(frame.columns))
    if missing:
        users = [r.name for r in machine.rules if r.columns & set(missing)]
        raise ConfigError(
            f"{machine.source or 'stage configuration'}: rules {', '.join(users) or '(all)'} use column(s) "
            f"{', '.join(missing)}, which the signals frame does not have"
        )
    n = len(frame)
    if n == 0 or not machine.rules:
        return pd.DataFrame(columns=MOVE_COLUMNS)
    index = frame.index.to_numpy()
    stage = frame["stage"].astype(object).to_numpy(copy=True)
    pinned = frame["stage_pinned"].astype(object).fillna(False).astype(bool).to_numpy(copy=True)
    # Conditions read only signals, never the stage, so each rule's mask is computed once for all passes.
    matches = {rule.name: _rule_mask(frame, rule) for rule in machine.rules}
    visited = {name: stage == name for name in machine.stage_names}
    parts: list[pd.DataFrame] = []
    for step in range(1, len(machine.stages) + 1):
        decided = np.zeros(n, dtype=bool)
        next_stage, next_pinned = stage.copy(), pinned.copy()
        moved = False
        for rule in machine.rules:
            sources = rule.from_stages
            in_source = np.ones(n, dtype=bool) if sources is None else np.isin(stage, list(sources))
            applies = ~decided & in_source & matches[rule.name] & (~pinned | rule.overrides_pin)
            decided |= applies
            moving = applies & (stage != rule.to) & ~visited[rule.to]
            if not moving.any():
                continue
            sel = np.flatnonzero(moving)
            reasons = _render_reasons(rule, frame.iloc[sel], stage[sel])
            overrode = pinned[sel]
            if overrode.any():
                note = pd.Series(stage[sel], index=reasons.index).map(
                    lambda s: f" (overrides the stage {s!r} set by hand)"
                )
                reasons = reasons.where(~overrode, reasons + note)
            parts.append(pd.DataFrame({
                "account_id": index[sel], "from_stage": stage[sel], "to_stage": rule.to, "rule": rule.name,
                "reason": reasons.to_numpy(dtype=object), "step": step, "overrode_pin": overrode,
            }))
            next_stage[sel] = rule.to
            next_pinned[sel] = False
            visited[rule.to] |= moving
            moved = True
        if not moved:
            break
        stage, pinned = next_stage, next_pinned
    else:
        log.warning("stage rules still moving accounts after %d passes; check %s", step, machine.source)
    if not parts:
        return pd.DataFrame(columns=MOVE_COLUMNS)
    return pd.concat(parts, ignore_index=True).sort_values(["step", "account_id"], kind="stable").reset_index(
        drop=True
    )


def transition_time(as_of: date) -> datetime:
    """When a rule move for `as_of` happened: midnight of a past day (a backfill), else now (naive UTC)."""
    now = utcnow()
    return datetime.combine(as_of, time()) if as_of < now.date() else now


def _expire_accounts(session: Session, ids: set[int]) -> None:
    # Bulk UPDATEs bypass the identity map; stale in-memory accounts would otherwise show the old stage.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Account) and obj.id in ids:
            session.expire(obj)


_TRANSITION_COLUMNS = ("account_id", "from_stage", "to_stage", "at", "reason", "source", "actor_id")
_RULE_MOVE_COLUMNS = ("stage", "stage_since", "stage_pinned", "updated_at")


def apply_automatic_rules(session: Session, frame: pd.DataFrame, as_of: date, machine: StageMachine) -> int:
    """Apply the rules to every account in `frame`; returns the number of moves (transitions written).

    Stage and pin are re-read from the database (one query), so a frame built before a manual move, or a
    second run on the same frame, never undoes or repeats a move. Writes are one bulk INSERT of transitions
    (COPY on PostgreSQL) and one staged UPDATE of accounts (`lifecycle.store.bulkwrite`); the caller commits.
    """
    frame = _signals_index(frame)
    current = pd.DataFrame(
        session.execute(select(Account.id, Account.stage, Account.stage_pinned)).all(),  # type: ignore[call-overload]
        columns=["account_id", "stage", "stage_pinned"],
    ).set_index("account_id")
    frame = frame.loc[frame.index.isin(current.index)].copy()
    frame["stage"] = current["stage"].reindex(frame.index)
    frame["stage_pinned"] = current["stage_pinned"].reindex(frame.index).astype(bool)
    moves = evaluate_rules(frame, machine)
    if moves.empty:
        return 0
    at = transition_time(as_of)
    insert_rows(session, StageTransition.__table__, _TRANSITION_COLUMNS, list(zip(  # type: ignore[attr-defined]
        moves["account_id"].astype("int64").tolist(), moves["from_stage"].tolist(), moves["to_stage"].tolist(),
        [at] * len(moves), moves["reason"].tolist(), [f"rule:{rule}" for rule in moves["rule"].tolist()],
        [None] * len(moves), strict=True,
    )))
    final = moves.groupby("account_id", sort=True)["to_stage"].last()
    final_ids = [int(i) for i in final.index.to_numpy()]
    now = utcnow()
    update_rows(session, Account.__table__, ("id",), _RULE_MOVE_COLUMNS, [  # type: ignore[attr-defined]
        (i, s, at, False, now) for i, s in zip(final_ids, final.tolist(), strict=True)
    ])
    _expire_accounts(session, set(final_ids))
    return len(moves)


# ------------------------------------------------------------------------------------------------------------
# Manual moves


def move_stage(
    session: Session,
    account: Account,
    to_stage: str,
    *,
    reason: str,
    actor_id: int | None,
    machine: StageMachine,
    at: datetime | None = None,
) -> StageTransition:
    """Move `account` by hand and pin it there; the caller commits.

    `to_stage` may be a stage name or label (case-insensitive). Raises NotFoundError (with suggestions) for an
    unknown stage, and InvalidTransition for a move the machine does not allow, an empty reason, or no move.
    """
    target = machine.resolve(to_stage)
    why = (reason or "").strip()
    if not why:
        raise InvalidTransition(f"A reason is required to move {account.name} to {machine.label(target)}.")
    current = account.stage
    if target == current:
        raise InvalidTransition(f"{account.name} is already in {machine.label(target)}.")
    if not machine.can_move(current, target):
        allowed = ", ".join(machine.allowed_targets(current)) or "none"
        raise InvalidTransition(
            f"{account.name} cannot move from {machine.label(current)} to {machine.label(target)}; "
            f"allowed from {current}: {allowed}."
        )
    if account.id is None:
        raise InvalidTransition(f"{account.name} is not saved yet; save the account before moving its stage.")
    when = at or utcnow()
    transition = StageTransition(
        account_id=account.id, from_stage=current, to_stage=target, at=when, reason=why, source="manual",
        actor_id=actor_id,
    )
    account.stage = target
    account.stage_since = when
    account.stage_pinned = True
    account.updated_at = utcnow()
    session.add(transition)
    session.add(account)
    session.flush()
    return transition


def unpin(session: Session, account: Account, actor_id: int | None) -> bool:
    """Hand the account's stage back to the automatic rules; False if it was not pinned. The caller commits.

    The release is recorded in the audit log, since it changes no stage and so leaves no transition.
    """
    if not account.stage_pinned:
        return False
    account.stage_pinned = False
    account.updated_at = utcnow()
    session.add(account)
    session.add(AuditLog(actor_id=actor_id, action="stage.unpin", account_id=account.id,
                         detail=f"stage {account.stage} handed back to the rules"))
    session.flush()
    return True


# ------------------------------------------------------------------------------------------------------------
# History


@dataclass(frozen=True)
class StageVisit:
    """A stay of an account in one stage; `left` is None for the current stage (counted up to now)."""

    stage: str
    entered: datetime | None
    left: datetime | None
    days_in_stage: float | None
    reason: str
    source: str
    actor_id: int | None


def _days(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else (end - start).total_seconds() / 86400.0


def stage_history(session: Session, account_id: int, *, now: datetime | None = None) -> list[StageVisit]:
    """Every stage the account has been in, oldest first, with how long it stayed.

    Built from the account's transitions; the stage before the first recorded transition is shown from the
    account's creation when that is earlier (else with an unknown start).
    """
    account = session.get(Account, account_id)
    if account is None:
        raise NotFoundError("account", str(account_id))
    end = now or utcnow()
    rows = session.execute(
        select(StageTransition)
        .where(StageTransition.account_id == account_id)  # type: ignore[arg-type]
        .order_by(StageTransition.at, StageTransition.id)  # type: ignore[arg-type]
    ).scalars().all()
    if not rows:
        return [StageVisit(account.stage, account.stage_since, None, _days(account.stage_since, end), "",
                           "initial", None)]
    visits: list[StageVisit] = []
    first = rows[0]
    if first.from_stage:
        start = account.created_at if account.created_at <= first.at else None
        visits.append(
            StageVisit(first.from_stage, start, first.at, _days(start, first.at), "", "initial", None)
        )
    for i, t in enumerate(rows):
        left = rows[i + 1].at if i + 1 < len(rows) else None
        visits.append(StageVisit(t.to_stage, t.at, left, _days(t.at, left or end), t.reason, t.source,
                                 t.actor_id))
    last = visits[-1]
    if last.stage != account.stage:
        # The stage was changed without a transition (e.g. by an import): close the last visit there.
        since = max(account.stage_since, rows[-1].at)
        visits[-1] = StageVisit(last.stage, last.entered, since, _days(last.entered, since), last.reason,
                                last.source, last.actor_id)
        visits.append(StageVisit(account.stage, since, None, _days(since, end), "", "import", None))
    return visits


def time_in_stage_summary(
    session: Session, *, machine: StageMachine | None = None, now: datetime | None = None
) -> pd.DataFrame:
    """Per stage: visits, accounts in it now, median and 90th-percentile days in stage.

    One query (accounts left-joined to their transitions) and pandas. Current, open visits count up to now.
    Indexed by stage, in the machine's order when one is given.
    """
    end = pd.Timestamp(now or utcnow())
    t = StageTransition.__table__  # type: ignore[attr-defined]
    a = Account.__table__  # type: ignore[attr-defined]
    rows = session.execute(
        select(a.c.id, a.c.stage, a.c.stage_since, a.c.created_at, t.c.from_stage, t.c.to_stage, t.c.at)
        .select_from(a.outerjoin(t, t.c.account_id == a.c.id))
        .order_by(a.c.id, t.c.at, t.c.id)
    ).all()
    df = pd.DataFrame(
        rows, columns=["account_id", "current", "stage_since", "created_at", "from_stage", "to_stage", "at"]
    )
    columns = ["visits", "current", "median_days", "p90_days"]
    if df.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="stage"))
    no_history = df["to_stage"].isna()
    df["stage"] = df["to_stage"].where(~no_history, df["current"])
    df["entered"] = pd.to_datetime(df["at"].where(~no_history, df["stage_since"]))
    # As in stage_history: the stage before the first transition counts from the account's creation.
    first = df.loc[~no_history].drop_duplicates("account_id")
    first = first.loc[first["from_stage"].notna() & (pd.to_datetime(first["created_at"]) <= first["entered"])]
    before = pd.DataFrame({
        "account_id": first["account_id"], "stage": first["from_stage"],
        "entered": pd.to_datetime(first["created_at"]), "order": 0,
    })
    df = pd.concat([before, df.assign(order=1)], ignore_index=True).sort_values(
        ["account_id", "order", "entered"], kind="stable"
    )
    df["left"] = df.groupby("account_id")["entered"].shift(-1).fillna(end)
    df["days"] = (df["left"] - df["entered"]).dt.total_seconds() / 86400.0
    current = df.dropna(subset=["current"]).drop_duplicates("account_id").groupby("current").size()
    summary = pd.DataFrame(df.groupby("stage")["days"].agg(
        visits="size", median_days="median", p90_days=lambda d: float(np.percentile(d, 90))
    ))
    summary = summary.reindex(summary.index.union(current.index))
    if machine is not None:
        order = machine.stage_names
        summary = summary.reindex(order + [s for s in summary.index if s not in order])
    summary["current"] = current.reindex(summary.index).fillna(0).astype(int)
    summary["visits"] = summary["visits"].fillna(0).astype(int)
    summary.index.name = "stage"
    return summary.reindex(columns=columns)
