"""Account search: a small filter language (`stage=renewal grade=red renewal<60d owner=me`) and one SQL query.

`parse_filters` turns the words into a list of `Filter`s without touching the database (pure, so the grammar is
tested on its own); `search` applies them to the `account` table: one SELECT for the first page of rows (largest
ARR in the reporting currency first, with the total count as a window aggregate) and one GROUP BY per currency for
the total ARR (`lifecycle.reports.money`). `arr` filters read amounts in the reporting currency too (an account whose
currency has no rate is compared as written). Users are matched here too (`find_user`), because filters and
commands name owners the same way: by email, name, chat id or `@handle`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from rapidfuzz import fuzz, process, utils
from sqlalchemy import ColumnElement, and_, false, func, not_, or_, select, true
from sqlmodel import Session, col

from lifecycle.reports.money import Rates, Total, load_rates
from lifecycle.scoring.stages import StageMachine
from lifecycle.store.errors import CsbotError, NotFoundError
from lifecycle.store.models import Account, User

Op = Literal["=", "!=", "<", "<=", ">", ">="]
Kind = Literal["text", "stage", "grade", "owner", "name", "money", "count", "score", "renewal", "percent"]
Problem = Literal[
    "unknown_field", "bad_value", "bad_operator", "no_list", "bad_token", "unknown_stage", "unknown_owner", "empty"
]

GRADES = ("red", "yellow", "green", "unknown")
OPS: tuple[Op, ...] = ("!=", "<=", ">=", "=", "<", ">")

# Canonical field → how its values are read. Order is the order of the help text.
FIELDS: dict[str, Kind] = {
    "stage": "stage",
    "grade": "grade",
    "health": "score",
    "renewal": "renewal",
    "owner": "owner",
    "arr": "money",
    "seats": "count",
    "segment": "text",
    "plan": "text",
    "tier": "text",
    "cohort": "count",
    "churn": "percent",
    "status": "text",
    "name": "name",
}
FIELD_ALIASES: dict[str, str] = {
    "score": "health",
    "renewal_date": "renewal",
    "renews": "renewal",
    "csm": "owner",
    "阶段": "stage",
    "等级": "grade",
    "颜色": "grade",
    "健康度": "health",
    "健康": "health",
    "分数": "health",
    "续约": "renewal",
    "续约日": "renewal",
    "负责人": "owner",
    "细分": "segment",
    "套餐": "plan",
    "层级": "tier",
    "群组": "cohort",
    "分群": "cohort",
    "churn_probability": "churn",
    "churn_risk": "churn",
    "流失概率": "churn",
    "流失风险": "churn",
    "状态": "status",
    "席位": "seats",
    "名称": "name",
    "名字": "name",
}
# Bare words that stand for a whole filter.
SHORTHANDS: dict[str, tuple[str, str]] = {
    "churned": ("status", "churned"),
    "active": ("status", "active"),
    "mine": ("owner", "me"),
    "流失": ("status", "churned"),
    "已流失": ("status", "churned"),
    "活跃": ("status", "active"),
    "我的": ("owner", "me"),
}
GRADE_ALIASES = {"红": "red", "红色": "red", "黄": "yellow", "黄色": "yellow", "绿": "green", "绿色": "green",
                 "未知": "unknown", "none": "unknown"}
NO_OWNER = ("none", "nobody", "unassigned", "无", "未分配")

_FULL_WIDTH = str.maketrans({"＝": "=", "＜": "<", "＞": ">", "！": "!", "，": ",", "：": "=", ":": "=",
                             "≤": "<=", "≥": ">=", "≠": "!="})
_AROUND_OP = re.compile(r"\s*(!=|<=|>=|=|<|>)\s*")
_TOKEN = re.compile(r"^(?P<field>[^=<>!]+)(?P<op>!=|<=|>=|=|<|>)(?P<value>.*)$")
_MONEY = re.compile(r"^[$€£¥]?(?P<num>\d+(?:\.\d+)?)(?P<unit>[km]?)$")
_THOUSANDS = re.compile(r"^[$€£¥]?\d{1,3}(?:,\d{3})+(?:\.\d+)?[km]?$")
_DAYS = re.compile(r"^(?P<num>\d+)\s*(?P<unit>d|days?|w|weeks?|天|周)?$")


@dataclass(frozen=True)
class InDays:
    """A renewal window relative to today: `renewal<60d` is `InDays(60)`."""

    days: int


Value = str | float | date | InDays


@dataclass(frozen=True)
class Filter:
    """One condition: `field op value[,value…]`; a list means any of them (`!=`: none of them)."""

    field: str
    op: Op
    values: tuple[Value, ...]


class FilterError(CsbotError):
    """A filter the user wrote cannot be read. `problem` says what kind; the bot words it in the user's language."""

    def __init__(
        self,
        problem: Problem,
        token: str,
        *,
        field: str = "",
        suggestions: Sequence[str] = (),
        expected: str = "",
    ) -> None:
        self.problem = problem
        self.token = token
        self.field = field
        self.suggestions = list(suggestions)
        self.expected = expected
        hint = f" Did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        messages = {
            "unknown_field": f"Unknown filter field {token!r}; known fields: {', '.join(FIELDS)}.",
            "bad_value": f"{token!r} is not a valid value for {field} (expected {expected}).",
            "bad_operator": f"{field} only takes = or !=, not {token!r}.",
            "no_list": f"A list of values only works with = or != ({token!r}).",
            "bad_token": f"I can't read {token!r} as a filter; filters look like field=value, e.g. grade=red.",
            "unknown_stage": f"There is no stage {token!r}.",
            "unknown_owner": f"There is no user {token!r}.",
            "empty": "No filters given.",
        }
        super().__init__(messages[problem] + hint)


