"""Organisational knowledge: facts, procedures and conventions as data and as text.

Covers: the vocabulary of the synthetic world (services, people, places,
steps), random knowledge items drawn from it, the line that states an item in a
document (one form per kind, `subject relation: value.`), the questions that ask
about it (several phrasings) with their one expected answer, and the reply that
answers one: the line quoted, then `so <answer>` (`quoted_answer`). Pretraining
uses this to teach the tiny model to read its context; the simulated
organisation of later stages draws its knowledge from the same generator, so the
words the model reads at work are words it has seen.

It also reads them back: `parse_statement` turns a document line into its item and
`parse_question` a question into what it asks about (so consolidation can tell which
item a user's question or correction is about), and `questions_about` lists every
question the generator can ask about an item (paraphrases with the same answer).

Why a reply quotes the line: the tiny default learns to read its context far
sooner when an answer first copies the document's line and then the value from
that line (docs/results.md, "Quote the line, then answer"). Copying a line the
model has just started writing is an induction copy of the same token ids; naming
the value straight from a question is a search by meaning that it learns late.

Not covered: which items an organisation holds or how they change over weeks
(that is the world's job). Scoring: an answer is right when its final answer
(`final_answer`: the text after a last `so `, or the whole reply) equals the
expected one after `normalize_answer` (see `is_correct`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SERVICES = (
    "billing auth search payments ledger inventory mailer gateway reports scheduler "
    "catalog checkout invoices metrics alerts backups frontend storage identity pricing "
    "shipping returns reviews loyalty tickets wiki chat analytics notary vault"
).split()
PEOPLE = (
    "priya omar lena marco yuki sven ines raj nora felix tara hugo mina dario elsa "
    "kofi alma jonas rosa ivan lucia amir greta pablo sara theo nadia bruno zoe kai"
).split()
PLACES = "dublin oslo lima cairo seoul austin porto quito delhi perth riga accra".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
COLORS = "red blue green black white grey yellow orange purple pink brown navy".split()
STEPS = (
    "run tests|build image|tag release|notify ops|update docs|drain traffic|restart workers|"
    "backup database|check alerts|clear cache|rotate keys|merge branch|freeze writes|"
    "warm cache|scale up|page owner"
).split("|")
PREFIXES = "ops fin web net sec dat pay ink hub api dev sys kit box tix".split()
VERBS = ("deploy", "restart", "release", "migrate")

PROCEDURE_STATEMENTS = (
    "{s} {verb} steps: {a}, then {b}, then {c}.",
    "{s} {verb} steps: {a}, {b}, {c}.",
)
"""How a document states a procedure's three steps {a}, {b}, {c}: documents write the first
form; `parse_statement` reads both."""
CONVENTION_STATEMENTS = (
    "{s} tickets: {p}-number.",
    "{s} tickets are written {p}-number.",
    "{s} ticket ids start with {p}-.",
)
"""How a document states a ticket-id convention with prefix {p}: documents write the first
form; `parse_statement` reads all (earlier versions wrote the others)."""
ANSWER_MARK = "so "
"""Starts the last line of a reply that quotes its line first (`quoted_answer`)."""
PROCEDURE_QUESTIONS = (
    ("what is the first step to {verb} {s}?", "how do i start to {verb} {s}?"),
    ("what comes after {a} when you {verb} {s}?", "what is the second step to {verb} {s}?"),
    ("what is the last step to {verb} {s}?", "what comes after {b} when you {verb} {s}?"),
)
"""Questions about step 1, 2 and 3 of a procedure ({a} and {b} are its first two steps)."""
CONVENTION_QUESTIONS = ("write the ticket id for {s} issue {n}.", "ticket id for {s} number {n}?")
"""Questions whose answer is the ticket id of issue {n} of a subject."""


@dataclass(frozen=True)
class Relation:
    """A kind of fact: how it is stated, how it is asked, and what values it takes."""

    name: str
    statements: tuple[str, ...]
    """Sentence templates with {s} (subject) and {v} (value). Documents write the first,
    `subject relation: value.`; `parse_statement` reads all (earlier versions wrote the
    others)."""
    questions: tuple[str, ...]
    """Question templates with {s}."""
    values: tuple[str, ...] | None
    """The value pool; None means a random 4-digit number."""


RELATIONS = (
    Relation(
        "owner",
        ("{s} owner: {v}.", "{s} is owned by {v}."),
        ("who owns {s}?", "who is the owner of {s}?", "{s} owner?", "name the owner of {s}."),
        tuple(PEOPLE),
    ),
    Relation(
        "oncall",
        ("{s} on call: {v}.", "{s} has {v} on call."),
        ("who is on call for {s}?", "{s} on call?", "who do i page for {s}?"),
        tuple(PEOPLE),
    ),
    Relation(
        "port",
        ("{s} port: {v}.", "{s} runs on port {v}."),
        ("what port does {s} use?", "which port is {s} on?", "{s} port?"),
        None,
    ),
    Relation(
        "region",
        ("{s} region: {v}.", "{s} is hosted in {v}."),
        ("where is {s} hosted?", "which region is {s} in?", "{s} region?"),
        tuple(PLACES),
    ),
    Relation(
        "freeze",
        ("{s} freeze day: {v}.", "{s} freezes on {v}."),
        ("when does {s} freeze?", "what day is the {s} freeze?", "{s} freeze day?"),
        tuple(DAYS),
    ),
    Relation(
        "color",
        ("{s} dashboard: {v}.", "{s} has a {v} dashboard."),
        ("what color is the {s} dashboard?", "which dashboard does {s} use?", "{s} dashboard?"),
        tuple(COLORS),
    ),
)
RELATION_BY_NAME = {relation.name: relation for relation in RELATIONS}


@dataclass(frozen=True)
class Fact:
    """subject has value under relation, e.g. (billing, owner, priya)."""

    subject: str
    relation: str
    value: str


@dataclass(frozen=True)
class Procedure:
    """The ordered steps of doing `verb` to `subject`."""

    subject: str
    verb: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Convention:
    """Ticket ids of `subject` are written `prefix-<number>`."""

    subject: str
    prefix: str


Item = Fact | Procedure | Convention


@dataclass(frozen=True)
class Question:
    """A question about one item and its single expected answer."""

    text: str
    answer: str
    item: Item


def random_value(relation: Relation, rng: random.Random) -> str:
    if relation.values is None:
        return str(rng.randint(1000, 9999))
    return rng.choice(relation.values)


def random_items(
    rng: random.Random, n: int, kinds: tuple[str, ...] = ("fact", "procedure", "convention")
) -> list[Item]:
    """n items with distinct keys; facts share subjects and relations so they distract each other."""
    items: list[Item] = []
    keys: set[tuple[str, str]] = set()
    weights = {"fact": 6, "procedure": 2, "convention": 2}
    subjects = rng.sample(SERVICES, k=min(len(SERVICES), max(2, (n + 1) // 2)))
    while len(items) < n:
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        subject = rng.choice(subjects)
        if kind == "fact":
            relation = rng.choice(RELATIONS)
            key = (subject, relation.name)
            item: Item = Fact(subject, relation.name, random_value(relation, rng))
        elif kind == "procedure":
            verb = rng.choice(VERBS)
            key = (subject, verb)
            item = Procedure(subject, verb, tuple(rng.sample(STEPS, k=3)))
        else:
            key = (subject, "ticket")
            item = Convention(subject, rng.choice(PREFIXES))
        if key not in keys:
            keys.add(key)
            items.append(item)
    return items


def statement(item: Item) -> str:
    """The line that states the item in a document: `subject relation: value.`."""
    if isinstance(item, Fact):
        template = RELATION_BY_NAME[item.relation].statements[0]
        return template.format(s=item.subject, v=item.value)
    if isinstance(item, Procedure):
        a, b, c = item.steps
        return PROCEDURE_STATEMENTS[0].format(verb=item.verb, s=item.subject, a=a, b=b, c=c)
    return CONVENTION_STATEMENTS[0].format(s=item.subject, p=item.prefix)


def quoted_answer(line: str, answer: str) -> str:
    """The reply to a question: the line it is read from, then `so <answer>` on its own line."""
    return f"{line}\n{ANSWER_MARK}{answer}"


def question(item: Item, rng: random.Random) -> Question:
    """A question about the item, in a randomly chosen phrasing, with its answer."""
    if isinstance(item, Fact):
        template = rng.choice(RELATION_BY_NAME[item.relation].questions)
        return Question(template.format(s=item.subject), item.value, item)
    if isinstance(item, Procedure):
        which = rng.randrange(3)
        template = rng.choice(PROCEDURE_QUESTIONS[which])
        return Question(_procedure_question(template, item), item.steps[which], item)
    number = rng.randint(10, 999)
    text = rng.choice(CONVENTION_QUESTIONS).format(s=item.subject, n=number)
    return Question(text, f"{item.prefix}-{number}", item)


def _procedure_question(template: str, item: Procedure) -> str:
    return template.format(verb=item.verb, s=item.subject, a=item.steps[0], b=item.steps[1])


def questions_about(item: Item, number: int = 100) -> list[Question]:
    """Every question `question` can ask about the item, in every phrasing; a convention's
    are about ticket `number`. Questions with the same answer are paraphrases."""
    if isinstance(item, Fact):
        return [
            Question(template.format(s=item.subject), item.value, item)
            for template in RELATION_BY_NAME[item.relation].questions
        ]
    if isinstance(item, Procedure):
        return [
            Question(_procedure_question(template, item), item.steps[which], item)
            for which, templates in enumerate(PROCEDURE_QUESTIONS)
            for template in templates
        ]
    return [
        Question(template.format(s=item.subject, n=number), f"{item.prefix}-{number}", item)
        for template in CONVENTION_QUESTIONS
    ]


def document(items: list[Item], rng: random.Random) -> str:
    """The items stated one per line, in random order."""
    lines = [statement(item) for item in items]
    rng.shuffle(lines)
    return "\n".join(lines)


def final_answer(reply: str) -> str:
    """What a reply answers: the rest of its last line after `so ` when it has one (a reply
    that quotes its line first), else the whole reply."""
    last = reply.strip().rsplit("\n", 1)[-1].strip()
    return last[len(ANSWER_MARK) :] if last.lower().startswith(ANSWER_MARK) else reply


def normalize_answer(text: str) -> str:
    """The final answer, lower-cased, without surrounding spaces and a final full stop: the
    form answers are compared in."""
    return final_answer(text).strip().lower().rstrip(".").strip()


def is_correct(answer: str, expected: str) -> bool:
    """Whether an answer matches the expected one after normalisation."""
    return normalize_answer(answer) == normalize_answer(expected)


# -- reading text back ------------------------------------------------------------------

_WORD = r"[a-z0-9]+"


def _alternatives(words: tuple[str, ...] | list[str]) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


def _pattern(template: str, fields: dict[str, str]) -> re.Pattern[str]:
    """A regex matching `template` with each {field} a named group of pattern fields[field]."""
    parts = re.split(r"\{(\w+)\}", template)  # odd positions are field names
    return re.compile(
        "".join(
            f"(?P<{part}>{fields[part]})" if odd else re.escape(part)
            for odd, part in ((i % 2 == 1, part) for i, part in enumerate(parts))
        )
    )


def _value_pattern(relation: Relation) -> str:
    return r"\d{4}" if relation.values is None else _alternatives(relation.values)


_STEP = _alternatives(STEPS)
_VERB = _alternatives(VERBS)
_PREFIX = _alternatives(PREFIXES)
_STATEMENT_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    *(
        (relation.name, _pattern(template, {"s": _WORD, "v": _value_pattern(relation)}))
        for relation in RELATIONS
        for template in relation.statements
    ),
    *(
        ("procedure", _pattern(t, {"s": _WORD, "verb": _VERB, "a": _STEP, "b": _STEP, "c": _STEP}))
        for t in PROCEDURE_STATEMENTS
    ),
    *(("convention", _pattern(t, {"s": _WORD, "p": _PREFIX})) for t in CONVENTION_STATEMENTS),
]
_QUESTION_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    *(
        (relation.name, _pattern(template, {"s": _WORD}))
        for relation in RELATIONS
        for template in relation.questions
    ),
    *(
        ("procedure", _pattern(t, {"s": _WORD, "verb": _VERB, "a": _STEP, "b": _STEP}))
        for templates in PROCEDURE_QUESTIONS
        for t in templates
    ),
    *(("convention", _pattern(t, {"s": _WORD, "n": r"\d+"})) for t in CONVENTION_QUESTIONS),
]


def parse_statement(line: str) -> Item | None:
    """The item a sentence written by `statement` states, or None if the line is not one."""
    text = line.strip().lower()
    for kind, pattern in _STATEMENT_PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        if kind == "procedure":
            steps = (match["a"], match["b"], match["c"])
            if len(set(steps)) == 3:
                return Procedure(match["s"], match["verb"], steps)
        elif kind == "convention":
            return Convention(match["s"], match["p"])
        else:
            return Fact(match["s"], kind, match["v"])
    return None


@dataclass(frozen=True)
class QuestionForm:
    """What a question asks, read back from its text (the item's value is not in it)."""

    subject: str
    """The subject asked about, e.g. "billing"."""
    topic: str
    """A fact's relation, a procedure's verb, or "ticket" for a convention."""
    number: int | None = None
    """Convention questions: the ticket number asked for."""


def parse_question(text: str) -> QuestionForm | None:
    """What a question written by `question` asks about, or None if it is not one."""
    text = text.strip().lower()
    for kind, pattern in _QUESTION_PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        if kind == "procedure":
            return QuestionForm(match["s"], match["verb"])
        if kind == "convention":
            return QuestionForm(match["s"], "ticket", int(match["n"]))
        return QuestionForm(match["s"], kind)
    return None


def answer_to(text: str, item: Item) -> str | None:
    """The answer to question `text` according to `item`; None if it asks about something else
    (another item, or a step after one the procedure does not have)."""
    form = parse_question(text)
    if form is None:
        return None
    wanted = text.strip().lower()
    for asked in questions_about(item, form.number if form.number is not None else 100):
        if asked.text == wanted:
            return asked.answer
    return None
