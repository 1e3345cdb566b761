"""Lifecycle analytics in chat: `kpis [stage]`, `funnel [period]`, `retention [period] [segment <s>]`, `cohorts`.

Each answers with a card, a chart and a two-line plain reading of it. Managers and admins see the whole portfolio;
a CSM whose read scope is `own` sees their own book (as `portfolio` and `nps`). The readings are also used by the
managers' weekly summary (`bot.digests`).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

import numpy as np
import pandas as pd
from sqlmodel import Session

from bot.analytics_charts import cohorts_png, funnel_png, kpi_png, retention_png, stage_mix_png
from bot.cards import stage_label
from bot.charts import chart_lang
from bot.format import money
from bot.i18n import t
from bot.messages import Card, CardField, Image, Reply, Section
from bot.money import basis_note, reply_rates
from bot.router import Context, Param, command
from lifecycle.analytics import (
    CohortTable,
    FunnelReport,
    KpiResult,
    KpiValue,
    Period,
    RetentionSummary,
    Slice,
    StageKpi,
    cohorts,
    funnel,
    retention,
    retention_monthly,
    stage_distribution_monthly,
    stage_kpis,
)
from lifecycle.money import Rates
from lifecycle.stages import StageMachine

DEFAULT_FUNNEL = Period(90, "d")
DEFAULT_RETENTION = Period(12, "m")
MIX_MONTHS = 12
STUCK_LINES = 8
COHORT_LINES = 8
YEAR = 4  # quarters


# ---------------------------------------------------------------------------------------------------- helpers


def _pct(value: float | None, digits: int = 0) -> str:
    if value is None or np.isnan(value):
        return "—"
    return f"{100.0 * value:.{digits}f} %"


def _scope(ctx: Context, segment: str | None = None) -> tuple[Slice, str, str]:
    """(slice, scope label in the user's language, scope label for the chart's language)."""
    own = ctx.user.role == "csm" and ctx.services.settings.csm_read_scope == "own"
    owners = (int(ctx.user.id),) if own and ctx.user.id is not None else None
    shown = chart_lang(ctx.lang)
    key = "an_scope_segment" if segment else "an_scope_mine" if owners else "an_scope_all"
    return (Slice(owner_ids=owners, segment=segment), t(key, ctx.lang, segment=segment or ""),
            t(key, shown, segment=segment or ""))


def kpi_value(unit: str, value: float | None, currency: str, lang: str) -> str:
    """A KPI value in its unit: `46 d`, `57 %`, `2.7`, `$12,000`."""
    if value is None or np.isnan(value):
        return "—"
    if unit == "days":
        return t("kpi_unit_days", lang, v=f"{value:.0f}")
    if unit == "percent":
        return f"{value:.0f} %"
    if unit == "money":
        return money(value, currency)
    return f"{value:.1f}".removesuffix(".0")


def _goal(k: KpiValue, currency: str, lang: str) -> str:
    sign = "≤ " if k.better == "lower" else "≥ "
    return sign + kpi_value(k.unit, k.goal, currency, lang)


def _icon(met: bool | None) -> str:
    return "⚪" if met is None else "🟢" if met else "🔴"


def _gap(k: StageKpi) -> float:
    """How far the KPI is from its goal, as a share of the goal (0 when met, larger is worse)."""
    value = float(k.value or 0.0)
    if k.goal == 0:
        return 0.0 if k.met else 1.0
    ratio = value / k.goal if k.better == "higher" else (k.goal / value if value > 0 else 2.0)
    return 1.0 - ratio


# ------------------------------------------------------------------------------------------------------ kpis


def kpi_reading(kpis: list[StageKpi], machine: StageMachine, currency: str, lang: str) -> str:
    """Two lines: how many KPIs meet their goal and the one furthest behind; then the best one."""
    scored = [k for k in kpis if k.value is not None]
    if not scored:
        return t("kpi_reading_nodata", lang)
    met = sum(1 for k in scored if k.met)
    sep = "；" if lang == "zh" else "; "
    first = t("kpi_reading_met", lang, met=met, count=len(scored))
    behind = [k for k in scored if not k.met]
    if behind:
        worst = max(behind, key=_gap)
        first += sep + t("kpi_reading_worst", lang, stage=machine.label(worst.stage, lang),
                         label=worst.label_zh if lang == "zh" else worst.label,
                         value=kpi_value(worst.unit, worst.value, currency, lang), goal=_goal(worst, currency, lang))
    else:
        first += sep + t("kpi_reading_all_met", lang)
    first += "。" if lang == "zh" else "."
    best = min(scored, key=_gap)
    second = t("kpi_reading_best", lang, stage=machine.label(best.stage, lang),
               label=best.label_zh if lang == "zh" else best.label,
               value=kpi_value(best.unit, best.value, currency, lang), goal=_goal(best, currency, lang))
    return first[:1].upper() + first[1:] + "\n" + second


def account_kpi_section(results: list[KpiResult], machine: StageMachine, currency: str, lang: str) -> Section | None:
    """The account card's section: the account's stage KPIs against their goals (None without KPIs)."""
    if not results:
        return None
    lines = []
    for r in results:
        if r.note == "not_reached" and r.value is not None:
            value = t("kpi_not_reached", lang, v=f"{r.value:.0f}")
        else:
            value = kpi_value(r.unit, r.value, currency, lang) if r.value is not None else t("no_data", lang)
        lines.append(t("kpi_account_line", lang, icon=_icon(r.met), label=r.label_zh if lang == "zh" else r.label,
                       value=value, goal=_goal(r, currency, lang)))
    return Section(t("kpi_account_section", lang, stage=machine.label(results[0].stage, lang)), tuple(lines))


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
                lines.append(ctx.t("kpi_line_nodata", label=label, goal=_goal(k, currency, ctx.lang)))
                continue
            lines.append(ctx.t("kpi_line", icon=_icon(k.met), label=label,
                               value=kpi_value(k.unit, k.value, currency, ctx.lang),
                               goal=_goal(k, currency, ctx.lang), met=k.accounts_met, count=k.accounts))
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


def funnel_reading(report: FunnelReport, machine: StageMachine, period: Period, lang: str) -> str:
    """Two lines: the stage with the most accounts and how many of them moved on; the slowest stage by median
    time in stage, and how many accounts are stuck."""
    table = report.stages
    busy = table.loc[table["accounts"] > 0]
    sep = "；" if lang == "zh" else "; "
    end = "。" if lang == "zh" else "."
    if busy.empty:
        first = t("fn_reading_nothing", lang)
    else:
        name = str(busy["accounts"].idxmax())
        rate = busy["rate"].astype(float)
        first = t("fn_reading_rate", lang, pct=_pct(float(rate[name])),
                  stage=machine.label(name, lang), period=period.label(lang))
        timed = table.dropna(subset=["median_days"])
        if not timed.empty:
            slow = str(timed["median_days"].idxmax())
            median, p90 = float(timed["median_days"][slow]), float(timed["p90_days"][slow])
            first += sep + t("fn_reading_time", lang, stage=machine.label(slow, lang), median=f"{median:.0f}",
                             p90=f"{p90:.0f}")
    first += end
    stuck = len(report.stuck)
    second = t("fn_reading_none_stuck" if not stuck else "fn_reading_stuck_one" if stuck == 1
               else "fn_reading_stuck", lang, count=stuck)
    return first[:1].upper() + first[1:] + "\n" + second


def _days_text(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.0f} d"


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
              count=int(r["accounts"]), pct=_pct(float(r["rate"])), churned=int(r["churned"]),
              median=_days_text(float(r["median_days"])), p90=_days_text(float(r["p90_days"])),
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


def _parts(r: RetentionSummary) -> list[RetentionSummary]:
    """The summary's revenue figures: one summary in one currency, or one per currency (a rate is missing)."""
    return list(r.by_currency.values()) or [r]


