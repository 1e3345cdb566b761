"""Builds the neutral account card from an `AccountView`; every adapter renders this same card."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from bot.core.format import money, score_line, signed
from bot.core.i18n import has, t
from bot.core.messages import Button, Card, CardField, Section
from lifecycle.reports.accounts import AccountInsight, AccountView, nps_category
from lifecycle.scoring.health import Scorecard, explain, measure_lines


def _reason_text(feature: str, value: Any, lang: str, machine: object, currency: str) -> str:
    """A driver's value in words ("usage −45 % vs the prior 30 days")."""
    if value is None:
        label = t(f"driver_{feature}", lang) if has(f"driver_{feature}") else feature
        return t("cr_no_data", lang, label=label)
    if feature in ("stage", "segment", "plan"):
        shown = stage_label(machine, str(value), lang) if feature == "stage" else str(value)
        return t(f"cr_{feature}", lang, value=shown)
    number = float(value)
    if feature == "health_change_30":
        return t("cr_health_change_30", lang, signed=signed(number))
    if feature == "usage_trend":
        return t("cr_usage_trend", lang, signed=signed(number))
    if feature == "utilisation":
        return t("cr_utilisation", lang, pct=100 * number)
    if feature == "log_arr":
        return t("cr_log_arr", lang, money=money(math.expm1(number), currency))
    if feature == "log_seats":
        return t("cr_log_seats", lang, value=math.expm1(number))
    if feature == "days_to_renewal" and number < 0:
        return t("cr_days_to_renewal_past", lang, value=-number)
    if has(f"cr_{feature}"):
        return t(f"cr_{feature}", lang, value=number)
    return f"{feature} {number:g}"


def churn_reason_line(reason: Mapping[str, Any], lang: str, machine: object = None, currency: str = "USD") -> str:
    """One stored driver in words, with which way it pushes: "↑ usage −45 % vs the prior 30 days (raises risk)"."""
    up = reason.get("direction") == "up"
    return t("cr_line", lang, arrow="↑" if up else "↓",
             text=_reason_text(str(reason.get("feature", "")), reason.get("value"), lang, machine, currency),
             effect=t("cr_up" if up else "cr_down", lang))


def cohort_text(cohort: int | None, traits: Sequence[Mapping[str, Any]], lang: str) -> str:
    """`cohort 2: low licence utilisation, low usage per seat`; what sets the cohort apart from the portfolio."""
    if cohort is None:
        return t("cohort_none", lang)
    words = [
        t("trait_high" if float(trait.get("z", 0)) > 0 else "trait_low", lang,
          label=t(f"tf_{trait.get('feature')}", lang) if has(f"tf_{trait.get('feature')}")
          else str(trait.get("feature")))
        for trait in traits
    ]
    joined = ("、" if lang == "zh" else ", ").join(words) if words else t("cohort_average", lang)
    return t("cohort_value", lang, cohort=cohort, traits=joined)


def _insight_fields(insight: AccountInsight, lang: str, currency: str) -> list[CardField]:
    if insight.model == "no_model":
        churn = t("churn_no_model", lang, needed=insight.needed_accounts, have=insight.churned_accounts)
    elif insight.model == "not_scored" or insight.probability is None:
        churn = t("churn_not_scored", lang)
    else:
        pct = f"{100 * insight.probability:.0f}"
        churn = t("churn_value", lang, pct=pct, days=insight.horizon_days,
                  level=t(f"churn_level_{insight.standing or 'typical'}", lang))
    fields = [CardField(t("f_churn", lang), churn)]
    place = [cohort_text(insight.cohort, insight.cohort_traits, lang)]
    if insight.tier:
        place.append(t("tier_value", lang, tier=insight.tier))
    fields.append(CardField(t("f_cohort_tier", lang), " · ".join(place)))
    if insight.lifetime_value is not None and insight.lifetime_years is not None:
        fields.append(CardField(t("f_clv", lang), t("clv_value", lang, money=money(insight.lifetime_value, currency),
                                                    margin=f"{100 * insight.gross_margin:.0f}",
                                                    years=insight.lifetime_years)))
    return fields


def usage_age(last_usage: date | None, today: date, lang: str, last_at: datetime | None = None) -> str:
    """How old the usage data is, and when the last usage was: its time (UTC) when the ingest API recorded the
    last event of that day, else its day (CSV imports know only days)."""
    if last_usage is None:
        return t("age_none", lang)
    days = (today - last_usage).days
    age = t("age_today", lang) if days <= 0 else t("age_day" if days == 1 else "age_days", lang, days=days)
    recorded = last_at is not None and last_at.date() == last_usage
    when = f"{last_at:%Y-%m-%d %H:%M} UTC" if recorded and last_at is not None else last_usage.isoformat()
    return t("age_when", lang, age=age, when=when)


