"""CRM export presets (HubSpot, Salesforce) and column maps for `import accounts|contacts`, on small sample exports."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from lifecycle.intake.importers import MissingColumns, import_csv, load_presets, parse_column_map
from lifecycle.store.errors import ConfigError, ImportFailed
from lifecycle.store.models import Account, Contact, User

HUBSPOT_COMPANIES = """\
Record ID,Company name,Company owner,Create Date,Phone Number,Industry,Annual Revenue,Number of Employees,\
Lifecycle Stage,Close Date,Company Domain Name,Web Technologies
5012345678,Acme Corp,Maya Chen,2024-01-10 09:12,+1 555 0100,COMPUTER_SOFTWARE,120000,250,customer,\
2024-02-01 00:00,acme.com,HubSpot;Stripe
5012345679,Globex,SAM@example.com,2024-03-02 11:00,,RETAIL,48000.50,40,customer,,globex.com,
5012345680,Initech,,2024-04-02 11:00,,,,,opportunity,,initech.com,
"""

HUBSPOT_CONTACTS = """\
Record ID,First Name,Last Name,Email,Phone Number,Contact owner,Job Title,Associated Company,Lifecycle Stage
101,Ann,Lee,Ann.Lee@acme.com,,Maya Chen,CTO,Acme Corp,customer
102,,,bob@globex.com,,,,GLOBEX,customer
103,Cleo,,,,,Buyer,Initech,lead
"""

SALESFORCE_ACCOUNTS = """\
Account Owner,Account Name,Type,Industry,Annual Revenue,Employees,Billing Country,Account ID,Account Currency
Sam Ortiz,Umbrella Corp,Customer - Direct,Biotechnology,950000,1200,Germany,0015g00000AbCdE,EUR
Maya Chen,Stark Industries,Customer - Channel,Engineering,,,USA,0015g00000FgHiJ,USD
"""

SALESFORCE_CONTACTS = """\
Contact ID,First Name,Last Name,Title,Email,Account Name,Account ID,Contact Owner
0035g00000X1,Dana,Scully,Head of Ops,dana@umbrella.example,Umbrella Corp,0015g00000AbCdE,Sam Ortiz
0035g00000X2,Tony,Stark,CEO,tony@stark.example,Stark Industries,,Maya Chen
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def users(session: Session) -> dict[str, int]:
    session.add(User(email="maya@example.com", name="Maya Chen", role="manager"))
    session.add(User(email="sam@example.com", name="Sam  Ortiz", role="csm"))
    session.add(User(email="alex.kim@example.com", name="Alex Kim", role="csm"))
    session.add(User(email="alex.kim2@example.com", name="alex kim", role="csm"))
    session.commit()
    return {u.email: int(u.id or 0) for u in session.exec(select(User)).all()}


def accounts(session: Session) -> dict[str, tuple[str, int | None, float, str, str | None, date | None]]:
    return {
        a.external_id: (a.name, a.owner_id, a.arr, a.currency, a.segment, a.contract_start)
        for a in session.exec(select(Account)).all()
    }


def contacts(session: Session) -> set[tuple[str, str, str, str | None]]:
    ext = {a.id: a.external_id for a in session.exec(select(Account)).all()}
    return {(ext[c.account_id], c.key, c.name, c.role) for c in session.exec(select(Contact)).all()}


def test_hubspot_companies_export(session: Session, users: dict[str, int], tmp_path: Path) -> None:
    report = import_csv(session, "accounts", write(tmp_path, "companies.csv", HUBSPOT_COMPANIES), preset="hubspot")
    session.commit()
    assert (report.inserted, report.warnings) == (3, ["unknown column 'Web Technologies' ignored"])
    assert accounts(session) == {
        "5012345678": ("Acme Corp", users["maya@example.com"], 120000.0, "USD", "COMPUTER_SOFTWARE", date(2024, 2, 1)),
        "5012345679": ("Globex", users["sam@example.com"], 48000.5, "USD", "RETAIL", None),
        "5012345680": ("Initech", None, 0.0, "USD", None, None),
    }


