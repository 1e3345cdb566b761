"""The natural-language benchmark: how well and how fast free text becomes the right command.

On the demo portfolio (as of 2026-12-07, the date the corpus's expectations assume), every utterance of
`tests/nl/corpus.yaml` is asked through the router as its `as` user would ask it in the console (its `context`
messages first, in a conversation of its own), and the command the reply was read as (`Reply.understood`) is
compared with the expected one. Reported per language, on the held-out part (never trained on) and the dev part:
exact-command accuracy, out-of-scope detection, the share of in-scope questions that got a clarifying question,
and parse latency (`Understanding.read` alone) p50/p95 at the demo's 60 accounts and at 100,000 accounts, plus the
time of a question against its exact command end to end through the Slack adapter (signed request in, answer
posted to a fake Slack) and in the router alone.

Run: `python -m bench --only nl` (or `python -m bench.nl` for this one alone); the figures go to
`bench/results/nl.json`.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import Session, select

from bot.core.messages import Incoming
from bot.core.router import Router, Services
from bot.understanding.lexicon import load_words
from bot.understanding.pipeline import Asker
from lifecycle.intake.demo import account_names, seed_demo
from lifecycle.store.db import make_engine, upgrade
from lifecycle.store.models import Account, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 12, 7)
ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "nl" / "corpus.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "nl.json"
DEFAULT_AS = "priya.raman@csbot-demo.example"
LABELS = ("clarify", "unknown", "out-of-scope", "greeting", "thanks")
GOALS = {"accuracy": 0.95, "out_of_scope": 0.90, "clarify_rate": 0.10, "parse_p95_ms_100k": 25.0, "e2e_ratio": 1.1}


def load_corpus(path: Path | None = None) -> list[dict[str, Any]]:
    items = load_words(path or CORPUS) or []
    return [dict(i) for i in items]


def normal_command(command: str) -> str:
    """A command in a form where equal commands compare equal: `find`'s filters in any order are one command."""
    text = command.strip()
    if text in LABELS:
        return text
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    if not words:
        return ""
    if words[0] == "find":
        return "find " + " ".join(sorted(w.casefold() for w in words[1:]))
    # one period, two spellings: `1y` is `12m`
    return " ".join(f"{12 * int(w[:-1])}m" if re.fullmatch(r"\d+y", w) else w.casefold() for w in words)


def demo_engine(folder: Path, *, extra_accounts: int = 0) -> Engine:
    url = f"sqlite:///{folder / f'nl-{extra_accounts}.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        seed_demo(session, accounts=60, today=TODAY)
        session.commit()
    if extra_accounts:
        _add_accounts(engine, extra_accounts)
    return engine


def _add_accounts(engine: Engine, count: int) -> None:
    """Accounts beyond the demo's 60 (names only: the parse latency depends on the names, not on usage)."""
    names = account_names(60 + count)[60:]
    with Session(engine) as session:
        owner = session.exec(select(User).where(User.role == "csm")).first()
        rows = [
            {"external_id": f"BIG-{i:06d}", "name": name, "name_key": " ".join(name.casefold().split()),
             "owner_id": owner.id if owner else None, "segment": "smb", "plan": "Starter", "arr": 1000.0 + i,
             "currency": "USD", "seats": 10, "status": "active", "stage": "adoption"}
            for i, (name, _domain, _zh) in enumerate(names)
        ]
        for start in range(0, len(rows), 5_000):
            session.execute(insert(Account), rows[start : start + 5_000])
        session.commit()


def _router(engine: Engine) -> Router:
    settings = load_settings(database_url="sqlite://")
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def predicted(router: Router, item: dict[str, Any], channel: str) -> str:
    who = item.get("as") or DEFAULT_AS
    for earlier in item.get("context") or []:
        router.handle(Incoming(platform="console", sender_id=who, text=str(earlier), channel_id=channel))
    reply = router.handle(Incoming(platform="console", sender_id=who, text=str(item["text"]), channel_id=channel))
    return reply.understood or str(item["text"])