def _money_of(r: RetentionSummary, name: str) -> str:
    """A revenue amount of the summary (`new_arr`, …): in its currency, or per currency joined with " + "."""
    return " + ".join(money(getattr(p, name), p.currency or "") for p in _parts(r))


def _ratio_of(r: RetentionSummary, name: str, digits: int = 0) -> str:
    """NRR or GRR: one percentage, or one per currency (`101 % USD / 98 % SEK`)."""
    if not r.by_currency:
        return _pct(getattr(r, name), digits)
    return " / ".join(f"{_pct(getattr(p, name), digits)} {p.currency}" for p in _parts(r))


def retention_reading(r: RetentionSummary, period: Period, lang: str) -> str:
    """Two lines: NRR, GRR and logo churn over the period; win-back and new logos."""
    if not r.logos_start:
        first = t("rt_reading_empty", lang)
    else:
        first = t("rt_reading", lang, nrr=_ratio_of(r, "nrr"), grr=_ratio_of(r, "grr"), period=period.label(lang),
                  churned=r.logos_churned, start=r.logos_start, pct=_pct(r.logo_churn_rate))
    second = t("rt_reading_winback", lang, back=r.won_back, pool=r.churned_pool, pct=_pct(r.win_back_rate),
               new=r.new_logos, arr=_money_of(r, "new_arr"))
    return first + "\n" + second


