"""Nothing waits silently: on a portfolio imported from CSV, with only one chat platform configured, every
message goes to a configured platform the person can be reached on, or is recorded undeliverable with the reason,
shown by `csbot deliveries` and in the owner's digest, and requeued once the platform is set up; an undeliverable
survey does not count against the survey cap; a row already waiting for a platform that is not configured is
routed again by the `deliver` job."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from rich.console import Console
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from adapters.cli import deliveries
from adapters.cli.app import app as cli_app
from adapters.ports import open_ports
from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from bot.push.jobs import run_job
from bot.push.notifier import payload_to_reply, reply_to_payload
from bot.push.routing import why_text
from lifecycle import surveys as core
from lifecycle.intake.importers import import_csv
from lifecycle.store import outbox
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, Alert, Delivery, NpsSurvey, User
from lifecycle.store.settings import Settings, get_settings, load_settings
from tests.fakes.slack_api import FakeSlackAPI

TODAY = date(2026, 6, 1)
NIGHTLY_AT = datetime(2026, 6, 1, 2, 0)  # 11:00 in Tokyo: past the owners' 09:00 digest time
TELEGRAM_TOKEN = "4242:telegram-only"
SLACK_TOKEN = "xoxb-undelivered-test"

USERS = """email,name,role,slack_user_id,telegram_user_id,timezone,manager_email
maya@example.com,Maya Chen,manager,UMAYA,,Asia/Tokyo,
sam@example.com,Sam Ortiz,csm,USAM,4242,Asia/Tokyo,maya@example.com
priya@example.com,Priya Raman,csm,UPRIYA,,Asia/Tokyo,maya@example.com
"""
# Acme renews in 80 days (the 90-day renewal prompt, and the pre-renewal survey), Globex in 44 (the 60-day prompt).
ACCOUNTS = """external_id,name,owner_email,segment,plan,arr,currency,seats,contract_start,renewal_date,status
A-1,Acme Corp,sam@example.com,mid-market,Pro,48000,USD,40,2025-08-20,2026-08-20,active
A-2,Globex,priya@example.com,smb,Starter,9000,USD,10,2025-07-15,2026-07-15,active
"""
CONTACTS = """account_external_id,name,email,slack_user_id,telegram_user_id,slack_channel_id,telegram_chat_id
A-1,Ann Customer,ann@acme.test,UANN,,CACME,
A-1,Ben Buyer,ben@acme.test,,5151,,
"""
# One survey a day, and no quiet hours, so every expectation can be checked on paper.
SURVEYS_TOML = """[delivery]
daily_cap = 1
quiet_start = "00:00"
quiet_end = "00:00"
"""
PRIYA_WHY = "Slack is not configured (SLACK_BOT_TOKEN) and Priya Raman has no Telegram id"
NO_TEAM = "no team channel is set ([routing] team_slack_channel, team_telegram_chat, team_feishu_chat)"
ANN_WHY = "Slack is not configured (SLACK_BOT_TOKEN) and Ann Customer has no Telegram id"


@pytest.fixture
def portfolio(engine: Engine, tmp_path: Path) -> dict[str, int]:
    """Three people, two accounts and two contacts imported from CSV files."""
    with session_scope(engine) as session:
        for kind, text in (("users", USERS), ("accounts", ACCOUNTS), ("contacts", CONTACTS)):
            path = tmp_path / f"{kind}.csv"
            path.write_text(text, encoding="utf-8")
            import_csv(session, kind, path)
    with Session(engine) as s:
        ids = {u.name.split()[0].lower(): int(u.id or 0) for u in s.exec(select(User)).all()}
        ids |= {a.external_id: int(a.id or 0) for a in s.exec(select(Account)).all()}
    return ids


def _settings(db_url: str, tmp_path: Path, **tokens: Any) -> Settings:
    surveys = tmp_path / "surveys.toml"
    surveys.write_text(SURVEYS_TOML, encoding="utf-8")
    return load_settings(database_url=db_url, surveys_file=surveys, **tokens)


def _rows(engine: Engine, *where: Any) -> list[Delivery]:
    with Session(engine) as s:
        return list(s.exec(select(Delivery).where(*where).order_by(col(Delivery.id))).all())


def _csbot(monkeypatch: pytest.MonkeyPatch, db_url: str, tmp_path: Path, *args: str, **env: str) -> Result:
    """`csbot <args>` on this database and survey file, with the given variables, printing wide tables."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in {"CSBOT_DATABASE_URL": db_url, "CSBOT_SURVEYS_FILE": str(tmp_path / "surveys.toml"),
                        **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(deliveries, "console", Console(width=320))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli_app, list(args))
    finally:
        get_settings.cache_clear()


