"""`nps`: the Net Promoter Score of the portfolio, one account or one segment, with what it means and a trend chart."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import pandas as pd

from bot.core.arguments import (
    SEGMENT_WORDS,
    SYNONYMS,
    WordError,
    did_you_mean,
    extra_word,
    known_segment,
    named_account,
    near,
)
from bot.core.format import signed
from bot.core.i18n import t
from bot.core.messages import Card, CardField, Image, Reply, Section
from bot.core.router import Context, Param, UserError, command
from bot.views.cards import stage_label
from bot.views.charts import chart_lang, has_cjk, nps_trend_png
from lifecycle.reports.accounts import nps_category, segment_names
from lifecycle.reports.nps import NpsComment, NpsSummary, latest_comments, month_start, nps_by, nps_summary, nps_trend
from lifecycle.store.errors import NotFoundError
from lifecycle.store.models import Account

MONTHS = 12  # the headline NPS and the trend cover the same window
BREAKDOWN_ROWS = 8
COMMENTS = 5
Category = Literal["promoter", "passive", "detractor"]
_CATEGORY_ICON = {"promoter": "🟢", "passive": "🟡", "detractor": "🔴"}


def nps_meaning(value: float, lang: str) -> str:
    """What an NPS says in words (on the rounded value, so `±0` never reads as "more promoters")."""
    rounded = round(value)
    if rounded >= 50:
        key = "nps_meaning_excellent"
    elif rounded > 0:
        key = "nps_meaning_positive"
    elif rounded == 0:
        key = "nps_meaning_zero"
    else:
        key = "nps_meaning_negative"
    return t(key, lang)


def _count(ctx: Context, count: int, summary: NpsSummary, category: Category) -> str:
    return ctx.t("nps_count_pct", count=count, pct=f"{summary.share(category):.0f}")


def _fields(ctx: Context, summary: NpsSummary) -> tuple[CardField, ...]:
    value = summary.nps or 0.0
    if summary.response_rate is not None:
        rate = ctx.t(
            "nps_rate_value",
            pct=f"{100 * summary.response_rate:.0f}",
            answered=summary.surveys_answered,
            sent=summary.surveys_sent,
        )
    else:
        rate = ctx.t("nps_rate_none")
    return (
        CardField(ctx.t("nps_f_score"), f"*{signed(value)}* — {nps_meaning(value, ctx.lang)}"),
        CardField(ctx.t("nps_f_responses"), str(summary.responses)),
        CardField(ctx.t("nps_f_promoters"), _count(ctx, summary.promoters, summary, "promoter")),
        CardField(ctx.t("nps_f_passives"), _count(ctx, summary.passives, summary, "passive")),
        CardField(ctx.t("nps_f_detractors"), _count(ctx, summary.detractors, summary, "detractor")),
        CardField(ctx.t("nps_f_rate"), rate),
    )


def _breakdown(ctx: Context, title: str, frame: pd.DataFrame, *, stages: bool) -> Section | None:
    """A by-segment or by-stage section; none when everything falls in one group (it would repeat the headline)."""
    if len(frame) < 2:
        return None
    machine = ctx.services.stage_machine()
    lines = [
        ctx.t(
            "nps_by_line_one" if int(row["responses"]) == 1 else "nps_by_line",
            group=stage_label(machine, str(key), ctx.lang) if stages else str(key),
            nps=signed(float(row["nps"])),
            responses=int(row["responses"]),
        )
        for key, row in frame.head(BREAKDOWN_ROWS).iterrows()
    ]
    if len(frame) > BREAKDOWN_ROWS:
        lines.append(ctx.t("more_rows", count=len(frame) - BREAKDOWN_ROWS))
    return Section(title, tuple(lines))


def _comment_line(c: NpsComment, *, with_account: bool) -> str:
    category = nps_category(c.score)
    who = f" · {c.account_name}" if with_account else ""
    return f"{_CATEGORY_ICON[category]} {c.score}{who} · {c.day.isoformat()} — “{c.comment[:200]}”"


def _target(ctx: Context, words: list[str]) -> tuple[Account | None, str | None, bool]:
    """What `nps …` is about: (an account, a segment, whether `mine`); nothing for the whole portfolio. Every word
    is used or refused: a typo of `mine`, `segment` or a segment's name gets "Did you mean"."""
    if not words:
        return None, None, False
    first = words[0].casefold()
    if first in SEGMENT_WORDS:
        if len(words) == 1:
            raise UserError(ctx.t("segment_needs_name", command=ctx.spec.name, word=words[0],
                                  segments=", ".join(segment_names(ctx.session)) or "—", usage=ctx.spec.usage()))
        return None, known_segment(ctx, words[1:], done=f"{ctx.spec.name} {words[0]}", usage=ctx.spec.usage()), False
    if SYNONYMS.get(first, first) == "mine":
        if len(words) > 1:
            raise extra_word(ctx, f"{ctx.spec.name} {words[0]}", words[1], ctx.spec.usage())
        return None, None, True
    try:
        return named_account(ctx, words, access="read", done=ctx.spec.name, usage=ctx.spec.usage()), None, False
    except NotFoundError:
        segments = segment_names(ctx.session)
        wanted = " ".join(words).casefold()
        if wanted in segments:
            return None, wanted, False  # `nps enterprise`: a segment's name alone
        if len(words) > 1 and near(first, SEGMENT_WORDS):  # `nps sgement enterprise`
            close = near(first, SEGMENT_WORDS)
            text = ctx.t("bad_argument", value=words[0], argument="`account|mine|segment <s>`", command=ctx.spec.name,
                         hint=did_you_mean(ctx, close), usage=ctx.spec.usage())
            raise WordError(text, word=words[0], suggestions=close) from None
        close = near(wanted, ["mine", *SEGMENT_WORDS, *segments]) if len(words) == 1 else []
        if not close:
            raise
        raise WordError(ctx.t("no_account", name=words[0]) + did_you_mean(ctx, close), word=words[0],
                        suggestions=close) from None


