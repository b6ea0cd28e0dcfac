"""The tool-call protocol shared by training episodes and the server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from onthejob.envs import make_env, make_tasks
from onthejob.models import build_model, render_chat
from onthejob.prompts import (
    AGENT_SYSTEM,
    SHOP_TOOL,
    agent_opening,
    agent_reply,
    env_action,
    env_system,
    not_a_call,
)
from onthejob.rollout import run_episodes
from onthejob.sampling import SamplingConfig
from onthejob.serve.chat import with_listing
from onthejob.serve.protocol import ToolSpec
from tests.conftest import TINY


def test_a_shop_episode_opens_as_the_server_renders_an_order_session():
    """Grinding and work must read the same: the system turn the server builds for a client
    that declares SHOP_TOOL under the shop's system text is the episode's system turn."""
    served = with_listing(AGENT_SYSTEM["shop"], [ToolSpec.model_validate(SHOP_TOOL)])
    assert served == env_system("shop")
    assert agent_opening("shop", "buy 1 red hat.")[0]["content"] == served


@pytest.mark.parametrize(
    ("reply", "action"),
    [
        ("shop: search red hat", "search red hat"),
        ("  shop:open p317 \n", "open p317"),
        ("shop: checkout", "checkout"),
        ("search red hat", None),
        ("shop search red hat", None),
        ("shop: search red hat\nshop: checkout", None),
        ("budget 45\np1 20 ok\nshop: open p1", "open p1"),
        ("shop: open p1\nthat one", None),
        ("calc: 1 + 2", None),
    ],
)
def test_shop_replies_must_call_the_tool(reply, action):
    assert env_action("shop", reply) == action


def test_envs_without_a_tool_take_the_reply_as_it_is():
    assert env_action("arith", " 12 ") == " 12 "
    assert agent_reply("arith", "12") == "12"
    assert agent_reply("shop", "cart") == "shop: cart"
    assert env_action("shop", agent_reply("shop", "add 2")) == "add 2"
    assert env_system("arith") == AGENT_SYSTEM["arith"]


def test_a_reply_that_is_not_a_call_gets_the_protocol_back_and_no_env_step(tokenizer):
    """An untrained model's replies are not calls: every turn's observation is the protocol
    reminder, and the env's step budget is untouched (no 'out of steps' truncation)."""
    tiny_model = build_model(replace(TINY, max_positions=2048), tokenizer, seed=0).eval()
    task = make_tasks("shop", "train", 1, seed=0)[0]
    env_steps = make_env("shop").config.max_steps
    sampling = SamplingConfig(max_new_tokens=4, temperature=1.0, seed=0)
    [t] = run_episodes(tiny_model, tokenizer, "shop", [task], sampling, max_turns=env_steps + 2)
    tool_turns = [m["content"] for m in t.messages if m["role"] == "tool"]
    assert tool_turns and all(obs == not_a_call("shop") for obs in tool_turns)
    assert t.end_reason == "max turns" and t.reward == 0.0
    rendered = render_chat(tokenizer, t.messages[:2]).ids
    assert t.token_ids[: len(rendered)] == rendered
