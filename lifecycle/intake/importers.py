"""CSV import of users, accounts, contacts, usage, tickets, NPS answers and exchange rates.

Every import validates the whole file first (pydantic row models for the small kinds, pandas/NumPy masks
for the potentially huge usage kind, both producing the same `row N, column C: reason` messages) and only
then writes, inside the caller's transaction (this module never commits). Rows are matched on their natural
key, compared with what is stored, and only new or changed rows are written, so re-importing a file changes
nothing. An empty optional cell means "not given": it leaves the stored value alone, and a new row gets the
column's default.

Before validation, headers are mapped onto csbot's columns: a CRM preset (`config/presets.toml`: HubSpot and
Salesforce exports) and/or an explicit column map (header → column; an empty column ignores the header), matched
case-insensitively. A few columns stand in for others: `owner` (a user's name or e-mail) for `owner_email`,
`account_name` for `account_external_id` and `first_name`/`last_name` for `name` of contacts. Dates written
`31/01/2026` or `01/31/2026` are read day-first or month-first as detected from the file (or as told); a date
column given a date-time keeps its day. NPS rows without a score are unanswered surveys: skipped and reported;
rows without a contact e-mail are kept apart by a fingerprint of the whole CSV row (or by `response_id`).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy import Date, Table, bindparam, insert, or_, select, update
from sqlmodel import Session, SQLModel

from lifecycle.reports.nps import PASSIVE_FROM, PROMOTER_FROM, nps_value
from lifecycle.scoring import rollups
from lifecycle.scoring.revenue import ArrUpdate, record_arr_changes
from lifecycle.store.bulkwrite import bulk_mode, driver_connection, upsert_rows
from lifecycle.store.db import upsert
from lifecycle.store.errors import ConfigError, ImportFailed
from lifecycle.store.models import (
    ACCOUNT_STATUSES,
    ROLES,
    TICKET_PRIORITIES,
    Account,
    Contact,
    ExchangeRate,
    NpsResponse,
    StageTransition,
    Ticket,
    UsageDaily,
    User,
    utcnow,
)
from lifecycle.store.settings import CONFIG_DIR, get_settings, read_toml

Progress = Callable[[int, int], None]

MAX_PROBLEMS = 200
# Stage names used until `lifecycle.scoring.stages` provides the configured machine.
DEFAULT_STAGES = ("onboarding", "adoption", "expansion", "renewal", "advocacy", "churned", "win-back")
_IN_CHUNK = 5_000  # keys per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_WRITE_CHUNK = 50_000  # usage rows per executemany / COPY, so the progress bar moves during big writes
# Usage rows read and checked at a time: a big file is held as a few bytes of codes per row, never as text.
USAGE_CHUNK_ROWS = 250_000
_UNSET: Any = object()
DEFAULT_PRESETS_FILE = CONFIG_DIR / "presets.toml"
DATE_COLUMNS = ("contract_start", "renewal_date", "date")
MOMENT_COLUMNS = ("opened_at", "closed_at", "responded_at")
DATE_FORMATS = ("auto", "iso", "day-first", "month-first")


@dataclass(frozen=True)
class KindSpec:
    """The columns of one importable kind; `key` is the natural key an import upserts on."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    key: tuple[str, ...]
    description: str
    # A required column may be absent when one of these stands in for it (e.g. contacts' account_name).
    stand_ins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            "users",
            required=("email", "name", "role"),
            optional=("slack_user_id", "telegram_user_id", "feishu_open_id", "feishu_union_id", "timezone",
                      "manager_email", "active"),
            key=("email",),
            description="internal people; role is admin, manager, csm or viewer",
        ),
        KindSpec(
            "accounts",
            required=("external_id", "name"),
            optional=(
                "owner_email", "owner", "segment", "plan", "arr", "currency", "seats", "contract_start",
                "renewal_date", "status", "stage",
            ),
            key=("external_id",),
            description="customer accounts; status is active or churned, stage a lifecycle stage name; owner is "
            "a user's name or e-mail",
        ),
        KindSpec(
            "contacts",
            required=("account_external_id", "name"),
            optional=(
                "email", "role", "slack_user_id", "telegram_user_id", "slack_channel_id", "telegram_chat_id",
                "feishu_open_id", "feishu_union_id", "feishu_chat_id", "account_name", "first_name", "last_name",
            ),
            key=("account_external_id", "email"),
            description="people at customers; keyed by e-mail, or by name when there is no e-mail; account_name "
            "or first_name/last_name may replace account_external_id or name",
            stand_ins={"account_external_id": ("account_name",), "name": ("first_name", "last_name")},
        ),
        KindSpec(
            "usage",
            required=("account_external_id", "date"),
            optional=("active_users", "logins", "feature", "events"),
            key=("account_external_id", "feature", "date"),
            description="daily usage; an empty feature is the account total, empty numbers are 0",
        ),
        KindSpec(
            "tickets",
            required=("account_external_id", "ticket_id", "opened_at"),
            optional=("closed_at", "priority", "status"),
            key=("account_external_id", "ticket_id"),
            description="support tickets; priority is low, normal, high or urgent",
        ),
        KindSpec(
            "nps",
            required=("account_external_id", "score", "responded_at"),
            optional=("contact_email", "comment", "response_id"),
            key=("account_external_id", "contact_email", "responded_at"),
            description="NPS answers, score 0-10; rows without a score are skipped (unanswered surveys)",
        ),
        KindSpec(
            "rates",
            required=("date", "currency", "rate"),
            optional=("base",),
            key=("date", "currency", "base"),
            description="exchange rates: 1 currency = rate base on date; base defaults to the reporting currency",
        ),
    )
}


class MissingColumns(ImportFailed):
    """Required columns are absent from the file; `missing` names them (csbot's names)."""

    def __init__(self, problems: list[str], missing: list[str]) -> None:
        super().__init__(problems)
        self.missing = missing


@dataclass(frozen=True)
class NpsCounts:
    """The scores of an NPS file by category, and their NPS (% promoters − % detractors, one decimal)."""

    promoters: int
    passives: int
    detractors: int

    @property
    def responses(self) -> int:
        return self.promoters + self.passives + self.detractors

    @property
    def nps(self) -> float | None:
        return nps_value(self.promoters, self.detractors, self.responses)


@dataclass
class ImportReport:
    """What an import did (or, on a dry run, would do). `rows` counts skipped rows too."""

    kind: str
    rows: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    skipped: list[int] = field(default_factory=list)  # row numbers left out on purpose (see skipped_reason)
    skipped_reason: str = ""
    nps: NpsCounts | None = None  # an nps import: the file's scores