def stage_label(machine: object, stage: str, lang: str) -> str:
    labels = getattr(machine, "label", None)
    return labels(stage, lang) if callable(labels) else stage


def _measure_line(label: str, value: str, points: float | None, contribution: float | None, lang: str) -> str:
    if value.casefold().startswith(label.casefold()):
        value = value[len(label) :].strip()
    if points is None:
        return f"{label}: {value}"
    pts = t("points", lang)
    return f"{label}: {value} — {points:.0f} {pts}, +{(contribution or 0):.1f}"


def account_card(
    view: AccountView, *, today: date, lang: str, machine: object, scorecard: Scorecard, detail: bool = False
) -> Card:
    """The account card: who owns it, what it is worth, where it stands, and why its health is what it is."""
    a = view.account
    fields = [
        CardField(t("f_owner", lang), view.owner.name if view.owner else t("nobody", lang)),
        CardField(t("f_segment", lang), " / ".join(x for x in (a.segment, a.plan) if x) or "—"),
        CardField(t("f_arr", lang), money(a.arr, a.currency)),
        CardField(t("f_seats", lang), str(a.seats)),
        CardField(
            t("f_stage", lang),
            t(
                "stage_value",
                lang,
                stage=stage_label(machine, a.stage, lang),
                days=max(0, (today - a.stage_since.date()).days),
                pinned=t("pinned", lang) if a.stage_pinned else "",
            ),
        ),
    ]
    if view.latest is not None:
        fields.append(
            CardField(
                t("f_health", lang), score_line(view.latest.score, view.latest.grade, view.delta_7, view.delta_30, lang)
            )
        )
    else:
        fields.append(CardField(t("f_health", lang), t("not_scored", lang)))
    if a.status == "churned":
        fields.append(
            CardField(
                t("f_status", lang), t("churned_value", lang, date=a.churned_on or "?", reason=a.churn_reason or "—")
            )
        )
    elif a.renewal_date is not None:
        days = (a.renewal_date - today).days
        key = "renewal_value" if days >= 0 else "renewal_past"
        fields.append(CardField(t("f_renewal", lang), t(key, lang, date=a.renewal_date.isoformat(), days=abs(days))))
    if view.nps_score is not None:
        fields.append(
            CardField(
                t("f_nps", lang),
                t(
                    "nps_value",
                    lang,
                    score=view.nps_score,
                    category=t(nps_category(view.nps_score), lang),
                    date=view.nps_at.isoformat() if view.nps_at else "?",
                ),
            )
        )
    fields.append(
        CardField(t("f_tickets", lang), t("tickets_value", lang, open=view.open_tickets, urgent=view.open_high_tickets))
    )
    if view.insight is not None and a.status != "churned":
        fields.extend(_insight_fields(view.insight, lang, a.currency))

    sections: list[Section] = []
    usage_days = (today - a.last_usage_date).days if a.last_usage_date else None
    if view.latest is not None:
        why = explain(
            view.latest.score,
            view.latest.grade,
            view.latest.measures,
            delta_7=view.delta_7,
            delta_30=view.delta_30,
            freshness={"usage_days": usage_days},
            lang=lang,  # type: ignore[arg-type]
            scorecard=scorecard,
        )
        sections.append(Section(t("s_why", lang), (why,)))
        if detail:
            lines = measure_lines(view.latest.measures, lang, scorecard)  # type: ignore[arg-type]
            sections.append(Section(t("s_measures", lang), tuple(_measure_line(*m, lang) for m in lines)))
    if view.insight is not None and view.insight.reasons and a.status != "churned":
        reason_lines = tuple(churn_reason_line(r, lang, machine, a.currency) for r in view.insight.reasons)
        sections.append(Section(t("s_churn_reasons", lang), reason_lines))
    if view.notes and not detail:
        sections.append(
            Section(t("s_notes", lang), tuple(f"{n.created_at:%Y-%m-%d} — {n.text[:160]}" for n in view.notes))
        )
    freshness = t(
        "freshness",
        lang,
        health_day=view.latest.day.isoformat() if view.latest else t("none", lang),
        usage_age=usage_age(a.last_usage_date, today, lang, a.last_usage_at),
    )
    buttons = (
        Button(t("b_health", lang), "cmd", f"health {a.external_id}"),
        Button(t("b_stage_history", lang), "cmd", f"stage {a.external_id}"),
    )
    return Card(
        title=a.name,
        subtitle=a.external_id,
        fields=tuple(fields),
        sections=tuple(sections),
        freshness=freshness,
        buttons=buttons,
    )
