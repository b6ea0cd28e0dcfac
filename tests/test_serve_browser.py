"""The web UI in a real headless Chromium (Debian's, driven by playwright): type a message,
get the reply, give a thumb and an evaluation, and find all of it in the store; open a
past session and see its tool call."""

from __future__ import annotations

import os

import httpx
import pytest

from onthejob.store import Store
from tests.serve_support import (
    ANSWER,
    CALL,
    GREETING,
    OBSERVATION,
    SHOP_TOOL,
    running_server,
    taught_model_dir,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`;"
    " .ci/run does)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer, tiny_model):
    model_dir = taught_model_dir(tmp_path_factory, tokenizer, tiny_model)
    with running_server(tmp_path_factory.mktemp("browser"), model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.set_default_timeout(20_000)
    page.goto(server.url)
    yield page
    page.close()
    assert errors == []


def past_session_with_a_tool_call(url: str) -> str:
    session = httpx.post(f"{url}/v1/sessions", json={"user": "dave"}).json()["id"]
    ask = [{"role": "user", "content": "find a blue shirt"}]
    body = {"messages": ask, "tools": [SHOP_TOOL], "temperature": 0, "max_tokens": 30}
    headers = {"X-Session-Id": session}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).json()
    message = reply["choices"][0]["message"]
    call_id = message["tool_calls"][0]["id"]
    body["messages"] = [
        *ask,
        message,
        {"role": "tool", "tool_call_id": call_id, "content": OBSERVATION},
    ]
    httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).raise_for_status()
    return session


def test_chat_then_thumb_and_evaluation_land_in_the_store(page, server):
    page.fill("#author", "carol")
    page.click("summary:has-text('settings and tools')")
    page.fill("#temperature", "0")  # greedy: the taught reply
    page.fill("#message", "hello")
    page.press("#message", "Enter")
    reply = page.locator(".msg.assistant .text").last
    reply.wait_for()
    page.wait_for_function(
        "text => [...document.querySelectorAll('.msg.assistant .text')]"
        ".some(e => e.textContent === text)",
        arg=GREETING,
    )
    assert page.locator(".msg.user .text").first.text_content() == "hello"
    session = page.text_content("#session-id").removeprefix("session ").strip()

    page.click("#thumb-up")
    assert page.get_attribute("#thumb-up", "aria-pressed") == "true"
    page.fill("#evaluation", "friendly and quick")
    page.click("#send-feedback")
    page.wait_for_function(
        "document.querySelector('#feedback-status').textContent === 'feedback saved'"
    )
    assert "friendly and quick" in page.text_content("#feedback-list")

    with Store(server.store_path) as store:
        assert store.session(session).user == "carol"
        turns = store.turns(session)
        assert [(t.role, t.content) for t in turns] == [("user", "hello"), ("assistant", GREETING)]
        assert turns[1].token_ids and turns[1].model_version == server.version
        (feedback,) = store.feedback(session)
        assert (feedback.thumb, feedback.evaluation, feedback.author) == (
            1,
            "friendly and quick",
            "carol",
        )
    page.wait_for_selector(f"#sessions li[data-id='{session}']")


def test_past_sessions_show_their_tool_calls_and_versions_are_listed(page, server):
    session = past_session_with_a_tool_call(server.url)
    page.reload()
    page.wait_for_selector(f"#versions li.promoted:has-text('{server.version}')")
    page.click(f"#sessions li[data-id='{session}']")
    page.wait_for_selector(".msg.toolcall")
    assert page.locator(".msg.toolcall .text").text_content() == CALL
    assert page.locator(".msg.tool .text").text_content() == OBSERVATION
    assert page.locator(".msg.assistant .text").last.text_content() == ANSWER
    assert page.text_content("#session-id") == f"session {session}"
    page.fill("#message", "hello")  # the stored session continues (its tools are not declared)
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2")
    assert page.locator("#chat-error").is_hidden()
    page.click("#thumb-down")
    page.click("#send-feedback")
    page.wait_for_function(
        "document.querySelector('#feedback-status').textContent === 'feedback saved'"
    )
    with Store(server.store_path) as store:
        assert [(f.thumb, f.author) for f in store.feedback(session)] == [(-1, "dave")]
        turns = store.turns(session)
        roles = ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
        assert [t.role for t in turns] == roles
        assert turns[5].content == "hello"
