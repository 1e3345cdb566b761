"""PNG charts posted in chat: an account's health trend, the portfolio's stage distribution and the NPS trend.

Each chart is drawn on its own `matplotlib.figure.Figure` (Agg, no pyplot), so charts drawn in parallel never share
state, and comes back as PNG bytes sized for a chat window (900×450). Chinese needs a CJK font: the first one found
among the installed fonts is used as a fallback after DejaVu Sans; without one, `chart_lang` answers "en" so callers
label charts in English (account names are drawn as given).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from sqlmodel import Session

from bot.core.format import signed
from bot.core.i18n import t
from bot.core.messages import Image
from lifecycle.reports.overview import health_history
from lifecycle.scoring.health import Scorecard
from lifecycle.store.models import Account

SIZE_INCHES = (9.0, 4.5)
DPI = 100
COLOURS = {"red": "#d64541", "yellow": "#f2b632", "green": "#3fa34d", "unknown": "#b5b5b5"}
LINE = "#1f4e79"
BASE_FONT = "DejaVu Sans"

# Families tried first, then any installed font file whose name says it covers Chinese.
_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Noto Sans CJK JP",
    "Droid Sans Fallback",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "AR PL UMing CN",
)
_CJK_FILE_HINTS = ("notosanscjk", "notosanssc", "sourcehansans", "wqy", "droidsansfallback", "uming", "ukai", "simhei")


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of an installed font that can draw Chinese, or None."""
    known = {f.name for f in font_manager.fontManager.ttflist}
    for family in _CJK_FAMILIES:
        if family in known:
            return family
    # Fonts installed after matplotlib built its cache are not in the list yet: look at the files themselves.
    for path in sorted(font_manager.findSystemFonts()):
        if any(hint in path.replace("-", "").replace("_", "").casefold() for hint in _CJK_FILE_HINTS):
            try:
                font_manager.fontManager.addfont(path)
                return str(font_manager.FontProperties(fname=path).get_name())
            except (OSError, RuntimeError, ValueError):
                continue
    return None


def has_cjk(text: str) -> bool:
    """Whether `text` holds CJK ideographs or full-width punctuation (which DejaVu Sans cannot draw)."""
    return any("\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef" for ch in text)


def chart_lang(lang: str) -> str:
    """The language to label charts in: Chinese only when a CJK font is installed."""
    return "zh" if lang == "zh" and cjk_font() is not None else "en"


def new_figure(title: str) -> tuple[Figure, Axes]:
    """A chat-sized figure with its title at the top left."""
    fig = Figure(figsize=SIZE_INCHES, dpi=DPI)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=14, loc="left")
    return fig, ax


def figure_png(fig: Figure, caption: str = "") -> bytes:
    """The figure as PNG; `caption` is a small line under the plot (what its totals rest on)."""
    if caption:  # chat markup means nothing in a picture
        fig.text(0.01, 0.012, caption.replace("`", ""), fontsize=8, color="#555555", ha="left", va="bottom")
    families = [BASE_FONT, cjk] if (cjk := cjk_font()) else [BASE_FONT]
    for text in fig.findobj(Text):
        text.set_fontfamily(families)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Without a CJK font, Chinese account names draw as boxes; the warning per glyph says nothing new.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.tight_layout(rect=(0, 0.045, 1, 1) if caption else None)
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def mark_empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=13, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def health_trend_png(
    history: pd.DataFrame, title: str, *, lang: str = "en", red_below: float = 50, green_from: float = 75
) -> bytes:
    """Daily health score (`day`, `score`, `grade` columns) as a line over red/yellow/green grade bands."""
    lang = chart_lang(lang)
    fig, ax = new_figure(title)
    if history.empty:
        mark_empty(ax, t("chart_no_history", lang))
        return figure_png(fig)
    ax.axhspan(0, red_below, color=COLOURS["red"], alpha=0.12, linewidth=0)
    ax.axhspan(red_below, green_from, color=COLOURS["yellow"], alpha=0.14, linewidth=0)
    ax.axhspan(green_from, 100, color=COLOURS["green"], alpha=0.12, linewidth=0)
    for grade_name, (low, high) in {
        "red": (0, red_below),
        "yellow": (red_below, green_from),
        "green": (green_from, 100),
    }.items():
        ax.text(
            1.005, (low + high) / 200, t(f"grade_{grade_name}", lang), transform=ax.transAxes,
            color=COLOURS[grade_name], fontsize=9, va="center", ha="left",
        )  # fmt: skip
    days = pd.to_datetime(history["day"])
    scores = history["score"].to_numpy(dtype=float)
    grades = history["grade"].astype(str).to_numpy() if "grade" in history else np.full(len(scores), "unknown")
    ax.plot(days, scores, color=LINE, linewidth=2)
    ax.scatter(days, scores, c=[COLOURS.get(str(g), COLOURS["unknown"]) for g in grades], s=14, zorder=3)
    last_day, last_score = days.iloc[-1], scores[-1]
    ax.annotate(
        f"{last_score:.0f}", (last_day, last_score), xytext=(6, 6), textcoords="offset points",
        fontsize=12, color=LINE,
    )  # fmt: skip
    if (days.iloc[-1] - days.iloc[0]).days < 7:
        # A few days of history still gets a week-wide axis, so the dates read as dates.
        end = float(date2num(days.iloc[-1]))
        ax.set_xlim(end - 7, end + 1)
    ax.set_ylim(0, 100)
    ax.set_ylabel(t("chart_health_axis", lang))
    locator = AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel(t("chart_day_axis", lang))
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def stage_distribution_png(
    dist: pd.DataFrame,
    title: str,
    *,
    lang: str = "en",
    stage_labels: Mapping[str, str] | None = None,
    arr_labels: Mapping[str, str] | None = None,
    note: str = "",
) -> bytes:
    """Accounts per stage as bars stacked by grade, each bar topped with its count and its ARR as written in
    `arr_labels` (by stage); `note` says what the ARR totals rest on.

    `dist` is `lifecycle.reports.overview.stage_distribution`: indexed by stage, with `accounts` and grade columns.
    """
    lang = chart_lang(lang)
    fig, ax = new_figure(title)
    if dist.empty:
        mark_empty(ax, t("chart_no_accounts", lang))
        return figure_png(fig)
    labels = [(stage_labels or {}).get(str(s), str(s)) for s in dist.index]
    x = np.arange(len(dist))
    bottom = np.zeros(len(dist))
    for grade_name in ("red", "yellow", "green", "unknown"):
        values = dist[grade_name].to_numpy(dtype=float) if grade_name in dist else np.zeros(len(dist))
        if grade_name == "unknown" and not values.any():
            continue
        ax.bar(x, values, bottom=bottom, color=COLOURS[grade_name], label=t(f"grade_{grade_name}", lang), width=0.65)
        bottom += values
    top = float(bottom.max()) if len(bottom) else 0.0
    for xi, stage, count in zip(x.tolist(), dist.index, dist["accounts"].tolist(), strict=True):
        arr = (arr_labels or {}).get(str(stage))
        label = f"{int(count)}\n{arr}" if arr else f"{int(count)}"
        ax.text(xi, count + top * 0.02, label, ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(top * 1.25, 1))
    ax.set_xticks(x, labels)
    ax.set_xlabel(t("chart_stage_axis", lang))
    ax.set_ylabel(t("chart_accounts_axis", lang))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper right", fontsize=9, frameon=False, ncols=4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return figure_png(fig, note)


