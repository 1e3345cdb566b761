"""Money across currencies: exchange rates into the reporting currency, and totals converted with them.

Rates are stored in `exchange_rate`, one row per day, currency and base ("1 <currency> = <rate> <base>"), imported
with `csbot import rates FILE`. Until any rate has been imported, the small built-in table `config/rates.toml`
(dated, approximate, and labelled as such wherever it is used) stands in; once rates have been imported it is no
longer read, so a currency missing from them is a missing rate, not a silent fallback.

`load_rates` reads each pair's latest rate on or before a day in one query and turns them into one factor per
currency into the reporting currency: directly, inverted (a USD→EUR rate converts EUR into USD), or across a
shared base (rates against EUR convert GBP into USD). A factor carries the day of its rate (the older one when two
rates are chained).

A `Total` is a sum of amounts in possibly several currencies. When every currency in it has a rate it is converted
(to the cent) into the reporting currency; otherwise it stays per currency and is never added across currencies.
Only totals convert: each account's own amount stays in its own currency. Conversion is vectorised: amounts are
grouped per currency (in SQL or pandas) and each group is multiplied by its currency's factor; `Rates.in_sql`
gives the same conversion as a SQL expression for ordering a query by converted amount.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import and_, case, func, null, select
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session

from lifecycle.store.models import ExchangeRate
from lifecycle.store.settings import CONFIG_DIR, get_settings, read_toml, validate_config

BUILTIN_RATES_FILE = CONFIG_DIR / "rates.toml"
CURRENCY_CODE = re.compile(r"[A-Z]{3}")


def currency_code(text: str) -> str:
    """`text` as an upper-case 3-letter currency code; ValueError when it is not one."""
    code = text.strip().upper()
    if not CURRENCY_CODE.fullmatch(code):
        raise ValueError(f"not a 3-letter currency code ({text!r})")
    return code


class BuiltinRates(BaseModel):
    """The built-in default table: the value of one unit of each currency in `base`, as of `as_of`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    as_of: date
    base: str = "USD"
    rates: dict[str, float] = Field(min_length=1)

    @field_validator("base")
    @classmethod
    def _base_code(cls, value: str) -> str:
        return currency_code(value)

    @field_validator("rates")
    @classmethod
    def _positive_rates(cls, value: dict[str, float]) -> dict[str, float]:
        out = {}
        for code, rate in value.items():
            if not rate > 0:
                raise ValueError(f"{code}: a rate must be above 0 (got {rate})")
            out[currency_code(code)] = float(rate)
        return out


@lru_cache(maxsize=1)
def builtin_rates() -> BuiltinRates:
    """The built-in default exchange rates (`config/rates.toml`)."""
    raw = read_toml(BUILTIN_RATES_FILE, "built-in exchange rates")
    return validate_config(BuiltinRates, raw, str(BUILTIN_RATES_FILE))


@dataclass(frozen=True)
class Quote:
    """One rate: 1 `currency` = `rate` `base`, on `day`."""

    currency: str
    base: str
    rate: float
    day: date


@dataclass(frozen=True)
class Total:
    """A sum of money: `by_currency` holds each currency's own sum (the reporting currency first); `amount` is
    their sum converted into `currency`, rounded to the cent, or None when a currency in it has no rate
    (`missing`) — then the total can only be read per currency."""

    currency: str
    by_currency: Mapping[str, float] = field(default_factory=dict)
    amount: float | None = 0.0
    missing: tuple[str, ...] = ()

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(self.by_currency)

    def share_of(self, whole: Total) -> float | None:
        """This total as a percentage of `whole` (0 when `whole` is 0); None when either is not converted."""
        if self.amount is None or whole.amount is None:
            return None
        return 100.0 * self.amount / whole.amount if whole.amount else 0.0


@dataclass(frozen=True)
class Basis:
    """What a set of totals rests on: the days of the rates that converted them (oldest first), the currencies
    that have no rate, and the built-in table's date when its rates were used."""

    currency: str
    days: tuple[date, ...] = ()
    missing: tuple[str, ...] = ()
    builtin: date | None = None


