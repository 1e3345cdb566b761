"""NPS surveys in chat: the question card, sending it through the outbox, answering, comments and their effects.

The question is a neutral card with buttons 0–10 (two rows) whose value is `<signed token>:<score>`; it goes out
through the outbox (kind `survey`, due at the end of the contact's quiet hours), in the account's shared channel
addressed to the contact, or to the contact directly. Adapters hand presses and comments to `SurveyDesk`, which
records them through `lifecycle.surveys` and answers with a private `PressOutcome`: the confirmation, or why the
press was refused, and the follow-up question ("What's the main reason for your score?") on a first answer.

What an answer causes is written in the same transaction as the answer: a detractor (0–6) raises the
`nps_detractor` alert, routed to the owner's DMs through the alert outbox at once (not held back by the daily
budget); its message quotes the comment, and a comment that arrives after the message went out follows it as a
message of its own. A promoter (9–10) sends the owner an advocacy prompt (reference, case study, review). After the
answer is confirmed, the account's health is re-scored so its NPS measure reflects the answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from bot.core.i18n import t
from bot.core.messages import Button, Card, CardField, Mention, Reply, Section, TextPrompt
from bot.push.notifier import SURVEY_ID_KEY, SURVEY_KIND, reply_to_payload
from bot.push.routing import (
    ABOUT_KEY,
    TO_KEY,
    Reasons,
    Recipient,
    Target,
    Why,
    person,
    post,
    release_time,
    replace_reply,
    route,
    route_alerts,
    with_platforms,
)
from bot.views.alert_cards import alert_reply
from lifecycle import surveys as core
from lifecycle.scoring.alerts import AlertConfig, load_alert_config
from lifecycle.store import outbox
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, Alert, AuditLog, Contact, Delivery, NpsResponse, NpsSurvey, User, utcnow
from lifecycle.store.outbox import enqueue
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.surveys")

SURVEY_ACTION = "nps"
REMINDER_KIND = "survey_reminder"
ADVOCACY_KIND = "advocacy"
ALERT_COMMENT_KIND = "alert_comment"
FIRST_ROW = range(0, 6)  # 0–5 on the first row, 6–10 on the second: fits a phone screen on Telegram
COMMENT_QUOTE_MAX = 500
WAITING = (outbox.PENDING, outbox.UNDELIVERABLE)  # not sent yet: a waiting message is rewritten, not followed up


def _lang(lang: str | None) -> str:
    return "zh" if lang == "zh" else "en"


# ------------------------------------------------------------------------------------------------ the question


def answer_buttons(token: str) -> tuple[Button, ...]:
    """0–10, each answering the survey with its score; 0–5 on the first row, 6–10 on the second."""
    return tuple(
        Button(str(score), SURVEY_ACTION, f"{token}:{score}", row=0 if score in FIRST_ROW else 1)
        for score in range(11)
    )


def question_reply(
    *, token: str, lang: str, product: str, contact_name: str, account_name: str,
    mention: Mention | None = None, expires_at: datetime | None = None, reminder: bool = False,
) -> Reply:
    """The survey question: a greeting (addressed to the contact), the question, the scale's end labels and the
    eleven answer buttons."""
    lang = _lang(lang)
    intro = t("sv_reminder" if reminder else "sv_intro", lang, name=contact_name, account=account_name)
    card = Card(
        title=t("sv_question", lang, product=product),
        sections=(Section("", (t("sv_scale", lang),)),),
        freshness=t("sv_closes", lang, date=expires_at.date().isoformat()) if expires_at else "",
        buttons=answer_buttons(token),
    )
    return Reply(text=intro, cards=[card], mention=mention)


def mention_for(contact: Contact, platform: str, target: str) -> Mention | None:
    """Address the contact where others can read the question (a shared channel, a group); not in a DM."""
    if platform == "slack" and contact.slack_user_id and target != contact.slack_user_id:
        return Mention(contact.slack_user_id, contact.name)
    if platform == "telegram" and contact.telegram_user_id and target != contact.telegram_user_id:
        return Mention(contact.telegram_user_id, contact.name)
    if platform == "feishu" and contact.feishu_open_id and target != contact.feishu_open_id:
        return Mention(contact.feishu_open_id, contact.name)
    return None


def _contacts(session: Session, ids: Sequence[int | None]) -> dict[int, Contact]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    rows = session.execute(select(Contact).where(col(Contact.id).in_(wanted))).scalars().all()
    return {c.id: c for c in rows if c.id is not None}


def _accounts(session: Session, ids: Sequence[int]) -> dict[int, Account]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.execute(select(Account).where(col(Account.id).in_(wanted))).scalars().all()
    return {a.id: a for a in rows if a.id is not None}


_UTC = ZoneInfo("UTC")


def contact_reasons(contact: Contact, config: core.SurveyConfig, platforms: Collection[str]) -> Reasons:
    """Why no configured platform reaches a contact, for each platform surveys may use (`delivery.platforms`)."""
    ids = {"slack": contact.slack_user_id, "telegram": contact.telegram_user_id or contact.telegram_chat_id,
           "feishu": contact.feishu_open_id or contact.feishu_chat_id}
    parts: list[Why] = []
    lacking = [p for p in config.delivery.platforms if not ids.get(p)]
    for platform in config.delivery.platforms:
        # A missing id matters only on a platform csbot could send on (all of them when none is).
        if not ids.get(platform) and (platform in platforms or not set(lacking) & set(platforms)):
            parts.append({"why": "no_id", "platform": platform, "who": contact.name})
        elif ids.get(platform) and platform not in platforms:
            parts.append({"why": "off", "platform": platform})
    return (tuple(parts),)


def contact_target(
    contact: Contact, config: core.SurveyConfig, platforms: Collection[str], lang: str
) -> tuple[Target, str]:
    """Where a survey message to `contact` goes on the configured `platforms`, and the channel its answer is
    expected in; an undeliverable target (at where it would have gone) when none reaches them."""
    found = core.contact_targets([contact], config, platforms).iloc[0]
    to = Recipient(contact_id=contact.id, name=contact.name)
    if found["platform"]:
        return Target(str(found["platform"]), str(found["target"]), _UTC, lang, None, to), str(found["channel_id"])
    return Target(str(found["blocked"]), str(found["blocked_target"]), _UTC, lang, None, to,
                  contact_reasons(contact, config, platforms)), ""


def enqueue_questions(
    session: Session, created: Sequence[core.NewSurvey], *, now: datetime, config: core.SurveyConfig,
    platforms: Collection[str] | None = None,
) -> int:
    """One outbox delivery per new survey, due at its send time (after the quiet hours); an undeliverable
    survey's is recorded undeliverable with why (`platforms`: the configured ones, None: all). Flushes."""
    contacts = _contacts(session, [s.contact_id for s in created])
    accounts = _accounts(session, [s.account_id for s in created])
    configured = tuple(platforms or ())  # a survey is only undeliverable when the configured platforms are known
    for new in created:
        contact = contacts[new.contact_id]
        reply = question_reply(
            token=new.token, lang=new.lang, product=config.delivery.product, contact_name=contact.name,
            account_name=new.account_name, mention=mention_for(contact, new.platform, new.target),
            expires_at=new.send_at + config.expiry,
        )
        reasons = contact_reasons(contact, config, configured) if new.undeliverable else ()
        target = Target(new.platform, new.target, _UTC, new.lang, None,
                        Recipient(contact_id=contact.id, name=contact.name), reasons)
        account = accounts.get(new.account_id)
        post(session, target, payload=reply_to_payload(reply) | {SURVEY_ID_KEY: new.survey_id}, kind=SURVEY_KIND,
             now=now, due=new.send_at, about=(account.owner_id if account else None, new.account_id))
    session.flush()
    return len(created)


