"""Agent <-> environment episodes as token-level trajectories.

Covers: running a batch of multi-turn episodes, one env copy per episode, with
the sampler: the agent's tokens are kept exactly as sampled (never re-tokenized
text), each observation is appended as a `tool` turn rendered by the one chat
template (tool envs such as `shop` are played through their tool: the agent
writes "shop: <action>", as it does at work through the server, and a reply that
is not such a call gets the protocol back as the observation, without an env
step), and the result is a `Trajectory` with a loss mask that is 1 on the
agent's sampled tokens only, their sampling log-probs, the reward, and the turn
boundaries. `run_groups` plays each task G times (G env copies, one sampling
batch, so the G samples differ) for group-relative RL. The env steps of a turn
run concurrently on a thread pool; an environment that raises, or whose step
runs past `env_timeout` seconds, ends that episode with reward 0 and the reason
recorded; the others go on. A chat that would outgrow the model's context ends
as "context full".

Not covered: RL losses (see `onthejob.train`), process or Ray pools (the batch
runs in this process; env steps are cheap next to sampling, and the sandbox
runs in subprocesses of its own). A timed-out step cannot be killed (Python
threads cannot be): its thread is abandoned and runs on until the step returns,
and a step that never returns keeps the process from exiting. Envs that can
hang must bound their own time (the sandbox and the HTTP adapter do); the
timeout keeps one slow step from stalling a training run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from onthejob.envs import Env, make_env
from onthejob.envs.base import Task
from onthejob.models.tokenizer import END, render_chat, token_id
from onthejob.prompts import agent_opening, env_action, not_a_call
from onthejob.sampling import PrefixCache, SamplingConfig, sample


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
    """terminated, truncated, max turns, context full, env error: ..., or env timeout: ..."""
    messages: list[dict[str, str]] = field(default_factory=list)
    """Readable transcript (for logs and reports; never re-tokenized)."""

    @property
    def success(self) -> bool:
        return self.reward >= 1.0


ENV_TIMEOUT = 60.0
"""Default seconds one env step may take before its episode ends as "env timeout"."""

StepOutcome = tuple[str, float, bool, bool] | str
"""(observation, reward, terminated, truncated), or the one-line reason the episode ended."""


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
    env_timeout: float = ENV_TIMEOUT,
    clock: dict[str, float] | None = None,
    reuse_prefix: bool = True,
) -> list[Trajectory]:
    """Play each task once (batched across episodes, turn by turn) and return the trajectories.

    Episode i resets its own env copy with seed `seed + i`. Seconds spent sampling and
    stepping envs are added to `clock["sampling"]` and `clock["env"]` when a dict is given,
    and with `reuse_prefix` the prompt tokens computed and reused to `clock["prefilled tokens"]`
    and `clock["reused tokens"]`. `reuse_prefix`: each turn computes only the episode's new
    tokens, its chat so far coming from a `PrefixCache` (False: the whole chat again).
    """
    clock = clock if clock is not None else {}
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
    pool = StepPool(env_workers, env_timeout)
    cache = PrefixCache() if reuse_prefix else None
    try:
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
            started = time.perf_counter()
            prompts = [trajectories[i].token_ids for i in active]
            samples = sample(
                model, tokenizer, prompts, config, prefix_cache=cache, cache_keys=active
            )
            clock["sampling"] = clock.get("sampling", 0.0) + time.perf_counter() - started
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
            # A tool env's reply must call its tool ("shop: search red hat"); a reply that
            # does not is answered here with the protocol, without stepping the env.
            actions = [env_action(env_name, text) for text in samples.texts]
            calls = [(i, a) for i, a in zip(active, actions, strict=True) if a is not None]
            started = time.perf_counter()
            stepped = pool.step_all([envs[i] for i, _ in calls], [a for _, a in calls])
            clock["env"] = clock.get("env", 0.0) + time.perf_counter() - started
            by_row = dict(zip([i for i, _ in calls], stepped, strict=True))
            outcomes = [
                by_row[i] if i in by_row else (not_a_call(env_name), 0.0, False, False)
                for i in active
            ]
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
    finally:
        pool.close()
    if cache is not None:
        clock["prefilled tokens"] = clock.get("prefilled tokens", 0.0) + cache.computed
        clock["reused tokens"] = clock.get("reused tokens", 0.0) + cache.reused
    for t in trajectories:
        if not t.finished:
            t.finished, t.end_reason = True, "max turns"
    return trajectories


def run_groups(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    env_name: str,
    tasks: Sequence[Task],
    group_size: int,
    sampling: SamplingConfig,
    max_turns: int = 8,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
    env_workers: int = 4,
    env_timeout: float = ENV_TIMEOUT,
    clock: dict[str, float] | None = None,
) -> list[list[Trajectory]]:
    """G = group_size episodes of each task, on G env copies in one sampling batch; one list per task.

    The G samples of a task differ because they are distinct rows of one seeded batch (one
    generator draws every row), and each copy resets with its own seed.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    repeated = [task for task in tasks for _ in range(group_size)]
    flat = run_episodes(
        model,
        tokenizer,
        env_name,
        repeated,
        sampling,
        max_turns=max_turns,
        env_config=env_config,
        seed=seed,
        env_workers=env_workers,
        env_timeout=env_timeout,
        clock=clock,
    )
    return [flat[lo : lo + group_size] for lo in range(0, len(flat), group_size)]


