"""NPS surveys: cadence configuration, who is due a survey, signed answer tokens, answers, comments, expiry.

Nothing here knows a chat platform. A survey is one question to one contact; its token (`<id>.<mac>`, at most 31
characters) is an HMAC of the survey's identity under the survey secret and is also stored on the survey, so a
token is refused when it is forged, altered, names another survey, or its survey was replaced. Answering rules:
the first tap stores the one `NpsResponse` of the survey (INSERT … ON CONFLICT (survey_id) DO NOTHING, so platform
retries and duplicate updates store it once); another tap by the same respondent within the edit window changes
the score, later taps are refused; unanswered surveys expire, with at most one reminder before.

`due_surveys` decides for the whole portfolio at once (a few GROUP BY queries and pandas): pre-renewal, after
onboarding and relationship triggers, minus throttled contacts, contacts with an open survey and contacts csbot
cannot reach, within the daily cap. A contact whose chat ids are all on platforms that are not configured gets an
`undeliverable` survey instead (once, until it is requeued or replaced): it does not count against the daily cap or
the throttle, and is not open. Delivery, routing of the effects and all wording live in `bot.push.surveys`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import DateTime, bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from lifecycle.scoring.alerts import raise_event_alert
from lifecycle.scoring.health import save_snapshots, score_frame, snapshot_rows
from lifecycle.scoring.signals import build_signals
from lifecycle.store.errors import CsbotError
from lifecycle.store.models import Account, Alert, Contact, NpsResponse, NpsSurvey, User
from lifecycle.store.settings import CONFIG_DIR, Settings, read_toml, validate_config

log = logging.getLogger("csbot.surveys")

DEFAULT_SURVEYS_FILE = CONFIG_DIR / "surveys.toml"
PENDING, SENT, ANSWERED, EXPIRED = "pending", "sent", "answered", "expired"
UNDELIVERABLE = "undeliverable"  # no configured platform reaches the contact: never sent, not counted anywhere
OPEN_STATUSES = (PENDING, SENT)
TRIGGERS = ("pre_renewal", "after_onboarding", "relationship", "manual")
PROMOTER_FROM, PASSIVE_FROM = 9, 7
DETRACTOR_RULE = "nps_detractor"
COMMENT_MAX = 2000
MAC_CHARS = 16  # 96 bits of HMAC-SHA256, base64url
Platform = Literal["slack", "telegram", "feishu"]
Category = Literal["promoter", "passive", "detractor"]


# ------------------------------------------------------------------------------------------------ configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cadence(_Strict):
    """When contacts are asked (`[cadence]`)."""

    throttle_days: int = Field(default=90, ge=7, le=365)
    after_onboarding_days: int = Field(default=30, ge=0, le=365)
    onboarding_stage: str = "onboarding"
    relationship_every_days: Literal[0, 90, 180] = 90
    pre_renewal_days: int = Field(default=90, ge=0, le=365)
    grace_days: int = Field(default=30, ge=1, le=365)


class DeliveryRules(_Strict):
    """Where and when questions go (`[delivery]`)."""

    platforms: tuple[Platform, ...] = Field(default=("slack", "telegram", "feishu"), min_length=1)
    slack_mode: Literal["channel", "dm"] = "channel"
    quiet_start: time = time(19, 0)
    quiet_end: time = time(9, 0)
    timezone: str = "UTC"
    daily_cap: int = Field(default=50, ge=0)
    lang: Literal["en", "zh"] = "en"
    product: str = Field(default="us", min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("platforms")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("platforms must not repeat")
        return value


class AnsweringRules(_Strict):
    """Who may answer, and for how long (`[answering]`)."""

    who: Literal["contact", "any_contact_in_channel"] = "contact"
    edit_window_hours: float = Field(default=24, gt=0, le=24 * 30)
    expiry_days: int = Field(default=7, ge=1, le=90)
    remind_after_days: int = Field(default=3, ge=0, le=89)

    @model_validator(mode="after")
    def _reminder_before_expiry(self) -> AnsweringRules:
        if self.remind_after_days >= self.expiry_days:
            raise ValueError("remind_after_days must be less than expiry_days")
        return self


class SurveyConfig(_Strict):
    """A validated survey configuration file."""

    cadence: Cadence = Field(default_factory=Cadence)
    delivery: DeliveryRules = Field(default_factory=DeliveryRules)
    answering: AnsweringRules = Field(default_factory=AnsweringRules)

    @property
    def edit_window(self) -> timedelta:
        return timedelta(hours=self.answering.edit_window_hours)

    @property
    def expiry(self) -> timedelta:
        return timedelta(days=self.answering.expiry_days)


def parse_survey_config(raw: Mapping[str, Any], source: str = "survey configuration") -> SurveyConfig:
    """Validate an already-parsed survey configuration; errors raise `ConfigError` naming `source` and the key."""
    return validate_config(SurveyConfig, raw, source)


def load_survey_config(path: Path | None = None) -> SurveyConfig:
    """Read and validate a survey TOML file (the bundled one by default)."""
    path = Path(path) if path is not None else DEFAULT_SURVEYS_FILE
    return parse_survey_config(read_toml(path, "survey configuration"), str(path))


@lru_cache(maxsize=1)
def default_survey_config() -> SurveyConfig:
    return load_survey_config()


def category(score: int) -> Category:
    """9–10 promoter, 7–8 passive, 0–6 detractor."""
    if score >= PROMOTER_FROM:
        return "promoter"
    return "passive" if score >= PASSIVE_FROM else "detractor"


# ------------------------------------------------------------------------------------------------------ tokens


def survey_secret(settings: Settings) -> bytes:
    """The key that signs survey tokens: `CSBOT_SURVEY_SECRET`, else one derived from the chat credentials.

    Deriving keeps a fresh install working without another variable; the price is that rotating a bot token or
    signing secret invalidates the tokens of unanswered surveys (set CSBOT_SURVEY_SECRET to avoid that). With no
    chat platform configured no button can be pressed, so the database URL stands in."""
    if settings.survey_secret:
        return settings.survey_secret.encode("utf-8")
    parts = [settings.slack_bot_token, settings.slack_signing_secret, settings.telegram_bot_token]
    if settings.feishu_app_secret:  # only when set, so the key of an install without Feishu stays the same
        parts.append(settings.feishu_app_secret)
    material = "\0".join(p or "" for p in parts)
    if not material.strip("\0"):
        material = settings.database_url
    return hashlib.sha256(b"csbot-survey-v1\0" + material.encode("utf-8")).digest()


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def make_token(secret: bytes, survey_id: int, account_id: int, contact_id: int | None) -> str:
    """`<survey id in base 36>.<16 characters of HMAC-SHA256>`: short enough for Telegram's 64-byte callback data
    together with a prefix and the score."""
    message = f"nps-survey:{survey_id}:{account_id}:{contact_id or 0}".encode()
    mac = base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()).decode("ascii")
    return f"{_b36(survey_id)}.{mac[:MAC_CHARS]}"


def token_survey_id(token: str) -> int | None:
    """The survey id a token claims (unverified); None when it is not shaped like a token."""
    head, dot, mac = token.partition(".")
    if not dot or len(mac) != MAC_CHARS or not head or len(head) > 12 or not head.isalnum():
        return None
    try:
        return int(head, 36)
    except ValueError:
        return None


def parse_answer(data: str) -> tuple[str, int] | None:
    """`<token>:<score>` (a button's value) as (token, score 0–10); None when malformed."""
    token, colon, score = data.rpartition(":")
    if not colon or not score.isdigit() or not 0 <= int(score) <= 10:
        return None
    return token, int(score)


class SurveyRefused(CsbotError):
    """A press or a comment that is not accepted; `reason` says which polite answer to give."""

    def __init__(self, reason: Literal["invalid", "not_for_you", "closed", "expired"], survey: NpsSurvey | None = None):
        super().__init__(reason)
        self.reason = reason
        # Copied now: the session that loaded the survey is rolled back before anyone reads the refusal.
        self.survey_id = survey.id if survey is not None else None
        self.lang = survey.lang if survey is not None else None


def verify_token(session: Session, secret: bytes, token: str) -> NpsSurvey:
    """The survey a token belongs to; `SurveyRefused("invalid")` when it is malformed, forged, altered, for an
    unknown survey, or not the token the survey was sent with."""
    survey_id = token_survey_id(token)
    survey = session.get(NpsSurvey, survey_id) if survey_id is not None else None
    if survey is None or survey.id is None or not survey.token:
        raise SurveyRefused("invalid")
    expected = make_token(secret, survey.id, survey.account_id, survey.contact_id)
    if not (hmac.compare_digest(expected, token) and hmac.compare_digest(survey.token, token)):
        raise SurveyRefused("invalid")
    return survey


# ----------------------------------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Respondent:
    """Who pressed: their platform identity and the conversation they pressed in."""

    platform: str
    user_id: str
    channel_id: str = ""


@dataclass(frozen=True)
class AnswerResult:
    """What a press did: `recorded` (first answer), `changed` (a new score within the edit window), or
    `unchanged` (the same score again: a retry or a double tap)."""

    status: Literal["recorded", "changed", "unchanged"]
    survey: NpsSurvey
    response: NpsResponse
    previous_score: int | None
    edit_window: timedelta

    @property
    def category(self) -> Category:
        return category(self.response.score)

    @property
    def editable_until(self) -> datetime:
        return self.response.responded_at + self.edit_window


def _platform_user(contact: Contact, platform: str) -> str | None:
    if platform == "slack":
        return contact.slack_user_id
    if platform == "feishu":
        return contact.feishu_open_id
    return contact.telegram_user_id if platform == "telegram" else None


def respondent_contact(session: Session, survey: NpsSurvey, who: Respondent, config: SurveyConfig) -> Contact:
    """The contact answering, or `SurveyRefused("not_for_you")`: the survey's own contact, or (with
    `any_contact_in_channel`) any contact of the account pressing in the survey's channel."""
    if who.platform != survey.platform:
        raise SurveyRefused("not_for_you", survey)
    contact = session.get(Contact, survey.contact_id) if survey.contact_id is not None else None
    if contact is not None and _platform_user(contact, who.platform) == who.user_id:
        return contact
    if config.answering.who == "any_contact_in_channel" and who.channel_id and who.channel_id == survey.channel_id:
        column = {"slack": col(Contact.slack_user_id), "telegram": col(Contact.telegram_user_id),
                  "feishu": col(Contact.feishu_open_id)}[who.platform]
        other: Contact | None = session.execute(
            select(Contact).where(col(Contact.account_id) == survey.account_id, column == who.user_id)
        ).scalars().first()
        if other is not None:
            return other
    raise SurveyRefused("not_for_you", survey)


def _insert_ignore(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _response_of(session: Session, survey_id: int) -> NpsResponse | None:
    found: NpsResponse | None = session.execute(
        select(NpsResponse).where(col(NpsResponse.survey_id) == survey_id).execution_options(populate_existing=True)
    ).scalars().first()
    return found


def is_expired(survey: NpsSurvey, now: datetime, config: SurveyConfig) -> bool:
    """Unanswered and past its expiry (its own `expires_at`, else `expiry` after it was created)."""
    if survey.status == EXPIRED:
        return True
    ends = survey.expires_at or survey.created_at + config.expiry
    return now >= ends


def record_answer(
    session: Session,
    *,
    secret: bytes,
    token: str,
    score: int,
    who: Respondent,
    now: datetime,
    config: SurveyConfig,
) -> AnswerResult:
    """Store a press: the survey's one response, or a change of its score within the edit window.

    Raises `SurveyRefused` (invalid token, not for this person, closed after the edit window, expired). Flushes;
    the caller commits (and applies the effects in the same transaction)."""
    if not 0 <= score <= 10:
        raise SurveyRefused("invalid")
    survey = verify_token(session, secret, token)
    assert survey.id is not None
    contact = respondent_contact(session, survey, who, config)
    window = config.edit_window
    existing = _response_of(session, survey.id)
    if existing is None:
        if is_expired(survey, now, config):
            raise SurveyRefused("expired", survey)
        row = {
            "account_id": survey.account_id, "survey_id": survey.id, "contact_id": contact.id,
            "contact_key": (contact.email or contact.key or "").casefold(), "score": score, "comment": None,
            "responded_at": now, "source": f"survey:{who.platform}",
        }
        stmt = _insert_ignore(session)(NpsResponse.__table__).values(**row)  # type: ignore[attr-defined]
        inserted = session.connection().execute(stmt.on_conflict_do_nothing(index_elements=["survey_id"]))
        if getattr(inserted, "rowcount", 0):
            session.execute(
                update(NpsSurvey).where(col(NpsSurvey.id) == survey.id).values(status=ANSWERED)
                .execution_options(synchronize_session=False)
            )
            session.expire(survey)
            response = _response_of(session, survey.id)
            assert response is not None
            return AnswerResult("recorded", survey, response, None, window)
        existing = _response_of(session, survey.id)  # another request stored it a moment ago
        assert existing is not None
    if existing.contact_id is not None and existing.contact_id != contact.id:
        raise SurveyRefused("closed", survey)  # somebody else answered this one
    if now - existing.responded_at > window:
        raise SurveyRefused("closed", survey)
    if existing.score == score:
        return AnswerResult("unchanged", survey, existing, existing.score, window)
    previous = existing.score
    changed = session.execute(
        update(NpsResponse)
        .where(col(NpsResponse.id) == existing.id, col(NpsResponse.score) == previous)
        .values(score=score)
        .execution_options(synchronize_session=False)
    )
    session.expire(existing)
    response = _response_of(session, survey.id)
    assert response is not None
    status: Literal["changed", "unchanged"] = "changed" if getattr(changed, "rowcount", 0) else "unchanged"
    return AnswerResult(status, survey, response, previous, window)


def record_comment(
    session: Session,
    *,
    survey_id: int,
    who: Respondent,
    comment: str,
    now: datetime,
    config: SurveyConfig,
) -> tuple[NpsSurvey, NpsResponse]:
    """Store the follow-up comment on the survey's response (replacing an earlier one). Only the respondent may
    comment, while the edit window is open; otherwise `SurveyRefused`. Flushes; the caller commits."""
    survey = session.get(NpsSurvey, survey_id)
    if survey is None:
        raise SurveyRefused("invalid")
    contact = respondent_contact(session, survey, Respondent(who.platform, who.user_id, survey.channel_id or ""),
                                 config)
    response = _response_of(session, survey_id)
    if response is None or (response.contact_id is not None and response.contact_id != contact.id):
        raise SurveyRefused("not_for_you", survey)
    if now - response.responded_at > config.edit_window:
        raise SurveyRefused("closed", survey)
    text_ = " ".join(comment.split())[:COMMENT_MAX]
    if not text_:
        raise SurveyRefused("invalid", survey)
    response.comment = text_
    session.add(response)
    session.flush()
    return survey, response


def set_comment_ref(session: Session, survey_id: int, ref: str) -> None:
    """Remember the message a comment will answer (a Telegram ForceReply prompt)."""
    session.execute(
        update(NpsSurvey).where(col(NpsSurvey.id) == survey_id).values(comment_ref=ref)
        .execution_options(synchronize_session=False)
    )


def survey_for_comment_ref(session: Session, platform: str, ref: str) -> NpsSurvey | None:
    """The survey whose comment prompt is the message `ref`."""
    found = session.execute(
        select(NpsSurvey).where(col(NpsSurvey.comment_ref) == ref, col(NpsSurvey.platform) == platform)
    ).scalars().first()
    return found


# --------------------------------------------------------------------------------------------- detractor alert


def raise_detractor_alert(
    session: Session, survey: NpsSurvey, response: NpsResponse, contact_name: str, *, now: datetime,
    alert_config: Any, scorecard: Any = None,
) -> tuple[Alert, bool] | None:
    """The `nps_detractor` alert for a detractor's answer (one per survey: its dedupe key names the survey), with
    the score, the respondent and the comment in its details; None when the rule is switched off."""
    rule = alert_config.rule(DETRACTOR_RULE)
    if not rule.enabled:
        return None
    return raise_event_alert(
        session, account_id=survey.account_id, rule=DETRACTOR_RULE, value=float(response.score),
        threshold=float(getattr(rule, "max_score", PASSIVE_FROM - 1)),
        dedupe_key=f"{survey.account_id}:{DETRACTOR_RULE}:survey:{survey.id}", now=now, config=alert_config,
        scorecard=scorecard,
        extra={"survey_id": survey.id, "nps_score": response.score, "respondent": contact_name,
               "comment": response.comment or ""},
    )


def survey_alert(session: Session, survey: NpsSurvey) -> Alert | None:
    """The detractor alert raised for this survey, if any."""
    key = f"{survey.account_id}:{DETRACTOR_RULE}:survey:{survey.id}"
    return session.execute(
        select(Alert).where(col(Alert.dedupe_key) == key).execution_options(populate_existing=True)
    ).scalars().first()


# ------------------------------------------------------------------------------------------------------ health


def refresh_account_health(session: Session, account_id: int, as_of: date, scorecard: Any) -> float | None:
    """Re-score one account for `as_of` so a new answer shows in its NPS measure now rather than at the next
    recompute: the signals pass is the portfolio's (a few aggregate queries), only this account is scored and
    stored. Returns the new score (None when it cannot be scored or the account is not active)."""
    signals = build_signals(session, as_of)
    if account_id not in signals.index or signals.at[account_id, "status"] != "active":
        return None
    scored = score_frame(signals.loc[[account_id]], scorecard)
    save_snapshots(session, snapshot_rows(scored, as_of, scorecard))
    value = float(scored["score"].to_numpy(dtype=float)[0])
    return None if np.isnan(value) else value


# ------------------------------------------------------------------------------------------------------ cadence


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    """Whether a local time of day falls in [start, end), a window that may span midnight."""
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    try:
        return ZoneInfo(name or fallback)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


def send_time(now: datetime, tz: ZoneInfo, config: SurveyConfig) -> datetime:
    """When a question due at `now` may be sent: now, or the next local `quiet_end` (naive UTC)."""
    start, end = config.delivery.quiet_start, config.delivery.quiet_end
    local = now.replace(tzinfo=UTC).astimezone(tz)
    if not in_quiet_hours(local.time(), start, end):
        return now
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


_CONTACTS_SQL = """
SELECT c.id AS contact_id, c.account_id, c.key, c.name, c.slack_user_id, c.telegram_user_id,
       c.slack_channel_id, c.telegram_chat_id, c.feishu_open_id, c.feishu_chat_id, c.created_at AS contact_created,
       a.name AS account_name, a.arr, a.status, a.stage, a.contract_start, a.renewal_date, a.owner_id,
       u.timezone AS owner_tz
FROM contact c
JOIN account a ON a.id = c.account_id
LEFT JOIN "user" u ON u.id = a.owner_id
"""
# A survey that could not be delivered asked nobody: it neither throttles the contact nor counts against the cap.
_LAST_SURVEYS_SQL = text(
    "SELECT contact_id, trigger, MAX(created_at) AS last_at FROM nps_survey WHERE contact_id IS NOT NULL "
    "AND status <> 'undeliverable' GROUP BY contact_id, trigger"
)
_UNDELIVERABLE_SQL = text(
    "SELECT DISTINCT contact_id FROM nps_survey WHERE contact_id IS NOT NULL AND status = 'undeliverable'"
)
_OPEN_SURVEYS_SQL = text(
    "SELECT DISTINCT contact_id FROM nps_survey WHERE contact_id IS NOT NULL AND status IN ('pending', 'sent') "
    "AND (expires_at IS NULL OR expires_at > :now)"
).bindparams(bindparam("now", type_=DateTime()))
# Imported history names the respondent by e-mail (contact_key), chat answers by contact id: either counts.
_LAST_RESPONSE_SQL = text(
    """
    SELECT c.id AS contact_id, MAX(r.responded_at) AS last_response
    FROM contact c
    JOIN nps_response r ON r.account_id = c.account_id
     AND (r.contact_id = c.id OR (r.contact_key <> '' AND (r.contact_key = c.key OR r.contact_key = LOWER(c.email))))
    GROUP BY c.id
    """
)
_ONBOARDED_SQL = text(
    "SELECT account_id, MAX(at) AS onboarded_at FROM stage_transition WHERE from_stage = :stage GROUP BY account_id"
)
_TODAYS_SQL = text(
    "SELECT COUNT(*) FROM nps_survey WHERE created_at >= :start AND status <> 'undeliverable'"
).bindparams(bindparam("start", type_=DateTime()))

TARGET_COLUMNS = ["platform", "target", "channel_id"]
DUE_COLUMNS = ["account_id", "contact_id", "trigger", *TARGET_COLUMNS, "owner_tz", "arr", "name", "account_name",
               "undeliverable"]


def _frame(session: Session, sql: Any, params: Mapping[str, Any], columns: Sequence[str]) -> pd.DataFrame:
    rows = session.execute(sql if not isinstance(sql, str) else text(sql), dict(params)).all()
    return pd.DataFrame.from_records(rows, columns=list(columns))


def _times(values: pd.Series) -> pd.Series:
    if values.empty:
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    converted = pd.to_datetime(values, format="ISO8601", utc=True) if not pd.api.types.is_datetime64_any_dtype(
        values) else values
    if isinstance(converted.dtype, pd.DatetimeTZDtype):
        converted = converted.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.Series(converted, index=values.index).astype("datetime64[ns]")


def _present(values: pd.Series) -> np.ndarray:
    return (values.notna() & (values.astype(str).str.strip() != "")).to_numpy(dtype=bool)


def targets(
    contacts: pd.DataFrame, config: SurveyConfig, platforms: Collection[str] | None = None
) -> pd.DataFrame:
    """Where each contact is asked, vectorised: `platform` ("" when unreachable), `target` (what the outbox
    sends to: a channel, a Slack user for a DM, a Telegram chat) and `channel_id` (where the answer is expected).

    Slack: the shared channel (mode "channel") else a DM to the contact's Slack user; Telegram: the contact's chat,
    else their private chat with the bot (whose id is their user id). The first platform of `platforms` that
    reaches the contact wins. Only configured `platforms` count (None: all); a contact reachable only on others is
    `blocked`: that platform and `blocked_target`, where the question would have gone."""
    slack_user = contacts["slack_user_id"].astype(object).to_numpy()
    slack_channel = contacts["slack_channel_id"].astype(object).to_numpy()
    tg_user = contacts["telegram_user_id"].astype(object).to_numpy()
    tg_chat = contacts["telegram_chat_id"].astype(object).to_numpy()
    has_slack_user, has_slack_channel = _present(contacts["slack_user_id"]), _present(contacts["slack_channel_id"])
    has_tg_user, has_tg_chat = _present(contacts["telegram_user_id"]), _present(contacts["telegram_chat_id"])
    fs_user = contacts["feishu_open_id"].astype(object).to_numpy()
    fs_chat = contacts["feishu_chat_id"].astype(object).to_numpy()
    has_fs_user, has_fs_chat = _present(contacts["feishu_open_id"]), _present(contacts["feishu_chat_id"])

    def pick(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(contacts)
        platform = np.full(n, "", dtype=object)
        target = np.full(n, "", dtype=object)
        channel = np.full(n, "", dtype=object)
        for name in reversed(names):  # earlier platforms overwrite later ones
            if name == "slack":
                use_channel = has_slack_channel & has_slack_user & (config.delivery.slack_mode == "channel")
                reach = use_channel | has_slack_user
                platform = np.where(reach, "slack", platform)
                target = np.where(use_channel, slack_channel, np.where(reach, slack_user, target))
                channel = np.where(use_channel, slack_channel, np.where(reach, "", channel))
            elif name == "feishu":  # the customer's group chat, else a private message to the contact's open_id
                reach = has_fs_chat | has_fs_user
                chat = np.where(has_fs_chat, fs_chat, fs_user)
                platform = np.where(reach, "feishu", platform)
                target = np.where(reach, chat, target)
                channel = np.where(reach, chat, channel)
            else:
                reach = has_tg_chat | has_tg_user
                chat = np.where(has_tg_chat, tg_chat, tg_user)
                platform = np.where(reach, "telegram", platform)
                target = np.where(reach, chat, target)
                channel = np.where(reach, chat, channel)
        return platform, target, channel

    wanted = config.delivery.platforms
    platform, target, channel = pick([p for p in wanted if platforms is None or p in platforms])
    anywhere, anywhere_target, _channel = pick(wanted) if platforms is not None else (platform, target, channel)
    blocked = (platform == "") & (anywhere != "")
    return pd.DataFrame({"platform": platform, "target": target, "channel_id": channel,
                         "blocked": np.where(blocked, anywhere, ""),
                         "blocked_target": np.where(blocked, anywhere_target, "")}, index=contacts.index)


def contact_targets(
    contacts: Sequence[Contact], config: SurveyConfig, platforms: Collection[str] | None = None
) -> pd.DataFrame:
    """`targets` for these contacts, indexed by contact id."""
    columns = ["slack_user_id", "slack_channel_id", "telegram_user_id", "telegram_chat_id", "feishu_open_id",
               "feishu_chat_id"]
    frame = pd.DataFrame([[getattr(c, name) for name in columns] for c in contacts], columns=columns,
                         index=pd.Index([c.id for c in contacts]), dtype=object)
    return targets(frame, config, platforms)


@dataclass
class Candidates:
    """Every contact with what the cadence needs: targets, last survey/answer, open surveys."""

    frame: pd.DataFrame


def candidates(
    session: Session, now: datetime, config: SurveyConfig, *, account_id: int | None = None,
    platforms: Collection[str] | None = None,
) -> Candidates:
    """The contact frame the cadence reads (of one account, or all), built from a few aggregate queries; targets
    on the configured `platforms` (None: all)."""
    columns = ["contact_id", "account_id", "key", "name", "slack_user_id", "telegram_user_id", "slack_channel_id",
               "telegram_chat_id", "feishu_open_id", "feishu_chat_id", "contact_created", "account_name", "arr",
               "status", "stage", "contract_start",
               "renewal_date", "owner_id", "owner_tz"]
    if account_id is None:
        contacts = _frame(session, _CONTACTS_SQL, {}, columns)
    else:
        contacts = _frame(session, _CONTACTS_SQL + " WHERE c.account_id = :account_id", {"account_id": account_id},
                          columns)
    contacts = contacts.set_index("contact_id", drop=False)
    contacts.index.name = None
    last = _frame(session, _LAST_SURVEYS_SQL, {}, ["contact_id", "trigger", "last_at"])
    last["last_at"] = _times(last["last_at"])
    by_trigger = last.pivot_table(index="contact_id", columns="trigger", values="last_at", aggfunc="max")
    for trigger in TRIGGERS:
        column = by_trigger[trigger] if trigger in by_trigger.columns else pd.Series(dtype="datetime64[ns]")
        contacts[f"last_{trigger}"] = _times(column.reindex(contacts.index))
    contacts["last_survey"] = contacts[[f"last_{t}" for t in TRIGGERS]].max(axis=1)
    responses = _frame(session, _LAST_RESPONSE_SQL, {}, ["contact_id", "last_response"]).set_index("contact_id")
    contacts["last_response"] = _times(responses["last_response"].reindex(contacts.index))
    open_ids = set(_frame(session, _OPEN_SURVEYS_SQL, {"now": now}, ["contact_id"])["contact_id"].astype(int))
    contacts["has_open"] = contacts.index.isin(list(open_ids))
    stuck_ids = set(_frame(session, _UNDELIVERABLE_SQL, {}, ["contact_id"])["contact_id"].astype(int))
    contacts["has_undeliverable"] = contacts.index.isin(list(stuck_ids))
    onboarded = _frame(session, _ONBOARDED_SQL, {"stage": config.cadence.onboarding_stage},
                       ["account_id", "onboarded_at"]).set_index("account_id")
    contacts["onboarded_at"] = _times(
        onboarded["onboarded_at"].reindex(contacts["account_id"].to_numpy()).reset_index(drop=True)
    ).to_numpy()
    for name in ("contract_start", "renewal_date", "contact_created"):
        contacts[name] = _times(contacts[name])
    contacts["last_touch"] = contacts[["last_survey", "last_response"]].max(axis=1)
    contacts = contacts.join(targets(contacts, config, platforms))
    return Candidates(contacts)


def throttled_until(frame: pd.DataFrame, config: SurveyConfig) -> pd.Series:
    """When each contact may be asked again (NaT: now)."""
    return frame["last_touch"] + pd.Timedelta(days=config.cadence.throttle_days)


def due_surveys(
    session: Session, today: date, now: datetime, config: SurveyConfig, *, platforms: Collection[str] | None = None
) -> pd.DataFrame:
    """Who should get a survey today, whole portfolio, most important first, within what is left of the daily cap.

    Columns `DUE_COLUMNS`; `trigger` is the first that applies of pre_renewal (renewal within
    `pre_renewal_days` and not asked since that window opened), after_onboarding (`after_onboarding_days` after the
    account left the onboarding stage, not asked since) and relationship (`relationship_every_days` since the last
    survey or answer, else since the contract start or the contact was added). Trigger dates more than `grace_days`
    old are not caught up. Throttled contacts, contacts with an open survey, unreachable contacts and inactive
    accounts are left out. Contacts reachable only on platforms that are not configured (`platforms`) follow, with
    `undeliverable` set and the platform and target they would have had, outside the cap; a contact that already
    has an undeliverable survey gets no second one."""
    frame = candidates(session, now, config, platforms=platforms).frame
    if frame.empty:
        return pd.DataFrame(columns=DUE_COLUMNS)
    cad = config.cadence
    day = pd.Timestamp(today)
    grace = pd.Timedelta(days=cad.grace_days)

    never = pd.Timestamp.min
    renewal = frame["renewal_date"]
    window_open = renewal - pd.Timedelta(days=cad.pre_renewal_days)
    pre_renewal = (
        (cad.pre_renewal_days > 0) & renewal.notna() & (window_open <= day) & (renewal >= day)
        & (day - window_open <= grace) & ~(frame["last_pre_renewal"].fillna(never) >= window_open)
    )
    onboard_due = frame["onboarded_at"].dt.normalize() + pd.Timedelta(days=cad.after_onboarding_days)
    after_onboarding = (
        (cad.after_onboarding_days > 0) & onboard_due.notna() & (onboard_due <= day) & (day - onboard_due <= grace)
        & ~(frame["last_after_onboarding"].fillna(never) >= frame["onboarded_at"])
    )
    base = frame["last_touch"].fillna(frame["contract_start"]).fillna(frame["contact_created"])
    relationship = (cad.relationship_every_days > 0) & base.notna() & (
        (day - base.dt.normalize()) >= pd.Timedelta(days=cad.relationship_every_days)
    )
    trigger = np.select([pre_renewal.to_numpy(bool), after_onboarding.to_numpy(bool), relationship.to_numpy(bool)],
                        ["pre_renewal", "after_onboarding", "relationship"], default="")
    allowed = throttled_until(frame, config).fillna(never) <= pd.Timestamp(now)
    eligible = (
        (trigger != "") & allowed.to_numpy(bool) & ~frame["has_open"].to_numpy(bool)
        & (frame["status"] == "active").to_numpy(bool)
    )
    reachable = (frame["platform"] != "").to_numpy(bool)
    stuck = (frame["blocked"] != "").to_numpy(bool) & ~frame["has_undeliverable"].to_numpy(bool)
    due = _ranked(frame.loc[eligible & reachable], trigger[eligible & reachable])
    start = datetime.combine(now.date(), time.min)
    used = int(session.execute(_TODAYS_SQL, {"start": start}).scalar_one())
    left = max(config.delivery.daily_cap - used, 0)
    blocked = _as_undeliverable(_ranked(frame.loc[eligible & stuck], trigger[eligible & stuck]))
    return _joined(due.head(left).assign(undeliverable=False), blocked)


def _joined(due: pd.DataFrame, blocked: pd.DataFrame) -> pd.DataFrame:
    """The deliverable due rows, then the undeliverable ones, as a `DUE_COLUMNS` frame."""
    parts = [part[DUE_COLUMNS] for part in (due, blocked) if not part.empty]
    if not parts:
        return pd.DataFrame(columns=DUE_COLUMNS)
    return pd.concat(parts).reset_index(drop=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


def _ranked(due: pd.DataFrame, trigger: np.ndarray) -> pd.DataFrame:
    """Due contacts with their trigger, most important first: the trigger's rank, then the larger ARR."""
    due = due.copy()
    due["trigger"] = trigger
    due["rank"] = due["trigger"].map({"pre_renewal": 0, "after_onboarding": 1, "relationship": 2})
    due["arr"] = due["arr"].astype(float)
    return due.sort_values(["rank", "arr", "contact_id"], ascending=[True, False, True])


def _as_undeliverable(blocked: pd.DataFrame) -> pd.DataFrame:
    """Blocked contacts as undeliverable due rows: the platform and target they would have had, no channel."""
    return blocked.assign(platform=blocked["blocked"], target=blocked["blocked_target"], channel_id="",
                          undeliverable=True)


@dataclass(frozen=True)
class NewSurvey:
    """A survey just created, with where it goes and when."""

    survey_id: int
    account_id: int
    contact_id: int
    platform: str
    target: str
    channel_id: str
    token: str
    send_at: datetime
    lang: str
    contact_name: str
    account_name: str
    undeliverable: bool = False


def create_surveys(
    session: Session, due: pd.DataFrame, *, now: datetime, config: SurveyConfig, secret: bytes
) -> list[NewSurvey]:
    """Insert one survey per row of `due` (a `DUE_COLUMNS` frame) with its token, send time (quiet hours in the
    owner's time zone) and expiry; two bulk statements. Rows marked `undeliverable` are stored so; a deliverable
    survey replaces the contact's undeliverable ones (they become expired, never sent). Flushes; the caller
    commits and enqueues the questions."""
    if due.empty:
        return []
    stuck = due["undeliverable"].astype(bool).tolist() if "undeliverable" in due.columns else [False] * len(due)
    replaced = sorted({int(c) for c, u in zip(due["contact_id"], stuck, strict=True) if not u})
    if replaced:
        session.execute(
            update(NpsSurvey)
            .where(col(NpsSurvey.contact_id).in_(replaced), col(NpsSurvey.status) == UNDELIVERABLE)
            .values(status=EXPIRED)
            .execution_options(synchronize_session=False)
        )
    fallback = config.delivery.timezone
    send_at = [send_time(now, zone(tz if isinstance(tz, str) else None, fallback), config) for tz in due["owner_tz"]]
    lang = config.delivery.lang
    rows = [
        {"account_id": int(a), "contact_id": int(c), "trigger": str(t), "platform": str(p),
         "channel_id": str(ch) or None, "status": UNDELIVERABLE if u else PENDING, "token": None,
         "created_at": now, "expires_at": s + config.expiry, "lang": lang}
        for a, c, t, p, ch, s, u in zip(due["account_id"], due["contact_id"], due["trigger"], due["platform"],
                                        due["channel_id"], send_at, stuck, strict=True)
    ]
    table = NpsSurvey.__table__  # type: ignore[attr-defined]
    returning = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    ids = [int(i) for i in session.execute(returning, rows).scalars().all()]
    if len(ids) != len(rows):  # some drivers return ids of an executemany in order only one at a time
        raise CsbotError("could not read back the ids of the new surveys")
    tokens = [make_token(secret, i, r["account_id"], r["contact_id"]) for i, r in zip(ids, rows, strict=True)]
    session.execute(
        update(table).where(table.c.id == bindparam("b_id")).values(token=bindparam("b_token")),
        [{"b_id": i, "b_token": tok} for i, tok in zip(ids, tokens, strict=True)],
    )
    return [
        NewSurvey(i, r["account_id"], r["contact_id"], r["platform"], str(tg), r["channel_id"] or "", tok, s, lang,
                  str(name), str(account), r["status"] == UNDELIVERABLE)
        for i, r, tok, s, tg, name, account in zip(ids, rows, tokens, send_at, due["target"], due["name"],
                                                   due["account_name"], strict=True)
    ]


@dataclass
class ManualPlan:
    """What `survey <account> [<contact>]` can do: who is due now, who is throttled (until when), who is
    unreachable, and who already has an open survey."""

    due: pd.DataFrame
    throttled: list[tuple[str, datetime]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    over_cap: list[str] = field(default_factory=list)
    # Reachable only on platforms that are not configured: their survey is recorded undeliverable (once).
    undeliverable: list[int] = field(default_factory=list)


def plan_manual(
    session: Session, account: Account, *, contact: Contact | None, now: datetime, config: SurveyConfig,
    platforms: Collection[str] | None = None,
) -> ManualPlan:
    """Sort the account's contacts (or the one named) into due, throttled, unreachable, already asked and
    reachable only on platforms that are not configured (`platforms`; None: all are); the daily cap applies to
    manual surveys too, but not to undeliverable ones."""
    frame = candidates(session, now, config, account_id=account.id, platforms=platforms).frame
    if contact is not None:
        frame = frame.loc[frame["contact_id"] == contact.id]
    frame = frame.sort_values("contact_id")
    until = throttled_until(frame, config)
    reachable = (frame["platform"] != "").to_numpy(bool)
    blocked = (frame["blocked"] != "").to_numpy(bool)
    known = reachable | blocked
    has_open = frame["has_open"].to_numpy(bool)
    throttled = (until.fillna(pd.Timestamp.min) > pd.Timestamp(now)).to_numpy(bool)
    plan = ManualPlan(pd.DataFrame(columns=DUE_COLUMNS))
    plan.unreachable = frame.loc[~known, "name"].astype(str).tolist()
    plan.open = frame.loc[known & has_open, "name"].astype(str).tolist()
    late = frame.loc[known & ~has_open & throttled]
    plan.throttled = [(str(n), pd.Timestamp(u).to_pydatetime()) for n, u in zip(late["name"], until[late.index],
                                                                                 strict=True)]
    free = ~has_open & ~throttled
    due = frame.loc[reachable & free].assign(trigger="manual")
    start = datetime.combine(now.date(), time.min)
    left = max(config.delivery.daily_cap - int(session.execute(_TODAYS_SQL, {"start": start}).scalar_one()), 0)
    plan.over_cap = due["name"].astype(str).tolist()[left:]
    stuck = frame.loc[blocked & free]
    plan.undeliverable = [int(c) for c in stuck["contact_id"]]
    fresh = _as_undeliverable(stuck.loc[~stuck["has_undeliverable"].to_numpy(bool)].assign(trigger="manual"))
    plan.due = _joined(due.head(left).assign(undeliverable=False), fresh)
    return plan


# -------------------------------------------------------------------------------------------- sending, expiry


def mark_sent(session: Session, survey_id: int, message_ref: str | None, now: datetime) -> bool:
    """The question reached the platform: status `sent`, when, and its message (the expiry was set from the planned
    send time). Only a pending survey changes, so a later report of the same send is ignored."""
    result = session.execute(
        update(NpsSurvey)
        .where(col(NpsSurvey.id) == survey_id, col(NpsSurvey.status) == PENDING)
        .values(status=SENT, sent_at=now, message_ref=message_ref)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def expire_surveys(session: Session, now: datetime) -> int:
    """Mark every unanswered survey past its expiry as expired (one UPDATE); returns how many."""
    result = session.execute(
        update(NpsSurvey)
        .where(col(NpsSurvey.status).in_(OPEN_STATUSES), col(NpsSurvey.expires_at) <= now)
        .values(status=EXPIRED)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class Reminder:
    survey_id: int
    account_id: int
    contact_id: int | None
    platform: str
    target: str
    token: str
    lang: str
    send_at: datetime


_REMINDERS_SQL = text(
    """
    SELECT s.id, s.account_id, s.contact_id, s.platform, s.channel_id, s.token, s.lang,
           c.slack_user_id, c.slack_channel_id, c.telegram_user_id, c.telegram_chat_id, c.feishu_open_id,
           c.feishu_chat_id, u.timezone
    FROM nps_survey s
    JOIN account a ON a.id = s.account_id
    LEFT JOIN contact c ON c.id = s.contact_id
    LEFT JOIN "user" u ON u.id = a.owner_id
    WHERE s.status = 'sent' AND s.reminded_at IS NULL AND s.sent_at <= :cutoff AND s.expires_at > :until
    ORDER BY s.id
    """
).bindparams(bindparam("cutoff", type_=DateTime()), bindparam("until", type_=DateTime()))


def choose_reminders(session: Session, now: datetime, config: SurveyConfig) -> list[Reminder]:
    """Surveys sent `remind_after_days` ago and still unanswered, never reminded, that will not have expired by the
    time the reminder goes out; each is marked reminded (one executemany), so there is at most one reminder.
    Flushes; the caller enqueues the reminders and commits."""
    days = config.answering.remind_after_days
    if days <= 0:
        return []
    rows = session.execute(_REMINDERS_SQL, {"cutoff": now - timedelta(days=days), "until": now}).all()
    out: list[Reminder] = []
    for sid, account_id, contact_id, platform, channel, token, lang, su, sc, tu, tc, fu, fc, tz in rows:
        send_at = send_time(now, zone(tz, config.delivery.timezone), config)
        if not token or send_at >= now + config.expiry:
            continue
        if platform == "slack":
            target = channel if channel and channel == sc else (su or channel)
        elif platform == "feishu":
            target = channel or fc or fu
        else:
            target = channel or tc or tu
        if not target:
            continue
        out.append(Reminder(int(sid), int(account_id), contact_id, str(platform), str(target), str(token),
                            str(lang or "en"), send_at))
    if out:
        table = NpsSurvey.__table__  # type: ignore[attr-defined]
        session.execute(
            update(table).where(table.c.id == bindparam("b_id")).values(reminded_at=now),
            [{"b_id": r.survey_id} for r in out],
        )
    return out


def owner_of(session: Session, account_id: int) -> User | None:
    """The account's owner (for routing what an answer causes)."""
    account = session.get(Account, account_id)
    return session.get(User, account.owner_id) if account is not None and account.owner_id is not None else None


def surveys_today(session: Session, now: datetime) -> int:
    """How many surveys were created since midnight UTC (what the daily cap counts: undeliverable ones do not)."""
    return int(session.execute(select(func.count()).select_from(NpsSurvey).where(
        col(NpsSurvey.created_at) >= datetime.combine(now.date(), time.min),
        col(NpsSurvey.status) != UNDELIVERABLE)).scalar_one())