def enqueue_reminders(
    session: Session, reminders: Sequence[core.Reminder], *, now: datetime, config: core.SurveyConfig,
    platforms: Collection[str] | None = None,
) -> int:
    """One reminder delivery per survey (the same buttons and token). A survey sent on a platform that is no longer
    configured is reminded on one that is (and answered there), or its reminder is recorded undeliverable.
    Flushes."""
    contacts = _contacts(session, [r.contact_id for r in reminders])
    accounts = _accounts(session, [r.account_id for r in reminders])
    for rem in reminders:
        contact = contacts.get(rem.contact_id) if rem.contact_id is not None else None
        account = accounts.get(rem.account_id)
        target = Target(rem.platform, rem.target, _UTC, rem.lang, None,
                        Recipient(contact_id=rem.contact_id, name=contact.name if contact else ""))
        if platforms is not None and rem.platform not in platforms and contact is not None:
            target, channel = contact_target(contact, config, platforms, rem.lang)
            survey = session.get(NpsSurvey, rem.survey_id)
            if target.deliverable and survey is not None:  # answers are expected where the reminder goes
                survey.platform, survey.channel_id = target.platform, channel or None
                session.add(survey)
        reply = question_reply(
            token=rem.token, lang=rem.lang, product=config.delivery.product,
            contact_name=contact.name if contact else "", account_name=account.name if account else "",
            mention=mention_for(contact, target.platform, target.target) if contact else None, reminder=True,
        )
        post(session, target, payload=reply_to_payload(reply) | {SURVEY_ID_KEY: rem.survey_id}, kind=REMINDER_KIND,
             now=now, due=rem.send_at, about=(account.owner_id if account else None, rem.account_id))
    session.flush()
    return len(reminders)


