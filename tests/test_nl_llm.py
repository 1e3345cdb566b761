"""The optional LLM fallback (bot/understanding/llm.py) against a fake OpenAI-compatible server on 127.0.0.1:
the request it sends (tool schemas, nothing but the system prompt and the user's text, the key), how replies and
failures become an `LlmChoice` or None, the tool schemas of the real registry, and `command_line` read back by the
router's own parser."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

import bot.commands  # noqa: F401  (registers every command)
from bot.core.messages import Incoming
from bot.core.router import Context, Router, Services, _split, registry
from bot.understanding import llm
from bot.understanding.llm import SYSTEM_PROMPT, LlmChoice, LlmFallback, command_line, tool_definitions
from lifecycle.reports.analytics import Period
from lifecycle.store.models import Account, User
from lifecycle.store.settings import load_settings

KEY = "sk-test-0123456789abcdef"
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# --- a fake OpenAI-compatible server -------------------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeLlm:
    """POST /v1/chat/completions answered by `reply` (status, JSON body), after `delay` seconds; every request kept."""

    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    reply: Callable[[dict[str, Any]], tuple[int, Any]] = lambda body: (200, completion(content="hello"))
    delay: float = 0.0


def completion(*, calls: list[tuple[str, Any]] | None = None, content: str | None = None) -> dict[str, Any]:
    """A chat.completions reply: tool calls as (name, arguments as sent), or words."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(calls)
        ]
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
    }


