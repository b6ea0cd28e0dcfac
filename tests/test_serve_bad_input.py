"""Bad requests get a 4xx in OpenAI's error shape, a one-line message that says what was
wrong, and leave the store exactly as it was (every table's row count unchanged)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from onthejob.serve import ServeConfig
from onthejob.serve.engine import EngineConfig
from onthejob.store import Store
from tests.serve_support import GREETING, SHOP_TOOL, running_server, taught_model_dir

BODY_LIMIT = 20_000
HELLO = [{"role": "user", "content": "hello"}]


@dataclass
class Env:
    url: str
    store: Store
    active: str
    """A session with two stored turns: "hello" and the greeting."""
    ended: str
    """A session that has ended."""


@pytest.fixture(scope="module")
def env(tmp_path_factory, tokenizer, tiny_model) -> Iterator[Env]:
    model_dir = taught_model_dir(tmp_path_factory, tokenizer, tiny_model)
    config = ServeConfig(max_body_bytes=BODY_LIMIT, engine=EngineConfig(batch_wait_s=0.0))
    with running_server(tmp_path_factory.mktemp("bad"), model_dir, config) as server:
        sessions = [httpx.post(f"{server.url}/v1/sessions", json={}).json()["id"] for _ in "ab"]
        active, ended = sessions
        for session in sessions:
            reply = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"messages": HELLO, "temperature": 0, "max_tokens": 30},
                headers={"X-Session-Id": session},
            )
            assert reply.json()["choices"][0]["message"]["content"] == GREETING
        httpx.post(f"{server.url}/v1/sessions/{ended}/end").raise_for_status()
        with Store(server.store_path) as store:
            yield Env(server.url, store, active, ended)


def chat(**body: Any) -> dict[str, Any]:
    return {"json": {"model": "default", **body}}


STORED = [*HELLO, {"role": "assistant", "content": GREETING}]
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_x", "type": "function", "function": {"name": "shop", "arguments": "{}"}}
    ],
}

# (case id, method, path, request kwargs (or a function of Env giving them), status, words)
CHAT = "/v1/chat/completions"
CASES: list[tuple[str, str, str, Any, int, str]] = [
    ("malformed json", "POST", CHAT, {"content": b'{"messages": ['}, 400, "not valid JSON"),
    (
        "invalid utf-8",
        "POST",
        CHAT,
        {"content": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'},
        400,
        "not valid UTF-8",
    ),
    (
        "lone surrogate",
        "POST",
        CHAT,
        {"content": b'{"messages": [{"role": "user", "content": "\\ud800"}]}'},
        400,
        "lone surrogate",
    ),
    ("empty body", "POST", CHAT, {"content": b""}, 400, "empty"),
    ("not an object", "POST", CHAT, {"json": [1, 2]}, 400, "must be a JSON object"),
    ("no messages", "POST", CHAT, chat(messages=[]), 400, "messages"),
    ("messages not a list", "POST", CHAT, chat(messages="hello"), 400, "messages"),
    (
        "unknown role",
        "POST",
        CHAT,
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "role",
    ),
    (
        "content of a wrong type",
        "POST",
        CHAT,
        chat(messages=[{"role": "user", "content": 5}]),
        400,
        "messages.0.content",
    ),
    (
        "temperature a string",
        "POST",
        CHAT,
        chat(messages=HELLO, temperature="hot"),
        400,
        "temperature",
    ),
    ("temperature too high", "POST", CHAT, chat(messages=HELLO, temperature=7), 400, "temperature"),
    ("max_tokens zero", "POST", CHAT, chat(messages=HELLO, max_tokens=0), 400, "max_tokens"),
    ("stream a string", "POST", CHAT, chat(messages=HELLO, stream="yes"), 400, "stream"),
    ("n above one", "POST", CHAT, chat(messages=HELLO, n=2), 400, "n must be 1"),
    ("empty stop string", "POST", CHAT, chat(messages=HELLO, stop=[""]), 400, "stop"),
    (
        "tool without a call id",
        "POST",
        CHAT,
        chat(messages=[*HELLO, {"role": "tool", "content": "x"}]),
        400,
        "tool_call_id",
    ),
    (
        "tool answers an unknown call",
        "POST",
        CHAT,
        chat(messages=[*HELLO, {"role": "tool", "content": "x", "tool_call_id": "call_9"}]),
        400,
        "no earlier assistant message made",
    ),
    (
        "tool_choice without tools",
        "POST",
        CHAT,
        chat(messages=HELLO, tool_choice="required"),
        400,
        "tool_choice needs declared tools",
    ),
    (
        "tool_choice names an undeclared tool",
        "POST",
        CHAT,
        chat(
            messages=HELLO,
            tools=[SHOP_TOOL],
            tool_choice={"type": "function", "function": {"name": "bank"}},
        ),
        400,
        "not in `tools`",
    ),
    (
        "bad tool name",
        "POST",
        CHAT,
        chat(
            messages=HELLO,
            tools=[{"type": "function", "function": {"name": "two words"}}],
        ),
        400,
        "tools.0.function.name",
    ),
    (
        "call id used twice",
        "POST",
        CHAT,
        chat(messages=[*HELLO, TOOL_CALL, TOOL_CALL], tools=[SHOP_TOOL]),
        400,
        "used twice",
    ),
    (
        "unknown session",
        "POST",
        CHAT,
        {**chat(messages=HELLO), "headers": {"X-Session-Id": "no-such-session"}},
        404,
        "unknown session 'no-such-session'",
    ),
    (
        "unknown session in user",
        "POST",
        CHAT,
        chat(messages=HELLO, user="no-such-session"),
        404,
        "unknown session",
    ),
    (
        "header and user disagree",
        "POST",
        CHAT,
        lambda env: {
            **chat(messages=HELLO, user=env.ended),
            "headers": {"X-Session-Id": env.active},
        },
        400,
        "name different sessions",
    ),
    (
        "unknown model",
        "POST",
        CHAT,
        chat(messages=HELLO, model="gpt-9"),
        404,
        "unknown model 'gpt-9'",
    ),
    (
        "tenant without a promoted model",
        "POST",
        CHAT,
        {**chat(messages=HELLO), "headers": {"X-Tenant": "nobody"}},
        404,
        "tenant 'nobody' has no promoted model",
    ),
    (
        "another tenant's session",
        "POST",
        CHAT,
        lambda env: {
            **chat(messages=STORED),
            "headers": {"X-Session-Id": env.active, "X-Tenant": "other"},
        },
        400,
        "belongs to tenant 'default'",
    ),
    (
        "oversize body",
        "POST",
        CHAT,
        chat(messages=[{"role": "user", "content": "x" * BODY_LIMIT}]),
        413,
        f"limit is {BODY_LIMIT}",
    ),
    (
        "oversize body without a length",
        "POST",
        CHAT,
        {"content": iter([b'{"messages": "'] + [b"x" * 4096] * 6 + [b'"}'])},
        413,
        "limit",
    ),
    (
        "prompt longer than the context",
        "POST",
        CHAT,
        chat(messages=[{"role": "user", "content": "blue shirt " * 300}]),
        400,
        "shorten the conversation",
    ),
    (
        "max_tokens beyond the context",
        "POST",
        CHAT,
        chat(messages=HELLO, max_tokens=1000),
        400,
        "lower max_tokens",
    ),
    (
        "history that does not continue the session",
        "POST",
        CHAT,
        lambda env: {
            **chat(messages=[{"role": "user", "content": "something else"}]),
            "headers": {"X-Session-Id": env.active},
        },
        409,
        "do not continue the session's stored turns",
    ),
    (
        "ended session",
        "POST",
        CHAT,
        lambda env: {**chat(messages=STORED), "headers": {"X-Session-Id": env.ended}},
        409,
        "has ended",
    ),
    (
        "feedback with a bad thumb",
        "POST",
        lambda env: f"/v1/sessions/{env.active}/feedback",
        {"json": {"thumb": "sideways"}},
        400,
        "thumb",
    ),
    (
        "empty feedback",
        "POST",
        lambda env: f"/v1/sessions/{env.active}/feedback",
        {"json": {"evaluation": "  "}},
        400,
        "give a thumb",
    ),
    (
        "feedback on an unknown session",
        "POST",
        "/v1/sessions/nope/feedback",
        {"json": {"thumb": "up"}},
        404,
        "unknown session 'nope'",
    ),
    (
        "feedback as malformed json",
        "POST",
        lambda env: f"/v1/sessions/{env.active}/feedback",
        {"content": b"{thumb: up}"},
        400,
        "not valid JSON",
    ),
    (
        "a session id that is taken",
        "POST",
        "/v1/sessions",
        lambda env: {"json": {"session_id": env.active}},
        409,
        "already exists",
    ),
    ("session meta not an object", "POST", "/v1/sessions", {"json": {"meta": "x"}}, 400, "meta"),
    ("ending an unknown session", "POST", "/v1/sessions/nope/end", {}, 404, "unknown session"),
    (
        "ending an ended session",
        "POST",
        lambda env: f"/v1/sessions/{env.ended}/end",
        {},
        409,
        "already ended",
    ),
    ("showing an unknown session", "GET", "/v1/sessions/nope", {}, 404, "unknown session"),
    ("a bad feedback filter", "GET", "/v1/sessions?feedback=maybe", {}, 400, "feedback must be"),
    ("an unknown route", "GET", "/v2/chat", {}, 404, "no route GET /v2/chat"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_request(env, method, path, kwargs, status, words):
    if callable(path):
        path = path(env)
    if callable(kwargs):
        kwargs = kwargs(env)
    before = env.store.counts()
    response = httpx.request(method, env.url + path, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"]
    assert "\n" not in error["message"]
    assert error["type"].endswith("_error")
    assert env.store.counts() == before


def test_a_good_request_still_works_after_the_bad_ones(env):
    before = env.store.counts()
    response = httpx.post(
        f"{env.url}{CHAT}",
        json={"messages": [*STORED, {"role": "user", "content": "hello"}], "max_tokens": 5},
        headers={"X-Session-Id": env.active},
    )
    assert response.status_code == 200, response.text
    assert env.store.counts()["turns"] == before["turns"] + 2
