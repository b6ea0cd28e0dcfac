"""The simulated organisation: who works there, what they know, how it changes, what they ask.

Covers: `make_org(seed)`, an `Org` with a name and tenant id, a few users (each with an
account at the supplier and the documents they keep), and knowledge drawn with
`onthejob.knowledge` (facts, procedures, conventions; the words the pretrained model has
read) split into documents of at least `items_per_document` items each. Knowledge changes
week by week (`Org.knowledge_at(week)`): a share of facts get new values and a smaller
share of procedures and conventions are rewritten, and every change is recorded, so later
stages can tell a stale answer from a wrong one. `Org.tasks(week, day)` draws a day's work
for each user: questions about their documents (with the expected answer, the answers
that were right in earlier weeks, and the document that holds it) and orders to place at
the live supplier (`ServiceTask`, checked from the service's public state, never from what
the agent said).

Does not cover: the live service itself (`onthejob.world.service`), running users
against the serving API, or deciding how a user phrases, pastes or corrects (a user
program does that with the tasks and documents it gets here).

Design decisions: everything is a function of the seed (held-out orgs are other seeds);
week w's knowledge is week w-1's with the changes drawn from (seed, w), computed once and
cached. Documents keep their items (by key: subject and relation, verb or "ticket") across
weeks and their wording and line order too, so a changed item shows up as one changed
line. A question's stale answers are found by asking the same question, with the same
draws, of the item's earlier versions. A service task is judged on all orders the account
placed after the task began (`since_order`): two orders of one shirt each are two shirts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onthejob import knowledge
from onthejob.envs.shop import mismatch, request_text
from onthejob.knowledge import Convention, Fact, Item, Procedure
from onthejob.world.supplier import DAYS_PER_WEEK, SupplierConfig, catalogue_on

ORG_NAMES = (
    "acme globex initech umbrella hooli vandelay soylent cyberdyne tyrell wonka gringotts oscorp"
).split()
DOCUMENT_TITLES = (
    "ops handbook",
    "release runbook",
    "on-call sheet",
    "service notes",
    "team directory",
)
MAX_QUANTITY = 3
"""Largest quantity a service task asks for."""

Key = tuple[str, str]
"""What an item is about: (subject, relation) for a fact, (subject, verb) for a procedure,
(subject, "ticket") for a convention. It stays the same when the item changes."""


def item_key(item: Item) -> Key:
    if isinstance(item, Fact):
        return (item.subject, item.relation)
    if isinstance(item, Procedure):
        return (item.subject, item.verb)
    return (item.subject, "ticket")


@dataclass(frozen=True)
class OrgConfig:
    """The shape of an organisation and of its weeks."""

    items: int = 32
    """Knowledge items (facts, procedures, conventions) the org holds."""
    items_per_document: int = 8
    """Fewest items in one document; the items are split into items // items_per_document documents."""
    users: int = 3
    """People who work with the agent."""
    fact_change_share: float = 0.2
    """Share of facts that get a new value each week."""
    other_change_share: float = 0.1
    """Share of procedures and of conventions rewritten each week."""
    questions_per_day: int = 3
    """Questions each user asks on a working day."""
    orders_per_day: int = 1
    """Supplier orders each user asks for on a working day."""
    changed_question_share: float = 0.3
    """Chance that a question is about an item changed this week (when any changed)."""
    supplier: SupplierConfig = field(default_factory=SupplierConfig)
    """The supplier's catalogue and drift; the live service must run with the same."""

    def __post_init__(self) -> None:
        if self.items_per_document < 1:
            raise ValueError(
                f"org items_per_document must be at least 1, got {self.items_per_document}"
            )
        if not self.items_per_document <= self.items <= 100:
            raise ValueError(
                f"org items must be from items_per_document ({self.items_per_document}) to 100, got {self.items}"
            )
        if not 1 <= self.users <= 10:
            raise ValueError(f"org users must be 1 to 10, got {self.users}")
        for name in ("fact_change_share", "other_change_share", "changed_question_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"org {name} must be in [0, 1], got {value}")
        if self.questions_per_day < 0 or self.orders_per_day < 0:
            raise ValueError("org questions_per_day and orders_per_day must not be negative")


@dataclass(frozen=True)
class User:
    """A person at the org."""

    name: str
    """First name, from the knowledge vocabulary (e.g. "priya")."""
    account: str
    """The account this user (and the agent working for them) uses at the supplier."""
    documents: tuple[str, ...]
    """Ids of the documents this user keeps, asks about and pastes."""


@dataclass(frozen=True)
class Document:
    """One document of the org as it reads in one week."""

    id: str
    """Stable id, e.g. "doc-2"."""
    title: str
    """What people call it, e.g. "release runbook"."""
    items: tuple[Item, ...]
    """The items it states, in this week's versions."""
    text: str
    """The items stated one per line (what a user pastes)."""


@dataclass(frozen=True)
class Change:
    """One item that changed at the start of a week."""

    week: int
    """The first week the new version holds."""
    before: Item
    after: Item

    @property
    def key(self) -> Key:
        return item_key(self.after)


@dataclass(frozen=True)
class Knowledge:
    """Everything the org knows in one week."""

    week: int
    items: tuple[Item, ...]
    """All items, this week's versions."""
    documents: tuple[Document, ...]
    changes: tuple[Change, ...]
    """The changes that took effect at the start of this week (none in week 0)."""

    def document(self, document_id: str) -> Document:
        """The document with this id; an unknown id is a one-line KeyError."""
        for doc in self.documents:
            if doc.id == document_id:
                return doc
        raise KeyError(
            f"no document {document_id!r}; ids: {', '.join(d.id for d in self.documents)}"
        )

    def document_of(self, item: Item) -> Document:
        """The document that states this item (any version of it)."""
        key = item_key(item)
        for doc in self.documents:
            if any(item_key(other) == key for other in doc.items):
                return doc
        raise KeyError(f"no document states {key}")


@dataclass(frozen=True)
class Verdict:
    """Whether a task was done, and why not."""

    success: bool
    reason: str


@dataclass(frozen=True)
class QuestionTask:
    """A user asks about the org's knowledge; the reply is judged against this week's answer."""

    kind: ClassVar[str] = "question"
    user: str
    """Name of the asking user."""
    request: str
    """The question, e.g. "who owns billing?"."""
    answer: str
    """The expected answer this week."""
    stale_answers: tuple[str, ...]
    """Answers that were right in an earlier week and are not now."""
    document: str
    """Id of the document that holds the answer (this week's text has it)."""
    item: Item
    """The item asked about, this week's version."""

    def check(self, reply: str) -> Verdict:
        """Right when the reply equals the answer after `knowledge.normalize_answer`."""
        if knowledge.is_correct(reply, self.answer):
            return Verdict(True, "correct")
        if self.is_stale(reply):
            return Verdict(
                False, f"stale: the answer was {reply.strip()} before, now {self.answer}"
            )
        return Verdict(False, f"wrong: expected {self.answer}")

    def is_stale(self, reply: str) -> bool:
        """Whether the reply is an answer that was right in an earlier week."""
        return any(knowledge.is_correct(reply, old) for old in self.stale_answers)


@dataclass(frozen=True)
class ServiceTask:
    """A user asks for an order at the live supplier; judged from the service's public state."""

    kind: ClassVar[str] = "order"
    user: str
    """Name of the asking user."""
    account: str
    """The supplier account the order must be placed from."""
    request: str
    """The order as the user says it, e.g. "buy 2 blue cotton shirts, at most 30 dollars each."."""
    goal: dict[str, str]
    """Attributes every ordered item must have: category, color, material, and maybe size."""
    budget: int
    """Highest unit price paid, in dollars."""
    quantity: int
    """Units to order in all."""
    day: int
    """World-clock day the task was drawn for."""

    def check(self, state: dict[str, Any], since_order: int = 0) -> Verdict:
        """Judge the account's orders with ids above `since_order` in a service `state` (GET /state).

        Success when they are, together, exactly `quantity` units of items that meet the goal,
        each bought at or under the budget (at the price paid, which may differ from today's).
        """
        orders = [
            order
            for order in state.get("orders", [])
            if order["account"] == self.account and order["id"] > since_order
        ]
        if not orders:
            return Verdict(False, f"no order from {self.account} since order {since_order}")
        units = 0
        for order in orders:
            for line in order["lines"]:
                problem = mismatch(line, self.goal, self.budget)
                if problem is not None:
                    return Verdict(False, f"order {order['id']}: {problem}")
                units += line["quantity"]
        if units != self.quantity:
            return Verdict(False, f"ordered {units} units, wanted {self.quantity}")
        return Verdict(True, f"ordered {units} units in {len(orders)} order(s)")


Task = QuestionTask | ServiceTask


@dataclass
class Org:
    """A simulated organisation; build it with `make_org(seed)`."""

    seed: int
    name: str
    """Display name, e.g. "globex"."""
    tenant: str
    """Tenant id in the serving API and the store, e.g. "globex-7"."""
    users: tuple[User, ...]
    config: OrgConfig
    initial: tuple[Item, ...]
    """Week 0's items."""
    layout: tuple[tuple[str, tuple[Key, ...]], ...]
    """(title, item keys) of each document, in document order."""
    _weeks: list[Knowledge] = field(default_factory=list, repr=False, compare=False)

    # ------------------------------------------------------------------ knowledge

    def knowledge_at(self, week: int) -> Knowledge:
        """The org's knowledge in `week` (0 is the start), with the changes that week made."""
        if not isinstance(week, int) or week < 0 or week > 520:
            raise ValueError(f"week must be an int from 0 to 520, got {week!r}")
        while len(self._weeks) <= week:
            self._weeks.append(self._next_week())
        return self._weeks[week]

    def changes(self, upto_week: int) -> list[Change]:
        """Every change from week 1 to `upto_week`, in order."""
        return [c for w in range(1, upto_week + 1) for c in self.knowledge_at(w).changes]

    def history(self, item: Item, upto_week: int) -> list[Item]:
        """The versions of an item in weeks 0..upto_week (one entry per week)."""
        key = item_key(item)
        return [
            next(i for i in self.knowledge_at(w).items if item_key(i) == key)
            for w in range(upto_week + 1)
        ]

    def _next_week(self) -> Knowledge:
        week = len(self._weeks)
        items: list[Item] = list(self.initial)
        changes: list[Change] = []
        if week > 0:
            items, changes = _changed(
                list(self._weeks[-1].items),
                random.Random(f"org:{self.seed}:week:{week}"),
                week,
                self.config,
            )
        by_key = {item_key(item): item for item in items}
        documents = []
        for number, (title, keys) in enumerate(self.layout, start=1):
            doc_items = tuple(by_key[key] for key in keys)
            # the same draws every week: only the changed lines read differently
            text = knowledge.document(
                list(doc_items), random.Random(f"org:{self.seed}:doc:{number}")
            )
            documents.append(Document(f"doc-{number}", title, doc_items, text))
        return Knowledge(week, tuple(items), tuple(documents), tuple(changes))

    # ------------------------------------------------------------------ tasks

    def user(self, name: str) -> User:
        for user in self.users:
            if user.name == name:
                return user
        raise KeyError(f"no user {name!r} at {self.name}; users: {[u.name for u in self.users]}")

    def tasks(
        self,
        week: int,
        day: int,
        rng: random.Random | None = None,
        catalogue: list[dict[str, Any]] | None = None,
    ) -> list[Task]:
        """A working day's tasks, user by user: questions (about distinct items), then orders.

        `day` is the day of the week (0 to DAYS_PER_WEEK - 1). `rng` defaults to one seeded by
        (seed, week, day). `catalogue` is the supplier's live catalogue (the "catalogue" of
        GET /state, with price and stock); without it, orders are drawn from the catalogue as
        a fresh supplier would show it that day. Orders are only drawn for items in stock.
        """
        if not isinstance(day, int) or not 0 <= day < DAYS_PER_WEEK:
            raise ValueError(
                f"day must be a day of the week, 0 to {DAYS_PER_WEEK - 1}; got {day!r}"
            )
        now = self.knowledge_at(week)
        rng = rng if rng is not None else random.Random(f"org:{self.seed}:tasks:{week}:{day}")
        clock_day = week * DAYS_PER_WEEK + day
        goods = (
            catalogue
            if catalogue is not None
            else catalogue_on(self.seed, clock_day, self.config.supplier)
        )
        changed = {change.key for change in now.changes}
        tasks: list[Task] = []
        for user in self.users:
            pool = [item for doc in user.documents for item in now.document(doc).items]
            fresh = [item for item in pool if item_key(item) in changed]
            asked: set[Key] = set()
            for _ in range(self.config.questions_per_day):
                use_fresh = rng.random() < self.config.changed_question_share
                unasked = [i for i in (fresh if use_fresh else pool) if item_key(i) not in asked]
                unasked = unasked or [i for i in pool if item_key(i) not in asked] or pool
                item = rng.choice(unasked)
                asked.add(item_key(item))
                tasks.append(self._question(user, item, week, rng.randrange(2**32)))
            for _ in range(self.config.orders_per_day):
                order = _order(user, goods, clock_day, rng)
                if order is not None:
                    tasks.append(order)
        return tasks

    def _question(self, user: User, item: Item, week: int, draw: int) -> QuestionTask:
        asked = knowledge.question(item, random.Random(draw))
        stale: list[str] = []
        for old in self.history(item, week)[:-1]:
            answer = knowledge.question(old, random.Random(draw)).answer
            known = [asked.answer, *stale]
            if not any(knowledge.is_correct(answer, other) for other in known):
                stale.append(answer)
        document = self.knowledge_at(week).document_of(item).id
        return QuestionTask(user.name, asked.text, asked.answer, tuple(stale), document, item)


def _order(
    user: User, goods: list[dict[str, Any]], day: int, rng: random.Random
) -> ServiceTask | None:
    """An order of one in-stock item of `goods`, or None when nothing is in stock."""
    in_stock = [item for item in goods if item["stock"] >= 1]
    if not in_stock:
        return None
    target = rng.choice(in_stock)
    quantity = rng.randint(1, min(MAX_QUANTITY, target["stock"]))
    goal = {key: target[key] for key in ("category", "color", "material")}
    if rng.random() < 0.5:
        goal["size"] = target["size"]
    budget = 5 * -(-(target["price"] + rng.randint(0, 6)) // 5)  # round up to a multiple of 5
    return ServiceTask(
        user=user.name,
        account=user.account,
        request=request_text(quantity, goal, budget),
        goal=goal,
        budget=budget,
        quantity=quantity,
        day=day,
    )


def _changed(
    items: list[Item], rng: random.Random, week: int, config: OrgConfig
) -> tuple[list[Item], list[Change]]:
    """The items with this week's changes applied, and the changes."""
    chosen: list[int] = []
    for kind, share in (
        (Fact, config.fact_change_share),
        (Procedure, config.other_change_share),
        (Convention, config.other_change_share),
    ):
        indices = [i for i, item in enumerate(items) if isinstance(item, kind)]
        count = min(len(indices), max(1, round(share * len(indices)))) if share > 0 else 0
        chosen.extend(rng.sample(indices, count))
    changes = []
    for index in sorted(chosen):
        before = items[index]
        after = _rewrite(before, rng)
        items[index] = after
        changes.append(Change(week, before, after))
    return items, changes


def _rewrite(item: Item, rng: random.Random) -> Item:
    """Another version of the item: a new value, a step replaced or two swapped, a new prefix."""
    if isinstance(item, Fact):
        relation = knowledge.RELATION_BY_NAME[item.relation]
        value = item.value
        while value == item.value:
            value = knowledge.random_value(relation, rng)
        return Fact(item.subject, item.relation, value)
    if isinstance(item, Procedure):
        steps = list(item.steps)
        if rng.random() < 0.5:
            unused = [step for step in knowledge.STEPS if step not in steps]
            steps[rng.randrange(len(steps))] = rng.choice(unused)
        else:
            a, b = rng.sample(range(len(steps)), 2)
            steps[a], steps[b] = steps[b], steps[a]
        return Procedure(item.subject, item.verb, tuple(steps))
    prefix = rng.choice([p for p in knowledge.PREFIXES if p != item.prefix])
    return Convention(item.subject, prefix)


def make_org(seed: int, config: OrgConfig | None = None) -> Org:
    """The organisation of `seed`: the same seed and config give the same org."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"an org seed is an int, got {type(seed).__name__}")
    config = config if config is not None else OrgConfig()
    rng = random.Random(f"org:{seed}")
    name = rng.choice(ORG_NAMES)
    tenant = f"{name}-{seed}"
    items = knowledge.random_items(rng, config.items)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_docs = config.items // config.items_per_document
    layout = []
    for number in range(n_docs):
        keys = tuple(item_key(items[i]) for i in order[number::n_docs])
        base = DOCUMENT_TITLES[number % len(DOCUMENT_TITLES)]
        lap = number // len(DOCUMENT_TITLES)
        layout.append((base if lap == 0 else f"{base} {lap + 1}", keys))
    names = rng.sample(knowledge.PEOPLE, config.users)
    users = tuple(
        User(
            name=person,
            account=f"{tenant}-{person}",
            documents=tuple(f"doc-{d + 1}" for d in range(n_docs) if d % config.users == u)
            or (f"doc-{u % n_docs + 1}",),
        )
        for u, person in enumerate(names)
    )
    return Org(seed, name, tenant, users, config, tuple(items), tuple(layout))
