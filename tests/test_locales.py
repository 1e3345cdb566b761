"""The locale files (bot/locales/<family>.<lang>.toml) against each other and against the code.

A key must have both languages with the same `{placeholders}`; every key must be used by the code (bot/, adapters/)
and every key the code looks up must exist. Keys the code builds from data (`t(f"cr_{feature}")`) are declared in
`DYNAMIC` below with the values that data can take, so they are checked both ways too; a new built key fails until
it is declared there.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import string
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from bot.core.i18n import LANGS, LOCALES, LocaleError, load_messages, messages, read_locales, t
from bot.core.permissions import ROLE_RANK, Coverage
from bot.views.alert_cards import SEVERITY_ICON
from lifecycle.insight.churn import FEATURES, ChurnStanding
from lifecycle.insight.segments import BEHAVIOUR_FEATURES
from lifecycle.reports.search import FIELDS, Problem
from lifecycle.surveys import SurveyRefused

ROOT = Path(__file__).resolve().parents[1]
CODE = (ROOT / "bot", ROOT / "adapters")

_COVERAGE = get_args(get_type_hints(Coverage)["key"])
_SEVERITIES = tuple(SEVERITY_ICON)

# Keys built from data: prefix → the values the data takes (and where they come from).
DYNAMIC: dict[str, Iterable[str]] = {
    "cr_": FEATURES,  # bot/views/cards.py: a churn driver in words, one per feature of the churn model
    "driver_": FEATURES,  # bot/views/cards.py: a churn driver's name when its value is missing
    "tf_": BEHAVIOUR_FEATURES,  # bot/views/cards.py: what sets a cohort apart
    "churn_level_": get_args(get_type_hints(ChurnStanding)["level"]),  # bot/views/cards.py
    "role_": tuple(ROLE_RANK),  # bot/commands/people.py
    "grade_": ("red", "yellow", "green", "unknown"),  # bot/core/format.py, bot/views/charts.py
    "ac_sev_": _SEVERITIES,  # bot/views/alert_cards.py
    "alert_sev_": _SEVERITIES,  # bot/commands/alerts.py
    "scope_": _COVERAGE,  # bot/commands/lists.py, portfolio.py, alerts.py
    "alerts_": _COVERAGE,  # bot/commands/alerts.py
    "find_": get_args(Problem),  # bot/commands/find.py: a filter that cannot be read
    # bot/commands/find.py: the fields with words (`score` reads as typed)
    "find_field_": tuple(name for name in FIELDS if name != "score"),
    "sv_": get_args(get_type_hints(SurveyRefused.__init__)["reason"]),  # bot/push/surveys.py: a refused survey tap
    "inbox_kind_": ("alert", "escalation", "digest", "weekly", "other"),  # bot/push/inbox.py
    "kind_": ("stage", "user"),  # bot/core/router.py: the NotFoundError kinds a chat reply names (stages, users)
    # bot/push/routing.py: why an alert reached nobody
    "why_": ("off", "team_off", "inactive", "no_manager", "gone", "no_owner", "no_team", "nobody"),
    # bot/push/digests.py: what an undelivered message was
    "dk_": ("alert", "escalation", "alert_comment", "survey", "survey_reminder", "advocacy", "digest", "weekly"),
}


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for root in CODE:
        for path in sorted(root.rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _files() -> dict[str, dict[str, dict[str, str]]]:
    return read_locales()  # type: ignore[return-value]


def _locale_keys() -> set[str]:
    return {key for langs in _files().values() for table in langs.values() for key in table}


def _placeholders(text: str) -> set[tuple[str, str, str]]:
    fields = string.Formatter().parse(text)
    return {(name, conv or "", spec or "") for _, name, spec, conv in fields if name is not None}


def _literals(node: ast.AST) -> Iterator[str]:
    """The key(s) an expression can be: `"a"`, `"a" if x else "b"`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _lookups(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("t", "has"):
                yield node


def _registered_in_code() -> set[str]:
    """Keys adapters register themselves with `add_messages({...})` (they have no locale files yet)."""
    keys: set[str] = set()
    for _, tree in _sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "add_messages"
                    and node.args and isinstance(node.args[0], ast.Dict)):
                keys |= {k.value for k in node.args[0].keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return keys


def _key_expressions(tree: ast.AST) -> Iterator[ast.expr]:
    """What the code passes as a key: the first argument of `t`/`has`, and what it assigns to a name `key`."""
    for call in _lookups(tree):
        yield call.args[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == "key" for target in node.targets):
            yield node.value


def _built_prefixes(keys: set[str]) -> dict[str, list[str]]:
    """prefix → where: every key the code builds with an f-string that starts with a key's prefix (`f"cr_{x}"`)."""
    found: dict[str, list[str]] = {}
    for path, tree in _sources():
        for expression in _key_expressions(tree):
            for node in ast.walk(expression):
                if not (isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant)):
                    continue
                head = str(node.values[0].value)
                if re.fullmatch(r"[a-z][a-z0-9_]*_", head) and any(key.startswith(head) for key in keys):
                    found.setdefault(head, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_family_has_both_languages_with_the_same_keys() -> None:
    problems = []
    for family, langs in sorted(_files().items()):
        missing = [lang for lang in LANGS if lang not in langs]
        if missing:
            problems.append(f"{family}: no {', '.join(f'{family}.{lang}.toml' for lang in missing)}")
            continue
        for lang in LANGS:
            for other in LANGS:
                only = sorted(langs[lang].keys() - langs[other].keys())
                if only:
                    problems.append(f"{family}: {', '.join(only)} in {lang} but not in {other}")
    assert not problems, "\n".join(problems)


def test_both_languages_have_the_same_placeholders() -> None:
    problems = []
    for family, langs in sorted(_files().items()):
        en = langs.get("en", {})
        for key, text in en.items():
            for lang in LANGS[1:]:
                if key in langs.get(lang, {}) and _placeholders(text) != _placeholders(langs[lang][key]):
                    problems.append(f"{family}.{key}: en {sorted(_placeholders(text))} "
                                    f"≠ {lang} {sorted(_placeholders(langs[lang][key]))}")
    assert not problems, "\n".join(problems)


def test_every_key_is_used_by_the_code() -> None:
    keys = _locale_keys()
    used = {node.value for _, tree in _sources() for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    used |= {prefix + value for prefix, values in DYNAMIC.items() for value in values}
    assert sorted(keys - used) == []


def test_every_key_the_code_looks_up_exists() -> None:
    known = _locale_keys() | _registered_in_code()
    missing = sorted(
        f"{path.relative_to(ROOT)}:{call.lineno}: {key}"
        for path, tree in _sources() for call in _lookups(tree) for key in _literals(call.args[0]) if key not in known
    )
    assert missing == []


def test_keys_built_from_data_are_declared_and_exist_for_every_value() -> None:
    keys = _locale_keys()
    built = _built_prefixes(keys)
    assert sorted(built) == sorted(DYNAMIC), f"declare a key built in code in DYNAMIC: {built}"
    missing = sorted(prefix + value for prefix, values in DYNAMIC.items() for value in values
                     if prefix + value not in keys)
    assert missing == []


def test_every_text_is_a_format_string_that_fills() -> None:
    for key, texts in messages().items():
        for lang, text in texts.items():
            values = {name.split(".")[0].split("[")[0]: 1 for _, name, _, _ in string.Formatter().parse(text) if name}
            assert isinstance(t(key, lang, **values), str), (key, lang)


def test_the_words_are_read_once() -> None:
    assert messages() is messages()
    assert t("help_title", "zh") == "我能做什么"
    assert t("help_title", "fr") == "What I can do"  # a language without words reads English


def test_locale_files_ship_with_the_package() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bot"]
    files = [path.relative_to(ROOT / "bot").as_posix() for path in LOCALES.glob("*.toml")]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in package_data)] == []


def _write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


def test_a_key_in_two_families_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "one.en.toml", 'title = "One"\n')
    _write(tmp_path, "two.en.toml", 'title = "Two"\n')
    with pytest.raises(LocaleError, match=r"'title' is in both one.en.toml and two.en.toml"):
        load_messages(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("one.en.toml", "title = 3\n", "title must be text"),
        ("one.en.toml", "[title]\nen = 'x'\n", "title must be text"),
        ("one.en.toml", 'title = "unclosed\n', "one.en.toml: "),
        ("one.fr.toml", 'title = "Un"\n', "named <family>.<lang>.toml"),
        ("one.toml", 'title = "One"\n', "named <family>.<lang>.toml"),
    ],
)
def test_a_broken_locale_file_is_named(tmp_path: Path, name: str, text: str, says: str) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(LocaleError, match=re.escape(says)):
        read_locales(tmp_path)