def resolve_field(word: str) -> str:
    """The canonical field for `word` (a field name or an alias, any case); else FilterError with a suggestion."""
    key = word.strip().casefold()
    if key in FIELDS:
        return key
    if key in FIELD_ALIASES:
        return FIELD_ALIASES[key]
    names = list(FIELDS) + [a for a in FIELD_ALIASES if a.isascii()]
    close = process.extract(key, names, scorer=fuzz.WRatio, limit=3, score_cutoff=70)
    suggestions: list[str] = []
    for name, _score, _idx in close:
        canonical = FIELD_ALIASES.get(name, name)
        if canonical not in suggestions:
            suggestions.append(canonical)
    raise FilterError("unknown_field", word, suggestions=suggestions[:2])


def _normalise(text: str) -> list[str]:
    text = _AROUND_OP.sub(r"\1", text.translate(_FULL_WIDTH))
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: read plain words
        return text.split()


def _split_values(raw: str, kind: Kind) -> list[str]:
    if kind == "money" and _THOUSANDS.match(raw):
        return [raw.replace(",", "")]
    return [v.strip() for v in raw.split(",") if v.strip()]


def _money(raw: str, field_name: str) -> float:
    m = _MONEY.match(raw.strip().lower().replace("_", ""))
    if m is None:
        raise FilterError("bad_value", raw, field=field_name, expected="a number such as 50000, 50k or 1.2m")
    return float(m["num"]) * {"": 1, "k": 1_000, "m": 1_000_000}[m["unit"]]


def _value(raw: str, kind: Kind, field_name: str, machine: StageMachine | None) -> Value:
    if kind == "grade":
        word = GRADE_ALIASES.get(raw.casefold(), raw.casefold())
        if word not in GRADES:
            close = process.extract(word, GRADES, scorer=fuzz.WRatio, limit=1, score_cutoff=60)
            raise FilterError(
                "bad_value", raw, field=field_name, expected="red, yellow, green or unknown",
                suggestions=[f"grade={c[0]}" for c in close],
            )
        return word
    if kind == "stage":
        if machine is None:
            return raw.casefold()
        try:
            return machine.resolve(raw)
        except NotFoundError as exc:
            raise FilterError("unknown_stage", raw, field=field_name, suggestions=exc.suggestions) from None
    if kind in ("text", "owner", "name"):
        return raw if kind == "owner" else raw.casefold()
    if kind == "money":
        return _money(raw, field_name)
    if kind == "count":
        number = _money(raw, field_name)
        if number != int(number):
            raise FilterError("bad_value", raw, field=field_name, expected="a whole number")
        return number
    if kind == "percent":
        try:
            percent = float(raw.strip().removesuffix("%"))
        except ValueError:
            percent = -1.0
        if not 0 <= percent <= 100:
            raise FilterError("bad_value", raw, field=field_name, expected="a percentage from 0 to 100")
        return percent
    if kind == "score":
        try:
            score = float(raw)
        except ValueError:
            score = -1.0
        if not 0 <= score <= 100:
            raise FilterError("bad_value", raw, field=field_name, expected="a score from 0 to 100")
        return score
    # renewal: a window in days/weeks from today, or a calendar date
    m = _DAYS.match(raw.strip().casefold())
    if m is not None:
        weeks = (m["unit"] or "d")[0] in ("w", "周")
        return InDays(int(m["num"]) * (7 if weeks else 1))
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise FilterError(
            "bad_value", raw, field=field_name, expected="days such as 60d, or a date such as 2027-01-01"
        ) from None


