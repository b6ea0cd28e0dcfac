"""What the model sees of an OpenAI chat request, and how its reply becomes a tool call.

Covers: turning the request's messages and declared tools into the turns the model
reads (the "model view", which is also what the store keeps), the text protocol of tool
calls, and holding back streamed text that may still turn out to be a tool call.

The tool-call protocol (the onthejob models write tool calls as plain text):

- Declared tools are listed at the end of the system turn, after a header line, one
  line each::

      tools (to use one, reply with one line "name: arguments"):
      shop: search and buy in the supplier shop (arguments: query)
      calc: add two numbers (arguments: a JSON object with keys a, b)

  A request without a system message gets a system turn holding only the listing. The
  listing is appended only if the system text does not already end with it, so a client
  that sends a stored transcript back (whose system turn has it) does not get it twice.
- A reply whose last line is `name: arguments` (surrounding whitespace ignored), where
  `name` is a declared tool, is a tool call; the lines before it, if any, are the
  message's content (as an OpenAI assistant message may carry content besides its call:
  a model's notes before it acts), and none of them may start like a call. For a tool
  whose parameters have a single string property, the arguments text is that property's
  value (`shop: search blue shirt` -> {"query": "search blue shirt"}); for a tool without
  parameters the arguments text must be empty or "{}"; otherwise it must be a JSON
  object. A reply whose arguments do not fit is returned as plain content (the model did
  not make a valid call; nothing is guessed).
- An assistant message with `tool_calls` is shown to the model as one such line per
  call (after its content, if any), so a tool call the server returned reads back
  exactly as the model wrote it (modulo the space after the colon). Tool results come
  back as `role: "tool"` messages with the `tool_call_id` and are rendered as tool turns
  holding the result text.
- tool_choice: "auto" (default with tools) parses replies as above; "none" lists the
  tools but never parses a reply as a call; a named function forces the call by
  starting the reply with `name:` (the model writes the arguments), and "required" does
  the same when exactly one tool is declared (with several it is refused: forcing "one
  of several" needs constrained decoding, which the sampler does not do).

Not covered: several tool calls in one reply (a reply line calls one tool; the agent
calls the next after seeing the result), validation of arguments against the JSON
schema beyond "is an object", and tools of types other than functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from onthejob.prompts import TOOLS_HEADER, split_call, tool_line
from onthejob.serve.protocol import ChatMessage, ChatRequest, ToolSpec

__all__ = ["TOOLS_HEADER"]  # re-exported: the listing's header line lives in onthejob.prompts


class ChatError(ValueError):
    """A request whose messages or tools cannot be served; the message says why."""


@dataclass(frozen=True)
class ModelTurn:
    """One turn as the model sees it and the store keeps it."""

    role: str
    """system, user, assistant or tool."""
    content: str
    """The text the model reads (tool calls written as `name: arguments` lines)."""
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    """(call id, name, arguments JSON) of an assistant turn's calls."""
    tool_call_id: str | None = None
    """For a tool turn: the call it answers."""


def string_argument(tool: ToolSpec) -> str | None:
    """The single string property of the tool's parameters, or None if it has another shape."""
    properties = tool.function.parameters.get("properties")
    if not isinstance(properties, dict) or len(properties) != 1:
        return None
    name, schema = next(iter(properties.items()))
    if isinstance(schema, dict) and schema.get("type") == "string":
        return str(name)
    return None


def _takes_no_arguments(tool: ToolSpec) -> bool:
    return not tool.function.parameters.get("properties")


def tool_listing(tools: Sequence[ToolSpec]) -> str:
    """The lines that declare `tools` to the model (header first)."""
    lines = [TOOLS_HEADER]
    for tool in tools:
        description = " ".join(tool.function.description.split()) or tool.function.name
        single = string_argument(tool)
        if single is not None:
            hint = f"arguments: {single}"
        elif _takes_no_arguments(tool):
            hint = "no arguments"
        else:
            keys = ", ".join(str(k) for k in tool.function.parameters.get("properties", {}))
            hint = f"arguments: a JSON object with keys {keys}"
        lines.append(tool_line(tool.function.name, description, hint))
    return "\n".join(lines)


def with_listing(system_text: str, tools: Sequence[ToolSpec]) -> str:
    """The system text with the tool listing appended (once)."""
    listing = tool_listing(tools)
    if system_text.endswith(listing):
        return system_text
    return f"{system_text}\n{listing}" if system_text else listing


def call_line(name: str, arguments: str, tools: Sequence[ToolSpec]) -> str:
    """How the model writes a call of `name` with JSON `arguments` (the inverse of parse)."""
    tool = next((t for t in tools if t.function.name == name), None)
    text = arguments
    if tool is not None:
        single = string_argument(tool)
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            value = None
        if single is not None and isinstance(value, dict) and set(value) == {single}:
            text = str(value[single])
        elif _takes_no_arguments(tool) and value == {}:
            text = ""
    return f"{name}: {text}".rstrip()


def parse_tool_call(reply: str, tools: Sequence[ToolSpec]) -> tuple[str, str] | None:
    """(name, arguments JSON) if `reply` is a call of a declared tool, else None."""
    line = reply.strip()
    if not line or "\n" in line or ":" not in line:
        return None
    name, _, text = line.partition(":")
    tool = next((t for t in tools if t.function.name == name.strip()), None)
    if tool is None or name != name.strip():
        return None
    text = text.strip()
    single = string_argument(tool)
    if single is not None:
        return tool.function.name, json.dumps({single: text}, ensure_ascii=False)
    if _takes_no_arguments(tool):
        return (tool.function.name, "{}") if text in ("", "{}") else None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return (tool.function.name, text) if isinstance(value, dict) else None


