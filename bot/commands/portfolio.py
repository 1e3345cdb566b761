"""`portfolio`: the portfolio at a glance — accounts, ARR by grade, average health, stages, and the stage chart."""

from __future__ import annotations

from typing import Annotated

from bot.core.format import grade
from bot.core.i18n import t
from bot.core.messages import Card, CardField, Image, Reply, Section
from bot.core.money import reply_rates, total_text, totals_note
from bot.core.permissions import coverage
from bot.core.router import Context, Param, command
from bot.views.cards import stage_label
from bot.views.charts import chart_lang, stage_distribution_png
from lifecycle.insight.churn import default_insight_config, latest_model_info
from lifecycle.insight.clv import portfolio_value
from lifecycle.reports.money import Rates, Total
from lifecycle.reports.overview import PortfolioTotals, portfolio_totals, stage_distribution
from lifecycle.store.models import Owners

# The stage whose red accounts matter most to read out first: money is about to be decided there.
URGENT_STAGE = "renewal"


def _reading(ctx: Context, totals: PortfolioTotals, red_by_stage: dict[str, int]) -> str:
    """One plain sentence: how much ARR is green, and where the red accounts are."""
    machine = ctx.services.stage_machine()
    parts = []
    green = totals.arr_share("green")
    if totals.arr.by_currency and green is not None:
        parts.append(ctx.t("pf_reading_green", pct=f"{green:.0f}"))
    reds = {s: n for s, n in red_by_stage.items() if n}
    if not reds:
        parts.append(ctx.t("pf_reading_no_red"))
    else:
        # Red in the urgent stage first; otherwise the stage with the most red accounts.
        stage = URGENT_STAGE if URGENT_STAGE in reds else max(reds, key=lambda s: (reds[s], s))
        label = stage_label(machine, stage, ctx.lang)
        key = "pf_reading_red_stage_one" if reds[stage] == 1 else "pf_reading_red_stage"
        parts.append(ctx.t(key, count=reds[stage], stage=label))
    unscored = totals.accounts_by_grade.get("unknown", 0)
    if unscored:
        parts.append(ctx.t("pf_reading_unscored_one" if unscored == 1 else "pf_reading_unscored", count=unscored))
    text = ("；" if ctx.lang == "zh" else "; ").join(parts)
    return text[:1].upper() + text[1:] + ("。" if ctx.lang == "zh" else ".")


def _value_fields(ctx: Context, owner_id: Owners, rates: Rates) -> tuple[list[CardField], tuple[Total, ...]]:
    """ARR at risk and lifetime value from the churn model, each with what it means; and the totals shown."""
    info = latest_model_info(ctx.session)
    if info is None:
        return [CardField(ctx.t("pf_arr_at_risk"), ctx.t("pf_no_churn_model"))], ()
    config = default_insight_config()
    value = portfolio_value(ctx.session, horizon_days=info.horizon_days, config=config.value, owner_id=owner_id,
                            rates=rates)
    if not value.scored:
        return [CardField(ctx.t("pf_arr_at_risk"), ctx.t("pf_not_scored"))], ()
    partly = ctx.t("pf_partly_scored", scored=value.scored, active=value.active) if value.scored < value.active else ""
    share = value.risk_share
    shown = ctx.t("pf_risk_share", pct=f"{share:.0f}") if share is not None else ""
    return [
        CardField(ctx.t("pf_arr_at_risk"), ctx.t("pf_arr_at_risk_value", arr=total_text(value.arr_at_risk),
                                                 share=shown, days=value.horizon_days) + partly),
        CardField(ctx.t("pf_clv"), ctx.t("pf_clv_value", clv=total_text(value.lifetime_value),
                                         margin=f"{100 * value.gross_margin:.0f}") + partly),
    ], (value.arr_at_risk, value.lifetime_value)


