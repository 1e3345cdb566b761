"""Secrets never reach the logs or the chat: a whole `csbot serve` run captured at DEBUG, failures included.

The run is the ASGI app of `csbot serve` under uvicorn with the scheduler and the outbox worker, Slack in HTTP
mode and the Telegram webhook against the fake platform APIs, and the log redaction `csbot` installs when it reads
its settings (`adapters.logsafe.install_redaction(settings.secrets())`). Through it go: signed and forged Slack
requests, Telegram webhooks with and without the secret, usage ingest with a right and a wrong token, a command
whose handler fails with the bot token in its exception (a logged traceback), and deliveries that fail with 500s.
No configured secret may appear in any captured record — message, arguments or traceback — nor in anything sent
to a chat; and the redaction demonstrably had work to do (httpx logs every Bot API URL, which holds the token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import date
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

import bot.commands  # noqa: F401  (registers every command)
from adapters.logsafe import REDACTED, install_redaction, redactor
from adapters.server import build_app
from bot.core.messages import Reply
from bot.core.router import Context, registry
from bot.push.notifier import reply_to_payload
from lifecycle.store import outbox
from lifecycle.store.models import Account, User
from lifecycle.store.settings import Settings, load_settings
from tests.fakes.chat_requests import FORM, post_slack, post_telegram, slash_command
from tests.fakes.serving import served_on_loop
from tests.fakes.slack_api import RESPONSE_URL, FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, message_update
from tests.security_counts import SecurityCount

TODAY = date(2025, 3, 14)
SECRETS = {
    "slack_bot_token": "xoxb-1111-2222-SECRETslackbot",
    "slack_signing_secret": "SECRETsigning0123456789abcdef",
    "telegram_webhook_secret": "SECRETwebhook-42",
    "survey_secret": "SECRETsurvey-0123456789",
    "ingest_token": "SECRETingest-token-77",
}
TELEGRAM_TOKEN = TOKEN  # the fake Bot API only answers its own token: "123456:TEST-token"


def _settings(db_url: str, slack: FakeSlackAPI, telegram: FakeTelegramAPI) -> Settings:
    return load_settings(database_url=db_url, slack_api_url=slack.api_url, telegram_bot_token=TELEGRAM_TOKEN,
                         telegram_api_url=telegram.api_url, **SECRETS)


@pytest.fixture
def people(engine: Engine) -> None:
    with Session(engine) as s:
        mia = User(email="mia@example.com", name="Mia Manager", role="manager", slack_user_id="UMIA",
                   telegram_user_id="1001")
        s.add(mia)
        s.flush()
        s.add(Account(external_id="ACC-1", name="Acme Corp", name_key="acme corp", owner_id=mia.id, arr=10_000))
        for platform, target in (("telegram", "1001"), ("slack", "C1")):
            outbox.enqueue(s, platform=platform, target=target, payload=reply_to_payload(Reply(text="heads up")))
        s.commit()


def _every_logged_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) + "\n" + repr(r.args) + "\n" + (r.exc_text or "") for r in records)


async def test_a_whole_serve_run_with_failures_logs_no_secret(
    engine: Engine, db_url: str, people: None, fake_slack: FakeSlackAPI, fake_telegram: FakeTelegramAPI,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, security_count: SecurityCount,
) -> None:
    settings = _settings(db_url, fake_slack, fake_telegram)
    secrets = settings.secrets()
    assert sorted(secrets) == sorted([*SECRETS.values(), TELEGRAM_TOKEN])
    uninstall = install_redaction(secrets)  # what `csbot` does once it has its settings
    caplog.set_level(logging.DEBUG)

    def fails_quoting_the_token(ctx: Context, **_: object) -> Reply:
        raise RuntimeError(f"upstream refused bot{TELEGRAM_TOKEN} and {SECRETS['slack_bot_token']}")

    monkeypatch.setattr(registry.commands["portfolio"], "handler", fails_quoting_the_token)
    fake_slack.fail_next("chat.postMessage", 500, retry_after=None, times=5)
    fake_telegram.fail_next("sendMessage", 5, status=500)
    try:
        asgi = build_app(engine, settings, scheduler=True)
        async with (
            served_on_loop(asgi, log_level="debug") as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            for text, rid, secret in (("account Acme Corp", "ok", SECRETS["slack_signing_secret"]),
                                      ("portfolio", "boom", SECRETS["slack_signing_secret"]),
                                      ("account Acme Corp", "forged", "not-the-secret")):
                body = slash_command(text, user="UMIA", channel="CTEAM", response_url=fake_slack.response_url(rid),
                                     trigger_id=rid)
                await post_slack(http, body, FORM, secret=secret)
            updates: list[tuple[str | None, str]] = [
                (SECRETS["telegram_webhook_secret"], "/portfolio"),
                (SECRETS["telegram_webhook_secret"], "/account Acme Corp"),
                ("wrong", "/account Acme Corp"), (None, "/help"),
            ]
            for n, (header, command) in enumerate(updates, start=1):
                await post_telegram(http, message_update(n, command), secret=header)
            for token in (SECRETS["ingest_token"], "wrong-token"):
                await http.post("/api/usage", headers={"Authorization": f"Bearer {token}"},
                                json={"type": "track", "event": "Logged In", "userId": "u1",
                                      "context": {"groupId": "ACC-1"}, "messageId": f"m-{token}"})
            await asyncio.to_thread(fake_slack.wait_for, RESPONSE_URL, 2)
            # The outbox worker (every 2 s) tries the queued deliveries; both platforms answer 500 (Telegram also
            # to the webhook's replies), and the failures are logged, tracebacks included.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (
                fake_slack.calls_to("chat.postMessage") and len(fake_telegram.attempts_to("sendMessage")) >= 3
            ):
                await asyncio.sleep(0.1)
    finally:
        uninstall()

    logged = _every_logged_text(caplog.records)
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.exc_text and "RuntimeError: upstream refused" in r.exc_text for r in caplog.records)
    assert any("failed" in r.getMessage() and "delivery" in r.getMessage() for r in failures)
    assert REDACTED in logged  # there was something to redact (the token in httpx's Bot API URLs, the traceback)
    for secret in secrets:
        for form in (secret, quote(secret, safe="")):
            assert form not in logged, f"a secret reached the logs: {form[:6]}…"
    sent_to_chat = json.dumps([c.params for c in fake_slack.calls] + [c.params for c in fake_telegram.calls])
    assert "error id" in sent_to_chat  # the failing command was answered, with an error id …
    for secret in secrets:
        assert secret not in sent_to_chat  # … and nothing else
    security_count("log records checked for secrets (0 found)", len(caplog.records))


def test_settings_know_their_secrets_and_never_show_them() -> None:
    settings = load_settings(
        database_url="postgresql+psycopg://csbot:SECRETdbpass@db.internal:5432/csbot",
        slack_app_token="xapp-1-SECRETapp", **SECRETS, telegram_bot_token=TELEGRAM_TOKEN,
    )
    secrets = settings.secrets()
    assert "SECRETdbpass" in secrets and "xapp-1-SECRETapp" in secrets and TELEGRAM_TOKEN in secrets
    shown = repr(settings) + str(settings)
    for secret in secrets:
        assert secret not in shown
    redact = redactor(secrets)
    line = ("POST https://api.telegram.org/bot123456:TEST-token/sendMessage with xoxb-1111-2222-SECRETslackbot "
            "to postgresql+psycopg://csbot:SECRETdbpass@db.internal/csbot, token=" + quote(TELEGRAM_TOKEN, safe=""))
    assert redact(line) == (f"POST https://api.telegram.org/bot{REDACTED}/sendMessage with {REDACTED} to "
                            f"postgresql+psycopg://csbot:{REDACTED}@db.internal/csbot, token={REDACTED}")
    assert redactor(["abc"])("abc abc") == "abc abc"  # too short to be a secret: left alone


def test_redaction_covers_arguments_and_tracebacks_from_any_logger(caplog: pytest.LogCaptureFixture) -> None:
    uninstall = install_redaction([SECRETS["ingest_token"]])
    caplog.set_level(logging.DEBUG)
    try:
        logging.getLogger("some.library").info("auth header %s", f"Bearer {SECRETS['ingest_token']}")
        try:
            raise ValueError(f"bad token {SECRETS['ingest_token']}")
        except ValueError:
            logging.getLogger("csbot.anything").exception("request failed")
    finally:
        uninstall()
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert SECRETS["ingest_token"] not in text
    assert f"auth header Bearer {REDACTED}" in caplog.text and f"ValueError: bad token {REDACTED}" in caplog.text
    logging.getLogger("some.library").info("after %s", SECRETS["ingest_token"])  # uninstalled: back to normal
    assert caplog.records[-1].getMessage() == f"after {SECRETS['ingest_token']}"
