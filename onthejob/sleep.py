"""Sleep: consolidate a tenant's recorded experience into a new candidate model version.

Covers, in the order one sleep runs them:

1. **Selection** (`SelectionPolicy`, `select_sessions`): the tenant's sessions from the
   experience store with their turns and feedback, by thumb (up by default), written
   evaluation, time window and users.
2. **Experience** (`read_experience`): what the users taught in those sessions, read back
   from the stored turns: the documents they pasted ("my notes:\\n<document>\\n\\n<question>")
   line by line, the statements of their corrections ("no. <statement> <question>"), the
   questions they asked, and their written evaluations. `onthejob.knowledge` reads each
   line back into the item it states, so a later version of an item (a correction, next
   week's document) replaces the earlier one.
3. **Plan** (`plan_sleep`): the questions the student practises on (probes) and the
   held-out questions the gate judges it on (targets), each with its teacher context:
   - probes: the users' real questions; variations of them (every other phrasing
     `knowledge.questions_about` has for the same item and answer); and self-study
     questions about every item of the pasted documents and corrections;
   - targets: for every item of the selected knowledge and every answer it gives, one
     phrasing that no probe uses (a ticket convention: a ticket number none uses), with the
     answer from the newest note of the item;
   - teacher context: the notes that state the question's item, i.e. the newest pasted
     document that holds it (its lines brought up to date by later notes), or the
     correction that stated it (`context_scope="document"`), or every note
     (`context_scope="all"`); with `hindsight`, also the lines of the users' evaluations
     that mention a question about the item (so a thumbs-down session whose critique names
     the right answer still teaches, even where nothing else in the context does).
4. **Training** by one of `METHODS` with the same selection, plan and token budget:
   "opsd" (`onthejob.train.opsd.distill`: on-policy self-distillation from the teacher
   with the context to the student without it), "sft_transcript" (SFT on the selected
   sessions' transcripts: reciting the work log), "sft_teacher" (SFT on the teacher's
   greedy answers to the probes: off-policy context distillation), and "none" (no update:
   the candidate is the parent itself, context only).
5. **Gate** (`decide`): the candidate against its parent on (a) no-context recall of the
   targets and (b) a guard suite: greedy success on held-out tasks of the grindable envs
   (`onthejob.evals.env_success`) and no-context recall of the knowledge earlier sleeps of
   the lineage consolidated (their targets, recorded in the registry, minus items this
   sleep's knowledge has a newer version of). Promote only if (a) rises by more than
   `min_gain` and no guard score falls by more than `tolerance` (2 points); otherwise
   reject with the reason. Method, configs, parent, adapter, every evaluation and the
   decision go into the registry, under the selected tenant only.

Not covered: the losses and their loops (`onthejob.train.opsd`, `onthejob.train.sft`),
dreaming (practice in a learned simulator of the live service: `onthejob.dream`), and
consolidating tool use. Questions come only from sessions without tools: a shop session's
user turns are orders, which no note answers.

Design decisions:

- The experience is read from the turns as stored, not from the simulated users' hidden
  state: the same code works on sessions of real people who paste and correct the same
  way. A line `knowledge.parse_statement` cannot read back is still a note (it goes into
  the teacher context as written) but it has no item, so no self-study question and no
  target comes from it.
- A probe's student prompt is the no-context chat the users' question sessions have
  (`prompts.KNOWLEDGE_SYSTEM`, then the question); the teacher's prompt is built by
  `onthejob.train.opsd.teacher_messages` from the same probe and its context (one place
  for it, shared with the trainer), and the teacher's with-context accuracy reported here
  is measured on exactly those prompts.
- The teacher context is per item by default, not the whole week: the default model reads
  documents of the size the users paste (8 items) far better than a concatenation of all
  of them, and OPSD is only as good as its teacher.
- The candidate is a LoRA adapter on the parent's base model: a fresh one when the parent
  is a base model, else the parent's adapter trained further (the trainers' "fixed"
  teacher is then the parent's weights as they started, not the bare base), so each
  tenant's lineage is one adapter over one base. The parent's evaluations are measured
  again in every sleep rather than read from the registry: the targets are this sleep's.
- "none" registers the parent's weights again as a candidate (method "none") with its
  evaluations: the baseline is in the registry like every other method, and the gate
  rejects it (no recall gain) unless an operator promotes it.

Where this departs from OPSD (Zhao et al. 2026) and SDFT (Shenfeld et al. 2026): their
teacher context is a demonstration or the ground-truth solution of the same problem; here
it is what a user pasted or said at work, and the probes are generated from it (real
questions, paraphrases, self-study), as in self-study context distillation. The gate and
the tenant-scoped adapters are not part of either method.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from onthejob import knowledge
from onthejob.evals import answer_all, env_success
from onthejob.knowledge import Item
from onthejob.models import load_adapter, load_model
from onthejob.prompts import KNOWLEDGE_SYSTEM, TOOLS_HEADER
from onthejob.registry import ModelVersion, Registry
from onthejob.store import Feedback, Session, Store, Turn
from onthejob.train.opsd import OPSDConfig, Probe, distill, teacher_messages
from onthejob.train.pretrain import default_model_dir, onthejob_home
from onthejob.train.sft import SFTConfig, sft, teacher_sample_examples, transcript_examples
from onthejob.world.org import Key, item_key

THUMBS = ("up", "down", "any")
"""Which sessions a selection takes by their latest thumb ("any": with or without one)."""
METHODS = ("none", "opsd", "sft_transcript", "sft_teacher")
"""How a sleep turns the experience into weights (see the module docstring)."""
CONTEXT_SCOPES = ("document", "all")
"""What a probe's teacher reads: the notes about its item, or every note."""
NOTES_PREFIX = "my notes:\n"
"""How a user's message with a pasted document starts (then the document, a blank line and
the question)."""
CORRECTION_PREFIX = "no. "
"""How a user's correction starts (then the right statement and the question again)."""
TICKET_NUMBERS = 3
"""Ticket numbers self-study asks about for each convention (one more is held out)."""