@command(
    "portfolio",
    aliases=("组合", "概览", "overview"),
    zh="客户组合概览：ARR 按健康度分布、平均健康度、各阶段客户（附图）。",
    examples=("portfolio", "portfolio mine"),
)
def portfolio(
    ctx: Context,
    which: Annotated[str | None, Param("word", choices=("mine", "all"))] = None,
) -> Reply:
    """The portfolio at a glance: ARR by health grade, average health and accounts per stage, with a chart."""
    covered = coverage(ctx.session, ctx.user, ctx.services.settings.csm_read_scope, which)
    owner_id = covered.ids
    scope = t(f"scope_{covered.key}", ctx.lang)
    rates = reply_rates(ctx)
    totals = portfolio_totals(ctx.session, owner_id=owner_id, rates=rates)
    if not totals.active and not totals.churned:
        return Reply(text=ctx.t("portfolio_empty", scope=scope))
    machine = ctx.services.stage_machine()
    dist = stage_distribution(ctx.session, owner_id=owner_id, order=machine.stage_names, rates=rates)
    scorecard = ctx.services.scorecard()

    fields = [
        CardField(ctx.t("pf_accounts"), ctx.t("pf_accounts_value", active=totals.active, churned=totals.churned)),
        CardField(ctx.t("pf_arr"), total_text(totals.arr)),
    ]
    for g in ("green", "yellow", "red", "unknown"):
        count = totals.accounts_by_grade.get(g, 0)
        if g == "unknown" and not count:
            continue
        label = grade(g, ctx.lang) if g != "unknown" else f"⚪ {ctx.t('grade_unknown')}"
        share = totals.arr_share(g)
        if share is not None:
            key = "pf_arr_grade_value_one" if count == 1 else "pf_arr_grade_value"
        else:
            key = "pf_arr_grade_count_one" if count == 1 else "pf_arr_grade_count"
        value = ctx.t(key, arr=total_text(totals.arr_by_grade[g]), pct=f"{share or 0.0:.0f}", count=count)
        fields.append(CardField(ctx.t("pf_arr_grade", grade=label), value))
    avg = totals.average_health
    avg_text = f"{avg:.0f} {grade(scorecard.grade(avg), ctx.lang)}" if avg is not None else ctx.t("pf_not_scored")
    fields.append(CardField(ctx.t("pf_avg_health"), avg_text))
    value_fields, value_totals = _value_fields(ctx, owner_id, rates)
    fields.extend(value_fields)
    shown_totals = (totals.arr, *totals.arr_by_grade.values(), *value_totals, *dist["arr"])

    stage_lines = tuple(
        ctx.t(
            "pf_stage_line",
            stage=stage_label(machine, str(stage), ctx.lang),
            count=int(row["accounts"]),
            arr=total_text(row["arr"]),
            red=int(row["red"]),
            yellow=int(row["yellow"]),
            green=int(row["green"]),
        )
        for stage, row in dist.iterrows()
    )
    red_by_stage = {str(s): int(n) for s, n in dist["red"].items()}
    card = Card(
        title=ctx.t("portfolio_title", scope=scope),
        subtitle=_reading(ctx, totals, red_by_stage),
        fields=tuple(fields),
        sections=(Section(ctx.t("pf_stages"), stage_lines),) if stage_lines else (),
        freshness=totals_note(rates, *shown_totals, lang=ctx.lang),
    )
    images = []
    if not dist.empty:
        shown = chart_lang(ctx.lang)
        png = stage_distribution_png(
            dist,
            f"{t('pf_chart_title', shown)} ({t(f'scope_{covered.key}', shown)})",
            lang=shown,
            stage_labels={str(s): stage_label(machine, str(s), shown) for s in dist.index},
            arr_labels={str(s): total_text(a) for s, a in dist["arr"].items()},
            note=totals_note(rates, *dist["arr"], lang=shown),
        )
        images.append(Image(png=png, filename="portfolio-stages.png", title=ctx.t("pf_chart_title")))
    return Reply(cards=[card], images=images)
