"""The synthetic pretraining curriculum of the tiny default model.

Covers: every skill the later stages need, as chats the model is trained on:

- `knowledge`: a document of facts, procedures and conventions (with
  distractors that share subjects and relations) and questions about its items,
  in several phrasings; each reply quotes the item's line, then gives the answer
  (`knowledge.quoted_answer`), so the answer is copied from the line just written;
- `correction`: the user corrects a wrong answer (or states a change) and asks
  again; the answer must follow the correction;
- `arith`, `program`, `shop`: solved episodes of the grindable environments,
  produced by each environment's own expert against the real environment, so
  every observation is one the environment really gives. `program` episodes
  sometimes start with a broken attempt and its real failure message, then
  the fix (the broken attempt is not trained on);
- `world_model`: predict a tool's next observation from (observation, action),
  on real shop transitions, so the same model can serve as a simulator.

Each example says which assistant messages are trained; all other tokens get a
small `context_weight` in the loss (document tokens are unpredictable and would
otherwise drown the answer signal). The number of items per document grows over
training (short documents first), which a long-document start does not learn.

Not covered: tokenization (see `onthejob.models.tokenizer`) and the training
loop (`onthejob.train.pretrain`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from onthejob import knowledge
from onthejob.envs import env_class, make_config, make_env, make_tasks
from onthejob.envs.base import Task, draw_budget
from onthejob.prompts import (
    KNOWLEDGE_SYSTEM,
    Message,
    agent_opening,
    agent_reply,
    world_model_prompt,
)


@dataclass(frozen=True)
class Example:
    """One chat to train or evaluate on."""

    kind: str
    """Which skill: knowledge, correction, arith, program, shop, world_model."""
    messages: tuple[Message, ...]
    """The chat, ending with the assistant's answer."""
    trained: tuple[bool, ...]
    """Per message: True where the loss is taken at full weight."""
    answer: str = ""
    """The expected answer to the first question (knowledge, correction, world_model)."""
    item: knowledge.Item | None = None
    """The knowledge item the first question asks about (knowledge examples)."""
    value_spans: tuple[tuple[int, int, int], ...] = ()
    """(message, start, stop): character spans of trained messages that hold what had to be
    read from the context (in a knowledge reply, the quoted line after its colon); pretraining
    weighs their tokens `PretrainConfig.value_weight`."""


@dataclass(frozen=True)
class Mixture:
    """Share of each kind of example in pretraining (normalised)."""

    knowledge: float = 0.62
    """Reading facts, procedures and conventions from a document."""
    correction: float = 0.08
    """Following a correction given earlier in the session."""
    arith: float = 0.07
    """Solved arithmetic problems (worked counting solutions; more of them cost reading:
    docs/results.md)."""
    program: float = 0.09
    """Solved program-synthesis episodes."""
    shop: float = 0.09
    """Solved web-shop episodes."""
    world_model: float = 0.05
    """Next-observation prediction on shop transitions."""

    def kinds(self) -> tuple[list[str], list[float]]:
        names = ["knowledge", "correction", "arith", "program", "shop", "world_model"]
        return names, [getattr(self, name) for name in names]


@dataclass(frozen=True)
class CurriculumConfig:
    """How examples are drawn."""

    mixture: Mixture = field(default_factory=Mixture)
    """Share of each kind."""
    min_items: int = 8
    """Items per document once the warm-up is over (at least 8: the issue's bar)."""
    max_items: int = 12
    """Most items per document."""
    short_fraction: float = 0.25
    """Fraction of training on documents of 1-3 items (learn to copy before learning to search)."""
    warmup_fraction: float = 0.5
    """Fraction of training by which documents have grown to min_items."""
    pasted_fraction: float = 0.3
    """Share of knowledge examples whose document is pasted in the user turn, not the system turn."""
    questions_per_document: int = 8
    """Most questions asked (and trained) per knowledge document: more answer signal per document token."""
    min_questions: int = 8
    """Fewest questions per document (the count is uniform in min..max, capped by the items)."""


def items_for(progress: float, config: CurriculumConfig, rng: random.Random) -> int:
    """Document size at `progress` in [0, 1]: 1-3 items, growing to min_items, then min..max."""
    if progress < config.short_fraction:
        return rng.randint(1, 3)
    if progress < config.warmup_fraction:
        grown = (progress - config.short_fraction) / (
            config.warmup_fraction - config.short_fraction
        )
        top = 3 + round((config.min_items - 3) * grown)
        return rng.randint(max(2, top - 2), top)
    return rng.randint(config.min_items, config.max_items)