def tool_reply(name: str, arguments: Any) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return lambda body: (200, completion(calls=[(name, raw)]))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                "OPENAI_API_KEY", "OPENAI_BASE_URL", "CSBOT_LLM_BASE_URL", "CSBOT_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeLlm]:
    state = FakeLlm()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if state.delay:
                time.sleep(state.delay)
            status, payload = (404, {"error": {"message": "not found"}}) if self.path != "/v1/chat/completions" \
                else state.reply(body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (the timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fallback(fake: FakeLlm, *, timeout: float = 5.0, api_key: str | None = KEY) -> LlmFallback:
    return LlmFallback(base_url=fake.base_url, model="fake-model", api_key=api_key, timeout=timeout)


def tools_for(*names: str) -> list[dict[str, Any]]:
    return tool_definitions(registry.commands[n] for n in names)


# --- choose ---------------------------------------------------------------------------------------------------------


def test_a_tool_call_becomes_a_choice(fake: FakeLlm) -> None:
    fake.reply = tool_reply("at-risk", {"which": "segment", "segment": "enterprise"})
    choice = fallback(fake).choose("which big customers might leave us?", tools_for("at-risk", "find"))
    assert choice == LlmChoice("at-risk", {"which": "segment", "segment": "enterprise"})


def test_the_request_carries_the_tools_and_nothing_but_the_message(fake: FakeLlm) -> None:
    fake.reply = tool_reply("note", {"acct": "Northwind Traders", "text": "called the CFO"})
    names = ["account", "note", "at-risk", "renewals", "cohorts"]
    tools = tools_for(*names)
    text = "jot down for Northwind Traders that I called the CFO"
    assert fallback(fake).choose(text, tools, lang="en") == LlmChoice(
        "note", {"acct": "Northwind Traders", "text": "called the CFO"}
    )
    assert len(fake.requests) == 1
    request = fake.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert set(body) == {"model", "messages", "tools", "tool_choice", "temperature"}
    assert body["model"] == "fake-model"
    assert body["tool_choice"] == "auto"
    assert body["temperature"] == 0
    assert body["tools"] == tools
    assert [t["function"]["name"] for t in body["tools"]] == names
    system, user = body["messages"]
    assert set(system) == {"role", "content"} and system["role"] == "system"
    assert system["content"].startswith(SYSTEM_PROMPT)
    assert "exactly one tool" in system["content"] and "Never answer in words" in system["content"]
    assert user == {"role": "user", "content": text}


def test_no_key_sends_a_placeholder_never_the_environment_key(fake: FakeLlm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    fake.reply = tool_reply("cohorts", {})
    assert fallback(fake, api_key=None).choose("cohort curves please", tools_for("cohorts")) == LlmChoice("cohorts", {})
    assert "sk-from-the-environment" not in fake.requests[0].headers.get("authorization", "")


def test_a_slow_server_gives_none_quickly(fake: FakeLlm) -> None:
    fake.delay = 2.0
    fake.reply = tool_reply("cohorts", {})
    started = time.monotonic()
    assert fallback(fake, timeout=0.3).choose("cohorts?", tools_for("cohorts")) is None
    assert time.monotonic() - started < 1.5
    assert len(fake.requests) == 1  # no retries


def test_an_http_error_gives_none_without_retrying(fake: FakeLlm, caplog: pytest.LogCaptureFixture) -> None:
    fake.reply = lambda body: (500, {"error": {"message": "boom", "type": "server_error"}})
    with caplog.at_level(logging.WARNING, logger="csbot.llm"):
        assert fallback(fake).choose("at risk?", tools_for("at-risk")) is None
    assert len(fake.requests) == 1
    assert "failed" in caplog.text


def test_the_key_is_never_logged(fake: FakeLlm, caplog: pytest.LogCaptureFixture) -> None:
    fake.reply = lambda body: (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    with caplog.at_level(logging.DEBUG):
        assert fallback(fake).choose("at risk?", tools_for("at-risk")) is None
    assert "failed" in caplog.text
    assert KEY not in caplog.text
    assert KEY not in repr(fallback(fake))


def test_a_refused_connection_gives_none() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        port = server.server_address[1]  # closed again below: nothing listens there
    gone = LlmFallback(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key=KEY, timeout=2)
    assert gone.choose("at risk?", tools_for("at-risk")) is None


def test_a_reply_in_words_gives_none(fake: FakeLlm) -> None:
    fake.reply = lambda body: (200, completion(content="Sure! Here are your accounts at risk: …"))
    assert fallback(fake).choose("at risk?", tools_for("at-risk")) is None


@pytest.mark.parametrize("arguments", ['{"which": "mine"', "[1, 2]", '"mine"', "null", "not json"])
def test_arguments_that_are_not_a_json_object_give_none(fake: FakeLlm, arguments: str) -> None:
    fake.reply = tool_reply("at-risk", arguments)
    assert fallback(fake).choose("at risk?", tools_for("at-risk")) is None


def test_an_unreadable_reply_gives_none(fake: FakeLlm) -> None:
    fake.reply = lambda body: (200, b"<html>gateway says hi</html>")
    assert fallback(fake).choose("at risk?", tools_for("at-risk")) is None
    fake.reply = lambda body: (200, {"choices": []})
    assert fallback(fake).choose("at risk?", tools_for("at-risk")) is None


def test_the_first_of_several_calls_is_taken_and_unknown_names_are_returned(fake: FakeLlm) -> None:
    fake.reply = lambda body: (200, completion(calls=[("renewals", '{"days": 60}'), ("alerts", "{}")]))
    choice = fallback(fake).choose("renewals soon", tools_for("renewals", "alerts"))
    assert choice == LlmChoice("renewals", {"days": 60})
    fake.reply = tool_reply("delete_everything", {})
    assert fallback(fake).choose("rm -rf", tools_for("renewals")) == LlmChoice("delete_everything", {})


def test_empty_arguments_are_no_arguments(fake: FakeLlm) -> None:
    fake.reply = tool_reply("cohorts", "")
    assert fallback(fake).choose("cohorts", tools_for("cohorts")) == LlmChoice("cohorts", {})


def test_no_tools_or_no_text_sends_nothing(fake: FakeLlm) -> None:
    assert fallback(fake).choose("at risk?", []) is None
    assert fallback(fake).choose("   ", tools_for("at-risk")) is None
    assert fake.requests == []


# --- from_settings --------------------------------------------------------------------------------------------------


def test_from_settings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert LlmFallback.from_settings(load_settings(database_url="sqlite://", llm_base_url=None)) is None
    settings = load_settings(database_url="sqlite://", llm_base_url="http://127.0.0.1:9/v1", llm_model="tiny",
                             llm_api_key=KEY, llm_timeout=1.5)
    made = LlmFallback.from_settings(settings)
    assert made is not None
    assert (made.base_url, made.model, made.timeout) == ("http://127.0.0.1:9/v1", "tiny", 1.5)
    monkeypatch.setattr(llm, "_openai", lambda: None)  # csbot installed without the `llm` extra
    with caplog.at_level(logging.WARNING, logger="csbot.llm"):
        assert LlmFallback.from_settings(settings) is None
    assert "openai" in caplog.text and KEY not in caplog.text


# --- tool_definitions -----------------------------------------------------------------------------------------------


def test_tool_definitions_of_the_real_registry() -> None:
    tools = tool_definitions(registry.commands.values())
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    assert set(by_name) == set(registry.commands)
    assert all(t["type"] == "function" for t in tools)
    for name, function in by_name.items():
        spec = registry.commands[name]
        assert TOOL_NAME.match(name)
        assert function["description"].startswith(spec.help_en)
        if spec.help_zh:
            assert function["description"] == f"{spec.help_en} / {spec.help_zh}"
        params = function["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert list(params["properties"]) == [a.name for a in spec.args]
        assert params["required"] == [a.name for a in spec.args if not a.optional]
        for arg in spec.args:
            prop = params["properties"][arg.name]
            assert prop["type"] == ("integer" if arg.param.kind in ("int", "days") else "string")
            assert prop["description"]
            if arg.param.choices and arg.param.kind == "word":
                assert prop["enum"] == list(arg.param.choices)
            else:
                assert "enum" not in prop
        json.dumps(function)  # plain JSON
    assert by_name["note"]["parameters"]["required"] == ["acct", "text"]
    assert by_name["note"]["parameters"]["properties"]["acct"]["description"] == "the account's name"
    assert by_name["at-risk"]["parameters"]["required"] == []
    assert by_name["at-risk"]["parameters"]["properties"]["which"]["enum"] == ["mine", "all"]
    assert by_name["at-risk"]["parameters"]["properties"]["segment"]["description"] == "a customer segment's name"
    assert by_name["stage"]["parameters"]["properties"]["to_stage"]["description"] == \
        "a lifecycle stage's name, or auto"
    assert by_name["renewals"]["parameters"]["properties"]["days"]["type"] == "integer"
    assert "default 90" in by_name["renewals"]["parameters"]["properties"]["days"]["description"]
    assert by_name["cohorts"]["parameters"]["properties"] == {}
    assert by_name["useful"]["parameters"]["required"] == ["alert_id", "verdict"]


# --- command_line, read back by the router's parser -----------------------------------------------------------------


@pytest.fixture
def parse(engine: Engine) -> Iterator[Callable[[str], tuple[str, dict[str, Any]]]]:
    """The router's own splitting and argument parsing, as a manager who may change every account."""
    with Session(engine) as s:
        boss = User(email="maya@example.com", name="Maya Chen", role="manager", slack_user_id="UMAYA")
        s.add(boss)
        s.flush()
        for i, name in enumerate(["Northwind Traders", "Northwind", "O'Brien & Sons", "Globex"]):
            s.add(Account(external_id=f"ACC-{i}", name=name, name_key=name.casefold(), owner_id=boss.id,
                          arr=10_000, seats=5, stage="adoption", segment="enterprise"))
        s.commit()
    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://", csm_read_scope="all")))
    with Session(engine) as session:
        user = session.get(User, 1)
        assert user is not None

        def read(line: str) -> tuple[str, dict[str, Any]]:
            words = _split(line)
            spec = registry.lookup(words[0])
            assert spec is not None
            ctx = Context(session, router.services, Incoming(platform="console", sender_id=user.email, text=line),
                          user, "en", spec)
            kwargs = router._parse(ctx, spec, words[1:])
            return spec.name, {k: v.name if isinstance(v, Account) else v for k, v in kwargs.items()}

        yield read


def line(command: str, **arguments: Any) -> str:
    return command_line(registry.commands[command], arguments)


@pytest.mark.parametrize(
    ("command", "arguments", "expected", "parsed"),
    [
        ("account", {"acct": "Northwind Traders"}, "account Northwind Traders", {"acct": "Northwind Traders"}),
        ("account", {"acct": "Northwind"}, "account Northwind", {"acct": "Northwind"}),
        ("account", {"acct": "O'Brien & Sons"}, 'account "O\'Brien & Sons"', {"acct": "O'Brien & Sons"}),
        ("note", {"acct": "Northwind Traders", "text": "called the CFO"}, 'note "Northwind Traders" called the CFO',
         {"acct": "Northwind Traders", "text": "called the CFO"}),
        ("note", {"acct": "Northwind", "text": "called the CFO"}, "note Northwind called the CFO",
         {"acct": "Northwind", "text": "called the CFO"}),
        ("note", {"text": "they're keen", "acct": 'Northwind "Traders"'},
         'note "Northwind Traders" "they\'re keen"', {"acct": "Northwind Traders", "text": "they're keen"}),
        ("note", {"acct": "O'Brien & Sons", "text": 'asked for a "deep dive" on C:\\reports'},
         'note "O\'Brien & Sons" "asked for a \\"deep dive\\" on C:\\\\reports"',
         {"acct": "O'Brien & Sons", "text": 'asked for a "deep dive" on C:\\reports'}),
        ("stage", {"acct": "Northwind Traders"}, "stage Northwind Traders",
         {"acct": "Northwind Traders", "to_stage": None, "reason": ""}),
        ("stage", {"acct": "Northwind Traders", "to_stage": "expansion", "reason": "they signed the upsell"},
         'stage "Northwind Traders" expansion they signed the upsell',
         {"acct": "Northwind Traders", "to_stage": "expansion", "reason": "they signed the upsell"}),
        ("stage", {"acct": "Globex", "to_stage": "renewal", "reason": None}, "stage Globex renewal",
         {"acct": "Globex", "to_stage": "renewal", "reason": ""}),
        ("owner", {"acct": "Northwind Traders", "who": "sofia.rossi"}, 'owner "Northwind Traders" sofia.rossi',
         {"acct": "Northwind Traders", "who": "sofia.rossi"}),
        ("renewals", {}, "renewals", {"days": 90, "which": None}),
        ("renewals", {"days": 60}, "renewals 60", {"days": 60, "which": None}),
        ("renewals", {"days": 30, "which": "MINE"}, "renewals 30 mine", {"days": 30, "which": "mine"}),
        ("alerts", {"which": "all"}, "alerts all", {"which": "all", "show": 10}),
        ("alerts", {"which": ""}, "alerts", {"which": None, "show": 10}),
        ("alerts", {"show": 20}, "alerts 20", {"which": None, "show": 20}),
        ("at-risk", {"segment": "enterprise"}, "at-risk segment enterprise", {"which": None, "segment": "enterprise"}),
        ("at-risk", {"which": "mine", "segment": "enterprise"}, "at-risk mine segment enterprise",
         {"which": "mine", "segment": "enterprise"}),
        ("renewals", {"which": "mine"}, "renewals mine", {"days": 90, "which": "mine"}),
        ("retention", {"period": "6m", "segment": "enterprise"}, "retention 6m segment enterprise",
         {"period": Period(6, "m"), "segment": "enterprise"}),
        ("kpis", {"stage": "adoption"}, "kpis adoption", {"stage": "adoption"}),
        ("help", {"topic": "renewals"}, "help renewals", {"topic": "renewals"}),
        ("snooze", {"alert_id": 12, "days": 3}, "snooze 12 3", {"alert_id": 12, "days": 3}),
        ("find", {"filters": "grade=red segment=enterprise"}, "find grade=red segment=enterprise",
         {"filters": "grade=red segment=enterprise"}),
        ("cohorts", {}, "cohorts", {}),
    ],
)
def test_command_line_round_trips(
    parse: Callable[[str], tuple[str, dict[str, Any]]],
    command: str, arguments: dict[str, Any], expected: str, parsed: dict[str, Any],
) -> None:
    text = line(command, **arguments)
    assert text == expected
    assert parse(text) == (command, parsed)


@pytest.mark.parametrize(
    ("command", "arguments", "problem"),
    [
        ("account", {"acct": "Northwind", "owner": "me"}, "unknown argument"),
        ("note", {"acct": "Northwind"}, "missing argument text"),
        ("note", {"text": "called"}, "missing argument acct"),
        ("account", {"acct": "   "}, "missing argument acct"),
        ("account", {"acct": '""'}, "empty"),
        ("account", {"acct": 42}, "must be a string"),
        ("renewals", {"days": "60"}, "whole number"),
        ("renewals", {"days": 60.0}, "whole number"),
        ("renewals", {"days": True}, "whole number"),
        ("renewals", {"days": -5}, "whole number"),
        ("note", {"acct": "Northwind", "text": ["called"]}, "must be a string"),
        ("alerts", {"which": "team"}, "must be one of all, mine"),
        ("stage", {"acct": "Northwind", "to_stage": "win back"}, "one word"),
        ("note", {"acct": "Northwind", "text": "called\nthe CFO"}, "control character"),
        ("note", {"acct": "North\x07wind", "text": "called"}, "control character"),
        ("note", {"acct": "Northwind", "text": "called\u2028the CFO"}, "control character"),
        ("funnel", {"period": "soon"}, "must be a period"),
        ("stage", {"acct": "Northwind", "reason": "because"}, "reason given without to_stage"),
    ],
)
def test_command_line_refuses(command: str, arguments: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        line(command, **arguments)


# --- through the router: the model only picks, the router decides -------------------------------------------------

ROUTER_DAY = __import__("datetime").date(2026, 12, 7)
PRIYA = "priya.raman@csbot-demo.example"


@pytest.fixture
def demo_router(engine: Engine, fake: FakeLlm) -> Router:
    from lifecycle.intake.demo import seed_demo

    with Session(engine) as session:
        seed_demo(session, accounts=60, today=ROUTER_DAY)
        session.commit()
    settings = load_settings(database_url="sqlite://", llm_base_url=fake.base_url, llm_model="fake-model",
                             llm_api_key=KEY, llm_timeout=2.0)
    return Router(Services(engine=engine, settings=settings, today=lambda: ROUTER_DAY))


def say(router: Router, text: str, who: str = PRIYA) -> Any:
    return router.handle(Incoming(platform="console", sender_id=who, text=text))


UNREADABLE = "blorp the zanzibar quux for me"


def test_an_unreadable_message_goes_to_the_model_and_its_pick_runs_as_a_command(
    demo_router: Router, fake: FakeLlm, engine: Engine
) -> None:
    fake.reply = tool_reply("account", {"acct": "Northwind Traders"})
    reply = say(demo_router, UNREADABLE)
    assert reply.understood == "account Northwind Traders"
    assert reply.text.startswith("I read this as `account Northwind Traders`.") and reply.cards
    [request] = fake.requests
    sent = json.dumps(request.body, ensure_ascii=False)
    with Session(engine) as session:
        names = [a.name for a in session.exec(select(Account)).all()]
    assert not [n for n in names if n in sent], "account data left the machine"
    assert [m["content"] for m in request.body["messages"]][-1] == UNREADABLE


def test_a_readable_message_never_reaches_the_model(demo_router: Router, fake: FakeLlm) -> None:
    assert say(demo_router, "how is northwind doing?").understood == "account Northwind Traders"
    assert fake.requests == []


def test_a_malicious_pick_of_a_command_the_user_may_not_run_is_refused(
    demo_router: Router, fake: FakeLlm, engine: Engine
) -> None:
    fake.reply = tool_reply("owner", {"acct": "Northwind Traders", "who": "sofia.rossi"})
    with Session(engine) as session:
        before = session.exec(select(Account).where(Account.name == "Northwind Traders")).one().owner_id
    reply = say(demo_router, UNREADABLE)
    assert "can't use `owner`" in reply.text and not reply.buttons
    offered = {t["function"]["name"] for t in fake.requests[0].body["tools"]}
    assert "owner" not in offered and "account" in offered  # a CSM is not even offered it
    with Session(engine) as session:
        assert session.exec(select(Account).where(Account.name == "Northwind Traders")).one().owner_id == before


def test_a_change_the_model_picks_is_asked_about_first(demo_router: Router, fake: FakeLlm, engine: Engine) -> None:
    from lifecycle.store.models import Note

    fake.reply = tool_reply("note", {"acct": "Northwind Traders", "text": "sso rollout agreed"})
    with Session(engine) as session:
        notes = len(session.exec(select(Note)).all())
    reply = say(demo_router, UNREADABLE)
    assert [b.value for b in reply.buttons] == ["yes", "no"]
    assert reply.understood == "note \"Northwind Traders\" sso rollout agreed"
    with Session(engine) as session:
        assert len(session.exec(select(Note)).all()) == notes
    say(demo_router, "yes")
    with Session(engine) as session:
        assert len(session.exec(select(Note)).all()) == notes + 1


def test_a_pick_that_is_not_a_command_or_a_timeout_falls_back_to_the_local_answer(
    demo_router: Router, fake: FakeLlm
) -> None:
    fake.reply = tool_reply("drop_tables", {})
    assert "couldn't turn that into something I can do" in say(demo_router, UNREADABLE).text
    fake.reply = tool_reply("account", {"acct": "Northwind Traders"})
    fake.delay = 3.0
    started = time.perf_counter()
    reply = say(demo_router, UNREADABLE)
    assert reply.understood == "out-of-scope" and time.perf_counter() - started < 2.9