class StepPool:
    """Worker threads that run one env step per episode; a step past `timeout` s is abandoned.

    A thread cannot be killed, so an abandoned step holds its worker until it returns. Once
    every worker is held that way, the steps still queued move to a fresh pool, so hung envs
    never stall the others.
    """

    def __init__(self, workers: int, timeout: float) -> None:
        if workers < 1 or not timeout > 0:
            raise ValueError(f"need workers >= 1 and timeout > 0, got {workers} and {timeout}")
        self.workers, self.timeout = workers, timeout
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="env-step")
        self.abandoned: list[Future[StepOutcome]] = []

    def step_all(self, envs: Sequence[Env], actions: Sequence[str]) -> list[StepOutcome]:
        """Step envs[i] with actions[i], concurrently; outcomes in order."""
        started: dict[int, float] = {}  # written by the worker when the step begins

        def submit(i: int) -> Future[StepOutcome]:
            def call() -> StepOutcome:
                started[i] = time.monotonic()
                return _step(envs[i], actions[i])

            return self.pool.submit(call)

        outcomes: list[StepOutcome] = [""] * len(envs)
        pending = {i: submit(i) for i in range(len(envs))}
        while pending:
            deadlines = [started[i] + self.timeout for i in pending if i in started]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.05
            wait(pending.values(), timeout=wait_s, return_when=FIRST_COMPLETED)
            now = time.monotonic()
            for i, future in list(pending.items()):
                if future.done():
                    outcomes[i] = future.result()
                    del pending[i]
                elif i in started and now - started[i] >= self.timeout:
                    outcomes[i] = f"env timeout: a step took over {self.timeout:g}s"
                    self.abandoned.append(future)
                    del pending[i]
            self.abandoned = [f for f in self.abandoned if not f.done()]
            if pending and len(self.abandoned) >= self.workers:
                self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="env-step")
                self.abandoned = []
                for i, future in list(pending.items()):
                    if future.cancel():  # not started yet: run it on the fresh pool
                        pending[i] = submit(i)
        return outcomes

    def close(self) -> None:
        """Stop taking steps; never waits for an abandoned one."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _step(env: Env, action: str) -> StepOutcome:
    """One env step; an exception becomes its one-line reason instead of propagating."""
    try:
        obs, reward, terminated, truncated, _ = env.step(action)
    except Exception as e:
        return f"env error: {type(e).__name__}: {e}"
    return obs, reward, terminated, truncated
