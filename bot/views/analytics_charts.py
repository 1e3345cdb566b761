"""PNG charts of the lifecycle analytics: stage KPIs against goals, the funnel, stage distribution over time,
monthly retention and cohort curves.

Drawn like the other charts (`bot.views.charts`: one Figure per chart, title at the top left, CJK font fallback, 900×450
PNG); callers pass titles and labels already in the chart's language (`bot.views.charts.chart_lang`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from bot.core.i18n import t
from bot.views.charts import COLOURS, DPI, LINE, SIZE_INCHES, figure_png, mark_empty, new_figure
from lifecycle.reports.analytics import StageKpi

# Stages without a colour of their own cycle through these; exits are grey.
_PALETTE = ("#1f4e79", "#2e86c1", "#48c9b0", "#3fa34d", "#f2b632", "#e67e22", "#8e44ad", "#c0392b", "#7f8c8d")
_EXIT = "#b5b5b5"


def kpi_png(kpis: Sequence[StageKpi], title: str, *, lang: str, stage_labels: Mapping[str, str]) -> bytes:
    """One horizontal bar per KPI: the portfolio value as a % of its goal (inverted for lower-is-better KPIs,
    so longer is always better), green when met, red when not, with the goal at 100 %."""
    fig, ax = new_figure(title)
    shown = [k for k in kpis if k.value is not None]
    if not shown:
        mark_empty(ax, t("ac_no_data", lang))
        return figure_png(fig)
    labels, scores, colours = [], [], []
    for k in shown:
        value = float(k.value or 0.0)
        if k.goal == 0:
            score = 100.0 if k.met else 0.0
        elif k.better == "lower":
            score = 100.0 * k.goal / value if value > 0 else 200.0
        else:
            score = 100.0 * value / k.goal
        scores.append(min(score, 200.0))
        colours.append(COLOURS["green"] if k.met else COLOURS["red"])
        name = k.label_zh if lang == "zh" else k.label
        labels.append(f"{stage_labels.get(k.stage, k.stage)} · {name}")
    y = np.arange(len(shown))[::-1]
    ax.barh(y, scores, color=colours, height=0.6)
    ax.axvline(100, color="#333333", linewidth=1, linestyle="--")
    ax.text(100, len(shown) - 0.4, t("ac_goal_line", lang), ha="center", va="bottom", fontsize=9)
    for yi, score in zip(y.tolist(), scores, strict=True):
        ax.text(score + 2, yi, f"{score:.0f} %", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, max(max(scores) * 1.15, 120))
    ax.set_xlabel(t("ac_goal_axis", lang))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return figure_png(fig)


def funnel_png(stages: pd.DataFrame, title: str, *, lang: str, stage_labels: Mapping[str, str]) -> bytes:
    """Per funnel stage: the share that moved on (bars, left) and the median and p90 days in stage (right)."""
    fig = Figure(figsize=SIZE_INCHES, dpi=DPI)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    fig.suptitle(title, fontsize=14, x=0.01, ha="left")
    if stages.empty or not int(stages["accounts"].sum()):
        mark_empty(left, t("ac_no_data", lang))
        right.set_axis_off()
        return figure_png(fig)
    labels = [stage_labels.get(str(s), str(s)) for s in stages.index]
    y = np.arange(len(stages))[::-1]
    rate = 100.0 * stages["rate"].to_numpy(dtype=float)
    left.barh(y, np.nan_to_num(rate), color=LINE, height=0.6)
    for yi, r, n in zip(y.tolist(), rate.tolist(), stages["accounts"].tolist(), strict=True):
        text = "—" if np.isnan(r) else f"{r:.0f} % ({int(n)})"
        left.text((0 if np.isnan(r) else r) + 2, yi, text, va="center", fontsize=8)
    left.set_yticks(y, labels, fontsize=9)
    left.set_xlim(0, 115)
    left.set_xlabel(t("ac_moved_on_axis", lang), fontsize=9)
    left.grid(axis="x", alpha=0.3)
    med = stages["median_days"].to_numpy(dtype=float)
    p90 = stages["p90_days"].to_numpy(dtype=float)
    right.barh(y + 0.18, np.nan_to_num(med), height=0.34, color="#2e86c1", label=t("ac_median", lang))
    right.barh(y - 0.18, np.nan_to_num(p90), height=0.34, color=COLOURS["yellow"], label=t("ac_p90", lang))
    right.set_yticks(y, [""] * len(y))
    right.set_xlabel(t("ac_days_axis", lang), fontsize=9)
    right.legend(fontsize=8, frameon=False, loc="lower right")
    right.grid(axis="x", alpha=0.3)
    return figure_png(fig)


def stage_mix_png(
    mix: pd.DataFrame, title: str, *, lang: str, stage_labels: Mapping[str, str], exits: Sequence[str] = ()
) -> bytes:
    """Accounts per stage at each month's end, as stacked bars (exit stages such as churned in grey)."""
    fig, ax = new_figure(title)
    if mix.empty or not int(mix.to_numpy().sum()):
        mark_empty(ax, t("ac_no_data", lang))
        return figure_png(fig)
    x = np.arange(len(mix))
    bottom = np.zeros(len(mix))
    colour_i = 0
    for stage in mix.columns:
        values = mix[stage].to_numpy(dtype=float)
        if stage in exits:
            colour = _EXIT
        else:
            colour = _PALETTE[colour_i % len(_PALETTE)]
            colour_i += 1
        ax.bar(x, values, bottom=bottom, color=colour, width=0.7, label=stage_labels.get(str(stage), str(stage)))
        bottom += values
    months = [pd.Timestamp(m).strftime("%Y-%m") for m in mix.index]
    ax.set_xticks(x, months, fontsize=8, rotation=45 if len(mix) > 8 else 0)
    ax.set_ylim(0, max(float(bottom.max()) * 1.08, 1))
    ax.set_xlabel(t("ac_month_axis", lang))
    ax.set_ylabel(t("ac_accounts_axis", lang))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return figure_png(fig)


