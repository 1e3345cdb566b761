"""Portfolio lists: `at-risk` and `renewals`."""

from __future__ import annotations

from typing import Annotated

from bot.core.format import grade, money, signed
from bot.core.i18n import t
from bot.core.messages import Card, Reply, Section
from bot.core.money import reply_rates, total_text, totals_note
from bot.core.permissions import coverage
from bot.core.router import Context, Param, command
from lifecycle.reports.portfolio import PortfolioRow, Scope, at_risk, renewals
from lifecycle.scoring.risk import reasons_text

SHOW = 15


def _scope(ctx: Context, which: str | None, segment: str | None) -> tuple[Scope, str]:
    # A segment without `mine` covers everyone's accounts in it, as `at-risk segment <s>` always has.
    covered = coverage(ctx.session, ctx.user, ctx.services.settings.csm_read_scope,
                       which if which is not None else "all" if segment else None)
    owner_id = covered.ids
    if segment:
        label = t("scope_segment", ctx.lang, segment=segment)
        if owner_id is not None:
            label = f"{t(f'scope_{covered.key}', ctx.lang)} · {label}"
        return Scope(owner_id=owner_id, segment=segment), label
    return Scope(owner_id=owner_id), t(f"scope_{covered.key}", ctx.lang)


def _line(row: PortfolioRow, ctx: Context, *, renewal: bool) -> str:
    parts = [f"*{row.name}*", money(row.arr, row.currency)]
    if row.score is not None:
        trend = f" ({signed(row.delta_7)} 7 d)" if row.delta_7 is not None else ""
        parts.append(f"{row.score:.0f} {grade(row.grade, ctx.lang)}{trend}")
    if renewal and row.renewal_date:
        parts.append(f"{row.renewal_date.isoformat()} ({(row.renewal_date - ctx.today).days} d)")
    if row.reasons:
        parts.append(ctx.t("risk_why", reasons=reasons_text(row.reasons, ctx.lang, ctx.services.scorecard())))
    if row.top_drag:
        label = ctx.services.scorecard().label(row.top_drag, ctx.lang)
        parts.append(ctx.t("main_drag", measure=label))
    parts.append(row.owner or t("nobody", ctx.lang))
    return " · ".join(parts)


@command("at-risk", aliases=("风险", "atrisk"),
         zh="风险客户（红色、关键信号、快速下滑或流失风险高），每行附原因，按涉及 ARR 从大到小。",
         examples=("at-risk", "at-risk mine", "at-risk enterprise", "at-risk mine segment enterprise"))
def at_risk_cmd(
    ctx: Context,
    which: Annotated[str | None, Param("word", choices=("mine", "all"))] = None,
    segment: Annotated[str | None, Param("segment")] = None,
) -> Reply:
    """Accounts at risk (red, a critical signal, falling fast, or a high churn risk), each with why; largest ARR
    at stake first."""
    scope, label = _scope(ctx, which, segment)
    rates = reply_rates(ctx)
    rows, count, arr = at_risk(ctx.session, scope, limit=SHOW, rates=rates, scorecard=ctx.services.scorecard())
    if not count:
        return Reply(text=ctx.t("at_risk_empty", scope=label))
    lines = [_line(r, ctx, renewal=False) for r in rows]
    if count > len(rows):
        lines.append(ctx.t("more_rows", count=count - len(rows)))
    summary = ctx.t("at_risk_summary", count=count, arr=total_text(arr))
    return Reply(
        cards=[Card(title=ctx.t("at_risk_title", scope=label), subtitle=summary, sections=(Section("", tuple(lines)),),
                    freshness=totals_note(rates, arr, lang=ctx.lang))]
    )


@command("renewals", aliases=("续约",), zh="未来 N 天（默认 90）内续约的客户，最近的在前。",
         examples=("renewals", "renewals 30 mine", "renewals 3 months all"))
def renewals_cmd(
    ctx: Context,
    days: Annotated[int, Param("days")] = 90,
    which: Annotated[str | None, Param("word", choices=("mine", "all"))] = None,
) -> Reply:
    """Accounts renewing in the next N days (default 90), soonest first, with their health."""
    scope, label = _scope(ctx, which, None)
    rates = reply_rates(ctx)
    rows, count, arr, risky = renewals(ctx.session, scope, days=days, today=ctx.today, limit=SHOW, rates=rates)
    if not count:
        return Reply(text=ctx.t("renewals_empty", days=days, scope=label))
    lines = [_line(r, ctx, renewal=True) for r in rows]
    if count > len(rows):
        lines.append(ctx.t("more_rows", count=count - len(rows)))
    summary = ctx.t("renewals_summary", count=count, arr=total_text(arr), risky=risky)
    return Reply(
        cards=[
            Card(
                title=ctx.t("renewals_title", days=days, scope=label),
                subtitle=summary,
                sections=(Section("", tuple(lines)),),
                freshness=totals_note(rates, arr, lang=ctx.lang),
            )
        ]
    )
