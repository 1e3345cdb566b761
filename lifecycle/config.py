"""Settings read from the environment and `.env` (pydantic-settings).

Every variable the operator can set is declared here, once; a bad value stops start-up with a
message naming the variable (see `load_settings`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifecycle.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "config"


class Settings(BaseSettings):
    """csbot configuration. Names are the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(default="sqlite:///csbot.db", validation_alias=AliasChoices("CSBOT_DATABASE_URL"))
    timezone: str = Field(default="UTC", validation_alias=AliasChoices("CSBOT_TIMEZONE"))
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("CSBOT_HOST"))
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=AliasChoices("CSBOT_PORT"))
    lang: Literal["en", "zh"] = Field(default="en", validation_alias=AliasChoices("CSBOT_LANG"))
    stages_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_STAGES_FILE"))
    scorecard_file: Path | None = Field(default=None, validation_alias=AliasChoices("CSBOT_SCORECARD_FILE"))
    csm_read_scope: Literal["own", "all"] = Field(default="all", validation_alias=AliasChoices("CSBOT_CSM_READ_SCOPE"))

    slack_bot_token: str | None = Field(default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_signing_secret: str | None = Field(default=None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET"))
    slack_app_token: str | None = Field(default=None, validation_alias=AliasChoices("SLACK_APP_TOKEN"))
    slack_api_url: str = Field(default="https://slack.com/api/", validation_alias=AliasChoices("SLACK_API_URL"))
    telegram_bot_token: str | None = Field(default=None, validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN"))
    telegram_api_url: str = Field(
        default="https://api.telegram.org/bot", validation_alias=AliasChoices("TELEGRAM_API_URL")
    )
    telegram_webhook_secret: str | None = Field(default=None, validation_alias=AliasChoices("TELEGRAM_WEBHOOK_SECRET"))
    ingest_token: str | None = Field(default=None, validation_alias=AliasChoices("CSBOT_INGEST_TOKEN"))

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from exc
        return value

    @field_validator("stages_file", "scorecard_file")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