class SleepError(Exception):
    """A sleep cannot run as asked; the message says why and what to do."""


# -- selection --------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionPolicy:
    """Which recorded sessions one sleep learns from."""

    tenant: str
    """The tenant whose sessions are read (and whose adapter the sleep trains)."""
    thumbs: str = "up"
    """Sessions whose latest thumb is "up", "down", or "any" (also sessions without one)."""
    require_evaluation: bool = False
    """Only sessions with a written evaluation."""
    since: float | None = None
    """Only sessions started at or after this time (seconds since the epoch)."""
    until: float | None = None
    """Only sessions started before this time."""
    users: tuple[str, ...] = ()
    """Only these users' sessions (empty: every user of the tenant)."""

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant:
            raise SleepError("a selection needs a tenant (a non-empty string)")
        if self.thumbs not in THUMBS:
            raise SleepError(f"thumbs must be one of {', '.join(THUMBS)}, got {self.thumbs!r}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise SleepError(f"the time window is empty: since {self.since} >= until {self.until}")


@dataclass(frozen=True)
class SelectedSession:
    """A selected session with everything stored about it."""

    session: Session
    turns: tuple[Turn, ...]
    """Its turns in order."""
    feedback: tuple[Feedback, ...]
    """Its feedback in the order given."""

    @property
    def thumb(self) -> int | None:
        """The latest thumb (+1 / -1), or None if it got none."""
        thumbs = [f.thumb for f in self.feedback if f.thumb is not None]
        return thumbs[-1] if thumbs else None

    @property
    def evaluations(self) -> tuple[str, ...]:
        """The written evaluations, oldest first."""
        return tuple(f.evaluation for f in self.feedback if f.evaluation and f.evaluation.strip())


def select_sessions(store: Store, policy: SelectionPolicy) -> list[SelectedSession]:
    """The policy's sessions of its tenant, oldest first, with their turns and feedback."""
    thumb = {"up": 1, "down": -1, "any": None}[policy.thumbs]
    sessions = store.sessions(
        tenant=policy.tenant, since=policy.since, until=policy.until, thumb=thumb
    )
    feedback: dict[str, list[Feedback]] = {}
    for given in store.feedback(tenant=policy.tenant):
        feedback.setdefault(given.session, []).append(given)
    selected = []
    for session in sessions:
        if policy.users and session.user not in policy.users:
            continue
        chosen = SelectedSession(
            session, tuple(store.turns(session.id)), tuple(feedback.get(session.id, ()))
        )
        if policy.require_evaluation and not chosen.evaluations:
            continue
        selected.append(chosen)
    return selected


# -- experience -------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    """A line the teacher may read: one line of a pasted document, or a correction."""

    text: str
    """The line as the user wrote it."""
    item: Item | None
    """The item it states, read back by `knowledge.parse_statement` (None if unreadable)."""
    source: str
    """"document" or "correction"."""
    document: int | None
    """Index of the pasted document it is a line of (in `Experience.documents`)."""
    session: str
    """The session it was said in."""


@dataclass(frozen=True)
class Asked:
    """A question a user asked in a session without tools."""

    text: str
    """The question as asked."""
    session: str


@dataclass(frozen=True)
class Evaluation:
    """A user's written evaluation of a selected session."""

    text: str
    thumb: int | None
    """The session's latest thumb."""
    session: str


@dataclass(frozen=True)
class Experience:
    """What the users taught in the selected sessions, in the order they said it."""

    sessions: tuple[str, ...]
    """Ids of the sessions read."""
    documents: tuple[str, ...]
    """Each distinct document pasted, as pasted."""
    notes: tuple[Note, ...]
    """Every line of every paste and every correction, oldest first (repeats included)."""
    questions: tuple[Asked, ...]
    """Every question asked in sessions without tools, oldest first (repeats included)."""
    evaluations: tuple[Evaluation, ...]
    """Every written evaluation."""

    def knowledge(self) -> dict[Key, Item]:
        """The newest version of each item the notes state (a later note replaces an earlier)."""
        newest: dict[Key, Item] = {}
        for note in self.notes:
            if note.item is not None:
                newest[item_key(note.item)] = note.item
        return newest


def split_correction(text: str) -> tuple[str, str]:
    """(statement, question) of a correction's text after "no. ": the statement is the
    longest leading sentence `knowledge.parse_statement` reads, else the first sentence."""
    ends = [
        i + 1 for i, char in enumerate(text) if char == "." and text[i + 1 : i + 2] in (" ", "")
    ]
    for end in reversed(ends):
        if knowledge.parse_statement(text[:end]) is not None:
            return text[:end].strip(), text[end:].strip()
    if not ends:
        return text.strip(), ""
    return text[: ends[0]].strip(), text[ends[0] :].strip()


def uses_tools(turns: Sequence[Turn]) -> bool:
    """Whether a session declared or used tools (its user turns are not knowledge questions)."""
    return any(
        turn.tool_calls
        or turn.role == "tool"
        or (turn.role == "system" and TOOLS_HEADER in turn.content)
        for turn in turns
    )


def read_experience(sessions: Sequence[SelectedSession]) -> Experience:
    """The documents, corrections, questions and evaluations of the sessions' user turns."""
    documents: list[str] = []
    notes: list[Note] = []
    questions: list[Asked] = []
    evaluations: list[Evaluation] = []
    for selected in sessions:
        sid = selected.session.id
        asks = not uses_tools(selected.turns)
        for turn in selected.turns:
            if turn.role != "user":
                continue
            content = turn.content.strip()
            question = content
            if content.startswith(NOTES_PREFIX.strip()):
                body = content[len(NOTES_PREFIX.strip()) :].strip("\n")
                document, blank, question = body.rpartition("\n\n")
                if not blank:  # a paste with no question after it
                    document, question = body, ""
                if document not in documents:
                    documents.append(document)
                index = documents.index(document)
                for line in document.splitlines():
                    if line.strip():
                        item = knowledge.parse_statement(line)
                        notes.append(Note(line.strip(), item, "document", index, sid))
            elif content.startswith(CORRECTION_PREFIX):
                statement, question = split_correction(content[len(CORRECTION_PREFIX) :])
                item = knowledge.parse_statement(statement)
                notes.append(Note(statement, item, "correction", None, sid))
            if asks and question.strip():
                questions.append(Asked(question.strip(), sid))
        for text in selected.evaluations:
            evaluations.append(Evaluation(text, selected.thumb, sid))
    return Experience(
        sessions=tuple(s.session.id for s in sessions),
        documents=tuple(documents),
        notes=tuple(notes),
        questions=tuple(questions),
        evaluations=tuple(evaluations),
    )


# -- plan: probes, targets and teacher contexts -----------------------------------------


@dataclass(frozen=True)
class PlanConfig:
    """How the probes and targets of a sleep are built from its experience."""

    hindsight: bool = False
    """Add the users' evaluation lines about a question's item to its teacher context."""
    context_scope: str = "document"
    """"document": the notes that state the item; "all": every note (see CONTEXT_SCOPES)."""
    variations: bool = True
    """Practise the other phrasings of each real question (same item, same answer)."""
    self_study: bool = True
    """Practise questions about every item of the notes, not only the ones asked."""
    seed: int = 0
    """Seed of the held-out phrasings and of the ticket numbers asked about."""

    def __post_init__(self) -> None:
        if self.context_scope not in CONTEXT_SCOPES:
            raise SleepError(
                f"context_scope must be one of {', '.join(CONTEXT_SCOPES)},"
                f" got {self.context_scope!r}"
            )


@dataclass(frozen=True)
class SleepQuestion:
    """A question of one sleep: asked of the student with no context and of the teacher
    with `context`."""

    text: str
    """The question."""
    answer: str | None
    """The answer the notes give (None: the notes do not say, e.g. only an evaluation does)."""
    context: str
    """The teacher context: note lines (and with hindsight evaluation lines), one per line."""
    kind: str
    """"question" (a user's), "variation", "self_study", or "held_out" (a gate target)."""

    @property
    def student_messages(self) -> tuple[dict[str, str], ...]:
        """The no-context chat the student answers: the reading system prompt, the question."""
        return student_messages(self.text)


def student_messages(question: str) -> tuple[dict[str, str], ...]:
    """The chat of a question with no context, as the users' question sessions open."""
    return ({"role": "system", "content": KNOWLEDGE_SYSTEM}, {"role": "user", "content": question})


@dataclass(frozen=True)
class Plan:
    """What one sleep practises (probes) and is judged on (targets)."""

    probes: tuple[SleepQuestion, ...]
    """Practice questions, each text once: real questions, variations, self-study."""
    targets: tuple[SleepQuestion, ...]
    """Held-out phrasings about every item of the selected knowledge, with answers."""
    knowledge: dict[Key, Item] = field(default_factory=dict)
    """The newest version of each item the notes state."""
    skipped: tuple[str, ...] = ()
    """Real questions left out: nothing in any teacher context is about them."""

    def count(self, kind: str) -> int:
        return sum(probe.kind == kind for probe in self.probes)


def _key_of_question(text: str) -> Key | None:
    form = knowledge.parse_question(text)
    return None if form is None else (form.subject, form.topic)


def _current_line(note: Note, newest: dict[Key, Item], rng_seed: str) -> str:
    """A note's line brought up to date: the newest version of its item if that differs."""
    if note.item is None:
        return note.text
    current = newest[item_key(note.item)]
    if current == note.item:
        return note.text
    return knowledge.statement(current, random.Random(rng_seed))


def _contexts(experience: Experience, config: PlanConfig) -> dict[Key | None, str]:
    """Teacher context per item key, for every key a note states or a question asks about
    (None: questions `knowledge.parse_question` cannot read). A key with nothing to read
    about it gets no entry."""
    newest = experience.knowledge()
    documents: dict[int, list[Note]] = {}
    for note in experience.notes:
        if note.document is not None:
            documents.setdefault(note.document, []).append(note)

    def render(notes: Sequence[Note]) -> list[str]:
        """The notes' lines, each item once and in its newest version, in first-seen order."""
        lines: list[str] = []
        seen: set[Key] = set()
        for note in notes:
            line = note.text
            if note.item is not None:
                key = item_key(note.item)
                if key in seen:
                    continue
                seen.add(key)
                if newest[key] != note.item:
                    line = knowledge.statement(newest[key], random.Random(f"{config.seed}:{line}"))
            if line not in lines:
                lines.append(line)
        return lines

    def states(note: Note, key: Key) -> bool:
        return note.item is not None and item_key(note.item) == key

    def evaluation_lines(key: Key | None) -> list[str]:
        """Evaluation lines that mention a question asked about `key` (None: about anything)."""
        questions = [
            q.text for q in experience.questions if key is None or _key_of_question(q.text) == key
        ]
        lines: list[str] = []
        for evaluation in experience.evaluations:
            for line in evaluation.text.splitlines():
                line = line.strip()
                if line and line not in lines and any(q in line for q in questions):
                    lines.append(line)
        return lines

    every_line = render(experience.notes)
    if config.hindsight:
        every_line += [line for line in evaluation_lines(None) if line not in every_line]
    asked = {_key_of_question(q.text) for q in experience.questions}
    contexts: dict[Key | None, str] = {}
    for key in [*newest, *(k for k in asked if k not in newest)]:
        if key is None:  # a question no template reads: only the whole context may answer it
            if config.context_scope == "all" and every_line:
                contexts[None] = "\n".join(every_line)
            continue
        critique = evaluation_lines(key) if config.hindsight else []
        if key not in newest and not critique:
            continue  # nothing the teacher could read says anything about it
        if config.context_scope == "all":
            lines = every_line
        else:
            lines = []
            if key in newest:
                holders = [
                    i for i, notes in documents.items() if any(states(n, key) for n in notes)
                ]
                if holders:  # the newest paste that holds the item, every line up to date
                    lines = render(documents[max(holders)])
                else:  # only corrections stated it
                    lines = render([n for n in experience.notes if states(n, key)])
            lines += [line for line in critique if line not in lines]
        contexts[key] = "\n".join(lines)
    return contexts


def plan_sleep(experience: Experience, config: PlanConfig | None = None) -> Plan:
    """The probes and targets of a sleep on this experience (deterministic for a seed)."""
    config = config or PlanConfig()
    newest = experience.knowledge()
    contexts = _contexts(experience, config)
    real = list(dict.fromkeys(q.text for q in experience.questions))
    real_set = set(real)

    # Held out per item and answer: one phrasing that is not a user's question (tickets: a
    # number nobody asked about); everything else about the item may be practised.
    held_out: dict[str, SleepQuestion] = {}
    practice: dict[Key, list[knowledge.Question]] = {}
    for key, item in newest.items():
        rng = random.Random(f"sleep:{config.seed}:{key}")
        context = contexts[key]
        if isinstance(item, knowledge.Convention):
            asked_numbers = {
                form.number
                for text in real
                if (form := knowledge.parse_question(text)) is not None
                and (form.subject, form.topic) == key
            }
            numbers = [n for n in rng.sample(range(10, 1000), TICKET_NUMBERS + 8)]
            numbers = [n for n in numbers if n not in asked_numbers][: TICKET_NUMBERS + 1]
            target = rng.choice(knowledge.questions_about(item, numbers[0]))
            held_out[target.text] = SleepQuestion(target.text, target.answer, context, "held_out")
            practice[key] = [q for n in numbers[1:] for q in knowledge.questions_about(item, n)]
            continue
        by_answer: dict[str, list[knowledge.Question]] = {}
        for asked in knowledge.questions_about(item):
            by_answer.setdefault(asked.answer, []).append(asked)
        practice[key] = []
        for phrasings in by_answer.values():
            candidates = [q for q in phrasings if q.text not in real_set]
            if candidates:
                target = rng.choice(candidates)
                held_out[target.text] = SleepQuestion(
                    target.text, target.answer, context, "held_out"
                )
            practice[key] += [q for q in phrasings if q.text not in held_out]

    probes: dict[str, SleepQuestion] = {}
    skipped: list[str] = []
    for text in real:
        asked_key = _key_of_question(text)
        context = contexts.get(asked_key, "")
        if not context:
            skipped.append(text)
            continue
        asked_item = newest.get(asked_key) if asked_key is not None else None
        answer = knowledge.answer_to(text, asked_item) if asked_item is not None else None
        probes[text] = SleepQuestion(text, answer, context, "question")
        if config.variations and asked_key in practice and answer is not None:
            for other in practice[asked_key]:
                if other.answer == answer and other.text not in probes:
                    probes[other.text] = SleepQuestion(other.text, answer, context, "variation")
    if config.self_study:
        for key, questions in practice.items():
            for asked in questions:
                if asked.text not in probes:
                    probes[asked.text] = SleepQuestion(
                        asked.text, asked.answer, contexts[key], "self_study"
                    )
    return Plan(
        probes=tuple(probes.values()),
        targets=tuple(held_out.values()),
        knowledge=newest,
        skipped=tuple(skipped),
    )


# -- gate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateConfig:
    """When a candidate is promoted."""

    min_gain: float = 0.0
    """No-context recall of the targets must rise by more than this over the parent."""
    tolerance: float = 0.02
    """Most any guard score may fall below the parent's (0.02: two points)."""

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance <= 1 or not 0 <= self.min_gain < 1:
            raise SleepError(
                f"gate tolerance must be in [0, 1] and min_gain in [0, 1), got"
                f" {self.tolerance} and {self.min_gain}"
            )


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a candidate."""

    promote: bool
    reason: str


def decide(
    recall_before: float,
    recall_after: float,
    guard_before: dict[str, float],
    guard_after: dict[str, float],
    config: GateConfig | None = None,
) -> Decision:
    """Promote when recall rises by more than `min_gain` and every guard score stays within
    `tolerance` of the parent's; else reject, saying which rule failed and by how much."""
    config = config or GateConfig()
    if set(guard_before) != set(guard_after):
        raise SleepError(
            f"the guard suites differ: {sorted(guard_before)} before, {sorted(guard_after)} after"
        )
    gain = recall_after - recall_before
    recall = f"recall {recall_before:.3f} -> {recall_after:.3f} ({gain:+.3f})"
    if gain <= config.min_gain:
        return Decision(False, f"no recall gain: {recall}, needs more than {config.min_gain:+.3f}")
    drops = [
        f"{name} {guard_before[name]:.3f} -> {guard_after[name]:.3f}"
        f" ({guard_after[name] - guard_before[name]:+.3f})"
        for name in sorted(guard_before)
        if guard_before[name] - guard_after[name] > config.tolerance + 1e-9
    ]
    if drops:
        return Decision(
            False, f"guard fell beyond {config.tolerance:.3f}: {'; '.join(drops)} ({recall})"
        )
    return Decision(True, f"{recall}; guard within {config.tolerance:.3f}")


# -- evaluation -------------------------------------------------------------------------


def no_context_recall(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[SleepQuestion],
    max_new_tokens: int = 16,
) -> float:
    """Share of the questions (those with an answer) answered right with no context, greedy."""
    judged = [q for q in questions if q.answer is not None]
    if not judged:
        raise SleepError("no question with a known answer to measure recall on")
    replies = answer_all(
        model, tokenizer, [list(q.student_messages) for q in judged], max_new_tokens
    )
    return _share_right(replies, judged)


def with_context_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[SleepQuestion],
    max_new_tokens: int = 16,
) -> float:
    """Share of the questions answered right with their teacher context, as the teacher
    reads it (`opsd.teacher_messages`), greedy."""
    judged = [q for q in questions if q.answer is not None]
    if not judged:
        raise SleepError("no question with a known answer to measure accuracy on")
    chats = [teacher_messages(probe_of(q)) for q in judged]
    return _share_right(answer_all(model, tokenizer, chats, max_new_tokens), judged)


