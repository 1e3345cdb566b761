"""The words the understanding layer knows (`data/lexicon.yaml`), and one matcher that finds them in a message.

A `PhraseMatcher` holds phrases, each with a kind and a value (`("grade", "red")` for "高风险"); `find` returns the
longest non-overlapping matches. Latin phrases match whole words; Chinese phrases match anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bot.understanding.text import has_cjk

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    kind: str
    value: str
    text: str


class PhraseMatcher:
    """Longest-first matching of many phrases with one regular expression."""

    def __init__(self, entries: Iterable[tuple[str, str, str]]) -> None:
        self._meaning: dict[str, tuple[str, str]] = {}
        for phrase, kind, value in entries:
            key = phrase.casefold().strip()
            if key and key not in self._meaning:  # the first kind given for a phrase wins
                self._meaning[key] = (kind, value)
        parts = []
        for phrase in sorted(self._meaning, key=len, reverse=True):
            body = re.escape(phrase).replace(r"\ ", r"\s+")
            if has_cjk(phrase) or not phrase[0].isalnum():
                parts.append(body)
            else:
                parts.append(rf"(?<![a-z0-9]){body}(?![a-z0-9])")
        self._pattern = re.compile("|".join(parts)) if parts else None

    def find(self, text: str) -> list[Match]:
        if self._pattern is None:
            return []
        out = []
        for m in self._pattern.finditer(text):
            key = " ".join(m.group(0).split())
            kind, value = self._meaning[key]
            out.append(Match(m.start(), m.end(), kind, value, m.group(0)))
        return out


@lru_cache(maxsize=64)
def _words(lex: Lexicon, name: str) -> list[str]:
    return [str(w).casefold() for w in lex.raw.get(name, [])]


@lru_cache(maxsize=4)
def _stopwords(lex: Lexicon, lang: str) -> frozenset[str]:
    return frozenset(str(w).casefold() for w in lex.raw.get("stopwords", {}).get(lang, []))


@dataclass(frozen=True, eq=False)
class Lexicon:
    """The lexicon file, read once."""

    raw: dict[str, Any]

    def words(self, name: str) -> list[str]:
        return _words(self, name)

    def table(self, name: str) -> dict[str, list[str]]:
        return {str(k): [str(w).casefold() for w in v] for k, v in (self.raw.get(name) or {}).items()}

    def stopwords(self, lang: str) -> frozenset[str]:
        return _stopwords(self, lang)

    def sample_text(self, lang: str) -> list[str]:
        return [str(w) for w in self.raw.get("sample_text", {}).get(lang, [])]


class _WordsLoader(yaml.SafeLoader):
    """YAML without YAML 1.1's implicit booleans: in a word list, `yes`, `no`, `on` and `y` are words."""


_WordsLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_words(path: Path) -> Any:
    """A data file of words and phrasings."""
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_WordsLoader)


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    return Lexicon(load_words(DATA / "lexicon.yaml"))
