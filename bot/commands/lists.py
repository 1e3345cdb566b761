"""Portfolio lists: `at-risk` and `renewals`."""

from __future__ import annotations

from typing import Annotated

from rapidfuzz import fuzz, process
from sqlalchemy import select
from sqlmodel import col

from bot.format import grade, money, signed
from bot.i18n import add_messages, t
from bot.messages import Card, Reply, Section
from bot.money import reply_rates, total_text, totals_note
from bot.permissions import coverage
from bot.router import Context, Param, UserError, command
from lifecycle.models import Account
from lifecycle.portfolio import PortfolioRow, Scope, at_risk, renewals
from lifecycle.risk import reasons_text

SHOW = 15

add_messages({"risk_why": {"en": "why: {reasons}", "zh": "原因：{reasons}"}})


_MINE_WORDS = ("mine", "my", "我的", "我负责的")
_ALL_WORDS = ("all", "全部", "所有")


def _known_segment(ctx: Context, word: str) -> str:
    """A segment named in a list command, checked against the stored segments: a misspelt one ("enterprize") is
    refused with the nearest, never silently answered for everyone."""
    segments = sorted({s for (s,) in ctx.session.execute(select(col(Account.segment)).distinct()).all() if s})
    for segment in segments:
        if segment.casefold() == word.casefold():
            return segment
    close = process.extract(word, segments, scorer=fuzz.WRatio, limit=2, score_cutoff=70)
    hint = ctx.t("suggestions", names=", ".join(f"`{c[0]}`" for c in close)) if close else ""
    raise UserError(ctx.t("unknown_segment", segment=word, segments=", ".join(segments) or "—") + hint)


def _scope(ctx: Context, which: str | None, segment: str | None) -> tuple[Scope, str]:
    if which is None and segment is not None:  # `at-risk enterprise`, `风险 我的`: the word after the command
        folded = segment.casefold()
        which, segment = ("mine", None) if folded in _MINE_WORDS else ("all", None) if folded in _ALL_WORDS \
            else ("segment", segment)
    covered = coverage(ctx.session, ctx.user, ctx.services.settings.csm_read_scope,
                       which if which in ("mine", "all") else "all" if which == "segment" else None)
    owner_id = covered.ids
    if which == "segment" or (which == "mine" and segment):
        if not segment:
            raise UserError(
                ctx.t("missing_argument", command=ctx.spec.name, argument="<segment>", usage=ctx.spec.usage())
            )
        name = _known_segment(ctx, segment)
        label = t("scope_segment", ctx.lang, segment=name)
        if owner_id is not None:
            label = f"{t(f'scope_{covered.key}', ctx.lang)} · {label}"
        return Scope(owner_id=owner_id, segment=name), label
    if segment:
        raise UserError(ctx.t("bad_argument", value=segment, argument="<segment>", command=ctx.spec.name,
                              usage=ctx.spec.usage()))
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
         zh="风险客户（红色、关键信号、快速下滑或流失风险高），每行附原因，按涉及 ARR 从大到小。")
def at_risk_cmd(
    ctx: Context,
    which: Annotated[str | None, Param("word", choices=("mine", "all", "segment"))] = None,
    segment: Annotated[str | None, Param("word", label="segment")] = None,
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


@command("renewals", aliases=("续约",), zh="未来 N 天（默认 90）内续约的客户，最近的在前。")
def renewals_cmd(
    ctx: Context,
    days: Annotated[int, Param("int", label="days")] = 90,
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
