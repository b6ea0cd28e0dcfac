"""`program`: write a small Python function from input/output examples, judged in the sandbox.

Covers: a compositional family of one-line functions of one argument (int -> int such as
`x * 3 + 1` or `abs(x - 5)`, list -> int such as `sum(x) + 1`, str -> str such as
`x[::-1].upper()`), three difficulty levels (one, two, three operations), tasks that show a
few examples and keep more hidden tests, and a multi-turn episode: the agent submits a
program, the hidden tests run in `onthejob.sandbox`, a failure shows the first failing case
and the agent may try again until its attempts are used up.

The shown examples are chosen so that they single out the target among every function of
the family with that input type: any member that agrees with the target on the shown
examples also agrees on all hidden tests. So each task is solvable from its prompt.

A task's split follows from what its function computes (its outputs on fixed probe
inputs), so a function and any rewriting of it (`(x + 1) * 2`, `x * 2 + 2`) fall in the
same split.

Does not cover: functions of several arguments, statements beyond one expression in the
canonical solution (the agent may write any Python), or partial credit: the reward is 1.0
iff all hidden tests pass.

The family's callables are built with `eval` from the template strings in this file (never
from agent text), so a canonical solution and the function that computed its expected
outputs cannot disagree.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from typing import Any, ClassVar

from onthejob.envs.base import Task, TextEnv, clip, make_task

# (level, input kind, body, parameters): "{a}" etc. are filled from the parameter ranges.
_TEMPLATES: tuple[tuple[int, str, str, dict[str, tuple[Any, ...]]], ...] = (
    # int -> int
    (1, "int", "x + {b}", {"b": tuple(range(1, 10))}),
    (1, "int", "x - {b}", {"b": tuple(range(1, 10))}),
    (1, "int", "x * {a}", {"a": tuple(range(2, 10))}),
    (1, "int", "{b} - x", {"b": tuple(range(1, 10))}),
    (1, "int", "x // {a}", {"a": tuple(range(2, 6))}),
    (1, "int", "x % {a}", {"a": tuple(range(2, 6))}),
    (1, "int", "abs(x)", {}),
    (1, "int", "x * x", {}),
    (1, "int", "-x", {}),
    (2, "int", "x * {a} + {b}", {"a": tuple(range(2, 6)), "b": tuple(range(1, 10))}),
    (2, "int", "x * {a} - {b}", {"a": tuple(range(2, 6)), "b": tuple(range(1, 10))}),
    (2, "int", "x * x + {b}", {"b": tuple(range(1, 10))}),
    (2, "int", "x * x - {b}", {"b": tuple(range(1, 10))}),
    (2, "int", "abs(x - {b})", {"b": tuple(range(1, 10))}),
    (2, "int", "x // {a} + {b}", {"a": tuple(range(2, 5)), "b": tuple(range(1, 10))}),
    (2, "int", "x % {a} + {b}", {"a": tuple(range(2, 5)), "b": tuple(range(1, 10))}),
    (2, "int", "(x + {b}) * {a}", {"a": tuple(range(2, 6)), "b": tuple(range(1, 10))}),
    (3, "int", "abs(x - {b}) * {a}", {"a": tuple(range(2, 6)), "b": tuple(range(1, 10))}),
    (3, "int", "abs(x * {a} - {b})", {"a": tuple(range(2, 6)), "b": tuple(range(1, 10))}),
    (3, "int", "(x + {a}) * (x - {b})", {"a": tuple(range(1, 6)), "b": tuple(range(1, 6))}),
    (3, "int", "x * x + x * {a} + {b}", {"a": tuple(range(2, 6)), "b": tuple(range(1, 10))}),
    (3, "int", "x // {a} * {c} + {b}", {"a": (2, 3), "c": (2, 3, 4), "b": tuple(range(1, 10))}),
    # list of int -> int
    (1, "list", "sum(x)", {}),
    (1, "list", "max(x)", {}),
    (1, "list", "min(x)", {}),
    (1, "list", "len(x)", {}),
    (1, "list", "x[0]", {}),
    (1, "list", "x[-1]", {}),
    (2, "list", "sum(x) + {b}", {"b": tuple(range(1, 10))}),
    (2, "list", "sum(x) - {b}", {"b": tuple(range(1, 10))}),
    (2, "list", "sum(x) * {a}", {"a": tuple(range(2, 6))}),
    (2, "list", "max(x) * {a}", {"a": tuple(range(2, 6))}),
    (2, "list", "max(x) + {b}", {"b": tuple(range(1, 10))}),
    (2, "list", "min(x) + {b}", {"b": tuple(range(1, 10))}),
    (2, "list", "len(x) * {a}", {"a": tuple(range(2, 6))}),
    (2, "list", "max(x) - min(x)", {}),
    (2, "list", "x[0] + x[-1]", {}),
    (3, "list", "sum(x) * {a} + {b}", {"a": tuple(range(2, 5)), "b": tuple(range(1, 10))}),
    (3, "list", "max(x) * {a} - {b}", {"a": tuple(range(2, 5)), "b": tuple(range(1, 10))}),
    (3, "list", "max(x) - min(x) + {b}", {"b": tuple(range(1, 10))}),
    (3, "list", "len(x) * {a} + {b}", {"a": tuple(range(2, 5)), "b": tuple(range(1, 10))}),
    (3, "list", "sum(x) - max(x)", {}),
    (3, "list", "sum(x) - len(x)", {}),
    (3, "list", "x[0] * x[-1]", {}),
    # str -> str
    (1, "str", "x[::-1]", {}),
    (1, "str", "x.upper()", {}),
    (1, "str", "x + x", {}),
    (1, "str", "x[1:]", {}),
    (1, "str", "x[:-1]", {}),
    (1, "str", "x[0]", {}),
    (1, "str", "x[-1]", {}),
    (1, "str", "x + '{c}'", {"c": tuple("abcdefgh")}),
    (1, "str", "'{c}' + x", {"c": tuple("abcdefgh")}),
    (2, "str", "x[::-1].upper()", {}),
    (2, "str", "x + x[::-1]", {}),
    (2, "str", "x.upper() + x", {}),
    (2, "str", "x[1:] + x[0]", {}),
    (2, "str", "x[-1] + x[:-1]", {}),
    (2, "str", "x * {a}", {"a": (3, 4)}),
    (2, "str", "x[:{a}]", {"a": (2, 3)}),
    (2, "str", "x[0] + x[-1]", {}),
    (2, "str", "x[::2]", {}),
    (2, "str", "x[::-1] + '{c}'", {"c": tuple("abcdefgh")}),
    (3, "str", "(x + x[::-1]).upper()", {}),
    (3, "str", "x[1:].upper() + x[0]", {}),
    (3, "str", "x[-1] + x[1:-1] + x[0]", {}),
    (3, "str", "x[::2].upper()", {}),
    (3, "str", "x[0].upper() + x[1:]", {}),
    (3, "str", "x[{a}:] + x[:{a}]", {"a": (2, 3)}),
    (3, "str", "x[:{a}].upper() + x[{a}:]", {"a": (2, 3)}),
    (3, "str", "x + '{c}' + x[::-1]", {"c": tuple("abcdefgh")}),
)
KINDS = ("int", "list", "str")
_BUILTINS = {"abs": abs, "len": len, "sum": sum, "max": max, "min": min}
_LETTERS = "abcdefghiklmnoprstuw"


@dataclass(frozen=True)
class Member:
    """One function of the family."""

    level: int
    """Difficulty level of its template (number of operations)."""
    kind: str
    """Input type: "int", "list" or "str"."""
    body: str
    """The expression after `return`."""
    fn: Callable[[Any], Any]
    """The function itself, for computing expected outputs."""

    @property
    def solution(self) -> str:
        return f"def f(x): return {self.body}"


@functools.cache
def family(kind: str) -> tuple[Member, ...]:
    """Every function of the family that takes inputs of `kind`."""
    members = []
    for level, template_kind, template, params in _TEMPLATES:
        if template_kind != kind:
            continue
        names = list(params)
        for values in product(*(params[name] for name in names)):
            body = template.format(**dict(zip(names, values, strict=True)))
            fn = eval(f"lambda x: {body}", {"__builtins__": _BUILTINS})  # trusted template text
            members.append(Member(level, kind, body, fn))
    return tuple(members)


def _safe(fn: Callable[[Any], Any], x: Any) -> Any:
    try:
        return fn(x)
    except Exception as error:  # a member undefined on this input differs from any value
        return ("error", type(error).__name__)


@functools.cache
def _probes(kind: str) -> tuple[Any, ...]:
    """Fixed inputs whose outputs fingerprint a function (decides the split)."""
    rng = random.Random(f"probes-{kind}")
    return tuple(_draw_input(rng, kind) for _ in range(12))


def _draw_input(rng: random.Random, kind: str) -> Any:
    if kind == "int":
        return rng.randint(-10, 12)
    if kind == "list":
        return [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))


def _show(value: Any) -> str:
    return repr(value)


@dataclass(frozen=True)
class ProgramConfig:
    """Configuration of the program env."""

    difficulty: int = 2
    """1, 2 or 3: how many operations the target function combines."""
    kinds: tuple[str, ...] = KINDS
    """Input types to draw from: "int", "list", "str"."""
    shown_examples: int = 3
    """Examples in the prompt at least (more when needed to single out the function)."""
    max_shown_examples: int = 5
    """Examples in the prompt at most; tasks that would need more are not drawn."""
    hidden_tests: int = 8
    """Test cases judged, the shown examples included."""
    max_attempts: int = 3
    """Programs the agent may submit per episode."""
    max_program_chars: int = 1000
    """Longer programs are refused without running."""
    cpu_seconds: float = 2.0
    """Sandbox CPU limit per attempt (all tests together)."""
    wall_seconds: float = 10.0
    """Sandbox wall-clock limit per attempt."""

    def __post_init__(self) -> None:
        if self.difficulty not in (1, 2, 3):
            raise ValueError(f"program difficulty must be 1, 2 or 3, got {self.difficulty}")
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise ValueError(
                f"program kinds must be a non-empty subset of {list(KINDS)}, got {self.kinds}"
            )
        if not 1 <= self.shown_examples <= self.max_shown_examples <= self.hidden_tests:
            raise ValueError(
                "program needs 1 <= shown_examples <= max_shown_examples <= hidden_tests"
            )
        object.__setattr__(self, "kinds", tuple(self.kinds))  # a list from JSON becomes a tuple


def _choose_examples(target: Member, inputs: list[Any], config: ProgramConfig) -> list[int] | None:
    """Indices of inputs to show so that only target-equivalent members fit them; None if impossible."""
    want = [_safe(target.fn, x) for x in inputs]
    rivals = []
    for member in family(target.kind):
        got = [_safe(member.fn, x) for x in inputs]
        if got != want:
            rivals.append(got)
    shown = list(range(config.shown_examples))
    while True:
        fitting = [got for got in rivals if all(got[i] == want[i] for i in shown)]
        if not fitting:
            return shown
        if len(shown) == config.max_shown_examples:
            return None
        rest = [i for i in range(len(inputs)) if i not in shown]
        shown.append(max(rest, key=lambda i: sum(got[i] != want[i] for got in fitting)))


class ProgramEnv(TextEnv[ProgramConfig]):
    """Write def f(x) from examples; hidden tests run in the sandbox; a few attempts."""

    name: ClassVar[str] = "program"
    config_type = ProgramConfig
    out_of_budget: ClassVar[str] = "no attempts left."

    @classmethod
    def sample_task(cls, rng: random.Random, config: ProgramConfig) -> Task:
        while True:
            kind = rng.choice(config.kinds)
            candidates = [m for m in family(kind) if m.level == config.difficulty]
            target = rng.choice(candidates)
            inputs: list[Any] = []
            while len(inputs) < config.hidden_tests:
                x = _draw_input(rng, kind)
                if x not in inputs:
                    inputs.append(x)
            shown = _choose_examples(target, inputs, config)
            if shown is not None:
                break
        order = shown + [i for i in range(len(inputs)) if i not in shown]
        cases = [[[inputs[i]], target.fn(inputs[i])] for i in order]
        lines = [f"f({_show(args[0])}) = {_show(out)}" for args, out in cases[: len(shown)]]
        prompt = "write def f(x): that gives\n" + "\n".join(lines)
        fingerprint = repr([_safe(target.fn, x) for x in _probes(kind)])
        data = {"solution": target.solution, "kind": kind, "cases": cases, "shown": len(shown)}
        return make_task(cls.name, f"{kind}:{fingerprint}", prompt, data)

    def _budget(self) -> int:
        return self.config.max_attempts

    def _start(self) -> str:
        return self.task.prompt

    def _act(self, action: str) -> tuple[str, float, bool]:
        from onthejob.sandbox import Limits, run_cases

        program = action.strip()
        again = " try again." if self._steps < self._budget() else ""
        if len(program) > self.config.max_program_chars:
            return (
                f"program too long, at most {self.config.max_program_chars} characters.{again}",
                0.0,
                False,
            )
        if not program:
            return f"empty program, write def f(x): and its body.{again}", 0.0, False
        if "def f(" not in program:
            return f"no def f(x): found, write def f(x): and its body.{again}", 0.0, False
        cases = [(tuple(args), expected) for args, expected in self.task.data["cases"]]
        limits = Limits(cpu_seconds=self.config.cpu_seconds, wall_seconds=self.config.wall_seconds)
        verdict = run_cases(program + "\n", "f", cases, limits)
        if verdict.passed:
            return "all tests pass.", 1.0, True
        failed = [i for i, case in enumerate(verdict.cases) if not case.passed]
        problem = clip(verdict.reason, 80)  # syntax error, timeout, blocked call, ...
        if failed and verdict.reason.startswith(("wrong answer", "runtime error")):
            first = verdict.cases[failed[0]]
            args, expected = cases[failed[0]]
            call = f"f({', '.join(_show(a) for a in args)})"
            if first.error is not None:
                problem = f"{call} raised {clip(first.error, 60)}"
            else:
                problem = f"{call} returned {clip(first.got or '', 30)}, expected {_show(expected)}"
        return f"{problem}.{again}", 0.0, False

    def expert_action(self) -> str:
        return str(self.task.data["solution"])

    def _public_state(self) -> dict[str, Any]:
        return {"attempts_left": self._budget() - self._steps}
