"""Money across currencies: a mixed-currency portfolio imported from CSV, its totals checked to the cent against a
hand computation in every list (portfolio, renewals, at-risk, find), the per-currency totals when a rate is
missing, the rates import (all-or-nothing), and how the factors are found (direct, inverted, across a base)."""

from __future__ import annotations

import math
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select, update
from sqlmodel import Session, col

from bot.core.format import money
from bot.core.messages import Card, Incoming
from bot.core.router import Router, Services
from bot.push.digests import weekly_reply
from lifecycle.intake.importers import import_csv
from lifecycle.reports.analytics import Period, retention
from lifecycle.reports.money import Rates, builtin_rates, load_rates
from lifecycle.reports.overview import portfolio_totals
from lifecycle.reports.portfolio import Scope, at_risk, renewals
from lifecycle.reports.search import parse_filters, search
from lifecycle.store.errors import ImportFailed
from lifecycle.store.models import Account, ExchangeRate
from lifecycle.store.settings import load_settings

TODAY = date(2026, 12, 5)
MANAGER = "maya@example.com"

USERS = "email,name,role\nmaya@example.com,Maya Chen,manager\nsam@example.com,Sam Ortiz,csm\n"
# Cents on purpose: the totals must be right to the cent. R… accounts are red (set below), so they are at risk.
ACCOUNTS = """external_id,name,owner_email,arr,currency,renewal_date,segment
U1,Union Freight,sam@example.com,120000.10,USD,2027-01-04,enterprise
U2,Upland Foods,sam@example.com,45500.55,usd,2027-06-30,smb
R1,Rhein Logistik,maya@example.com,80000.33,EUR,2027-02-03,enterprise
E2,Elbe Media,maya@example.com,12345.67,EUR,2026-12-20,smb
R2,Regent Retail,sam@example.com,99999.99,GBP,2026-12-25,enterprise
G2,Glasgow Tools,maya@example.com,7000.01,GBP,2027-09-01,smb
"""
# EUR's newest rate on or before TODAY is 2026-12-01's; the older one and the future one are not used. GBP's
# base is given, EUR's is the reporting currency by default.
RATES = """date,currency,rate,base
2026-11-01,EUR,1.0400,
2026-12-01,EUR,1.0523,
2026-12-01,GBP,1.2611,USD
2027-01-15,EUR,2.0000,USD
"""
RATE = {"USD": Decimal("1"), "EUR": Decimal("1.0523"), "GBP": Decimal("1.2611")}
ARR = {"U1": ("120000.10", "USD"), "U2": ("45500.55", "USD"), "R1": ("80000.33", "EUR"),
       "E2": ("12345.67", "EUR"), "R2": ("99999.99", "GBP"), "G2": ("7000.01", "GBP")}