def knowledge_example(
    rng: random.Random, n_items: int, pasted: bool, n_questions: int = 1
) -> Example:
    """A document and n_questions questions about distinct items of it, each answered in turn
    by quoting the item's line, then the answer (`knowledge.quoted_answer`)."""
    items = knowledge.random_items(rng, n_items)
    doc = knowledge.document(items, rng)
    asked = rng.sample(items, k=min(n_questions, len(items)))
    questions = [knowledge.question(item, rng) for item in asked]
    if pasted:
        messages: list[Message] = [
            {"role": "system", "content": KNOWLEDGE_SYSTEM},
            {"role": "user", "content": f"my notes:\n{doc}\n\n{questions[0].text}"},
        ]
    else:
        messages = [
            {"role": "system", "content": f"{KNOWLEDGE_SYSTEM}\nnotes:\n{doc}"},
            {"role": "user", "content": questions[0].text},
        ]
    messages.append({"role": "assistant", "content": _reply(questions[0])})
    for q in questions[1:]:
        messages += [
            {"role": "user", "content": q.text},
            {"role": "assistant", "content": _reply(q)},
        ]
    trained = tuple(m["role"] == "assistant" for m in messages)
    values = tuple(
        _value_span(i, m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"
    )
    return Example("knowledge", tuple(messages), trained, questions[0].answer, asked[0], values)


def _value_span(message: int, reply: str) -> tuple[int, int, int]:
    """The value in a quoted reply (`subject relation: value.` / `so value`): from after the
    quoted line's colon to the end of that line."""
    line_end = reply.index("\n")
    return message, reply.index(":", 0, line_end) + 1, line_end


def _reply(question: knowledge.Question) -> str:
    """The expert's reply to a question: its item's line quoted, then the answer."""
    return knowledge.quoted_answer(knowledge.statement(question.item), question.answer)


def knowledge_probe(rng: random.Random, n_items: int) -> tuple[Example, Example]:
    """The same question with its document (system turn) and without any document."""
    with_doc = knowledge_example(rng, n_items, pasted=False)
    question = with_doc.messages[1]
    without = (
        {"role": "system", "content": KNOWLEDGE_SYSTEM},
        question,
        with_doc.messages[2],
    )
    return with_doc, Example(
        "knowledge", without, (False, False, True), with_doc.answer, with_doc.item
    )


def correction_example(rng: random.Random) -> Example:
    """A wrong answer corrected by the user, or a change announced; then the question again,
    answered by quoting the corrected line."""
    item = knowledge.random_items(rng, 1, kinds=("fact",))[0]
    assert isinstance(item, knowledge.Fact)
    relation = knowledge.RELATION_BY_NAME[item.relation]
    q1 = knowledge.question(item, rng)
    q2 = knowledge.question(item, rng)
    fact_text = knowledge.statement(item)
    answer = knowledge.quoted_answer(fact_text, item.value)
    system = {"role": "system", "content": KNOWLEDGE_SYSTEM}
    if rng.random() < 0.5:
        wrong = knowledge.random_value(relation, rng)
        while wrong == item.value:
            wrong = knowledge.random_value(relation, rng)
        wrong_item = knowledge.Fact(item.subject, item.relation, wrong)
        messages: tuple[Message, ...] = (
            system,
            {"role": "user", "content": q1.text},
            {
                "role": "assistant",
                "content": knowledge.quoted_answer(knowledge.statement(wrong_item), wrong),
            },
            {"role": "user", "content": f"no. {fact_text} {q2.text}"},
            {"role": "assistant", "content": answer},
        )
        return Example("correction", messages, (False, False, False, False, True), item.value)
    other = knowledge.random_items(rng, 1, kinds=("fact",))[0]
    filler = knowledge.question(other, rng)
    messages = (
        system,
        {"role": "user", "content": f"note: {fact_text}"},
        {"role": "assistant", "content": "noted."},
        {"role": "user", "content": f"{filler.text} if you do not know, say unknown."},
        {"role": "assistant", "content": "unknown"},
        {"role": "user", "content": q2.text},
        {"role": "assistant", "content": answer},
    )
    return Example(
        "correction", messages, (False, False, True, False, True, False, True), item.value
    )


def expert_episode(env_name: str, task: Task, rng: random.Random) -> Example:
    """Run the environment's expert on `task` and record the chat."""
    env = make_env(env_name)
    obs, _ = env.reset(seed=rng.randrange(2**31), task=task)
    messages = agent_opening(env_name, obs)
    trained = [False, False]
    if env_name == "program" and rng.random() < 0.25:
        broken = break_program(env.expert_action(), rng)
        obs, _, done, truncated, _ = env.step(broken)
        messages += [{"role": "assistant", "content": broken}, {"role": "tool", "content": obs}]
        trained += [False, False]
        if done or truncated:
            return Example(env_name, tuple(messages), tuple(trained))
    done = truncated = False
    while not (done or truncated):
        action = env.expert_action()
        obs, _, done, truncated, _ = env.step(action)
        messages.append({"role": "assistant", "content": agent_reply(env_name, action)})
        trained.append(True)
        if not (done or truncated):
            messages.append({"role": "tool", "content": obs})
            trained.append(False)
    return Example(env_name, tuple(messages), tuple(trained))


def break_program(program: str, rng: random.Random) -> str:
    """A plausible wrong program: one digit or operator changed."""
    swaps = [("+", "-"), ("-", "+"), ("*", "+"), ("1", "2"), ("2", "3"), ("3", "1")]
    rng.shuffle(swaps)
    for old, new in swaps:
        if old in program:
            return program.replace(old, new, 1)
    return program + " + 1"


def world_model_example(rng: random.Random, task: Task) -> Example:
    """One real shop transition as next-observation prediction."""
    env = make_env("shop")
    obs, _ = env.reset(seed=rng.randrange(2**31), task=task)
    ended = False
    for _ in range(rng.randint(0, 2)):
        obs, _, done, truncated, _ = env.step(env.expert_action())
        ended = done or truncated
        if ended:
            break
    if ended:
        obs, _ = env.reset(seed=rng.randrange(2**31), task=task)
    action = env.expert_action()
    next_obs, *_ = env.step(action)
    messages = (*world_model_prompt(obs, action), {"role": "assistant", "content": next_obs})
    return Example("world_model", messages, (False, False, True), next_obs)


@dataclass(frozen=True)
class EpisodePools:
    """Solved episodes generated once per run and reused (env steps, sandbox runs are slow)."""

    arith: int = 3000
    """Solved arithmetic episodes."""
    program: int = 300
    """Solved program episodes (each runs the sandbox, ~40-80 ms)."""
    shop: int = 1500
    """Solved shop episodes."""
    world_model: int = 1500
    """Shop transitions for next-observation prediction."""
    arith_levels: tuple[int, ...] = (1, 2)
    """Difficulty levels of the arithmetic episodes: chains of two and three one-digit numbers,
    whose worked counting solutions carry over to held-out sums (bare answers to longer
    expressions can only be memorised); half of each."""
    env_levels: tuple[int, ...] = (1, 2)
    """Difficulty levels of the program and shop episodes and the shop transitions."""

    def levels(self, kind: str) -> tuple[int, ...]:
        """The difficulty levels of the pool of `kind`."""
        return self.arith_levels if kind == "arith" else self.env_levels


def available_tasks(env_name: str, split: str, n: int, seed: int, difficulty: int) -> list[Task]:
    """Up to n distinct tasks; fewer when the level has fewer: the first of n, n // 2, n // 4,
    ... that `make_tasks` would serve, and the same tasks, found in one pass over the draws."""
    found = env_class(env_name).draw_distinct(
        make_config(env_name, difficulty=difficulty), split, n, draw_budget(n), seed
    )
    size = n
    while size >= 1:
        if len(found) >= size and found[size - 1][0] < draw_budget(size):
            return [task for _, task in found[:size]]
        size //= 2
    # not even one task: make_tasks raises with the env's own reason
    return make_tasks(env_name, split, 1, seed=seed, difficulty=difficulty)


def build_pool(
    kind: str, n: int, seed: int, difficulties: tuple[int, ...], workers: int = 4
) -> list[Example]:
    """n examples of an environment kind, spread over difficulty levels (pretraining's come
    from `EpisodePools.levels`), generated in a thread pool (sandbox calls release the GIL).
    Small levels repeat their tasks."""
    from concurrent.futures import ThreadPoolExecutor

    env_name = "shop" if kind == "world_model" else kind
    per_level = [
        available_tasks(env_name, "train", n // len(difficulties) + 1, seed, d)
        for d in difficulties
    ]
    tasks = [
        level[i % len(level)] for level in per_level for i in range(n // len(difficulties) + 1)
    ][:n]

    def one(i: int) -> Example:
        rng = random.Random(seed * 7919 + i)
        if kind == "world_model":
            return world_model_example(rng, tasks[i])
        return expert_episode(kind, tasks[i], rng)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(n)))


class Curriculum:
    """Draws training examples; example k at a given progress depends only on (seed, k)."""

    def __init__(self, config: CurriculumConfig, pools: dict[str, list[Example]], seed: int = 0):
        self.config = config
        self.pools = pools
        self.seed = seed

    def example(self, index: int, progress: float) -> Example:
        rng = random.Random(self.seed * 1_000_003 + index)
        names, weights = self.config.mixture.kinds()
        kind = rng.choices(names, weights=weights)[0]
        if kind == "knowledge":
            n_items = items_for(progress, self.config, rng)
            pasted = rng.random() < self.config.pasted_fraction
            n_questions = rng.randint(self.config.min_questions, self.config.questions_per_document)
            return knowledge_example(rng, n_items, pasted, n_questions)
        if kind == "correction":
            return correction_example(rng)
        pool = self.pools.get(kind)
        if not pool:
            raise ValueError(
                f"no episode pool for {kind!r}; build it with build_pool or set its mixture share to 0"
            )
        return rng.choice(pool)
