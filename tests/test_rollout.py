from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

import onthejob.rollout
from onthejob.envs import make_tasks
from onthejob.envs.shop import ShopEnv
from onthejob.models import build_model
from onthejob.models.tokenizer import END, render_chat
from onthejob.rollout import StepPool, run_episodes, run_groups
from onthejob.sampling import SamplingConfig
from tests.conftest import TINY

SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """The tiny model with room for a shop chat (its system turn lists the shop tool)."""
    return build_model(replace(TINY, max_positions=1024), tokenizer, seed=0).eval()


def every_reply_is_a_call(monkeypatch):
    """An untrained model never writes "shop: ..."; these tests need the env stepped."""
    monkeypatch.setattr(onthejob.rollout, "env_action", lambda env_name, reply: reply)


def test_multi_turn_trajectory_masks_only_agent_tokens(tiny_model, tokenizer):
    tasks = make_tasks("shop", "test", 3, seed=0)
    trajectories = run_episodes(tiny_model, tokenizer, "shop", tasks, SAMPLING, max_turns=3, seed=0)
    end_id = tokenizer.convert_tokens_to_ids(END)
    for t in trajectories:
        assert len(t.token_ids) == len(t.loss_mask) == len(t.logprobs)
        assert t.finished and t.end_reason
        agent_positions = {i for start, stop in t.turns for i in range(start, stop)}
        masked = {i for i, m in enumerate(t.loss_mask) if m}
        assert masked == agent_positions
        assert all(t.logprobs[i] < 0 or t.logprobs[i] == 0.0 for i in masked)
        assert all(t.logprobs[i] == 0.0 for i in range(len(t.token_ids)) if i not in masked)
        # the prompt is exactly the rendered opening
        opening = render_chat(tokenizer, t.messages[:2], add_generation_prompt=True).ids
        assert t.token_ids[: len(opening)] == opening
        # every observation between agent turns is a rendered tool message, unmasked
        for (_, stop), (next_start, _) in zip(t.turns, t.turns[1:], strict=False):
            between = t.token_ids[stop:next_start]
            assert between[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
            assert end_id in between


def test_env_error_ends_only_that_episode(tiny_model, tokenizer, monkeypatch):
    tasks = make_tasks("shop", "test", 2, seed=1)
    calls = {"n": 0}
    real_step = ShopEnv.step

    def flaky_step(self, action):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("service down")
        return real_step(self, action)

    monkeypatch.setattr(ShopEnv, "step", flaky_step)
    every_reply_is_a_call(monkeypatch)
    trajectories = run_episodes(tiny_model, tokenizer, "shop", tasks, SAMPLING, max_turns=2, seed=0)
    reasons = [t.end_reason for t in trajectories]
    assert reasons[0] == "env error: RuntimeError: service down"
    assert trajectories[0].reward == 0.0
    assert not reasons[1].startswith("env error")


@pytest.mark.parametrize("env_name", ["arith", "program"])
def test_single_and_multi_turn_envs_finish(tiny_model, tokenizer, env_name):
    tasks = make_tasks(env_name, "test", 2, seed=0)
    trajectories = run_episodes(
        tiny_model, tokenizer, env_name, tasks, SAMPLING, max_turns=3, seed=0
    )
    assert all(t.finished and 0.0 <= t.reward <= 1.0 for t in trajectories)
    assert all(1 <= len(t.turns) <= 3 for t in trajectories)


def test_groups_play_each_task_group_size_times_with_distinct_samples(tiny_model, tokenizer):
    tasks = make_tasks("arith", "test", 2, seed=0)
    clock: dict[str, float] = {}
    groups = run_groups(
        tiny_model, tokenizer, "arith", tasks, 4, SAMPLING, max_turns=1, clock=clock
    )
    assert [len(g) for g in groups] == [4, 4]
    for task, group in zip(tasks, groups, strict=True):
        assert {t.task_id for t in group} == {task.id}
        # same prompt, different samples (one seeded batch, distinct rows)
        assert len({tuple(t.token_ids[: t.turns[0][0]]) for t in group}) == 1
        assert len({tuple(t.token_ids) for t in group}) > 1
    assert clock["sampling"] > 0 and clock["env"] >= 0
    again = run_groups(tiny_model, tokenizer, "arith", tasks, 4, SAMPLING, max_turns=1)
    assert [t.token_ids for g in again for t in g] == [t.token_ids for g in groups for t in g]


def test_a_hung_env_step_times_out_and_ends_only_its_episode(tiny_model, tokenizer, monkeypatch):
    tasks = make_tasks("shop", "test", 3, seed=2)
    release = threading.Event()
    real_step = ShopEnv.step
    hung: list[int] = []

    def slow_step(self, action):
        if self.task is tasks[0] and not hung:
            hung.append(1)
            release.wait(30)  # a step that hangs far past the timeout
        return real_step(self, action)

    monkeypatch.setattr(ShopEnv, "step", slow_step)
    every_reply_is_a_call(monkeypatch)
    try:
        started = time.monotonic()
        trajectories = run_episodes(
            tiny_model,
            tokenizer,
            "shop",
            tasks,
            SAMPLING,
            max_turns=2,
            env_workers=1,  # the hung step holds the only worker: the rest must still run
            env_timeout=0.5,
        )
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert trajectories[0].end_reason.startswith("env timeout")
    assert trajectories[0].reward == 0.0 and len(trajectories[0].turns) == 1
    assert all(not t.end_reason.startswith("env") for t in trajectories[1:])
    assert all(len(t.turns) == 2 or t.end_reason == "terminated" for t in trajectories[1:])
    assert elapsed < 10


def test_step_pool_outcomes_keep_their_order():
    class Slow:
        def __init__(self, delay: float, fail: bool = False) -> None:
            self.delay, self.fail = delay, fail

        def step(self, action):
            time.sleep(self.delay)
            if self.fail:
                raise ValueError("bad action")
            return action.upper(), 1.0, True, False, {}

    pool = StepPool(workers=2, timeout=5)
    try:
        envs = [Slow(0.2), Slow(0.0, fail=True), Slow(0.05)]
        outcomes = pool.step_all(envs, ["a", "b", "c"])  # type: ignore[arg-type]
    finally:
        pool.close()
    assert outcomes == [
        ("A", 1.0, True, False),
        "env error: ValueError: bad action",
        ("C", 1.0, True, False),
    ]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_reusing_the_chat_so_far_plays_the_same_episodes(
    tiny_model, tokenizer, monkeypatch, temperature
):
    """Turn t+1 computes only the new observation (`PrefixCache`): the episodes, their
    tokens and log-probs, are the ones a full re-prefill of every turn plays."""
    every_reply_is_a_call(monkeypatch)
    tasks = make_tasks("shop", "test", 4, seed=2)
    sampling = replace(SAMPLING, temperature=temperature, max_new_tokens=8)
    clocks: list[dict[str, float]] = [{}, {}]
    played = [
        run_episodes(
            tiny_model,
            tokenizer,
            "shop",
            tasks,
            sampling,
            max_turns=4,
            reuse_prefix=reuse,
            clock=clock,
        )
        for reuse, clock in zip((True, False), clocks, strict=True)
    ]
    for reused, full in zip(*played, strict=True):
        assert reused.token_ids == full.token_ids and reused.turns == full.turns
        assert reused.logprobs == pytest.approx(full.logprobs, abs=1e-4)
        assert (reused.reward, reused.end_reason) == (full.reward, full.end_reason)
    assert max(len(t.turns) for t in played[0]) == 4
    # the whole chat is computed once, each turn's reply and observation once more
    assert clocks[0]["prefilled tokens"] < clocks[0]["reused tokens"]
    assert clocks[0]["prefilled tokens"] + clocks[0]["reused tokens"] == sum(
        start for t in played[0] for start, _ in t.turns
    )
    assert "reused tokens" not in clocks[1]