@dataclass(frozen=True)
class DispatchStats:
    """What the nightly survey step did."""

    expired: int = 0
    sent: int = 0
    held: int = 0
    reminders: int = 0
    by_trigger: dict[str, int] = field(default_factory=dict)
    undeliverable: int = 0  # due, but reachable only on platforms that are not configured


def dispatch_surveys(
    session: Session, *, today: date, now: datetime, config: core.SurveyConfig, secret: bytes,
    platforms: Collection[str] | None = None,
) -> DispatchStats:
    """The nightly step: expire old surveys, create and enqueue the due ones (cadence, throttle, daily cap, quiet
    hours), and enqueue at most one reminder per unanswered survey. `platforms` are the configured ones (None:
    all): a contact reachable only elsewhere gets an undeliverable survey, outside the cap. Flushes; the caller
    commits."""
    expired = core.expire_surveys(session, now)
    due = core.due_surveys(session, today, now, config, platforms=platforms)
    created = core.create_surveys(session, due, now=now, config=config, secret=secret)
    enqueue_questions(session, created, now=now, config=config, platforms=platforms)
    reminders = enqueue_reminders(session, core.choose_reminders(session, now, config), now=now, config=config,
                                  platforms=platforms)
    asked = [s for s in created if not s.undeliverable]
    counts = due.loc[~due["undeliverable"].astype(bool), "trigger"].value_counts().to_dict() if not due.empty else {}
    return DispatchStats(
        expired=expired, sent=len(asked), held=sum(1 for s in asked if s.send_at > now), reminders=reminders,
        by_trigger={str(k): int(v) for k, v in counts.items()}, undeliverable=len(created) - len(asked),
    )


# ----------------------------------------------------------------------------------------------------- effects


def _owner_lang(owner: User | None, delivery: Delivery, config: AlertConfig) -> str:
    mine = owner is not None and delivery.target in (owner.slack_user_id, owner.telegram_user_id,
                                                     owner.feishu_open_id)
    return _lang(owner.lang if mine and owner is not None and owner.lang else config.routing.lang)


def _digest(text: Any) -> str:
    """A short, process-independent fingerprint of a comment (for the follow-up's dedupe key)."""
    return hashlib.blake2b(str(text or "").encode("utf-8"), digest_size=6).hexdigest()


