"""Commands about one account: `account`, `health`, `stage`, `note`."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from bot.core.arguments import extra_word
from bot.core.i18n import t
from bot.core.messages import Card, Reply, Section
from bot.core.money import reply_rates
from bot.core.router import Context, Param, UserError, command
from bot.views.cards import account_card, stage_label
from bot.views.charts import health_trend_image
from bot.views.readings import account_kpi_section
from lifecycle.reports.accounts import account_view, add_note
from lifecycle.reports.cardfacts import card_kpis
from lifecycle.scoring.stages import StageVisit, move_stage, stage_history, unpin
from lifecycle.store.models import Account


@command("account", aliases=("客户", "acct"), zh="客户卡片：负责人、ARR、阶段、健康度及原因、续约、NPS、工单。",
         examples=("account <account>",))
def account(ctx: Context, acct: Annotated[Account, Param("account")]) -> Reply:
    """The account card: owner, ARR, stage, health with its reasons, renewal, NPS and tickets."""
    card = _card(ctx, acct, detail=False)
    machine = ctx.services.stage_machine()
    assert acct.id is not None
    rates = reply_rates(ctx)  # money KPIs are in the reporting currency, like their goals
    kpis = account_kpi_section(card_kpis(ctx.session, machine, acct.id, today=ctx.today, rates=rates), machine,
                               rates.currency, ctx.lang)
    if kpis is not None:
        card = replace(card, sections=(*card.sections, kpis))
    return Reply(cards=[card])


def _card(ctx: Context, acct: Account, *, detail: bool) -> Card:
    return account_card(
        account_view(ctx.session, acct),
        today=ctx.today,
        lang=ctx.lang,
        machine=ctx.services.stage_machine(),
        scorecard=ctx.services.scorecard(),
        detail=detail,
    )


@command("health", aliases=("健康", "健康度"), zh="健康度明细：每项指标的数值、得分和权重，以及变化原因。",
         examples=("health <account>",))
def health(ctx: Context, acct: Annotated[Account, Param("account")]) -> Reply:
    """Health in detail: each measure's value, points and weight, and what moved the score."""
    card = _card(ctx, acct, detail=True)
    chart = health_trend_image(ctx.session, acct, lang=ctx.lang, scorecard=ctx.services.scorecard())
    return Reply(cards=[card], images=[chart] if chart else [])


@command("stage", needs="read", aliases=("阶段",), zh="查看阶段历史；或手动移动阶段并说明原因（`auto` 交回自动规则）。",
         examples=("stage <account>", "stage <account> expansion signed the upsell", "stage <account> auto"))
def stage(
    ctx: Context,
    acct: Annotated[Account, Param("account")],
    to_stage: Annotated[str | None, Param("stage", choices=("auto",))] = None,
    reason: Annotated[str, Param("text", label="reason")] = "",
) -> Reply:
    """Show the stage history; or move the account to a stage, with a reason (`auto` hands it back to the rules)."""
    machine = ctx.services.stage_machine()
    if to_stage is None:
        visits = stage_history(ctx.session, acct.id or 0)
        lines = tuple(_visit_line(v, machine, ctx.lang) for v in visits)
        return Reply(
            cards=[
                Card(
                    title=acct.name,
                    subtitle=acct.external_id,
                    sections=(Section(t("stage_history_title", ctx.lang), lines),),
                )
            ]
        )
    ctx.require_write(acct)
    if to_stage == "auto":
        if reason.strip():  # handing back to the rules takes no reason: a word after `auto` is not silently lost
            raise extra_word(ctx, f"{ctx.spec.name} {acct.name} auto", reason.split()[0], ctx.spec.usage())
        unpin(ctx.session, acct, actor_id=ctx.user.id)
        return Reply(text=ctx.t("stage_unpinned", account=acct.name))
    if not reason.strip():
        raise UserError(ctx.t("stage_needs_reason", account=acct.name, stage=to_stage))
    before = acct.stage
    move = move_stage(ctx.session, acct, to_stage, reason=reason, actor_id=ctx.user.id, machine=machine)
    return Reply(
        text=ctx.t(
            "stage_moved",
            account=acct.name,
            from_stage=stage_label(machine, before, ctx.lang),
            to_stage=stage_label(machine, move.to_stage, ctx.lang),
            reason=reason,
        )
    )


def _visit_line(v: StageVisit, machine: object, lang: str) -> str:
    """`adoption: 2026-01-04 → 2026-03-02 (57 d) — onboarding complete`; unknown dates show as `?`."""
    entered = f"{v.entered:%Y-%m-%d}" if v.entered else "?"
    left = f"{v.left:%Y-%m-%d}" if v.left else t("until_now", lang)
    days = f" ({v.days_in_stage:.0f} d)" if v.days_in_stage is not None else ""
    why = f" — {v.reason}" if v.reason else ""
    return f"{stage_label(machine, v.stage, lang)}: {entered} → {left}{days}{why}"


@command("note", needs="write", aliases=("备注",), zh="给客户记一条备注/接触记录。",
         examples=("note <account> called the CFO, renewal looks safe",))
def note(
    ctx: Context,
    acct: Annotated[Account, Param("account", access="write")],
    text: Annotated[str, Param("text", label="text")],
) -> Reply:
    """Log a note or touchpoint on the account."""
    add_note(ctx.session, acct, text, author_id=ctx.user.id)
    return Reply(text=ctx.t("note_saved", account=acct.name))
