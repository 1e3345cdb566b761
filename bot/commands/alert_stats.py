"""`alert-stats`: how each alert rule performed over the last N days — how often it fired, and its precision."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Annotated

from bot.core.messages import Card, Reply, Section
from bot.core.router import Context, Param, command
from lifecycle.scoring.alerts import alert_stats


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