def _quote(comment: str | None) -> str:
    text = " ".join((comment or "").split())
    return text if len(text) <= COMMENT_QUOTE_MAX else text[: COMMENT_QUOTE_MAX - 1] + "…"


def detractor_reply(alert: Alert, account: Account, lang: str) -> Reply:
    """The alert card, with what the respondent said (or that the comment will follow) as its first section."""
    reply = alert_reply(alert, account, lang)
    details = alert.details or {}
    contact = str(details.get("respondent") or "")
    comment = _quote(details.get("comment"))
    said = Section(t("sv_alert_said", lang, contact=contact),
                   (f"“{comment}”" if comment else t("sv_alert_no_comment", lang),))
    cards = [dataclasses.replace(card, sections=(said, *card.sections)) for card in reply.cards[:1]]
    return dataclasses.replace(reply, cards=cards + reply.cards[1:])


def _alert_deliveries(session: Session, alert_id: int) -> list[Delivery]:
    return list(session.execute(
        select(Delivery).where(col(Delivery.alert_id) == alert_id, col(Delivery.kind) == "alert")
    ).scalars().all())


def _show_comment(session: Session, alert: Alert, account: Account, owner: User | None, config: AlertConfig,
                  now: datetime) -> None:
    """Put the comment into the alert's messages: rewritten while still waiting in the outbox, else followed by a
    message of its own to the same chat."""
    assert alert.id is not None
    details = alert.details or {}
    for delivery in _alert_deliveries(session, alert.id):
        lang = _owner_lang(owner, delivery, config)
        if delivery.status in WAITING:
            replace_reply(delivery, detractor_reply(alert, account, lang))
            session.add(delivery)
            continue
        text = t("sv_alert_comment", lang, account=account.name, contact=details.get("respondent", ""),
                 score=details.get("nps_score", "?"), id=alert.id, comment=_quote(details.get("comment")))
        routed = {key: delivery.payload[key] for key in (TO_KEY, ABOUT_KEY) if key in delivery.payload}
        follow = enqueue(session, platform=delivery.platform, target=delivery.target, kind=ALERT_COMMENT_KIND,
                         payload=reply_to_payload(Reply(text=text)) | routed, alert_id=alert.id,
                         dedupe=f"alert:{alert.id}:comment:{_digest(details.get('comment'))}")
        follow.created_at = now
        session.add(follow)


def advocacy_reply(account: Account, contact_name: str, score: int, comment: str | None, trigger: str,
                   lang: str) -> Reply:
    """The owner's prompt after a promoter's answer: who, what they said, and the three asks."""
    sections = [Section(t("adv_asks", lang), (t("adv_reference", lang), t("adv_case_study", lang),
                                              t("adv_review", lang)))]
    if comment:
        sections.insert(0, Section(t("adv_quote", lang), (f"“{_quote(comment)}”",)))
    card = Card(
        title=t("adv_title", lang, account=account.name, contact=contact_name, score=score),
        fields=(CardField(t("adv_f_arr", lang), f"{account.arr:,.0f} {account.currency}"),
                CardField(t("adv_trigger", lang), trigger)),
        sections=tuple(sections),
    )
    return Reply(text=t("adv_text", lang, account=account.name, contact=contact_name, score=score), cards=[card])


def _advocacy(session: Session, survey: NpsSurvey, response: NpsResponse, account: Account, contact_name: str,
              owner: User | None, config: AlertConfig, now: datetime) -> None:
    """Enqueue (or, while it waits, refresh) the advocacy prompt to the owner, once per survey."""
    routing = config.routing
    target = route(routing, person(owner, team=True, missing="no_owner"), owner)
    reply = advocacy_reply(account, contact_name, response.score, response.comment, survey.trigger, target.lang)
    key = f"survey:{survey.id}:advocacy"
    earlier = [d for d in session.execute(
        select(Delivery).where(col(Delivery.kind) == ADVOCACY_KIND, col(Delivery.target) == target.target)
    ).scalars().all() if d.payload.get("dedupe") == key]
    if earlier:  # asked once per survey; while it waits, it shows the latest comment
        for delivery in earlier:
            if delivery.status in WAITING:
                replace_reply(delivery, reply)
                session.add(delivery)
        return
    post(session, target, payload=reply_to_payload(reply), kind=ADVOCACY_KIND, now=now,
         due=release_time(now, target.tz, routing) or now, about=(account.owner_id, account.id), dedupe=key)


