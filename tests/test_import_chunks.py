"""Usage files read in chunks: the same rows, problems and row numbers as one read, nothing written on a bad
file whichever chunk the bad row is in, and a progress bar that stays out of piped output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from lifecycle.intake.importers import import_csv
from lifecycle.store.errors import ImportFailed
from lifecycle.store.models import Account, UsageDaily

ROOT = Path(__file__).resolve().parent.parent
HEADER = "account_external_id,date,feature,active_users,logins,events\n"


def usage_lines(accounts: int, days: int) -> list[str]:
    return [
        f"A{a},2026-01-{d:02d},{'' if (a + d) % 3 else 'reports'},{a % 7},{d},{a * d}\n"
        for a in range(1, accounts + 1) for d in range(1, days + 1)
    ]


def write(tmp_path: Path, name: str, lines: list[str], header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + "".join(lines), encoding="utf-8")
    return path


def stored(session: Session) -> list[tuple[str, str, date, int, int, int]]:
    rows = session.execute(
        sa_select(col(Account.external_id), col(UsageDaily.feature), col(UsageDaily.day), col(UsageDaily.active_users),
                  col(UsageDaily.logins), col(UsageDaily.events))
        .join(Account, col(Account.id) == col(UsageDaily.account_id))
    ).all()
    return sorted(tuple(r) for r in rows)


def usage_count(session: Session) -> int:
    return int(session.execute(sa_select(func.count()).select_from(UsageDaily)).scalar_one())


def failure(session: Session, path: Path, chunk_rows: int) -> list[str]:
    with pytest.raises(ImportFailed) as failed:
        import_csv(session, "usage", path, chunk_rows=chunk_rows)
    session.rollback()
    return failed.value.problems


@pytest.fixture
def accounts(session: Session) -> Session:
    for a in range(1, 6):
        session.add(Account(external_id=f"A{a}", name=f"Account {a}", name_key=f"account {a}"))
    session.commit()
    return session


def test_a_file_of_many_chunks_stores_what_one_read_stores(accounts: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", usage_lines(5, 20))  # 100 rows, 15 chunks of 7
    report = import_csv(accounts, "usage", path, chunk_rows=7)
    accounts.commit()
    assert (report.rows, report.inserted, report.updated, report.unchanged) == (100, 100, 0, 0)
    chunked = stored(accounts)
    assert len(chunked) == 100
    assert (("A2", "", date(2026, 1, 3), 2, 3, 6)) in chunked
    assert account_last_usage(accounts) == {f"A{a}": date(2026, 1, 20) for a in range(1, 6)}
    # Read again in one chunk: nothing changes.
    again = import_csv(accounts, "usage", path, chunk_rows=1_000)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 100)
    assert stored(accounts) == chunked


def account_last_usage(session: Session) -> dict[str, date | None]:
    return {a.external_id: a.last_usage_date for a in session.exec(select(Account)).all()}


def test_a_bad_row_in_the_last_chunk_writes_nothing(accounts: Session, tmp_path: Path) -> None:
    lines = usage_lines(5, 20)
    lines[-1] = "A5,2026-01-20,,3,lots,1\n"
    path = write(tmp_path, "u.csv", lines)
    problems = failure(accounts, path, chunk_rows=7)
    assert problems == ["row 101, column logins: not a whole number ('lots')"]
    assert usage_count(accounts) == 0
    assert account_last_usage(accounts) == {f"A{a}": None for a in range(1, 6)}
    # The same messages as when the whole file is read at once.
    assert failure(accounts, path, chunk_rows=1_000) == problems


def test_problems_across_chunks_keep_their_row_numbers(accounts: Session, tmp_path: Path) -> None:
    lines = usage_lines(2, 10)  # rows 2..21
    lines.insert(3, "\n")  # a blank line: row 5, skipped, later rows keep their spreadsheet numbers
    lines.append("A1,2026-01-01,,0,0,0\n")  # duplicate of row 2 (A1, 2026-01-01, total), in another chunk
    lines.append("NOPE,2026-01-01,,0,0,0\n")
    lines.append("A2,2026-02-30,,0,0,0\n")
    path = write(tmp_path, "u.csv", lines)
    expected = [
        "row 23, column date: duplicate of row 2 (same account_external_id, feature and date)",
        "row 24, column account_external_id: no account with external_id 'NOPE'",
        "row 25, column date: not a date (expected YYYY-MM-DD, got '2026-02-30')",
    ]
    assert failure(accounts, path, chunk_rows=4) == expected
    assert failure(accounts, path, chunk_rows=1_000) == expected
    assert usage_count(accounts) == 0


def test_the_date_order_is_read_from_the_whole_file(accounts: Session, tmp_path: Path) -> None:
    # Only the last row tells day-first (13/01) from month-first; the first chunks are ambiguous alone.
    lines = [f"A1,{d:02d}/01/2026,,1,1,1\n" for d in range(1, 14)]
    path = write(tmp_path, "u.csv", lines)
    report = import_csv(accounts, "usage", path, chunk_rows=3)
    accounts.commit()
    assert report.inserted == 13
    days = sorted(d for _, _, d, *_ in stored(accounts))
    assert days == [date(2026, 1, d) for d in range(1, 14)]


def test_progress_moves_while_chunks_are_read_and_ends_at_the_total(accounts: Session, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    path = write(tmp_path, "u.csv", usage_lines(5, 20))
    import_csv(accounts, "usage", path, chunk_rows=10, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (200, 200)
    assert all(t == 200 for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert len([d for d in done if d <= 100]) >= 10  # one step per chunk read


def test_piped_output_has_no_progress_bar(tmp_path: Path) -> None:
    db = tmp_path / "csbot.db"
    env = {**os.environ, "CSBOT_DATABASE_URL": f"sqlite:///{db}", "COLUMNS": "120",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "accounts.csv").write_text(
        "external_id,name\n" + "".join(f"A{a},Account {a}\n" for a in range(1, 6)), encoding="utf-8"
    )
    write(tmp_path, "usage.csv", usage_lines(5, 20))

    def csbot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    assert csbot("import", "accounts", "accounts.csv").returncode == 0
    run = csbot("import", "usage", "usage.csv", "--chunk-rows", "9")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "usage: imported 100 rows — 100 inserted, 0 updated, 0 unchanged.\n"
    assert run.stderr == ""
    assert not re.search(r"\x1b\[|━|importing", run.stdout + run.stderr)
    lines = usage_lines(5, 20)
    lines[-1] = "A5,2026-01-20,,3,lots,1\n"
    write(tmp_path, "bad.csv", lines)
    bad = csbot("import", "usage", "bad.csv", "--chunk-rows", "9")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert "  row 101, column logins: not a whole number ('lots')\n" in bad.stderr
    assert not re.search(r"\x1b\[|━", bad.stderr)