def accuracy(router: Router, items: list[dict[str, Any]], *, part: str = "") -> dict[str, Any]:
    """Each utterance in a conversation of its own (`part` keeps two runs on one router apart)."""
    by_lang: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    misses: list[dict[str, str]] = []
    for n, item in enumerate(items):
        expect = normal_command(str(item["expect"]))
        got = normal_command(predicted(router, item, f"bench-{part}-{n}"))
        stats = by_lang[str(item.get("lang", "en"))]
        stats["total"] += 1
        stats["correct"] += got == expect
        if expect == "out-of-scope":
            stats["oos_total"] += 1
            stats["oos_correct"] += got == "out-of-scope"
        elif expect not in LABELS:
            stats["in_scope"] += 1
            stats["clarified"] += got == "clarify"
        if got != expect:
            misses.append({"text": str(item["text"]), "expect": str(item["expect"]), "got": got,
                           "lang": str(item.get("lang", "en"))})
    out: dict[str, Any] = {}
    for lang, s in sorted(by_lang.items()):
        out[lang] = {
            "utterances": s["total"],
            "accuracy": round(s["correct"] / s["total"], 4) if s["total"] else None,
            "out_of_scope_detected": round(s["oos_correct"] / s["oos_total"], 4) if s["oos_total"] else None,
            "clarify_rate": round(s["clarified"] / s["in_scope"], 4) if s["in_scope"] else None,
        }
    return {"by_language": out, "misses": misses}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_latency(router: Router, texts: Iterable[str]) -> dict[str, float]:
    understanding = router.understanding()
    engine = router.services.engine
    times: list[float] = []
    with Session(engine) as session:
        user = session.exec(select(User).where(User.email == DEFAULT_AS)).one()
        asker = Asker(user=user, lang=None, today=TODAY)
        texts = list(texts)
        for warm in (texts[0], "北京星辰科技怎么样"):  # load the model, the index and jieba first
            understanding.read(session, asker, warm, {}, engine=engine)
        for text in texts:
            started = time.perf_counter()
            understanding.read(session, asker, text, {}, engine=engine)
            times.append(time.perf_counter() - started)
    return {"p50_ms": round(1000 * _percentile(times, 0.5), 2), "p95_ms": round(1000 * _percentile(times, 0.95), 2),
            "messages": len(times)}


def end_to_end(router: Router, items: list[dict[str, Any]], limit: int = 40) -> dict[str, float]:
    """The time of a question against the time of the command it becomes, over read commands."""
    pairs = _read_pairs(items, limit)
    ratios: list[float] = []
    question_ms: list[float] = []
    command_ms: list[float] = []
    for n, (question, command) in enumerate(pairs):
        best_q = best_c = float("inf")
        for attempt in range(3):
            channel = f"e2e-{n}-{attempt}"
            started = time.perf_counter()
            router.handle(Incoming(platform="console", sender_id=DEFAULT_AS, text=question, channel_id=channel))
            best_q = min(best_q, time.perf_counter() - started)
            started = time.perf_counter()
            router.handle(Incoming(platform="console", sender_id=DEFAULT_AS, text=command, channel_id=channel))
            best_c = min(best_c, time.perf_counter() - started)
        ratios.append(best_q / best_c)
        question_ms.append(best_q * 1000)
        command_ms.append(best_c * 1000)
    if not ratios:
        return {}
    return {"pairs": len(ratios), "question_ms_median": round(statistics.median(question_ms), 2),
            "command_ms_median": round(statistics.median(command_ms), 2),
            "ratio_median": round(statistics.median(ratios), 3)}


def _read_pairs(items: list[dict[str, Any]], limit: int) -> list[tuple[str, str]]:
    """Held-out questions without context that become a read command, with that command."""
    return [(str(i["text"]), str(i["expect"])) for i in items
            if not i.get("context") and str(i["expect"]).split(" ")[0] in
            ("account", "health", "find", "at-risk", "renewals", "nps", "portfolio", "alerts", "stage")][:limit]


def through_slack(engine: Engine, items: list[dict[str, Any]], limit: int = 40) -> dict[str, float]:
    """The same pairs as `end_to_end`, asked as a CS manager asks them: `/cs <question>` against `/cs <command>`
    through the Slack adapter (a signed request into bolt, the answer posted to a fake Slack's response URL), each
    timed until the answer has been posted; the best of three per pair, question and command alternating."""
    import asyncio
    from urllib.parse import urlencode

    from starlette.applications import Starlette

    from adapters.slack import build_slack_app, slack_routes
    from bench.measures import BOT_TOKEN, SIGNING_SECRET, time_requests
    from tests.fakes.slack_api import FakeSlackAPI

    pairs = _read_pairs(items, limit)
    if not pairs:
        return {}
    with Session(engine) as session:
        slack_id = session.exec(select(User.slack_user_id).where(User.email == DEFAULT_AS)).one()
    with FakeSlackAPI() as fake:
        settings = load_settings(database_url="sqlite://", SLACK_BOT_TOKEN=BOT_TOKEN,
                                 SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=fake.api_url)
        router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
        router.understanding()
        app = Starlette(routes=slack_routes(build_slack_app(router, settings)))
        serial = iter(range(10**9))

        def body(text: str, channel: str) -> str:
            n = next(serial)
            return urlencode({
                "token": "legacy", "team_id": "T1", "team_domain": "bench", "channel_id": channel,
                "channel_name": "directmessage", "user_id": slack_id, "user_name": "priya", "command": "/cs",
                "text": text, "api_app_id": "A1", "response_url": fake.response_url(str(n)), "trigger_id": f"1.{n}",
            })

        bodies = [body(text, f"D0E2E{n}x{attempt}") for n, (question, command) in enumerate(pairs)
                  for attempt in range(3) for text in (question, command)]
        samples = asyncio.run(time_requests(app, [bodies[0], bodies[1], *bodies], warmup=2))
        answers = [str(c.params.get("text", "")) for c in fake.calls_to("response_url", ok_only=True)]
    question_s = [min(samples[6 * n + 2 * a] for a in range(3)) for n in range(len(pairs))]
    command_s = [min(samples[6 * n + 2 * a + 1] for a in range(3)) for n in range(len(pairs))]
    return {"pairs": len(pairs), "question_ms_median": round(statistics.median(question_s) * 1000, 2),
            "command_ms_median": round(statistics.median(command_s) * 1000, 2),
            "ratio_median": round(statistics.median(q / c for q, c in zip(question_s, command_s, strict=True)), 3),
            "answered": len(answers), "refused_or_failed": sum(1 for a in answers if "went wrong" in a
                                                                or "don't know you" in a)}


