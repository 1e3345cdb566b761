"""`alert-stats`: how each alert rule performed over the last N days — how often it fired, and its precision."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Annotated

from bot.i18n import add_messages
from bot.messages import Card, Reply, Section
from bot.router import Context, Param, command
from lifecycle.alerts import alert_stats

add_messages(
    {
        "as_title": {"en": "Alert rules — last {days} days ({scope})", "zh": "告警规则 — 最近 {days} 天（{scope}）"},
        "as_empty": {"en": "No alerts in the last {days} days ({scope}).", "zh": "最近 {days} 天没有告警（{scope}）。"},
        "as_summary": {
            "en": "{raised} alerts; {rated} rated, {precision} found useful. Precision = useful ÷ rated: rate alerts "
            "with their Not useful button (or `useful <id> yes|no`) to tune the rules.",
            "zh": "共 {raised} 条告警；{rated} 条已评价，{precision} 有帮助。精确度 = 有帮助 ÷ 已评价："
            "用告警上的“没有帮助”按钮（或 `useful <id> yes|no`）评价，以便调整规则。",
        },
        "as_summary_unrated": {
            "en": "{raised} alerts, none rated yet. Rate alerts with their Not useful button (or `useful <id> yes|no`) "
            "to measure each rule's precision (useful ÷ rated).",
            "zh": "共 {raised} 条告警，尚无评价。用告警上的“没有帮助”按钮（或 `useful <id> yes|no`）评价，"
            "即可衡量每条规则的精确度（有帮助 ÷ 已评价）。",
        },
        "as_line": {
            "en": "{rule}: {raised} raised · {acked} acknowledged · precision {precision}",
            "zh": "{rule}：触发 {raised} · 已确认 {acked} · 精确度 {precision}",
        },
        "as_unrated": {"en": "not rated yet", "zh": "尚未评价"},
        "as_mine": {"en": "mine", "zh": "我的"},
        "as_all": {"en": "all owners", "zh": "全部负责人"},
    }
)


def _percent(useful: int, rated: int, ctx: Context) -> str:
    return f"{useful / rated:.0%} ({useful}/{rated})" if rated else ctx.t("as_unrated")


@command(
    "alert-stats",
    aliases=("告警统计", "alertstats"),
    zh="各告警规则最近 N 天（默认 90）的触发次数和精确度（有帮助 ÷ 已评价）。",
    examples=("alert-stats", "alert-stats 30 mine", "alert-stats 6 months all"),
)
def alert_stats_cmd(
    ctx: Context,
    days: Annotated[int, Param("days")] = 90,
    which: Annotated[str | None, Param("word", choices=("mine", "all"))] = None,
) -> Reply:
    """Per-rule alert counts and precision (useful ÷ rated) over the last N days (default 90)."""
    mine = which == "mine" or (which is None and ctx.user.role in ("csm", "viewer"))
    scope = ctx.t("as_mine" if mine else "as_all")
    since = datetime.combine(ctx.today - timedelta(days=days), time.min)
    stats = alert_stats(ctx.session, since=since, owner_id=ctx.user.id if mine else None)
    if not stats:
        return Reply(text=ctx.t("as_empty", days=days, scope=scope))
    raised = sum(s.raised for s in stats)
    useful = sum(s.useful for s in stats)
    rated = sum(s.rated for s in stats)
    lines = tuple(
        ctx.t("as_line", rule=s.rule, raised=s.raised, acked=s.acknowledged, precision=_percent(s.useful, s.rated, ctx))
        for s in stats
    )
    if rated:
        summary = ctx.t("as_summary", raised=raised, rated=rated, precision=_percent(useful, rated, ctx))
    else:
        summary = ctx.t("as_summary_unrated", raised=raised)
    return Reply(
        cards=[Card(title=ctx.t("as_title", days=days, scope=scope), subtitle=summary, sections=(Section("", lines),))]
    )
