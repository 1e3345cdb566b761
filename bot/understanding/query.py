"""A list question as structured filters, and the one command that answers it.

`Query` is what "my enterprise accounts renewing next quarter that are yellow" means; `command()` writes it as
`at-risk`, `renewals` or `find` by the rule in docs/understanding.md (only a renewal window → `renewals`; only "at
risk" → `at-risk`; anything else → `find`). A Query survives in the conversation memory as a dict, so "only the
red ones" can add a filter to the last list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from bot.understanding.when import Between, Until, Window, Within, window_days

GRADE_ORDER = ("red", "yellow", "green", "unknown")


@dataclass
class Query:
    base: str = "find"  # find, at_risk, renewals: what the question was asked as
    grades: list[str] = field(default_factory=list)
    risk: bool = False
    stages: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)
    owner: str | None = None  # "me" or a person's handle
    scope_all: bool = False
    window: dict[str, Any] | None = None
    comparisons: list[tuple[str, str, float]] = field(default_factory=list)
    status: str | None = None
    name: str | None = None  # a word of the account's name: "with logistics in the name", "名称包含物流"

    # -- memory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Query:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        query = cls(**known)
        query.comparisons = [tuple(c) for c in query.comparisons]  # type: ignore[misc]
        return query

    def set_window(self, window: Window | None) -> None:
        if window is None:
            self.window = None
        elif isinstance(window, Within):
            self.window = {"within": window.days}
        elif isinstance(window, Until):
            self.window = {"until": window.last_day.isoformat()}
        else:
            self.window = {"start": window.start.isoformat(), "end": window.end.isoformat()}

    def get_window(self) -> Window | None:
        w = self.window
        if not w:
            return None
        if "within" in w:
            return Within(int(w["within"]))
        if "until" in w:
            return Until(date.fromisoformat(w["until"]))
        return Between(date.fromisoformat(w["start"]), date.fromisoformat(w["end"]))

    def merge(self, other: Query) -> Query:
        """This query narrowed by `other` (a refinement: "only the red ones", "just mine")."""
        merged = Query.from_dict(self.to_dict())
        for name in ("grades", "stages", "segments", "plans", "tiers"):
            values = getattr(other, name)
            if values:
                setattr(merged, name, list(values))
        merged.risk = self.risk or other.risk
        if other.risk and other.grades == []:
            merged.grades = [g for g in merged.grades if g == "red"] or merged.grades
        merged.owner = other.owner or self.owner
        merged.scope_all = other.scope_all or (self.scope_all and other.owner is None)
        if other.window:
            merged.window = other.window
        merged.comparisons = [c for c in self.comparisons if c[0] not in {o[0] for o in other.comparisons}] + \
            list(other.comparisons)
        merged.status = other.status or self.status
        merged.name = other.name or self.name
        return merged

    # -- the command

    def _filters_beside_window(self) -> bool:
        return bool(self.grades or self.risk or self.stages or self.segments or self.plans or self.tiers
                    or self.comparisons or self.status or self.name or (self.owner not in (None, "me")))

    def command(self, today: date) -> str:
        window = self.get_window()
        only_scope = not (self.grades or self.stages or self.plans or self.tiers or self.comparisons or self.status
                          or self.name or window is not None or self.owner not in (None, "me"))
        if (self.risk or self.base == "at_risk") and only_scope and len(self.segments) <= 1:
            scope = " mine" if self.owner == "me" else " all" if self.scope_all else ""
            if self.segments:
                return f"at-risk{scope} segment {self.segments[0]}"
            return "at-risk" + scope
        if window is not None and not isinstance(window, Between) and not self._filters_beside_window():
            days = window_days(window, today)
            return f"renewals {days}" + (" mine" if self.owner == "me" else " all" if self.scope_all else "")
        if self.base == "renewals" and window is None and not self._filters_beside_window():
            return "renewals" + (" mine" if self.owner == "me" else " all" if self.scope_all else "")
        return "find " + " ".join(self.filters(today))

    def filters(self, today: date) -> list[str]:
        out: list[str] = []
        stages = [s for s in self.stages if s != "churned"]
        status = self.status or ("churned" if "churned" in self.stages else None)
        if stages:
            out.append("stage=" + ",".join(dict.fromkeys(stages)))
        grades = set(self.grades) | ({"red"} if self.risk else set())
        if grades:
            out.append("grade=" + ",".join(g for g in GRADE_ORDER if g in grades))
        out += [_compare("health", op, v) for f, op, v in self.comparisons if f == "health"]
        window = self.get_window()
        if self.base == "renewals" and window is None:
            window = Within(90)
        if isinstance(window, Within):
            out.append(f"renewal<{window.days}d")
        elif isinstance(window, Until):
            out.append(f"renewal<{(window.last_day - today).days + 1}d")
        elif isinstance(window, Between):
            out += [f"renewal>={window.start.isoformat()}", f"renewal<{window.end.isoformat()}"]
        if self.owner:
            out.append(f"owner={self.owner}")
        if self.name:
            out.append(_quoted(f"name={self.name}"))
        out += [_compare("arr", op, v) for f, op, v in self.comparisons if f == "arr"]
        out += [_compare("seats", op, v) for f, op, v in self.comparisons if f == "seats"]
        if self.segments:
            out.append("segment=" + ",".join(dict.fromkeys(self.segments)))
        if self.plans:
            out.append(_quoted("plan=" + ",".join(dict.fromkeys(self.plans))))
        if self.tiers:
            out.append("tier=" + ",".join(dict.fromkeys(self.tiers)))
        out += [_compare("churn", op, v) for f, op, v in self.comparisons if f == "churn"]
        if status:
            out.append(f"status={status}")
        if not out:
            out.append("status=active")
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _compare(name: str, op: str, value: float) -> str:
    return f"{name}{op}{_number(value)}"


def _quoted(token: str) -> str:
    return f'"{token}"' if " " in token else token


def quote_name(name: str, *, more: bool) -> str:
    """An account name as a command argument: quoted when it has spaces and more arguments follow."""
    if more and (" " in name or '"' in name):
        return '"' + name.replace('"', "") + '"'
    return name