def nps_trend_png(trend: pd.DataFrame, title: str, *, lang: str = "en") -> bytes:
    """Monthly NPS as a line over the number of responses as bars (`lifecycle.reports.nps.nps_trend`).

    The background reads like the NPS meaning in chat: below 0 red (more detractors), 0–50 yellow, 50+ green.
    """
    lang = chart_lang(lang)
    fig, ax = new_figure(title)
    if trend.empty:
        mark_empty(ax, t("chart_no_history", lang))
        return figure_png(fig)
    x = np.arange(len(trend))
    months = [pd.Timestamp(m).strftime("%Y-%m") for m in trend.index]
    bars = ax.twinx()
    responses = trend["responses"].to_numpy(dtype=float)
    # Bars stay in the lower third so they read as volume, apart from the NPS line above them.
    bars.bar(x, responses, color="#7f8c99", alpha=0.45, width=0.6, label=t("chart_responses_axis", lang))
    bars.set_ylim(0, max(float(responses.max()) * 3.0, 1))
    bars.set_ylabel(t("chart_responses_axis", lang), color="#56626e")
    bars.yaxis.set_major_locator(MaxNLocator(integer=True))
    # The NPS axis is drawn over the bars' axis so its line stays on top.
    ax.set_zorder(bars.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.axhspan(-100, 0, color=COLOURS["red"], alpha=0.10, linewidth=0)
    ax.axhspan(0, 50, color=COLOURS["yellow"], alpha=0.10, linewidth=0)
    ax.axhspan(50, 100, color=COLOURS["green"], alpha=0.10, linewidth=0)
    ax.axhline(0, color="#777777", linewidth=0.8)
    nps = trend["nps"].to_numpy(dtype=float)
    known = ~np.isnan(nps)
    ax.plot(x[known], nps[known], color=LINE, linewidth=2, marker="o", label=t("chart_nps_line", lang))
    for xi, value in zip(x[known], nps[known], strict=True):
        ax.annotate(signed(value), (xi, value), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=9)
    ax.set_ylim(-100, 100)
    ax.set_xlim(-0.6, len(trend) - 0.4)
    ax.set_xticks(x, months, fontsize=8, rotation=45 if len(trend) > 8 else 0)
    ax.set_xlabel(t("chart_month_axis", lang))
    ax.set_ylabel(t("chart_nps_axis", lang))
    return figure_png(fig)


def health_trend_image(
    session: Session, account: Account, *, lang: str, scorecard: Scorecard, days: int = 90
) -> Image | None:
    """The health-trend chart of `account` over its last `days` days of snapshots, or None if it has none. The
    title names the span the snapshots really cover (a young account has a few days, not `days`)."""
    history = health_history(session, account.id or 0, days=days)
    if history.empty:
        return None
    shown = chart_lang(lang)
    name = account.name if (shown == "zh" or not has_cjk(account.name)) else account.external_id
    png = health_trend_png(
        history, _span_title(history, name, shown), lang=shown, red_below=scorecard.grades.red_below,
        green_from=scorecard.grades.green_from,
    )
    return Image(png=png, filename=f"health-{account.external_id}.png",
                 title=_span_title(history, account.name, lang))


def _span_title(history: pd.DataFrame, account: str, lang: str) -> str:
    """"Acme — health, 2026-09-08 → 2026-12-01 (85 days)", from the first to the last snapshot shown."""
    days = pd.to_datetime(history["day"])
    start, end = days.min().date(), days.max().date()
    if start == end:
        return t("chart_health_title_day", lang, account=account, day=end.isoformat())
    return t("chart_health_title", lang, account=account, start=start.isoformat(), end=end.isoformat(),
             days=(end - start).days + 1)
