"""The text protocol of tool calls and what the model reads of a request (pure functions)."""

from __future__ import annotations

import json
import random

import pytest

from onthejob.serve.chat import (
    TOOLS_HEADER,
    ChatError,
    ModelTurn,
    ToolCallGate,
    call_line,
    check_tool_ids,
    forced_tool,
    model_turns,
    parse_reply,
    parse_tool_call,
    tool_listing,
    with_listing,
)
from onthejob.serve.protocol import ChatRequest, ToolSpec


def tool(name: str, properties: dict | None = None, description: str = "") -> ToolSpec:
    parameters = {"type": "object", "properties": properties} if properties is not None else {}
    return ToolSpec.model_validate(
        {
            "type": "function",
            "function": {"name": name, "description": description, "parameters": parameters},
        }
    )


SHOP = tool("shop", {"query": {"type": "string"}}, "search and buy in the shop")
CALC = tool("calc", {"a": {"type": "number"}, "b": {"type": "number"}}, "add two numbers")
CLOCK = tool("clock", None, "the time")
TOOLS = [SHOP, CALC, CLOCK]


def test_the_listing_has_one_line_per_tool():
    assert tool_listing(TOOLS).splitlines() == [
        TOOLS_HEADER,
        "shop: search and buy in the shop (arguments: query)",
        "calc: add two numbers (arguments: a JSON object with keys a, b)",
        "clock: the time (no arguments)",
    ]


@pytest.mark.parametrize(
    ("reply", "call"),
    [
        ("shop: search blue shirt", ("shop", {"query": "search blue shirt"})),
        ("  shop:search blue shirt\n", ("shop", {"query": "search blue shirt"})),
        ('calc: {"a": 1, "b": 2}', ("calc", {"a": 1, "b": 2})),
        ("clock:", ("clock", {})),
        ("clock: {}", ("clock", {})),
        ("calc: 1 + 2", None),  # not a JSON object
        ("calc: [1, 2]", None),
        ("clock: now", None),
        ("bank: pay 10", None),  # not declared
        ("shop: search\nopen p1", None),  # two lines
        ("Shop: search", None),
        ("the shop: has it", None),
        ("hello", None),
    ],
)
def test_parse_tool_call(reply, call):
    parsed = parse_tool_call(reply, TOOLS)
    if call is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (parsed[0], json.loads(parsed[1])) == call


@pytest.mark.parametrize(
    "line", ["shop: search blue shirt", 'calc: {"a": 1, "b": 2}', "clock:", "shop: a: b"]
)
def test_a_parsed_call_is_written_back_as_the_same_line(line):
    name, arguments = parse_tool_call(line, TOOLS)
    assert call_line(name, arguments, TOOLS) == line


def test_model_turns_list_tools_once_and_write_calls_as_lines():
    body = {
        "messages": [
            {"role": "system", "content": "you work at acme."},
            {"role": "user", "content": "find a shirt"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "shop", "arguments": '{"query": "shirt"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "[p1] shirt"},
        ],
        "tools": [SHOP.model_dump()],
    }
    turns = model_turns(ChatRequest.model_validate(body))
    assert turns[0].content == "you work at acme.\n" + tool_listing([SHOP])
    assert turns[2] == ModelTurn(
        "assistant", "shop: shirt", (("c1", "shop", '{"query": "shirt"}'),)
    )
    assert turns[3] == ModelTurn("tool", "[p1] shirt", (), "c1")
    # a stored transcript sent back (its system turn already lists the tools) is unchanged
    body["messages"][0]["content"] = turns[0].content
    assert model_turns(ChatRequest.model_validate(body)) == turns
    assert with_listing("", [SHOP]) == tool_listing([SHOP])


def test_without_a_system_message_the_listing_is_its_own_system_turn():
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [SHOP.model_dump()]}
    turns = model_turns(ChatRequest.model_validate(body))
    assert [t.role for t in turns] == ["system", "user"]
    assert turns[0].content == tool_listing([SHOP])
    assert model_turns(ChatRequest.model_validate({"messages": body["messages"]})) == [
        ModelTurn("user", "hi")
    ]


def test_forced_tool():
    def request(**kw):
        return ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **kw})

    assert forced_tool(request(tools=[SHOP.model_dump()], tool_choice="auto")) is None
    assert forced_tool(request(tools=[SHOP.model_dump()], tool_choice="required")) == "shop"
    named = {"type": "function", "function": {"name": "calc"}}
    both = [SHOP.model_dump(), CALC.model_dump()]
    assert forced_tool(request(tools=both, tool_choice=named)) == "calc"
    with pytest.raises(ChatError, match="only with one declared tool"):
        forced_tool(request(tools=both, tool_choice="required"))


