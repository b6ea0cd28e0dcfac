"""The serving app: an OpenAI-compatible chat API, sessions, feedback and the web UI.

Covers (FastAPI, run by uvicorn on 127.0.0.1):

    POST /v1/chat/completions       OpenAI chat completions, streamed by SSE on request
    GET  /v1/models                 the tenant's model versions (OpenAI shape)
    POST /v1/sessions               start a session {tenant, user, meta, session_id}
    POST /v1/sessions/{id}/end      end it
    GET  /v1/sessions               list (?tenant= &user= &feedback=up|down|any|none &limit=)
    GET  /v1/sessions/{id}          its turns, tool calls and feedback
    POST /v1/sessions/{id}/feedback {thumb: "up"|"down"|1|-1, evaluation, author}
    GET  /v1/versions               every model version with status and evals (?tenant=)
    GET  /health                    liveness, loaded versions
    GET  /                          the web UI (static files under /static)

Sessions and tenants: a chat request names its session by the `X-Session-Id` header or
the `user` field (which OpenAI clients send as a plain string); without either, a new
session is started. The tenant is the session's; a new session's tenant is the
`X-Tenant` header, else `ServeConfig.default_tenant` ("default"; `onthejob serve
--tenant` sets it). The reply's headers carry `X-Session-Id` and `X-Model-Version`.
`model` "default" (or "") means the tenant's promoted version; any other value must be
the id of one of the tenant's versions (one tenant's adapter never answers another
tenant).

Recording: the client sends the whole conversation each time (the API is OpenAI's,
stateless). The messages are rendered to the turns the model reads (`serve.chat`: tool
calls as text lines, the tool listing in the system turn), and those turns must continue
the session's stored ones: the stored turns are a prefix of the request's (compared on
role, text and the call a tool turn answers), and the rest are new. The prompt gives
the model its own sampled ids back for stored assistant turns (see `render`). The new
turns (with the token ids they were rendered to) and the reply (with its sampled token
ids and model version) are written in ONE `Store.add_turns` transaction before the
reply is sent: a reply the client sees is on disk. (A session started by the request
itself is created just before that write, in its own transaction: the store has no
"start with turns" call; a failed request never creates one.) A streamed reply is
written when generation ends, before its final chunk (with the finish_reason) and
`[DONE]`; a client that goes away before then leaves nothing stored. Everything is
validated before that write, so a bad request leaves the store as it was.

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a
malformed body (bad JSON, invalid UTF-8, wrong types, a prompt longer than the model's
context), 413 for a body over `max_body_bytes`, 404 for an unknown session, model,
route, or a tenant without a promoted version, 409 for a request that does not fit the
session (ended, or messages that do not continue its stored turns), 503 while shutting
down, 500 otherwise.

Not covered: authentication and TLS (bind to 127.0.0.1 only), rate limits, the
legacy completions API, several processes serving one store (one server process; the
store itself is safe to share with readers and other writers).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from onthejob.registry import ModelVersion, Registry
from onthejob.serve.chat import ToolCallGate, parses_tool_calls
from onthejob.serve.engine import Engine, EngineClosed, EngineConfig, Generation
from onthejob.serve.exchange import Prepared, Service
from onthejob.serve.protocol import (
    ApiError,
    ChatCompletion,
    ChatRequest,
    Choice,
    FeedbackBody,
    ModelCard,
    ModelList,
    ReplyMessage,
    StartSession,
    conflict,
    error_body,
)
from onthejob.store import Session, Store, StoreError, Turn
from onthejob.web import app_in_thread, serve_foreground

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class ServeConfig:
    """Limits and defaults of the serving app."""

    max_body_bytes: int = 1_000_000
    """Largest request body accepted (413 beyond it)."""
    default_tenant: str = DEFAULT_TENANT
    """Tenant of a request without an X-Tenant header."""
    reply_timeout_s: float = 600.0
    """Longest a request waits for its reply before a 500."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """How models are loaded and requests batched."""


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, kind))


Body = TypeVar("Body", bound=BaseModel)


async def read_body(request: Request, model: type[Body], limit: int) -> Body:
    """The request body parsed as `model`; ApiError (400 / 413) says what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit; send less")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(
            400, f"request body is not valid UTF-8 (byte {e.start}); send UTF-8 encoded JSON"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "request body has a lone surrogate (\\ud800-\\udfff) escape; send valid Unicode"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, _validation_message(e)) from None


