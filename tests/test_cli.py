"""The `csbot` command line, run as a real process: demo, import, db upgrade, recompute, account, bad config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from lifecycle.intake.ingest import ingest_body
from lifecycle.store.db import alembic_config, ensure_schema, make_engine

USERS = """email,name,role,slack_user_id,telegram_user_id,timezone,manager_email
maya@example.com,Maya Chen,manager,UMAYA,,Europe/Berlin,
sam@example.com,Sam Ortiz,csm,USAM,,America/New_York,maya@example.com
"""

ACCOUNTS_GOOD = """external_id,name,owner_email,segment,plan,arr,currency,seats,contract_start,renewal_date,status
A-1,Acme Corp,sam@example.com,mid-market,Pro,48000,USD,40,2025-02-01,2027-02-01,active
A-2,北京星辰科技,sam@example.com,smb,Starter,9000,CNY,10,2025-06-15,2026-12-15,active
"""

ACCOUNTS_BAD = """external_id,name,owner_email,segment,plan,arr,currency,seats,contract_start,renewal_date,status
A-3,Good Row Ltd,sam@example.com,smb,Pro,1000,USD,5,2025-01-01,2027-01-01,active
A-4,Bad Money Inc,sam@example.com,smb,Pro,12k,USD,5,2025-01-01,2027-01-01,active
A-5,Bad Date Co,nobody@example.com,smb,Pro,1000,USD,5,2025-13-01,2027-01-01,sleeping
"""


def csbot(
    *args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("CSBOT_DATABASE_URL", None)
    if env and "CSBOT_DATABASE_URL" in env:
        full_env["CSBOT_DATABASE_URL"] = env["CSBOT_DATABASE_URL"]
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def count(db: Path, table: str) -> int:
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        value = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(value)


def test_demo_seeds_then_answers_piped_commands(tmp_path: Path) -> None:
    run = csbot("demo", cwd=tmp_path, stdin="account Northwind Traders\nat-risk\nrenewals 90\nalerts\nquit\n")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    # a living demo: tonight's rules ran, and the console says who you are and whom to chat as instead
    assert re.search(r"Ran tonight's rules as of \d{4}-\d{2}-\d{2}: [1-9]\d* alert\(s\) raised", run.stderr)
    assert "You are Alex Morgan (alex.morgan@csbot-demo.example), admin." in run.stderr
    assert "csbot chat --as " in run.stderr.replace("\n", " ")
    assert re.search(r"All open alerts: [1-9]", out)
    assert "csbot> account Northwind Traders" in out
    assert "━━ Northwind Traders  (ACC-00006) ━━" in out
    for label in ("Owner", "ARR", "Stage", "Health", "Renewal", "Why this health"):
        assert label in out
    assert "At-risk accounts (all)" in out
    assert "Renewals in the next 90 days (all)" in out
    assert "Seeded the demo portfolio" in run.stderr and "Recomputed 60 accounts" in run.stderr
    assert (tmp_path / "csbot.db").exists()

    again = csbot("demo", cwd=tmp_path, stdin="account northwind\n")
    assert again.returncode == 0
    assert "already holds 60 accounts" in again.stderr
    assert "Northwind Traders" in again.stdout


def test_users_lists_people_and_the_console_shows_what_waits(tmp_path: Path) -> None:
    assert csbot("demo", "--no-chat", cwd=tmp_path).returncode == 0
    run = csbot("users", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if "priya.raman@csbot-demo.example" in line)
    assert "csm" in row and "Maya Chen" in row and "U0DEMO05" in row and "700000005" in row
    assert "maya.chen@csbot-demo.example" in run.stdout and "manager" in run.stdout
    # the console shows what tonight's run wrote to the person that no chat platform has carried
    chat = csbot("chat", "--as", "priya.raman@csbot-demo.example", cwd=tmp_path, stdin="quit\n")
    assert re.search(r"📬 \d+ message\(s\) for you are waiting, not sent", chat.stderr.replace("\n", " "))


def test_unknown_account_gets_suggestions_and_exit_1(tmp_path: Path) -> None:
    assert csbot("demo", "--no-chat", cwd=tmp_path).returncode == 0
    run = csbot("account", "Northwnd", "Tradrs", cwd=tmp_path)
    assert run.returncode == 1
    assert "Did you mean: Northwind Traders" in run.stdout


def test_import_good_then_idempotent(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text(USERS, encoding="utf-8")
    (tmp_path / "accounts.csv").write_text("\ufeff" + ACCOUNTS_GOOD, encoding="utf-8")
    assert csbot("import", "users", "users.csv", cwd=tmp_path).returncode == 0
    first = csbot("import", "accounts", "accounts.csv", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 inserted, 0 updated, 0 unchanged" in first.stdout
    second = csbot("import", "accounts", "accounts.csv", cwd=tmp_path)
    assert "0 inserted, 0 updated, 2 unchanged" in second.stdout
    assert count(tmp_path / "csbot.db", "account") == 2


def test_bad_csv_exits_nonzero_lists_rows_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text(USERS, encoding="utf-8")
    (tmp_path / "bad.csv").write_text(ACCOUNTS_BAD, encoding="utf-8")
    assert csbot("import", "users", "users.csv", cwd=tmp_path).returncode == 0
    run = csbot("import", "accounts", "bad.csv", cwd=tmp_path)
    assert run.returncode == 1
    err = " ".join(run.stderr.split())
    assert "nothing was written" in err
    assert "row 3, column arr" in err
    assert "row 4, column contract_start" in err
    assert "row 4, column status" in err
    assert count(tmp_path / "csbot.db", "account") == 0  # the good row 2 was not written either

    dry = csbot("import", "accounts", "bad.csv", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 1


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text(USERS, encoding="utf-8")
    run = csbot("import", "users", "users.csv", "--dry-run", cwd=tmp_path)
    assert run.returncode == 0 and "would import 2 rows" in run.stdout
    assert count(tmp_path / "csbot.db", "user") == 0


def test_db_upgrade_and_recompute_on_empty_database(tmp_path: Path, new_db_url: Callable[..., str]) -> None:
    url = new_db_url("other", migrated=False)
    up = csbot("db", "upgrade", cwd=tmp_path, env={"CSBOT_DATABASE_URL": url})
    assert up.returncode == 0 and "revision head" in up.stdout
    engine = make_engine(url)
    with engine.connect() as conn:
        stored = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    assert stored == set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    engine.dispose()
    rec = csbot("recompute", cwd=tmp_path, env={"CSBOT_DATABASE_URL": url})
    assert rec.returncode == 0 and "Recomputed 0 accounts" in rec.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CSBOT_TIMEZONE", "Mars/Olympus"), ("CSBOT_DATABASE_URL", "mysql://x"), ("CSBOT_PORT", "eighty")],
)
def test_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    run = csbot("recompute", cwd=tmp_path, env={variable: value})
    assert run.returncode == 2
    assert variable in run.stderr
    assert "Traceback" not in run.stderr


NPS_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nps-responses.csv"


def test_import_nps_history_prints_skipped_rows_and_the_nps(tmp_path: Path) -> None:
    if not NPS_DATASET.is_file():
        pytest.skip(f"{NPS_DATASET} is not here")
    (tmp_path / "hist.csv").write_text("external_id,name\nHIST,Historical surveys\n", encoding="utf-8")
    assert csbot("import", "accounts", "hist.csv", cwd=tmp_path).returncode == 0
    run = csbot(
        "import", "nps", str(NPS_DATASET), "--account", "HIST", "--map", "NPS_SCORE=score",
        "--map", "CUSTOMER_RESPONSE_DATE=responded_at", "--map", "text=comment", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stdout.split())
    assert "nps: imported 2,385 rows — 2,353 inserted, 0 updated, 0 unchanged; 32 skipped." in out
    assert "Skipped, no score (unanswered surveys): rows 232, 263, 357," in out
    assert "NPS −24.7 over 2,353 responses: 690 promoters, 392 passives, 1,271 detractors." in out
    assert "unknown column 'Qtr' ignored" in run.stderr
    assert count(tmp_path / "csbot.db", "nps_response") == 2353


def test_import_with_a_preset_and_a_map_and_the_missing_column_hint(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text(USERS, encoding="utf-8")
    assert csbot("import", "users", "users.csv", cwd=tmp_path).returncode == 0
    (tmp_path / "hubspot.csv").write_text(
        "Record ID,Company name,Company owner,Annual Revenue,Seats Bought\n"
        "901,Acme Corp,Sam Ortiz,48000,40\n902,Globex,maya@example.com,,\n",
        encoding="utf-8",
    )
    run = csbot("import", "accounts", "hubspot.csv", "--preset", "hubspot", "--map", "Seats Bought=seats",
                cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "2 inserted" in run.stdout
    engine = make_engine(f"sqlite:///{tmp_path / 'csbot.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT a.external_id, u.email, a.arr, a.seats FROM account a JOIN user u ON u.id = a.owner_id "
            "ORDER BY a.external_id"
        )).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("901", "sam@example.com", 48000.0, 40), ("902", "maya@example.com", 0.0, 0)]

    missing = csbot("import", "accounts", "hubspot.csv", "--map", "Company name=name", cwd=tmp_path)
    assert missing.returncode == 1
    err = " ".join(missing.stderr.split())
    assert "missing required column: external_id" in err
    assert "--map 'Their Column=external_id'" in err
    bad = csbot("import", "accounts", "hubspot.csv", "--map", "Record ID", cwd=tmp_path)
    assert bad.returncode == 2 and "Their Column=our_column" in bad.stderr


def test_ingest_status_lists_stale_accounts_and_sources(tmp_path: Path) -> None:
    (tmp_path / "accounts.csv").write_text(
        "external_id,name,status\nA-1,Fresh Co,active\nA-2,Quiet Ltd,active\nA-3,Gone Inc,churned\n", encoding="utf-8"
    )
    assert csbot("import", "accounts", "accounts.csv", cwd=tmp_path).returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'csbot.db'}")
    ensure_schema(engine)
    now = datetime.now(UTC).replace(tzinfo=None)
    event = {"type": "track", "userId": "u1", "event": "Viewed", "groupId": "A-1", "messageId": "m1",
             "timestamp": (now - timedelta(hours=1)).isoformat() + "Z", "context": {"library": {"name": "segment"}}}
    ingest_body(engine, json.dumps(event))
    engine.dispose()
    run = csbot("ingest", "status", "--days", "2", cwd=tmp_path, env={"CSBOT_TIMEZONE": "UTC"})
    assert run.returncode == 0, run.stderr
    assert "No usage for 2+ days" in run.stdout
    assert "Quiet Ltd" in run.stdout and "never" in run.stdout
    assert "Fresh Co" not in run.stdout and "Gone Inc" not in run.stdout  # fresh, and churned
    assert "segment" in run.stdout and "Ingest by source" in run.stdout