def _reason_lines(r: RetentionSummary, lang: str) -> tuple[str, ...]:
    """Churned ARR per reason, largest first (per currency when a rate is missing)."""
    reasons = list(dict.fromkeys(reason for p in _parts(r) for reason in p.churn_by_reason))
    return tuple(
        t("rt_reason_line", lang, reason=reason, arr=" + ".join(
            money(p.churn_by_reason[reason], p.currency or "") for p in _parts(r) if reason in p.churn_by_reason))
        for reason in reasons
    )


def _retention_note(rates: Rates, r: RetentionSummary, lang: str) -> str:
    return basis_note(rates.basis_of(r.currencies), lang)


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
    several = len(_parts(summary)) > 1

    def revenue(key: str, ratio: str, end: str) -> str:
        texts = [ctx.t(key, pct=_pct(getattr(p, ratio), 1), end=money(getattr(p, end), p.currency or ""),
                       start=money(p.arr_start, p.currency or "")) for p in _parts(summary)]
        if several:
            texts = [f"{p.currency}: {text}" for p, text in zip(_parts(summary), texts, strict=True)]
        return " · ".join(texts)

    moves = [ctx.t("rt_moves_value", exp=money(p.expansion_arr, p.currency or ""),
                   con=money(p.contraction_arr, p.currency or ""), churn=money(p.churned_arr, p.currency or ""))
             for p in _parts(summary)]
    fields = (
        CardField(ctx.t("rt_nrr"), revenue("rt_arr_value", "nrr", "arr_end")),
        CardField(ctx.t("rt_grr"), revenue("rt_arr_value", "grr", "arr_retained")),
        CardField(ctx.t("rt_logo"), ctx.t("rt_logo_value", pct=_pct(summary.logo_churn_rate, 1),
                                          churned=summary.logos_churned, start=summary.logos_start)),
        CardField(ctx.t("rt_moves"), " · ".join(f"{p.currency}: {m}" if several else m
                                                for p, m in zip(_parts(summary), moves, strict=True))),
        CardField(ctx.t("rt_new"), ctx.t("rt_new_value", count=summary.new_logos, arr=_money_of(summary, "new_arr"))),
        CardField(ctx.t("rt_winback"), ctx.t("rt_winback_value", pct=_pct(summary.win_back_rate),
                                             back=summary.won_back, pool=summary.churned_pool)),
    )
    sections = []
    reasons = _reason_lines(summary, ctx.lang)
    if reasons:
        sections.append(Section(ctx.t("rt_reasons"), reasons))
    card = Card(title=ctx.t("rt_title", period=span.label(ctx.lang), scope=scope_text),
                subtitle=retention_reading(summary, span, ctx.lang), fields=fields,
                sections=tuple(sections), freshness=_retention_note(rates, summary, ctx.lang))
    monthly = retention_monthly(ctx.session, today=ctx.today, months=_months(span), scope=scope, rates=rates)
    shown = chart_lang(ctx.lang)
    png = retention_png(monthly, t("rt_chart_title", shown, scope=chart_scope), lang=shown,
                        note=_retention_note(rates, summary, shown))
    return Reply(cards=[card], images=[Image(png=png, filename="retention.png",
                                             title=ctx.t("rt_chart_title", scope=scope_text))])