def _share_right(replies: Sequence[str], questions: Sequence[SleepQuestion]) -> float:
    right = [
        knowledge.is_correct(reply, str(q.answer))
        for reply, q in zip(replies, questions, strict=True)
    ]
    return sum(right) / len(right)


def probe_of(question: SleepQuestion) -> Probe:
    """The OPSD probe of a question: its no-context chat, its teacher context, its answer."""
    return Probe(question.student_messages, question.context, question.answer)


EARLIER = "earlier knowledge"
"""Name of the guard score on knowledge earlier sleeps of the lineage consolidated."""


def guard_suite(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    envs: Sequence[str],
    n: int,
    difficulty: int,
    earlier: Sequence[SleepQuestion] = (),
) -> dict[str, float]:
    """Greedy success on up to n held-out tasks of each env ("<env> success"), and
    no-context recall of the earlier knowledge when there is some."""
    scores = {
        f"{env} success": env_success(model, tokenizer, env, n=n, difficulty=difficulty)[0]
        for env in envs
    }
    if earlier:
        scores[EARLIER] = no_context_recall(model, tokenizer, earlier)
    return scores


def earlier_knowledge(registry: Registry, parent: ModelVersion, plan: Plan) -> list[SleepQuestion]:
    """The targets earlier sleeps of the parent's lineage recorded, minus questions about items
    this plan knows a version of (it judges those itself, with their newest answers)."""
    questions: dict[str, SleepQuestion] = {}
    version: ModelVersion | None = parent
    while version is not None:
        for text, answer in version.config.get("targets", []):
            key = _key_of_question(text)
            if text not in questions and key not in plan.knowledge:
                questions[text] = SleepQuestion(text, answer, "", "earlier")
        version = registry.get(version.parent) if version.parent else None
    return list(questions.values())


