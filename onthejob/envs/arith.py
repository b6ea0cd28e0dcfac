"""`arith`: one-step arithmetic problems scored by math-verify.

Covers: generating integer expressions ("compute 37 + 45 * 2") at five difficulty levels
(more operands, more digits, multiplication, then parentheses; answers may be negative)
and scoring one free-text answer with math-verify, so equivalent forms ("127", "127.0",
"$127$", "the answer is 127") count.

The expert (`expert_action`, which pretraining imitates) writes a worked solution for a chain
of one-digit numbers joined by + and - (levels 1 and 2: two and three of them): it copies
the expression, then counts its first operation one step at a time, carrying how many steps
are left ("compute 3 + 4" -> "3 + 4: 3 4, 4 3, 5 2, 6 1, 7 0. so 7"); with a third operand
it then writes what is left of the expression from the value so far and counts that ("3 + 4
- 2: 3 4, ..., 7 0. 7 - 2: 7 2, 6 1, 5 0. so 5"). Every step is a successor or predecessor
of a small number, which a held-out sum shares with the training sums, so the procedure
can carry over to sums the model has never seen answered; a bare answer ("7") can only be
memorised per sum. Longer expressions get the bare answer. The reward reads the last
number, so the agent may answer either way. Three operands take up to 20 steps and one
wrong step spoils the answer, which leaves RL room on level 2.

Does not cover: fractions, division or word problems; several attempts (one answer ends
the episode).

Departures from plain math-verify: its timeouts use signal.alarm, which raises outside the
main thread, so they are disabled (parsing_timeout=None, timeout_seconds=None) and time is
bounded here instead: answers longer than `max_answer_chars` are not parsed, and answers
with a power operator ("^", "**") are refused, since a power tower ("9^9^9") makes sympy
compute for minutes while holding the GIL. Everything else math-verify parses in
milliseconds.
"""

from __future__ import annotations

import ast
import functools
import logging
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from math_verify import parse, verify

from onthejob.envs.base import Task, TextEnv, make_task

# math-verify warns once that its timeout is off; here that is deliberate (see above).
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(
        lambda record: "Timeout is disabled" not in record.getMessage()
    )


@dataclass(frozen=True)
class Level:
    """How one difficulty level draws expressions."""

    operands: tuple[int, int]
    """Fewest and most operands."""
    digits: int
    """Most digits per operand."""
    ops: str
    """Operators to draw from."""
    max_products: int
    """Most multiplications per expression."""
    parens: bool
    """Whether a sub-expression may be parenthesized."""


LEVELS = {
    1: Level(operands=(2, 2), digits=1, ops="+-", max_products=0, parens=False),
    2: Level(operands=(3, 3), digits=1, ops="+-", max_products=0, parens=False),
    3: Level(operands=(2, 3), digits=2, ops="+-*", max_products=1, parens=False),
    4: Level(operands=(3, 4), digits=2, ops="+-*", max_products=1, parens=True),
    5: Level(operands=(4, 5), digits=3, ops="+-*", max_products=2, parens=True),
}


@dataclass(frozen=True)
class ArithConfig:
    """Configuration of the arith env."""

    difficulty: int = 2
    """1: a + b with one digit; 2: a + b - c with one digit; 3: up to 3 operands of 2 digits
    with *; 4: 4 operands and parentheses; 5: 5 operands of 3 digits."""
    max_answer_chars: int = 200
    """Longer answers score 0 without being parsed (bounds math-verify's time)."""

    def __post_init__(self) -> None:
        if self.difficulty not in LEVELS:
            raise ValueError(
                f"arith difficulty must be one of {sorted(LEVELS)}, got {self.difficulty}"
            )


