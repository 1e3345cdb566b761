"""The alert message pushed to an owner: a risk alert or a renewal prompt as one neutral card with its buttons.

Everything shown comes from the alert row itself (`Alert.details`, filled when the alert was raised), so the
message reads the same whenever the outbox delivers it, and one `Reply` renders on Slack and Telegram alike.
The buttons run ordinary commands: `ack`, `snooze`, `useful` and `reassign`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bot.core.format import grade, money, score_line, signed
from bot.core.i18n import t
from bot.core.messages import Button, Card, CardField, Reply, Section
from bot.views.cards import churn_reason_line
from lifecycle.store.models import Account, Alert

SEVERITY_ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
RENEWAL_PROMPT = "renewal_prompt"
RENEWAL_ICON = "📅"
MAX_RISKS = 5
MAX_QUOTES = 2


def _lang(lang: str) -> str:
    return "zh" if lang == "zh" else "en"


def _localised(details: Mapping[str, Any], key: str, lang: str, fallback: str = "") -> str:
    """`details[key]`, or its `_zh` variant in Chinese when there is one."""
    if lang == "zh" and details.get(f"{key}_zh"):
        return str(details[f"{key}_zh"])
    value = details.get(key)
    return str(value) if value else fallback


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def severity_label(severity: str, lang: str) -> str:
    return t(f"ac_sev_{severity}", lang) if severity in SEVERITY_ICON else severity


def alert_title(alert: Alert, lang: str) -> str:
    """The alert's headline in `lang` (the Chinese one is kept in the details)."""
    headline = alert.title or alert.rule
    return _localised(alert.details or {}, "title", lang, headline) if lang == "zh" else headline


def alert_buttons(alert: Alert, lang: str) -> tuple[Button, ...]:
    """Acknowledge / Snooze 7 days / Not useful / Reassign: each runs a command, so it works on every platform."""
    return (
        Button(t("ac_btn_ack", lang), "cmd", f"ack {alert.id}", style="primary"),
        Button(t("ac_btn_snooze", lang), "cmd", f"snooze {alert.id} 7"),
        Button(t("ac_btn_not_useful", lang), "cmd", f"useful {alert.id} no"),
        Button(t("ac_btn_reassign", lang), "cmd", f"reassign {alert.id}"),
    )


def _health_field(details: Mapping[str, Any], lang: str) -> CardField | None:
    score = _number(details.get("health_score"))
    if score is None:
        return None
    line = score_line(score, details.get("health_grade"), _number(details.get("delta_7")),
                      _number(details.get("delta_30")), lang)
    return CardField(t("ac_health", lang), line)


def _driver_lines(drivers: Sequence[Mapping[str, Any]], lang: str) -> tuple[str, ...]:
    lines = []
    for d in drivers:
        label = _localised(d, "label", lang, str(d.get("measure", "")))
        text = _localised(d, "text", lang)
        lines.append(f"{label}: {text}" if text else label)
    return tuple(lines)


def _risk_card(alert: Alert, account: Account, lang: str) -> Card:
    details = alert.details or {}
    fields = [CardField(t("ac_arr_at_stake", lang),
                        money(_number(details.get("arr")) or account.arr, details.get("currency") or account.currency))]
    health = _health_field(details, lang)
    if health is not None:
        fields.append(health)
    stage = details.get("stage") or account.stage
    if stage:
        fields.append(CardField(t("ac_stage", lang), str(stage)))
    sections = []
    reasons = details.get("churn_reasons") or ()
    probability = _number(details.get("churn_probability"))
    if probability is not None:
        fields.append(CardField(t("ac_churn", lang), f"{100 * probability:.0f} %"))
    if reasons:
        lines = tuple(churn_reason_line(r, lang, None, details.get("currency") or account.currency) for r in reasons)
        sections.append(Section(t("ac_churn_reasons", lang), lines))
    drivers = _driver_lines(details.get("drivers") or (), lang)
    if drivers:
        sections.append(Section(t("ac_drivers", lang), drivers))
    steps = _localised(details, "next_steps", lang)
    if steps:
        sections.append(Section(t("ac_next_steps", lang), (steps,)))
    return _card(alert, account, SEVERITY_ICON.get(alert.severity, "⚪"), fields, sections, lang)


