"""Lifecycle analytics in chat: `kpis [stage]`, `funnel [period]`, `retention [period] [segment <s>]`, `cohorts`.

Each answers with a card, a chart and a two-line plain reading of it. Managers and admins see the whole portfolio;
a CSM whose read scope is `own` sees their own book (as `portfolio` and `nps`). The readings live in
`bot.views.readings`, shared with the managers' weekly summary.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from bot.core.format import money
from bot.core.i18n import t
from bot.core.messages import Card, CardField, Image, Reply, Section
from bot.core.money import reply_rates
from bot.core.router import Context, Param, command
from bot.views.analytics_charts import cohorts_png, funnel_png, kpi_png, retention_png, stage_mix_png
from bot.views.cards import stage_label
from bot.views.charts import chart_lang
from bot.views.readings import (
    DEFAULT_FUNNEL,
    DEFAULT_RETENTION,
    cohort_points,
    cohort_reading,
    days_text,
    funnel_reading,
    goal_text,
    kpi_reading,
    kpi_value,
    met_icon,
    money_of,
    pct,
    reason_lines,
    retention_note,
    retention_reading,
    revenue_parts,
)
from lifecycle.reports.analytics import (
    Period,
    Slice,
    cohorts,
    funnel,
    retention,
    retention_monthly,
    stage_distribution_monthly,
    stage_kpis,
)
from lifecycle.scoring.stages import StageMachine

MIX_MONTHS = 12
STUCK_LINES = 8
COHORT_LINES = 8


# ---------------------------------------------------------------------------------------------------- helpers


def _scope(ctx: Context, segment: str | None = None) -> tuple[Slice, str, str]:
    """(slice, scope label in the user's language, scope label for the chart's language)."""
    own = ctx.user.role == "csm" and ctx.services.settings.csm_read_scope == "own"
    owners = (int(ctx.user.id),) if own and ctx.user.id is not None else None
    shown = chart_lang(ctx.lang)
    key = "an_scope_segment" if segment else "an_scope_mine" if owners else "an_scope_all"
    return (Slice(owner_ids=owners, segment=segment), t(key, ctx.lang, segment=segment or ""),
            t(key, shown, segment=segment or ""))


# ------------------------------------------------------------------------------------------------------ kpis


@command("kpis", aliases=("kpi", "指标", "阶段指标"),
         zh="阶段指标：各阶段（或某一阶段 `kpis <阶段>`）的指标与目标对比（附图）。",
         examples=("kpis", "kpis adoption"))
def kpis(ctx: Context, stage: Annotated[str | None, Param("stage")] = None) -> Reply:
    """Stage KPIs against their goals for the portfolio, or one stage (`kpis adoption`), with a chart."""
    machine: StageMachine = ctx.services.stage_machine()
    scope, scope_text, chart_scope = _scope(ctx)
    wanted = stage
    rates = reply_rates(ctx)
    found = stage_kpis(ctx.session, machine, today=ctx.today, stage=wanted, scope=scope, rates=rates)
    if not found:
        label = stage_label(machine, wanted, ctx.lang) if wanted else scope_text
        return Reply(text=ctx.t("kpi_none", stage=label))
    currency = rates.currency  # money KPIs, like their goals, are in the reporting currency
    sections = []
    for name in [s for s in machine.stage_names if any(k.stage == s for k in found)]:
        lines = []
        for k in (k for k in found if k.stage == name):
            label = k.label_zh if ctx.lang == "zh" else k.label
            if k.value is None:
                lines.append(ctx.t("kpi_line_nodata", label=label, goal=goal_text(k, currency, ctx.lang)))
                continue
            lines.append(ctx.t("kpi_line", icon=met_icon(k.met), label=label,
                               value=kpi_value(k.unit, k.value, currency, ctx.lang),
                               goal=goal_text(k, currency, ctx.lang), met=k.accounts_met, count=k.accounts))
        sections.append(Section(stage_label(machine, name, ctx.lang), tuple(lines)))
    title = (ctx.t("kpi_title_stage", stage=stage_label(machine, wanted, ctx.lang), scope=scope_text) if wanted
             else ctx.t("kpi_title", scope=scope_text))
    card = Card(title=title, subtitle=kpi_reading(found, machine, currency, ctx.lang), sections=tuple(sections))
    shown = chart_lang(ctx.lang)
    png = kpi_png(found, t("kpi_chart_title", shown, scope=chart_scope), lang=shown,
                  stage_labels={s: machine.label(s, shown) for s in machine.stage_names})
    return Reply(cards=[card], images=[Image(png=png, filename="stage-kpis.png",
                                             title=ctx.t("kpi_chart_title", scope=scope_text))])


# ---------------------------------------------------------------------------------------------------- funnel


@command("funnel", aliases=("漏斗",),
         zh="漏斗：各阶段进入下一阶段的比例、停留时长中位数和 p90、停滞客户，以及每月阶段分布（附图）；"
            "时间段如 90d、6m、2周、6个月。",
         examples=("funnel", "funnel 6m", "funnel 2 weeks"))
def funnel_cmd(ctx: Context, period: Annotated[Period | None, Param("period")] = None) -> Reply:
    """The stage funnel over a period (default 90d; e.g. 6m): who moved on, time in stage, stuck accounts, charts."""
    machine: StageMachine = ctx.services.stage_machine()
    span = period or DEFAULT_FUNNEL
    scope, scope_text, _chart_scope = _scope(ctx)
    report = funnel(ctx.session, machine, span, today=ctx.today, scope=scope)
    table = report.stages
    lines = tuple(
        ctx.t("fn_line", stage=stage_label(machine, str(s), ctx.lang), moved=int(r["moved_on"]),
              count=int(r["accounts"]), pct=pct(float(r["rate"])), churned=int(r["churned"]),
              median=days_text(float(r["median_days"])), p90=days_text(float(r["p90_days"])),
              stuck=int(r["stuck"]))
        for s, r in table.iterrows()
    )
    sections = [Section(ctx.t("fn_stages"), lines)]
    if report.stuck:
        stuck_lines = [ctx.t("fn_stuck_line", account=s.name, stage=stage_label(machine, s.stage, ctx.lang),
                             days=f"{s.days:.0f}", p90=f"{s.p90_days:.0f}") for s in report.stuck[:STUCK_LINES]]
        if len(report.stuck) > STUCK_LINES:
            stuck_lines.append(ctx.t("more_rows", count=len(report.stuck) - STUCK_LINES))
        sections.append(Section(ctx.t("fn_stuck"), tuple(stuck_lines)))
    card = Card(title=ctx.t("fn_title", period=span.label(ctx.lang), scope=scope_text),
                subtitle=funnel_reading(report, machine, span, ctx.lang), sections=tuple(sections))
    shown = chart_lang(ctx.lang)
    labels = {s: machine.label(s, shown) for s in machine.stage_names}
    png = funnel_png(table, t("fn_chart_title", shown, period=span.label(shown)), lang=shown, stage_labels=labels)
    mix = stage_distribution_monthly(ctx.session, machine, today=ctx.today, months=MIX_MONTHS, scope=scope)
    mix_png = stage_mix_png(mix, t("fn_mix_title", shown), lang=shown, stage_labels=labels,
                            exits=machine.reachable_from_anywhere)
    return Reply(cards=[card], images=[
        Image(png=png, filename="funnel.png", title=ctx.t("fn_chart_title", period=span.label(ctx.lang))),
        Image(png=mix_png, filename="stages-by-month.png", title=ctx.t("fn_mix_title")),
    ])


# ------------------------------------------------------------------------------------------------- retention


def _months(period: Period) -> int:
    months = period.amount if period.unit == "m" else int(np.ceil(period.amount / 30.4))
    return int(min(max(months, 3), 36))


@command("retention", aliases=("留存", "nrr"),
         zh="留存：NRR、GRR、客户流失率、按原因的流失 ARR、挽回率（默认最近 12 个月，"
            "可加时间段和 `segment <细分>`，附图）。",
         examples=("retention", "retention 6 months", "retention 1y segment enterprise", "retention smb"))
def retention_cmd(
    ctx: Context,
    period: Annotated[Period | None, Param("period")] = None,
    segment: Annotated[str | None, Param("segment")] = None,
) -> Reply:
    """Logo churn, GRR and NRR (monthly and over the period, default 12m), churned ARR by reason, win-back."""
    span = period or DEFAULT_RETENTION
    scope, scope_text, chart_scope = _scope(ctx, segment)
    rates = reply_rates(ctx)
    summary = retention(ctx.session, span, today=ctx.today, scope=scope, rates=rates)
    several = len(revenue_parts(summary)) > 1

    def revenue(key: str, ratio: str, end: str) -> str:
        texts = [ctx.t(key, pct=pct(getattr(p, ratio), 1), end=money(getattr(p, end), p.currency or ""),
                       start=money(p.arr_start, p.currency or "")) for p in revenue_parts(summary)]
        if several:
            texts = [f"{p.currency}: {text}" for p, text in zip(revenue_parts(summary), texts, strict=True)]
        return " · ".join(texts)

    moves = [ctx.t("rt_moves_value", exp=money(p.expansion_arr, p.currency or ""),
                   con=money(p.contraction_arr, p.currency or ""), churn=money(p.churned_arr, p.currency or ""))
             for p in revenue_parts(summary)]
    fields = (
        CardField(ctx.t("rt_nrr"), revenue("rt_arr_value", "nrr", "arr_end")),
        CardField(ctx.t("rt_grr"), revenue("rt_arr_value", "grr", "arr_retained")),
        CardField(ctx.t("rt_logo"), ctx.t("rt_logo_value", pct=pct(summary.logo_churn_rate, 1),
                                          churned=summary.logos_churned, start=summary.logos_start)),
        CardField(ctx.t("rt_moves"), " · ".join(f"{p.currency}: {m}" if several else m
                                                for p, m in zip(revenue_parts(summary), moves, strict=True))),
        CardField(ctx.t("rt_new"), ctx.t("rt_new_value", count=summary.new_logos, arr=money_of(summary, "new_arr"))),
        CardField(ctx.t("rt_winback"), ctx.t("rt_winback_value", pct=pct(summary.win_back_rate),
                                             back=summary.won_back, pool=summary.churned_pool)),
    )
    sections = []
    reasons = reason_lines(summary, ctx.lang)
    if reasons:
        sections.append(Section(ctx.t("rt_reasons"), reasons))
    card = Card(title=ctx.t("rt_title", period=span.label(ctx.lang), scope=scope_text),
                subtitle=retention_reading(summary, span, ctx.lang), fields=fields,
                sections=tuple(sections), freshness=retention_note(rates, summary, ctx.lang))
    monthly = retention_monthly(ctx.session, today=ctx.today, months=_months(span), scope=scope, rates=rates)
    shown = chart_lang(ctx.lang)
    png = retention_png(monthly, t("rt_chart_title", shown, scope=chart_scope), lang=shown,
                        note=retention_note(rates, summary, shown))
    return Reply(cards=[card], images=[Image(png=png, filename="retention.png",
                                             title=ctx.t("rt_chart_title", scope=scope_text))])


# --------------------------------------------------------------------------------------------------- cohorts


@command("cohorts", aliases=("cohort", "同期群", "队列"), zh="同期群：按签约季度的客户留存曲线（附图）。",
         examples=("cohorts",))
def cohorts_cmd(ctx: Context) -> Reply:
    """Logo retention curves by contract-start quarter, with a chart."""
    scope, scope_text, _chart_scope = _scope(ctx)
    table = cohorts(ctx.session, today=ctx.today, scope=scope, rates=reply_rates(ctx))
    if table.logos.empty:
        return Reply(text=ctx.t("co_empty", scope=scope_text))
    rows = table.logos.tail(COHORT_LINES)
    lines = tuple(ctx.t("co_line", cohort=str(c), count=int(table.sizes.get(c, 0)), points=cohort_points(r))
                  for c, r in rows.iloc[::-1].iterrows())
    card = Card(title=ctx.t("co_title", scope=scope_text), subtitle=cohort_reading(table, ctx.lang),
                sections=(Section(ctx.t("co_section"), lines),))
    shown = chart_lang(ctx.lang)
    png = cohorts_png(table.logos, table.sizes, t("co_chart_title", shown), lang=shown)
    return Reply(cards=[card], images=[Image(png=png, filename="cohorts.png", title=ctx.t("co_chart_title"))])