# --------------------------------------------------------------------------------------------------- cohorts


def cohort_reading(table: CohortTable, lang: str) -> str:
    """Two lines: the newest cohort with a year of history and its logo retention; the average over cohorts."""
    logos, arr = table.logos, table.arr
    if YEAR not in logos.columns or logos[YEAR].dropna().empty:
        return t("co_reading_young", lang) + ("。" if lang == "zh" else ".")
    year = logos[YEAR].dropna()
    cohort = str(year.index[-1])
    first = t("co_reading_year", lang, cohort=cohort, pct=_pct(float(year.iloc[-1])))
    sizes = table.sizes.reindex(year.index).astype(float)
    avg_logos = float((year * sizes).sum() / sizes.sum())
    arr_year = arr[YEAR].reindex(year.index).dropna()
    avg_arr = float(arr_year.mean()) if len(arr_year) else float("nan")
    second = t("co_reading_avg", lang, count=len(year), pct=_pct(avg_logos), arr=_pct(avg_arr))
    return first + ("；" if lang == "zh" else ";") + "\n" + second


def _cohort_points(row: pd.Series) -> str:
    values = row.dropna()
    shown = [k for k in values.index if k in (0, 1, 2, YEAR, 2 * YEAR, 3 * YEAR)] or list(values.index)
    return " · ".join(f"Q{int(k)} {100 * float(values[k]):.0f} %" for k in shown)


@command("cohorts", aliases=("cohort", "同期群", "队列"), zh="同期群：按签约季度的客户留存曲线（附图）。",
         examples=("cohorts",))
def cohorts_cmd(ctx: Context) -> Reply:
    """Logo retention curves by contract-start quarter, with a chart."""
    scope, scope_text, _chart_scope = _scope(ctx)
    table = cohorts(ctx.session, today=ctx.today, scope=scope, rates=reply_rates(ctx))
    if table.logos.empty:
        return Reply(text=ctx.t("co_empty", scope=scope_text))
    rows = table.logos.tail(COHORT_LINES)
    lines = tuple(ctx.t("co_line", cohort=str(c), count=int(table.sizes.get(c, 0)), points=_cohort_points(r))
                  for c, r in rows.iloc[::-1].iterrows())
    card = Card(title=ctx.t("co_title", scope=scope_text), subtitle=cohort_reading(table, ctx.lang),
                sections=(Section(ctx.t("co_section"), lines),))
    shown = chart_lang(ctx.lang)
    png = cohorts_png(table.logos, table.sizes, t("co_chart_title", shown), lang=shown)
    return Reply(cards=[card], images=[Image(png=png, filename="cohorts.png", title=ctx.t("co_chart_title"))])


def lifecycle_summary(
    session: Session, machine: StageMachine, *, today: date, scope: Slice, lang: str, rates: Rates
) -> tuple[Section, Image]:
    """The weekly summary's lifecycle part: the retention (12 months) and funnel (90 days) readings, and the
    monthly retention chart."""
    summary = retention(session, DEFAULT_RETENTION, today=today, scope=scope, rates=rates)
    report = funnel(session, machine, DEFAULT_FUNNEL, today=today, scope=scope)
    note = _retention_note(rates, summary, lang)
    lines = (*retention_reading(summary, DEFAULT_RETENTION, lang).split("\n"),
             *funnel_reading(report, machine, DEFAULT_FUNNEL, lang).split("\n"), *((f"({note})",) if note else ()))
    shown = chart_lang(lang)
    monthly = retention_monthly(session, today=today, months=12, scope=scope, rates=rates)
    png = retention_png(monthly, t("rt_chart_title", shown, scope=t("an_scope_team" if scope.owner_ids else
                                                                    "an_scope_all", shown)), lang=shown,
                        note=_retention_note(rates, summary, shown))
    title = t("rt_chart_title", lang, scope=t("an_scope_team" if scope.owner_ids else "an_scope_all", lang))
    return Section(t("wk_lifecycle", lang), lines), Image(png=png, filename="retention.png", title=title)
