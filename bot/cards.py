"""Builds the neutral account card from an `AccountView`; every adapter renders this same card."""

from __future__ import annotations

from datetime import date

from bot.format import money, score_line
from bot.i18n import t
from bot.messages import Button, Card, CardField, Section
from lifecycle.accounts import AccountView, nps_category
from lifecycle.health import Scorecard, explain, measure_lines


def usage_age(last_usage: date | None, today: date, lang: str) -> str:
    if last_usage is None:
        return t("age_none", lang)
    days = (today - last_usage).days
    if days <= 0:
        return t("age_today", lang)
    return t("age_day" if days == 1 else "age_days", lang, days=days)


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
    if view.notes and not detail:
        sections.append(
            Section(t("s_notes", lang), tuple(f"{n.created_at:%Y-%m-%d} — {n.text[:160]}" for n in view.notes))
        )
    freshness = t(
        "freshness",
        lang,
        health_day=view.latest.day.isoformat() if view.latest else t("none", lang),
        usage_age=usage_age(a.last_usage_date, today, lang),
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