# -- one sleep --------------------------------------------------------------------------


@dataclass(frozen=True)
class SleepConfig:
    """One sleep: how it trains, how it is judged, and whether it may promote."""

    method: str = "opsd"
    """One of METHODS."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """How probes, targets and teacher contexts are built."""
    opsd: OPSDConfig = field(default_factory=OPSDConfig)
    """The OPSD run (method "opsd")."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """The SFT run (methods "sft_transcript" and "sft_teacher")."""
    gate: GateConfig = field(default_factory=GateConfig)
    """When the candidate is promoted."""
    guard_envs: tuple[str, ...] = ("arith", "program", "shop")
    """Grindable envs whose held-out success the guard suite measures."""
    guard_n: int = 100
    """Held-out tasks per guard env (one task is 1 / guard_n of a score)."""
    guard_difficulty: int = 1
    """Level of the guard envs' tasks."""
    promote: bool = True
    """Promote a candidate the gate passes (False: leave it a candidate; failures are
    rejected either way)."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1..."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SleepError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.guard_n < 1:
            raise SleepError(f"guard_n must be at least 1, got {self.guard_n}")


@dataclass
class SleepResult:
    """What one sleep did and measured."""

    tenant: str
    method: str
    parent: ModelVersion
    """The version it started from (the tenant's promoted one)."""
    version: ModelVersion
    """The candidate as registered, with its final status."""
    decision: Decision
    """The gate's verdict (a candidate left unpromoted by `promote=False` keeps it too)."""
    sessions: int
    """Sessions selected."""
    plan: Plan
    recall_before: float
    """No-context recall of the targets by the parent."""
    recall_after: float
    """No-context recall of the targets by the candidate."""
    teacher_accuracy: float
    """The parent's accuracy on the targets with their teacher contexts (context only)."""
    guard_before: dict[str, float]
    guard_after: dict[str, float]
    train: dict[str, Any]
    """Steps, tokens and seconds of the training run (empty for "none")."""
    run_dir: Path


def sleep(
    store: Store,
    registry: Registry,
    policy: SelectionPolicy,
    config: SleepConfig | None = None,
    run_dir: Path | None = None,
    model_dir: Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda line: None,
) -> SleepResult:
    """Select, plan, train, judge and register one candidate for `policy.tenant`.

    The parent is the tenant's promoted version; a tenant without one starts from
    `model_dir` (default: the cached pretrained model), registered and promoted as its
    base version, as `onthejob serve` does.
    """
    config = config or SleepConfig()
    tenant = policy.tenant
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir or onthejob_home() / "runs" / f"sleep-{tenant}-{config.method}-{stamp}"
    selected = select_sessions(store, policy)
    if not selected:
        raise SleepError(
            f"no session of tenant {tenant!r} matches the selection (thumbs {policy.thumbs}"
            f"{', with an evaluation' if policy.require_evaluation else ''}); run"
            " `onthejob work` first or widen it (--thumbs any)"
        )
    experience = read_experience(selected)
    plan = plan_sleep(experience, config.plan)
    if not plan.targets:
        raise SleepError(
            f"nothing to consolidate: the {len(selected)} selected sessions hold no pasted"
            " document or correction that can be read back into knowledge"
        )
    if not plan.probes and config.method in ("opsd", "sft_teacher"):
        raise SleepError("no probe to practise on: enable self-study or select more sessions")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_plan(run_dir / "plan.json", selected, plan)
    log(
        f"{len(selected)} sessions: {len(experience.documents)} documents pasted,"
        f" {sum(n.source == 'correction' for n in experience.notes)} corrections,"
        f" {len(plan.knowledge)} items; {len(plan.probes)} probes, {len(plan.targets)} targets"
    )

    parent = _parent(registry, tenant, model_dir)
    model, tokenizer = load_version(parent, config.device, trainable=True)
    earlier = earlier_knowledge(registry, parent, plan)
    log(f"evaluating the parent {parent.id}")
    recall_before = no_context_recall(model, tokenizer, plan.targets)
    teacher_accuracy = with_context_accuracy(model, tokenizer, plan.targets)
    guard = (config.guard_envs, config.guard_n, config.guard_difficulty)
    guard_before = guard_suite(model, tokenizer, *guard, earlier=earlier)

    log(f"training: {config.method}")
    trained, base, adapter, train = _train(
        config, model, tokenizer, parent, selected, plan, run_dir, show_progress
    )
    if config.method == "none":
        recall_after, guard_after = recall_before, dict(guard_before)
    else:
        log("evaluating the candidate")
        recall_after = no_context_recall(trained, tokenizer, plan.targets)
        guard_after = guard_suite(trained, tokenizer, *guard, earlier=earlier)

    decision = decide(recall_before, recall_after, guard_before, guard_after, config.gate)
    evals = {
        "recall_before": recall_before,
        "recall": recall_after,
        "teacher_with_context": teacher_accuracy,
        "guard_before": guard_before,
        "guard": guard_after,
        "targets": len(plan.targets),
        "tokens": train.get("tokens", 0),
        "gate": "promote" if decision.promote else "reject",
    }
    record = {
        "method": config.method,
        "selection": asdict(policy),
        "sessions": len(selected),
        "plan": asdict(config.plan),
        "probes": {kind: plan.count(kind) for kind in ("question", "variation", "self_study")},
        **({"opsd": asdict(config.opsd)} if config.method == "opsd" else {}),
        **({"sft": asdict(config.sft)} if config.method.startswith("sft") else {}),
        "gate": asdict(config.gate),
        "guard": {"envs": list(config.guard_envs), "n": config.guard_n, "earlier": len(earlier)},
        "train": train,
        "run_dir": str(run_dir),
        "targets": [[q.text, q.answer] for q in plan.targets],
    }
    actor = "onthejob sleep"
    version = registry.register(
        tenant, base, adapter, config.method, record, parent.id, evals, actor=actor
    )
    if not decision.promote:
        version = registry.reject(version.id, decision.reason, actor=actor)
    elif config.promote:
        version = registry.promote(version.id, decision.reason, actor=actor)
    result = SleepResult(
        tenant=tenant,
        method=config.method,
        parent=parent,
        version=version,
        decision=decision,
        sessions=len(selected),
        plan=plan,
        recall_before=recall_before,
        recall_after=recall_after,
        teacher_accuracy=teacher_accuracy,
        guard_before=guard_before,
        guard_after=guard_after,
        train=train,
        run_dir=run_dir,
    )
    report = {**evals, "version": version.id, "status": version.status, "reason": decision.reason}
    (run_dir / "sleep.json").write_text(json.dumps({**record, "evals": report}, indent=2))
    return result


def load_version(
    version: ModelVersion, device: str = "cpu", trainable: bool = False
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A registered version's model (its base, with its adapter if it has one) and tokenizer."""
    model, tokenizer = load_model(version.base, device=device)
    if version.adapter is None:
        return model, tokenizer
    return load_adapter(model, version.adapter, trainable=trainable), tokenizer


def _parent(registry: Registry, tenant: str, model_dir: Path | None) -> ModelVersion:
    """The tenant's promoted version; without one, `model_dir` registered and promoted."""
    parent = registry.promoted(tenant)
    if parent is not None:
        return parent
    model_dir = model_dir or default_model_dir()
    if not model_dir.is_dir():
        raise SleepError(
            f"tenant {tenant!r} has no promoted version and there is no model at {model_dir};"
            " run `onthejob pretrain` first (or pass --model DIR)"
        )
    actor = "onthejob sleep"
    version = registry.register(tenant, model_dir, method="base", actor=actor)
    return registry.promote(version.id, reason="the base of the first sleep", actor=actor)


def _train(
    config: SleepConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    parent: ModelVersion,
    selected: Sequence[SelectedSession],
    plan: Plan,
    run_dir: Path,
    show_progress: bool,
) -> tuple[torch.nn.Module, str, str | None, dict[str, Any]]:
    """(trained model, base dir, adapter dir or None, steps/tokens/seconds) of the method."""
    if config.method == "none":
        return model, parent.base, parent.adapter, {}
    out_dir = run_dir / "candidate"
    if config.method == "opsd":
        probes = [probe_of(q) for q in plan.probes]
        result = distill(
            model,
            tokenizer,
            probes,
            config.opsd,
            out_dir=out_dir,
            run_dir=run_dir / "train",
            show_progress=show_progress,
        )
        lora = config.opsd.lora or parent.adapter is not None
        trained, steps, tokens, seconds = result.model, result.steps, result.tokens, result.seconds
    else:
        if config.method == "sft_transcript":
            examples = transcript_examples(
                [[_message(t) for t in s.turns] for s in selected if not uses_tools(s.turns)]
            )
        else:  # the teacher is the parent: under an adapter, a merged copy of it
            teacher = model
            if parent.adapter is not None:
                merged, _ = load_version(parent, config.device, trainable=False)
                teacher = merged.merge_and_unload()  # type: ignore[operator]
            examples = teacher_sample_examples(
                teacher, tokenizer, [probe_of(q) for q in plan.probes]
            )
        if not examples:
            raise SleepError(f"{config.method}: the selected sessions give no example to train on")
        sft_result = sft(
            model,
            tokenizer,
            examples,
            config.sft,
            out_dir=out_dir,
            run_dir=run_dir / "train",
            show_progress=show_progress,
        )
        lora = config.sft.lora or parent.adapter is not None
        trained, steps = sft_result.model, sft_result.steps
        tokens, seconds = sft_result.tokens, sft_result.seconds
    train = {"steps": steps, "tokens": tokens, "seconds": round(seconds, 1)}
    if lora:
        return trained, parent.base, str(out_dir), train
    return trained, str(out_dir), None, train


def _message(turn: Turn) -> dict[str, str]:
    return {"role": turn.role, "content": turn.content}


def _write_plan(path: Path, selected: Sequence[SelectedSession], plan: Plan) -> None:
    """The sessions, probes and targets of a sleep, for reading after the run."""
    path.write_text(
        json.dumps(
            {
                "sessions": [s.session.id for s in selected],
                "probes": [asdict(p) for p in plan.probes],
                "targets": [asdict(t) for t in plan.targets],
                "skipped": list(plan.skipped),
            },
            indent=2,
        )
    )
