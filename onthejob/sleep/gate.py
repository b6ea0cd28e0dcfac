"""Sleep, last step: judging a candidate against its parent, and the gate's rule.

Covers: `no_context_recall` (greedy answers to the targets with no context) and
`with_context_accuracy` (with the teacher's context, as the teacher reads it); the guard
suite (`guard_suite`): success on held-out tasks of the grindable envs (greedy, or the
mean of seeded samples per task where the sleep asks for it: `onthejob.evals.env_success`)
and no-context recall of the knowledge earlier sleeps of the
lineage consolidated (`earlier_knowledge`: their targets as the registry recorded them,
minus items this sleep knows a newer version of); and `decide`: promote only if recall
rises by more than `min_gain` and no guard score falls by more than `tolerance`
(2 points) below the parent's, nor below the lineage's first measured scores
(`lineage_guard`), else reject, saying which rule failed and by how much.

Not covered: writing the verdict into the registry (`onthejob.sleep.run`), rollback
(`onthejob.registry`).

Design decisions: every guard score must hold on its own (a gain in one env does not buy a
loss in another); the tolerance holds against the lineage's start as well as the parent,
because four sleeps that each lose 2 points lose 8 (measured: org 21's arithmetic went
0.08 -> 0.06 -> 0.04 through two promotions that each passed against their parent); ties
in recall reject (the parent keeps serving); answers are compared by `knowledge.is_correct`,
greedy, and guard samples are seeded, so a verdict is reproducible for a model and seed.
A greedy guard score moves by a whole 1/n when one task on the edge between two answers
flips (2 points, the whole tolerance, on arith's 50 sums), so the sleep's default scores
arith as the mean of seeded samples, which moves by fractions of a point (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from onthejob import knowledge
from onthejob.evals import answer_all, env_success
from onthejob.prompts import ANSWER_TOKENS
from onthejob.registry import ModelVersion, Registry
from onthejob.sleep.plan import Plan, SleepQuestion, key_of_question
from onthejob.sleep.selection import SleepError
from onthejob.train.opsd import Probe, teacher_messages


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
    lineage: dict[str, float] | None = None,
) -> Decision:
    """Promote when recall rises by more than `min_gain` and every guard score stays within
    `tolerance` of the parent's and of `lineage` (the same suite measured on the lineage's
    first version, where the registry has it); else reject, saying which rule failed and
    by how much."""
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
    start = lineage or {}
    drifts = [
        f"{name} {start[name]:.3f} at the lineage's start -> {guard_after[name]:.3f}"
        f" ({guard_after[name] - start[name]:+.3f})"
        for name in sorted(set(start) & set(guard_after))
        if start[name] - guard_after[name] > config.tolerance + 1e-9
    ]
    if drifts:
        return Decision(
            False,
            f"guard drifted beyond {config.tolerance:.3f} since the lineage's start:"
            f" {'; '.join(drifts)} ({recall})",
        )
    return Decision(True, f"{recall}; guard within {config.tolerance:.3f}")


def lineage_guard(
    registry: Registry,
    parent: ModelVersion,
    envs: Sequence[str],
    n: int,
    samples: Mapping[str, int] | None = None,
) -> dict[str, float] | None:
    """The guard scores the lineage's first sleep measured on its parent (the lineage's
    start), if that sleep used the same envs, task count and samples per task; None
    otherwise (a sleep recorded before samples were chosen played each task greedily)."""
    found = None
    version: ModelVersion | None = parent
    while version is not None:
        guard = version.config.get("guard", {})
        if (
            "guard_before" in version.evals
            and guard.get("envs") == list(envs)
            and guard.get("n") == n
            and guard.get("samples", {}) == dict(samples or {})
        ):
            found = dict(version.evals["guard_before"])
        version = registry.get(version.parent) if version.parent else None
    return found


# -- evaluation -------------------------------------------------------------------------


def no_context_recall(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[SleepQuestion],
    max_new_tokens: int = ANSWER_TOKENS,
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
    max_new_tokens: int = ANSWER_TOKENS,
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
    samples: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Success on up to n held-out tasks of each env ("<env> success"): greedy, or the mean
    of `samples[env]` seeded samples per task where given (`evals.env_success`); and
    no-context recall of the earlier knowledge when there is some."""
    samples = samples or {}
    scores = {
        f"{env} success": env_success(
            model, tokenizer, env, n=n, difficulty=difficulty, samples=samples.get(env, 1)
        )[0]
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
            key = key_of_question(text)
            if text not in questions and key not in plan.knowledge:
                questions[text] = SleepQuestion(text, answer, "", "earlier")
        version = registry.get(version.parent) if version.parent else None
    return list(questions.values())
