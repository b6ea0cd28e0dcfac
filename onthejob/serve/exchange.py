"""One chat exchange: a request checked against its session, the prompt, the reply, the record.

Covers: finding the session and the model version a request is for (the tenant's promoted
one, or a named version of the same tenant), checking that the request's turns continue
the session's stored ones, rendering the prompt (with the model's own sampled ids for its
earlier replies), turning a completion into the client's reply (content or a tool call)
and writing the new turns and the reply in one `Store.add_turns` transaction.

Not covered: HTTP (routes, bodies, streaming: `serve.app`), generation (`serve.engine`),
the text protocol of tool calls (`serve.chat`).

Every check that can fail runs in `prepare`, before anything is generated or written;
`record` checks again under the session's lock that the stored turns have not moved on
(two requests racing in one session), and refuses with a 409 if they have.
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from onthejob.models import ModelDirError
from onthejob.models.tokenizer import (
    END,
    chat_prompt_ids,
    encode_text,
    has_onthejob_format,
    render_chat,
    token_id,
)
from onthejob.registry import ModelVersion, Registry, RegistryError, UnknownVersion
from onthejob.serve.chat import (
    ChatError,
    ModelTurn,
    call_line,
    check_tool_ids,
    forced_tool,
    model_turns,
    parse_reply,
    parses_tool_calls,
    turn_key,
)
from onthejob.serve.engine import (
    Completion,
    Engine,
    EngineClosed,
    Generation,
    LoadedModel,
    ModelSource,
    PromptTooLong,
    Settings,
)
from onthejob.serve.protocol import ApiError, ChatRequest, Usage, conflict, not_found
from onthejob.store import NewTurn, NotFound, Session, Store, StoreError, Turn

PROMOTED_ALIASES = ("", "default")
"""Values of `model` that mean "the tenant's promoted version"."""


@dataclass
class Prepared:
    """A validated chat request, ready to generate and to store."""

    session: Session
    new_session: bool
    """The request named no session: one is started when the reply is recorded."""
    version: ModelVersion
    loaded: LoadedModel
    request: ChatRequest
    turns: list[ModelTurn]
    """All turns of the request as the model reads them."""
    turn_ids: list[list[int]]
    """The token ids each turn was rendered to (content and end token)."""
    prompt: list[int]
    """Rendered prompt ids, ending with the assistant marker."""
    prefix: str
    """Reply text forced before sampling (a forced tool call's `name:`), or ""."""
    prefix_ids: list[int]
    settings: Settings


@dataclass
class Reply:
    """What the model answered, as the client gets it and the store keeps it."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    turn: NewTurn
    usage: Usage


class Service:
    """The store, registry and engine, and the logic of one exchange (the routes are thin
    around it)."""

    def __init__(
        self, store: Store, registry: Registry, engine: Engine, default_tenant: str = "default"
    ) -> None:
        self.store = store
        self.registry = registry
        self.engine = engine
        self.default_tenant = default_tenant
        # Striped locks: one session's "compare with stored turns, then append" is atomic.
        self._session_locks = [threading.Lock() for _ in range(64)]

    def session_lock(self, session_id: str) -> threading.Lock:
        return self._session_locks[zlib.crc32(session_id.encode("utf-8", "replace")) % 64]

    # -- sessions and versions ---------------------------------------------------------

    def get_session(self, session_id: str) -> Session:
        try:
            return self.store.session(session_id)
        except NotFound:
            raise not_found(
                f"unknown session {session_id!r}; start one with POST /v1/sessions"
                " (or send no session id to get a new one)"
            ) from None
        except StoreError as e:
            raise ApiError(400, str(e)) from None

    def version_for(self, tenant: str, model: str) -> ModelVersion:
        if model in PROMOTED_ALIASES:
            version = self.registry.promoted(tenant)
            if version is None:
                raise not_found(
                    f"tenant {tenant!r} has no promoted model version; promote one with"
                    " `onthejob models promote ID` or start the server with --model"
                )
            return version
        try:
            version = self.registry.get(model)
        except UnknownVersion:
            version = None
        except RegistryError as e:
            raise ApiError(400, str(e)) from None
        if version is None or version.tenant != tenant:
            raise not_found(
                f"unknown model {model!r} for tenant {tenant!r}; GET /v1/models lists its"
                " versions, and model 'default' is its promoted one"
            )
        return version

    def load(self, version: ModelVersion) -> LoadedModel:
        source = ModelSource(
            version.id, Path(version.base), Path(version.adapter) if version.adapter else None
        )
        try:
            return self.engine.load(source)
        except (ModelDirError, ValueError, OSError) as e:
            raise ApiError(
                500, f"model version {version.id} cannot be loaded: {e}", "server_error"
            ) from None

    # -- chat --------------------------------------------------------------------------

    def prepare(
        self, request: ChatRequest, session_header: str | None, tenant_header: str | None
    ) -> Prepared:
        """Validate everything about the request (before anything is generated or stored)."""
        if session_header and request.user and session_header != request.user:
            raise ApiError(
                400,
                f"X-Session-Id {session_header!r} and user {request.user!r} name different"
                " sessions; send one of them",
            )
        session_id = session_header or request.user
        tenant = tenant_header or self.default_tenant
        if session_id:
            session = self.get_session(session_id)
            if tenant_header and session.tenant != tenant_header:
                raise ApiError(
                    400,
                    f"session {session_id!r} belongs to tenant {session.tenant!r}, not"
                    f" {tenant_header!r} (X-Tenant); drop the header or use another session",
                )
            if session.ended is not None:
                raise conflict(f"session {session_id!r} has ended; start a new one")
            stored_raw = self.store.turns(session.id)
        else:
            session, stored_raw = None, []
        stored = [stored_turn(t) for t in stored_raw]
        version = self.version_for(session.tenant if session else tenant, request.model)
        try:
            forced = forced_tool(request)
            turns = model_turns(request)
            new = self.new_turns(stored, turns)
            check_tool_ids(stored, new)
        except ChatError as e:
            raise ApiError(400, str(e)) from None
        loaded = self.load(version)
        sampled_ids = self.sampled_ids(stored_raw, version)
        prefix = f"{forced}:" if forced else ""
        prompt, turn_ids = render(loaded.tokenizer, turns, sampled_ids)
        prefix_ids = text_ids(loaded.tokenizer, prefix) if prefix else []
        max_tokens = request.max_completion_tokens or request.max_tokens
        try:
            budget = self.engine.budget(loaded, len(prompt) + len(prefix_ids), max_tokens)
        except PromptTooLong as e:
            raise ApiError(400, str(e)) from None
        sampled = budget - len(prefix_ids) if max_tokens else budget  # max_tokens covers both
        if sampled < 1:
            raise ApiError(
                400, f"max_tokens must exceed the {len(prefix_ids)} tokens of the forced {prefix!r}"
            )
        settings = Settings(
            max_tokens=sampled,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=request.stop_list(),
            seed=request.seed,
        )
        new_session = session is None
        if session is None:  # started when the reply is recorded: a failed request leaves nothing
            session = Session(uuid.uuid4().hex, tenant, None, time.time(), None, {})
        return Prepared(
            session,
            new_session,
            version,
            loaded,
            request,
            turns,
            turn_ids,
            prompt,
            prefix,
            prefix_ids,
            settings,
        )

    def sampled_ids(self, stored: list[Turn], version: ModelVersion) -> dict[int, list[int]]:
        """Stored assistant turns' sampled ids, by turn index, where `version` reads them
        with the same tokenizer (the version that sampled them, or one on the same base)."""
        same_base: dict[str, bool] = {version.id: True}
        found = {}
        for index, turn in enumerate(stored):
            sampler = turn.model_version
            if turn.role != "assistant" or not turn.token_ids or sampler is None:
                continue
            if sampler not in same_base:
                try:
                    same_base[sampler] = self.registry.get(sampler).base == version.base
                except RegistryError:
                    same_base[sampler] = False
            if same_base[sampler]:
                found[index] = turn.token_ids
        return found

    def stored_turns(self, session_id: str) -> list[ModelTurn]:
        return [stored_turn(t) for t in self.store.turns(session_id)]

    @staticmethod
    def new_turns(stored: list[ModelTurn], turns: list[ModelTurn]) -> list[ModelTurn]:
        """The request's turns after the stored ones; ApiError 409 if they do not continue."""
        for i, old in enumerate(stored):
            if i >= len(turns) or turn_key(turns[i]) != turn_key(old):
                shown = f"message {i} ({turns[i].role})" if i < len(turns) else f"turn {i}"
                raise conflict(
                    f"the messages do not continue the session's stored turns ({shown} differs"
                    f" from stored turn {i} ({old.role}), or is missing); a session is"
                    " append-only: send its stored history followed by the new messages, or"
                    " start a new session"
                )
        return turns[len(stored) :]

    def generate(self, prepared: Prepared, stream: bool) -> Generation:
        try:
            return self.engine.submit(
                prepared.loaded, prepared.prompt + prepared.prefix_ids, prepared.settings, stream
            )
        except EngineClosed as e:
            raise ApiError(503, str(e), "server_error") from None

    def reply(self, prepared: Prepared, completion: Completion) -> Reply:
        """The client's view of a completion and the turn to store."""
        request = prepared.request
        tools = request.tools or []
        text = prepared.prefix + completion.text
        token_ids = prepared.prefix_ids + completion.token_ids
        call = None
        if prepared.prefix or parses_tool_calls(request):
            call = parse_reply(text, tools)
        usage = Usage(
            prompt_tokens=len(prepared.prompt),
            completion_tokens=len(token_ids),
            total_tokens=len(prepared.prompt) + len(token_ids),
        )
        if call is None:
            turn = NewTurn("assistant", text, token_ids, prepared.version.id)
            return Reply(text, None, completion.finish_reason, turn, usage)
        notes, name, arguments = call
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        line = call_line(name, arguments, tools)
        turn = NewTurn(
            "assistant",
            f"{notes}\n{line}" if notes else line,
            token_ids,
            prepared.version.id,
            tool_calls=((call_id, name, arguments),),
        )
        tool_calls = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
        return Reply(notes or None, tool_calls, "tool_calls", turn, usage)

    def record(self, prepared: Prepared, reply: Reply) -> None:
        """Write the new turns and the reply in one transaction (durable when this returns)."""
        session_id = prepared.session.id
        with self.session_lock(session_id):
            if prepared.new_session:
                meta = {"started_by": "chat"}
                self.start_session(prepared.session.tenant, None, meta, session_id)
                prepared.new_session = False
            stored = self.stored_turns(session_id)
            new = self.new_turns(stored, prepared.turns)  # again: another request may have won
            ids = prepared.turn_ids[len(stored) :]
            batch = [
                NewTurn(t.role, t.content, i, None, t.tool_calls, t.tool_call_id)
                for t, i in zip(new, ids, strict=True)
            ]
            try:
                self.store.add_turns(session_id, [*batch, reply.turn])
            except NotFound as e:
                raise not_found(str(e)) from None
            except StoreError as e:
                raise conflict(f"nothing was stored: {e}") from None

    # -- sessions ----------------------------------------------------------------------

    def start_session(
        self, tenant: str, user: str | None, meta: dict[str, Any] | None, session_id: str | None
    ) -> Session:
        if session_id is not None:
            try:
                self.store.session(session_id)
            except NotFound:
                pass
            else:
                raise conflict(f"session {session_id!r} already exists; choose another id")
        try:
            return self.store.start_session(tenant, user=user, meta=meta, session_id=session_id)
        except StoreError as e:
            raise ApiError(400, str(e)) from None


def stored_turn(turn: Turn) -> ModelTurn:
    return ModelTurn(
        turn.role,
        turn.content,
        tuple((c.id, c.name, c.arguments) for c in turn.tool_calls),
        turn.tool_call_id,
    )


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of plain text (special-token strings in it stay text for this project's format)."""
    if has_onthejob_format(tokenizer):
        return encode_text(tokenizer, text)
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def render(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[ModelTurn],
    sampled: dict[int, list[int]] | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each turn's ids.

    This project's format: `render_chat` renders the turns, then each assistant turn whose
    sampled ids are given (`sampled`: turn index -> ids as sampled) and decode to its text
    gets them back in its span (closed by the end token), so the model reads its own
    earlier tokens, not a re-tokenization of their text (which can differ: a sampled token
    sequence need not be the canonical encoding of its text, and a special token the model
    sampled would come back as plain characters). A reply cut before a stop string does not
    decode to its text and is re-encoded. Each turn's ids are its span of the prompt
    (content and end token).

    Other tokenizers go through their own chat template from the text; a turn's ids are then
    its content encoded alone (the template's markers are not attributed to turns).
    """
    messages = [{"role": t.role, "content": t.content} for t in turns]
    if has_onthejob_format(tokenizer):
        chat = render_chat(tokenizer, messages, add_generation_prompt=True)
        ids, spans, shift = list(chat.ids), [], 0
        end = token_id(tokenizer, END)
        for index, (_, start, stop) in enumerate(chat.spans):
            start, stop = start + shift, stop + shift
            own = list((sampled or {}).get(index, ()))
            if own and own[-1] == end:
                own.pop()
            if own and tokenizer.decode(own) == turns[index].content:
                ids[start:stop] = [*own, end]
                shift += len(own) + 1 - (stop - start)
                stop = start + len(own) + 1
            spans.append(ids[start:stop])
        return ids, spans
    return chat_prompt_ids(tokenizer, messages), [text_ids(tokenizer, t.content) for t in turns]
