"""The `csbot` command line, run as a real process: demo, import, db upgrade, recompute, account, bad config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from lifecycle.db import make_engine

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
    run = csbot("demo", cwd=tmp_path, stdin="account Northwind Traders\nat-risk\nrenewals 90\nquit\n")
    assert run.returncode == 0, run.stderr
    out = run.stdout
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


def test_db_upgrade_and_recompute_on_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    up = csbot("db", "upgrade", cwd=tmp_path, env={"CSBOT_DATABASE_URL": url})
    assert up.returncode == 0 and "revision head" in up.stdout
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
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