def _bare_hint(word: str, machine: StageMachine | None) -> list[str]:
    """For a bare word such as `red` or `renewal`, the filter the user probably meant."""
    folded = word.casefold()
    if GRADE_ALIASES.get(folded, folded) in GRADES:
        return [f"grade={GRADE_ALIASES.get(folded, folded)}"]
    if machine is not None:
        try:
            return [f"stage={machine.resolve(word)}"]
        except NotFoundError:
            pass
    if folded in FIELDS or folded in FIELD_ALIASES:
        return [f"{FIELD_ALIASES.get(folded, folded)}=…"]
    return []


def parse_filters(text: str, machine: StageMachine | None = None) -> list[Filter]:
    """Read `stage=renewal,expansion grade=red renewal<60d owner=me arr>=50k …` into filters.

    Values are validated (grades, numbers with k/m, day windows, dates; stages against `machine` when given).
    A bare word after a `name=` or `owner=` filter continues its value, so `name=Acme Corp` needs no quotes (not
    after `owner=me`, `owner=none` or an e-mail, which are complete).
    Raises FilterError for anything it cannot read.
    """
    filters: list[Filter] = []
    for token in _normalise(text):
        match = _TOKEN.match(token)
        if match is None:
            folded = token.casefold()
            if folded in SHORTHANDS:
                fname, raw = SHORTHANDS[folded]
                filters.append(Filter(fname, "=", (raw,)))
                continue
            last = filters[-1] if filters else None
            previous = str(last.values[0]) if last is not None and len(last.values) == 1 else ""
            # `owner=me`, `owner=none` and an e-mail are complete: a word after them is not part of a name
            complete = previous.casefold() in ("me", "我", *NO_OWNER) or "@" in previous
            if last is not None and last.field in ("name", "owner") and previous and \
                    not (last.field == "owner" and complete):
                word = token if last.field == "owner" else folded
                filters[-1] = Filter(last.field, last.op, (f"{previous} {word}",))
                continue
            raise FilterError("bad_token", token, suggestions=_bare_hint(token, machine))
        fname = resolve_field(match["field"])
        op: Op = match["op"]  # type: ignore[assignment]
        kind = FIELDS[fname]
        if kind in ("text", "stage", "grade", "owner", "name") and op not in ("=", "!="):
            raise FilterError("bad_operator", op, field=fname)
        raws = _split_values(match["value"], kind)
        if not raws:
            raise FilterError("bad_value", token, field=fname, expected="a value after the operator")
        if len(raws) > 1 and op not in ("=", "!="):
            raise FilterError("no_list", token, field=fname)
        filters.append(Filter(fname, op, tuple(_value(r, kind, fname, machine) for r in raws)))
    if not filters:
        raise FilterError("empty", text)
    return filters


# ------------------------------------------------------------------------------------------------------------
# Users


def _user_keys(user: User) -> set[str]:
    keys = {user.email.casefold(), user.email.split("@")[0].casefold(), " ".join(user.name.casefold().split())}
    keys |= {k for k in (user.slack_user_id, user.telegram_user_id) if k}
    return {k.casefold() for k in keys}


