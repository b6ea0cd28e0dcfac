"""The bodies of the serving API as pydantic models: OpenAI's chat shapes and ours.

Covers: the request of `POST /v1/chat/completions` (the OpenAI fields this server
honours), its response, `GET /v1/models`, the session and feedback bodies, and OpenAI's
error shape with `ApiError`, the exception every route turns into it. Request models are strict (no "1" for 1,
no 1 for True): a wrong type is a 400 that names the field.

Not covered: what the fields mean for generation (see `serve.engine`) or for tool
calls (see `serve.chat`); the legacy `functions` / `function_call` fields, `n` > 1,
`logprobs`, `response_format` and audio or image content (refused with a 400 that
says so, not ignored: a client that relies on them would get a silently wrong answer).

Unknown request fields are ignored, as OpenAI-compatible servers do, so that newer
clients that send extra fields with default values keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class FunctionCall(_Request):
    """The function an assistant message calls: its name and JSON arguments text."""

    name: str
    arguments: str


class ToolCallBody(_Request):
    """One tool call of an assistant message, as OpenAI writes it."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Request):
    """A part of a message's content; only text parts are served."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def text_only(self) -> ContentPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are served, got type {self.type!r}")
        return self


class ChatMessage(_Request):
    """One message of a chat request."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def content_shape(cls, value: object) -> object:
        if value is not None and not isinstance(value, str | list):
            raise ValueError(
                f"content must be a string or a list of text parts, got {type(value).__name__}"
            )
        return value

    @model_validator(mode="after")
    def consistent(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class FunctionSpec(_Request):
    """A declared function: name, description and JSON-schema parameters."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(_Request):
    """A declared tool (OpenAI: only functions)."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    """tool_choice that names the function to call."""

    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    """`POST /v1/chat/completions`: the OpenAI fields this server honours."""

    model: str = "default"
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    functions: list[Any] | None = None

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        values = [value] if isinstance(value, str) else value or []
        if len(values) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in values):
            raise ValueError("a stop string must not be empty")
        return value

    @model_validator(mode="after")
    def supported(self) -> ChatRequest:
        if self.n not in (None, 1):
            raise ValueError("n must be 1 (one choice per request); send several requests")
        if self.logprobs:
            raise ValueError("logprobs are not served; the store keeps each reply's token ids")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("response_format is not supported; only text replies")
        if self.functions is not None:
            raise ValueError("the legacy `functions` field is not supported; declare `tools`")
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        return self

    def stop_list(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The response of a non-streamed chat completion (OpenAI shape)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class StartSession(_Request):
    """`POST /v1/sessions`."""

    tenant: str | None = Field(default=None, min_length=1, max_length=200)
    """Defaults to the X-Tenant header, then "default"."""
    user: str | None = Field(default=None, max_length=200)
    meta: dict[str, Any] | None = None
    session_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    """Choose the id (e.g. a client's own); default: a fresh random one."""


class FeedbackBody(_Request):
    """`POST /v1/sessions/{id}/feedback`: a thumb, a written evaluation, or both."""

    thumb: Literal["up", "down", 1, -1] | None = None
    evaluation: str | None = Field(default=None, max_length=20000)
    author: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def something(self) -> FeedbackBody:
        if self.thumb is None and not (self.evaluation or "").strip():
            raise ValueError('give a thumb ("up" or "down") or a written evaluation, or both')
        return self

    def thumb_value(self) -> int | None:
        """+1, -1 or None."""
        if self.thumb is None:
            return None
        return 1 if self.thumb in ("up", 1) else -1


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class ApiError(Exception):
    """An error answered with OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "not_found_error")


def conflict(message: str) -> ApiError:
    return ApiError(409, message, "conflict_error")
