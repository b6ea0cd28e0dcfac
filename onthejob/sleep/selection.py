"""Sleep, first step: which sessions one sleep learns from, and what users taught in them.

Covers: `SelectionPolicy` and `select_sessions` (a tenant's sessions from the experience
store, with their turns and feedback, by latest thumb, written evaluation, time window and
users), and `read_experience`: the documents users pasted
("my notes:\\n<document>\\n\\n<question>") line by line, the statements of their
corrections ("no. <statement> <question>"), the questions they asked, and their written
evaluations. `onthejob.knowledge` reads each line back into the item it states, so a later
version of an item (a correction, next week's document) can replace the earlier one.
`SleepError`, the one error of every step of a sleep, lives here.

Not covered: what the student practises on and is judged on (`onthejob.sleep.plan`),
training and the gate.

Design decisions:

- The experience is read from the turns as stored, not from the simulated users' hidden
  state: the same code reads sessions of real people who paste and correct the same way.
  A line `knowledge.parse_statement` cannot read back is still a note (the teacher reads
  it as written) but it has no item, so no question is generated or judged from it.
- Questions come only from sessions that declared or used no tools: a shop session's user
  turns are orders, which no note answers (consolidating tool use is dreaming's job).
- A session's thumb is its latest one, as in the store: a user who changed their mind
  counts with their last word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onthejob import knowledge
from onthejob.knowledge import Item
from onthejob.prompts import TOOLS_HEADER
from onthejob.store import Feedback, Session, Store, Turn
from onthejob.world.org import Key, item_key

THUMBS = ("up", "down", "any")
"""Which sessions a selection takes by their latest thumb ("any": with or without one)."""
NOTES_PREFIX = "my notes:\n"
"""How a user's message with a pasted document starts (then the document, a blank line and
the question)."""
CORRECTION_PREFIX = "no. "
"""How a user's correction starts (then the right statement and the question again)."""


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
