"""arith: problem generation per level, math-verify equivalences, thread safety, bounded time."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onthejob.envs import Task, make_env, make_tasks
from onthejob.envs.arith import LEVELS, counting_solution, evaluate, judge_answer


def arith_task(answer: str) -> Task:
    return Task(
        id="arith-test",
        env="arith",
        prompt="compute 100 + 27",
        data={"answer": answer},
        split="test",
    )


def score(action: str, answer: str = "127") -> tuple[str, float]:
    env = make_env("arith")
    env.reset(task=arith_task(answer))
    obs, reward, terminated, truncated, _ = env.step(action)
    assert terminated and not truncated
    return obs, reward


@pytest.mark.parametrize(
    "action",
    ["127", "127.0", "$127$", "the answer is 127", "\\boxed{127}", " 127\n", "x = 127", "254/2"],
)
def test_equivalent_forms_score_one(action: str) -> None:
    assert score(action) == ("correct.", 1.0)


@pytest.mark.parametrize(
    "action", ["126", "-127", "1.27", "12 7", "127.5", "one hundred and twenty seven"]
)
def test_other_values_score_zero_and_show_the_answer(action: str) -> None:
    obs, reward = score(action)
    assert reward == 0.0
    assert obs.endswith("the answer is 127.")


def test_negative_answers() -> None:
    assert score("-5", "-5") == ("correct.", 1.0)
    assert score("5", "-5")[1] == 0.0


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("", "empty answer"),
        ("hello", "no number found"),
        ("7" * 201, "answer too long"),
        ("9^9^9", "no powers"),
        ("9**99999999", "no powers"),
        ("x" * 100_000, "answer too long"),
    ],
)
def test_garbage_gets_a_message_and_zero(action: str, message: str) -> None:
    started = time.perf_counter()
    obs, reward = score(action)
    assert reward == 0.0 and obs.startswith(message)
    assert time.perf_counter() - started < 2.0  # a power tower would take minutes in sympy


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_text_scores_without_raising(action: str) -> None:
    obs, reward = score(action)
    assert reward in (0.0, 1.0) and obs


def test_default_math_verify_fails_in_threads_but_the_env_does_not() -> None:
    from math_verify import parse

    errors: list[BaseException] = []

    def default_parse() -> None:
        try:
            parse("127")
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            errors.append(error)

    thread = threading.Thread(target=default_parse)
    thread.start()
    thread.join()
    assert errors and "thread" in str(errors[0])  # the pitfall is real ...

    cases = [("127", 1.0), ("$127$", 1.0), ("the answer is 127", 1.0), ("128", 0.0)] * 25
    with ThreadPoolExecutor(max_workers=8) as pool:
        rewards = list(pool.map(lambda case: score(case[0])[1], cases))
    assert rewards == [reward for _, reward in cases]  # ... and the env avoids it


def test_judge_answer_verdicts() -> None:
    assert judge_answer("the answer is 12", "12") == "correct"
    assert judge_answer("13", "12") == "wrong"
    assert judge_answer("no idea", "12") == "unreadable"


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_levels_draw_what_they_promise(level: int) -> None:
    spec = LEVELS[level]
    tasks = make_tasks("arith", "train", 100, seed=0, difficulty=level)
    for task in tasks:
        assert task.prompt.startswith("compute ")
        expression = task.prompt.removeprefix("compute ")
        numbers = re.findall(r"\d+", expression)
        assert spec.operands[0] <= len(numbers) <= spec.operands[1]
        assert max(len(n) for n in numbers) <= spec.digits
        assert expression.count("*") <= spec.max_products
        assert ("(" in expression) <= spec.parens
        assert (
            task.data["answer"] == str(eval(expression)) == str(evaluate(expression))
        )  # test-only eval
    answers = [int(t.data["answer"]) for t in tasks]
    assert min(answers) < 0  # answers may be negative at every level
    if spec.parens:
        assert any("(" in t.prompt for t in tasks)


def test_evaluate_refuses_other_expressions() -> None:
    with pytest.raises(ValueError):
        evaluate("2 / 3")
    with pytest.raises(ValueError):
        evaluate("__import__('os')")


@pytest.mark.parametrize(
    ("expression", "solution"),
    [
        ("3 + 4", "3 + 4: 3 4, 4 3, 5 2, 6 1, 7 0. so 7"),
        ("8 - 3", "8 - 3: 8 3, 7 2, 6 1, 5 0. so 5"),
        ("2 - 5", "2 - 5: 2 5, 1 4, 0 3, -1 2, -2 1, -3 0. so -3"),
        ("5 + 0", "5 + 0: 5 0. so 5"),
        ("0 - 0", "0 - 0: 0 0. so 0"),
        ("8 - 3 + 2", "8 - 3 + 2: 8 3, 7 2, 6 1, 5 0. 5 + 2: 5 2, 6 1, 7 0. so 7"),
        ("1 - 2 - 0", "1 - 2 - 0: 1 2, 0 1, -1 0. -1 - 0: -1 0. so -1"),
    ],
)
def test_counting_solution_by_hand(expression: str, solution: str) -> None:
    assert counting_solution(expression) == solution


@pytest.mark.parametrize(
    "expression", ["12 + 3", "3 + 12", "3 * 4", "3 + 4 * 1", "(3 + 4)", "3+4", "3", "3 + 4 -"]
)
def test_counting_solution_is_only_for_chains_of_one_digit_operands(expression: str) -> None:
    assert counting_solution(expression) is None


def test_the_expert_counts_every_one_digit_sum_and_the_env_scores_it_right() -> None:
    for split in ("train", "test"):
        for task in make_tasks("arith", split, 30, seed=0, difficulty=1):
            env = make_env("arith", difficulty=1)
            env.reset(task=task)
            action = env.expert_action()
            assert action.endswith(f". so {task.data['answer']}")
            assert env.step(action)[1] == 1.0
    env = make_env("arith", difficulty=2)
    env.reset(task=arith_task("127"))
    assert env.expert_action() == "127"  # longer expressions get the bare answer
