"""How numbers read in chat: money, grades with their colour, signed changes and ages."""

from __future__ import annotations

import math

from bot.core.i18n import t

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "CNY": "¥", "JPY": "¥"}
GRADE_ICON = {"green": "🟢", "yellow": "🟡", "red": "🔴"}


def money(amount: float | None, currency: str = "USD") -> str:
    """`$120,000`, `€1.2M`: whole units below a million, one decimal in millions."""
    if amount is None or (isinstance(amount, float) and math.isnan(amount)):
        return "—"
    symbol = _SYMBOLS.get(currency.upper(), "")
    suffix = "" if symbol else f" {currency.upper()}"
    if abs(amount) >= 1_000_000:
        return f"{symbol}{amount / 1_000_000:,.1f}M{suffix}"
    return f"{symbol}{amount:,.0f}{suffix}"


def grade(grade_name: str | None, lang: str = "en") -> str:
    if not grade_name:
        return "—"
    label = t(f"grade_{grade_name}", lang) if grade_name in GRADE_ICON else grade_name
    return f"{GRADE_ICON.get(grade_name, '⚪')} {label}"


def signed(value: float | None) -> str:
    """`+3`, `−14`, `±0` (a real minus sign reads better in chat)."""
    if value is None or math.isnan(value):
        return "n/a"
    rounded = round(value)
    if rounded == 0:
        return "±0"
    return f"+{rounded}" if rounded > 0 else f"−{abs(rounded)}"


def score_line(
    score: float | None, grade_name: str | None, delta_7: float | None, delta_30: float | None, lang: str = "en"
) -> str:
    """`58 🟡 yellow · 7 d −14 · 30 d −20` — the score, what it means, and where it is heading."""
    if score is None or math.isnan(score):
        return "—"
    parts = [f"{score:.0f} {grade(grade_name, lang)}"]
    if delta_7 is not None:
        parts.append(t("score_change", lang, days=7, change=signed(delta_7)))
    if delta_30 is not None:
        parts.append(t("score_change", lang, days=30, change=signed(delta_30)))
    return " · ".join(parts)
