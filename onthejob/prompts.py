"""The fixed instructions the agent sees: one place, so training and use never drift apart.

Covers: the system prompt of each kind of chat (knowledge questions, each
environment, the world model), the opening messages of an agent episode, and the
text protocol of tool calls: how tools are listed in the system turn and how a reply
calls one (`name: arguments` on its last line, after optional lines of notes that
call nothing, as an OpenAI assistant message carries content besides its tool call).
The grindable `shop` is played through the same `shop` tool that simulated users
declare to the server for the live supplier, so an episode in training and an order
at work read the same, token for token (what makes the transfer from grinding to work
measurable). The server (`onthejob.serve.chat`)
builds its listing from `TOOLS_HEADER` and `tool_line` here.

Not covered: rendering to tokens (see `onthejob.models.tokenizer`); parsing JSON
arguments of tools with several parameters (the server's job).
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]

KNOWLEDGE_SYSTEM = "answer from the notes. quote the line first, then give the answer."
ANSWER_TOKENS = 48
"""Most tokens of a reply to a knowledge question: the quoted line (a procedure's is the
longest, about 25) and the answer."""
AGENT_SYSTEM = {
    "arith": "solve the problem. count step by step, then give the number.",
    "program": "write the python function. reply with code only.",
    "shop": "you operate a web shop. reply with one action.",
}
DEFAULT_AGENT_SYSTEM = "you are an agent. reply with one action."
WORLD_MODEL_SYSTEM = "predict the next page the shop shows."

TOOLS_HEADER = 'tools (to use one, reply with one line "name: arguments"):'
SHOP_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "shop",
        "description": "act in the shop, one action per call",
        "parameters": {
            "type": "object",
            "properties": {"action": {"type": "string"}},
            "required": ["action"],
        },
    },
}
"""The shop tool, as an OpenAI tool declaration: one action line per call."""
TOOL_ENVS = {"shop": "shop"}
"""Environments played through a tool: env name -> tool name."""


def tool_line(name: str, description: str, hint: str) -> str:
    """One tool in the listing, e.g. "shop: act in the shop, one action per call (arguments: action)"."""
    return f"{name}: {description} ({hint})"


def env_system(env_name: str) -> str:
    """The system turn of an episode; tool envs add the listing of their tool, as the server does."""
    system = AGENT_SYSTEM.get(env_name, DEFAULT_AGENT_SYSTEM)
    if env_name not in TOOL_ENVS:
        return system
    function = SHOP_TOOL["function"]
    line = tool_line(function["name"], function["description"], "arguments: action")
    return f"{system}\n{TOOLS_HEADER}\n{line}"


def agent_reply(env_name: str, action: str) -> str:
    """How the agent writes `action` in an episode of `env_name` (a tool call for tool envs)."""
    return f"{TOOL_ENVS[env_name]}: {action}" if env_name in TOOL_ENVS else action


def split_call(reply: str, tools: tuple[str, ...]) -> tuple[str, str] | None:
    """(notes, call line) of a reply whose last line starts like a call of one of `tools`
    ("name:") and whose earlier lines do not; the notes are the earlier lines ("" when
    there are none or they are blank). None for any other reply. The one rule of the
    protocol, shared by episodes (`env_action`) and the server (`serve.chat.parse_reply`)."""
    lines = reply.rstrip().split("\n")
    prefixes = tuple(f"{tool}:" for tool in tools)
    if not lines[-1].lstrip().startswith(prefixes):
        return None
    if any(line.lstrip().startswith(prefixes) for line in lines[:-1]):
        return None
    notes = "\n".join(lines[:-1]).rstrip()
    return (notes if notes.strip() else ""), lines[-1].strip()


def env_action(env_name: str, reply: str) -> str | None:
    """The env action in an agent's reply: the reply itself, or for tool envs the arguments of
    the call of the env's tool on the reply's last line; None when a tool env's reply has no such
    call or calls more than once."""
    if env_name not in TOOL_ENVS:
        return reply
    tool = TOOL_ENVS[env_name]
    split = split_call(reply, (tool,))
    return split[1][len(tool) + 1 :].strip() if split else None


def not_a_call(env_name: str) -> str:
    """The observation an agent gets back for a reply that is not a call of the env's tool."""
    return f'not a tool call: end the reply with one line "{TOOL_ENVS[env_name]}: <action>".'


def agent_opening(env_name: str, first_observation: str) -> list[Message]:
    """System instruction of the environment and its first observation as the user turn."""
    return [
        {"role": "system", "content": env_system(env_name)},
        {"role": "user", "content": first_observation},
    ]


def world_model_prompt(observation: str, action: str) -> list[Message]:
    """The chat that asks for the observation that follows `action` on `observation`."""
    return [
        {"role": "system", "content": WORLD_MODEL_SYSTEM},
        {"role": "user", "content": f"page:\n{observation}\naction: {action}"},
    ]