def apply_answer_effects(
    session: Session, result: core.AnswerResult, contact: Contact, *, now: datetime, alert_config: AlertConfig,
    scorecard: Any = None,
) -> None:
    """Detractor → the `nps_detractor` alert, routed now; a changed answer that is no longer a detractor resolves
    it. Promoter → the advocacy prompt. Flushes; the caller commits with the answer."""
    if result.status == "unchanged":
        return
    survey, response = result.survey, result.response
    account = session.get(Account, survey.account_id)
    if account is None:
        return
    owner = session.get(User, account.owner_id) if account.owner_id is not None else None
    existing = core.survey_alert(session, survey)
    if result.category == "detractor":
        if existing is not None and existing.status != "resolved":
            existing.details = {**(existing.details or {}), "nps_score": response.score,
                                "value": float(response.score)}
            session.add(existing)
            session.flush()
            _decorate_new(session, existing, account, owner, alert_config)
        else:
            raised = core.raise_detractor_alert(session, survey, response, contact.name, now=now,
                                                alert_config=alert_config, scorecard=scorecard)
            if raised is not None:
                alert, created = raised
                if not created:  # changed back to a detractor: the resolved alert comes back
                    alert.status, alert.resolved_at = "open", None
                    session.add(alert)
                route_alerts(session, [alert], now=now, config=alert_config, budget=False)
                _decorate_new(session, alert, account, owner, alert_config)
    elif existing is not None and existing.status != "resolved":
        existing.status, existing.resolved_at = "resolved", now
        session.add(existing)
    if result.category == "promoter":
        _advocacy(session, survey, response, account, contact.name, owner, alert_config, now)
    session.flush()


def _decorate_new(session: Session, alert: Alert, account: Account, owner: User | None, config: AlertConfig) -> None:
    assert alert.id is not None
    for delivery in _alert_deliveries(session, alert.id):
        if delivery.status in WAITING:
            replace_reply(delivery, detractor_reply(alert, account, _owner_lang(owner, delivery, config)))
            session.add(delivery)


def apply_comment_effects(
    session: Session, survey: NpsSurvey, response: NpsResponse, contact_name: str, *, now: datetime,
    alert_config: AlertConfig,
) -> None:
    """A comment joins the detractor alert (its message, or a follow-up) or the waiting advocacy prompt. Flushes."""
    account = session.get(Account, survey.account_id)
    if account is None:
        return
    owner = session.get(User, account.owner_id) if account.owner_id is not None else None
    alert = core.survey_alert(session, survey)
    if core.category(response.score) == "detractor" and alert is not None and alert.status != "resolved":
        alert.details = {**(alert.details or {}), "comment": response.comment or ""}
        session.add(alert)
        session.flush()
        _show_comment(session, alert, account, owner, alert_config, now)
    elif core.category(response.score) == "promoter":
        _advocacy(session, survey, response, account, contact_name, owner, alert_config, now)
    session.flush()


# --------------------------------------------------------------------------------------------- answering desk


OutcomeKind = Literal["recorded", "changed", "unchanged", "invalid", "not_for_you", "closed", "expired"]


@dataclass(frozen=True)
class PressOutcome:
    """What to tell the presser, privately: the confirmation or the refusal, and (first answer only) the prompt
    for the reason. `account_id` is set when an answer was stored (for the health refresh)."""

    kind: OutcomeKind
    text: str
    lang: str
    survey_id: int | None = None
    prompt: TextPrompt | None = None
    account_id: int | None = None
    channel_id: str = ""

    @property
    def accepted(self) -> bool:
        return self.kind in ("recorded", "changed", "unchanged")


