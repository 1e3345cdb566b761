"""SQLModel tables: the whole persistent domain of csbot.

Conventions: every timestamp is naive UTC (`utcnow()`); dates are calendar dates. Natural keys used by the
importers carry unique constraints so that re-importing a file is an upsert. Denormalised "latest" columns on
`Account` (stage, health) keep portfolio queries to one table scan.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from pydantic import NaiveDatetime
from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

ROLES = ("admin", "manager", "csm", "viewer")
ACCOUNT_STATUSES = ("active", "churned")
TICKET_PRIORITIES = ("low", "normal", "high", "urgent")


def utcnow() -> datetime:
    """Current time as naive UTC, the form stored in every timestamp column."""
    return datetime.now(UTC).replace(tzinfo=None)


class User(SQLModel, table=True):
    """An internal person: CS manager, CSM, admin or viewer, with their chat identities."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, index=True)
    name: str
    role: str = Field(default="csm")
    slack_user_id: str | None = Field(default=None, index=True)
    telegram_user_id: str | None = Field(default=None, index=True)
    timezone: str = Field(default="UTC")
    manager_id: int | None = Field(default=None, foreign_key="user.id")
    lang: str | None = None
    active: bool = True
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    updated_at: NaiveDatetime = Field(default_factory=utcnow)


class Account(SQLModel, table=True):
    """A customer account with its commercial facts and its latest lifecycle state."""

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(unique=True, index=True)
    name: str
    name_key: str = Field(index=True)  # casefolded name for exact, case-insensitive lookup
    owner_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    segment: str | None = Field(default=None, index=True)
    tier: str | None = None
    plan: str | None = None
    arr: float = 0.0
    currency: str = "USD"
    seats: int = 0
    contract_start: date | None = None
    renewal_date: date | None = Field(default=None, index=True)
    status: str = Field(default="active", index=True)
    churned_on: date | None = None
    churn_reason: str | None = None
    stage: str = Field(default="onboarding", index=True)
    stage_since: NaiveDatetime = Field(default_factory=utcnow)
    # Set when a person moved the stage by hand: automatic rules leave the stage alone until cleared.
    stage_pinned: bool = False
    health_score: float | None = None
    health_grade: str | None = Field(default=None, index=True)
    health_at: date | None = None
    last_usage_date: date | None = None
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    updated_at: NaiveDatetime = Field(default_factory=utcnow)


class Contact(SQLModel, table=True):
    """A person at a customer, with the chat identities and the channel/chat where surveys go."""

    __table_args__ = (UniqueConstraint("account_id", "key", name="uq_contact_account_key"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    key: str  # natural key within the account: lower-cased email, or the name when there is no email
    name: str
    email: str | None = None
    role: str | None = None
    slack_user_id: str | None = Field(default=None, index=True)
    telegram_user_id: str | None = Field(default=None, index=True)
    slack_channel_id: str | None = Field(default=None, index=True)
    telegram_chat_id: str | None = Field(default=None, index=True)
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class UsageDaily(SQLModel, table=True):
    """Daily product usage of an account; `feature == ""` is the account total for the day."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        UniqueConstraint("account_id", "feature", "day", name="uq_usage_account_feature_day"),
        Index("ix_usage_day", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    day: date
    feature: str = ""
    active_users: int = 0
    logins: int = 0
    events: int = 0


class Ticket(SQLModel, table=True):
    """A support ticket."""

    __table_args__ = (
        UniqueConstraint("account_id", "ticket_id", name="uq_ticket_account_ticket"),
        Index("ix_ticket_account_opened", "account_id", "opened_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    ticket_id: str
    opened_at: NaiveDatetime
    closed_at: NaiveDatetime | None = None
    priority: str = "normal"
    status: str = "open"


class NpsSurvey(SQLModel, table=True):
    """One NPS question sent to one contact."""

    __tablename__ = "nps_survey"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    trigger: str = "manual"
    platform: str | None = None
    channel_id: str | None = None
    status: str = Field(default="pending", index=True)  # pending, sent, answered, expired
    token: str | None = Field(default=None, unique=True)
    message_ref: str | None = None
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    sent_at: NaiveDatetime | None = None
    expires_at: NaiveDatetime | None = None
    reminded_at: NaiveDatetime | None = None


class NpsResponse(SQLModel, table=True):
    """An NPS answer: from a survey in chat, or imported from history."""

    __tablename__ = "nps_response"
    __table_args__ = (
        UniqueConstraint("account_id", "contact_key", "responded_at", name="uq_nps_account_contact_time"),
        Index("ix_nps_account_time", "account_id", "responded_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    survey_id: int | None = Field(default=None, foreign_key="nps_survey.id", unique=True)
    contact_id: int | None = Field(default=None, foreign_key="contact.id")
    contact_key: str = ""  # lower-cased email of the respondent ("" when unknown)
    score: int
    comment: str | None = None
    responded_at: NaiveDatetime
    source: str = "import"


class Note(SQLModel, table=True):
    """A CSM note or touchpoint on an account."""

    __table_args__ = (Index("ix_note_account_created", "account_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    author_id: int | None = Field(default=None, foreign_key="user.id")
    kind: str = "note"
    text: str
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class StageTransition(SQLModel, table=True):
    """One move of an account from a stage to another: when, why, by whom or by which rule."""

    __tablename__ = "stage_transition"
    __table_args__ = (Index("ix_stage_transition_account_at", "account_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    from_stage: str | None = None
    to_stage: str
    at: NaiveDatetime = Field(default_factory=utcnow)
    reason: str = ""
    source: str = "manual"  # manual, rule:<name>, import
    actor_id: int | None = Field(default=None, foreign_key="user.id")


class HealthSnapshot(SQLModel, table=True):
    """The health of an account on one day, with each measure's value and contribution."""

    __tablename__ = "health_snapshot"
    __table_args__ = (UniqueConstraint("account_id", "day", name="uq_health_account_day"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    day: date = Field(index=True)
    score: float
    grade: str
    measures: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    scorecard_version: str
    computed_at: NaiveDatetime = Field(default_factory=utcnow)


class Alert(SQLModel, table=True):
    """A risk or renewal alert raised by a rule; the dedupe key stops repeats of one condition."""

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    owner_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    rule: str = Field(index=True)
    severity: str = "warning"  # info, warning, critical
    dedupe_key: str = Field(unique=True)
    status: str = Field(default="open", index=True)  # open, acknowledged, snoozed, resolved
    feedback: str | None = None  # useful, not_useful
    title: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    acknowledged_at: NaiveDatetime | None = None
    snoozed_until: NaiveDatetime | None = None
    resolved_at: NaiveDatetime | None = None


class Delivery(SQLModel, table=True):
    """An outbox row: one message to one chat target, retried until sent, never dropped."""

    __table_args__ = (Index("ix_delivery_status_next", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int | None = Field(default=None, foreign_key="alert.id", index=True)
    kind: str = "alert"
    platform: str
    target: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "pending"  # pending, sending, sent, failed
    attempts: int = 0
    next_attempt_at: NaiveDatetime = Field(default_factory=utcnow)
    last_error: str | None = None
    message_ref: str | None = None
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    sent_at: NaiveDatetime | None = None


class AuditLog(SQLModel, table=True):
    """Who read or changed what, from which platform."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: NaiveDatetime = Field(default_factory=utcnow)
    actor_id: int | None = Field(default=None, foreign_key="user.id")
    actor: str = ""
    platform: str = ""
    action: str
    account_id: int | None = Field(default=None, foreign_key="account.id", index=True)
    detail: str = ""