@dataclass(frozen=True)
class Rates:
    """One factor per convertible currency into the reporting currency `currency`, with the day of its rate;
    `builtin` is the built-in table's date when that table is the source."""

    currency: str
    factors: Mapping[str, float] = field(default_factory=dict)
    days: Mapping[str, date] = field(default_factory=dict)
    builtin: date | None = None

    def factor(self, code: str) -> float | None:
        """How many units of the reporting currency one unit of `code` is worth; None without a rate."""
        code = str(code).upper()
        return 1.0 if code == self.currency else self.factors.get(code)

    def _all_factors(self) -> dict[str, float]:
        return {**self.factors, self.currency: 1.0}

    def convert(self, amounts: npt.ArrayLike, currencies: npt.ArrayLike) -> np.ndarray:
        """Each amount in the reporting currency (NaN where its currency has no rate), element-wise."""
        codes = pd.Series(np.asarray(currencies, dtype=object)).astype(str).str.upper()
        factors = codes.map(self._all_factors()).to_numpy(dtype=float)
        return np.asarray(amounts, dtype=float) * factors

    def in_reporting(self, frame: pd.DataFrame, columns: Sequence[str], *, currency: str = "currency") -> pd.DataFrame:
        """A copy of `frame` with the amount `columns` in the reporting currency on every row whose `currency` has
        a rate (and `currency` set to it); rows without a rate keep their own amounts and currency."""
        out = frame.copy()
        if out.empty:
            return out
        factors = self.convert(np.ones(len(out)), out[currency])
        known = ~np.isnan(factors)
        for name in columns:
            out[name] = np.where(known, out[name].to_numpy(dtype=float) * np.where(known, factors, 1.0),
                                 out[name].to_numpy(dtype=float))
        out[currency] = np.where(known, self.currency, out[currency].astype(str).str.upper().to_numpy())
        return out

    def in_sql(self, amount: Any, currency: Any, *, as_written: bool = False) -> ColumnElement[Any]:
        """`amount` (a column in `currency`) in the reporting currency as a SQL expression; without a rate NULL,
        or the amount as written with `as_written` (to order "largest first" or filter by an amount)."""
        whens = [(currency == code, amount * factor) for code, factor in sorted(self._all_factors().items())]
        return case(*whens, else_=amount if as_written else null())

    def total(self, by_currency: Mapping[str, float]) -> Total:
        """The total of per-currency sums; zero sums are left out (they need no rate)."""
        sums: dict[str, float] = {}
        for code, value in by_currency.items():
            number = float(value or 0.0)
            if math.isfinite(number) and number:
                key = str(code).upper()
                sums[key] = sums.get(key, 0.0) + number
        sums = {c: round(v, 2) for c, v in sorted(sums.items(), key=lambda kv: (kv[0] != self.currency, kv[0]))}
        missing = tuple(c for c in sorted(sums) if self.factor(c) is None)
        amount = None if missing else round(sum(v * (self.factor(c) or 0.0) for c, v in sums.items()), 2)
        return Total(self.currency, sums, amount, missing)

    def sum(self, amounts: npt.ArrayLike, currencies: npt.ArrayLike) -> Total:
        """The total of amounts, each in the currency at the same position."""
        frame = pd.DataFrame({"currency": np.asarray(currencies, dtype=object),
                              "amount": np.asarray(amounts, dtype=float)})
        sums = frame.groupby("currency")["amount"].sum()
        return self.total({str(c): float(v) for c, v in sums.items()})

    def totals(self, frame: pd.DataFrame, by: str | Sequence[str], *, amount: str = "arr",
               currency: str = "currency") -> dict[Hashable, Total]:
        """One total per value of the `by` column(s) of `frame` (a tuple key for several columns)."""
        keys = [by] if isinstance(by, str) else list(by)
        sums = frame.groupby([*keys, currency], sort=True)[amount].sum()
        grouped: dict[Hashable, dict[str, float]] = {}  # key → currency → sum
        for index, value in sums.items():
            parts = index if isinstance(index, tuple) else (index,)
            key = parts[0] if len(keys) == 1 else tuple(parts[:-1])
            grouped.setdefault(key, {})[str(parts[-1])] = float(value)
        return {key: self.total(values) for key, values in grouped.items()}

    def basis(self, *totals: Total) -> Basis:
        """What `totals` rest on (for the one line that says so)."""
        days = {self.days[c] for t in totals if t.amount is not None for c in t.by_currency if c in self.days}
        missing = sorted({c for t in totals for c in t.missing})
        return Basis(self.currency, tuple(sorted(days)), tuple(missing), self.builtin if days else None)

    def basis_of(self, currencies: Iterable[str]) -> Basis:
        """What one total over amounts in `currencies` rests on: converted when none of them lacks a rate."""
        codes = {str(c).upper() for c in currencies}
        missing = tuple(sorted(c for c in codes if self.factor(c) is None))
        days = () if missing else tuple(sorted({self.days[c] for c in codes if c in self.days}))
        return Basis(self.currency, days, missing, self.builtin if days else None)


def _factors(quotes: Iterable[Quote], currency: str) -> tuple[dict[str, float], dict[str, date]]:
    """Factors into `currency` over the rates as a graph: the fewest conversions win (a direct rate over a chain
    through a shared base); a chain is as old as its oldest rate."""
    edges: dict[str, list[tuple[str, float, date]]] = {}
    for q in sorted(quotes, key=lambda q: (q.currency, q.base)):
        # 1 q.currency = q.rate q.base: from base to currency the factor multiplies by the rate.
        edges.setdefault(q.base, []).append((q.currency, q.rate, q.day))
        edges.setdefault(q.currency, []).append((q.base, 1.0 / q.rate, q.day))
    factors: dict[str, float] = {currency: 1.0}
    days: dict[str, date] = {}
    queue = deque([currency])
    while queue:
        here = queue.popleft()
        for there, rate, day in edges.get(here, []):
            if there in factors:
                continue
            factors[there] = factors[here] * rate
            days[there] = min(day, days[here]) if here in days else day
            queue.append(there)
    del factors[currency]
    return factors, days


def load_rates(session: Session, currency: str | None = None, *, on: date | None = None) -> Rates:
    """The factors into `currency` (default: `CSBOT_REPORTING_CURRENCY`) from each pair's latest rate on or before
    `on` (default today), in one query; the built-in table while no rate has been imported at all."""
    code = currency_code(currency or get_settings().reporting_currency)
    day = on or date.today()
    r = ExchangeRate.__table__  # type: ignore[attr-defined]
    latest = (
        select(r.c.currency, r.c.base, func.max(r.c.day).label("day"))
        .where(r.c.day <= day)
        .group_by(r.c.currency, r.c.base)
        .subquery()
    )
    rows = session.execute(
        select(r.c.currency, r.c.base, r.c.rate, r.c.day).join(
            latest, and_(r.c.currency == latest.c.currency, r.c.base == latest.c.base, r.c.day == latest.c.day)
        )
    ).all()
    builtin: date | None = None
    quotes = [Quote(str(c), str(b), float(rate), d) for c, b, rate, d in rows]
    if not quotes and session.execute(select(r.c.id).limit(1)).first() is None:
        table = builtin_rates()
        quotes = [Quote(c, table.base, rate, table.as_of) for c, rate in table.rates.items()]
        builtin = table.as_of
    factors, days = _factors(quotes, code)
    return Rates(code, factors, days, builtin)
