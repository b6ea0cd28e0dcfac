"""Agent <-> environment episodes as token-level trajectories.

Covers: running a batch of multi-turn episodes, one env copy per episode, with
the sampler: the agent's tokens are kept exactly as sampled (never re-tokenized
text), each observation is appended as a `tool` turn rendered by the one chat
template, and the result is a `Trajectory` with a loss mask that is 1 on the
agent's sampled tokens only, their sampling log-probs, the reward, and the turn
boundaries. An environment that raises ends that episode with reward 0 and the
reason recorded; the others go on. A chat that would outgrow the model's
context ends as truncated.

Not covered: RL losses (see `onthejob.train`), process or Ray pools (the batch
runs in this process; env steps are cheap next to sampling, and the sandbox
runs in subprocesses of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from onthejob.envs import Env, make_env
from onthejob.envs.base import Task
from onthejob.models.tokenizer import END, render_chat, token_id
from onthejob.prompts import agent_opening
from onthejob.sampling import SamplingConfig, sample


@dataclass
class Trajectory:
    """One episode, token in and token out."""

    env: str
    """Registry name of the environment."""
    task_id: str
    """Id of the task played."""
    token_ids: list[int]
    """The whole chat: prompt, agent turns, observations."""
    loss_mask: list[int]
    """1 on tokens the agent sampled, 0 elsewhere (prompt, observations, forced end tokens)."""
    logprobs: list[float]
    """Sampling log-prob of each agent token; 0.0 where loss_mask is 0."""
    turns: list[tuple[int, int]] = field(default_factory=list)
    """(start, stop) token span of each agent turn."""
    reward: float = 0.0
    """Episode reward from the environment."""
    finished: bool = False
    """True once the env terminated or truncated, or the episode was cut."""
    end_reason: str = ""
    """terminated, truncated, max turns, context full, or env error: ..."""
    messages: list[dict[str, str]] = field(default_factory=list)
    """Readable transcript (for logs and reports; never re-tokenized)."""

    @property
    def success(self) -> bool:
        return self.reward >= 1.0


def run_episodes(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    env_name: str,
    tasks: Sequence[Task],
    sampling: SamplingConfig,
    max_turns: int = 8,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
    env_workers: int = 4,
) -> list[Trajectory]:
    """Play each task once (batched across episodes, turn by turn) and return the trajectories."""
    envs = [make_env(env_name, **(env_config or {})) for _ in tasks]
    trajectories = []
    for i, (env, task) in enumerate(zip(envs, tasks, strict=True)):
        obs, _ = env.reset(seed=seed + i, task=task)
        opening = agent_opening(env_name, obs)
        ids = render_chat(tokenizer, opening, add_generation_prompt=True).ids
        trajectories.append(
            Trajectory(
                env_name, task.id, ids, [0] * len(ids), [0.0] * len(ids), messages=list(opening)
            )
        )
    end_id = token_id(tokenizer, END)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    with ThreadPoolExecutor(max_workers=env_workers) as pool:
        for turn in range(max_turns):
            if limit is not None:
                for t in trajectories:
                    if not t.finished and len(t.token_ids) + sampling.max_new_tokens > limit:
                        t.finished, t.end_reason = True, "context full"
            active = [i for i, t in enumerate(trajectories) if not t.finished]
            if not active:
                break
            config = replace(
                sampling, seed=None if sampling.seed is None else sampling.seed + 7919 * turn
            )
            samples = sample(model, tokenizer, [trajectories[i].token_ids for i in active], config)
            for i, ids, logps, reason, text in zip(
                active,
                samples.token_ids,
                samples.logprobs,
                samples.finish_reasons,
                samples.texts,
                strict=True,
            ):
                t = trajectories[i]
                start = len(t.token_ids)
                t.token_ids += ids
                t.loss_mask += [1] * len(ids)
                t.logprobs += logps
                if reason != "eos":  # close the turn so the chat stays well formed; not trained
                    t.token_ids.append(end_id)
                    t.loss_mask.append(0)
                    t.logprobs.append(0.0)
                t.turns.append((start, start + len(ids)))
                t.messages.append({"role": "assistant", "content": text})
            # Env steps are independent; the sandbox and services run outside the GIL.
            outcomes = list(pool.map(lambda i, text: _step(envs[i], text), active, samples.texts))
            for i, outcome in zip(active, outcomes, strict=True):
                t = trajectories[i]
                if isinstance(outcome, str):  # an env fault ends this episode only
                    t.finished, t.reward, t.end_reason = True, 0.0, outcome
                    continue
                obs, reward, terminated, truncated = outcome
                t.reward = float(reward)
                t.messages.append({"role": "tool", "content": obs})
                if terminated or truncated:
                    t.finished, t.end_reason = True, "terminated" if terminated else "truncated"
                    continue
                observation = render_chat(
                    tokenizer, [{"role": "tool", "content": obs}], add_generation_prompt=True
                ).ids
                t.token_ids += observation
                t.loss_mask += [0] * len(observation)
                t.logprobs += [0.0] * len(observation)
    for t in trajectories:
        if not t.finished:
            t.finished, t.end_reason = True, "max turns"
    return trajectories


def _step(env: Env, action: str) -> tuple[str, float, bool, bool] | str:
    """One env step; an exception becomes its one-line reason instead of propagating."""
    try:
        obs, reward, terminated, truncated, _ = env.step(action)
    except Exception as e:
        return f"env error: {type(e).__name__}: {e}"
    return obs, reward, terminated, truncated
