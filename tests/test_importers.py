"""CSV import: good files for every kind, row problems, all-or-nothing, idempotent re-import, dry run."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, col, select

from lifecycle.intake.importers import KINDS, MAX_PROBLEMS, ImportReport, NpsCounts, import_csv
from lifecycle.reports.nps import nps_summary
from lifecycle.store.errors import ImportFailed
from lifecycle.store.models import (
    Account,
    Contact,
    NpsResponse,
    StageTransition,
    Ticket,
    UsageDaily,
    User,
)

USERS = """email,name,role,slack_user_id,telegram_user_id,timezone,manager_email
li.wei@example.com,李伟,CSM,U1,,Asia/Shanghai,boss@example.com
Boss@Example.com,Barbara Boss,manager,,42,,
ann@example.com,Ann,csm,,,,
"""

ACCOUNTS = (
    "name,external_id,owner_email,arr,seats,currency,segment,plan,contract_start,renewal_date,status,stage\n"
    """Acme Corp,A1,li.wei@example.com,12000.50,25,eur,SMB,pro,2025-03-01,2026-03-01,active,adoption
北京科技,A2,,,,,,,,,,
"""
)

TABLES: list[type[SQLModel]] = [User, Account, Contact, UsageDaily, Ticket, NpsResponse, StageTransition]


def write(tmp_path: Path, name: str, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def counts(session: Session) -> dict[str, int]:
    return {m.__name__: session.execute(sa_select(func.count()).select_from(m)).scalar_one() for m in TABLES}


def account(session: Session, external_id: str) -> Account:
    return session.exec(select(Account).where(Account.external_id == external_id)).one()


def user(session: Session, email: str) -> User:
    return session.exec(select(User).where(User.email == email)).one()


def stamps(session: Session) -> list[tuple[str, datetime]]:
    users = session.exec(select(User.email, User.updated_at)).all()
    accounts = session.exec(select(Account.external_id, Account.updated_at)).all()
    return sorted((str(k), v) for k, v in [*users, *accounts])


def naive(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def run(session: Session, tmp_path: Path, kind: str, text: str) -> ImportReport:
    report = import_csv(session, kind, write(tmp_path, f"{kind}.csv", text))
    session.commit()
    return report


@pytest.fixture
def seeded(session: Session, tmp_path: Path) -> Session:
    """Three users and two accounts, imported and committed."""
    run(session, tmp_path, "users", USERS)
    run(session, tmp_path, "accounts", ACCOUNTS)
    return session


def problems_of(session: Session, tmp_path: Path, kind: str, text: str) -> list[str]:
    before = counts(session)
    with pytest.raises(ImportFailed) as failed:
        import_csv(session, kind, write(tmp_path, f"bad_{kind}.csv", text))
    session.rollback()
    assert counts(session) == before
    return failed.value.problems


# --- good files ---


def test_users_import_with_bom_chinese_names_and_manager_in_same_file(
    session: Session, tmp_path: Path
) -> None:
    path = write(tmp_path, "users.csv", USERS, bom=True)
    report = import_csv(session, "users", path)
    session.commit()
    assert (report.rows, report.inserted, report.updated, report.unchanged) == (3, 3, 0, 0)
    assert report.warnings == []
    users = {u.email: u for u in session.exec(select(User)).all()}
    assert set(users) == {"li.wei@example.com", "boss@example.com", "ann@example.com"}
    li = users["li.wei@example.com"]
    assert (li.name, li.role, li.slack_user_id, li.telegram_user_id, li.timezone) == (
        "李伟", "csm", "U1", None, "Asia/Shanghai",
    )
    assert li.manager_id == users["boss@example.com"].id
    assert users["boss@example.com"].telegram_user_id == "42"
    assert users["boss@example.com"].timezone == "UTC"
    assert users["ann@example.com"].manager_id is None


def test_accounts_import_sets_owner_numbers_dates_and_stage(seeded: Session) -> None:
    acme = account(seeded, "A1")
    owner = user(seeded, "li.wei@example.com")
    assert acme.owner_id == owner.id
    assert (acme.arr, acme.seats, acme.currency) == (12000.5, 25, "EUR")
    assert (acme.segment, acme.plan) == ("SMB", "pro")
    assert (acme.contract_start, acme.renewal_date, acme.status, acme.stage) == (
        date(2025, 3, 1), date(2026, 3, 1), "active", "adoption",
    )
    assert acme.name_key == "acme corp"
    empty = account(seeded, "A2")
    assert (empty.name, empty.owner_id, empty.arr, empty.seats) == ("北京科技", None, 0.0, 0)
    assert empty.currency == "USD"
    assert (empty.status, empty.stage) == ("active", "onboarding")
    moves = seeded.exec(select(StageTransition).order_by(col(StageTransition.id))).all()
    assert [(m.account_id, m.from_stage, m.to_stage, m.source) for m in moves] == [
        (acme.id, None, "adoption", "import")
    ]


def test_account_stage_change_records_a_transition_and_unknown_stage_is_refused(
    seeded: Session, tmp_path: Path
) -> None:
    report = run(seeded, tmp_path, "accounts", "external_id,name,stage\nA1,Acme Corp,expansion\n")
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 0)
    moves = seeded.exec(select(StageTransition).order_by(col(StageTransition.id))).all()
    assert [(m.from_stage, m.to_stage) for m in moves] == [(None, "adoption"), ("adoption", "expansion")]
    # Columns absent from the file keep their stored values.
    acme = account(seeded, "A1")
    assert (acme.arr, acme.seats, acme.stage) == (12000.5, 25, "expansion")
    assert problems_of(seeded, tmp_path, "accounts", "external_id,name,stage\nA1,Acme Corp,dreaming\n") == [
        "row 2, column stage: unknown stage 'dreaming' (known: onboarding, adoption, expansion, renewal, "
        "advocacy, churned, win-back)"
    ]


def test_contacts_import_keys_by_email_or_name(seeded: Session, tmp_path: Path) -> None:
    text = (
        "name,account_external_id,email,role,slack_user_id,telegram_user_id,slack_channel_id,telegram_chat_id\n"
        "王芳,A1,Wang.Fang@Acme.com,CTO,U9,,C1,\n"
        "Bob,A1,,buyer,,,,-100123\n"
    )
    report = run(seeded, tmp_path, "contacts", text)
    assert (report.inserted, report.updated, report.unchanged) == (2, 0, 0)
    contacts = {c.key: c for c in seeded.exec(select(Contact)).all()}
    assert set(contacts) == {"wang.fang@acme.com", "Bob"}
    wang = contacts["wang.fang@acme.com"]
    assert (wang.name, wang.slack_channel_id) == ("王芳", "C1")
    assert (contacts["Bob"].email, contacts["Bob"].telegram_chat_id) == (None, "-100123")


def test_usage_import_defaults_and_moves_last_usage_date_forward_only(
    seeded: Session, tmp_path: Path
) -> None:
    # A2 already saw usage later than the file's; A1 saw none.
    later = date(2026, 5, 1)
    seeded.execute(update(Account).where(col(Account.external_id) == "A2").values(last_usage_date=later))
    seeded.commit()
    text = (
        "date,account_external_id,feature,active_users,logins,events\n"
        "2026-03-01,A1,,10,20,300\n"
        "2026-03-02,A1,,,,\n"
        "2026-03-02,A1,reports,4,,17\n"
        "2026-03-01,A2,,1,1,1\n"
    )
    report = run(seeded, tmp_path, "usage", text)
    assert (report.inserted, report.updated, report.unchanged) == (4, 0, 0)
    rows = seeded.execute(
        sa_select(col(Account.external_id), col(UsageDaily.day), col(UsageDaily.feature),
                  col(UsageDaily.active_users), col(UsageDaily.logins), col(UsageDaily.events))
        .join(Account, col(Account.id) == col(UsageDaily.account_id))
        .order_by(col(Account.external_id), col(UsageDaily.day), col(UsageDaily.feature))
    ).all()
    assert [tuple(r) for r in rows] == [
        ("A1", date(2026, 3, 1), "", 10, 20, 300),
        ("A1", date(2026, 3, 2), "", 0, 0, 0),
        ("A1", date(2026, 3, 2), "reports", 4, 0, 17),
        ("A2", date(2026, 3, 1), "", 1, 1, 1),
    ]
    last = {a.external_id: a.last_usage_date for a in seeded.exec(select(Account)).all()}
    assert last == {"A1": date(2026, 3, 2), "A2": date(2026, 5, 1)}


def test_tickets_import_converts_datetimes_to_naive_utc(seeded: Session, tmp_path: Path) -> None:
    text = (
        "ticket_id,account_external_id,opened_at,closed_at,priority,status\n"
        "T1,A1,2026-03-01T10:00:00+02:00,2026-03-02 09:30,HIGH,\n"
        "T2,A1,2026-03-05,,,\n"
        "T3,A2,2026-03-06T08:00:00Z,,urgent,waiting\n"
    )
    report = run(seeded, tmp_path, "tickets", text)
    assert report.inserted == 3
    tickets = {t.ticket_id: t for t in seeded.exec(select(Ticket)).all()}
    t1, t2, t3 = tickets["T1"], tickets["T2"], tickets["T3"]
    assert (naive(t1.opened_at), naive(t1.closed_at), t1.priority, t1.status) == (
        datetime(2026, 3, 1, 8, 0), datetime(2026, 3, 2, 9, 30), "high", "closed",
    )
    assert (naive(t2.opened_at), t2.closed_at, t2.priority, t2.status) == (
        datetime(2026, 3, 5), None, "normal", "open",
    )
    assert (naive(t3.opened_at), t3.priority, t3.status) == (datetime(2026, 3, 6, 8, 0), "urgent", "waiting")


def test_nps_import_links_known_contacts(seeded: Session, tmp_path: Path) -> None:
    run(seeded, tmp_path, "contacts", "account_external_id,name,email\nA1,王芳,wang@acme.com\n")
    text = (
        "account_external_id,contact_email,responded_at,score,comment\n"
        "A1,WANG@acme.com,2026-03-01T10:00:00,9,很好\n"
        "A1,stranger@acme.com,2026-03-01T10:00:00,3,\n"
        "A2,,2026-03-02,10,\n"
    )
    report = run(seeded, tmp_path, "nps", text)
    assert report.inserted == 3
    wang = seeded.exec(select(Contact)).one()
    got = sorted(
        (r.contact_key, r.contact_id, r.score, r.comment, naive(r.responded_at), r.source)
        for r in seeded.exec(select(NpsResponse)).all()
    )
    anonymous = got[0][0]
    assert anonymous.startswith("row:")  # no e-mail: the row's fingerprint keeps the answer apart from others
    assert got == [
        (anonymous, None, 10, None, datetime(2026, 3, 2), "import"),
        ("stranger@acme.com", None, 3, None, datetime(2026, 3, 1, 10), "import"),
        ("wang@acme.com", wang.id, 9, "很好", datetime(2026, 3, 1, 10), "import"),
    ]


# --- bad rows ---


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("accounts", "external_id,name,arr\nA9,Nine,100\nA10,Ten,12k\n",
         ["row 3, column arr: not a number ('12k')"]),
        ("accounts", "external_id,name,seats\nA9,Nine,-3\n",
         ["row 2, column seats: must not be negative ('-3')"]),
        ("accounts", "external_id,name,renewal_date\nA9,Nine,2026-13-01\n",
         ["row 2, column renewal_date: not a date (expected YYYY-MM-DD, got '2026-13-01')"]),
        ("accounts", "external_id,name,status\nA9,Nine,paused\n",
         ["row 2, column status: must be one of active, churned (got 'paused')"]),
        ("accounts", "external_id,name,owner_email\nA9,Nine,ghost@example.com\n",
         ["row 2, column owner_email: no user with email 'ghost@example.com'"]),
        ("accounts", "external_id,name\nA9,Nine\nA9,Nine again\n",
         ["row 3, column external_id: duplicate of row 2 (same external_id)"]),
        ("users", "email,name,role\nx@example.com,,boss\n",
         ["row 2, column name: missing value",
          "row 2, column role: must be one of admin, manager, csm, viewer (got 'boss')"]),
        ("users", "email,name,role,manager_email,timezone\nx@example.com,X,csm,,Mars/Base\n"
                  "y@example.com,Y,csm,nobody@example.com,\nz@example.com,Z,csm,z@example.com,\n",
         ["row 2, column timezone: unknown time zone ('Mars/Base'); use a name like Asia/Shanghai",
          "row 3, column manager_email: no user with email 'nobody@example.com'",
          "row 4, column manager_email: a user cannot be their own manager"]),
        ("contacts", "account_external_id,name,email\nA1,Ann,ann@x.com\nA1,Ann B,ANN@x.com\n",
         ["row 3, column email: duplicate of row 2 (same account and email)"]),
        ("usage", "account_external_id,date,logins\nNOPE,2026-03-01,1\n",
         ["row 2, column account_external_id: no account with external_id 'NOPE'"]),
        ("usage", "account_external_id,date,logins,events\nA1,March 1,1.5,-2\nA1,,x,\n",
         ["row 2, column date: not a date (expected YYYY-MM-DD, got 'March 1')",
          "row 2, column logins: not a whole number ('1.5')",
          "row 2, column events: must not be negative ('-2')",
          "row 3, column date: missing value",
          "row 3, column logins: not a whole number ('x')"]),
        ("usage", "account_external_id,date\nA1,2026-03-01\nA2,2026-03-01\n A1 ,2026-03-01\n",
         ["row 4, column date: duplicate of row 2 (same account_external_id, feature and date)"]),
        ("tickets", "account_external_id,ticket_id,opened_at,closed_at,priority\n"
                    "A1,T1,2026-03-02T10:00,2026-03-01,low\nA1,T2,2026-03-02,,asap\n",
         ["row 2, column closed_at: before opened_at (2026-03-02 10:00:00)",
          "row 3, column priority: must be one of low, normal, high, urgent (got 'asap')"]),
        ("tickets", "account_external_id,ticket_id,opened_at\nA1,T1,yesterday\n",
         ["row 2, column opened_at: not a date-time (expected e.g. 2026-03-01T10:00:00, got 'yesterday')"]),
        ("nps", "account_external_id,score,responded_at\n"
                "A1,11,2026-03-01\nA1,7.5,2026-03-02\nA3,5,2026-03-03\n",
         ["row 2, column score: must be a whole number from 0 to 10 (got '11')",
          "row 3, column score: not a whole number ('7.5')",
          "row 4, column account_external_id: no account with external_id 'A3'"]),
    ],
)
def test_bad_rows_are_reported_and_nothing_is_written(
    seeded: Session, tmp_path: Path, kind: str, text: str, expected: list[str]
) -> None:
    assert problems_of(seeded, tmp_path, kind, text) == expected


def test_one_bad_row_rejects_the_whole_usage_file(seeded: Session, tmp_path: Path) -> None:
    good = "".join(f"A1,2026-01-{d:02d},5\n" for d in range(1, 29))
    text = "account_external_id,date,logins\n" + good + "A1,2026-02-30,5\n"
    problems = problems_of(seeded, tmp_path, "usage", text)
    assert problems == ["row 30, column date: not a date (expected YYYY-MM-DD, got '2026-02-30')"]
    assert counts(seeded)["UsageDaily"] == 0


def test_row_numbers_count_blank_lines_like_a_spreadsheet(seeded: Session, tmp_path: Path) -> None:
    text = "external_id,name,arr\nA7,Seven,1\n\nA8,Eight,lots\n"
    assert problems_of(seeded, tmp_path, "accounts", text) == ["row 4, column arr: not a number ('lots')"]


def test_problem_list_is_capped(seeded: Session, tmp_path: Path) -> None:
    bad = "".join(f"A1,2026-01-01,n{i}\n" for i in range(MAX_PROBLEMS + 50))
    problems = problems_of(seeded, tmp_path, "usage", "account_external_id,date,logins\n" + bad)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == "row 2, column logins: not a whole number ('n0')"
    assert problems[-1] == f"… and {50 + MAX_PROBLEMS + 49} more"


def test_missing_required_column(seeded: Session, tmp_path: Path) -> None:
    assert problems_of(seeded, tmp_path, "users", "email,slack_user_id\na@x.com,U1\n") == [
        "missing required columns: name, role (found: email, slack_user_id)"
    ]


def test_unknown_column_warns_and_is_ignored(seeded: Session, tmp_path: Path) -> None:
    report = run(seeded, tmp_path, "accounts", "external_id,name,Favourite Colour\nA3,Three,blue\n")
    assert report.warnings == ["unknown column 'Favourite Colour' ignored"]
    assert report.inserted == 1


def test_column_map_renames_crm_headers(seeded: Session, tmp_path: Path) -> None:
    text = "Account ID,Account Name,Annual Revenue\nA4,Four,oops\n"
    path = write(tmp_path, "crm.csv", text)
    mapping = {"Account ID": "external_id", "Account Name": "name", "Annual Revenue": "arr"}
    with pytest.raises(ImportFailed) as failed:
        import_csv(seeded, "accounts", path, column_map=mapping)
    assert failed.value.problems == ["row 2, column Annual Revenue: not a number ('oops')"]
    path.write_text("Account ID,Account Name,Annual Revenue\nA4,Four,99\n", encoding="utf-8")
    report = import_csv(seeded, "accounts", path, column_map=mapping)
    seeded.commit()
    assert report.inserted == 1
    four = account(seeded, "A4")
    assert (four.name, four.arr) == ("Four", 99.0)


# --- idempotence, updates, dry run, progress ---

GOOD_FILES = {
    "contacts": "account_external_id,name,email\nA1,王芳,wang@acme.com\nA2,Bob,\n",
    "usage": "account_external_id,date,feature,logins\nA1,2026-03-01,,3\nA1,2026-03-01,reports,1\n",
    "tickets": "account_external_id,ticket_id,opened_at,closed_at\nA1,T1,2026-03-01T10:00:00+01:00,\n",
    "nps": "account_external_id,contact_email,responded_at,score\nA1,a@acme.com,2026-03-01T10:00:00Z,8\n",
    "rates": "date,currency,rate,base\n2026-03-01,EUR,1.0812,\n2026-03-01,USD,0.7874,GBP\n",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reimporting_the_same_file_changes_nothing(seeded: Session, tmp_path: Path, kind: str) -> None:
    text = {"users": USERS, "accounts": ACCOUNTS, **GOOD_FILES}[kind]
    if kind not in ("users", "accounts"):
        first = run(seeded, tmp_path, kind, text)
        assert first.inserted == first.rows
    before = counts(seeded)
    before_stamps = stamps(seeded)
    again = run(seeded, tmp_path, kind, text)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, again.rows)
    assert counts(seeded) == before
    assert stamps(seeded) == before_stamps


def test_changed_value_counts_as_updated_and_only_that_row_moves(seeded: Session, tmp_path: Path) -> None:
    before = dict(seeded.exec(select(Account.external_id, Account.updated_at)).all())
    changed = ACCOUNTS.replace("12000.50", "15000")
    report = run(seeded, tmp_path, "accounts", changed)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 1)
    after = dict(seeded.exec(select(Account.external_id, Account.updated_at)).all())
    assert after["A2"] == before["A2"]
    assert after["A1"] > before["A1"]
    acme = account(seeded, "A1")
    assert acme.arr == 15000.0
    usage = "account_external_id,date,logins\nA1,2026-03-01,3\nA1,2026-03-02,4\n"
    run(seeded, tmp_path, "usage", usage)
    report = run(seeded, tmp_path, "usage", usage.replace(",4\n", ",5\n") + "A1,2026-03-03,1\n")
    assert (report.inserted, report.updated, report.unchanged) == (1, 1, 1)
    logins = seeded.exec(select(UsageDaily.logins).order_by(col(UsageDaily.day))).all()
    assert logins == [3, 5, 1]


def test_user_changes_are_detected_case_insensitively(seeded: Session, tmp_path: Path) -> None:
    text = "email,name,role\nANN@example.com,Ann Lee,viewer\n"
    report = run(seeded, tmp_path, "users", text)
    assert (report.inserted, report.updated) == (0, 1)
    ann = user(seeded, "ann@example.com")
    assert (ann.name, ann.role) == ("Ann Lee", "viewer")


@pytest.mark.parametrize("kind", sorted(GOOD_FILES))
def test_dry_run_counts_but_writes_nothing(seeded: Session, tmp_path: Path, kind: str) -> None:
    before = counts(seeded)
    report = import_csv(seeded, kind, write(tmp_path, "dry.csv", GOOD_FILES[kind]), dry_run=True)
    seeded.commit()
    assert report.dry_run
    assert (report.inserted, report.updated, report.unchanged) == (report.rows, 0, 0)
    assert counts(seeded) == before


def test_dry_run_of_accounts_counts_updates(seeded: Session, tmp_path: Path) -> None:
    before = counts(seeded)
    text = ACCOUNTS.replace("Acme Corp", "Acme Inc") + "Three,A3,,,,,,,,,,\n"
    report = import_csv(seeded, "accounts", write(tmp_path, "dry.csv", text), dry_run=True)
    seeded.commit()
    assert (report.inserted, report.updated, report.unchanged) == (1, 1, 1)
    assert counts(seeded) == before
    acme = account(seeded, "A1")
    assert acme.name == "Acme Corp"


def test_progress_reports_validation_and_writing(seeded: Session, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    text = "account_external_id,date\n" + "".join(f"A1,2026-01-{d:02d}\n" for d in range(1, 11))
    import_csv(seeded, "usage", write(tmp_path, "u.csv", text), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (20, 20)
    assert all(t == 20 for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert len(calls) >= 3


def test_unknown_kind_and_empty_file(session: Session, tmp_path: Path) -> None:
    with pytest.raises(ImportFailed) as unknown:
        import_csv(session, "deals", write(tmp_path, "x.csv", "a\n1\n"))
    assert unknown.value.problems == [
        "unknown kind 'deals'; choose one of: users, accounts, contacts, usage, tickets, nps, rates"
    ]
    with pytest.raises(ImportFailed) as failed:
        import_csv(session, "users", write(tmp_path, "empty.csv", ""))
    assert failed.value.problems == ["empty.csv is empty: the first row must name the columns"]


def test_imports_are_idempotent_on_postgresql(pg_engine: Engine, tmp_path: Path) -> None:
    files = [("users", USERS), ("accounts", ACCOUNTS), *GOOD_FILES.items()]
    with Session(pg_engine) as session:
        for kind, text in files:
            report = run(session, tmp_path, kind, text)
            assert report.inserted == report.rows, kind
        before, before_stamps = counts(session), stamps(session)
        for kind, text in files:
            report = run(session, tmp_path, kind, text)
            assert (report.inserted, report.updated, report.unchanged) == (0, 0, report.rows), kind
        assert counts(session) == before
        assert stamps(session) == before_stamps
        assert account(session, "A1").last_usage_date == date(2026, 3, 1)
        ticket = session.exec(select(Ticket)).one()
        assert naive(ticket.opened_at) == datetime(2026, 3, 1, 9, 0)


# --- NPS history, skipped rows, one account for the whole file, local dates ---

NPS_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nps-responses.csv"
NPS_MAP = {"NPS_SCORE": "score", "CUSTOMER_RESPONSE_DATE": "responded_at", "text": "comment"}


def test_nps_history_from_the_shared_dataset(seeded: Session) -> None:
    if not NPS_DATASET.is_file():
        pytest.skip(f"{NPS_DATASET} is not here")
    report = import_csv(seeded, "nps", NPS_DATASET, column_map=NPS_MAP, account="acme corp")
    seeded.commit()
    assert (report.rows, report.inserted, report.updated, report.unchanged) == (2385, 2353, 0, 0)
    assert len(report.skipped) == 32 and report.skipped[:3] == [232, 263, 357]
    assert report.skipped_reason == "no score (unanswered surveys)"
    assert report.nps == NpsCounts(promoters=690, passives=392, detractors=1271)
    assert report.nps is not None and report.nps.nps == -24.7
    assert sorted(report.warnings) == [
        "unknown column 'NPS_RATING' ignored", "unknown column 'Qtr' ignored",
        "unknown column 'SURVEY_SUB_TYPE' ignored",
    ]
    acme = account(seeded, "A1")
    stored = nps_summary(seeded, account_id=acme.id)
    assert (stored.responses, stored.nps) == (2353, -24.7)
    # The file writes day-first dates (11/04/2018 20:09 is 11 April): read so without being told.
    first = seeded.exec(select(NpsResponse).where(col(NpsResponse.comment).startswith("The process was good"))).one()
    assert (first.score, naive(first.responded_at)) == (7, datetime(2018, 4, 11, 20, 9))

    again = import_csv(seeded, "nps", NPS_DATASET, column_map=NPS_MAP, account="A1")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2353)


def test_nps_skips_unanswered_rows_but_a_bad_score_fails_the_file(seeded: Session, tmp_path: Path) -> None:
    text = "score,responded_at\n9,2026-03-01\n,2026-03-02\neleven,2026-03-03\n12,2026-03-04\n  ,2026-03-05\n"
    with pytest.raises(ImportFailed) as failed:
        import_csv(seeded, "nps", write(tmp_path, "n.csv", text), account="A1")
    assert failed.value.problems == [
        "row 4, column score: not a whole number ('eleven')",
        "row 5, column score: must be a whole number from 0 to 10 (got '12')",
    ]
    good = "score,responded_at\n9,2026-03-01\n,2026-03-02\n3,2026-03-03\n  ,2026-03-05\n"
    report = import_csv(seeded, "nps", write(tmp_path, "n.csv", good), account="A1")
    assert (report.inserted, report.skipped) == (2, [3, 5])
    assert report.nps == NpsCounts(promoters=1, passives=0, detractors=1)


def test_nps_answers_without_a_contact_stay_apart(seeded: Session, tmp_path: Path) -> None:
    text = (
        "score,responded_at,comment\n"
        "9,2026-03-01T10:00,great\n3,2026-03-01T10:00,slow\n9,2026-03-01T10:00,great\n"
    )
    report = import_csv(seeded, "nps", write(tmp_path, "n.csv", text), account="A1")
    seeded.commit()
    assert report.inserted == 3  # same moment, no contact, even two identical rows: three answers
    keys = seeded.exec(select(NpsResponse.contact_key)).all()
    assert len(set(keys)) == 3 and all(k.startswith("row:") for k in keys)
    again = import_csv(seeded, "nps", write(tmp_path, "n.csv", text), account="A1")
    assert (again.inserted, again.unchanged) == (0, 3)

    with_ids = "response_id,score,responded_at\nR1,9,2026-03-02T10:00\nR2,9,2026-03-02T10:00\nR1,8,2026-03-02T10:00\n"
    assert problems_of_nps(seeded, tmp_path, with_ids) == [
        "row 4, column responded_at: duplicate of row 2 (same account, response_id and responded_at)"
    ]


def problems_of_nps(session: Session, tmp_path: Path, text: str, date_format: str | None = None) -> list[str]:
    with pytest.raises(ImportFailed) as failed:
        import_csv(session, "nps", write(tmp_path, "bad_nps.csv", text), account="A1", date_format=date_format)
    session.rollback()
    return failed.value.problems


def test_the_account_option(seeded: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", "score,responded_at\n10,2026-03-01\n")
    assert import_csv(seeded, "nps", path, account="北京科技").inserted == 1
    with pytest.raises(ImportFailed) as unknown:
        import_csv(seeded, "nps", path, account="Nobody Inc")
    assert unknown.value.problems == ["no account with external id or name 'Nobody Inc'"]
    both = write(tmp_path, "b.csv", "account_external_id,score,responded_at\nA1,10,2026-03-01\n")
    with pytest.raises(ImportFailed) as twice:
        import_csv(seeded, "nps", both, account="A1")
    assert twice.value.problems == [
        "column 'account_external_id' gives 'account_external_id', which is already given for the whole file"
    ]
    with pytest.raises(ImportFailed) as missing:
        import_csv(seeded, "nps", path)
    assert missing.value.problems == [
        "missing required column: account_external_id (found: score, responded_at)"
    ]


@pytest.mark.parametrize(
    ("dates", "date_format", "expected"),
    [
        (["11/04/2018 20:09", "31/01/2018 08:00"], None, [datetime(2018, 4, 11, 20, 9), datetime(2018, 1, 31, 8)]),
        (["04/11/2018 8:09 PM", "01/31/2018 12:00 AM"], None, [datetime(2018, 4, 11, 20, 9), datetime(2018, 1, 31)]),
        (["03/04/18"], "day-first", [datetime(2018, 4, 3)]),
        (["03/04/18"], "month-first", [datetime(2018, 3, 4)]),
        (["03.04.2018 10:30"], "%d.%m.%Y %H:%M", [datetime(2018, 4, 3, 10, 30)]),
        (["2018-04-03T10:30:00+02:00", "13/04/2018"], None, [datetime(2018, 4, 3, 8, 30), datetime(2018, 4, 13)]),
    ],
)
def test_local_dates_are_read_as_detected_or_told(
    seeded: Session, tmp_path: Path, dates: list[str], date_format: str | None, expected: list[datetime]
) -> None:
    text = "score,responded_at\n" + "".join(f"{i},{d}\n" for i, d in enumerate(dates))
    import_csv(seeded, "nps", write(tmp_path, "d.csv", text), account="A1", date_format=date_format)
    stored = seeded.exec(select(NpsResponse).order_by(col(NpsResponse.score))).all()
    assert [naive(r.responded_at) for r in stored] == expected


@pytest.mark.parametrize(
    ("dates", "date_format", "problems"),
    [
        (["03/04/2018"], None,
         ["dates such as '03/04/2018' (responded_at) read both day-first and month-first; give the date format "
          "(--date-format day-first or month-first)"]),
        (["13/04/2018", "04/13/2018"], None,
         ["dates are written both day-first (responded_at '13/04/2018') and month-first (responded_at "
          "'04/13/2018'); fix the file or give the date format"]),
        (["31/02/2018", "01/02/2018"], "day-first",
         ["row 2, column responded_at: not a date in the day-first format ('31/02/2018')"]),
        (["2018-02-01", "1.2.2018"], "%d/%m/%Y",
         ["row 3, column responded_at: not a date in the '%d/%m/%Y' format ('1.2.2018')"]),
        (["2018-02-01"], "sometimes",
         ["date format 'sometimes': use auto, iso, day-first, month-first or a pattern such as %d.%m.%Y %H:%M"]),
    ],
)
def test_dates_that_cannot_be_read_are_refused(
    seeded: Session, tmp_path: Path, dates: list[str], date_format: str | None, problems: list[str]
) -> None:
    text = "score,responded_at\n" + "".join(f"{i},{d}\n" for i, d in enumerate(dates))
    assert problems_of_nps(seeded, tmp_path, text, date_format) == problems


def test_a_date_column_given_a_date_time_keeps_its_day(seeded: Session, tmp_path: Path) -> None:
    text = "external_id,name,contract_start,renewal_date\nA5,Five,2025-02-01 10:15,02/28/2027\n"
    import_csv(seeded, "accounts", write(tmp_path, "a.csv", text))
    five = account(seeded, "A5")
    assert (five.contract_start, five.renewal_date) == (date(2025, 2, 1), date(2027, 2, 28))


def test_account_imports_record_the_arr_history(session: Session, tmp_path: Path) -> None:
    from lifecycle.store.models import ArrChange

    def history() -> list[tuple[str, float, float]]:
        rows = session.exec(select(ArrChange).order_by(col(ArrChange.id))).all()
        return [(r.kind, r.arr_before, r.arr_after) for r in rows]

    head = "external_id,name,arr,seats,status\n"
    run(session, tmp_path, "accounts", head + "R1,Rise,100,10,active\nR2,Fall,50,5,active\n")
    assert sorted(history()) == [("new", 0.0, 50.0), ("new", 0.0, 100.0)]
    session.execute(ArrChange.__table__.delete())  # type: ignore[attr-defined]
    run(session, tmp_path, "accounts", head + "R1,Rise,150,12,active\nR2,Fall,50,5,active\n")
    assert history() == [("expansion", 100.0, 150.0)]  # the unchanged account records nothing
    session.execute(ArrChange.__table__.delete())  # type: ignore[attr-defined]
    run(session, tmp_path, "accounts", head + "R1,Rise,120,12,active\nR2,Fall,50,5,churned\n")
    assert sorted(history()) == [("churn", 50.0, 0.0), ("contraction", 150.0, 120.0)]
    session.execute(ArrChange.__table__.delete())  # type: ignore[attr-defined]
    run(session, tmp_path, "accounts", head + "R2,Fall,60,5,active\n")
    assert history() == [("reactivation", 0.0, 60.0)]


def test_a_departed_user_is_deactivated_by_import(seeded: Session, tmp_path: Path) -> None:
    head = "email,name,role,active\n"
    before = user(seeded, "ann@example.com")
    assert before.active
    with pytest.raises(ImportFailed) as failed:
        import_csv(seeded, "users", write(tmp_path, "u.csv", head + "ann@example.com,Ann,csm,maybe\n"))
    assert failed.value.problems == ["row 2, column active: not yes/no ('maybe')"]
    report = run(seeded, tmp_path, "users", head + "ann@example.com,Ann,csm,no\n")
    assert report.updated == 1
    seeded.expire_all()
    assert user(seeded, "ann@example.com").active is False
    # A later import without the column leaves the flag alone; `active = yes` brings them back.
    run(seeded, tmp_path, "users", "email,name,role\nann@example.com,Ann,csm\n")
    seeded.expire_all()
    assert user(seeded, "ann@example.com").active is False
    run(seeded, tmp_path, "users", head + "ann@example.com,Ann,csm,yes\n")
    seeded.expire_all()
    assert user(seeded, "ann@example.com").active is True
