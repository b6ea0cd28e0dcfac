from __future__ import annotations

import pytest

from onthejob.envs import make_tasks
from onthejob.envs.shop import ShopEnv
from onthejob.models.tokenizer import END, render_chat
from onthejob.rollout import run_episodes
from onthejob.sampling import SamplingConfig

SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3)


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
