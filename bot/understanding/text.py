"""The first steps of reading a message: normalise it, tell its language, and find the spans of words.

Normalising keeps offsets simple: the normal form is the message case-folded, with full-width characters turned
into their ASCII forms and runs of spaces collapsed, so every later step works on one string and reports spans
(start, end) into it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACES = re.compile(r"\s+")
# Words of Latin script, digits and the few joiners that appear inside names and amounts ("o'neil", "1.2m", "a&b").
WORD = re.compile(r"[a-z0-9$€£¥][a-z0-9&'’._+-]*[a-z0-9%+]|[a-z0-9$€£¥%]")
CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_STRIP = "?!.,;:。？！，；：、…~～\"'“”‘’()（）[]【】"


def normalise(text: str) -> str:
    """Case-folded, full-width forms made ASCII (NFKC), curly quotes straightened, spaces collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = folded.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return _SPACES.sub(" ", folded).strip()


def normal_offsets(text: str) -> tuple[str, list[int]]:
    """`text` normalised character by character, with the position in `text` of each normalised character: where a
    span of the normal form came from in what the user typed ("，" is "," once normalised)."""
    out: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        piece = normalise(ch) if not ch.isspace() else " "
        out.append(piece)
        offsets += [i] * len(piece)
    return "".join(out), offsets


def language(text: str) -> str:
    """`zh` when `text` (the message with account names cut out: "how is 北京星辰科技 doing?" is English) has
    Chinese characters, else `en`."""
    return "zh" if _CJK.search(text) else "en"


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


def words(text: str) -> list[Token]:
    """The Latin-script words of a normalised text, with their spans; possessive `'s` is cut off."""
    out = []
    for m in WORD.finditer(text):
        word, end = m.group(0), m.end()
        for suffix in ("'s", "'"):
            if word.endswith(suffix) and len(word) > len(suffix):
                word, end = word[: -len(suffix)], end - len(suffix)
                break
        out.append(Token(word.rstrip("."), m.start(), m.start() + len(word.rstrip("."))))
    return out


@lru_cache(maxsize=1)
def _jieba() -> object:
    import logging

    import jieba  # imported on first use: loading its dictionary takes about a second

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def zh_words(text: str) -> list[Token]:
    """The Chinese words of `text` (jieba's segmentation), with spans; Latin words are left to `words`."""
    out: list[Token] = []
    for run in CJK_RUN.finditer(text):
        for word, start, end in _jieba().tokenize(run.group(0)):  # type: ignore[attr-defined]
            out.append(Token(word, run.start() + start, run.start() + end))
    return out


def strip_punctuation(text: str) -> str:
    return text.strip().strip(_STRIP).strip()