def match_user(users: Sequence[User], text: str) -> User:
    """The user `text` names: email, email name, full name, Slack or Telegram id, `@handle` or `<@U123>`
    (any case); else a unique first name or name prefix. Raises NotFoundError("user", …) with close names."""
    wanted = " ".join(text.strip().removeprefix("<").removesuffix(">").lstrip("@").casefold().split())
    if wanted:
        exact = [u for u in users if wanted in _user_keys(u) or wanted.replace(".", " ") in _user_keys(u)]
        if len(exact) == 1:
            return exact[0]
        loose = [u for u in users if len(wanted) >= 2 and u.name.casefold().startswith(wanted)]
        if len(loose) == 1:
            return loose[0]
    names = [u.name for u in users]
    close = process.extract(text, names, scorer=fuzz.WRatio, processor=utils.default_process, limit=3,
                            score_cutoff=50)
    raise NotFoundError("user", text.strip(), [c[0] for c in close])


def find_user(session: Session, text: str) -> User:
    """The active user `text` names (see `match_user`)."""
    users = list(session.execute(select(User).where(col(User.active) == true())).scalars())
    return match_user(users, text)


# ------------------------------------------------------------------------------------------------------------
# Applying filters


@dataclass(frozen=True)
class FoundAccount:
    account_id: int
    external_id: str
    name: str
    owner: str | None
    arr: float
    currency: str
    score: float | None
    grade: str | None
    stage: str
    status: str
    renewal_date: date | None


@dataclass
class SearchResult:
    """The first `limit` matches (largest ARR first) and the totals over all of them."""

    arr: Total
    rows: list[FoundAccount] = field(default_factory=list)
    count: int = 0


def _compare(column: Any, op: Op, value: Any) -> ColumnElement[bool]:
    return {
        "=": column == value, "!=": column != value, "<": column < value,
        "<=": column <= value, ">": column > value, ">=": column >= value,
    }[op]


def _renewal(f: Filter, today: date) -> ColumnElement[bool]:
    column = col(Account.renewal_date)
    parts: list[ColumnElement[bool]] = []
    for v in f.values:
        if isinstance(v, InDays):
            edge = today + timedelta(days=v.days)
            # "within N days" means from today on: an overdue renewal is not "renewing in the next N days".
            cond = _compare(column, f.op, edge)
            parts.append(and_(cond, column >= today) if f.op in ("<", "<=") else cond)
        else:
            parts.append(_compare(column, f.op, v))
    return _any_or_none(f.op, parts)


