"""Sleep, second step: the questions a sleep practises on and is judged on, with the
context its teacher reads.

Covers: `plan_sleep(experience)`, a `Plan` of
- probes: the users' real questions; variations of them (every other phrasing
  `knowledge.questions_about` has for the same item and answer); self-study questions
  about every item the pasted documents and corrections state; and, with `openers`, each
  of those again behind a word a user may open with ("hi! who owns auth?");
- targets: for every item of the selected knowledge and every answer it gives, one
  phrasing no probe uses (a ticket convention: a ticket number no probe uses), with the
  answer of the newest note that states the item;
each a `SleepQuestion` whose student prompt is the no-context chat of the users' question
sessions (`prompts.KNOWLEDGE_SYSTEM`, then the question) and whose teacher context is
- `context_scope="document"` (default): the newest pasted document that states the item,
  every line brought up to its newest version, or the corrections that stated it when no
  document did; `"all"`: every note;
- with `hindsight`, also the lines of the users' evaluations that mention a question about
  the item, so a thumbs-down session whose critique names the right answer still teaches
  where nothing else does.

Also `replay_probes`: a number of each grindable env's training tasks with no context,
cut before one of the expert's replies (the opening, or a later turn of a multi-turn
episode), so the teacher sees exactly what the student sees; mixed into a sleep's probes
they anchor the skills the guard suite measures (its tasks are the envs' held-out split,
never these). `spread` turns one number into counts per env.

Not covered: how the teacher's prompt is built from a probe and its context
(`onthejob.train.opsd.teacher_messages`, the one place shared with the trainer), training,
judging.

Design decisions:

- Per-item contexts by default, not the whole week: OPSD is only as good as its teacher,
  and the default model reads a document of the size users paste far better than all of
  them at once. Measured on the session-3 default, every document of org 1 (org 2) pasted:
  with-context accuracy on the targets 0.21 (0.17) per document against 0.10 (0.15) with
  every note.
- Openers by default: the student fits the phrasings it practises and misses held-out
  ones, so each probe is asked again behind a few words a user may open with, and the
  answer gets keyed on the item, not on the wording. This is a light form of the
  knowledge augmentation Allen-Zhu and Li (Physics of Language Models 3.1) found needed
  for stored knowledge to be extractable by new questions; they rewrite the stored text,
  this rewrites the question only, with words the default model reads past.
- A question is practised at most once per plan (a real question, then a variation, then
  self-study): the trainers draw probes epoch by epoch, so a repeat would only weigh it more.
- Targets never include a user's own question: the gate asks what the student was not
  shown. A fact whose every phrasing some user asked has no target.
- Everything is a function of the experience and the seed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onthejob import knowledge
from onthejob.knowledge import Item
from onthejob.prompts import KNOWLEDGE_SYSTEM
from onthejob.sleep.selection import Experience, Note, SleepError
from onthejob.train.opsd import Probe
from onthejob.world.org import Key, item_key

CONTEXT_SCOPES = ("document", "all")
"""What a probe's teacher reads: the notes about its item, or every note."""
TICKET_NUMBERS = 3
"""Ticket numbers self-study asks about for each convention (one more is held out)."""
OPENERS = ("quick question:", "hi!", "hey team,")
"""Words a user may open a question with; `PlanConfig.openers` asks every probe again after
each. The default model's teacher reads its context as well behind them (89, 96, 94 and 96
of 151 questions right at org 69, plain and behind each); behind a closing word ("...
thanks.") it fell to 43."""


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
    openers: tuple[str, ...] = OPENERS
    """Ask every knowledge probe again behind each of these openers ("hi! who owns auth?"),
    so what the student learns is keyed on the item rather than on the exact wording of the
    phrasings it practised; the held-out targets stay plain (() : the probes as asked).
    Without them the student answers the phrasings it practised and misses held-out ones:
    at org 69 it answered 61 of the 63 probes its teacher answers, yet 5 of its 6 misses
    among the targets were items whose every practised phrasing it got right. At fresh
    orgs 76-79 (192k tokens) OPSD recalled 92-97% of the teacher with them (mean 94%)
    against 79-96% without (mean 90%) (docs/results.md, session 21)."""
    seed: int = 0
    """Seed of the held-out phrasings and of the ticket numbers asked about."""

    def __post_init__(self) -> None:
        if self.context_scope not in CONTEXT_SCOPES:
            raise SleepError(
                f"context_scope must be one of {', '.join(CONTEXT_SCOPES)},"
                f" got {self.context_scope!r}"
            )
        blank = [opener for opener in self.openers if not opener.strip()]
        if blank or len(set(self.openers)) < len(self.openers):
            raise SleepError(
                f"openers must be distinct words to open a question with, got {list(self.openers)}"
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
    """"question" (a user's), "variation", "self_study", "opener" (one of those behind an
    opener), or "held_out" (a gate target)."""

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
    """Practice questions, each text once: real questions, variations, self-study, then
    each of them behind each opener."""
    targets: tuple[SleepQuestion, ...]
    """Held-out phrasings about every item of the selected knowledge, with answers."""
    knowledge: dict[Key, Item] = field(default_factory=dict)
    """The newest version of each item the notes state."""
    skipped: tuple[str, ...] = ()
    """Real questions left out: nothing in any teacher context is about them."""

    def count(self, kind: str) -> int:
        """Probes of one kind ("question", "variation", "self_study" or "opener")."""
        return sum(probe.kind == kind for probe in self.probes)


def key_of_question(text: str) -> Key | None:
    """The key of the item a question asks about (None: no question template reads it)."""
    form = knowledge.parse_question(text)
    return None if form is None else (form.subject, form.topic)


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
                    line = knowledge.statement(newest[key])
            if line not in lines:
                lines.append(line)
        return lines

    def states(note: Note, key: Key) -> bool:
        return note.item is not None and item_key(note.item) == key

    def evaluation_lines(key: Key | None) -> list[str]:
        """Evaluation lines that mention a question asked about `key` (None: about anything)."""
        questions = [
            q.text for q in experience.questions if key is None or key_of_question(q.text) == key
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
    asked = {key_of_question(q.text) for q in experience.questions}
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
            drawn = rng.sample(range(10, 1000), TICKET_NUMBERS + 8)
            numbers = [n for n in drawn if n not in asked_numbers][: TICKET_NUMBERS + 1]
            target = rng.choice(knowledge.questions_about(item, numbers[0]))
            held_out[target.text] = SleepQuestion(target.text, target.answer, context, "held_out")
            practised = sorted(n for n in asked_numbers if n is not None) + numbers[1:]
            practice[key] = [q for n in practised for q in knowledge.questions_about(item, n)]
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
        asked_key = key_of_question(text)
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
    asked_plain = list(probes.values())
    for opener in config.openers:
        for probe in asked_plain:
            text = f"{opener} {probe.text}"
            if text not in probes:
                probes[text] = SleepQuestion(text, probe.answer, probe.context, "opener")
    return Plan(
        probes=tuple(probes.values()),
        targets=tuple(held_out.values()),
        knowledge=newest,
        skipped=tuple(skipped),
    )


def spread(envs: Sequence[str], n: int) -> dict[str, int]:
    """n probes spread over envs as evenly as they go, the first envs taking the remainder:
    ("arith", "program", "shop"), 50 -> {"arith": 17, "program": 17, "shop": 16}."""
    return {env: n // len(envs) + (i < n % len(envs)) for i, env in enumerate(envs)}


def replay_probes(counts: Mapping[str, int], difficulty: int, seed: int) -> list[Probe]:
    """counts[env] probes of each env, in the mapping's order, each a training task's chat
    with no context, cut before one of the expert's replies: the opening (the env's system
    turn and first observation, as an episode starts) or, in a multi-turn episode, a later
    turn drawn at random, so a shop's checkout is anchored as well as its first search."""
    from onthejob.curriculum import available_tasks, expert_episode

    rng = random.Random(seed)
    probes: list[Probe] = []
    for env_name, count in counts.items():
        if count == 0:
            continue
        for task in available_tasks(env_name, "train", count, seed, difficulty):
            messages = expert_episode(env_name, task, rng).messages
            replies = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
            cut = rng.choice(replies)
            probes.append(Probe(tuple(messages[:cut]), None))
    return probes