def hand_total(*ids: str) -> float:
    """Σ per currency of the accounts' ARR × that currency's rate, rounded to the cent (by hand, in Decimal)."""
    per: dict[str, Decimal] = {}
    for i in ids:
        amount, currency = ARR[i]
        per[currency] = per.get(currency, Decimal(0)) + Decimal(amount)
    total = sum((value * RATE[c] for c, value in per.items()), Decimal(0))
    return float(total.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def _import(session: Session, tmp_path: Path, kind: str, text: str) -> None:
    path = tmp_path / f"{kind}.csv"
    path.write_text(text, encoding="utf-8")
    import_csv(session, kind, path)
    session.commit()


@pytest.fixture
def mixed(engine: Engine, tmp_path: Path) -> Engine:
    with Session(engine) as s:
        for kind, text in (("users", USERS), ("accounts", ACCOUNTS), ("rates", RATES)):
            _import(s, tmp_path, kind, text)
        s.execute(update(Account).where(col(Account.external_id).in_(["R1", "R2"]))
                  .values(health_grade="red", health_score=31.0, health_at=TODAY))
        s.commit()
    return engine


def _router(engine: Engine, today: date = TODAY) -> Router:
    settings = load_settings(database_url="sqlite://")
    return Router(Services(engine=engine, settings=settings, today=lambda: today))


def _card(router: Router, text: str) -> Card:
    reply = router.handle(Incoming(platform="console", sender_id=MANAGER, text=text))
    assert reply.cards, reply.text
    return reply.cards[0]


def test_mixed_currency_totals_are_right_to_the_cent_everywhere(mixed: Engine) -> None:
    everyone = tuple(ARR)
    with Session(mixed) as s:
        rates = load_rates(s, "USD", on=TODAY)
        assert rates.days == {"EUR": date(2026, 12, 1), "GBP": date(2026, 12, 1)}
        totals = portfolio_totals(s, rates=rates)
        assert totals.arr.amount == hand_total(*everyone)
        assert totals.arr_by_grade["red"].amount == hand_total("R1", "R2")
        assert totals.arr.by_currency == {"USD": 165500.65, "EUR": 92346.0, "GBP": 107000.0}
        rows, count, stake = at_risk(s, Scope(), rates=rates)
        assert ({r.name for r in rows}, stake.amount) == ({"Rhein Logistik", "Regent Retail"}, hand_total("R1", "R2"))
        _rows, count, renewing, _risky = renewals(s, Scope(), days=90, today=TODAY, rates=rates)
        assert (count, renewing.amount) == (4, hand_total("U1", "R1", "E2", "R2"))
        found = search(s, parse_filters("segment=enterprise"), today=TODAY, rates=rates)
        assert found.arr.amount == hand_total("U1", "R1", "R2")
        # Largest ARR in the reporting currency first: £99,999.99 ≈ $126,110 comes before $120,000.10.
        assert [r.name for r in found.rows] == ["Regent Retail", "Union Freight", "Rhein Logistik"]

    router = _router(mixed)
    note = "totals in USD at rates of 2026-12-01"
    portfolio = _card(router, "portfolio")
    fields = {f.label: f.value for f in portfolio.fields}
    assert fields["ARR (active)"] == money(hand_total(*everyone))
    assert fields["ARR 🔴 red"].startswith(money(hand_total("R1", "R2")) + " (")
    assert portfolio.freshness == note
    risk = _card(router, "at-risk")
    assert f"{money(hand_total('R1', 'R2'))} ARR at stake" in risk.subtitle
    assert risk.freshness == note
    # Each account's own ARR stays in its own currency.
    assert any(line.startswith("*Regent Retail* · £100,000 · 31 🔴 red") for line in risk.sections[0].lines)
    renewal = _card(router, "renewals 90")
    assert renewal.subtitle.startswith(f"4 renewing, {money(hand_total('U1', 'R1', 'E2', 'R2'))} ARR;")
    assert renewal.freshness == note
    find = _card(router, "find segment=enterprise")
    assert find.subtitle == f"3 accounts, {money(hand_total('U1', 'R1', 'R2'))} ARR"
    assert find.freshness == note
    # A list in the reporting currency only needs no rate and says nothing about rates.
    assert _card(router, "find name=union").freshness == ""


def test_a_currency_without_a_rate_is_shown_per_currency_never_summed(mixed: Engine, tmp_path: Path) -> None:
    with Session(mixed) as s:
        _import(s, tmp_path, "accounts", "external_id,name,owner_email,arr,currency,renewal_date,segment\n"
                "S1,Stockholm Design,maya@example.com,500000,SEK,2026-12-28,enterprise\n")
        s.execute(update(Account).where(col(Account.external_id) == "S1").values(health_grade="red"))
        s.commit()
        rates = load_rates(s, "USD", on=TODAY)
        totals = portfolio_totals(s, rates=rates)
        assert (totals.arr.amount, totals.arr.missing) == (None, ("SEK",))
        assert totals.arr.by_currency == {"USD": 165500.65, "EUR": 92346.0, "GBP": 107000.0, "SEK": 500000.0}
        assert totals.arr_share("red") is None
        # A total without the SEK account still converts.
        assert totals.arr_by_grade["unknown"].amount == hand_total("U1", "U2", "E2", "G2")

    router = _router(mixed)
    per_currency = "$165,501 + €92,346 + £107,000 + 500,000 SEK"
    fields = {f.label: f.value for f in _card(router, "portfolio").fields}
    assert fields["ARR (active)"] == per_currency
    assert fields["ARR 🔴 red"] == "€80,000 + £100,000 + 500,000 SEK (3 accounts)"  # no share of a sum not made
    risk = _card(router, "at-risk")
    assert "€80,000 + £100,000 + 500,000 SEK ARR at stake" in risk.subtitle
    assert risk.freshness == ("no exchange rate for SEK: totals that include it are shown per currency, not added up "
                              "(`csbot import rates FILE`)")
    renewal = _card(router, "renewals 90")
    assert renewal.subtitle.startswith("5 renewing, $120,000 + €92,346 + £100,000 + 500,000 SEK ARR;")
    find = _card(router, "find segment=enterprise")
    assert find.subtitle == "4 accounts, $120,000 + €80,000 + £100,000 + 500,000 SEK ARR"
    assert "no exchange rate for SEK" in find.freshness
    zh = router.handle(Incoming(platform="console", sender_id=MANAGER, text="lang zh"))
    assert zh.text
    assert "SEK 没有汇率" in _card(router, "风险").freshness


def test_retention_converts_at_constant_rates_or_splits_per_currency(mixed: Engine, tmp_path: Path) -> None:
    # The import recorded each account as a new logo on the day it ran.
    imported = date.today()
    with Session(mixed) as s:
        rates = load_rates(s, "USD", on=TODAY)
        summary = retention(s, Period(12, "m"), today=imported, rates=rates)
        assert (summary.currency, summary.new_logos, round(summary.new_arr, 2)) == ("USD", 6, hand_total(*ARR))
        assert summary.currencies == ("USD", "EUR", "GBP")
        _import(s, tmp_path, "accounts", "external_id,name,arr,currency\nS1,Stockholm Design,500000,SEK\n")
        split = retention(s, Period(12, "m"), today=imported, rates=rates)
    assert split.currency is None and math.isnan(split.new_arr) and split.new_logos == 7
    assert {c: round(p.new_arr, 2) for c, p in split.by_currency.items()} == {
        "USD": 165500.65, "EUR": 92346.0, "GBP": 107000.0, "SEK": 500000.0,
    }  # fmt: skip
    card = _card(_router(mixed, today=imported), "retention")
    fields = {f.label: f.value for f in card.fields}
    assert fields["New logos"] == "7 · $165,501 + €92,346 + £107,000 + 500,000 SEK ARR"
    assert "no exchange rate for SEK" in card.freshness


def test_a_malformed_rates_file_reports_its_rows_and_writes_nothing(mixed: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "bad-rates.csv"
    bad.write_text("date,currency,rate,base\n2026-12-02,EUR,1.06,\n2026-12-02,EURO,1.1,\n2026-12-02,GBP,0,\n"
                   "2026-12-02,JPY,abc,\n2026-31-12,CHF,1.1,\n2026-12-02,USD,1,\n2026-12-02,EUR,1.07,USD\n",
                   encoding="utf-8")
    with Session(mixed) as s:
        before = s.execute(select(func.count()).select_from(ExchangeRate)).scalar_one()
        with pytest.raises(ImportFailed) as failed:
            import_csv(s, "rates", bad)
        s.rollback()
        assert s.execute(select(func.count()).select_from(ExchangeRate)).scalar_one() == before
    assert failed.value.problems == [
        "row 3, column currency: not a 3-letter currency code ('EURO')",
        "row 4, column rate: an exchange rate must be above 0 ('0')",
        "row 5, column rate: not a number ('abc')",
        "row 6, column date: not a date (expected YYYY-MM-DD, got '2026-31-12')",
        "row 7, column currency: the same currency as the base (USD): nothing to convert",
        "row 8, column currency: duplicate of row 2 (same date, currency and base)",
    ]


def test_rates_convert_directly_inverted_or_across_a_base(session: Session) -> None:
    # No rate imported yet: the built-in table, dated, stands in.
    builtin = load_rates(session, "USD", on=TODAY)
    assert builtin.builtin == builtin_rates().as_of and builtin.factor("EUR") == builtin_rates().rates["EUR"]
    # Rates against EUR (as the ECB publishes them): USD per EUR, GBP per EUR.
    session.add_all([
        ExchangeRate(day=date(2026, 12, 1), currency="USD", base="EUR", rate=0.95),
        ExchangeRate(day=date(2026, 11, 30), currency="GBP", base="EUR", rate=1.2),
    ])
    session.commit()
    rates = load_rates(session, "USD", on=TODAY)
    assert rates.builtin is None
    assert rates.factor("EUR") == pytest.approx(1 / 0.95)
    assert rates.factor("GBP") == pytest.approx(1.2 / 0.95)
    assert rates.days["GBP"] == date(2026, 11, 30)  # a chain is as old as its oldest rate
    assert rates.factor("JPY") is None  # once rates are imported, the built-in table is no longer read
    total = rates.total({"USD": 10.0, "GBP": 100.0})
    assert total.amount == round(10 + 100 * 1.2 / 0.95, 2)
    basis = rates.basis(total)
    assert (basis.days, basis.missing, basis.builtin) == ((date(2026, 11, 30),), (), None)
    # Rates dated after the day asked about are not used.
    assert load_rates(session, "USD", on=date(2026, 11, 30)).factor("GBP") is None


def test_the_weekly_digest_converts_its_totals_and_says_so() -> None:
    part = pd.DataFrame({
        "owner_id": [1, 1, 1], "stage": ["renewal", "adoption", "adoption"], "grade": ["red", "green", "green"],
        "currency": ["USD", "EUR", "USD"], "accounts": [1, 2, 1], "arr": [100.0, 200.0, 50.0],
        "score_sum": [30.0, 160.0, 90.0], "scored": [1, 2, 1],
    })
    rates = Rates("USD", {"EUR": 1.1}, {"EUR": date(2026, 12, 1)})
    card = weekly_reply(part, lang="en", team=True, local_day=TODAY, rates=rates).cards[0]
    fields = {f.label: f.value for f in card.fields}
    assert fields["ARR"] == "$370" and fields["ARR 🟢 green"] == "$270 (73 %)"
    assert card.sections[0].lines[0] == "adoption: 3 · $270 · 🔴 0 🟡 0 🟢 3"  # no stage machine given: raw names
    assert card.freshness == "totals in USD at rates of 2026-12-01"
    missing = weekly_reply(part, lang="en", team=True, local_day=TODAY, rates=Rates("USD")).cards[0]
    assert {f.label: f.value for f in missing.fields}["ARR"] == "$150 + €200"
    assert missing.freshness.startswith("no exchange rate for EUR")
