"""Time in questions: renewal windows ("in the next 60 days", "next quarter", "before March", "下个月", "90天内")
and look-back periods ("over the last 6 months", "最近半年").

A window is one of three shapes, because the commands say them differently (docs/understanding.md):
- `Within(days)`: from today for N days (`renewals 60`, or `renewal<60d` inside `find`);
- `Until(last_day)`: from today up to a calendar day (`renewals 24` for "this month");
- `Between(start, end)`: a calendar span that starts later (`renewal>=2027-01-01 renewal<2027-04-01`).
Quarters are calendar quarters. Explicit dates that the patterns here do not cover are read with dateparser.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "forty-five": 45,
    "sixty": 60, "ninety": 90, "a couple of": 2, "couple of": 2, "a couple": 2, "a few": 3, "few": 3,
}
_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_MONTHS = {name: i for i, name in enumerate(calendar.month_name) if name} | {
    name: i for i, name in enumerate(calendar.month_abbr) if name
} | {"sept": 9}
_MONTHS = {k.casefold(): v for k, v in _MONTHS.items()}
_ORDINAL_Q = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4, "last": 4}

NUM_EN = r"(\d{1,4}|a couple of|couple of|a couple|a few|few|an?|one|two|three|four|five|six|seven|eight|nine|ten|" \
         r"eleven|twelve|fifteen|twenty|thirty|forty-five|sixty|ninety)"
UNIT_EN = r"(days?|d|weeks?|wks?|w|months?|mos?|mths?|m|quarters?|qtrs?|years?|yrs?|y)"
MONTH_EN = r"(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
NUM_ZH = r"(\d{1,4}|[零一二两三四五六七八九十百]+|半)"
UNIT_ZH = r"(天|日|周|星期|个星期|礼拜|个月|月|个季度|季度|季|年)"


@dataclass(frozen=True)
class Within:
    days: int


@dataclass(frozen=True)
class Until:
    last_day: date


@dataclass(frozen=True)
class Between:
    start: date
    end: date  # exclusive


Window = Within | Until | Between


@dataclass(frozen=True)
class TimeSlot:
    """What one time phrase says: a renewal window, a look-back period (`6m`), or both (a bare "90 days")."""

    start: int
    end: int
    window: Window | None
    period: str | None


def zh_number(text: str) -> int | None:
    """A Chinese or Arabic number up to the hundreds: 3, 三, 十二, 二十, 九十, 一百二十; 半 is not a number here."""
    if text.isdigit():
        return int(text)
    if not text or any(ch not in _ZH_DIGITS and ch not in "十百" for ch in text):
        return None
    total, current = 0, 0
    for ch in text:
        if ch == "百":
            total += (current or 1) * 100
            current = 0
        elif ch == "十":
            total += (current or 1) * 10
            current = 0
        else:
            current = _ZH_DIGITS[ch]
    return total + current


def _en_number(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBER_WORDS[text]


def _unit_days(unit: str) -> tuple[int, str]:
    """Days per unit, and the period unit letter (d, w, m, y)."""
    u = unit.casefold()
    if u in ("天", "日") or u.startswith("d"):
        return 1, "d"
    if u in ("周", "星期", "个星期", "礼拜") or u.startswith("w"):
        return 7, "w"
    if u in ("个季度", "季度", "季") or u.startswith("q"):
        return 90, "q"
    if u in ("年",) or u.startswith("y"):
        return 365, "y"
    return 30, "m"  # month


def _period(n: int, unit: str) -> str:
    _per, letter = _unit_days(unit)
    if letter == "q":
        return f"{3 * n}m"
    return f"{n}{letter}"


def _month_start(year: int, month: int) -> date:
    while month > 12:
        year, month = year + 1, month - 12
    return date(year, month, 1)


def _quarter_start(year: int, quarter: int) -> date:
    return _month_start(year, 3 * (quarter - 1) + 1)


def _this(unit: str, today: date) -> Until:
    if unit.startswith("w") or unit in ("周", "星期"):
        return Until(today + timedelta(days=6 - today.weekday()))
    if unit.startswith("m") or unit == "月":
        return Until(_month_start(today.year, today.month + 1) - timedelta(days=1))
    if unit.startswith("q") or unit in ("季度", "季"):
        q = (today.month - 1) // 3 + 1
        return Until(_month_start(today.year, 3 * q + 1) - timedelta(days=1))
    return Until(date(today.year, 12, 31))


def _next(unit: str, today: date) -> Between:
    if unit.startswith("w") or unit in ("周", "星期"):
        start = today + timedelta(days=7 - today.weekday())
        return Between(start, start + timedelta(days=7))
    if unit.startswith("m") or unit == "月":
        start = _month_start(today.year, today.month + 1)
        return Between(start, _month_start(start.year, start.month + 1))
    if unit.startswith("q") or unit in ("季度", "季"):
        q = (today.month - 1) // 3 + 1
        start = _month_start(today.year, 3 * q + 1)
        return Between(start, _month_start(start.year, start.month + 3))
    return Between(date(today.year + 1, 1, 1), date(today.year + 2, 1, 1))


def _month_span(month: int, year: int | None, today: date) -> Between | Until:
    if year is None:
        year = today.year if month >= today.month else today.year + 1
    start = date(year, month, 1)
    end = _month_start(year, month + 1)
    if start <= today < end:
        return Until(end - timedelta(days=1))
    return Between(start, end)


def _month_end(month: int, year: int | None, today: date) -> Until:
    """Up to the last day of a month: "by the end of January", "一月底前"."""
    span = _month_span(month, year, today)
    return Until(span.end - timedelta(days=1)) if isinstance(span, Between) else span


def _quarter_span(quarter: int, year: int | None, today: date) -> Between | Until:
    current = (today.month - 1) // 3 + 1
    if year is None:
        year = today.year if quarter >= current else today.year + 1
    start = _quarter_start(year, quarter)
    end = _month_start(year, 3 * quarter + 1)
    if start <= today < end:
        return Until(end - timedelta(days=1))
    return Between(start, end)


def _before(day: date, *, inclusive: bool) -> Until:
    return Until(day if inclusive else day - timedelta(days=1))


def _explicit_date(text: str, today: date) -> date | None:
    """A date written out ("2027-03-15", "march 15", "15 march 2027", "3/15"), read with dateparser."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    import dateparser  # imported on first use: it loads its language data lazily and slowly

    parsed = dateparser.parse(
        text, languages=["en", "zh"],
        settings={"PREFER_DATES_FROM": "future", "RELATIVE_BASE": datetime(today.year, today.month, today.day),
                  "REQUIRE_PARTS": ["month"]},
    )
    return parsed.date() if parsed is not None else None