def achievement_lines(achievements: Mapping[str, Any], lang: str) -> tuple[str, ...]:
    """Usage growth, features adopted, tickets resolved and promoter quotes, in words."""
    lines: list[str] = []
    first, last = _number(achievements.get("usage_first")), _number(achievements.get("usage_last"))
    if first is not None and last is not None:
        pct = _number(achievements.get("usage_growth_pct"))
        pct_text = f"{signed(pct)} %" if pct is not None else "n/a"
        lines.append(t("rp_usage_growth", lang, first=first, last=last, pct=pct_text))
    else:
        lines.append(t("rp_usage_unknown", lang))
    features = list(achievements.get("features") or [])
    if features:
        lines.append(t("rp_features", lang, count=len(features), names=", ".join(features)))
    else:
        lines.append(t("rp_no_features", lang))
    lines.append(t("rp_tickets", lang, count=int(achievements.get("tickets_resolved") or 0)))
    quotes = list(achievements.get("quotes") or [])[:MAX_QUOTES]
    if quotes:
        lines += [t("rp_quote", lang, comment=q.get("comment", ""), score=q.get("score", "?")) for q in quotes]
    else:
        lines.append(t("rp_no_quotes", lang))
    return tuple(lines)


def _renewal_card(alert: Alert, account: Account, lang: str) -> Card:
    details = alert.details or {}
    fields = [
        CardField(t("ac_renewal", lang), t("ac_renewal_value", lang, date=details.get("renewal_date", "?"),
                                           days=details.get("days_left", "?"))),
        CardField(t("ac_arr_at_stake", lang),
                  money(_number(details.get("arr")) or account.arr, details.get("currency") or account.currency)),
    ]
    health = _health_field(details, lang)
    fields.append(health if health is not None else CardField(t("ac_health", lang), grade(None, lang)))
    nps = details.get("nps_score")
    fields.append(CardField(t("rp_nps", lang), t("rp_nps_value", lang, score=nps, date=details.get("nps_at", "?"))
                            if nps is not None else t("rp_none", lang)))
    risks = [
        f"{SEVERITY_ICON.get(r.get('severity', ''), '⚪')} #{r.get('id')} "
        + _localised(r, "title", lang, r.get("rule", ""))
        for r in (details.get("risks") or [])[:MAX_RISKS]
    ]
    sections = [
        Section(t("rp_risks", lang), tuple(risks) or (t("rp_no_risks", lang),)),
        Section(t("rp_achievements", lang, since=details.get("since") or "?"),
                achievement_lines(details.get("achievements") or {}, lang)),
    ]
    steps = _localised(details, "next_steps", lang)
    if steps:
        sections.append(Section(t("rp_looking_ahead", lang), (steps,)))
    return _card(alert, account, RENEWAL_ICON, fields, sections, lang)


def _card(
    alert: Alert, account: Account, icon: str, fields: list[CardField], sections: list[Section], lang: str
) -> Card:
    """The frame every alert message shares: icon, account and title; id, rule and severity; the four buttons."""
    return Card(
        title=f"{icon} {account.name} — {alert_title(alert, lang)}",
        subtitle=t("ac_subtitle", lang, id=alert.id, rule=alert.rule, severity=severity_label(alert.severity, lang)),
        fields=tuple(fields),
        sections=tuple(sections),
        buttons=alert_buttons(alert, lang),
    )


def alert_reply(alert: Alert, account: Account, lang: str) -> Reply:
    """The message for one alert: account, rule, severity, drivers, ARR at stake, next steps and the buttons;
    a renewal prompt shows health, NPS, open risks and the contract's achievements instead of drivers."""
    lang = _lang(lang)
    card = _renewal_card(alert, account, lang) if alert.rule == RENEWAL_PROMPT else _risk_card(alert, account, lang)
    icon = RENEWAL_ICON if alert.rule == RENEWAL_PROMPT else SEVERITY_ICON.get(alert.severity, "⚪")
    text = t("ac_text", lang, icon=icon, account=account.name, title=alert_title(alert, lang))
    return Reply(text=text, cards=[card])