def test_only_telegram_configured_routes_there_or_keeps_it_undeliverable_with_why_until_requeued(
    engine: Engine, db_url: str, tmp_path: Path, portfolio: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(db_url, tmp_path, telegram_bot_token=TELEGRAM_TOKEN)
    result = run_job("nightly", engine, settings, now=NIGHTLY_AT)
    assert result.status == "ok", result.describe()
    assert result.step("renewal_prompts").counts["prompts"] == 2

    # Alerts (the renewal prompts among them): Sam has a Slack id too, but only Telegram is configured.
    with Session(engine) as s:
        alerts = s.exec(select(Delivery, Alert).join(Alert, col(Alert.id) == col(Delivery.alert_id))
                        .where(Delivery.kind == "alert")).all()
    by_owner: dict[int | None, list[Delivery]] = {}
    for delivery, alert in alerts:
        by_owner.setdefault(alert.owner_id, []).append(delivery)
    assert {(d.platform, d.target, d.status) for d in by_owner[portfolio["sam"]]} == {("telegram", "4242", "pending")}
    # Priya can only be reached on Slack, and there is no team channel to fall back on: recorded undeliverable,
    # with why, where it would have gone.
    assert {(d.platform, d.target, d.status, d.last_error) for d in by_owner[portfolio["priya"]]} == {
        ("slack", "UPRIYA", "undeliverable", f"{PRIYA_WHY}; {NO_TEAM}")}

    # Surveys: Ben is asked on Telegram; Ann (Slack only) gets an undeliverable survey that does not use the cap.
    with Session(engine) as s:
        surveys = {sv.contact_id: sv for sv in s.exec(select(NpsSurvey)).all()}
        assert core.surveys_today(s, NIGHTLY_AT) == 1  # the cap is 1, and Ben's survey is the one it counts
    [ann_row] = _rows(engine, col(Delivery.kind) == "survey", col(Delivery.status) == "undeliverable")
    [ben_row] = _rows(engine, col(Delivery.kind) == "survey", col(Delivery.status) == "pending")
    assert (ben_row.platform, ben_row.target) == ("telegram", "5151")
    assert (ann_row.platform, ann_row.target, ann_row.last_error) == ("slack", "CACME", ANN_WHY)
    ann = surveys[int(ann_row.payload["to"]["contact"])]
    assert ann.status == "undeliverable" and surveys[int(ben_row.payload["to"]["contact"])].status == "pending"
    assert result.step("surveys").counts["sent"] == 1 and result.step("surveys").counts["undeliverable"] == 1

    # Sam's digest (on Telegram) lists, once, what could not be delivered about his accounts, and why.
    [sam_digest] = _rows(engine, col(Delivery.kind) == "digest", col(Delivery.target) == "4242")
    sections = {sec.title: sec.lines for sec in payload_to_reply(sam_digest.payload).cards[0].sections}
    assert sections["Not delivered (1)"][0] == f"NPS survey to Ann Customer · Acme Corp: {ANN_WHY}"
    assert "csbot deliveries --retry" in sections["Not delivered (1)"][-1]
    # Priya's own digest cannot reach her either: it is kept, not skipped.
    [priya_digest] = _rows(engine, col(Delivery.kind) == "digest", col(Delivery.target) == "UPRIYA")
    assert (priya_digest.status, priya_digest.last_error) == ("undeliverable", PRIYA_WHY)
    # …and the reasons read in Chinese too.
    assert why_text(ann_row.payload["why"], "zh") == (
        "Slack 未配置（SLACK_BOT_TOKEN），且 Ann Customer 没有 Telegram 账号")

    # The same night again: no second survey for Ann, nothing new enqueued.
    again = run_job("nightly", engine, settings, now=NIGHTLY_AT.replace(minute=30))
    assert again.count("deliveries_enqueued") == 0, again.describe()

    # `survey` by hand says why Ann is not asked (and asks no one twice).
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
    reply = router.handle(Incoming(platform="telegram", sender_id="4242", text="survey A-1 Ann Customer"))
    assert reply.text == (f"Ann Customer: not sent, {ANN_WHY}. It is kept as undeliverable (`csbot deliveries`) "
                          "and does not count against the survey cap.")

    # `csbot deliveries` shows each with its reason and counts them.
    stuck = _rows(engine, col(Delivery.status) == "undeliverable")
    listed = _csbot(monkeypatch, db_url, tmp_path, "deliveries", TELEGRAM_BOT_TOKEN=TELEGRAM_TOKEN)
    assert listed.exit_code == 0, listed.output
    assert listed.output.count(PRIYA_WHY) == len(stuck) - 1 and listed.output.count(ANN_WHY) == 1
    assert f"Outbox: {len(_rows(engine, col(Delivery.status) == 'pending'))} pending, {len(stuck)} undeliverable." \
        in listed.output
    assert "then `csbot deliveries --retry` routes them again" in listed.output

    # Slack gets configured: --retry routes every one of them again, and Ann's survey goes to her channel.
    retried = _csbot(monkeypatch, db_url, tmp_path, "deliveries", "--retry", "--status", "undeliverable",
                     TELEGRAM_BOT_TOKEN=TELEGRAM_TOKEN, SLACK_BOT_TOKEN=SLACK_TOKEN)
    assert retried.exit_code == 0, retried.output
    assert (f"Routed {len(stuck)} undeliverable deliveries again: {len(stuck)} go out on the next run, "
            "0 still cannot be delivered.") in retried.output
    assert _rows(engine, col(Delivery.status) == "undeliverable") == []
    [ann_row] = _rows(engine, col(Delivery.id) == ann_row.id)
    assert (ann_row.status, ann_row.platform, ann_row.target, ann_row.last_error) == ("pending", "slack", "CACME",
                                                                                        None)
    with Session(engine) as s:
        revived = s.get(NpsSurvey, ann.id)
        assert revived is not None and (revived.status, revived.platform, revived.channel_id) == (
            "pending", "slack", "CACME")
        # The question carries a token signed with the key of the new configuration, so Ann's tap is accepted.
        both = _settings(db_url, tmp_path, telegram_bot_token=TELEGRAM_TOKEN, slack_bot_token=SLACK_TOKEN)
        token = payload_to_reply(ann_row.payload).cards[0].buttons[0].value.rpartition(":")[0]
        assert core.verify_token(s, core.survey_secret(both), token).id == ann.id


def test_deliver_routes_rows_waiting_for_a_platform_that_is_not_configured(
    engine: Engine, db_url: str, tmp_path: Path, portfolio: dict[str, int], fake_slack: FakeSlackAPI
) -> None:
    with session_scope(engine) as s:
        # Written for Telegram before it was switched off: one to Sam (who has a Slack id too), one to a Telegram
        # chat nobody in csbot is known by.
        to_sam = outbox.enqueue(s, platform="telegram", target="4242", payload=reply_to_payload(Reply(text="hi")))
        lost = outbox.enqueue(s, platform="telegram", target="999", payload=reply_to_payload(Reply(text="?")))
        ids = (to_sam.id, lost.id)
    settings = _settings(db_url, tmp_path, slack_bot_token=SLACK_TOKEN, slack_api_url=fake_slack.api_url)
    result = run_job("deliver", engine, settings, ports=open_ports)
    assert result.status == "ok", result.describe()
    assert result.step("deliver").counts == {"rerouted": 1, "undeliverable": 1, "sent": 1, "retried": 0,
                                             "failed": 0, "reconciled": 0}
    sam, nobody = (_rows(engine, col(Delivery.id) == i)[0] for i in ids)
    assert (sam.status, sam.platform, sam.target) == ("sent", "slack", "USAM")
    [post] = fake_slack.calls_to("chat.postMessage", ok_only=True)
    assert post.params["channel"] == "DUSAM" and post.params["text"] == "hi"
    assert (nobody.status, nobody.platform, nobody.target) == ("undeliverable", "telegram", "999")
    assert nobody.last_error == "Telegram is not configured (TELEGRAM_BOT_TOKEN)"