def test_hubspot_contacts_find_their_company_by_name(session: Session, users: dict[str, int], tmp_path: Path) -> None:
    import_csv(session, "accounts", write(tmp_path, "companies.csv", HUBSPOT_COMPANIES), preset="hubspot")
    report = import_csv(session, "contacts", write(tmp_path, "contacts.csv", HUBSPOT_CONTACTS), preset="HubSpot")
    session.commit()
    assert (report.inserted, report.warnings) == (3, [])
    assert contacts(session) == {
        ("5012345678", "ann.lee@acme.com", "Ann Lee", "CTO"),
        ("5012345679", "bob@globex.com", "bob@globex.com", None),  # no name in the export: the e-mail stands in
        ("5012345680", "Cleo", "Cleo", "Buyer"),  # no e-mail: keyed by name, as contacts always are
    }
    again = import_csv(session, "contacts", write(tmp_path, "contacts.csv", HUBSPOT_CONTACTS), preset="hubspot")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)


def test_salesforce_accounts_and_contacts(session: Session, users: dict[str, int], tmp_path: Path) -> None:
    report = import_csv(session, "accounts", write(tmp_path, "a.csv", SALESFORCE_ACCOUNTS), preset="salesforce")
    assert (report.inserted, report.warnings) == (2, [])
    assert accounts(session) == {
        "0015g00000AbCdE": ("Umbrella Corp", users["sam@example.com"], 950000.0, "EUR", "Biotechnology", None),
        "0015g00000FgHiJ": ("Stark Industries", users["maya@example.com"], 0.0, "USD", "Engineering", None),
    }
    report = import_csv(session, "contacts", write(tmp_path, "c.csv", SALESFORCE_CONTACTS), preset="salesforce")
    session.commit()
    assert report.inserted == 2
    # Dana by the Account ID; Tony's row has no Account ID, so the Account Name finds it.
    assert contacts(session) == {
        ("0015g00000AbCdE", "dana@umbrella.example", "Dana Scully", "Head of Ops"),
        ("0015g00000FgHiJ", "tony@stark.example", "Tony Stark", "CEO"),
    }


def test_map_adds_to_and_overrides_a_preset(session: Session, users: dict[str, int], tmp_path: Path) -> None:
    text = HUBSPOT_COMPANIES.replace("Web Technologies", "Tier").replace("HubSpot;Stripe", "Gold")
    mapping = parse_column_map(["Industry=", "Number of Employees=seats", "Tier=plan", "Company owner=owner_email"])
    with pytest.raises(ImportFailed) as refused:
        import_csv(session, "accounts", write(tmp_path, "c.csv", text), preset="hubspot", column_map=mapping)
    # "Company owner" now claims to hold e-mails: a name is not one.
    assert refused.value.problems == ["row 2, column Company owner: not an e-mail address ('Maya Chen')"]
    mapping = parse_column_map(["Industry=", "number of  employees=seats", "Tier=plan"])
    report = import_csv(session, "accounts", write(tmp_path, "c.csv", text), preset="hubspot", column_map=mapping)
    session.commit()
    assert report.warnings == []
    stored = {a.external_id: (a.segment, a.seats, a.plan) for a in session.exec(select(Account)).all()}
    assert stored == {"5012345678": (None, 250, "Gold"), "5012345679": (None, 40, None), "5012345680": (None, 0, None)}


def test_missing_required_columns_name_the_preset_headers(session: Session, tmp_path: Path) -> None:
    text = "Company name,Company owner\nAcme,\n"
    with pytest.raises(MissingColumns) as missing:
        import_csv(session, "accounts", write(tmp_path, "c.csv", text), preset="hubspot")
    assert missing.value.missing == ["external_id"]
    assert missing.value.problems == [
        "missing required column: external_id (found: Company name, Company owner); "
        "the hubspot preset reads external_id from 'Record ID'"
    ]
    with pytest.raises(MissingColumns) as contact:
        import_csv(session, "contacts", write(tmp_path, "p.csv", "Email,Phone\na@b.com,1\n"), preset="salesforce")
    assert contact.value.problems == [
        "missing required columns: account_external_id (or account_name), name (or first_name / last_name) "
        "(found: Email, Phone); the salesforce preset reads account_external_id from 'Account ID' or 'AccountId'"
    ]