def parse_reply(reply: str, tools: Sequence[ToolSpec]) -> tuple[str, str, str] | None:
    """(notes, name, arguments JSON) if the last line of `reply` calls a declared tool and no
    earlier line starts like a call (`name:`); the notes are the earlier lines ("" when
    there are none or they are blank). Else None."""
    split = split_call(reply, tuple(tool.function.name for tool in tools))
    call = parse_tool_call(split[1], tools) if split else None
    return (split[0], *call) if split and call else None


def forced_tool(request: ChatRequest) -> str | None:
    """The tool a reply must call (named tool_choice, or "required" with one tool), or None."""
    tools = request.tools or []
    choice = request.tool_choice
    if choice is None or choice in ("auto", "none"):
        return None
    if not tools:
        raise ChatError("tool_choice needs declared tools; add `tools` or drop tool_choice")
    if choice == "required":
        if len(tools) != 1:
            raise ChatError(
                'tool_choice "required" is served only with one declared tool;'
                " name the function to call instead"
            )
        return tools[0].function.name
    assert not isinstance(choice, str)
    if choice.function.name not in {t.function.name for t in tools}:
        raise ChatError(f"tool_choice names {choice.function.name!r}, which is not in `tools`")
    return choice.function.name


def parses_tool_calls(request: ChatRequest) -> bool:
    """Whether the reply to `request` is parsed for a tool call."""
    return bool(request.tools) and request.tool_choice != "none"


def _message_turn(message: ChatMessage, tools: Sequence[ToolSpec]) -> ModelTurn:
    calls = tuple(
        (call.id, call.function.name, call.function.arguments) for call in message.tool_calls or []
    )
    content = message.text()
    if calls:
        lines = [call_line(name, arguments, tools) for _, name, arguments in calls]
        content = "\n".join(([content] if content else []) + lines)
    return ModelTurn(
        role=message.role,
        content=content,
        tool_calls=calls,
        tool_call_id=message.tool_call_id if message.role == "tool" else None,
    )


def model_turns(request: ChatRequest) -> list[ModelTurn]:
    """The request's messages as the model reads them (tool listing in the system turn)."""
    tools = request.tools or []
    turns = [_message_turn(m, tools) for m in request.messages]
    if tools:
        if turns and turns[0].role == "system":
            turns[0] = ModelTurn("system", with_listing(turns[0].content, tools))
        else:
            turns.insert(0, ModelTurn("system", tool_listing(tools)))
    return turns


def check_tool_ids(stored: Sequence[ModelTurn], new: Sequence[ModelTurn]) -> None:
    """Every tool turn answers a call made before it, once; call ids are unique (ChatError)."""
    made: set[str] = set()
    answered: set[str] = set()
    for position, turn in enumerate([*stored, *new]):
        is_new = position >= len(stored)
        for call_id, _, _ in turn.tool_calls:
            if call_id in made:
                if is_new:
                    raise ChatError(f"tool call id {call_id!r} is used twice in this session")
                continue
            made.add(call_id)
        if turn.tool_call_id is not None:
            if turn.tool_call_id not in made:
                raise ChatError(
                    f"tool message answers {turn.tool_call_id!r}, a call no earlier assistant"
                    " message made; use the id from the reply's tool_calls"
                )
            if turn.tool_call_id in answered and is_new:
                raise ChatError(f"tool call {turn.tool_call_id!r} is answered twice")
            answered.add(turn.tool_call_id)


def turn_key(turn: ModelTurn) -> tuple[Any, ...]:
    """What must be equal for an incoming message to be a stored turn: what the model reads,
    and which call a tool turn answers. An assistant turn's call records are not compared,
    so a stored transcript sent back as plain text (`content` = the stored `name: arguments`
    line, no `tool_calls`) continues its session as well as the OpenAI shape does."""
    return (turn.role, turn.content, turn.tool_call_id)


class ToolCallGate:
    """Holds back streamed text while the reply may still be a tool call.

    A reply's last line may call a declared tool (`name: ...`) and the lines before it are
    then its content (`parse_reply`). So text is sent only up to the last line that could
    still be (the start of) that call, without the whitespace before it: what has been
    sent is the content of the reply whether or not it ends in a call. A call line
    followed by more text makes the reply content, and everything held is released.
    """

    def __init__(self, tools: Sequence[ToolSpec], active: bool) -> None:
        self.prefixes = tuple(f"{t.function.name}:" for t in tools) if active else ()
        self.held = ""
        self.open = not self.prefixes

    def _calls(self, line: str) -> bool:
        return line.lstrip().startswith(self.prefixes)

    def _could_call(self, line: str) -> bool:
        text = line.lstrip()
        return any(text.startswith(p) or p.startswith(text) for p in self.prefixes)

    def feed(self, delta: str) -> str:
        """The part of the text so far that can be sent now."""
        if self.open:
            return delta
        self.held += delta
        lines = self.held.split("\n")
        written = [k for k, line in enumerate(lines) if line.strip()]
        if not written:
            return ""
        last = written[-1]
        if any(self._calls(line) for line in lines[:last]):
            self.open = True  # a call with text after it: the reply is content
            released, self.held = self.held, ""
            return released
        if self._could_call(lines[last]):
            start = len("\n".join(lines[:last])) if last else 0
            cut = len(self.held[:start].rstrip())
        else:
            cut = len(self.held.rstrip())
        released, self.held = self.held[:cut], self.held[cut:]
        return released
