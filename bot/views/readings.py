"""The plain readings of the lifecycle analytics: the two-line words under each report card, the KPI, funnel,
retention and cohort values as they read in chat, the account card's KPI section and the weekly summary's
lifecycle part. Shared by the analytics commands and the managers' weekly summary (`bot.push.digests`)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
from sqlmodel import Session

from bot.core.format import money
from bot.core.i18n import t
from bot.core.messages import Image, Section
from bot.core.money import basis_note
from bot.views.analytics_charts import retention_png
from bot.views.charts import chart_lang
from lifecycle.reports.analytics import (
    CohortTable,
    FunnelReport,
    KpiResult,
    KpiValue,
    Period,
    RetentionSummary,
    Slice,
    StageKpi,
    funnel,
    retention,
    retention_monthly,
)
from lifecycle.reports.money import Rates
from lifecycle.scoring.stages import StageMachine

DEFAULT_FUNNEL = Period(90, "d")
DEFAULT_RETENTION = Period(12, "m")
YEAR = 4  # quarters


def pct(value: float | None, digits: int = 0) -> str:
    if value is None or np.isnan(value):
        return "—"
    return f"{100.0 * value:.{digits}f} %"


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


def goal_text(k: KpiValue, currency: str, lang: str) -> str:
    sign = "≤ " if k.better == "lower" else "≥ "
    return sign + kpi_value(k.unit, k.goal, currency, lang)


def met_icon(met: bool | None) -> str:
    return "⚪" if met is None else "🟢" if met else "🔴"


def _gap(k: StageKpi) -> float:
    """How far the KPI is from its goal, as a share of the goal (0 when met, larger is worse)."""
    value = float(k.value or 0.0)
    if k.goal == 0:
        return 0.0 if k.met else 1.0
    ratio = value / k.goal if k.better == "higher" else (k.goal / value if value > 0 else 2.0)
    return 1.0 - ratio


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
                         value=kpi_value(worst.unit, worst.value, currency, lang),
                         goal=goal_text(worst, currency, lang))
    else:
        first += sep + t("kpi_reading_all_met", lang)
    first += "。" if lang == "zh" else "."
    best = min(scored, key=_gap)
    second = t("kpi_reading_best", lang, stage=machine.label(best.stage, lang),
               label=best.label_zh if lang == "zh" else best.label,
               value=kpi_value(best.unit, best.value, currency, lang), goal=goal_text(best, currency, lang))
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
        lines.append(t("kpi_account_line", lang, icon=met_icon(r.met), label=r.label_zh if lang == "zh" else r.label,
                       value=value, goal=goal_text(r, currency, lang)))
    return Section(t("kpi_account_section", lang, stage=machine.label(results[0].stage, lang)), tuple(lines))


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
        first = t("fn_reading_rate", lang, pct=pct(float(rate[name])),
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


def days_text(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.0f} d"


def revenue_parts(r: RetentionSummary) -> list[RetentionSummary]:
    """The summary's revenue figures: one summary in one currency, or one per currency (a rate is missing)."""
    return list(r.by_currency.values()) or [r]


def money_of(r: RetentionSummary, name: str) -> str:
    """A revenue amount of the summary (`new_arr`, …): in its currency, or per currency joined with " + "."""
    return " + ".join(money(getattr(p, name), p.currency or "") for p in revenue_parts(r))


def ratio_of(r: RetentionSummary, name: str, digits: int = 0) -> str:
    """NRR or GRR: one percentage, or one per currency (`101 % USD / 98 % SEK`)."""
    if not r.by_currency:
        return pct(getattr(r, name), digits)
    return " / ".join(f"{pct(getattr(p, name), digits)} {p.currency}" for p in revenue_parts(r))