@dataclass
class SurveyDesk:
    """Where adapters bring survey presses and comments; one per process (see `desk_for`)."""

    engine: Engine
    settings: Settings
    config: core.SurveyConfig
    alert_config: AlertConfig
    scorecard: Any = None
    today: Callable[[], date] = date.today
    clock: Callable[[], datetime] = utcnow

    @property
    def secret(self) -> bytes:
        return core.survey_secret(self.settings)

    def _refused(self, exc: core.SurveyRefused, lang_hint: str) -> PressOutcome:
        lang = _lang(exc.lang or lang_hint)
        return PressOutcome(exc.reason, t(f"sv_{exc.reason}", lang), lang, exc.survey_id)

    def press(self, platform: str, data: str, user_id: str, channel_id: str, *, lang_hint: str = "en") -> PressOutcome:
        """A tap on a survey button whose value is `data` (`<token>:<score>`)."""
        parsed = core.parse_answer(data)
        if parsed is None:
            return PressOutcome("invalid", t("sv_invalid", _lang(lang_hint)), _lang(lang_hint))
        token, score = parsed
        now = self.clock()
        who = core.Respondent(platform, user_id, channel_id)
        try:
            with session_scope(self.engine) as session:
                result = core.record_answer(session, secret=self.secret, token=token, score=score, who=who, now=now,
                                            config=self.config)
                contact = core.respondent_contact(session, result.survey, who, self.config)
                apply_answer_effects(session, result, contact, now=now, alert_config=self.alert_config,
                                     scorecard=self.scorecard)
                survey, response = result.survey, result.response
                if result.status != "unchanged":  # a retry or a double tap changed nothing: nothing to audit
                    _audit(session, platform, user_id, "survey.answer", survey.account_id,
                           f"survey {survey.id}: score {score} ({result.status})")
                lang = _lang(survey.lang)
                outcome = self._confirmation(result, lang)
                return dataclasses.replace(outcome, survey_id=survey.id, account_id=survey.account_id,
                                           channel_id=survey.channel_id or "",
                                           prompt=self._prompt(token, lang) if result.status == "recorded"
                                           and not response.comment else None)
        except core.SurveyRefused as exc:
            self._audit_refusal(platform, user_id, exc, f"press {data[:200]!r}")
            return self._refused(exc, lang_hint)

    def _audit_refusal(self, platform: str, user_id: str, exc: core.SurveyRefused, what: str) -> None:
        """A refused press or comment (forged, stolen, replayed, too late) is recorded: who tried what."""
        with session_scope(self.engine) as session:
            account_id = None
            if exc.survey_id is not None:
                survey = session.get(NpsSurvey, exc.survey_id)
                account_id = survey.account_id if survey is not None else None
            _audit(session, platform, user_id, "refused:survey", account_id, f"{exc.reason}: {what}")

    def _confirmation(self, result: core.AnswerResult, lang: str) -> PressOutcome:
        score = result.response.score
        if result.status == "recorded":
            until = result.editable_until.strftime("%Y-%m-%d %H:%M")
            return PressOutcome("recorded", t("sv_recorded", lang, score=score, until=until), lang)
        if result.status == "changed":
            return PressOutcome("changed", t("sv_changed", lang, score=score, previous=result.previous_score), lang)
        return PressOutcome("unchanged", t("sv_unchanged", lang, score=score), lang)

    def _prompt(self, token: str, lang: str) -> TextPrompt:
        return TextPrompt(title=t("sv_reason_title", lang), question=t("sv_reason_question", lang),
                          placeholder=t("sv_reason_placeholder", lang), submit=t("sv_reason_submit", lang), ref=token)

    def comment(self, platform: str, token: str, user_id: str, text: str, *, lang_hint: str = "en") -> PressOutcome:
        """The reason typed after an answer (Slack modal: the token came back in the modal's metadata)."""
        try:
            with session_scope(self.engine) as session:
                survey = core.verify_token(session, self.secret, token)
                assert survey.id is not None
                return self._comment(session, survey.id, platform, user_id, text)
        except core.SurveyRefused as exc:
            self._audit_refusal(platform, user_id, exc, f"comment on {token[:40]!r}")
            return self._refused(exc, lang_hint)

    def comment_by_ref(self, platform: str, ref: str, user_id: str, text: str) -> PressOutcome | None:
        """A reply to the comment prompt `ref` (Telegram ForceReply); None when `ref` is no survey's prompt."""
        try:
            with session_scope(self.engine) as session:
                survey = core.survey_for_comment_ref(session, platform, ref)
                if survey is None or survey.id is None:
                    return None
                return self._comment(session, survey.id, platform, user_id, text)
        except core.SurveyRefused as exc:
            self._audit_refusal(platform, user_id, exc, f"comment on prompt {ref[:40]!r}")
            return self._refused(exc, "en")

    def _comment(self, session: Session, survey_id: int, platform: str, user_id: str, text: str) -> PressOutcome:
        now = self.clock()
        survey, response = core.record_comment(session, survey_id=survey_id, who=core.Respondent(platform, user_id),
                                               comment=text, now=now, config=self.config)
        contact = session.get(Contact, response.contact_id) if response.contact_id is not None else None
        apply_comment_effects(session, survey, response, contact.name if contact else "", now=now,
                              alert_config=self.alert_config)
        _audit(session, platform, user_id, "survey.comment", survey.account_id, f"survey {survey.id}: {text}")
        lang = _lang(survey.lang)
        return PressOutcome("recorded", t("sv_comment_thanks", lang), lang, survey.id, None, survey.account_id,
                            survey.channel_id or "")

    def remember_prompt(self, survey_id: int, ref: str) -> None:
        """The comment prompt was posted as message `ref`: a reply to it is the comment."""
        with session_scope(self.engine) as session:
            core.set_comment_ref(session, survey_id, ref)

    def after_answer(self, outcome: PressOutcome) -> None:
        """Re-score the account so the new answer shows in its health now (best effort: the nightly recompute
        does it anyway)."""
        if outcome.account_id is None or outcome.kind == "unchanged" or self.scorecard is None:
            return
        try:
            with session_scope(self.engine) as session:
                core.refresh_account_health(session, outcome.account_id, self.today(), self.scorecard)
        except Exception:  # the answer is stored; a failed refresh only waits for the next recompute
            log.exception("could not refresh the health of account %s after an NPS answer", outcome.account_id)


def _audit(session: Session, platform: str, user_id: str, action: str, account_id: int | None, detail: str) -> None:
    """An audit row for a survey answer from chat; the actor is the platform identity (customers are no users)."""
    session.add(AuditLog(at=utcnow(), actor=f"{platform}:{user_id}", platform=platform, action=action,
                         account_id=account_id, detail=detail[:500]))


def desk_for(services: Any) -> SurveyDesk:
    """The `SurveyDesk` of a router's services (built once, from the configured files)."""
    desk = services.extras.get("survey_desk")
    if not isinstance(desk, SurveyDesk):
        settings = services.settings
        desk = SurveyDesk(
            engine=services.engine, settings=settings, config=survey_config(settings),
            alert_config=with_platforms(load_alert_config(settings.alerts_file), settings.delivery_platforms),
            scorecard=services.scorecard(), today=services.today,
        )
        services.extras["survey_desk"] = desk
    return desk


def survey_config(settings: Settings) -> core.SurveyConfig:
    """The survey configuration `CSBOT_SURVEYS_FILE` names, else the bundled one."""
    return core.load_survey_config(settings.surveys_file) if settings.surveys_file else core.default_survey_config()
