"""`csbot serve` end to end: the ASGI app from `build_app` under uvicorn (127.0.0.1, port 0) with Slack in HTTP
mode and a Telegram webhook, both against fake platform APIs, over the demo portfolio.

Also the start-up checks: a half-configured platform or a bad `CSBOT_PORT` stops `csbot serve` with a message
naming the variable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from adapters.cli.app import app as cli
from adapters.server import build_app
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account
from lifecycle.store.settings import Settings, get_settings, load_settings
from tests.fakes.chat_requests import FORM, post_slack, slash_command
from tests.fakes.serving import served_on_loop
from tests.fakes.slack_api import RESPONSE_URL, FakeCall, FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, message_update
from tests.seeding import seed_demo_at

TODAY = date(2025, 3, 14)
SIGNING_SECRET = "serve-signing-secret"
WEBHOOK_SECRET = "serve-webhook-secret"
SLACK_TOKEN = "xoxb-serve-test"
DEMO_MANAGER_SLACK, DEMO_MANAGER_TELEGRAM = "U0DEMO01", 700_000_001
ACCOUNT = "Acme Logistics"


@pytest.fixture
def demo(engine: Engine) -> Account:
    """The demo portfolio, recomputed; returns the account the tests ask about."""
    seed_demo_at(engine, TODAY, recomputed=True)
    with Session(engine) as s:
        return s.exec(select(Account).where(Account.name == ACCOUNT)).one()


@dataclass
class Served:
    url: str
    slack: FakeSlackAPI
    telegram: FakeTelegramAPI

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)

    async def slash(self, text: str, *, user: str, rid: str) -> httpx.Response:
        body = slash_command(text, user=user, channel="CTEAM", response_url=self.slack.response_url(rid),
                             team_domain="demo", channel_name="cs-team")
        async with self.client() as http:
            return await post_slack(http, body, FORM, secret=SIGNING_SECRET)

    async def answer(self, rid: str) -> FakeCall:
        """The slash command's answer at its response URL (it follows the HTTP 200)."""
        calls = await asyncio.to_thread(self.slack.wait_for, RESPONSE_URL)
        [answer] = [c for c in calls if c.path_id == rid]
        return answer


def _settings(db_url: str, slack: FakeSlackAPI, telegram: FakeTelegramAPI, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url, "slack_bot_token": SLACK_TOKEN, "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url, "telegram_bot_token": TOKEN, "telegram_api_url": telegram.api_url,
        "telegram_webhook_secret": WEBHOOK_SECRET,
    }
    return load_settings(**(values | overrides))


@pytest.fixture
async def served(
    engine: Engine, db_url: str, demo: Account, fake_slack: FakeSlackAPI, fake_telegram: FakeTelegramAPI
) -> AsyncIterator[Served]:
    """`csbot serve` as the CLI runs it: `build_app` under uvicorn, here in a thread on a free port."""
    asgi = build_app(engine, _settings(db_url, fake_slack, fake_telegram))
    # The lifespan talks to the fake Telegram API, which runs on this loop: wait without blocking it.
    async with served_on_loop(asgi) as url:
        yield Served(url, fake_slack, fake_telegram)


async def test_slack_and_telegram_both_return_the_account_card(served: Served, demo: Account) -> None:
    response = await served.slash(f"account {ACCOUNT}", user=DEMO_MANAGER_SLACK, rid="card")
    assert response.status_code == 200
    answer = await served.answer("card")
    blocks = answer.params["blocks"]
    assert blocks[0]["type"] == "header" and blocks[0]["text"]["text"] == ACCOUNT
    assert blocks[1]["elements"][0]["text"] == demo.external_id
    fields = [f["text"] for b in blocks if "fields" in b for f in b["fields"]]
    assert f"*ARR*\n${demo.arr:,.0f}" in fields

    update = message_update(1, f"/account {ACCOUNT}", user_id=DEMO_MANAGER_TELEGRAM, first_name="Maya")
    async with served.client() as http:
        response = await http.post("/telegram/webhook", json=update,
                                   headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})
    assert response.status_code == 200
    [sent] = await served.telegram.wait_for("sendMessage")
    assert sent.params["chat_id"] == str(DEMO_MANAGER_TELEGRAM)
    assert sent.params["text"].startswith(f"<b>{ACCOUNT}</b> <i>{demo.external_id}</i>\n<b>Owner</b>: ")
    assert f"<b>ARR</b>: ${demo.arr:,.0f}" in sent.params["text"]


async def test_an_unknown_slack_user_gets_the_refusal(served: Served) -> None:
    await served.slash(f"account {ACCOUNT}", user="USTRANGER", rid="stranger")
    answer = await served.answer("stranger")
    assert answer.params["response_type"] == "ephemeral"
    assert answer.params["text"].startswith("Hi! I don't know you yet, so I can't share account data.")
    assert "(USTRANGER)" in answer.params["text"] and ACCOUNT not in str(answer.params)


async def test_a_telegram_webhook_with_a_wrong_secret_is_refused(served: Served) -> None:
    update = message_update(2, f"/account {ACCOUNT}", user_id=DEMO_MANAGER_TELEGRAM)
    async with served.client() as http:
        response = await http.post("/telegram/webhook", json=update,
                                   headers={"X-Telegram-Bot-Api-Secret-Token": "guess"})
    assert response.status_code == 403


async def test_health_and_metrics(served: Served) -> None:
    async with served.client() as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "database": "ok", "slack": "http", "telegram": "webhook",
                                 "feishu": "off"}
        metrics = await http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'csbot_http_requests_total{path="/healthz",status="200"} 1.0' in metrics.text


# --- start-up checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "polling", "variable"),
    [
        ({"slack_signing_secret": None}, False, "SLACK_SIGNING_SECRET"),
        ({"slack_bot_token": None}, False, "SLACK_BOT_TOKEN"),
        ({"telegram_webhook_secret": None}, False, "TELEGRAM_WEBHOOK_SECRET"),
        ({"telegram_bot_token": None}, False, "TELEGRAM_BOT_TOKEN"),
    ],
)
def test_half_configured_platforms_stop_start_up(
    engine: Engine, db_url: str, overrides: dict[str, Any], polling: bool, variable: str
) -> None:
    unused = "http://127.0.0.1:9"  # never contacted: start-up stops before any platform call
    settings = load_settings(
        **({"database_url": db_url, "slack_bot_token": SLACK_TOKEN, "slack_signing_secret": SIGNING_SECRET,
            "slack_api_url": unused, "telegram_bot_token": TOKEN, "telegram_api_url": unused,
            "telegram_webhook_secret": WEBHOOK_SECRET} | overrides))
    with pytest.raises(ConfigError, match=variable):
        build_app(engine, settings, telegram_polling=polling)


def test_telegram_polling_needs_no_webhook_secret(engine: Engine, db_url: str) -> None:
    settings = load_settings(database_url=db_url, telegram_bot_token=TOKEN, telegram_api_url="http://127.0.0.1:9")
    paths = {getattr(r, "path", "") for r in build_app(engine, settings, telegram_polling=True).routes}
    assert "/telegram/webhook" not in paths and {"/healthz", "/metrics"} <= paths


@pytest.mark.parametrize("port", ["eighty", "70000", "-1"])
def test_a_bad_port_names_csbot_port(port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSBOT_PORT", port)
    with pytest.raises(ConfigError, match="CSBOT_PORT"):
        load_settings()


def test_csbot_serve_with_a_bad_port_exits_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("CSBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'csbot.db'}")
    monkeypatch.setenv("CSBOT_PORT", "eighty")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "CSBOT_PORT" in result.output