def retention_reading(r: RetentionSummary, period: Period, lang: str) -> str:
    """Two lines: NRR, GRR and logo churn over the period; win-back and new logos."""
    if not r.logos_start:
        first = t("rt_reading_empty", lang)
    else:
        first = t("rt_reading", lang, nrr=ratio_of(r, "nrr"), grr=ratio_of(r, "grr"), period=period.label(lang),
                  churned=r.logos_churned, start=r.logos_start, pct=pct(r.logo_churn_rate))
    second = t("rt_reading_winback", lang, back=r.won_back, pool=r.churned_pool, pct=pct(r.win_back_rate),
               new=r.new_logos, arr=money_of(r, "new_arr"))
    return first + "\n" + second


def reason_lines(r: RetentionSummary, lang: str) -> tuple[str, ...]:
    """Churned ARR per reason, largest first (per currency when a rate is missing)."""
    reasons = list(dict.fromkeys(reason for p in revenue_parts(r) for reason in p.churn_by_reason))
    return tuple(
        t("rt_reason_line", lang, reason=reason, arr=" + ".join(
            money(p.churn_by_reason[reason], p.currency or "") for p in revenue_parts(r)
            if reason in p.churn_by_reason))
        for reason in reasons
    )


def retention_note(rates: Rates, r: RetentionSummary, lang: str) -> str:
    return basis_note(rates.basis_of(r.currencies), lang)


def cohort_reading(table: CohortTable, lang: str) -> str:
    """Two lines: the newest cohort with a year of history and its logo retention; the average over cohorts."""
    logos, arr = table.logos, table.arr
    if YEAR not in logos.columns or logos[YEAR].dropna().empty:
        return t("co_reading_young", lang) + ("。" if lang == "zh" else ".")
    year = logos[YEAR].dropna()
    cohort = str(year.index[-1])
    first = t("co_reading_year", lang, cohort=cohort, pct=pct(float(year.iloc[-1])))
    sizes = table.sizes.reindex(year.index).astype(float)
    avg_logos = float((year * sizes).sum() / sizes.sum())
    arr_year = arr[YEAR].reindex(year.index).dropna()
    avg_arr = float(arr_year.mean()) if len(arr_year) else float("nan")
    second = t("co_reading_avg", lang, count=len(year), pct=pct(avg_logos), arr=pct(avg_arr))
    return first + ("；" if lang == "zh" else ";") + "\n" + second


def cohort_points(row: pd.Series) -> str:
    values = row.dropna()
    shown = [k for k in values.index if k in (0, 1, 2, YEAR, 2 * YEAR, 3 * YEAR)] or list(values.index)
    return " · ".join(f"Q{int(k)} {100 * float(values[k]):.0f} %" for k in shown)


def lifecycle_summary(
    session: Session, machine: StageMachine, *, today: date, scope: Slice, lang: str, rates: Rates
) -> tuple[Section, Image]:
    """The weekly summary's lifecycle part: the retention (12 months) and funnel (90 days) readings, and the
    monthly retention chart."""
    summary = retention(session, DEFAULT_RETENTION, today=today, scope=scope, rates=rates)
    report = funnel(session, machine, DEFAULT_FUNNEL, today=today, scope=scope)
    note = retention_note(rates, summary, lang)
    lines = (*retention_reading(summary, DEFAULT_RETENTION, lang).split("\n"),
             *funnel_reading(report, machine, DEFAULT_FUNNEL, lang).split("\n"), *((f"({note})",) if note else ()))
    shown = chart_lang(lang)
    monthly = retention_monthly(session, today=today, months=12, scope=scope, rates=rates)
    png = retention_png(monthly, t("rt_chart_title", shown, scope=t("an_scope_team" if scope.owner_ids else
                                                                    "an_scope_all", shown)), lang=shown,
                        note=retention_note(rates, summary, shown))
    title = t("rt_chart_title", lang, scope=t("an_scope_team" if scope.owner_ids else "an_scope_all", lang))
    return Section(t("wk_lifecycle", lang), lines), Image(png=png, filename="retention.png", title=title)