Handler = Callable[[re.Match[str], date], tuple[Window | None, str | None]]
_PATTERNS: list[tuple[re.Pattern[str], Handler]] = []


def _rule(pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _PATTERNS.append((re.compile(pattern), fn))
        return fn

    return register


# --- English -----------------------------------------------------------------------------------------------------

@_rule(r"\b(?:(?:in|within|over|during|for)\s+)?(?:the\s+)?(?:next|coming|upcoming|following)\s+" + NUM_EN
       + r"\s*" + UNIT_EN + r"\b")
def _next_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    n, unit = _en_number(m.group(1)), m.group(2)
    return Within(n * _unit_days(unit)[0]), None


@_rule(r"\b(?:for|by)\s+(?:another\s+|the\s+)?" + NUM_EN + r"\s*" + UNIT_EN + r"\b")
def _for_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    n, unit = _en_number(m.group(1)), m.group(2)  # "snooze it for a week", "for 3 days"
    return Within(n * _unit_days(unit)[0]), _period(n, unit)


@_rule(r"\b(?:in|within|inside)\s+(?:the\s+)?" + NUM_EN + r"\s*" + UNIT_EN + r"\b")
def _in_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    n, unit = _en_number(m.group(1)), m.group(2)
    return Within(n * _unit_days(unit)[0]), None


@_rule(r"\b(?:(?:over|in|during|for)\s+)?(?:the\s+)?(?:last|past|previous|prior|trailing)\s+(?:" + NUM_EN + r"\s*)?"
       + UNIT_EN + r"\b")
def _last_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    n = _en_number(m.group(1)) if m.group(1) else 1
    return None, _period(n, m.group(2))


@_rule(r"\b(?:by|before|until|till|til|prior to|ahead of)\s+(?:the\s+)?end\s+of\s+(?:the\s+)?(?:(this|next)\s+)?"
       r"(week|month|quarter|year)\b")
def _by_end_of(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    unit = m.group(2)
    if m.group(1) == "next":
        return Until(_next(unit, today).end - timedelta(days=1)), None
    return _this(unit, today), None


@_rule(r"\b(?:by|before|until|till|til)\s+(?:the\s+)?end\s+of\s+" + MONTH_EN + r"(?:\s+(\d{4}))?\b")
def _by_end_of_month(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return _month_end(_MONTHS[m.group(1)], int(m.group(2)) if m.group(2) else None, today), None


@_rule(r"\b(?:(?:later|rest of|remainder of)\s+)?(?:in\s+)?(?:this|the current|current)\s+"
       r"(week|month|quarter|qtr|year)\b")
def _this_unit(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return _this(m.group(1), today), None


@_rule(r"\b(?:(?:in|during)\s+)?(?:the\s+)?(?:next|coming|following)\s+(week|month|quarter|qtr|year)\b")
def _next_unit(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return _next(m.group(1), today), None


@_rule(r"\b(?:(?:in|during|over)\s+)?(?:the\s+)?(?:last|past|previous)\s+(week|month|quarter|qtr|year)\b")
def _last_unit(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return None, _period(1, m.group(1))


@_rule(r"\b(?:by|before|until|till|til|prior to|ahead of)\s+(\d{4}-\d{2}-\d{2}|" + MONTH_EN
       + r"(?:\s+\d{1,2}(?:st|nd|rd|th)?)?(?:,?\s+\d{4})?|\d{1,2}(?:st|nd|rd|th)?\s+" + MONTH_EN
       + r"(?:,?\s+\d{4})?|\d{1,2}/\d{1,2}(?:/\d{2,4})?)")
def _before_date(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    text = m.group(1)
    inclusive = m.group(0).startswith(("by", "until", "till", "til"))
    month_only = re.fullmatch(MONTH_EN + r"(?:,?\s+(\d{4}))?", text)
    if month_only:
        month = _MONTHS[month_only.group(1)]
        year = int(month_only.group(2)) if month_only.group(2) else None
        span = _month_span(month, year, today)
        first = span.start if isinstance(span, Between) else date(today.year, month, 1)
        return Until(first - timedelta(days=1)), None  # "before March" and "by March": before March starts
    day = _explicit_date(text, today)
    if day is None:
        return None, None
    return _before(day, inclusive=inclusive), None


@_rule(r"\b(?:in|during)\s+" + MONTH_EN + r"(?:\s+(\d{4}))?\b")
def _in_month(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return _month_span(_MONTHS[m.group(1)], int(m.group(2)) if m.group(2) else None, today), None


@_rule(r"\b(?:in\s+)?(?:q([1-4])|(first|1st|second|2nd|third|3rd|fourth|4th)\s+quarter)(?:\s+(?:of\s+)?(\d{4}))?\b")
def _in_quarter(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    quarter = int(m.group(1)) if m.group(1) else _ORDINAL_Q[m.group(2)]
    return _quarter_span(quarter, int(m.group(3)) if m.group(3) else None, today), None


@_rule(r"\b(?:next|in)\s+(\d{1,3})\b(?!\s*(?:%|k\b|m\b|accounts?|seats?|users?))")
def _next_bare(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return Within(int(m.group(1))), None  # "renewals next 30": days


@_rule(r"\b(\d{1,4})\s*(days?|d|weeks?|wks?|w|months?|mos?|years?|yrs?)\b")
def _bare_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    n, unit = int(m.group(1)), m.group(2)
    return Within(n * _unit_days(unit)[0]), _period(n, unit)


@_rule(r"\b(ytd|year to date|this year so far|so far this year)\b")
def _ytd(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    return None, f"{today.month}m"


# --- Chinese -----------------------------------------------------------------------------------------------------

def _zh_n(text: str) -> float | None:
    if text == "半":
        return 0.5
    return zh_number(text)


def _zh_days(raw: str, unit: str) -> int | None:
    """Days in "90天", "两周", "6个月", "半年" (six months of 30 days, as "6个月")."""
    if raw == "半" and unit == "年":
        return 180
    n = _zh_n(raw)
    return None if n is None else round(n * _unit_days(unit)[0])


@_rule(r"(?:未来|接下来|今后|之后|往后)?的?\s*" + NUM_ZH + r"\s*" + UNIT_ZH + r"\s*(?:内|之内|以内|里)")
def _zh_within(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    days = _zh_days(m.group(1), m.group(2))
    return (Within(days), None) if days else (None, None)


@_rule(r"(?:未来|接下来|今后|往后)的?\s*" + NUM_ZH + r"\s*" + UNIT_ZH)
def _zh_next_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    days = _zh_days(m.group(1), m.group(2))
    return (Within(days), None) if days else (None, None)


@_rule(r"(?:过去|最近|近|前|这|上)的?\s*" + NUM_ZH + r"\s*" + UNIT_ZH + r"(?:来|以来|里)?")
def _zh_last_n(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    raw, unit = m.group(1), m.group(2)
    if raw == "半":
        return None, "6m" if unit in ("年",) else _period(1, unit)
    n = zh_number(raw)
    if n is None:
        return None, None
    return None, _period(n, unit)


def _zh_unit(word: str) -> str:
    """The calendar unit a Chinese time word names: 下周 → week, 本月 → month, 下季度 → quarter, 明年 → year."""
    if "周" in word or "星期" in word:
        return "week"
    return "month" if "月" in word else "quarter" if "季" in word else "year"


@_rule(r"(下个?星期|下周|下个?月|下个?季度|下季|明年|来年)")
def _zh_next_unit(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    unit = _zh_unit(m.group(1))
    return _next(unit, today), None


@_rule(r"(本周|这周|这个?星期|本月|这个月|当月|(?<![\d一二三四五六七八九十])月底前|(?<![\d一二三四五六七八九十])月底之前|本季度|这个?季度|本季|季度末前|今年|本年|年底前|年底之前|年内|月内)")
def _zh_this_unit(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    unit = _zh_unit(m.group(1))
    return _this(unit, today), None


@_rule(r"(上个?月|上个?季度|上季|去年|上周|上个?星期)")
def _zh_last_unit(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    unit = _zh_unit(m.group(1))
    return None, _period(1, unit)


@_rule(r"(\d{1,2}|[一二三四五六七八九十]{1,3})\s*月(?:份)?\s*(?:底|末)\s*(?:之前|以前|前)")
def _zh_by_month_end(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    month = zh_number(m.group(1))  # "一月底前": up to the last day of January
    if month is None or not 1 <= month <= 12:
        return None, None
    return _month_end(month, None, today), None


@_rule(r"(\d{1,2}|[一二三四五六七八九十]{1,3})\s*月(?:份)?\s*(?:(\d{1,2})\s*[日号])?\s*(之前|以前|前)")
def _zh_before_month(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    month = zh_number(m.group(1))
    if month is None or not 1 <= month <= 12:
        return None, None
    year = today.year if month > today.month or (month == today.month and m.group(2)) else today.year + 1
    if m.group(2):
        day = date(year, month, min(int(m.group(2)), calendar.monthrange(year, month)[1]))
        return Until(day - timedelta(days=1)), None
    return Until(date(year, month, 1) - timedelta(days=1)), None


@_rule(r"(?:第)?([一二三四1-4])\s*季度")
def _zh_quarter(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    q = zh_number(m.group(1))
    if q is None or not 1 <= q <= 4:
        return None, None
    return _quarter_span(q, None, today), None


@_rule(r"(\d{1,2}|[一二三四五六七八九十]{1,3})\s*月(?:份)?(?:内|里|期间)?")
def _zh_in_month(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    month = zh_number(m.group(1))
    if month is None or not 1 <= month <= 12:
        return None, None
    return _month_span(month, None, today), None


@_rule(NUM_ZH + r"\s*" + UNIT_ZH)
def _zh_bare(m: re.Match[str], today: date) -> tuple[Window | None, str | None]:
    raw, unit = m.group(1), m.group(2)
    n = _zh_n(raw)
    if n is None or (unit == "月" and raw != "半"):  # "3月" is March, handled above; "3个月" is a span
        return None, None
    days = _zh_days(raw, unit) or 0
    period = "6m" if raw == "半" and unit == "年" else (_period(int(n), unit) if n >= 1 else None)
    return Within(days), period


def find_times(text: str, today: date) -> list[TimeSlot]:
    """Every time phrase in a normalised text, earliest first, longest where two overlap."""
    found: list[TimeSlot] = []
    taken: list[tuple[int, int]] = []
    for pattern, handler in _PATTERNS:
        for m in pattern.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            window, period = handler(m, today)
            if window is None and period is None:
                continue
            if isinstance(window, Within) and window.days <= 0:
                continue
            found.append(TimeSlot(m.start(), m.end(), window, period))
            taken.append((m.start(), m.end()))
    return sorted(found, key=lambda s: s.start)


def window_days(window: Window, today: date) -> int:
    """The `renewals N` that covers a window starting today."""
    if isinstance(window, Within):
        return window.days
    if isinstance(window, Until):
        return max((window.last_day - today).days, 0)
    raise ValueError("a window that starts later has no day count")