def evaluate(expression: str) -> int:
    """The value of an integer expression with + - * and parentheses (no eval)."""

    def walk(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
        raise ValueError(f"not an arith expression: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


ONE_DIGIT_CHAIN = re.compile(r"\d( [+-] \d)+")


def counting_solution(expression: str) -> str | None:
    """A worked solution of a chain of one-digit numbers joined by + and -: the expression is
    written out, its first operation counted, one step at a time as "value steps-left",
    then what is left of the expression is written out from the value so far and counted in
    turn: "8 - 3" -> "8 - 3: 8 3, 7 2, 6 1, 5 0. so 5"; "8 - 3 + 2" -> "8 - 3 + 2: 8 3, 7 2,
    6 1, 5 0. 5 + 2: 5 2, 6 1, 7 0. so 7". None for any other expression."""
    if ONE_DIGIT_CHAIN.fullmatch(expression) is None:
        return None
    tokens = expression.split()
    value, rest = int(tokens[0]), tokens[1:]
    segments = []
    while rest:
        written = " ".join([str(value), *rest])  # what is left of the expression
        op, left = rest[0], int(rest[1])
        step = 1 if op == "+" else -1
        pairs = [f"{value} {left}"]
        while left > 0:
            value, left = value + step, left - 1
            pairs.append(f"{value} {left}")
        segments.append(f"{written}: {', '.join(pairs)}")
        rest = rest[2:]
    return f"{'. '.join(segments)}. so {value}"


@functools.lru_cache(maxsize=65536)
def judge_answer(answer: str, gold: str) -> str:
    """Judge an answer: "correct", "wrong", or "unreadable" (no answer found). Thread-safe, never
    raises. Cached: pretraining's pool and GRPO's groups judge the same answers many times."""
    try:
        parsed = parse(answer, parsing_timeout=None)
        if not parsed:
            return "unreadable"
        gold_parsed = parse(gold, parsing_timeout=None)
        return "correct" if verify(gold_parsed, parsed, timeout_seconds=None) else "wrong"
    except Exception:
        return "unreadable"


@functools.lru_cache(maxsize=4096)
def arith_task(expression: str) -> Task:
    """The task of computing `expression`. Cached: drawing distinct tasks from a small level
    meets each expression hundreds of times. Callers must not change the task's data."""
    answer = str(evaluate(expression))
    return make_task("arith", expression, f"compute {expression}", {"answer": answer})


class ArithEnv(TextEnv[ArithConfig]):
    """Compute an integer expression; one answer, reward 1 if math-verify says it is equal."""

    name: ClassVar[str] = "arith"
    config_type = ArithConfig

    @classmethod
    def sample_task(cls, rng: random.Random, config: ArithConfig) -> Task:
        level = LEVELS[config.difficulty]
        n = rng.randint(*level.operands)
        numbers = []
        for _ in range(n):
            digits = rng.randint(1, level.digits)
            numbers.append(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1))
        ops = [rng.choice(level.ops) for _ in range(n - 1)]
        while ops.count("*") > level.max_products:
            ops[ops.index("*")] = rng.choice("+-")
        parts = [str(x) for x in numbers]
        if level.parens and n >= 3 and rng.random() < 0.6:
            start = rng.randrange(n - 1)
            end = rng.randrange(start + 1, n if start > 0 else n - 1)  # never the whole expression
            parts[start] = "(" + parts[start]
            parts[end] = parts[end] + ")"
        expression = parts[0] + "".join(
            f" {op} {part}" for op, part in zip(ops, parts[1:], strict=True)
        )
        return arith_task(expression)

    def _budget(self) -> int:
        return 1

    def _start(self) -> str:
        return self.task.prompt

    def _act(self, action: str) -> tuple[str, float, bool]:
        gold = self.task.data["answer"]
        text = action.strip()
        if not text:
            return f"empty answer, reply with a number. the answer is {gold}.", 0.0, True
        if len(text) > self.config.max_answer_chars:
            limit = self.config.max_answer_chars
            return f"answer too long, at most {limit} characters. the answer is {gold}.", 0.0, True
        if "^" in text or "**" in text:
            return f"no powers, reply with a plain number. the answer is {gold}.", 0.0, True
        verdict = judge_answer(text, gold)
        if verdict == "correct":
            return "correct.", 1.0, True
        if verdict == "unreadable":
            return f"no number found, reply with a number. the answer is {gold}.", 0.0, True
        return f"wrong, the answer is {gold}.", 0.0, True

    def expert_action(self) -> str:
        expression = self.task.prompt.removeprefix("compute ")
        return counting_solution(expression) or str(self.task.data["answer"])