def retention_png(monthly: pd.DataFrame, title: str, *, lang: str, note: str = "") -> bytes:
    """Monthly NRR and GRR as lines, with the monthly logo churn rate as bars underneath; `note` says what the
    revenue figures rest on (NRR and GRR are left out where they would mix currencies without a rate)."""
    fig, ax = new_figure(title)
    if monthly.empty or not int(monthly["logos_start"].sum()):
        mark_empty(ax, t("ac_no_data", lang))
        return figure_png(fig)
    x = np.arange(len(monthly))
    months = [pd.Timestamp(m).strftime("%Y-%m") for m in monthly.index]
    churn = 100.0 * monthly["logo_churn_rate"].to_numpy(dtype=float)
    ax.bar(x, np.nan_to_num(churn), color=COLOURS["red"], alpha=0.5, width=0.6, label=t("ac_logo_churn", lang))
    nrr = 100.0 * monthly["nrr"].to_numpy(dtype=float)
    grr = 100.0 * monthly["grr"].to_numpy(dtype=float)
    ax.plot(x, nrr, color=LINE, linewidth=2, marker="o", label="NRR")
    ax.plot(x, grr, color=COLOURS["green"], linewidth=2, marker="s", label="GRR")
    for xi, v in zip(x.tolist(), nrr.tolist(), strict=True):
        if not np.isnan(v):
            ax.annotate(f"{v:.0f}", (xi, v), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
    top = np.nanmax(np.concatenate([nrr, grr, [100.0]]))
    ax.set_ylim(0, max(120.0, float(top) * 1.08))
    ax.axhline(100, color="#777777", linewidth=0.8)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_xticks(x, months, fontsize=8, rotation=45 if len(monthly) > 8 else 0)
    ax.set_xlabel(t("ac_month_axis", lang))
    ax.set_ylabel(t("ac_retention_axis", lang))
    ax.legend(fontsize=8, frameon=False, loc="center left", ncols=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return figure_png(fig, note)


def cohorts_png(logos: pd.DataFrame, sizes: pd.Series, title: str, *, lang: str, limit: int = 8) -> bytes:
    """One line per contract-start quarter (the newest `limit`): share of logos still customers by quarter."""
    fig, ax = new_figure(title)
    rows = logos.dropna(how="all").tail(limit)
    if rows.empty:
        mark_empty(ax, t("ac_no_data", lang))
        return figure_png(fig)
    for i, (cohort, row) in enumerate(rows.iterrows()):
        values = row.dropna()
        colour = _PALETTE[i % len(_PALETTE)]
        ax.plot(values.index.astype(int), 100.0 * values.to_numpy(dtype=float), marker="o", markersize=3,
                linewidth=1.8, color=colour, label=f"{cohort} ({int(sizes.get(cohort, 0))})")
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(t("ac_quarters_axis", lang))
    ax.set_ylabel(t("ac_logos_kept_axis", lang))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    return figure_png(fig)
