"""How totals of money read in chat: one amount in the reporting currency, or one per currency where a rate is
missing, and the one line (a card's footnote, a chart's caption) that says which rates the totals rest on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.core.format import money
from bot.core.i18n import t
from lifecycle.reports.money import Basis, Rates, Total, load_rates

if TYPE_CHECKING:
    from bot.core.router import Context


def reply_rates(ctx: Context) -> Rates:
    """The rates a reply's totals convert with: into the reporting currency, as of the reply's day."""
    return load_rates(ctx.session, ctx.services.settings.reporting_currency, on=ctx.today)


def total_text(total: Total) -> str:
    """`$1.2M`, or per currency when a rate is missing: `$850,000 + €120,000 + 40,000 SEK`."""
    if total.amount is not None:
        return money(total.amount, total.currency)
    return " + ".join(money(value, code) for code, value in total.by_currency.items())


def with_share(part: Total, whole: Total) -> str:
    """`$120,000 (42 %)`; without the share when the totals are only known per currency."""
    share = part.share_of(whole)
    return total_text(part) + ("" if share is None else f" ({share:.0f} %)")


def totals_note(rates: Rates, *totals: Total, lang: str) -> str:
    """The line that says, once per reply, what the totals shown rest on: `totals in USD at rates of 2026-12-01`,
    the built-in table and its date, and any currency without a rate; "" when no total needed a rate."""
    return basis_note(rates.basis(*totals), lang)


def basis_note(basis: Basis, lang: str) -> str:
    """`totals_note` for a basis computed elsewhere (e.g. retention, from the accounts' currencies)."""
    parts = []
    if basis.builtin is not None:
        parts.append(t("money_builtin", lang, currency=basis.currency, day=basis.builtin.isoformat()))
    elif basis.days:
        first, last = basis.days[0].isoformat(), basis.days[-1].isoformat()
        days = first if first == last else t("money_days", lang, first=first, last=last)
        parts.append(t("money_at", lang, currency=basis.currency, days=days))
    if basis.missing:
        parts.append(t("money_missing", lang, currencies=", ".join(basis.missing)))
    return ("；" if lang == "zh" else "; ").join(parts)
