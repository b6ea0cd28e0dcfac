"""Evaluation suites of the pretrained model, on held-out items.

Covers, each as a function returning plain numbers:

- `context_reading`: fresh documents of 8-12 items (facts, procedures,
  conventions, with distractors), one question each in a random phrasing;
  accuracy with the document in context and without it, and the chance level
  of guessing (1 / size of the answer pool of each question), by item kind and
  by answer type. With `items=(1, 1)` it measures copying alone: the document
  holds only the item asked about, so nothing has to be searched;
- `correction_following`: accuracy after a correction or announced change;
- `env_success`: success on the held-out (test) tasks of an env, greedy or the mean
  over seeded samples per task, played in chunks of `PLAY_CHUNK` episodes;
- `world_model`: exact next-observation prediction on held-out shop tasks.

Answers are compared by `knowledge.is_correct`. Generation is greedy
(temperature 0) but for `env_success` with samples, whose draws are seeded, so
numbers are reproducible for a model and seed.

Not covered: the learning curves of RL or sleep (later stages), timing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from onthejob import curriculum, knowledge
from onthejob.curriculum import available_tasks
from onthejob.envs import make_tasks
from onthejob.models.tokenizer import render_chat
from onthejob.prompts import ANSWER_TOKENS
from onthejob.rollout import run_episodes
from onthejob.sampling import SamplingConfig, sample

MAX_TURNS = {"arith": 1, "program": 3, "shop": 8}
MAX_NEW_TOKENS = {"arith": 144, "program": 40, "shop": 16}
EVAL_SEED = 10_007
PLAY_CHUNK = 512
"""Episodes `env_success` plays in one batch. The sleep's arith guard (50 tasks x 64 plays)
played at once peaked at 3.4 GB resident in 12 s; in chunks of 512, 0.9 GB in 15 s
(docs/benchmarks.md)."""


def answer_all(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    chats: list[list[dict[str, str]]],
    max_new_tokens: int = ANSWER_TOKENS,
) -> list[str]:
    """Greedy answers to chats (each ends before the assistant turn to be written)."""
    prompts = [render_chat(tokenizer, chat, add_generation_prompt=True).ids for chat in chats]
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    answers: list[str] = []
    for lo in range(0, len(prompts), 64):
        answers += sample(model, tokenizer, prompts[lo : lo + 64], config).texts
    return answers


def chance_of(item: knowledge.Item) -> float:
    """Probability that a uniform guess from the item's answer pool is right."""
    if isinstance(item, knowledge.Fact):
        pool = knowledge.RELATION_BY_NAME[item.relation].values
        return 1 / (len(pool) if pool is not None else 9000)
    if isinstance(item, knowledge.Procedure):
        return 1 / len(knowledge.STEPS)
    return 1 / (len(knowledge.PREFIXES) * 990)


@dataclass(frozen=True)
class ReadingResult:
    with_context: float
    """Accuracy with the document in the system turn."""
    without_context: float
    """Accuracy of the same questions with no document."""
    chance: float
    """Mean probability of a uniform guess being right."""
    by_kind: dict[str, float]
    """With-context accuracy per item kind (fact, procedure, convention)."""
    by_answer: dict[str, float]
    """With-context accuracy per answer type: a fact's relation (owner, port...), procedure
    or convention. Copying works for some types long before others (docs/results.md)."""
    n: int
    """Questions asked."""


def answer_type(item: knowledge.Item) -> str:
    """A fact's relation, else the item's kind ("procedure", "convention")."""
    return item.relation if isinstance(item, knowledge.Fact) else type(item).__name__.lower()


def context_reading(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 200,
    seed: int = EVAL_SEED,
    items: tuple[int, int] = (8, 12),
) -> ReadingResult:
    """Reading accuracy on n fresh documents of items[0]..items[1] items, one question each."""
    rng = random.Random(seed)
    probes = [curriculum.knowledge_probe(rng, rng.randint(*items)) for _ in range(n)]
    with_doc = answer_all(model, tokenizer, [list(a.messages[:-1]) for a, _ in probes])
    without = answer_all(model, tokenizer, [list(b.messages[:-1]) for _, b in probes])
    right_with = [
        knowledge.is_correct(x, a.answer) for x, (a, _) in zip(with_doc, probes, strict=True)
    ]
    right_without = [
        knowledge.is_correct(x, b.answer) for x, (_, b) in zip(without, probes, strict=True)
    ]
    kinds: dict[str, list[bool]] = {}
    types: dict[str, list[bool]] = {}
    chances = []
    for (a, _), ok in zip(probes, right_with, strict=True):
        item = a.item
        assert item is not None
        kinds.setdefault(type(item).__name__.lower(), []).append(ok)
        types.setdefault(answer_type(item), []).append(ok)
        chances.append(chance_of(item))
    return ReadingResult(
        with_context=sum(right_with) / n,
        without_context=sum(right_without) / n,
        chance=sum(chances) / n,
        by_kind={k: sum(v) / len(v) for k, v in sorted(kinds.items())},
        by_answer={k: sum(v) / len(v) for k, v in sorted(types.items())},
        n=n,
    )


def correction_following(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, n: int = 100, seed: int = EVAL_SEED
) -> float:
    rng = random.Random(seed + 1)
    examples = [curriculum.correction_example(rng) for _ in range(n)]
    answers = answer_all(model, tokenizer, [list(e.messages[:-1]) for e in examples])
    right = [knowledge.is_correct(x, e.answer) for x, e in zip(answers, examples, strict=True)]
    return sum(right) / n


def env_success(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    env_name: str,
    n: int = 100,
    difficulty: int = 1,
    seed: int = EVAL_SEED,
    samples: int = 1,
    chunk: int = PLAY_CHUNK,
) -> tuple[float, int]:
    """(success rate, tasks played) on up to n held-out tasks of the given level: one greedy
    play per task, or with `samples` > 1 the mean success of that many plays per task
    sampled at temperature 1 (the policy's own distribution) from seeds fixed by `seed`, so
    two models are compared on the same random draws. Plays run `chunk` at a time (each
    chunk its own sampling seed, from `seed` and the chunk's place)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    tasks = available_tasks(env_name, "test", n, seed, difficulty)
    sampling = SamplingConfig(
        max_new_tokens=MAX_NEW_TOKENS[env_name],
        temperature=0.0 if samples == 1 else 1.0,
        seed=None if samples == 1 else seed,
    )
    plays = tasks * samples
    successes = 0
    for k, start in enumerate(range(0, len(plays), chunk)):
        draws = sampling if sampling.seed is None else replace(sampling, seed=seed + 104_729 * k)
        trajectories = run_episodes(
            model,
            tokenizer,
            env_name,
            plays[start : start + chunk],
            draws,
            max_turns=MAX_TURNS[env_name],
            env_config={"difficulty": difficulty},
            seed=seed + start,  # play i resets its env with seed + i, whatever the chunk
        )
        successes += sum(t.success for t in trajectories)
    return successes / len(plays), len(tasks)


def world_model(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, n: int = 100, seed: int = EVAL_SEED
) -> float:
    """Exact-match rate of predicted next shop pages on held-out tasks."""
    tasks = make_tasks("shop", "test", n, seed=seed)
    rng = random.Random(seed + 2)
    examples = [curriculum.world_model_example(rng, task) for task in tasks]
    answers = answer_all(
        model, tokenizer, [list(e.messages[:-1]) for e in examples], max_new_tokens=96
    )
    return sum(a.strip() == e.answer.strip() for a, e in zip(answers, examples, strict=True)) / n
