"""Organisational knowledge: facts, procedures and conventions as data and as text.

Covers: the vocabulary of the synthetic world (services, people, places,
steps), random knowledge items drawn from it, the sentences that state an item
in a document (several phrasings), and the questions that ask about it (several
phrasings) with their one expected answer. Pretraining uses this to teach the
tiny model to read its context; the simulated organisation of later stages
draws its knowledge from the same generator, so the words the model reads at
work are words it has seen.

Not covered: which items an organisation holds or how they change over weeks
(that is the world's job); scoring (an answer is right when it equals the
expected answer after `normalize_answer`, see `is_correct`).
"""

from __future__ import annotations

import random
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


@dataclass(frozen=True)
class Relation:
    """A kind of fact: how it is stated, how it is asked, and what values it takes."""

    name: str
    statements: tuple[str, ...]
    """Sentence templates with {s} (subject) and {v} (value); subject first, value last,
    so a line reads the same way whatever its phrasing."""
    questions: tuple[str, ...]
    """Question templates with {s}."""
    values: tuple[str, ...] | None
    """The value pool; None means a random 4-digit number."""


RELATIONS = (
    Relation(
        "owner",
        ("{s} is owned by {v}.", "{s} owner: {v}."),
        ("who owns {s}?", "who is the owner of {s}?", "{s} owner?", "name the owner of {s}."),
        tuple(PEOPLE),
    ),
    Relation(
        "oncall",
        ("{s} has {v} on call.", "{s} on call: {v}."),
        ("who is on call for {s}?", "{s} on call?", "who do i page for {s}?"),
        tuple(PEOPLE),
    ),
    Relation(
        "port",
        ("{s} runs on port {v}.", "{s} port: {v}."),
        ("what port does {s} use?", "which port is {s} on?", "{s} port?"),
        None,
    ),
    Relation(
        "region",
        ("{s} is hosted in {v}.", "{s} region: {v}."),
        ("where is {s} hosted?", "which region is {s} in?", "{s} region?"),
        tuple(PLACES),
    ),
    Relation(
        "freeze",
        ("{s} freezes on {v}.", "{s} freeze day: {v}."),
        ("when does {s} freeze?", "what day is the {s} freeze?", "{s} freeze day?"),
        tuple(DAYS),
    ),
    Relation(
        "color",
        ("{s} has a {v} dashboard.", "{s} dashboard: {v}."),
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


def statement(item: Item, rng: random.Random) -> str:
    """One sentence stating the item, in a randomly chosen phrasing."""
    if isinstance(item, Fact):
        template = rng.choice(RELATION_BY_NAME[item.relation].statements)
        return template.format(s=item.subject, v=item.value)
    if isinstance(item, Procedure):
        a, b, c = item.steps
        template = rng.choice(
            (
                "{s} {verb} steps: {a}, then {b}, then {c}.",
                "{s} {verb} steps: {a}, {b}, {c}.",
            )
        )
        return template.format(verb=item.verb, s=item.subject, a=a, b=b, c=c)
    template = rng.choice(
        ("{s} tickets are written {p}-number.", "{s} ticket ids start with {p}-.")
    )
    return template.format(s=item.subject, p=item.prefix)


def question(item: Item, rng: random.Random) -> Question:
    """A question about the item, in a randomly chosen phrasing, with its answer."""
    if isinstance(item, Fact):
        template = rng.choice(RELATION_BY_NAME[item.relation].questions)
        return Question(template.format(s=item.subject), item.value, item)
    if isinstance(item, Procedure):
        which = rng.randrange(3)
        s, verb = item.subject, item.verb
        if which == 0:
            text = rng.choice(
                (f"what is the first step to {verb} {s}?", f"how do i start to {verb} {s}?")
            )
            return Question(text, item.steps[0], item)
        if which == 1:
            text = rng.choice(
                (
                    f"what comes after {item.steps[0]} when you {verb} {s}?",
                    f"what is the second step to {verb} {s}?",
                )
            )
            return Question(text, item.steps[1], item)
        text = rng.choice(
            (
                f"what is the last step to {verb} {s}?",
                f"what comes after {item.steps[1]} when you {verb} {s}?",
            )
        )
        return Question(text, item.steps[2], item)
    number = rng.randint(10, 999)
    text = rng.choice(
        (
            f"write the ticket id for {item.subject} issue {number}.",
            f"ticket id for {item.subject} number {number}?",
        )
    )
    return Question(text, f"{item.prefix}-{number}", item)


def document(items: list[Item], rng: random.Random) -> str:
    """The items stated one per line, in random order."""
    lines = [statement(item, rng) for item in items]
    rng.shuffle(lines)
    return "\n".join(lines)


def normalize_answer(text: str) -> str:
    """Lower-case, strip spaces and a final full stop: the form answers are compared in."""
    return text.strip().lower().rstrip(".").strip()


def is_correct(answer: str, expected: str) -> bool:
    """Whether an answer matches the expected one after normalisation."""
    return normalize_answer(answer) == normalize_answer(expected)
