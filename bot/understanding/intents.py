"""The intent classifier: which kind of question a message is, trained from the phrasing files.

The phrasings (`data/phrasings.en.yaml`, `data/phrasings.zh.yaml`) are plain lists of sentences per intent, with
placeholders for the slots (`how is {account} doing`). For training, `{account}`, `{person}`, `{num}`, `{id}`,
`{when}` and `{period}` become the same mask words the slot finder puts into a real message before it is classified
("how is ACCT doing"), so the model learns the question, not the names; `{grade}`, `{stage}`, `{segment}`… are
filled with words from the lexicon. The model is character n-gram TF-IDF (which needs no word segmentation for
Chinese) plus word n-grams, into a logistic regression. It trains in about a second and is cached on disk, keyed by
the hash of the data files, so a restart loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import pickle
import random
import re
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bot.understanding.lexicon import DATA, lexicon, load_words
from bot.understanding.text import WORD, normalise, zh_words

log = logging.getLogger("csbot.understanding")

# What a slot looks like to the classifier, in the phrasings and in a real message alike.
MASKS = {"account": "acct", "person": "someone", "num": "nnn", "id": "nnn", "when": "whenx", "period": "spanx"}
LANGS = ("en", "zh")
FILLS_PER_PHRASING = 2
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_NUM_SPAN = re.compile(r"\{num\}\s*(?:days?|weeks?|months?|d\b|天|周|个月|日|个星期|星期)")


def phrasing_files() -> list[Path]:
    return [DATA / f"phrasings.{lang}.yaml" for lang in LANGS]


def load_phrasings() -> dict[str, dict[str, list[str]]]:
    """{lang: {intent: [phrasing, …]}} from the data files."""
    out: dict[str, dict[str, list[str]]] = {}
    for lang, path in zip(LANGS, phrasing_files(), strict=True):
        data = load_words(path) or {}
        out[lang] = {str(k): [str(p) for p in (v or [])] for k, v in (data.get("intents") or {}).items()}
    return out


def _fills(lang: str) -> dict[str, list[str]]:
    lex = lexicon()
    zh = lang == "zh"

    def pick(table: dict[str, list[str]]) -> list[str]:
        words = [w for ws in table.values() for w in ws]
        return [w for w in words if (re.search(r"[\u4e00-\u9fff]", w) is not None) == zh] or words

    return {
        "grade": pick(lex.table("grades")) + lex.words("risk")[:3],
        "segment": pick(lex.table("segments")),
        "stage": pick(lex.table("stages")),
        "tier": pick(lex.table("tiers")),
        "plan": ["starter", "team", "business", "business plus", "enterprise plus"],
        "lang": pick(lex.table("languages")),
        "text": lex.sample_text(lang),
    }


def expand(phrasing: str, lang: str, rng: random.Random, fills: dict[str, list[str]]) -> str:
    """A phrasing with its placeholders masked or filled, normalised like a real message."""

    # "{num} days" is a time phrase in a real message ("for 3 days", "3天"): the slot finder masks it as one.
    phrasing = _NUM_SPAN.sub("{when}", phrasing)

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in MASKS:
            return MASKS[name]
        choices = fills.get(name)
        return rng.choice(choices) if choices else name

    return normalise(_PLACEHOLDER.sub(fill, phrasing))


def _model() -> Any:
    # scikit-learn takes seconds to import: loaded when the classifier is trained or loaded, not by every
    # command that imports this module.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    features = FeatureUnion([
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=1)),
        ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                  token_pattern=r"(?u)\b\w+\b")),
    ])
    return make_pipeline(features, LogisticRegression(C=12.0, max_iter=3000))


@dataclass
class IntentModel:
    """The fitted classifier and, per intent, the words its phrasings use (to tell which words of a message the
    reading accounted for)."""

    pipeline: Any
    vocabulary: dict[str, frozenset[str]]
    all_words: frozenset[str]
    digest: str

    def rank(self, text: str, limit: int = 3) -> list[tuple[str, float]]:
        """The `limit` likeliest intents with their probabilities.

        The fitted pipeline's own arithmetic, done by hand for one message: sublinear TF × IDF per vectorizer,
        each L2-normalised, then the multinomial logistic regression's softmax. sklearn's input validation costs
        ten times the maths for a single sentence."""
        classifier = self.pipeline.steps[-1][1]
        scores = classifier.intercept_.copy()
        offset = 0
        for _name, vectorizer in self.pipeline.steps[0][1].transformer_list:
            counts: dict[int, int] = {}
            vocabulary = vectorizer.vocabulary_
            for term in vectorizer.build_analyzer()(text):
                index = vocabulary.get(term)
                if index is not None:
                    counts[index] = counts.get(index, 0) + 1
            if counts:
                columns = np.fromiter(counts, dtype=np.int64)
                values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))) * vectorizer.idf_[columns]
                values /= np.sqrt((values**2).sum())
                scores += classifier.coef_[:, offset + columns] @ values
            offset += len(vocabulary)
        exp = np.exp(scores - scores.max())
        probabilities = exp / exp.sum()
        classes = classifier.classes_
        order = probabilities.argsort()[::-1][:limit]
        return [(str(classes[i]), float(probabilities[i])) for i in order]


def _digest() -> str:
    h = hashlib.sha256(importlib.metadata.version("scikit-learn").encode())
    for path in [*phrasing_files(), DATA / "lexicon.yaml"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _words_of(text: str) -> set[str]:
    found = {m.group(0).strip("'.") for m in WORD.finditer(text)}
    found |= {t.text for t in zh_words(text)}
    return found


def train() -> IntentModel:
    phrasings = load_phrasings()
    rng = random.Random(7)
    texts: list[str] = []
    labels: list[str] = []
    vocabulary: dict[str, set[str]] = {}
    for lang, intents in phrasings.items():
        fills = _fills(lang)
        for intent, lines in intents.items():
            seen = vocabulary.setdefault(intent, set())
            for line in lines:
                for _ in range(FILLS_PER_PHRASING):
                    text = expand(line, lang, rng, fills)
                    texts.append(text)
                    labels.append(intent)
                seen |= _words_of(normalise(_PLACEHOLDER.sub(" ", line)))
    pipeline = _model()
    pipeline.fit(texts, labels)
    frozen = {k: frozenset(v) for k, v in vocabulary.items()}
    return IntentModel(pipeline, frozen, frozenset().union(*frozen.values()), _digest())


def _cache_path(digest: str) -> Path:
    base = os.environ.get("CSBOT_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "csbot-cache")
    return Path(base) / f"intents-{digest}.pickle"


_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _loaded() -> IntentModel:
    digest = _digest()
    path = _cache_path(digest)
    try:
        with path.open("rb") as fh:
            model = pickle.load(fh)  # our own file, written below from the shipped phrasings
        if isinstance(model, IntentModel) and model.digest == digest:
            return model
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    model = train()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            pickle.dump(model, fh)
        tmp.replace(path)
    except OSError as exc:  # a read-only disk only costs the next start a second of training
        log.info("could not cache the intent model: %s", exc)
    return model


def intent_model() -> IntentModel:
    """The classifier, trained or loaded once per process."""
    with _LOCK:
        return _loaded()