def run(*, quick: bool = False, large: int = 100_000) -> dict[str, Any]:
    items = load_corpus()
    heldout = [i for i in items if i.get("split") == "heldout"]
    dev = [i for i in items if i.get("split") != "heldout"]
    with tempfile.TemporaryDirectory(prefix="csbot-nl-") as tmp:
        engine = demo_engine(Path(tmp))
        router = _router(engine)
        started = time.perf_counter()
        router.understanding()
        result: dict[str, Any] = {"corpus": {"heldout": len(heldout), "dev": len(dev)}}
        result["heldout"] = accuracy(router, heldout, part="heldout")
        result["dev"] = accuracy(router, dev if not quick else dev[:60], part="dev")
        fresh = [i for i in heldout if i.get("batch") == "fresh"]
        if fresh and not quick:  # the later batch alone (written blind to the training phrasings)
            result["heldout_fresh"] = accuracy(router, fresh, part="fresh")["by_language"]
        texts = [str(i["text"]) for i in heldout if not i.get("context")]
        result["parse_60"] = parse_latency(router, texts)
        result["end_to_end"] = end_to_end(router, heldout, limit=10 if quick else 40)
        result["end_to_end_slack"] = through_slack(engine, heldout, limit=10 if quick else 40)
        size = 5_000 if quick else large
        big = demo_engine(Path(tmp), extra_accounts=size - 60)
        result[f"parse_{size}"] = parse_latency(_router(big), texts)
        result["accounts_large"] = size
        result["seconds"] = round(time.perf_counter() - started, 1)
        engine.dispose()
        big.dispose()
    return result


def goals(result: dict[str, Any]) -> list[tuple[str, float | None, str, bool]]:
    out: list[tuple[str, float | None, str, bool]] = []
    for lang, s in result["heldout"]["by_language"].items():
        out.append((f"{lang} exact-command accuracy (held out)", s["accuracy"], "≥ 95 %",
                    (s["accuracy"] or 0) >= GOALS["accuracy"]))
        if s["out_of_scope_detected"] is not None:
            out.append((f"{lang} out-of-scope detected", s["out_of_scope_detected"], "≥ 90 %",
                        s["out_of_scope_detected"] >= GOALS["out_of_scope"]))
        if s["clarify_rate"] is not None:
            out.append((f"{lang} in-scope questions clarified", s["clarify_rate"], "≤ 10 %",
                        s["clarify_rate"] <= GOALS["clarify_rate"]))
    large = result.get(f"parse_{result['accounts_large']}", {})
    out.append((f"parse p95 at {result['accounts_large']:,} accounts (ms)", large.get("p95_ms"), "≤ 25 ms",
                (large.get("p95_ms") or 1e9) <= GOALS["parse_p95_ms_100k"]))
    # End to end is what the CS manager waits for: the message into the Slack adapter until the answer is posted.
    # The router-only ratio (`end_to_end`) is reported beside it, without a goal: it leaves out the platform.
    e2e = result.get("end_to_end_slack", {})
    out.append(("question ÷ its command, end to end through Slack", e2e.get("ratio_median"), "≤ 1.1×",
                (e2e.get("ratio_median") or 1e9) <= GOALS["e2e_ratio"] and not e2e.get("refused_or_failed")))
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    result = run(quick="--quick" in args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    for name, value, target, ok in goals(result):
        print(f"{'✓' if ok else '✗'} {name}: {value} (goal {target})")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
