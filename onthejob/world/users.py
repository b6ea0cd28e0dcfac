"""Simulated users: people of the org who work with the agent through the real serving API.

Covers: `SimulatedUser`, a program that holds the org's hidden knowledge and runs a
working day of sessions against a running `onthejob serve` with the official `openai`
client (tenant in `X-Tenant`, session in `X-Session-Id`), and `UsersConfig`, how users
behave. A user's day:

1. works through the day's tasks from `Org.tasks` in two sessions (`POST /v1/sessions`,
   the day and the kind of work in their meta), one for questions and one for orders:
   - a question about the org's knowledge, sometimes with the document that holds the
     answer pasted first ("my notes:\\n<document>\\n\\n<question>", the form the default
     model was trained to read), sometimes not; a document pasted earlier in the session
     is still in context for later questions. A wrong answer is corrected the way users
     do, "no. <the right statement> <the question again>", up to `corrections` times;
   - an order at the live supplier: the user states it with the shop's list of actions
     (the grindable shop's first page), and the agent acts through the declared tool
     `shop` (one string parameter, `action`). The harness runs each tool call against the
     live service (`ServiceClient.act(account, action, session)`) and sends the
     observation back as a `tool` message, up to `step_budget` actions; the order is
     judged from the service's public state (`ServiceTask.check`), never from what the
     agent says;
2. ends each session and gives a thumb and a written evaluation of how it went, with a
   seeded share of wrong thumbs, vague evaluations and evaluations left out.

Every count of what a user sent (`Sent`) is taken only when the server acknowledged it:
a chat request's new messages and the reply are stored in one transaction before the
reply is sent, so an acknowledged request is exactly what the store holds, and a refused
one (nothing stored) is not counted.

Does not cover: starting the server or the live shop and moving the world's clock
(`onthejob.world.week`), or judging anything the agent could forge.

Design decisions:

- Two sessions a day, by kind of work, as a person keeps one chat for questions and one
  for the shop. The question session declares no tools and has the reading system prompt
  (`prompts.KNOWLEDGE_SYSTEM`); the order session has the shop's (`AGENT_SYSTEM["shop"]`)
  and declares `shop` in every request (the server lists tools in the system turn, and a
  session's turns are append-only, so the listing must not come and go). Measured on the
  default model (360 questions of 8 orgs, greedy): the listing in the system turn drops
  reading from 0.30 to 0.21 with the document pasted (0.06 to 0.03 without), so it is
  kept out of the sessions that need no tool.
- Order steps are sent with tool_choice "required" (`force_tool`): the server writes
  `shop:` and the model the action, the grindable shop's one-action-per-turn protocol
  over OpenAI tool calls; with `force_tool=False` the model must choose to call the tool
  itself ("auto"). (The default model has never seen the tool listing or `shop:` lines,
  so it acts poorly either way; "required" at least makes it act, which gives the live
  shop transitions to learn from.)
- After the last observation of an order the agent gets one more turn (tool_choice
  "none") to say what it did: it closes the task in the conversation, and it is the
  request that delivers (and stores) that last observation.
- An account the shop refuses (throttled or banned for acting like a bot) is not pushed:
  the harness stops the order at the refusal, and skips a later order while the refusal
  lasts, so the agent's bot-like behaviour earns a real throttle or ban, never the
  harness's.
- A conversation that would outgrow the model's context is not cut: before a task, once
  the conversation holds `session_tokens` tokens, the user ends the session (with
  feedback) and goes on in a new one; a request the server refuses as too long ends
  the task as failed and the session with it.
- Feedback: the honest thumb is up when at least `up_threshold` of the session's tasks
  were done (a question right only after a correction counts half). Then, seeded: the
  thumb is flipped with `wrong_thumb_share` (people misclick and misjudge), the
  evaluation is a vague line with `vague_share`, and left out with `silent_share`.
  Whether a session's thumb was flipped is kept in the report (the truth later stages
  are measured against), never in the store, as in a real deployment.
- Determinism: the user's choices come from `random.Random(f"users:{seed}:{org}:{day}:{user}")`
  and requests are greedy by default, so a week is the same for the same model replies.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import openai

from onthejob import knowledge
from onthejob.envs.base import clip
from onthejob.envs.shop import HELP
from onthejob.prompts import AGENT_SYSTEM, ANSWER_TOKENS, KNOWLEDGE_SYSTEM, SHOP_TOOL
from onthejob.world.client import ServiceClient
from onthejob.world.org import Org, QuestionTask, ServiceTask, User
from onthejob.world.service import Refused
from onthejob.world.supplier import week_of

VAGUE_UP = ("fine.", "ok, thanks.", "good enough.")
VAGUE_DOWN = ("not great.", "meh.", "could be better.")


@dataclass(frozen=True)
class UsersConfig:
    """How simulated users behave (the same for every user of the org)."""

    seed: int = 0
    """Seed of the users' choices (pasting, feedback noise); the org's seed is added."""
    paste_share: float = 0.5
    """Chance that a user pastes the document holding the answer before a question."""
    corrections: int = 1
    """Times a user corrects a wrong answer and asks again (0: never corrects)."""
    step_budget: int = 10
    """Most shop actions the agent may take for one order."""
    force_tool: bool = True
    """Send order steps with tool_choice "required" (else "auto"; see the module docstring)."""
    temperature: float = 0.0
    """Sampling temperature of every request (0: greedy, reproducible)."""
    answer_tokens: int = ANSWER_TOKENS
    """max_tokens of an answer to a question."""
    action_tokens: int = 24
    """max_tokens of one shop action (the forced "shop:" included)."""
    wrap_up_tokens: int = 24
    """max_tokens of the agent's closing message after an order."""
    session_tokens: int = 640
    """Start a new session before a task once the conversation holds this many tokens."""
    up_threshold: float = 0.5
    """Share of tasks done (a corrected answer counts half) that earns an honest thumb up."""
    wrong_thumb_share: float = 0.1
    """Share of sessions whose thumb says the opposite of how they went."""
    vague_share: float = 0.15
    """Share of sessions whose evaluation is a vague line with no detail."""
    silent_share: float = 0.15
    """Share of sessions that get a thumb but no written evaluation."""
    timeout_s: float = 300.0
    """Longest a user waits for one reply."""

    def __post_init__(self) -> None:
        for name in ("paste_share", "up_threshold", "wrong_thumb_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"users {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("vague_share", "silent_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"users {name} must be in [0, 1], got {getattr(self, name)}")
        if self.vague_share + self.silent_share > 1:
            raise ValueError("users vague_share + silent_share must not exceed 1")
        if self.corrections < 0:
            raise ValueError(f"users corrections must not be negative, got {self.corrections}")
        for name in ("step_budget", "answer_tokens", "action_tokens", "wrap_up_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"users {name} must be at least 1, got {getattr(self, name)}")
        if self.session_tokens < 1:
            raise ValueError(f"users session_tokens must be at least 1, got {self.session_tokens}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"users temperature must be in [0, 2], got {self.temperature}")


@dataclass
class Sent:
    """What users sent and the server acknowledged (compare with `Store.counts()`)."""

    sessions: int = 0
    """Sessions started."""
    ended: int = 0
    """Sessions ended."""
    requests: int = 0
    """Chat requests answered."""
    refused_requests: int = 0
    """Chat requests the server refused (nothing of them is stored)."""
    system_messages: int = 0
    user_messages: int = 0
    replies: int = 0
    """Assistant replies received (each stored as one assistant turn)."""
    tool_calls: int = 0
    """Tool calls in those replies."""
    observations: int = 0
    """Tool results sent back and acknowledged (stored as tool turns)."""
    actions: int = 0
    """Actions the live shop took or refused (each one a logged transition)."""
    feedback: int = 0
    """Feedback records given (one per ended session)."""
    thumbs_up: int = 0
    thumbs_down: int = 0
    evaluations: int = 0
    """Feedback with a written evaluation."""

    @property
    def turns(self) -> int:
        """Turns the store must hold for these sessions."""
        return self.system_messages + self.user_messages + self.replies + self.observations

    def add(self, other: Sent) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class TaskRecord:
    """What happened to one task."""

    kind: str
    """"question" or "order"."""
    request: str
    """What the user asked."""
    success: bool
    """Done in the end (a question: after corrections too; an order: judged by the shop)."""
    first_success: bool
    """Right at the first reply (questions); the same as success for orders."""
    with_document: bool = False
    """Questions: the document holding the answer was in the conversation when asked."""
    corrections: int = 0
    """Times the user corrected the agent."""
    actions: int = 0
    """Orders: tool calls the agent made (each run against the live shop)."""
    stale: bool = False
    """Questions: the first answer was right in an earlier week."""
    replies: list[str] = field(default_factory=list)
    """The agent's replies: answers, or an order's actions (its arguments if malformed)."""
    expected: str = ""
    """The expected answer (questions) or the order's verdict reason (orders)."""
    refused: str = ""
    """Orders: why the shop refused the account, if it did."""
    cut: bool = False
    """The server refused a request as too long for the model's context."""

    @property
    def score(self) -> float:
        if self.first_success:
            return 1.0
        return 0.5 if self.success else 0.0


@dataclass
class SessionRecord:
    """One session of one user, and the feedback given at its end."""

    id: str
    user: str
    day: int
    """World-clock day."""
    kind: str
    """The work it was for: "question" or "order"."""
    tasks: list[TaskRecord] = field(default_factory=list)
    thumb: str = ""
    """"up" or "down", as given."""
    honest_thumb: str = ""
    """The thumb the session deserved (differs from `thumb` when the feedback is wrong)."""
    evaluation: str | None = None
    """The written evaluation, as given (None: left out)."""
    tokens: int = 0
    """Tokens in the conversation at its last reply."""
    model: str = ""
    """Model version that answered."""


class ContextFull(Exception):
    """The server refused a request as longer than the model's context."""


def _too_long(error: openai.BadRequestError) -> bool:
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    code = inner.get("code") if isinstance(inner, dict) else None
    message = str(inner.get("message", error)) if isinstance(inner, dict) else str(error)
    return code == "context_length_exceeded" or "shorten the conversation" in message


class Conversation:
    """One session's messages as the client keeps them (the OpenAI API is stateless)."""

    def __init__(
        self,
        api: openai.OpenAI,
        session_id: str,
        tenant: str,
        config: UsersConfig,
        sent: Sent,
        system: str,
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.api = api
        self.id = session_id
        self.tenant = tenant
        self.config = config
        self.sent = sent
        self.tools = tools
        """Tools declared in every request of the session (None: none)."""
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        self.stored = 0
        """How many of `messages` the server has stored."""
        self.documents: set[str] = set()
        """Ids of documents pasted into this conversation."""
        self.tokens = 0
        self.model = ""

    def ask(
        self, new: Sequence[dict[str, Any]], max_tokens: int, tool_choice: str | None = None
    ) -> Any:
        """Send the conversation plus `new`; returns the reply message (ContextFull if too long)."""
        messages = [*self.messages, *new]
        create: Any = self.api.chat.completions.create  # plain dicts, not the client's TypedDicts
        tools: dict[str, Any] = {}
        if self.tools:
            tools = {"tools": self.tools, "tool_choice": tool_choice or "auto"}
        try:
            completion = create(
                model="default",
                messages=messages,
                **tools,
                temperature=self.config.temperature,
                max_tokens=max_tokens,
                extra_headers={"X-Session-Id": self.id, "X-Tenant": self.tenant},
                timeout=self.config.timeout_s,
            )
        except openai.BadRequestError as error:
            self.sent.refused_requests += 1
            if _too_long(error):
                raise ContextFull(str(error)) from None
            raise
        message = completion.choices[0].message
        reply: dict[str, Any] = {"role": "assistant", "content": message.content}
        calls = message.tool_calls or []
        if calls:
            reply["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    },
                }
                for call in calls
            ]
        self._count([*messages[self.stored :], reply])
        self.messages = [*messages, reply]
        self.stored = len(self.messages)
        self.tokens = completion.usage.total_tokens if completion.usage else self.tokens
        self.model = completion.model
        return message

    def _count(self, stored: list[dict[str, Any]]) -> None:
        self.sent.requests += 1
        for message in stored:
            role = message["role"]
            if role == "system":
                self.sent.system_messages += 1
            elif role == "user":
                self.sent.user_messages += 1
            elif role == "tool":
                self.sent.observations += 1
            else:
                self.sent.replies += 1
                self.sent.tool_calls += len(message.get("tool_calls") or [])


class SimulatedUser:
    """One person of the org, working with the agent through a running server."""

    def __init__(
        self,
        org: Org,
        user: User,
        server_url: str,
        service: ServiceClient,
        config: UsersConfig | None = None,
    ) -> None:
        self.org = org
        self.user = user
        self.config = config or UsersConfig()
        self.service = service
        self.server_url = server_url.rstrip("/")
        self.api = openai.OpenAI(
            base_url=f"{self.server_url}/v1",
            api_key="simulated-user",
            default_headers={"X-Tenant": org.tenant},
            max_retries=0,  # a retried chat request may have been stored already
            timeout=self.config.timeout_s,
        )
        self.http = httpx.Client(base_url=self.server_url, timeout=self.config.timeout_s)
        self.sent = Sent()
        """Everything this user sent and got acknowledged, over all days."""

    def close(self) -> None:
        self.api.close()
        self.http.close()

    # -- a day ---------------------------------------------------------------------------

    def work_day(
        self, day: int, tasks: Sequence[QuestionTask | ServiceTask]
    ) -> list[SessionRecord]:
        """Give the agent this user's `tasks` of world-clock `day`; the sessions it took."""
        rng = random.Random(f"users:{self.config.seed}:{self.org.seed}:{day}:{self.user.name}")
        sessions: list[SessionRecord] = []
        open_: dict[str, tuple[Conversation, SessionRecord]] = {}  # by kind of work
        started = 0
        for task in tasks:
            current = open_.get(task.kind)
            if current is not None and current[0].tokens >= self.config.session_tokens:
                sessions.append(self._finish(*current, rng))
                current = None
            if current is None:
                current = open_[task.kind] = self._start(day, task.kind, started)
                started += 1
            conversation, record = current
            if isinstance(task, QuestionTask):
                done = self._question(conversation, task, week_of(day), rng)
            else:
                done = self._order(conversation, task)
            record.tasks.append(done)
            if done.cut:  # the conversation is full: this session is over
                sessions.append(self._finish(conversation, record, rng))
                del open_[task.kind]
        for conversation, record in open_.values():
            sessions.append(self._finish(conversation, record, rng))
        return sessions

    def _start(self, day: int, kind: str, part: int) -> tuple[Conversation, SessionRecord]:
        """A new session for questions (no tools) or orders (the shop tool)."""
        meta = {"org": self.org.seed, "day": day, "kind": kind, "part": part, "simulated": True}
        response = self.http.post(
            "/v1/sessions",
            json={"tenant": self.org.tenant, "user": self.user.name, "meta": meta},
        )
        _raise_for(response, "start a session")
        session_id = str(response.json()["id"])
        self.sent.sessions += 1
        if kind == "question":
            system, tools = KNOWLEDGE_SYSTEM, None
        else:
            system, tools = AGENT_SYSTEM["shop"], [SHOP_TOOL]
        conversation = Conversation(
            self.api, session_id, self.org.tenant, self.config, self.sent, system, tools
        )
        return conversation, SessionRecord(session_id, self.user.name, day, kind)

    def _finish(
        self, conversation: Conversation, record: SessionRecord, rng: random.Random
    ) -> SessionRecord:
        """End the session, then judge it (ending first: no turn may follow the verdict)."""
        response = self.http.post(f"/v1/sessions/{conversation.id}/end")
        _raise_for(response, "end a session")
        self.sent.ended += 1
        thumb, honest, evaluation = judge(record.tasks, self.config, rng)
        body: dict[str, Any] = {"thumb": thumb, "author": f"simulated:{self.user.name}"}
        if evaluation is not None:
            body["evaluation"] = evaluation
        response = self.http.post(f"/v1/sessions/{conversation.id}/feedback", json=body)
        _raise_for(response, "give feedback")
        self.sent.feedback += 1
        self.sent.thumbs_up += thumb == "up"
        self.sent.thumbs_down += thumb == "down"
        self.sent.evaluations += evaluation is not None
        record.thumb, record.honest_thumb, record.evaluation = thumb, honest, evaluation
        record.tokens, record.model = conversation.tokens, conversation.model
        return record

    # -- tasks ---------------------------------------------------------------------------

    def _question(
        self, conversation: Conversation, task: QuestionTask, week: int, rng: random.Random
    ) -> TaskRecord:
        record = TaskRecord("question", task.request, False, False, expected=task.answer)
        text = task.request
        if task.document not in conversation.documents and rng.random() < self.config.paste_share:
            document = self.org.knowledge_at(week).document(task.document)
            text = f"my notes:\n{document.text}\n\n{task.request}"
            conversation.documents.add(task.document)
        record.with_document = task.document in conversation.documents
        statement = knowledge.statement(task.item)
        message = [{"role": "user", "content": text}]
        for attempt in range(self.config.corrections + 1):
            try:
                reply = conversation.ask(message, self.config.answer_tokens)
            except ContextFull:
                record.cut = True
                return record
            answer = reply.content or ""
            record.replies.append(answer)
            verdict = task.check(answer)
            if attempt == 0:
                record.first_success = verdict.success
                record.stale = task.is_stale(answer)
            if verdict.success:
                record.success = True
                return record
            if attempt == self.config.corrections:
                return record
            record.corrections += 1
            message = [{"role": "user", "content": f"no. {statement} {task.request}"}]
        return record

    def _order(self, conversation: Conversation, task: ServiceTask) -> TaskRecord:
        record = TaskRecord("order", task.request, False, False)
        refusal = self._refusal(task.account)
        if refusal:
            record.refused, record.expected = refusal, f"not tried: {refusal}"
            return record
        since = int(self.service.state(task.account)["last_order"])
        choice = "required" if self.config.force_tool else "auto"
        pending: list[dict[str, Any]] = [{"role": "user", "content": f"{task.request}\n{HELP}"}]
        try:
            for _ in range(self.config.step_budget):
                reply = conversation.ask(pending, self.config.action_tokens, choice)
                if not reply.tool_calls:
                    record.replies.append(reply.content or "")
                    pending = []
                    break
                call = reply.tool_calls[0]
                record.actions += 1
                action, observation, done, refused = self._act(call, task.account, conversation.id)
                record.replies.append(action)
                pending = [{"role": "tool", "tool_call_id": call.id, "content": observation}]
                if refused:
                    record.refused = refused
                if done or refused:
                    break
            if pending:  # the last observation goes back with the agent's closing turn
                conversation.ask(pending, self.config.wrap_up_tokens, "none")
        except ContextFull:
            record.cut = True
        verdict = task.check(self.service.state(task.account), since)
        record.success = record.first_success = verdict.success
        record.expected = verdict.reason
        return record

    def _act(self, call: Any, account: str, session: str) -> tuple[str, str, bool, str]:
        """Run one tool call: (action, observation, order placed, refusal message or "")."""
        raw = str(call.function.arguments)
        try:
            action = json.loads(raw)["action"]
            if not isinstance(action, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return raw, 'error: call shop with {"action": "<one action line>"}', False, ""
        try:
            result = self.service.act(account, action, session)
        except Refused as refusal:
            self.sent.actions += 1
            return action, str(refusal), False, str(refusal)
        except ValueError as error:  # refused before acting (e.g. an over-long line): no transition
            return action, f"error: {str(error).split(': ', 1)[-1]}", False, ""
        self.sent.actions += 1
        return action, result.observation, result.done, ""

    def _refusal(self, account: str) -> str:
        """Why the shop would refuse this account now ("" if it would not)."""
        state = self.service.state(account)["accounts"].get(account)
        if state is None:
            return ""
        now = time.time()
        if state["banned_until"] > now:
            return f"account banned for {state['banned_until'] - now:.0f} more seconds"
        if state["throttled_until"] > now:
            return f"account throttled for {state['throttled_until'] - now:.0f} more seconds"
        return ""


def judge(
    tasks: Sequence[TaskRecord], config: UsersConfig, rng: random.Random
) -> tuple[str, str, str | None]:
    """(thumb given, honest thumb, evaluation or None) for a session's tasks."""
    score = sum(t.score for t in tasks) / max(1, len(tasks))
    honest = "up" if tasks and score >= config.up_threshold else "down"
    thumb = honest
    if rng.random() < config.wrong_thumb_share:
        thumb = "down" if honest == "up" else "up"
    draw = rng.random()
    if draw < config.silent_share:
        return thumb, honest, None
    if draw < config.silent_share + config.vague_share:
        return thumb, honest, rng.choice(VAGUE_UP if thumb == "up" else VAGUE_DOWN)
    return thumb, honest, evaluation_text(tasks)


def evaluation_text(tasks: Sequence[TaskRecord]) -> str:
    """A user's written evaluation: what was done, what went wrong, and the right answers."""
    done = sum(t.success for t in tasks)
    lines = [f"{done} of {len(tasks)} tasks done."]
    for task in tasks:
        if task.kind == "question":
            said = knowledge.final_answer(task.replies[0]) if task.replies else ""
            if task.first_success:
                lines.append(f"right: {task.request}")
            elif task.cut and not task.replies:
                lines.append(f"no answer (the chat got too long): {task.request}")
            else:
                how = "stale answer" if task.stale else "wrong"
                after = "; right after my correction" if task.success else ""
                lines.append(
                    f"{how}: {task.request} said {clip(said) or 'nothing'}, it is {task.expected}{after}."
                )
        elif task.success:
            lines.append(f"order done: {task.request}")
        elif task.refused:
            lines.append(f"order failed, the shop refused us ({task.refused}): {task.request}")
        else:
            lines.append(f"order failed ({task.expected}): {task.request}")
    return "\n".join(lines)


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    raise RuntimeError(f"cannot {what}: HTTP {response.status_code}: {message}")