def _any_or_none(op: Op, parts: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    if op != "!=":
        return or_(*parts)
    return and_(*parts)  # each part already says "!= value"; together: none of the values


def _text_in(column: Any, f: Filter, *, nullable: bool = True) -> ColumnElement[bool]:
    values = [str(v).casefold() for v in f.values]
    folded = func.lower(column)
    if f.op == "=":
        return folded.in_(values)
    return or_(column.is_(None), folded.not_in(values)) if nullable else folded.not_in(values)


def _grade(f: Filter) -> ColumnElement[bool]:
    column = col(Account.health_grade)
    known = [str(v) for v in f.values if v != "unknown"]
    wants_unknown = "unknown" in f.values
    hit = or_(column.in_(known) if known else false(), column.is_(None) if wants_unknown else false())
    if f.op == "=":
        return hit
    return and_(column.is_not(None) if wants_unknown else true(),
                or_(column.is_(None), column.not_in(known)) if known else true())


def _owner(f: Filter, users: Sequence[User], me_id: int | None) -> ColumnElement[bool]:
    column = col(Account.owner_id)
    ids: list[int] = []
    unowned = False
    for v in f.values:
        text = str(v).strip()
        if text.casefold() in ("me", "我"):
            if me_id is None:
                raise FilterError("unknown_owner", text)
            ids.append(me_id)
        elif text.casefold() in NO_OWNER:
            unowned = True
        else:
            try:
                ids.append(match_user(users, text).id or 0)
            except NotFoundError as exc:
                raise FilterError("unknown_owner", text, field="owner", suggestions=exc.suggestions) from None
    hit = or_(column.in_(ids) if ids else false(), column.is_(None) if unowned else false())
    if f.op == "=":
        return hit
    return and_(
        column.is_not(None) if unowned else true(), or_(column.is_(None), column.not_in(ids)) if ids else true()
    )


def _condition(
    f: Filter, today: date, users: Sequence[User], me_id: int | None, arr: ColumnElement[Any]
) -> ColumnElement[bool]:
    kind = FIELDS[f.field]
    if kind == "renewal":
        return _renewal(f, today)
    if kind == "grade":
        return _grade(f)
    if kind == "owner":
        return _owner(f, users, me_id)
    if kind == "name":
        likes = [func.lower(col(Account.name)).contains(str(v), autoescape=True) for v in f.values]
        return or_(*likes) if f.op == "=" else not_(or_(*likes))
    if kind in ("text", "stage"):
        column = col(getattr(Account, f.field))
        return _text_in(column, f, nullable=f.field not in ("stage", "status"))
    if f.field == "churn":
        # Percent in the filter, probability in the column; accounts without a probability never match.
        column = col(Account.churn_probability)
        return and_(column.is_not(None),
                    _any_or_none(f.op, [_compare(column, f.op, float(v) / 100.0) for v in f.values]))  # type: ignore[arg-type]
    measure = {"arr": arr, "seats": col(Account.seats), "health": col(Account.health_score),
               "cohort": col(Account.cohort)}[f.field]
    return _any_or_none(f.op, [_compare(measure, f.op, v) for v in f.values])


def mentions_status(filters: Sequence[Filter]) -> bool:
    """Whether the filters ask about status or stage; otherwise a search covers active accounts only."""
    return any(f.field in ("status", "stage") for f in filters)


def search(
    session: Session,
    filters: Sequence[Filter],
    *,
    today: date,
    me_id: int | None = None,
    only_owner_id: int | None = None,
    limit: int = 20,
    rates: Rates | None = None,
) -> SearchResult:
    """Accounts matching every filter, largest ARR (in the reporting currency) first; `only_owner_id` confines a
    search to one owner's book.

    Churned accounts are left out unless a filter names a status or a stage (`churned`, `status=…`, `stage=…`).
    The count comes as a window aggregate next to the first rows; the total ARR from a GROUP BY per currency.
    """
    rates = rates or load_rates(session, on=today)
    users: list[User] = []
    if any(f.field == "owner" for f in filters):
        users = list(session.execute(select(User)).scalars())
    # The ARR in the reporting currency, or as written where the account's currency has no rate.
    arr = rates.in_sql(col(Account.arr), col(Account.currency), as_written=True)
    conditions = [_condition(f, today, users, me_id, arr) for f in filters]
    if not mentions_status(filters):
        conditions.append(col(Account.status) == "active")
    if only_owner_id is not None:
        conditions.append(col(Account.owner_id) == only_owner_id)
    stmt = (
        select(
            col(Account.id),
            col(Account.external_id),
            col(Account.name),
            col(User.name),
            col(Account.arr),
            col(Account.currency),
            col(Account.health_score),
            col(Account.health_grade),
            col(Account.stage),
            col(Account.status),
            col(Account.renewal_date),
            func.count().over().label("total_count"),
        )
        .outerjoin(User, col(User.id) == col(Account.owner_id))
        .where(and_(true(), *conditions))
        .order_by(arr.desc(), col(Account.name))
        .limit(limit)
    )
    found = session.execute(stmt).all()
    if not found:
        return SearchResult(arr=rates.total({}))
    per_currency = session.execute(
        select(col(Account.currency), func.sum(col(Account.arr)))
        .where(and_(true(), *conditions))
        .group_by(col(Account.currency))
    ).all()
    rows = [
        FoundAccount(
            account_id=r[0],
            external_id=r[1],
            name=r[2],
            owner=r[3],
            arr=float(r[4] or 0),
            currency=r[5],
            score=r[6],
            grade=r[7],
            stage=r[8],
            status=r[9],
            renewal_date=r[10],
        )
        for r in found
    ]
    total = rates.total({str(c): float(v or 0.0) for c, v in per_currency})
    return SearchResult(rows=rows, count=int(found[0][11]), arr=total)
