"""Settings read from the environment and `.env` (pydantic-settings).

Every variable the operator can set is declared here, once; a bad value stops start-up with a
message naming the variable (see `load_settings`).
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from lifecycle.store.errors import ConfigError
from lifecycle.store.partitions import MIN_RETENTION_MONTHS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
# The chat platforms csbot can post to, in the order it prefers them for a person who has both, each with the
# variable whose token makes it configured.
PLATFORM_TOKENS: dict[str, str] = {
    "slack": "SLACK_BOT_TOKEN", "telegram": "TELEGRAM_BOT_TOKEN", "feishu": "FEISHU_APP_ID and FEISHU_APP_SECRET",
}
# FEISHU_DOMAIN's two names; anything else must be the URL of an open platform (a private deployment, a test fake).
FEISHU_DOMAINS = {"feishu": "https://open.feishu.cn", "lark": "https://open.larksuite.com"}


class Settings(BaseSettings):
    """csbot configuration. Names are the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Secrets (and the database URL, which may carry a password) stay out of the settings' repr, so a log line
    # or traceback that prints the settings shows no credentials.
    database_url: str = Field(
        default="sqlite:///csbot.db", repr=False, validation_alias=AliasChoices("CSBOT_DATABASE_URL")
    )
    # Seconds `csbot` keeps retrying (with backoff) a database server it cannot reach at start-up; 0 = try once.
    db_connect_timeout: float = Field(
        default=30.0, ge=0, le=3600, validation_alias=AliasChoices("CSBOT_DB_CONNECT_TIMEOUT")
    )
    timezone: str = Field(default="UTC", validation_alias=AliasChoices("CSBOT_TIMEZONE"))
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("CSBOT_HOST"))
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=AliasChoices("CSBOT_PORT"))
    lang: Literal["en", "zh"] = Field(default="en", validation_alias=AliasChoices("CSBOT_LANG"))
    stages_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_STAGES_FILE"))
    scorecard_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_SCORECARD_FILE"))
    alerts_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_ALERTS_FILE"))
    surveys_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_SURVEYS_FILE"))
    insight_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_INSIGHT_FILE"))
    survey_secret: str | None = Field(
        default=None, min_length=16, repr=False, validation_alias=AliasChoices("CSBOT_SURVEY_SECRET")
    )
    # Every total (portfolio, renewals, at-risk, find, retention, CLV, digests, charts) is converted into this
    # currency with the exchange-rate table (lifecycle/reports/money.py); each account's own ARR stays in its own.
    reporting_currency: str = Field(default="USD", validation_alias=AliasChoices("CSBOT_REPORTING_CURRENCY"))
    csm_read_scope: Literal["own", "all"] = Field(default="all", validation_alias=AliasChoices("CSBOT_CSM_READ_SCOPE"))
    nightly_cron: str = Field(default="0 2 * * *", validation_alias=AliasChoices("CSBOT_NIGHTLY_CRON"))
    # How often `csbot serve` recomputes the accounts whose data changed (bot/push/refresh.py); 0 turns it off.
    refresh_seconds: float = Field(default=2.0, ge=0, le=3600, validation_alias=AliasChoices("CSBOT_REFRESH_SECONDS"))
    # The nightly recompute's account-range shards (lifecycle/shards.py), which every `csbot serve` replica helps
    # with; unset: 8 on PostgreSQL, 1 on SQLite (one shard is the plain full recompute, in one process).
    recompute_shards: int | None = Field(
        default=None, ge=1, le=1024, validation_alias=AliasChoices("CSBOT_RECOMPUTE_SHARDS")
    )
    # How long a claimed shard is a worker's before another may claim it again (its worker died); longer than a
    # shard takes.
    recompute_lease_seconds: float = Field(
        default=600.0, ge=5, le=86_400, validation_alias=AliasChoices("CSBOT_RECOMPUTE_LEASE_SECONDS")
    )
    # How often a `csbot serve` replica looks for shards of an open nightly run to help with; 0: it never helps.
    shard_poll_seconds: float = Field(
        default=5.0, ge=0, le=3600, validation_alias=AliasChoices("CSBOT_SHARD_POLL_SECONDS")
    )
    # What `csbot serve` logs: INFO records every job run (and every run a replica skipped) and outbox retries.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias=AliasChoices("CSBOT_LOG_LEVEL")
    )

    slack_bot_token: str | None = Field(default=None, repr=False, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_signing_secret: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("SLACK_SIGNING_SECRET")
    )
    slack_app_token: str | None = Field(default=None, repr=False, validation_alias=AliasChoices("SLACK_APP_TOKEN"))
    slack_api_url: str = Field(default="https://slack.com/api/", validation_alias=AliasChoices("SLACK_API_URL"))
    telegram_bot_token: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN")
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org/bot", validation_alias=AliasChoices("TELEGRAM_API_URL")
    )
    telegram_webhook_secret: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("TELEGRAM_WEBHOOK_SECRET")
    )
    # Feishu / Lark: the app's credentials from the developer console. With app id and secret csbot connects over
    # the long connection; the verification token (and the encrypt key, when the app has one) are needed for the
    # HTTP event subscription on /feishu/events instead.
    feishu_app_id: str | None = Field(default=None, validation_alias=AliasChoices("FEISHU_APP_ID"))
    feishu_app_secret: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("FEISHU_APP_SECRET")
    )
    feishu_verification_token: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("FEISHU_VERIFICATION_TOKEN")
    )
    feishu_encrypt_key: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("FEISHU_ENCRYPT_KEY")
    )
    feishu_domain: str = Field(default="feishu", validation_alias=AliasChoices("FEISHU_DOMAIN"))
    ingest_token: str | None = Field(default=None, repr=False, validation_alias=AliasChoices("CSBOT_INGEST_TOKEN"))
    ingest_login_event: str = Field(
        default="Logged In", min_length=1, validation_alias=AliasChoices("CSBOT_INGEST_LOGIN_EVENT")
    )
    ingest_account_trait: str = Field(
        default="account_id", min_length=1, validation_alias=AliasChoices("CSBOT_INGEST_ACCOUNT_TRAIT")
    )
    # Conversation memory ("it", "and Northwind?", "only the red ones") is forgotten after this many idle minutes.
    context_ttl_minutes: int = Field(default=30, ge=1, le=1440, validation_alias=AliasChoices("CSBOT_CONTEXT_TTL"))
    # Optional LLM fallback for free text the local understanding cannot read with confidence: any
    # OpenAI-compatible endpoint (a local Ollama or vLLM, or a hosted one). Unset means fully local. The model may
    # only pick a command and its arguments; it never sees account data and never writes an answer.
    llm_base_url: str | None = Field(default=None, validation_alias=AliasChoices("CSBOT_LLM_BASE_URL"))
    llm_model: str = Field(default="gpt-4o-mini", min_length=1, validation_alias=AliasChoices("CSBOT_LLM_MODEL"))
    llm_api_key: str | None = Field(default=None, repr=False, validation_alias=AliasChoices("CSBOT_LLM_API_KEY"))
    llm_timeout: float = Field(default=8.0, gt=0, le=120, validation_alias=AliasChoices("CSBOT_LLM_TIMEOUT"))
    ingest_max_bytes: int = Field(
        default=1_048_576, ge=1_024, le=104_857_600, validation_alias=AliasChoices("CSBOT_INGEST_MAX_BYTES")
    )
    # Small ingest requests arriving within this many milliseconds are applied together in one transaction
    # (group commit); 0 applies each request on its own.
    ingest_batch_window_ms: float = Field(
        default=5.0, ge=0, le=1_000, validation_alias=AliasChoices("CSBOT_INGEST_BATCH_WINDOW_MS")
    )
    # Raw daily usage kept: the current month and this many whole months before it (the nightly job drops older
    # months; `csbot usage prune`); 0 keeps everything. Never fewer than 4, so the health windows lose nothing.
    usage_retention_months: int = Field(
        default=0, ge=0, le=1_200, validation_alias=AliasChoices("CSBOT_USAGE_RETENTION_MONTHS")
    )

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return value

    @field_validator("usage_retention_months")
    @classmethod
    def _retention_long_enough(cls, value: int) -> int:
        if 0 < value < MIN_RETENTION_MONTHS:
            raise ValueError(f"keep at least {MIN_RETENTION_MONTHS} months (the health windows reach 90 days back), "
                             "or 0 to keep everything")
        return value

    @field_validator("feishu_domain")
    @classmethod
    def _feishu_domain(cls, value: str) -> str:
        name = value.strip().lower()
        if name in FEISHU_DOMAINS:
            return name
        if not re.match(r"^https?://[^/\s]+", value.strip()):
            raise ValueError(f"not feishu, lark or an http(s) URL: {value!r}")
        return value.strip().rstrip("/")

    @property
    def feishu_base_url(self) -> str:
        """The open platform's base URL for FEISHU_DOMAIN."""
        return FEISHU_DOMAINS.get(self.feishu_domain, self.feishu_domain)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from exc
        return value

    @field_validator("reporting_currency")
    @classmethod
    def _currency_code(cls, value: str) -> str:
        code = value.strip().upper()
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise ValueError(f"not a 3-letter currency code {value!r} (use an ISO 4217 code such as USD or EUR)")
        return code

    @field_validator("nightly_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            cron_trigger(value, ZoneInfo("UTC"))
        except ValueError as exc:
            raise ValueError(
                f"not a crontab expression {value!r} ([second] minute hour day month weekday): {exc}"
            ) from None
        return value

    @field_validator("stages_file", "scorecard_file", "alerts_file", "surveys_file", "insight_file")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def delivery_platforms(self) -> tuple[str, ...]:
        """The platforms messages can be delivered on: those whose bot token is set (see `PLATFORM_TOKENS`)."""
        tokens = {"slack": self.slack_bot_token, "telegram": self.telegram_bot_token,
                  "feishu": self.feishu_app_secret if self.feishu_app_id else None}
        return tuple(name for name in PLATFORM_TOKENS if tokens[name])

    def secrets(self) -> list[str]:
        """Every configured credential (tokens, secrets, the database password): what logs must never show."""
        values = [
            self.slack_bot_token, self.slack_signing_secret, self.slack_app_token, self.telegram_bot_token,
            self.telegram_webhook_secret, self.survey_secret, self.ingest_token, self.llm_api_key,
            self.feishu_app_secret, self.feishu_verification_token, self.feishu_encrypt_key,
        ]
        if "://" in self.database_url:
            with contextlib.suppress(ArgumentError, ValueError):  # an unparsable URL fails later, on its own
                values.append(make_url(self.database_url).password)
        return [str(v) for v in values if v]


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_WEEKDAY_RANGE = re.compile(r"^([0-7])-([0-7])(?:/(\d+))?$")


def _crontab_weekdays(field: str) -> str:
    """Crontab weekday numbers (0 or 7 = Sunday, 1 = Monday) as names: APScheduler 3 reads numbers as
    0 = Monday, so "1-5" would silently mean Tuesday to Saturday."""
    parts = []
    for part in field.split(","):
        if part.isdigit() and int(part) <= 7:
            parts.append(_WEEKDAYS[int(part) % 7])
            continue
        found = _WEEKDAY_RANGE.match(part)
        if found is None:
            parts.append(part)  # "*", "*/2", names: the same in both
            continue
        first, last, step = int(found[1]), int(found[2]), int(found[3] or 1)
        if first > last:
            raise ValueError(f"weekday range {part!r} runs backwards")
        parts.extend(dict.fromkeys(_WEEKDAYS[day % 7] for day in range(first, last + 1, step)))
    return ",".join(dict.fromkeys(parts))


def cron_trigger(expression: str, tz: ZoneInfo) -> CronTrigger:
    """A trigger from a standard five-field crontab line (minute hour day month weekday), read as cron does,
    with an optional leading sixth field for seconds (as Quartz and Spring read it: "*/10 * * * * *")."""
    fields = expression.split()
    if len(fields) == 6:
        second, minute, hour, day, month, weekday = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_crontab_weekdays(weekday), timezone=tz)
    if len(fields) == 5:
        fields[4] = _crontab_weekdays(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=tz)


_ENV_NAMES: dict[str, str] = {
    name: str(field.validation_alias.choices[0]) if isinstance(field.validation_alias, AliasChoices) else name
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Read settings (keyword overrides by field name win); a validation failure becomes a `ConfigError`
    naming each bad variable."""
    by_alias = {_ENV_NAMES.get(name, name): value for name, value in overrides.items()}
    try:
        return Settings(**by_alias)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{_ENV_NAMES.get(loc, loc)}: {err['msg']}")
        raise ConfigError("Invalid configuration — " + "; ".join(problems)) from None


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML configuration file as a dict; any problem reading it is a `ConfigError` naming the file and `what`."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


_M = TypeVar("_M", bound=BaseModel)


def validate_config(model: type[_M], raw: Mapping[str, Any], source: str) -> _M:
    """`raw` validated as `model`; every problem is reported at once as a `ConfigError` naming `source` and the
    key (`rules.health_drop.points: Input should be …`)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in err['loc']) or '(top level)'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