def _validation_message(error: ValidationError | RequestValidationError) -> str:
    """One line: where the first problem is and what was expected."""
    problems = error.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"invalid request: {where + ': ' if where else ''}{message}{more}"


# -- JSON views ------------------------------------------------------------------------


def session_json(session: Session) -> dict[str, Any]:
    return asdict(session)


def version_json(version: ModelVersion) -> dict[str, Any]:
    return asdict(version)


def turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "index": turn.index,
        "role": turn.role,
        "content": turn.content,
        "token_ids": turn.token_ids,
        "model_version": turn.model_version,
        "at": turn.at,
        "tool_calls": [asdict(call) for call in turn.tool_calls],
        "tool_call_id": turn.tool_call_id,
    }


def _chunk(
    completion_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None
) -> str:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


# -- the app ---------------------------------------------------------------------------


def create_app(
    store_path: str | Path,
    registry_path: str | Path,
    config: ServeConfig | None = None,
) -> FastAPI:
    """The serving app over the store and registry at these paths (opened now)."""
    config = config or ServeConfig()
    store = Store(store_path)
    registry = Registry(registry_path)
    engine = Engine(config.engine)
    service = Service(store, registry, engine, config.default_tenant)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(engine.close)
        store.close()

    app = FastAPI(title="onthejob", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.message, error.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(error), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /docs"
            return _error(404, message, "not_found_error")
        return _error(error.status_code, str(error.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(error).__name__}: {error}", "server_error")

    def headers(prepared: Prepared) -> dict[str, str]:
        return {"X-Session-Id": prepared.session.id, "X-Model-Version": prepared.version.id}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, ChatRequest, config.max_body_bytes)
        prepared = await run_in_threadpool(
            service.prepare,
            body,
            request.headers.get("x-session-id"),
            request.headers.get("x-tenant"),
        )
        generation = service.generate(prepared, body.stream)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream_reply(prepared, generation, completion_id, created, include_usage),
                media_type="text/event-stream",
                headers={**headers(prepared), "Cache-Control": "no-cache"},
            )
        try:
            completion = await run_in_threadpool(generation.result, config.reply_timeout_s)
        except EngineClosed as e:
            raise ApiError(503, str(e), "server_error") from None
        reply = service.reply(prepared, completion)
        await run_in_threadpool(service.record, prepared, reply)
        response = ChatCompletion(
            id=completion_id,
            created=created,
            model=prepared.version.id,
            choices=[
                Choice(
                    message=ReplyMessage(content=reply.content, tool_calls=reply.tool_calls),
                    finish_reason=reply.finish_reason,  # type: ignore[arg-type]
                )
            ],
            usage=reply.usage,
        )
        return JSONResponse(response.model_dump(), headers=headers(prepared))

    def stream_reply(
        prepared: Prepared,
        generation: Generation,
        completion_id: str,
        created: int,
        include_usage: bool,
    ) -> Iterator[str]:
        """SSE events: role, content deltas (tool calls held back), stored, finish, [DONE]."""
        model = prepared.version.id
        tools = prepared.request.tools or []
        gate = ToolCallGate(tools, bool(prepared.prefix) or parses_tool_calls(prepared.request))
        yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""}, None)
        if prepared.prefix:
            gate.feed(prepared.prefix)
        for delta in generation.deltas():
            text = gate.feed(delta)
            if text:
                yield _chunk(completion_id, created, model, {"content": text}, None)
        try:
            reply = service.reply(prepared, generation.result(config.reply_timeout_s))
            service.record(prepared, reply)
        except ApiError as e:
            yield f"data: {json.dumps(error_body(e.message, e.kind))}\n\n"
            return
        except Exception as e:  # the client must see that nothing was stored
            message = f"internal error: {type(e).__name__}: {e}"
            yield f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"
            return
        if reply.tool_calls:
            calls = [{"index": 0, **call} for call in reply.tool_calls]
            yield _chunk(completion_id, created, model, {"tool_calls": calls}, None)
        elif gate.held:
            yield _chunk(completion_id, created, model, {"content": gate.held}, None)
        yield _chunk(completion_id, created, model, {}, reply.finish_reason)
        if include_usage:
            usage = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": reply.usage.model_dump(),
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    @app.get("/v1/models")
    def list_models(request: Request) -> dict[str, Any]:
        tenant = request.headers.get("x-tenant") or config.default_tenant
        versions = registry.list(tenant)
        versions.sort(key=lambda v: v.status != "promoted")
        cards = [ModelCard(id=v.id, created=int(v.created), owned_by=v.tenant) for v in versions]
        return ModelList(data=cards).model_dump()

    @app.get("/v1/versions")
    def list_versions(tenant: str | None = None) -> dict[str, Any]:
        return {"object": "list", "data": [version_json(v) for v in registry.list(tenant)]}

    @app.post("/v1/sessions")
    async def start_session(request: Request) -> dict[str, Any]:
        body = await read_body(request, StartSession, config.max_body_bytes)
        tenant = body.tenant or request.headers.get("x-tenant") or config.default_tenant
        session = await run_in_threadpool(
            service.start_session, tenant, body.user, body.meta, body.session_id
        )
        return session_json(session)

    @app.post("/v1/sessions/{session_id}/end")
    def end_session(session_id: str) -> dict[str, Any]:
        session = service.get_session(session_id)
        if session.ended is not None:
            raise conflict(f"session {session_id!r} has already ended")
        try:
            return session_json(store.end_session(session_id))
        except StoreError as e:
            raise conflict(str(e)) from None

    @app.get("/v1/sessions")
    def list_sessions(
        tenant: str | None = None,
        user: str | None = None,
        feedback: str | None = None,
        limit: int = 200,
    ) -> dict[str, Any]:
        filters: dict[str, Any] = {}
        if feedback in ("up", "down"):
            filters["thumb"] = 1 if feedback == "up" else -1
        elif feedback in ("any", "none"):
            filters["has_feedback"] = feedback == "any"
        elif feedback is not None:
            raise ApiError(400, f"feedback must be up, down, any or none, got {feedback!r}")
        if limit < 1:
            raise ApiError(400, f"limit must be >= 1, got {limit}")
        sessions = store.sessions(tenant=tenant, user=user, **filters)
        newest = sorted(sessions, key=lambda s: s.started, reverse=True)[:limit]
        return {"object": "list", "data": [session_json(s) for s in newest]}

    @app.get("/v1/sessions/{session_id}")
    def show_session(session_id: str) -> dict[str, Any]:
        session = service.get_session(session_id)
        return {
            **session_json(session),
            "turns": [turn_json(t) for t in store.turns(session_id)],
            "feedback": [asdict(f) for f in store.feedback(session_id)],
        }

    @app.post("/v1/sessions/{session_id}/feedback")
    async def add_feedback(session_id: str, request: Request) -> dict[str, Any]:
        body = await read_body(request, FeedbackBody, config.max_body_bytes)

        def write() -> dict[str, Any]:
            session = service.get_session(session_id)
            evaluation = body.evaluation if (body.evaluation or "").strip() else None
            author = body.author or session.user or "anonymous"
            try:
                return asdict(
                    store.add_feedback(session_id, body.thumb_value(), evaluation, author)
                )
            except StoreError as e:
                raise ApiError(400, str(e)) from None

        return await run_in_threadpool(write)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "loaded": list(engine.loaded())}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# -- running it ------------------------------------------------------------------------


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on a bound socket until SIGINT or SIGTERM (blocking); its lifespan
    closes the engine and the store on the way out."""
    serve_foreground(app, sock, lifespan="auto")


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a background thread; yields the base URL; stops it on exit."""
    with app_in_thread(
        app, host, port, name="serve-http", lifespan="auto", start_timeout=30
    ) as url:
        yield url


__all__ = ["ServeConfig", "create_app", "serve", "serve_in_thread"]