@command(
    "nps",
    aliases=("净推荐值",),
    zh="NPS：全部、某个客户（`nps <客户>`）或某个细分（`nps segment <细分>`），含趋势图和最新评论。",
    examples=("nps", "nps <account>", "nps mine", "nps segment enterprise"),
)
def nps(
    ctx: Context,
    target: Annotated[str, Param("rest", label="account|mine|segment <s>")] = "",
) -> Reply:
    """NPS overall, for one account (`nps <account>`) or a segment (`nps segment <s>`): counts, trend and comments."""
    own_only = ctx.user.role == "csm" and ctx.services.settings.csm_read_scope == "own"
    owner_id = ctx.user.id if own_only else None
    account, segment, mine = _target(ctx, target.split())
    if account is not None:
        ctx.accounts.append(account)
        owner_id = None  # the account itself is the whole scope, and reading it was allowed
        scope = account.name
    elif segment is not None:
        scope = ctx.t("nps_scope_segment", segment=segment)
    else:
        owner_id = ctx.user.id if mine else owner_id
        scope = ctx.t("nps_scope_mine" if owner_id is not None else "nps_scope_all")

    today: date = ctx.today
    since = month_start(today, MONTHS - 1)
    account_id = account.id if account else None
    summary = nps_summary(
        ctx.session, account_id=account_id, owner_id=owner_id, segment=segment, since=since, until=today
    )
    if not summary.responses:
        text = ctx.t("nps_empty", scope=scope, months=MONTHS)
        if summary.surveys_sent:
            text += ctx.t("nps_empty_sent", sent=summary.surveys_sent)
        return Reply(text=text)

    sections: list[Section] = []
    if account is None:
        if segment is None:
            seg = nps_by(ctx.session, "segment", owner_id=owner_id, since=since, until=today)
            sections += [s for s in (_breakdown(ctx, ctx.t("nps_by_segment"), seg, stages=False),) if s]
        by_stage = nps_by(ctx.session, "stage", owner_id=owner_id, segment=segment, since=since, until=today)
        sections += [s for s in (_breakdown(ctx, ctx.t("nps_by_stage"), by_stage, stages=True),) if s]
    comments = latest_comments(
        ctx.session, account_id=account_id, owner_id=owner_id, segment=segment, since=since, until=today, limit=COMMENTS
    )
    if comments:
        lines = tuple(_comment_line(c, with_account=account is None) for c in comments)
        sections.append(Section(ctx.t("nps_comments"), lines))

    card = Card(
        title=ctx.t("nps_title", scope=scope),
        subtitle=ctx.t("nps_period", months=MONTHS, since=since.isoformat(), until=today.isoformat()),
        fields=_fields(ctx, summary),
        sections=tuple(sections),
    )
    trend = nps_trend(
        ctx.session, account_id=account_id, owner_id=owner_id, segment=segment, months=MONTHS, today=today
    )
    shown = chart_lang(ctx.lang)
    chart_scope = scope if (shown == "zh" or not has_cjk(scope)) else (account.external_id if account else scope)
    if account is None and segment is None:
        chart_scope = t("nps_scope_mine" if owner_id is not None else "nps_scope_all", shown)
    png = nps_trend_png(trend, t("nps_chart_title", shown, scope=chart_scope), lang=shown)
    image = Image(png=png, filename="nps-trend.png", title=ctx.t("nps_chart_title", scope=scope))
    return Reply(cards=[card], images=[image])
