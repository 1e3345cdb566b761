"""User-facing words in English and Chinese, looked up by key: `t(key, lang, **values)`.

The words live in `bot/locales/<family>.<lang>.toml`, one file per command family (or module group) and language,
each a flat table of `key = "text"` with `str.format` placeholders (`{account}`). Keys are unique across all
families, so a call site names only the key; `grep -r key bot/locales` finds its words. The files are read once, on
the first lookup. `tests/test_locales.py` checks that every key has both languages with the same placeholders, that
every key is used and that every key the code uses exists.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

Lang = Literal["en", "zh"]
LANGS: tuple[Lang, ...] = ("en", "zh")
LOCALES = Path(__file__).resolve().parent.parent / "locales"


class LocaleError(ValueError):
    """A locale file that cannot be used: unreadable TOML, a value that is not text, a key declared twice."""


def read_locales(directory: Path = LOCALES) -> dict[str, dict[Lang, dict[str, str]]]:
    """family → language → {key: text}, as written in `directory` (`<family>.<lang>.toml`)."""
    families: dict[str, dict[Lang, dict[str, str]]] = {}
    for path in sorted(directory.glob("*.toml")):
        family, _, lang = path.stem.rpartition(".")
        if not family or lang not in LANGS:
            raise LocaleError(f"{path.name}: a locale file is named <family>.<lang>.toml, lang one of {LANGS}")
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise LocaleError(f"{path.name}: {exc}") from exc
        bad = sorted(key for key, text in table.items() if not isinstance(text, str))
        if bad:
            raise LocaleError(f"{path.name}: {', '.join(bad)} must be text (key = \"…\"), not a table or number")
        families.setdefault(family, {})[lang] = table
    return families


def load_messages(directory: Path = LOCALES) -> dict[str, dict[str, str]]:
    """key → {lang: text} over every family in `directory`; a key may belong to one family only."""
    families = read_locales(directory)
    merged: dict[str, dict[str, str]] = {}
    home: dict[str, str] = {}
    for family, langs in families.items():
        for lang, table in langs.items():
            for key, text in table.items():
                if home.setdefault(key, family) != family:
                    raise LocaleError(f"key {key!r} is in both {home[key]}.{lang}.toml and {family}.{lang}.toml")
                merged.setdefault(key, {})[lang] = text
    return merged


@functools.cache
def messages() -> dict[str, dict[str, str]]:
    """Every key's texts, read from the locale files on first use (then kept)."""
    return load_messages()


def add_messages(entries: Mapping[str, Mapping[str, str]]) -> None:
    """Register words kept outside bot/ (each key with "en" and "zh"); a key may be declared only once."""
    table = messages()
    for key, texts in entries.items():
        if key in table and table[key] != texts:
            raise ValueError(f"message key {key!r} is declared twice")
        if not {"en", "zh"} <= texts.keys():
            raise ValueError(f"message key {key!r} needs both en and zh")
        table[key] = dict(texts)


def has(key: str) -> bool:
    """Whether `key` has words (for keys built from data, such as a measure's name)."""
    return key in messages()


def t(key: str, lang: str = "en", **values: object) -> str:
    """The message `key` in `lang` (English when a translation is missing), filled with `values`."""
    entry = messages()[key]
    text = entry.get(lang) or entry["en"]
    return text.format(**values) if values else text