def test_check_tool_ids():
    call = ModelTurn("assistant", "shop: x", (("c1", "shop", "{}"),))
    answer = ModelTurn("tool", "ok", (), "c1")
    check_tool_ids([call], [answer])
    with pytest.raises(ChatError, match="no earlier assistant message"):
        check_tool_ids([], [answer])
    with pytest.raises(ChatError, match="answered twice"):
        check_tool_ids([call, answer], [answer])
    with pytest.raises(ChatError, match="used twice"):
        check_tool_ids([call], [call])


def test_the_gate_holds_a_possible_call_and_releases_plain_text():
    gate = ToolCallGate(TOOLS, active=True)
    assert [gate.feed(d) for d in ["sh", "op", ": search", " blue"]] == ["", "", "", ""]
    assert gate.held == "shop: search blue"
    gate = ToolCallGate(TOOLS, active=True)
    assert [gate.feed(d) for d in ["s", "un", "ny"]] == ["", "sun", "ny"]
    gate = ToolCallGate(TOOLS, active=True)
    assert [gate.feed(d) for d in ["shop: x", "\nmore"]] == ["", "shop: x\nmore"]
    assert ToolCallGate(TOOLS, active=False).feed("shop: x") == "shop: x"


def test_render_gives_the_model_its_own_sampled_tokens_back(tokenizer):
    from onthejob.models import END, encode_text, render_chat
    from onthejob.serve.exchange import render

    end = tokenizer.convert_tokens_to_ids(END)
    special = tokenizer.convert_tokens_to_ids("<|tool|>")
    odd = [i for ch in "blue shirt" for i in encode_text(tokenizer, ch)]  # one per character
    assert odd != encode_text(tokenizer, "blue shirt")
    turns = [
        ModelTurn("user", "hi"),
        ModelTurn("assistant", "blue shirt"),  # sampled as `odd`, ended by the end token
        ModelTurn("user", "and?"),
        ModelTurn("assistant", "<|tool|>x"),  # a special token sampled, cut by the budget
        ModelTurn("user", "count"),
        ModelTurn("assistant", "one two"),  # cut before the stop string " three"
    ]
    stop_cut = encode_text(tokenizer, "one two three")
    sampled = {1: [*odd, end], 3: [special, *encode_text(tokenizer, "x")], 5: stop_cut}
    ids, spans = render(tokenizer, turns, sampled)
    plain = render_chat(tokenizer, [{"role": t.role, "content": t.content} for t in turns], True)
    assert spans[1] == [*odd, end]
    assert spans[3] == [special, *encode_text(tokenizer, "x"), end]
    assert spans[5] == encode_text(tokenizer, "one two") + [end]  # re-encoded from its text
    assert [spans[i] for i in (0, 2, 4)] == [
        plain.ids[start:stop] for i, (_, start, stop) in enumerate(plain.spans) if i % 2 == 0
    ]
    assert ids == [
        token
        for turn, span in zip(turns, spans, strict=True)
        for token in [tokenizer.convert_tokens_to_ids(f"<|{turn.role}|>"), *span]
    ] + [tokenizer.convert_tokens_to_ids("<|assistant|>")]
    assert render(tokenizer, turns) == (plain.ids, [plain.ids[a:b] for _, a, b in plain.spans])


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("shop: search red hat", ("", "shop", "search red hat")),
        ("budget 45\np1 20 ok\nshop: open p1", ("budget 45\np1 20 ok", "shop", "open p1")),
        ("  \nshop: x\n", ("", "shop", "x")),
        ("shopping list\nshop: cart", ("shopping list", "shop", "cart")),
        ("shop: a\nshop: b", None),  # two calls
        ("shop: x\nmore text", None),  # a call that is not the last line
        ("notes\nbank: pay 10", None),  # not a declared tool
        ("hello", None),
    ],
)
def test_parse_reply_takes_notes_before_a_call_on_the_last_line(reply, parsed):
    got = parse_reply(reply, TOOLS)
    if parsed is None:
        assert got is None
    else:
        assert got is not None and (got[0], got[1], json.loads(got[2])) == (
            parsed[0],
            parsed[1],
            {"query": parsed[2]},
        )


@pytest.mark.parametrize(
    "reply",
    [
        "shop: search red hat",
        "budget 45\np1 20 ok\nshop: open p1",
        "  \nshop: x",
        "notes\n\nshop: x\n",
        "sh",
        "a\nsh",
        "shop: x\nmore text",
        "x\nshop: y\nz",
        "shopping list\nshop: cart",
        "hello there\n",
    ],
)
def test_streamed_content_is_the_content_of_the_whole_reply(reply):
    """Whatever the chunking, the text the gate sends (plus what it holds, when the reply is
    not a call) is the content `parse_reply` gives the whole reply."""
    for seed in range(20):
        rng = random.Random(seed)
        gate, sent, i = ToolCallGate(TOOLS, active=True), "", 0
        while i < len(reply):
            size = rng.randint(1, 4)
            sent, i = sent + gate.feed(reply[i : i + size]), i + size
        parsed = parse_reply(reply, TOOLS)
        assert (sent if parsed else sent + gate.held) == (parsed[0] if parsed else reply)