class Preset(BaseModel):
    """Header names of one CRM's exports per kind (`config/presets.toml`); "" marks a header not imported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    accounts: dict[str, str] = Field(default_factory=dict)
    contacts: dict[str, str] = Field(default_factory=dict)

    def columns(self, kind: str) -> dict[str, str] | None:
        return {"accounts": self.accounts, "contacts": self.contacts}.get(kind)


@lru_cache(maxsize=4)
def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """The CRM presets by name; a preset naming a column csbot does not have is a `ConfigError`."""
    source = path or DEFAULT_PRESETS_FILE
    data = read_toml(source, "CRM presets")
    presets: dict[str, Preset] = {}
    problems: list[str] = []
    for name, body in data.items():
        try:
            preset = Preset.model_validate(body)
        except ValidationError as exc:
            problems += [f"{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            continue
        for kind in ("accounts", "contacts"):
            known = set(KINDS[kind].columns)
            problems += [
                f"{name}.{kind}: {header!r} maps to unknown column {target!r}"
                for header, target in (preset.columns(kind) or {}).items() if target and target not in known
            ]
        presets[name] = preset
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return presets


def parse_column_map(pairs: Iterable[str]) -> dict[str, str]:
    """`Their Column=our_column` pairs (split at the last "="; an empty right side ignores the column)."""
    out: dict[str, str] = {}
    for pair in pairs:
        header, sep, target = pair.rpartition("=")
        if not sep or not header.strip():
            raise ImportFailed([f"column map {pair!r}: write it as 'Their Column=our_column'"])
        out[header.strip()] = target.strip().lower()
    return out


def import_csv(
    session: Session,
    kind: str,
    path: Path,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    column_map: dict[str, str] | None = None,
    preset: str | None = None,
    account: str | None = None,
    date_format: str | None = None,
    chunk_rows: int = USAGE_CHUNK_ROWS,
) -> ImportReport:
    """Validate the CSV file at `path` as `kind`, then upsert it in the caller's transaction (no commit).

    `preset` names a CRM preset (accounts and contacts), `column_map` maps headers onto csbot's columns (it wins
    over the preset), `account` (an external id or name) says that every row of a file without an account column
    belongs to that account, `date_format` is auto (default), iso, day-first, month-first or a strptime pattern.

    Raises `ImportFailed` listing every bad row (nothing written) or `MissingColumns`. `progress` gets (done,
    total) where total is twice the data rows: each row counts once validated, once written or found unchanged.
    A usage file is read `chunk_rows` rows at a time (its total is counted from the file's lines), checked as a
    whole, then written in bulk (COPY on PostgreSQL).
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise ImportFailed([f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}"])
    mapping = _Mapping.build(spec, preset, column_map or {})
    if kind == "usage":
        return _import_usage_file(
            session, spec, Path(path), mapping, account=account, date_format=date_format, dry_run=dry_run,
            progress=progress, chunk_rows=chunk_rows,
        )
    provided = {"account_external_id"} if account is not None else set()
    read = _read_frame(Path(path), spec, mapping, provided)
    frame, rownums = read.frame, read.rownums
    report = ImportReport(kind=kind, rows=len(frame), warnings=read.warnings, dry_run=dry_run)
    meter = _Meter(progress, 2 * len(frame))
    problems = _Problems(spec.columns, read.display)
    if kind == "nps":
        frame["row_key"] = _row_keys(read.raw)
        answered = frame["score"].str.strip().to_numpy() != ""
        report.skipped = rownums[~answered].tolist()
        report.skipped_reason = "no score (unanswered surveys)"
        frame, rownums = _keep(frame, rownums, answered)
    if account is not None:
        frame["account_external_id"] = _account_by_id_or_name(session, account)
    _check_cells(spec, frame, rownums, problems)
    frame, rownums = _normalise_dates(frame, rownums, date_format, problems)
    frame, rownums = _derive(session, spec, frame, rownums, problems, read.display)
    importer = _IMPORTERS[kind]
    counts = importer(session, frame, rownums, problems, meter, dry_run)
    report.inserted, report.updated, report.unchanged = counts.inserted, counts.updated, counts.unchanged
    report.nps = counts.nps
    meter.finish()
    return report


MAX_CELL = 1_000  # characters: longer is no name, id or date (and overflows PostgreSQL's index rows)
MAX_FREE_TEXT = 10_000  # characters of free text (an NPS comment)
_FREE_TEXT = frozenset({"comment"})
_CELL_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # PostgreSQL cannot store NUL; none belongs in a cell


def _too_long(limit: int) -> Callable[[str], str]:
    return lambda value: f"longer than {limit:,} characters ({len(value):,})"


def _check_cells(spec: KindSpec, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems) -> None:
    """Cells with control characters or too long to be what their column holds are row/column errors."""
    for column in (c for c in frame.columns if c in spec.columns):
        codes, uniques = pd.factorize(frame[column], use_na_sentinel=False)
        _check_distinct(column, codes, np.asarray(uniques, dtype=object), rownums, problems)


def _check_distinct(
    column: str, codes: np.ndarray, texts: np.ndarray, rownums: np.ndarray, problems: _Problems
) -> None:
    """`_check_cells` for one column given as codes into its distinct cells: each distinct cell is checked once."""
    values = pd.Series(texts, dtype=object).astype(str)
    limit = MAX_FREE_TEXT if column in _FREE_TEXT else MAX_CELL
    control = values.str.contains(_CELL_CONTROL, regex=True).to_numpy(dtype=bool)
    long = (values.str.len() > limit).to_numpy(dtype=bool) & ~control
    if control.any():
        bad = control[codes]
        problems.add_mask(rownums[bad], column, texts[codes[bad]], lambda _v: "contains a control character")
    if long.any():
        bad = long[codes]
        problems.add_mask(rownums[bad], column, texts[codes[bad]], _too_long(limit))


def stage_names() -> tuple[list[str], str]:
    """The valid stage names and the initial stage: from the configured stage machine when it is available."""
    try:
        module = importlib.import_module("lifecycle.scoring.stages")
    except ModuleNotFoundError as exc:
        if exc.name != "lifecycle.scoring.stages":
            raise
        return list(DEFAULT_STAGES), DEFAULT_STAGES[0]
    machine = module.load_stage_machine()
    return list(machine.stage_names), str(machine.initial)


# --- reading and reporting ---


def _header_key(header: object) -> str:
    """How headers are matched: case-insensitive, with runs of blanks as one space."""
    return " ".join(str(header).split()).casefold()


@dataclass(frozen=True)
class _Mapping:
    """Header → column for one import: the preset's entries, overridden by the explicit map."""

    targets: dict[str, str]  # header key → csbot column ("" = ignore)
    preset: str | None = None
    preset_headers: dict[str, list[str]] = field(default_factory=dict)  # column → the preset's header names

    @classmethod
    def build(cls, spec: KindSpec, preset: str | None, column_map: Mapping[str, str]) -> _Mapping:
        targets: dict[str, str] = {}
        headers: dict[str, list[str]] = {}
        if preset is not None:
            presets = load_presets()
            chosen = presets.get(preset.lower())
            if chosen is None:
                raise ImportFailed([f"unknown preset {preset!r}; choose one of: {', '.join(presets)}"])
            columns = chosen.columns(spec.name)
            if columns is None:
                raise ImportFailed([f"the {preset} preset is for accounts and contacts, not {spec.name}"])
            for header, target in columns.items():
                targets[_header_key(header)] = target
                if target:
                    headers.setdefault(target, []).append(header)
        known = set(spec.columns)
        bad = [f"{h}={t}" for h, t in column_map.items() if t and t not in known]
        if bad:
            raise ImportFailed([
                f"column map {', '.join(bad)}: {spec.name} has no such column (its columns: {', '.join(spec.columns)})"
            ])
        targets.update({_header_key(h): t for h, t in column_map.items()})
        return cls(targets=targets, preset=preset.lower() if preset else None, preset_headers=headers)


@dataclass
class _Read:
    frame: pd.DataFrame  # csbot's columns, text cells
    rownums: np.ndarray  # spreadsheet row number of each frame row
    display: dict[str, str]  # csbot column → the file's header
    warnings: list[str]
    raw: pd.DataFrame  # every column of the file, aligned with `frame`


def _read_csv(path: Path, **options: Any) -> Any:
    """`pd.read_csv` of every cell as text, with csbot's messages for unreadable files (`chunksize` streams)."""
    try:
        return pd.read_csv(
            path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig",
            skip_blank_lines=False, **options,
        )
    except FileNotFoundError as exc:
        raise ImportFailed([f"cannot read {path}: no such file"]) from exc
    except UnicodeDecodeError as exc:
        raise ImportFailed([f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    except pd.errors.EmptyDataError as exc:
        raise ImportFailed([f"{path.name} is empty: the first row must name the columns"]) from exc
    except pd.errors.ParserError as exc:
        raise ImportFailed([f"{path.name} is not valid CSV: {exc}"]) from exc


def _chunks_of(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The file's data rows, `rows` at a time (the same messages as `_read_csv` when a later chunk is bad)."""
    reader = _read_csv(path, chunksize=rows)
    with reader:
        while True:
            try:
                chunk = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise ImportFailed([f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
            except pd.errors.ParserError as exc:
                raise ImportFailed([f"{path.name} is not valid CSV: {exc}"]) from exc
            yield chunk


@dataclass(frozen=True)
class _Headers:
    renames: dict[str, str]  # the file's header → csbot column
    display: dict[str, str]  # csbot column → the file's header
    warnings: list[str]


def _map_headers(
    path: Path, headers: Sequence[object], spec: KindSpec, mapping: _Mapping, provided: set[str]
) -> _Headers:
    """Map the file's headers onto csbot's columns; raise when one is given twice or a required one is missing.

    `provided` columns come from elsewhere (e.g. one account for the whole file): the file must not have them."""
    known = set(spec.columns)
    renames: dict[str, str] = {}
    display: dict[str, str] = {}
    warnings: list[str] = []
    for header in headers:
        label = str(header).strip()
        target = mapping.targets.get(_header_key(header), label.lower())
        if target == "":
            continue  # mapped away on purpose
        if target not in known:
            warnings.append(f"unknown column {label!r} ignored")
            continue
        if target in display:
            raise ImportFailed([f"columns {display[target]!r} and {label!r} both give {target!r}"])
        if target in provided:
            raise ImportFailed([f"column {label!r} gives {target!r}, which is already given for the whole file"])
        renames[str(header)] = target
        display[target] = label
    present = set(display) | provided
    missing = [
        c for c in spec.required
        if c not in present and not any(s in present for s in spec.stand_ins.get(c, ()))
    ]
    if missing:
        found = ", ".join(str(h) for h in headers) or "none"
        plural = "s" if len(missing) > 1 else ""
        names = [
            f"{c} (or {' / '.join(spec.stand_ins[c])})" if c in spec.stand_ins else c for c in missing
        ]
        hints = [
            f"{c} from {' or '.join(repr(h) for h in mapping.preset_headers[c])}"
            for c in missing if c in mapping.preset_headers
        ]
        hint = f"; the {mapping.preset} preset reads {', '.join(hints)}" if hints else ""
        raise MissingColumns(
            [f"missing required column{plural}: {', '.join(names)} (found: {found}){hint}"], missing
        )
    return _Headers(renames, display, warnings)


def _blank_rows(raw: pd.DataFrame) -> np.ndarray:
    return (raw == "").all(axis=1).to_numpy() if len(raw.columns) else np.ones(len(raw), dtype=bool)


def _read_frame(path: Path, spec: KindSpec, mapping: _Mapping, provided: set[str]) -> _Read:
    """Read every cell as text, map headers to our names, drop blank lines; number rows like a spreadsheet."""
    raw = _read_csv(path)
    headers = _map_headers(path, list(raw.columns), spec, mapping, provided)
    frame = raw[list(headers.renames)].rename(columns=headers.renames)
    rownums = np.arange(2, len(frame) + 2, dtype=np.int64)
    blank = _blank_rows(raw)
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
        raw = raw.loc[~blank].reset_index(drop=True)
        rownums = rownums[~blank]
    return _Read(frame, rownums, headers.display, headers.warnings, raw)


def _keep(frame: pd.DataFrame, rownums: np.ndarray, keep: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    if keep.all():
        return frame, rownums
    return frame.loc[keep].reset_index(drop=True), rownums[keep]


def _row_keys(raw: pd.DataFrame) -> np.ndarray:
    """A stable key per CSV row from all of its cells; the k-th repeat of an identical row gets "#k"."""
    hashes = pd.util.hash_pandas_object(raw, index=False).to_numpy(dtype=np.uint64)
    repeat = pd.Series(hashes).groupby(hashes).cumcount().to_numpy()
    return np.array(
        [f"row:{h:016x}" + (f"#{k}" if k else "") for h, k in zip(hashes.tolist(), repeat.tolist(), strict=True)],
        dtype=object,
    )


def _account_by_id_or_name(session: Session, account: str) -> str:
    """The external id of the account named `account` (its external id, else its exact, case-blind name)."""
    table = _table(Account)
    wanted = account.strip()
    found = session.execute(select(table.c.external_id).where(table.c.external_id == wanted)).scalars().all()
    if not found:
        query = select(table.c.external_id).where(table.c.name_key == wanted.casefold())
        found = session.execute(query).scalars().all()
    if len(found) == 1:
        return str(found[0])
    if found:
        raise ImportFailed([f"{len(found)} accounts are named {account!r}; give the external id instead"])
    raise ImportFailed([f"no account with external id or name {account!r}"])


# --- dates written the local way (31/01/2026, 1/31/2026 10:00 PM) ---

_LOCAL_DATE_RE = re.compile(
    r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})"
    r"(?:[ T,]+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm])?)?"
)


def _local_parts(text: str) -> tuple[int, int, int, int, int, int, str] | None:
    found = _LOCAL_DATE_RE.fullmatch(text)
    if found is None:
        return None
    a, b, year, hour, minute, second, half = found.groups()
    return (
        int(a), int(b), int(year) + (2000 if len(year) == 2 else 0), int(hour or 0), int(minute or 0),
        int(second or 0), (half or "").lower(),
    )


def _detect_order(values: Iterable[tuple[str, str]]) -> str | None:
    """"day-first" or "month-first" from (column, text) pairs, None when no date is written that way.

    Raises ImportFailed when the file mixes both, or when no day is above 12 (nothing tells them apart)."""
    day_first: tuple[str, str] | None = None
    month_first: tuple[str, str] | None = None
    example: tuple[str, str] | None = None
    for column, text in values:
        parts = _local_parts(text)
        if parts is None:
            continue
        example = example or (column, text)
        if parts[0] > 12 and parts[1] <= 12:
            day_first = day_first or (column, text)
        elif parts[1] > 12 and parts[0] <= 12:
            month_first = month_first or (column, text)
    if day_first and month_first:
        raise ImportFailed([
            f"dates are written both day-first ({day_first[0]} {day_first[1]!r}) and month-first "
            f"({month_first[0]} {month_first[1]!r}); fix the file or give the date format"
        ])
    if day_first:
        return "day-first"
    if month_first:
        return "month-first"
    if example:
        raise ImportFailed([
            f"dates such as {example[1]!r} ({example[0]}) read both day-first and month-first; give the date format "
            "(--date-format day-first or month-first)"
        ])
    return None


def _convert_date(text: str, order: str, with_time: bool) -> str | None:
    """The ISO text of a date written in `order` (or a strptime pattern); the text itself when it is not written
    the local way (left to the validator); None when it is but is no real date."""
    if _DATE_RE.match(text):
        # A date column given an ISO date-time keeps its day (CRM exports often add a time).
        return text if with_time or len(text) == 10 else text[:10]
    try:
        if "%" in order:
            moment = datetime.strptime(text, order)
        else:
            parts = _local_parts(text)
            if parts is None:
                return text
            a, b, year, hour, minute, second, half = parts
            day, month = (a, b) if order == "day-first" else (b, a)
            if half:
                if not 1 <= hour <= 12:
                    return None
                hour = hour % 12 + (12 if half == "pm" else 0)
            moment = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    return moment.isoformat() if with_time else moment.date().isoformat()


def _normalise_dates(
    frame: pd.DataFrame, rownums: np.ndarray, date_format: str | None, problems: _Problems
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rewrite the date cells as ISO text (each distinct value once); rows with an impossible date become
    problems and leave the frame."""
    columns = [c for c in (*DATE_COLUMNS, *MOMENT_COLUMNS) if c in frame.columns]
    # Each column as codes into its distinct cells: a usage file has millions of rows but few distinct days.
    factors = {c: pd.factorize(frame[c], use_na_sentinel=False) for c in columns}
    distinct = {c: [str(u) for u in factors[c][1]] for c in columns}
    order, converted = _convert_distinct_dates(distinct, date_format)
    keep = np.ones(len(frame), dtype=bool)
    for column in columns:
        codes = factors[column][0]
        new_texts, impossible = converted[column]
        keep &= ~_report_impossible(column, codes, new_texts, impossible, rownums, order, problems)
        if new_texts != distinct[column]:
            frame[column] = np.asarray(new_texts, dtype=object)[codes]
    return _keep(frame, rownums, keep)


def _date_order(distinct: Mapping[str, Sequence[str]], date_format: str | None) -> str | None:
    """How the file writes its dates: None (ISO), day-first, month-first or a strptime pattern."""
    fmt = (date_format or "auto").strip()
    if fmt.lower() in DATE_FORMATS:
        fmt = fmt.lower()
    elif "%" not in fmt:
        raise ImportFailed([
            f"date format {date_format!r}: use auto, iso, day-first, month-first or a pattern such as %d.%m.%Y %H:%M"
        ])
    if fmt == "auto":
        return _detect_order((c, t) for c in distinct for t in dict.fromkeys(u.strip() for u in distinct[c]))
    return None if fmt == "iso" else fmt


def _convert_distinct_dates(
    distinct: Mapping[str, Sequence[str]], date_format: str | None
) -> tuple[str | None, dict[str, tuple[list[str], np.ndarray]]]:
    """The file's date order and, per date column, its distinct cells as ISO text (stripped) and which of them
    are impossible dates."""
    order = _date_order(distinct, date_format)
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for column, texts in distinct.items():
        with_time = column in MOMENT_COLUMNS
        new_texts: list[str] = []
        impossible = np.zeros(len(texts), dtype=bool)
        for i, raw in enumerate(texts):
            text = raw.strip()
            if text and order is None:
                text = text if with_time or not _DATE_RE.match(text) else text[:10]
            elif text and order is not None:
                converted = _convert_date(text, order, with_time)
                impossible[i] = converted is None
                text = converted or text
            new_texts.append(text)
        out[column] = (new_texts, impossible)
    return order, out


def _report_impossible(
    column: str, codes: np.ndarray, new_texts: list[str], impossible: np.ndarray, rownums: np.ndarray,
    order: str | None, problems: _Problems,
) -> np.ndarray:
    """Report the rows whose date cannot exist; returns their mask."""
    if not impossible.any():
        return np.zeros(len(codes), dtype=bool)
    bad = impossible[codes]
    cells = np.asarray(new_texts, dtype=object)[codes]
    problems.add_mask(rownums[bad], column, cells[bad], _not_in_format(str(order)))
    return bad


def _not_in_format(order: str) -> Callable[[str], str]:
    described = order if order in ("day-first", "month-first") else f"{order!r}"

    def reason(text: str) -> str:
        return f"not a date in the {described} format ({text!r})"

    return reason


# --- columns that stand in for others ---


def _derive(
    session: Session, spec: KindSpec, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems,
    display: Mapping[str, str],
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fill csbot's columns from the stand-ins (owner, account_name, first/last name); rows whose stand-in
    cannot be resolved become problems and leave the frame."""
    keep = np.ones(len(frame), dtype=bool)
    if "owner" in frame.columns:
        if "owner_email" in frame.columns:
            raise ImportFailed([
                f"columns {display['owner_email']!r} and {display['owner']!r} both give the owner; keep one"
            ])
        frame["owner_email"], bad = _owners(session, frame["owner"], rownums, problems)
        keep &= ~bad
        frame = frame.drop(columns=["owner"])
    if "first_name" in frame.columns or "last_name" in frame.columns:
        empty = pd.Series("", index=frame.index)
        first = frame.get("first_name", empty).str.strip()
        last = frame.get("last_name", empty).str.strip()
        joined = (first + " " + last).str.strip()
        if "email" in frame.columns:
            joined = joined.where(joined != "", frame["email"].str.strip())
        if "name" in frame.columns:
            frame["name"] = frame["name"].where(frame["name"].str.strip() != "", joined)
        else:
            frame["name"] = joined
        frame = frame.drop(columns=[c for c in ("first_name", "last_name") if c in frame.columns])
    if "account_name" in frame.columns:
        given = frame["account_external_id"].str.strip() if "account_external_id" in frame.columns else None
        resolved, bad = _accounts_by_name(session, frame["account_name"], rownums, problems, given)
        frame["account_external_id"] = resolved
        keep &= ~bad
        frame = frame.drop(columns=["account_name"])
    return _keep(frame, rownums, keep)


def _owners(
    session: Session, owners: pd.Series, rownums: np.ndarray, problems: _Problems
) -> tuple[pd.Series, np.ndarray]:
    """Owner names or e-mails → e-mails of csbot users (a name must match exactly one user, case-blind)."""
    table = _table(User)
    emails: set[str] = set()
    by_name: dict[str, list[str]] = {}
    for email, name in session.execute(select(table.c.email, table.c.name)):
        emails.add(str(email).lower())
        by_name.setdefault(_header_key(name), []).append(str(email).lower())
    resolved: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for value in pd.unique(owners.str.strip()).tolist():
        text = str(value)
        if not text:
            resolved[text] = ""
        elif "@" in text:
            if text.lower() in emails:
                resolved[text] = text.lower()
            else:
                reasons[text] = f"no user with email {text.lower()!r}"
        else:
            matches = by_name.get(_header_key(text), [])
            if len(matches) == 1:
                resolved[text] = matches[0]
            elif matches:
                reasons[text] = f"{len(matches)} users are named {text!r} ({', '.join(sorted(matches))}); use an e-mail"
            else:
                reasons[text] = f"no user named {text!r} (import them as users first, or leave the owner out)"
    stripped = owners.str.strip()
    bad = stripped.isin(list(reasons)).to_numpy()
    problems.add_mask(rownums[bad], "owner", stripped.to_numpy()[bad], lambda t: reasons[t])
    return stripped.map(lambda t: resolved.get(t, "")), bad


def _accounts_by_name(
    session: Session, names: pd.Series, rownums: np.ndarray, problems: _Problems, given: pd.Series | None
) -> tuple[pd.Series, np.ndarray]:
    """Account names → external ids (exact, case-blind); a row that already names its external id keeps it."""
    stripped = names.str.strip()
    needed = stripped != "" if given is None else (given == "") & (stripped != "")
    keys = sorted({str(v).casefold() for v in stripped[needed].tolist()})
    table = _table(Account)
    found: dict[str, list[str]] = {}
    for batch in _batches(keys):
        query = select(table.c.name_key, table.c.external_id).where(table.c.name_key.in_(batch))
        for key, ext in session.execute(query):
            found.setdefault(str(key), []).append(str(ext))
    reasons: dict[str, str] = {}
    resolved: dict[str, str] = {}
    for text in stripped[needed].unique().tolist():
        matches = found.get(str(text).casefold(), [])
        if len(matches) == 1:
            resolved[text] = matches[0]
        elif matches:
            reasons[text] = f"{len(matches)} accounts are named {text!r}; give the account's external id"
        else:
            reasons[text] = f"no account named {text!r}"
    bad = (needed & stripped.isin(list(reasons))).to_numpy()
    problems.add_mask(rownums[bad], "account_name", stripped.to_numpy()[bad], lambda t: reasons[t])
    by_name = stripped.map(lambda t: resolved.get(t, ""))
    out = by_name if given is None else given.where(given != "", by_name)
    return out, bad


class _Problems:
    """Collects bad cells; big batches stay as arrays and only the reported ones are formatted."""

    def __init__(self, columns: Sequence[str], display: Mapping[str, str]) -> None:
        self._order = {c: i for i, c in enumerate(columns)}
        self._display = display
        self._rows: list[np.ndarray] = []
        self._cols: list[str] = []
        self._values: list[np.ndarray] = []
        self._reasons: list[Callable[[str], str]] = []
        self._single: list[tuple[int, str, str]] = []

    def add(self, row: int, column: str, reason: str) -> None:
        self._single.append((row, column, reason))

    def add_mask(
        self, rows: np.ndarray, column: str, values: np.ndarray, reason: Callable[[str], str]
    ) -> None:
        if len(rows):
            self._rows.append(rows)
            self._cols.append(column)
            self._values.append(values)
            self._reasons.append(reason)

    def __len__(self) -> int:
        return len(self._single) + sum(len(r) for r in self._rows)

    def raise_if_any(self) -> None:
        if len(self):
            raise ImportFailed(self.messages())

    def messages(self, cap: int = MAX_PROBLEMS) -> list[str]:
        """Problems in row, then column order; at most `cap` of them plus a count of the rest."""
        rows = [np.array([p[0] for p in self._single], dtype=np.int64), *self._rows]
        cols = [np.array([self._order[p[1]] for p in self._single], dtype=np.int64)]
        cols += [
            np.full(len(r), self._order[c], dtype=np.int64)
            for r, c in zip(self._rows, self._cols, strict=True)
        ]
        groups = [np.full(len(r), g, dtype=np.int64) for g, r in enumerate(rows)]
        positions = [np.arange(len(r), dtype=np.int64) for r in rows]
        all_rows, all_cols = np.concatenate(rows), np.concatenate(cols)
        all_groups, all_pos = np.concatenate(groups), np.concatenate(positions)
        order = np.lexsort((all_pos, all_cols, all_rows))
        out: list[str] = []
        for i in order[:cap]:
            group, pos = int(all_groups[i]), int(all_pos[i])
            if group == 0:
                row, column, reason = self._single[pos]
            else:
                row, column = int(all_rows[i]), self._cols[group - 1]
                reason = self._reasons[group - 1](str(self._values[group - 1][pos]))
            out.append(f"row {row}, column {self._display.get(column, column)}: {reason}")
        if len(order) > cap:
            out.append(f"… and {len(order) - cap} more")
        return out


class _Meter:
    """Forwards monotonic progress to the caller's callback, if any."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self._callback = callback
        self.total = total
        self.done = 0

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        if self._callback is not None:
            self._callback(self.done, self.total)

    def finish(self) -> None:
        self.advance(self.total - self.done)


@dataclass
class _Counts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    nps: NpsCounts | None = None


# --- cell parsers shared by the row models and the vectorised usage path ---

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")
_CURRENCY_RE = re.compile(r"[A-Za-z]{3}")


def _not_whole(text: str) -> str:
    return f"not a whole number ({text!r})"


def _negative(text: str) -> str:
    return f"must not be negative ({text!r})"


def _not_date(text: str) -> str:
    return f"not a date (expected YYYY-MM-DD, got {text!r})"


def _no_account(text: str) -> str:
    return f"no account with external_id {text!r}"


def _missing(_text: str = "") -> str:
    return "missing value"


def parse_date(text: str) -> date:
    """An ISO 8601 calendar date, YYYY-MM-DD."""
    try:
        if _DATE_RE.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError(_not_date(text))


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 date or date-time, with or without offset, as naive UTC; a bare date is midnight."""
    try:
        if _DATE_RE.match(text):
            value = datetime.fromisoformat(text)
            return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    except ValueError:
        pass
    raise ValueError(f"not a date-time (expected e.g. 2026-03-01T10:00:00, got {text!r})")


def parse_count(text: str) -> int:
    """A whole number >= 0 ("12" or "12.0")."""
    try:
        # float() accepts "1_000" but pandas does not; refuse it so both validation paths agree.
        value = float(text) if "_" not in text else math.nan
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise ValueError(_not_whole(text))
    if value < 0:
        raise ValueError(_negative(text))
    return int(value)


def parse_amount(text: str) -> float:
    """A decimal amount >= 0 such as "12000.50"."""
    try:
        value = float(text) if "_" not in text else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a number ({text!r})")
    if value < 0:
        raise ValueError(_negative(text))
    return value


def _parse_score(text: str) -> int:
    value = parse_count(text) if not text.startswith("-") else -1
    if not 0 <= value <= 10:
        raise ValueError(f"must be a whole number from 0 to 10 (got {text!r})")
    return value


def _parse_email(text: str) -> str:
    if not _EMAIL_RE.fullmatch(text):
        raise ValueError(f"not an e-mail address ({text!r})")
    return text.lower()


def _parse_timezone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone ({text!r}); use a name like Asia/Shanghai") from None
    return text


def _parse_currency(text: str) -> str:
    if not _CURRENCY_RE.fullmatch(text):
        raise ValueError(f"not a 3-letter currency code ({text!r})")
    return text.upper()


def _parse_rate(text: str) -> float:
    value = parse_amount(text)
    if value == 0:
        raise ValueError(f"an exchange rate must be above 0 ({text!r})")
    return value


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse_bool(text: str) -> bool:
    value = _BOOLEANS.get(text.strip().casefold())
    if value is None:
        raise ValueError(f"not yes/no ({text!r})")
    return value


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {text!r})")
        return value

    return parse


def _text(text: str) -> str:
    return text


_T = TypeVar("_T")


def _optional(parse: Callable[[str], _T]) -> Callable[[Any], _T | None]:
    def run(value: Any) -> _T | None:
        text = "" if value is None else str(value).strip()
        return parse(text) if text else None

    return run


def _required(parse: Callable[[str], _T]) -> Callable[[Any], _T]:
    def run(value: Any) -> _T:
        text = "" if value is None else str(value).strip()
        if not text:
            raise ValueError(_missing())
        return parse(text)

    return run


ReqText = Annotated[str, BeforeValidator(_required(_text))]
OptText = Annotated[str | None, BeforeValidator(_optional(_text))]
ReqEmail = Annotated[str, BeforeValidator(_required(_parse_email))]
OptEmail = Annotated[str | None, BeforeValidator(_optional(_parse_email))]
OptAmount = Annotated[float | None, BeforeValidator(_optional(parse_amount))]
OptCount = Annotated[int | None, BeforeValidator(_optional(parse_count))]
OptDate = Annotated[date | None, BeforeValidator(_optional(parse_date))]
ReqMoment = Annotated[datetime, BeforeValidator(_required(parse_datetime))]
OptMoment = Annotated[datetime | None, BeforeValidator(_optional(parse_datetime))]


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class UserRow(_Row):
    email: ReqEmail
    name: ReqText
    role: Annotated[str, BeforeValidator(_required(_one_of(ROLES)))]
    slack_user_id: OptText = None
    telegram_user_id: OptText = None
    feishu_open_id: OptText = None
    feishu_union_id: OptText = None
    timezone: Annotated[str | None, BeforeValidator(_optional(_parse_timezone))] = None
    manager_email: OptEmail = None
    active: Annotated[bool | None, BeforeValidator(_optional(_parse_bool))] = None


class AccountRow(_Row):
    external_id: ReqText
    name: ReqText
    owner_email: OptEmail = None
    segment: OptText = None
    plan: OptText = None
    arr: OptAmount = None
    currency: Annotated[str | None, BeforeValidator(_optional(_parse_currency))] = None
    seats: OptCount = None
    contract_start: OptDate = None
    renewal_date: OptDate = None
    status: Annotated[str | None, BeforeValidator(_optional(_one_of(ACCOUNT_STATUSES)))] = None
    stage: Annotated[str | None, BeforeValidator(_optional(str.lower))] = None


class RateRow(_Row):
    """1 `currency` = `rate` `base` on `date`."""

    date: Annotated[date, BeforeValidator(_required(parse_date))]
    currency: Annotated[str, BeforeValidator(_required(_parse_currency))]
    rate: Annotated[float, BeforeValidator(_required(_parse_rate))]
    base: Annotated[str | None, BeforeValidator(_optional(_parse_currency))] = None


class _AccountRowBase(_Row):
    """A row that belongs to an account named by its external id."""

    account_external_id: ReqText


class ContactRow(_AccountRowBase):
    name: ReqText
    email: OptEmail = None
    role: OptText = None
    slack_user_id: OptText = None
    telegram_user_id: OptText = None
    slack_channel_id: OptText = None
    telegram_chat_id: OptText = None
    feishu_open_id: OptText = None
    feishu_union_id: OptText = None
    feishu_chat_id: OptText = None


class TicketRow(_AccountRowBase):
    ticket_id: ReqText
    opened_at: ReqMoment
    closed_at: OptMoment = None
    priority: Annotated[str | None, BeforeValidator(_optional(_one_of(TICKET_PRIORITIES)))] = None
    status: Annotated[str | None, BeforeValidator(_optional(str.lower))] = None


class NpsRow(_AccountRowBase):
    score: Annotated[int, BeforeValidator(_required(_parse_score))]
    responded_at: ReqMoment
    contact_email: OptEmail = None
    comment: OptText = None
    response_id: OptText = None
    row_key: str = ""  # the fingerprint of the CSV row, for rows without an e-mail or a response id

    @property
    def contact_key(self) -> str:
        """Who answered as stored: the e-mail, else the response id, else the row's fingerprint (never "", so
        anonymous answers given at the same moment stay apart)."""
        if self.contact_email:
            return self.contact_email
        return f"response:{self.response_id}" if self.response_id else self.row_key


_RowT = TypeVar("_RowT", bound=_Row)
_AccRowT = TypeVar("_AccRowT", bound=_AccountRowBase)


def _validate(
    frame: pd.DataFrame, rownums: np.ndarray, model: type[_RowT], problems: _Problems, meter: _Meter
) -> list[tuple[int, _RowT]]:
    """Run the pydantic row model over every row; collect all errors instead of stopping at the first."""
    good: list[tuple[int, _RowT]] = []
    step = 1_000
    for i, (rownum, record) in enumerate(zip(rownums.tolist(), frame.to_dict("records"), strict=True)):
        try:
            good.append((rownum, model.model_validate(record)))
        except ValidationError as exc:
            for err in exc.errors():
                column = str(err["loc"][0]) if err["loc"] else next(iter(record), "")
                ctx = err.get("ctx") or {}
                problems.add(rownum, column, str(ctx["error"]) if "error" in ctx else err["msg"])
        if (i + 1) % step == 0:
            meter.advance(step)
    meter.advance(len(frame) % step)
    return good


def _first_seen(problems: _Problems, column: str, what: str) -> Callable[[Any, int], bool]:
    """A checker that reports repeats of a natural key within the file (True when the row is a repeat)."""
    seen: dict[Any, int] = {}

    def check(key: Any, rownum: int) -> bool:
        first = seen.setdefault(key, rownum)
        if first != rownum:
            problems.add(rownum, column, f"duplicate of row {first} (same {what})")
            return True
        return False

    return check


# --- database helpers ---


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined]


def _batches(values: Iterable[_T], size: int = _IN_CHUNK) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _account_ids(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    table = _table(Account)
    for batch in _batches(sorted(set(external_ids))):
        for ext, acc_id in session.execute(
            select(table.c.external_id, table.c.id).where(table.c.external_id.in_(batch))
        ):
            ids[ext] = acc_id
    return ids


def _user_ids(session: Session) -> dict[str, int]:
    table = _table(User)
    return {email.lower(): uid for uid, email in session.execute(select(table.c.id, table.c.email))}


def _existing(
    session: Session, model: type[SQLModel], account_ids: Iterable[int], columns: Sequence[str]
) -> list[dict[str, Any]]:
    """Stored rows of `model` for the given accounts, one query per batch of accounts."""
    table = _table(model)
    cols = [table.c.id, table.c.account_id, *(table.c[c] for c in columns)]
    out: list[dict[str, Any]] = []
    for batch in _batches(sorted(set(account_ids))):
        for row in session.execute(select(*cols).where(table.c.account_id.in_(batch))).mappings():
            out.append(dict(row))
    return out


def _resolve_accounts(
    session: Session, rows: Sequence[tuple[int, _AccRowT]], problems: _Problems
) -> list[tuple[int, _AccRowT, int]]:
    """Attach account ids; rows naming an unknown account become problems."""
    ids = _account_ids(session, (r.account_external_id for _, r in rows))
    out = []
    for rownum, row in rows:
        if row.account_external_id in ids:
            out.append((rownum, row, ids[row.account_external_id]))
        else:
            problems.add(rownum, "account_external_id", _no_account(row.account_external_id))
    return out


def _pick(value: Any, stored: Mapping[str, Any] | None, column: str, default: Any) -> Any:
    """The value to store: the file's, else what is stored, else the default."""
    if value is not None:
        return value
    if stored is not None:
        return stored[column]
    return default


@dataclass
class _Plan:
    """What to write for one kind: full rows to insert and changed rows (with `id`) to update."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0

    def add(self, target: dict[str, Any], stored: Mapping[str, Any] | None, compare: Sequence[str]) -> str:
        if stored is None:
            self.inserts.append(target)
            return "inserted"
        if any(target[c] != stored[c] for c in compare):
            self.updates.append({"id": stored["id"], **{c: target[c] for c in compare}})
            return "updated"
        self.unchanged += 1
        return "unchanged"

    def counts(self) -> _Counts:
        return _Counts(len(self.inserts), len(self.updates), self.unchanged)


def _write(
    session: Session, model: type[SQLModel], plan: _Plan, conflict: Sequence[str], meter: _Meter
) -> None:
    if plan.inserts:
        columns = [c for c in plan.inserts[0] if c not in conflict and c != "created_at"]
        upsert(session, model, plan.inserts, conflict=conflict, update=columns)
    if plan.updates:
        # Bulk UPDATE by primary key (executemany); only changed rows are touched, so nothing else moves.
        session.execute(update(model), plan.updates)
    meter.advance(len(plan.inserts) + len(plan.updates) + plan.unchanged)


# --- the kinds ---


def _import_users(
    session: Session, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems, meter: _Meter,
    dry_run: bool,
) -> _Counts:
    rows = _validate(frame, rownums, UserRow, problems, meter)
    table = _table(User)
    columns = ("name", "role", "slack_user_id", "telegram_user_id", "feishu_open_id", "feishu_union_id", "timezone",
               "manager_id", "active")
    stored = {
        r["email"].lower(): dict(r)
        for r in session.execute(select(table.c.id, table.c.email, *(table.c[c] for c in columns))).mappings()
    }
    repeat = _first_seen(problems, "email", "email")
    in_file = {r.email for _, r in rows}
    for rownum, r in rows:
        repeat(r.email, rownum)
        if r.manager_email is not None:
            if r.manager_email == r.email:
                problems.add(rownum, "manager_email", "a user cannot be their own manager")
            elif r.manager_email not in stored and r.manager_email not in in_file:
                problems.add(rownum, "manager_email", f"no user with email {r.manager_email!r}")
    problems.raise_if_any()

    now = utcnow()
    plan = _Plan()
    pending: dict[str, str] = {}  # user email -> manager email, for managers that are new in this file
    for _, r in rows:
        old = stored.get(r.email)
        manager_id = _pick(None, old, "manager_id", None)
        if r.manager_email is not None:
            manager = stored.get(r.manager_email)
            if manager is None:
                pending[r.email] = r.manager_email
                manager_id = _UNSET  # differs from anything stored: the row counts as changed
            else:
                manager_id = manager["id"]
        target = {
            "email": old["email"] if old else r.email,
            "name": r.name,
            "role": r.role,
            "slack_user_id": _pick(r.slack_user_id, old, "slack_user_id", None),
            "telegram_user_id": _pick(r.telegram_user_id, old, "telegram_user_id", None),
            "feishu_open_id": _pick(r.feishu_open_id, old, "feishu_open_id", None),
            "feishu_union_id": _pick(r.feishu_union_id, old, "feishu_union_id", None),
            "timezone": _pick(r.timezone, old, "timezone", "UTC"),
            "manager_id": manager_id,
            # A departed employee is imported with active = no: from their next message csbot treats them as a
            # stranger (no data, a polite refusal), and their history stays.
            "active": _pick(r.active, old, "active", True),
        }
        outcome = plan.add(target, old, columns)
        written = {"inserted": plan.inserts, "updated": plan.updates}.get(outcome)
        if written:
            row = written[-1]
            if row["manager_id"] is _UNSET:
                row["manager_id"] = None
            row["updated_at"] = now
            if outcome == "inserted":
                row["created_at"] = now
    if not dry_run:
        _write(session, User, plan, ["email"], meter)
        if pending:
            ids = _user_ids(session)
            session.execute(
                update(User),
                [{"id": ids[email], "manager_id": ids[manager]} for email, manager in pending.items()],
            )
    return plan.counts()


def _import_accounts(
    session: Session, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems, meter: _Meter,
    dry_run: bool,
) -> _Counts:
    rows = _validate(frame, rownums, AccountRow, problems, meter)
    names, initial = stage_names()
    users = _user_ids(session)
    repeat = _first_seen(problems, "external_id", "external_id")
    for rownum, r in rows:
        repeat(r.external_id, rownum)
        if r.owner_email is not None and r.owner_email not in users:
            problems.add(rownum, "owner_email", f"no user with email {r.owner_email!r}")
        if r.stage is not None and r.stage not in names:
            problems.add(rownum, "stage", f"unknown stage {r.stage!r} (known: {', '.join(names)})")
        if r.contract_start and r.renewal_date and r.renewal_date < r.contract_start:
            problems.add(rownum, "renewal_date", f"before contract_start ({r.contract_start.isoformat()})")
    problems.raise_if_any()

    table = _table(Account)
    columns = (
        "name", "name_key", "owner_id", "segment", "plan", "arr", "currency", "seats", "contract_start",
        "renewal_date", "status", "stage",
    )
    stored: dict[str, dict[str, Any]] = {}
    for batch in _batches(r.external_id for _, r in rows):
        query = select(table.c.id, table.c.external_id, *(table.c[c] for c in columns))
        for rec in session.execute(query.where(table.c.external_id.in_(batch))).mappings():
            stored[rec["external_id"]] = dict(rec)

    now = utcnow()
    plan = _Plan()
    moves: list[tuple[str, str | None, str]] = []
    for _, r in rows:
        old = stored.get(r.external_id)
        target = {
            "external_id": r.external_id,
            "name": r.name,
            "name_key": r.name.casefold().strip(),
            "owner_id": users[r.owner_email] if r.owner_email else _pick(None, old, "owner_id", None),
            "segment": _pick(r.segment, old, "segment", None),
            "plan": _pick(r.plan, old, "plan", None),
            "arr": _pick(r.arr, old, "arr", 0.0),
            "currency": _pick(r.currency, old, "currency", "USD"),
            "seats": _pick(r.seats, old, "seats", 0),
            "contract_start": _pick(r.contract_start, old, "contract_start", None),
            "renewal_date": _pick(r.renewal_date, old, "renewal_date", None),
            "status": _pick(r.status, old, "status", "active"),
            "stage": _pick(r.stage, old, "stage", initial),
        }
        outcome = plan.add(target, old, columns)
        moved = r.stage is not None and (old is None or old["stage"] != r.stage)
        if moved:
            moves.append((r.external_id, old["stage"] if old else None, target["stage"]))
        if outcome == "inserted":
            plan.inserts[-1].update(created_at=now, updated_at=now, stage_since=now, stage_pinned=False)
        elif outcome == "updated":
            plan.updates[-1]["updated_at"] = now
            if moved:
                plan.updates[-1]["stage_since"] = now
    if not dry_run:
        _write(session, Account, plan, ["external_id"], meter)
        _record_revenue(session, [r.external_id for _, r in rows], stored, day=now.date())
        if moves:
            ids = _account_ids(session, (ext for ext, _, _ in moves))
            transitions = [
                {
                    "account_id": ids[ext], "from_stage": old_stage, "to_stage": new_stage, "at": now,
                    "reason": "imported from CSV", "source": "import", "actor_id": None,
                }
                for ext, old_stage, new_stage in moves
            ]
            session.execute(insert(_table(StageTransition)), transitions)
    return plan.counts()


def _record_revenue(session: Session, external_ids: Sequence[str], stored: Mapping[str, Mapping[str, Any]], *,
                    day: date) -> None:
    """Add the ARR history (new logos, expansions, contractions, churns, reactivations) that the imported rows
    imply to `arr_change`, which the retention analytics read."""
    table = _table(Account)
    updates = []
    for batch in _batches(external_ids):
        query = select(table.c.id, table.c.external_id, table.c.arr, table.c.status, table.c.seats)
        for rec in session.execute(query.where(table.c.external_id.in_(batch))).mappings():
            old = stored.get(rec["external_id"])
            updates.append(ArrUpdate(
                account_id=rec["id"], arr_after=float(rec["arr"]), status_after=rec["status"],
                seats_after=int(rec["seats"]), arr_before=float(old["arr"]) if old else 0.0,
                status_before=old["status"] if old else None, seats_before=int(old["seats"]) if old else 0,
            ))
    record_arr_changes(session, updates, day=day, source="import")


def _import_contacts(
    session: Session, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems, meter: _Meter,
    dry_run: bool,
) -> _Counts:
    rows = _resolve_accounts(session, _validate(frame, rownums, ContactRow, problems, meter), problems)
    seen: dict[tuple[int, str], int] = {}
    for rownum, r, acc in rows:
        key = (acc, r.email or r.name)
        first = seen.setdefault(key, rownum)
        if first != rownum:
            column, what = ("email", "account and email") if r.email else ("name", "account and name")
            problems.add(rownum, column, f"duplicate of row {first} (same {what})")
    problems.raise_if_any()

    columns = (
        "name", "email", "role", "slack_user_id", "telegram_user_id", "slack_channel_id", "telegram_chat_id",
        "feishu_open_id", "feishu_union_id", "feishu_chat_id",
    )
    stored = {
        (s["account_id"], s["key"]): s
        for s in _existing(session, Contact, (acc for _, _, acc in rows), ("key", *columns))
    }
    now = utcnow()
    plan = _Plan()
    for _, r, acc in rows:
        contact_key = r.email or r.name
        old = stored.get((acc, contact_key))
        target: dict[str, Any] = {"account_id": acc, "key": contact_key, "name": r.name}
        target.update({c: _pick(getattr(r, c), old, c, None) for c in columns if c != "name"})
        if plan.add(target, old, columns) == "inserted":
            plan.inserts[-1]["created_at"] = now
    if not dry_run:
        _write(session, Contact, plan, ["account_id", "key"], meter)
    return plan.counts()


def _import_tickets(
    session: Session, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems, meter: _Meter,
    dry_run: bool,
) -> _Counts:
    rows = _resolve_accounts(session, _validate(frame, rownums, TicketRow, problems, meter), problems)
    seen: dict[tuple[int, str], int] = {}
    for rownum, r, acc in rows:
        first = seen.setdefault((acc, r.ticket_id), rownum)
        if first != rownum:
            problems.add(rownum, "ticket_id", f"duplicate of row {first} (same account and ticket_id)")
        if r.closed_at is not None and r.closed_at < r.opened_at:
            problems.add(rownum, "closed_at", f"before opened_at ({r.opened_at.isoformat(sep=' ')})")
    problems.raise_if_any()

    columns = ("opened_at", "closed_at", "priority", "status")
    stored = {
        (s["account_id"], s["ticket_id"]): s
        for s in _existing(session, Ticket, (acc for _, _, acc in rows), ("ticket_id", *columns))
    }
    plan = _Plan()
    for _, r, acc in rows:
        old = stored.get((acc, r.ticket_id))
        closed_at = _pick(r.closed_at, old, "closed_at", None)
        target = {
            "account_id": acc,
            "ticket_id": r.ticket_id,
            "opened_at": r.opened_at,
            "closed_at": closed_at,
            "priority": _pick(r.priority, old, "priority", "normal"),
            "status": _pick(r.status, old, "status", "closed" if closed_at else "open"),
        }
        plan.add(target, old, columns)
    if not dry_run:
        _write(session, Ticket, plan, ["account_id", "ticket_id"], meter)
    return plan.counts()


def _import_nps(
    session: Session, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems, meter: _Meter,
    dry_run: bool,
) -> _Counts:
    rows = _resolve_accounts(session, _validate(frame, rownums, NpsRow, problems, meter), problems)
    seen: dict[tuple[int, str, datetime], int] = {}
    for rownum, r, acc in rows:
        first = seen.setdefault((acc, r.contact_key, r.responded_at), rownum)
        if first != rownum:
            who = "contact_email" if r.contact_email else "response_id"
            problems.add(rownum, "responded_at", f"duplicate of row {first} (same account, {who} and responded_at)")
    problems.raise_if_any()

    accounts = {acc for _, _, acc in rows}
    contacts = {
        (c["account_id"], c["key"]): c["id"] for c in _existing(session, Contact, accounts, ("key",))
    }
    columns = ("contact_id", "score", "comment")
    stored = {
        (s["account_id"], s["contact_key"], s["responded_at"]): s
        for s in _existing(session, NpsResponse, accounts, ("contact_key", "responded_at", *columns))
    }
    plan = _Plan()
    for _, r, acc in rows:
        contact_key = r.contact_key
        old = stored.get((acc, contact_key, r.responded_at))
        target = {
            "account_id": acc,
            "contact_key": contact_key,
            "responded_at": r.responded_at,
            "contact_id": contacts.get((acc, contact_key), _pick(None, old, "contact_id", None)),
            "score": r.score,
            "comment": _pick(r.comment, old, "comment", None),
        }
        if plan.add(target, old, columns) == "inserted":
            plan.inserts[-1]["source"] = "import"
    if not dry_run:
        _write(session, NpsResponse, plan, ["account_id", "contact_key", "responded_at"], meter)
    scores = np.array([r.score for _, r, _ in rows], dtype=np.int64)
    counts = plan.counts()
    counts.nps = NpsCounts(
        promoters=int((scores >= PROMOTER_FROM).sum()),
        passives=int(((scores >= PASSIVE_FROM) & (scores < PROMOTER_FROM)).sum()),
        detractors=int((scores < PASSIVE_FROM).sum()),
    )
    return counts


class _Codebook:
    """One column's distinct cells in order of first appearance, grown chunk by chunk."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._texts: list[str] = []

    def add(self, values: pd.Series) -> np.ndarray:
        """The codes of `values` into the distinct cells seen so far (new cells are appended)."""
        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        local = np.empty(len(uniques), dtype=np.int32)
        for i, text in enumerate(np.asarray(uniques, dtype=object).tolist()):
            code = self._index.get(text)
            if code is None:
                code = self._index[text] = len(self._texts)
                self._texts.append(text)
            local[i] = code
        return local[codes]

    @property
    def texts(self) -> np.ndarray:
        return np.asarray(self._texts, dtype=object)


@dataclass
class _Coded:
    """A file reduced to its columns as codes into their distinct cells (how a usage file of millions of rows
    is held while it is checked: a few bytes per row instead of its text)."""

    codes: dict[str, np.ndarray]
    texts: dict[str, np.ndarray]  # column → its distinct cells, as written
    rownums: np.ndarray

    def __len__(self) -> int:
        return len(self.rownums)

    def keep(self, mask: np.ndarray) -> _Coded:
        if mask.all():
            return self
        return _Coded({c: v[mask] for c, v in self.codes.items()}, self.texts, self.rownums[mask])

    def distinct(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A column as codes into its distinct stripped values, so each distinct cell is parsed only once."""
        if name not in self.codes:
            return np.zeros(len(self), dtype=np.int64), np.array([""], dtype=object)
        stripped = np.array([str(t).strip() for t in self.texts[name].tolist()], dtype=object)
        canon, distinct = pd.factorize(stripped, use_na_sentinel=False)
        return canon[self.codes[name]].astype(np.int64), np.asarray(distinct, dtype=object)


def _data_lines(path: Path) -> int:
    """Lines after the header (a cheap count of the rows to come, for the progress bar)."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(0, lines + (last != b"\n") - 1)


def _import_usage_file(
    session: Session, spec: KindSpec, path: Path, mapping: _Mapping, *, account: str | None,
    date_format: str | None, dry_run: bool, progress: Progress | None, chunk_rows: int,
) -> ImportReport:
    """A usage file, read `chunk_rows` at a time into `_Coded` columns, then checked and written as a whole:
    the same checks and messages as the other kinds, nothing written unless every row is good."""
    provided = {"account_external_id"} if account is not None else set()
    headers = _map_headers(path, list(_read_csv(path, nrows=0).columns), spec, mapping, provided)
    meter = _Meter(progress, 2 * _data_lines(path))
    books = {column: _Codebook() for column in headers.renames.values()}
    parts: dict[str, list[np.ndarray]] = {column: [] for column in books}
    row_parts: list[np.ndarray] = []
    seen = 0
    for chunk in _chunks_of(path, chunk_rows):
        rownums = np.arange(seen + 2, seen + 2 + len(chunk), dtype=np.int64)
        seen += len(chunk)
        frame = chunk[list(headers.renames)].rename(columns=headers.renames)
        blank = _blank_rows(chunk)
        if blank.any():
            frame, rownums = frame.loc[~blank], rownums[~blank]
        for column, book in books.items():
            parts[column].append(book.add(frame[column]))
        row_parts.append(rownums)
        meter.advance(len(chunk))
    coded = _Coded(
        {c: np.concatenate(p) if p else np.zeros(0, dtype=np.int32) for c, p in parts.items()},
        {c: book.texts for c, book in books.items()},
        np.concatenate(row_parts) if row_parts else np.zeros(0, dtype=np.int64),
    )
    if account is not None:
        coded.codes["account_external_id"] = np.zeros(len(coded), dtype=np.int32)
        coded.texts["account_external_id"] = np.array([_account_by_id_or_name(session, account)], dtype=object)
    report = ImportReport(kind=spec.name, rows=len(coded), warnings=headers.warnings, dry_run=dry_run)
    problems = _Problems(spec.columns, headers.display)
    for column in coded.codes:
        _check_distinct(column, coded.codes[column], coded.texts[column], coded.rownums, problems)
    distinct = {"date": [str(t) for t in coded.texts["date"].tolist()]}
    order, converted = _convert_distinct_dates(distinct, date_format)
    new_texts, impossible = converted["date"]
    bad = _report_impossible("date", coded.codes["date"], new_texts, impossible, coded.rownums, order, problems)
    coded.texts["date"] = np.asarray(new_texts, dtype=object)
    counts = _import_usage(session, coded.keep(~bad), problems, meter, dry_run)
    report.inserted, report.updated, report.unchanged = counts.inserted, counts.updated, counts.unchanged
    meter.finish()
    return report


_USAGE_COUNTS = ("active_users", "logins", "events")


def _import_usage(session: Session, coded: _Coded, problems: _Problems, meter: _Meter, dry_run: bool) -> _Counts:
    """Usage files can hold millions of rows: validate with column masks, compare and write in bulk."""
    n, rownums = len(coded), coded.rownums
    ext_code, ext_values = coded.distinct("account_external_id")
    ids = _account_ids(session, [v for v in ext_values.tolist() if v])
    ext_ids = np.array([ids.get(v, -1) for v in ext_values.tolist()], dtype=np.int64)
    ext_missing = (ext_values == "")[ext_code]
    unknown = (ext_ids == -1)[ext_code] & ~ext_missing
    ext_text = ext_values[ext_code]
    problems.add_mask(rownums[ext_missing], "account_external_id", ext_text[ext_missing], _missing)
    problems.add_mask(rownums[unknown], "account_external_id", ext_text[unknown], _no_account)
    account_id = ext_ids[ext_code]

    day_code, day_values = coded.distinct("date")
    day_objects: list[date | None] = []
    for text in day_values.tolist():
        try:
            day_objects.append(parse_date(text))
        except ValueError:
            day_objects.append(None)
    day_missing = (day_values == "")[day_code]
    bad_day = np.array([d is None for d in day_objects], dtype=bool)[day_code] & ~day_missing
    day_text = day_values[day_code]
    problems.add_mask(rownums[day_missing], "date", day_text[day_missing], _missing)
    problems.add_mask(rownums[bad_day], "date", day_text[bad_day], _not_date)

    counts: dict[str, np.ndarray] = {}
    for name in _USAGE_COUNTS:
        code, values = coded.distinct(name)
        numbers = pd.to_numeric(pd.Series(np.where(values == "", "0", values), dtype=object), errors="coerce")
        parsed = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        not_whole = (~np.isfinite(parsed) | (parsed != np.floor(parsed)))[code]
        negative = (parsed < 0)[code] & ~not_whole
        raw = values[code]
        problems.add_mask(rownums[not_whole], name, raw[not_whole], _not_whole)
        problems.add_mask(rownums[negative], name, raw[negative], _negative)
        counts[name] = np.where(not_whole | negative, 0, parsed[code]).astype(np.int64)
    feature_code, feature_values = coded.distinct("feature")

    keys = pd.DataFrame({"account": ext_code, "feature": feature_code, "day": day_code})
    repeated = keys.duplicated(keep="first").to_numpy()
    if repeated.any():
        groups = [keys["account"], keys["feature"], keys["day"]]
        first_row = pd.Series(rownums).groupby(groups).transform("min")
        problems.add_mask(
            rownums[repeated], "date", first_row.to_numpy()[repeated].astype(str),
            lambda first: f"duplicate of row {first} (same account_external_id, feature and date)",
        )
    del keys
    problems.raise_if_any()

    incoming = pd.DataFrame({"account_id": account_id, "feature": feature_code, "day": day_code, **counts})
    stored = _stored_usage(session, incoming, feature_values, day_values, day_objects)
    if len(stored):
        merged = incoming.merge(stored, on=["account_id", "feature", "day"], how="left", suffixes=("", "_old"))
        is_new = merged["active_users_old"].isna().to_numpy()
        changed = ~is_new & np.logical_or.reduce(
            [merged[c].to_numpy() != merged[f"{c}_old"].to_numpy() for c in counts]
        )
        todo = merged.loc[is_new | changed]
    else:
        is_new, changed = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        todo = incoming.assign(**{f"{c}_old": np.nan for c in counts})
    result = _Counts(int(is_new.sum()), int(changed.sum()), int(n - is_new.sum() - changed.sum()))
    if dry_run:
        return result

    meter.advance(n - len(todo))
    day_array = np.array(day_objects, dtype=object)
    written = pd.DataFrame({
        "account_id": todo["account_id"].to_numpy(dtype=np.int64),
        "feature": feature_values[todo["feature"].to_numpy()],
        "day": day_array[todo["day"].to_numpy()],
        **{c: todo[c].to_numpy(dtype=np.int64) for c in counts},
        **{f"{c}_old": todo[f"{c}_old"].fillna(0).to_numpy(dtype=np.int64) for c in counts},
        "is_new": todo[f"{_USAGE_COUNTS[0]}_old"].isna().to_numpy(),
    })
    del todo, incoming, stored
    _store_usage(session, written, meter)
    _refresh_last_usage(session, written)
    return result


def _store_usage(session: Session, written: pd.DataFrame, meter: _Meter) -> None:
    """The one place a usage import writes `usage_daily`: `written` holds exactly the rows that are new or
    changed (account_id, feature, day as a date, active_users, logins, events), with what was stored before
    (`<count>_old`, 0 for a new row) and `is_new`; unchanged rows are not in it. Runs in the import's
    transaction: anything derived from these rows belongs here, in the same transaction."""
    day_code, days = pd.factorize(written["day"].to_numpy(dtype=object))
    day_iso = np.array([d.isoformat() for d in days], dtype=object)
    columns = ["account_id", "feature", "day", *_USAGE_COUNTS]
    with bulk_mode(session):
        for start in range(0, len(written), _WRITE_CHUNK):
            part = written.iloc[start : start + _WRITE_CHUNK]
            rows = list(zip(
                part["account_id"].tolist(), part["feature"].tolist(),
                day_iso[day_code[start : start + _WRITE_CHUNK]].tolist(),
                *(part[c].tolist() for c in _USAGE_COUNTS), strict=True,
            ))
            upsert_rows(session, _table(UsageDaily), columns, rows,
                        conflict=["account_id", "feature", "day"], update=list(_USAGE_COUNTS))
            meter.advance(len(part))
    rollups.apply_usage(session, written[columns])


def _stored_usage(
    session: Session, incoming: pd.DataFrame, features: np.ndarray, day_texts: np.ndarray,
    day_objects: Sequence[date | None],
) -> pd.DataFrame:
    """Stored usage rows that could clash with the file (its accounts, within its date range), keyed by the
    file's feature and date codes."""
    columns = ["account_id", "feature", "day", "active_users_old", "logins_old", "events_old"]
    valid_days = [d for d in day_objects if d is not None]
    parts: list[Any] = []
    if len(incoming) and valid_days:
        postgres = session.get_bind().dialect.name == "postgresql"
        mark, day = ("%s", "CAST(day AS TEXT)") if postgres else ("?", "day")
        query = (
            f"SELECT account_id, feature, {day}, active_users, logins, events FROM usage_daily"
            f" WHERE day >= {mark} AND day <= {mark} AND "
        )
        span = [min(valid_days).isoformat(), max(valid_days).isoformat()]
        cursor = driver_connection(session).cursor()
        try:
            for batch in _batches(sorted(set(incoming["account_id"].tolist()))):
                # A dense run of ids is read as a range (SQLite probes a long IN list one id at a time).
                if batch[-1] - batch[0] < 2 * len(batch):
                    cursor.execute(query + f"account_id BETWEEN {mark} AND {mark}", [*span, batch[0], batch[-1]])
                else:
                    cursor.execute(query + f"account_id IN ({', '.join([mark] * len(batch))})", [*span, *batch])
                parts.extend(cursor.fetchall())
        finally:
            cursor.close()
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=np.int64) for c in columns})
    rows = pd.DataFrame.from_records(parts, columns=columns)
    del parts
    frame = pd.DataFrame({
        "account_id": rows["account_id"].to_numpy(dtype=np.int64),
        # Codes of the file's distinct values; stored rows with a feature or day absent from the file get -1.
        "feature": pd.Index(features).get_indexer(rows["feature"].to_numpy(dtype=object)),
        "day": pd.Index(day_texts).get_indexer(rows["day"].to_numpy(dtype=object)),
        **{c: rows[c].to_numpy(dtype=np.int64) for c in columns[3:]},
    })
    # A range of ids may hold accounts that are not in the file: they cannot clash.
    wanted = frame["account_id"].isin(incoming["account_id"].unique())
    return frame.loc[(frame["feature"] >= 0) & (frame["day"] >= 0) & wanted]


def _refresh_last_usage(session: Session, written: pd.DataFrame) -> None:
    """Move `Account.last_usage_date` up to the newest day the import wrote for it (never back): one executemany
    over the accounts, the newest day per account computed in pandas."""
    if not len(written):
        return
    newest = written.groupby("account_id", sort=True)["day"].max()
    rows = [{"account": a, "day": d} for a, d in zip(newest.index.tolist(), newest.tolist(), strict=True)]
    accounts = _table(Account)
    day = bindparam("day", type_=Date())
    session.execute(
        update(accounts)
        .where(accounts.c.id == bindparam("account"))
        .where(or_(accounts.c.last_usage_date.is_(None), accounts.c.last_usage_date < day))
        .values(last_usage_date=day),
        rows,
    )


def _import_rates(
    session: Session, frame: pd.DataFrame, rownums: np.ndarray, problems: _Problems, meter: _Meter,
    dry_run: bool,
) -> _Counts:
    rows = _validate(frame, rownums, RateRow, problems, meter)
    reporting = get_settings().reporting_currency
    repeat = _first_seen(problems, "currency", "date, currency and base")
    keyed: list[tuple[tuple[date, str, str], float]] = []
    for rownum, r in rows:
        base = r.base or reporting
        if r.currency == base:
            problems.add(rownum, "currency", f"the same currency as the base ({base}): nothing to convert")
            continue
        if not repeat((r.date, r.currency, base), rownum):
            keyed.append(((r.date, r.currency, base), r.rate))
    problems.raise_if_any()

    table = _table(ExchangeRate)
    stored: dict[tuple[date, str, str], dict[str, Any]] = {}
    if keyed:
        days = [k[0] for k, _ in keyed]
        query = select(table.c.id, table.c.day, table.c.currency, table.c.base, table.c.rate).where(
            table.c.day >= min(days), table.c.day <= max(days))
        stored = {(r["day"], r["currency"], r["base"]): dict(r) for r in session.execute(query).mappings()}
    now = utcnow()
    plan = _Plan()
    for (day, currency, base), rate in keyed:
        target = {"day": day, "currency": currency, "base": base, "rate": rate}
        if plan.add(target, stored.get((day, currency, base)), ("rate",)) == "inserted":
            plan.inserts[-1]["created_at"] = now
    if not dry_run:
        _write(session, ExchangeRate, plan, ["day", "currency", "base"], meter)
    return plan.counts()


_Importer = Callable[[Session, pd.DataFrame, np.ndarray, _Problems, _Meter, bool], _Counts]
_IMPORTERS: dict[str, _Importer] = {
    "users": _import_users,
    "accounts": _import_accounts,
    "contacts": _import_contacts,
    "tickets": _import_tickets,
    "nps": _import_nps,
    "rates": _import_rates,
}