def test_owners_resolve_to_exactly_one_user(session: Session, users: dict[str, int], tmp_path: Path) -> None:
    text = (
        "Record ID,Company name,Company owner\n"
        "1,One,maya chen\n2,Two,Alex Kim\n3,Three,Nobody Here\n4,Four,ghost@example.com\n5,Five,  Sam Ortiz \n"
    )
    with pytest.raises(ImportFailed) as refused:
        import_csv(session, "accounts", write(tmp_path, "o.csv", text), preset="hubspot")
    assert refused.value.problems == [
        "row 3, column Company owner: 2 users are named 'Alex Kim' (alex.kim2@example.com, alex.kim@example.com); "
        "use an e-mail",
        "row 4, column Company owner: no user named 'Nobody Here' (import them as users first, or leave the owner out)",
        "row 5, column Company owner: no user with email 'ghost@example.com'",
    ]
    assert session.exec(select(Account)).all() == []
    fixed = text.replace("Alex Kim", "alex.kim@example.com").replace("Nobody Here", "").replace("ghost@", "maya@")
    import_csv(session, "accounts", write(tmp_path, "o.csv", fixed), preset="hubspot")
    owners = {a.external_id: a.owner_id for a in session.exec(select(Account).order_by(col(Account.external_id)))}
    assert owners == {
        "1": users["maya@example.com"], "2": users["alex.kim@example.com"], "3": None,
        "4": users["maya@example.com"], "5": users["sam@example.com"],
    }


def test_contacts_with_an_unknown_or_ambiguous_account_name(session: Session, tmp_path: Path) -> None:
    session.add(Account(external_id="X1", name="Twin", name_key="twin"))
    session.add(Account(external_id="X2", name="twin", name_key="twin"))
    session.add(Account(external_id="X3", name="Solo", name_key="solo"))
    session.commit()
    text = "First Name,Email,Associated Company\nAnn,ann@x.com,Twin\nBo,bo@x.com,Nowhere\nCy,cy@x.com,solo\n"
    with pytest.raises(ImportFailed) as refused:
        import_csv(session, "contacts", write(tmp_path, "c.csv", text), preset="hubspot")
    assert refused.value.problems == [
        "row 2, column Associated Company: 2 accounts are named 'Twin'; give the account's external id",
        "row 3, column Associated Company: no account named 'Nowhere'",
    ]
    assert session.exec(select(Contact)).all() == []


def test_two_headers_for_one_column_and_a_preset_for_another_kind(session: Session, tmp_path: Path) -> None:
    text = "Account ID,Id,Account Name\n1,2,One\n"
    with pytest.raises(ImportFailed) as twice:
        import_csv(session, "accounts", write(tmp_path, "a.csv", text), preset="salesforce")
    assert twice.value.problems == ["columns 'Account ID' and 'Id' both give 'external_id'"]
    report = import_csv(session, "accounts", write(tmp_path, "a.csv", text), preset="salesforce",
                        column_map={"Id": ""})
    assert report.inserted == 1
    with pytest.raises(ImportFailed) as kind:
        import_csv(session, "usage", write(tmp_path, "u.csv", text), preset="salesforce")
    assert kind.value.problems == ["the salesforce preset is for accounts and contacts, not usage"]
    with pytest.raises(ImportFailed) as unknown:
        import_csv(session, "accounts", write(tmp_path, "a.csv", text), preset="pipedrive")
    assert unknown.value.problems == ["unknown preset 'pipedrive'; choose one of: hubspot, salesforce"]
    with pytest.raises(ImportFailed) as bad_map:
        import_csv(session, "accounts", write(tmp_path, "a.csv", text), column_map={"Id": "revenue"})
    assert bad_map.value.problems[0].startswith("column map Id=revenue: accounts has no such column")


def test_column_map_pairs_are_parsed_at_the_last_equals_sign() -> None:
    assert parse_column_map(["Score (0=low)=score", " Comment = comment ", "Junk="]) == {
        "Score (0=low)": "score", "Comment": "comment", "Junk": "",
    }
    with pytest.raises(ImportFailed):
        parse_column_map(["no equals sign"])


def test_a_presets_file_naming_unknown_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "presets.toml"
    path.write_text('[acme]\nlabel = "Acme CRM"\n[acme.accounts]\n"Org" = "organisation"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("acme.accounts: 'Org' maps to unknown column 'organisation'")):
        load_presets(path)
    assert set(load_presets()) == {"hubspot", "salesforce"}
