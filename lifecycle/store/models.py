"""SQLModel tables: the whole persistent domain of csbot.

Conventions: every timestamp is naive UTC (`utcnow()`); dates are calendar dates. Natural keys used by the
importers carry unique constraints so that re-importing a file is an upsert. Denormalised "latest" columns on
`Account` (stage, health) keep portfolio queries to one table scan.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from pydantic import NaiveDatetime
from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint, event, text
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel, col

from lifecycle.scoring.rollups import refresh_accounts

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
    feishu_open_id: str | None = Field(default=None, index=True)
    feishu_union_id: str | None = Field(default=None, index=True)
    timezone: str = Field(default="UTC")
    manager_id: int | None = Field(default=None, foreign_key="user.id")
    lang: str | None = None
    active: bool = True
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    updated_at: NaiveDatetime = Field(default_factory=utcnow)


class Account(SQLModel, table=True):
    """A customer account with its commercial facts and its latest lifecycle state."""

    # Chat lookups match the external id in any case: without this index that is a scan of every account.
    # The card's churn figures count accounts by status with one index range each (lifecycle/insight/churn.py).
    __table_args__ = (Index("ix_account_external_id_lower", text("lower(external_id)")),
                      Index("ix_account_status_churned_on", "status", "churned_on"),
                      Index("ix_account_status_churn_probability", "status", "churn_probability"))

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
    last_usage_at: NaiveDatetime | None = None  # newest event time received by the usage ingest API
    # Filled by the churn model (lifecycle/insight/churn.py): p(churn within the model's horizon) and its top drivers.
    churn_probability: float | None = None
    churn_reasons: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    churn_scored_at: NaiveDatetime | None = None
    cohort: int | None = Field(default=None, index=True)  # behaviour cohort (lifecycle/insight/segments.py)
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
    # Feishu/Lark: the contact's open_id and union_id, and the group chat (oc_…) where their surveys go.
    feishu_open_id: str | None = Field(default=None, index=True)
    feishu_union_id: str | None = Field(default=None, index=True)
    feishu_chat_id: str | None = Field(default=None, index=True)
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class UsageDaily(SQLModel, table=True):
    """Daily product usage of an account; `feature == ""` is the account total for the day."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        UniqueConstraint("account_id", "feature", "day", name="uq_usage_account_feature_day"),
        Index("ix_usage_day", "day"),
        # Covers the whole-portfolio window aggregates (lifecycle.scoring.signals): they read only this index.
        Index("ix_usage_cover", "account_id", "feature", "day", "active_users", "logins", "events"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    day: date
    feature: str = ""
    active_users: int = 0
    logins: int = 0
    events: int = 0


class UsageUserDay(SQLModel, table=True):
    """A user seen active in an account on a day (feature "" = any event), so that ingested active-user
    counts stay distinct across requests and replicas."""

    __tablename__ = "usage_user_day"
    __table_args__ = (
        UniqueConstraint("account_id", "feature", "day", "user_key", name="uq_usage_user_day"),
        Index("ix_usage_user_day_day", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    feature: str = ""
    day: date
    user_key: str


class IngestMessage(SQLModel, table=True):
    """A usage-ingest message id already applied: a resend of it changes nothing."""

    __tablename__ = "ingest_message"

    message_id: str = Field(primary_key=True)
    received_at: NaiveDatetime = Field(default_factory=utcnow, index=True)


class IngestUser(SQLModel, table=True):
    """Which account a product user belongs to, learnt from identify/group calls of the usage ingest."""

    __tablename__ = "ingest_user"

    user_key: str = Field(primary_key=True)
    account_external_id: str
    updated_at: NaiveDatetime = Field(default_factory=utcnow)


class IngestSource(SQLModel, table=True):
    """The last ingest from one source (a Segment library, a `?source=` name, or "api") and its running totals."""

    __tablename__ = "ingest_source"

    source: str = Field(primary_key=True)
    last_received_at: NaiveDatetime
    last_event_at: NaiveDatetime | None = None
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    unknown: int = 0


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
    lang: str = "en"  # the language the question was asked in; confirmations and the reminder follow it
    comment_ref: str | None = None  # "<chat>:<message>" of the prompt a follow-up comment answers (Telegram)


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


class ArrChange(SQLModel, table=True):
    """One change of an account's recurring revenue: a new logo, an expansion, a contraction, a churn or a
    reactivation, with ARR and seats before and after. Retention (GRR, NRR) and revenue KPIs read this history."""

    __tablename__ = "arr_change"
    __table_args__ = (
        UniqueConstraint("account_id", "day", "kind", name="uq_arr_change_account_day_kind"),
        Index("ix_arr_change_day", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    day: date
    kind: str  # new, expansion, contraction, churn, reactivation
    arr_before: float = 0.0
    arr_after: float = 0.0
    seats_before: int = 0
    seats_after: int = 0
    reason: str | None = None  # why the customer left (churn) or what changed
    source: str = "import"
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class ExchangeRate(SQLModel, table=True):
    """One exchange rate on one day: 1 `currency` = `rate` `base` (imported with `csbot import rates`). Totals
    convert into the reporting currency with each pair's latest rate on or before the day they are for."""

    __tablename__ = "exchange_rate"
    __table_args__ = (UniqueConstraint("day", "currency", "base", name="uq_exchange_rate_day_currency_base"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date
    currency: str
    base: str
    rate: float
    created_at: NaiveDatetime = Field(default_factory=utcnow)


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


class SeenKey(SQLModel, table=True):
    """A platform delivery already handled (a Slack event id or request signature, a Telegram update id), kept
    until `expires_at`: the unique key makes a retry or a replay that reaches another replica a no-op too."""

    __tablename__ = "seen_key"

    key: str = Field(primary_key=True)
    expires_at: NaiveDatetime = Field(index=True)


class ConversationState(SQLModel, table=True):
    """What csbot remembers of one conversation (a person in a console session, a Slack DM or thread, a Telegram
    chat): the last account and question, a pending clarification or confirmation. Kept in the database so every
    replica reads the same memory; forgotten once `updated_at` is older than the configured idle time."""

    __tablename__ = "conversation_state"

    key: str = Field(primary_key=True)  # platform:sender:conversation
    state: str = "{}"  # JSON written by the understanding layer
    updated_at: NaiveDatetime = Field(default_factory=utcnow, index=True)


class JobRun(SQLModel, table=True):
    """One run of a scheduled job. The unique (job, fire_time) pair is how replicas sharing one database agree
    that each scheduled occurrence runs once: the first to insert the row runs it, the others skip."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job", "fire_time", name="uq_job_run_job_fire"),)

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(index=True)
    fire_time: NaiveDatetime  # the scheduled occurrence (naive UTC); the start time for a one-off run
    trigger: str = "schedule"  # schedule, manual
    host: str = ""
    started_at: NaiveDatetime = Field(default_factory=utcnow)
    finished_at: NaiveDatetime | None = None
    status: str = "running"  # running, ok, failed
    summary: str = ""


class ChurnModel(SQLModel, table=True):
    """A trained churn model: its joblib bytes and metadata, in the database so that every replica shares it."""

    __tablename__ = "churn_model"

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(unique=True)
    kind: str  # the chosen candidate, e.g. "logistic" or "hist_gradient_boosting"
    horizon_days: int
    trained_at: NaiveDatetime = Field(default_factory=utcnow, index=True)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Cohort(SQLModel, table=True):
    """One behaviour cohort of the latest segmentation: its size and what sets it apart
    (lifecycle/insight/segments.py)."""

    __tablename__ = "cohort"

    id: int = Field(primary_key=True)  # cohort number, 1 = the largest
    size: int = 0
    traits: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    computed_at: NaiveDatetime = Field(default_factory=utcnow)


class AccountCardFact(SQLModel, table=True):
    """What the account card shows that the nightly recompute precomputed (its stage KPIs), for one day, with the
    freshness stamp of the inputs it came from (lifecycle/reports/cardfacts.py)."""

    __tablename__ = "account_card_fact"

    account_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    as_of: date
    stamp: str
    kpis: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    computed_at: NaiveDatetime = Field(default_factory=utcnow)


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



# ------------------------------------------------------------------------ roll-ups and change marks (recompute)


class UsageRollup(SQLModel, table=True):
    """An account's recent account-total usage packed in one row (see `lifecycle.scoring.rollups` for the layout), kept
    in step with `usage_daily` in the transaction that writes it, so the recompute reads one row per account."""

    __tablename__ = "usage_rollup"

    account_id: int = Field(primary_key=True, foreign_key="account.id")
    end_day: date | None = None  # newest day with an account-total row (the last slot of `days`)
    first_feature_day: date | None = None  # oldest day with a per-feature row (None: the account has none)
    days: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AccountChange(SQLModel, table=True):
    """Accounts whose recompute inputs changed since the recompute last saw them (written by database triggers on
    ticket, note, nps_response and account, and by `lifecycle.scoring.rollups` for usage); `version` grows on each
    change, so a mark made while a recompute runs outlives it."""

    __tablename__ = "account_change"

    account_id: int = Field(primary_key=True)
    version: int = 1


class RecomputeState(SQLModel, table=True):
    """The day and configuration of the last recompute that covered every account (one row per `name`)."""

    __tablename__ = "recompute_state"

    name: str = Field(primary_key=True)
    as_of: date
    digest: str  # of the scorecard and stage machine it ran with
    finished_at: NaiveDatetime = Field(default_factory=utcnow)


class RecomputeShard(SQLModel, table=True):
    """One account-id range of a sharded nightly recompute (`lifecycle.shards`), claimed by one worker at a time.

    A run is keyed by its day and configuration digest; its shards cover every account id in [lo, hi) ranges,
    and the row with shard number `FINISH_SHARD` (-1) is the run's whole-portfolio step (insight, the run record),
    done once after every range shard. `lease_until` is when a running shard's claim lapses (its worker died):
    another worker then claims it again, counting `attempts`."""

    __tablename__ = "recompute_shard"
    __table_args__ = (UniqueConstraint("run_key", "shard", name="uq_recompute_shard_run_shard"),)

    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)  # "<day>:<config digest>"
    as_of: date
    shard: int  # 0 … n-1; -1 is the whole-portfolio step
    lo: int = Field(default=0, sa_type=BigInteger)  # account ids lo <= id < hi
    hi: int = Field(default=0, sa_type=BigInteger)
    status: str = "pending"  # pending, running, done, failed
    claimed_by: str | None = None  # host:pid of the worker
    lease_until: NaiveDatetime | None = None
    attempts: int = 0
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    started_at: NaiveDatetime | None = None
    finished_at: NaiveDatetime | None = None
    accounts: int = 0
    stage_moves: int = 0
    seconds: float = 0.0
    error: str | None = None


# Account columns that feed the signals frame; health, churn and cache columns written by the recompute itself
# (and `last_usage_date`, whose usage is marked by the roll-ups) are left out, so the recompute marks nothing.
CHANGE_ACCOUNT_COLUMNS = (
    "external_id", "name", "owner_id", "segment", "plan", "arr", "seats", "status", "stage", "stage_pinned",
    "stage_since", "contract_start", "renewal_date",
)
CHANGE_CHILD_TABLES = ("ticket", "note", "nps_response")


def change_trigger_ddl(dialect: str) -> list[str]:
    """The statements that create the triggers filling `account_change` (used by migration 0011 and by
    `create_all` for throwaway databases)."""
    columns = ", ".join(CHANGE_ACCOUNT_COLUMNS)
    if dialect == "postgresql":
        upsert = ("INSERT INTO account_change (account_id, version) VALUES ({ref}, 1) ON CONFLICT (account_id) "
                  "DO UPDATE SET version = account_change.version + 1;")
        out = [
            "CREATE OR REPLACE FUNCTION csbot_mark_account() RETURNS trigger AS $$ BEGIN "
            + upsert.format(ref="NEW.id") + " RETURN NULL; END $$ LANGUAGE plpgsql",
            "CREATE OR REPLACE FUNCTION csbot_mark_child() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP <> 'INSERT' THEN " + upsert.format(ref="OLD.account_id") + " END IF; "
            "IF TG_OP <> 'DELETE' THEN " + upsert.format(ref="NEW.account_id") + " END IF; "
            "RETURN NULL; END $$ LANGUAGE plpgsql",
            "DROP TRIGGER IF EXISTS trg_change_account ON account",
            f"CREATE TRIGGER trg_change_account AFTER INSERT OR UPDATE OF {columns} ON account "
            "FOR EACH ROW EXECUTE FUNCTION csbot_mark_account()",
        ]
        for table in CHANGE_CHILD_TABLES:
            out += [f"DROP TRIGGER IF EXISTS trg_change_{table} ON {table}",
                    f"CREATE TRIGGER trg_change_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION csbot_mark_child()"]
        return out

    def mark(ref: str) -> str:
        return ("INSERT OR REPLACE INTO account_change (account_id, version) VALUES "
                f"({ref}, COALESCE((SELECT version FROM account_change WHERE account_id = {ref}), 0) + 1);")

    out = [
        f"CREATE TRIGGER IF NOT EXISTS trg_change_account_ins AFTER INSERT ON account BEGIN {mark('NEW.id')} END",
        f"CREATE TRIGGER IF NOT EXISTS trg_change_account_upd AFTER UPDATE OF {columns} ON account "
        f"BEGIN {mark('NEW.id')} END",
    ]
    for table in CHANGE_CHILD_TABLES:
        out += [
            f"CREATE TRIGGER IF NOT EXISTS trg_change_{table}_ins AFTER INSERT ON {table} "
            f"BEGIN {mark('NEW.account_id')} END",
            f"CREATE TRIGGER IF NOT EXISTS trg_change_{table}_upd AFTER UPDATE ON {table} "
            f"BEGIN {mark('OLD.account_id')} {mark('NEW.account_id')} END",
            f"CREATE TRIGGER IF NOT EXISTS trg_change_{table}_del AFTER DELETE ON {table} "
            f"BEGIN {mark('OLD.account_id')} END",
        ]
    return out


@event.listens_for(SQLModel.metadata, "after_create")
def _create_change_triggers(target: Any, connection: Any, **_kw: Any) -> None:
    if connection.dialect.name in ("sqlite", "postgresql") and "account_change" in target.tables:
        for statement in change_trigger_ddl(connection.dialect.name):
            connection.exec_driver_sql(statement)



@event.listens_for(Session, "after_flush")
def _refresh_rollups_after_flush(session: Session, _context: Any) -> None:
    """ORM writes of usage rows keep the roll-ups in step too (the bulk paths call `lifecycle.scoring.rollups`
    directly)."""
    touched = {obj.account_id for group in (session.new, session.dirty, session.deleted) for obj in group
               if isinstance(obj, UsageDaily)}
    if touched:
        refresh_accounts(session.connection(), touched)


Owners = int | tuple[int, ...] | None  # one owner, any of several (a manager's team), or everyone


def owned_by(stmt: Any, owners: Owners) -> Any:
    """`stmt` limited to the accounts of one owner or of several; unchanged for everyone."""
    if owners is None:
        return stmt
    if isinstance(owners, int):
        return stmt.where(col(Account.owner_id) == owners)
    return stmt.where(col(Account.owner_id).in_(list(owners)))
