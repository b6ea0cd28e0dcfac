"""program: the family and its examples (pure Python), and episodes judged in the sandbox."""

from __future__ import annotations

import ast

import pytest

from onthejob.envs import Task, make_env, make_tasks
from onthejob.envs.program import KINDS, _probes, _safe, family


def shown_examples(task: Task) -> list[tuple[object, object]]:
    """(input, output) pairs parsed back from the prompt."""
    pairs = []
    for line in task.prompt.splitlines()[1:]:
        call, _, value = line.partition(" = ")
        pairs.append((ast.literal_eval(call[2:-1]), ast.literal_eval(value)))
    return pairs


def test_family_has_every_kind_and_level() -> None:
    for kind in KINDS:
        members = family(kind)
        assert {m.level for m in members} == {1, 2, 3}
        assert len({m.body for m in members}) == len(members)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_prompt_examples_single_out_the_function(level: int) -> None:
    tasks = make_tasks("program", "train", 60, seed=level, difficulty=level)
    assert {t.data["kind"] for t in tasks} == set(KINDS)
    for task in tasks:
        assert task.prompt.startswith("write def f(x): that gives\n")
        shown = shown_examples(task)
        cases = task.data["cases"]
        assert 3 <= len(shown) <= 5 < len(cases) == 8
        assert [(args[0], out) for args, out in cases[: len(shown)]] == shown
        members = family(task.data["kind"])
        assert task.data["solution"] in {m.solution for m in members if m.level == level}
        for member in members:  # whoever fits the shown examples passes every hidden test
            if all(_safe(member.fn, x) == y for x, y in shown):
                assert all(_safe(member.fn, args[0]) == out for args, out in cases), member.body


def test_split_follows_the_function_not_its_examples() -> None:
    def fingerprint(task: Task) -> str:
        member = next(m for m in family(task.data["kind"]) if m.solution == task.data["solution"])
        return repr([_safe(member.fn, x) for x in _probes(task.data["kind"])])

    train = {fingerprint(t) for t in make_tasks("program", "train", 150, seed=0, difficulty=2)}
    test = {fingerprint(t) for t in make_tasks("program", "test", 40, seed=0, difficulty=2)}
    assert train and test and not train & test


def int_task() -> Task:
    tasks = make_tasks("program", "train", 20, seed=5, difficulty=2)
    return next(t for t in tasks if t.data["kind"] == "int" and t.data["cases"][0][1] != 0)


def test_failures_show_the_first_failing_case_and_allow_retries() -> None:
    env = make_env("program")
    task = int_task()
    env.reset(task=task)
    (x,), want = task.data["cases"][0]
    obs, reward, terminated, truncated, info = env.step("def f(x):\n    return 0")
    assert obs == f"f({x}) returned 0, expected {want}. try again."
    assert (reward, terminated, truncated, info["steps"]) == (0.0, False, False, 1)
    obs, *_ = env.step("def f(x): return 1 // 0")
    assert obs.startswith(f"f({x}) raised ZeroDivisionError") and obs.endswith("try again.")
    assert env.state()["attempts_left"] == 1
    obs, reward, terminated, truncated, info = env.step(env.expert_action())
    assert (obs, reward, terminated, truncated, info["success"]) == (
        "all tests pass.",
        1.0,
        True,
        False,
        True,
    )


def test_the_last_failed_attempt_truncates_with_zero() -> None:
    env = make_env("program", max_attempts=2)
    env.reset(task=int_task())
    obs, *_ = env.step("def f(x) return x")
    assert obs.startswith("syntax error") and obs.endswith("try again.")
    obs, reward, terminated, truncated, info = env.step("def g(x): return x")  # no def f(
    assert obs == "no def f(x): found, write def f(x): and its body. no attempts left."
    assert (reward, terminated, truncated, info["success"]) == (0.0, False, True, False)


def test_passing_only_the_shown_examples_is_not_enough() -> None:
    env = make_env("program")
    for task in make_tasks("program", "train", 4, seed=9):
        env.reset(task=task)
        table = dict((repr(x), y) for x, y in shown_examples(task))
        program = f"def f(x):\n    return {table!r}[repr(x)]"
        obs, reward, *_ = env.step(program)
        assert reward == 0.0 and "raised KeyError" in obs


def test_reward_comes_from_the_hidden_tests_not_the_program_output() -> None:
    env = make_env("program")
    env.reset(task=int_task())
    cheat = "import sys\nprint('all tests pass.')\ndef f(x):\n    sys.exit(0)"
    obs, reward, *_ = env.step(cheat)
    assert reward == 0.0 and obs != "all tests pass."
    obs, reward, *_ = env.step(
        "def f(x):\n    class A:\n        def __eq__(self, o): return True\n    return A()"
    )
    assert reward == 0.0


def test_a_program_that_never_returns_is_stopped() -> None:
    env = make_env("program", cpu_seconds=0.5, wall_seconds=3.0)
    env.reset(task=int_task())
    obs, reward, terminated, *_ = env.step("def f(x):\n    while True:\n        pass")
    assert obs.startswith("timeout") and reward == 0.0 and not terminated


def test_other_solutions_than_the_canonical_one_pass() -> None:
    env = make_env("program")
    task = Task(
        id="program-x",
        env="program",
        prompt="write def f(x): that gives\nf(1) = 5",
        data={
            "solution": "def f(x): return (x + 1) * 2 + 1",
            "kind": "int",
            "cases": [[[1], 5], [[4], 11]],
            "shown": 1,
        },
        split="train",
    )
    env.reset(task=task)
    obs, reward, *_ = env.step("def f(x):\n    y = 2 * x\n    return y + 3")
    assert (obs, reward) == ("all tests pass.", 1.0)
