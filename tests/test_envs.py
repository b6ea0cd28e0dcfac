"""Behaviour every registered env shares: registry, tasks and splits, the expert, bad actions,
the end of an episode, snapshot/restore, and identical trajectories across copies (threads
and processes). Env-specific checks live in tests/test_envs_<name>.py."""

from __future__ import annotations

import json
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from onthejob.envs import ENVS, Env, NotSupported, Task, make_env, make_tasks
from onthejob.envs.base import TextEnv

NAMES = sorted(ENVS)
LEVELS = {"arith": (1, 2, 3, 4), "program": (1, 2, 3), "shop": (1, 2, 3)}
EXPERT_TASKS = {"arith": 150, "program": 6, "shop": 60}  # per level; program runs the sandbox
GARBAGE = [
    "",
    "   ",
    "\n\n",
    "hello there",
    "x" * 50_000,
    "\x00\ufffd\U0001f642",
    "add 99",
    "open p0",
    "search",
    "checkout now",
    "42 apples",
    "def f(x): return 0",
    "{'action': 'checkout'}",
]


def scripted_episode(name: str, task_json: dict[str, Any], seed: int) -> list[Any]:
    """One episode mixing expert and garbage actions (chosen by `seed`): the full trace."""
    return play_script(make_env(name), Task.from_json(task_json), seed)


def play_script(env: Env, task: Task, seed: int) -> list[Any]:
    """Play the seeded mix of expert and garbage actions on `env` (local or remote)."""
    rng = random.Random(seed)
    obs, info = env.reset(seed=seed, task=task)
    trace: list[Any] = [obs, info]
    done = False
    while not done:
        action = env.expert_action() if rng.random() < 0.6 else rng.choice(GARBAGE)
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append([action, obs, reward, terminated, truncated, info])
        done = terminated or truncated
    trace.append(env.state())
    return trace


def tasks_json(name: str, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    return [task.to_json() for task in make_tasks(name, split, n, seed=seed)]


def run_expert(env: Env, task: Task) -> tuple[float, list[str]]:
    """Total reward of the expert on `task` and every observation it saw."""
    obs, _ = env.reset(task=task)
    seen, total, done = [obs], 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(env.expert_action())
        seen.append(obs)
        total += reward
        done = terminated or truncated
    return total, seen


# ---------------------------------------------------------------------- registry and config


def test_registry_names_and_flags() -> None:
    assert NAMES == ["arith", "program", "shop"]
    for name in NAMES:
        env = make_env(name)
        assert isinstance(env, TextEnv)
        assert env.name == name
        assert (env.resettable, env.replicable, env.stationary) == (True, True, True)


def test_unknown_env_and_config_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="valid names: arith, program, shop") as error:
        make_env("chess")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown config.*difficulty"):
        make_env("arith", dificulty=2)
    with pytest.raises(ValueError, match="difficulty"):
        make_env("shop", difficulty=9)
    with pytest.raises(ValueError, match="split"):
        make_tasks("arith", "validation", 3)


def test_every_config_field_has_a_docstring() -> None:
    import ast
    import inspect

    for cls in ENVS.values():
        tree = ast.parse(inspect.getsource(cls.config_type))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                following = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(following, ast.Expr) and isinstance(
                    following.value, ast.Constant
                ), (
                    f"{cls.config_type.__name__}.{node.target.id} has no docstring"  # type: ignore[union-attr]
                )
        assert "difficulty" in {f for f in cls.config_type.__dataclass_fields__}


# ---------------------------------------------------------------------- tasks and splits


@pytest.mark.parametrize("name", NAMES)
def test_tasks_are_deterministic_distinct_and_of_their_split(name: str) -> None:
    train = make_tasks(name, "train", 40, seed=7)
    assert train == make_tasks(name, "train", 40, seed=7)
    assert make_tasks(name, "train", 10, seed=7) == train[:10]  # a prefix does not depend on n
    assert train != make_tasks(name, "train", 40, seed=8)
    test = make_tasks(name, "test", 40, seed=7)
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    assert len({t.id for t in train}) == 40 and len({t.id for t in test}) == 40
    for task in train + test:
        assert task.env == name and task.id.startswith(f"{name}-")
        assert Task.from_json(json.loads(json.dumps(task.to_json()))) == task
        assert task.prompt and task.prompt == task.prompt.strip()


@pytest.mark.parametrize("name", NAMES)
def test_train_and_test_never_share_a_task(name: str) -> None:
    level = LEVELS[name][0]  # the smallest task space makes collisions most likely
    train = make_tasks(name, "train", 120, seed=0, difficulty=level)
    test = [
        t for seed in range(3) for t in make_tasks(name, "test", 25, seed=seed, difficulty=level)
    ]
    assert not {t.id for t in train} & {t.id for t in test}
    assert not {t.prompt for t in train} & {t.prompt for t in test}


def test_split_is_decided_by_content_and_test_is_about_a_fifth() -> None:
    from onthejob.envs.base import split_of

    splits = [split_of("arith", f"{a} + {b}") for a in range(40) for b in range(40)]
    assert 0.15 < splits.count("test") / len(splits) < 0.25
    assert splits == [split_of("arith", f"{a} + {b}") for a in range(40) for b in range(40)]


def test_task_from_json_rejects_malformed_input() -> None:
    good = make_tasks("arith", "train", 1)[0].to_json()
    for bad in [
        None,
        [],
        {**good, "split": "dev"},
        {**good, "data": "x"},
        {k: good[k] for k in ("id", "env")},
    ]:
        with pytest.raises(ValueError):
            Task.from_json(bad)


@pytest.mark.parametrize("name", NAMES)
def test_reset_with_a_seed_draws_a_train_task_deterministically(name: str) -> None:
    env = make_env(name)
    first, info = env.reset(seed=3)
    assert info["split"] == "train"
    assert env.reset(seed=3)[0] == first
    assert len({env.reset(seed=s)[0] for s in range(6)}) > 3
    with pytest.raises(ValueError, match="task of"):
        env.reset(task=make_tasks("arith" if name != "arith" else "shop", "train", 1)[0])


# ---------------------------------------------------------------------- the expert and bad actions


@pytest.mark.parametrize("name", NAMES)
def test_expert_solves_every_level(name: str) -> None:
    for level in LEVELS[name]:
        env = make_env(name, difficulty=level)
        for split, n in (("train", EXPERT_TASKS[name]), ("test", max(2, EXPERT_TASKS[name] // 4))):
            for task in make_tasks(name, split, n, seed=level, difficulty=level):
                reward, seen = run_expert(env, task)
                assert reward == 1.0, (task.prompt, seen)
                for obs in seen:
                    assert 0 < len(obs.split()) < 120, obs


@pytest.mark.parametrize("name", NAMES)
def test_garbage_never_crashes_and_counts_against_the_budget(name: str) -> None:
    env = make_env(name)
    task = make_tasks(name, "train", 1, seed=2)[0]
    for action in GARBAGE:
        env.reset(task=task)
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(obs, str) and 0 < len(obs) < 400, obs
        assert reward == 0.0
        assert info["steps"] == 1
    # only garbage: the episode ends (budget or single turn) with reward 0
    env.reset(task=task)
    total, done, steps = 0.0, False, 0
    while not done:
        obs, reward, terminated, truncated, info = env.step("hello there")
        total, done, steps = total + reward, terminated or truncated, steps + 1
    assert total == 0.0 and steps == info["max_steps"]


@pytest.mark.parametrize("name", NAMES)
def test_step_before_reset_and_after_the_end_raise(name: str) -> None:
    env = make_env(name)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("x")
    reward, _ = run_expert(env, make_tasks(name, "train", 1)[0])
    assert reward == 1.0
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(env.expert_action())
    with pytest.raises(TypeError, match="str"):
        env.reset(seed=1)
        env.step(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- snapshot / restore


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restore_replays_mid_episode(name: str) -> None:
    env = make_env(name)
    task = make_tasks(name, "train", 1, seed=4)[0]
    env.reset(task=task)
    if name != "arith":  # take a step first, so the snapshot is really mid-episode
        env.step("def f(x): return 0" if name == "program" else env.expert_action())
    snap = env.snapshot()
    frozen = json.dumps(snap, sort_keys=True)  # JSON-serializable

    def play() -> list[Any]:
        out: list[Any] = [env.state()]
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(env.expert_action())
            out.append([obs, reward, terminated, truncated, info, env.state()])
            done = terminated or truncated
        return out

    first = play()
    assert first[-1][1] == 1.0
    assert json.dumps(snap, sort_keys=True) == frozen  # stepping did not mutate the snapshot
    env.restore(snap)
    assert play() == first
    other = make_env(name)  # a fresh copy continues from the snapshot too
    other.restore(snap)
    env.restore(snap)
    assert other.state() == env.state()
    with pytest.raises(ValueError, match="snapshot"):
        other.restore({"env": "chess"})
    with pytest.raises(ValueError, match="snapshot"):
        other.restore({"env": name, "config": {}})


def test_non_resettable_envs_refuse_snapshots() -> None:
    class Live(ENVS["arith"]):  # type: ignore[valid-type,misc]
        resettable = False

    env = Live()
    env.reset(seed=0)
    with pytest.raises(NotSupported, match="not resettable"):
        env.snapshot()
    with pytest.raises(NotSupported, match="not resettable"):
        env.restore({})


# ---------------------------------------------------------------------- copies give identical trajectories


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(
        max_workers=2, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        yield pool


@pytest.mark.parametrize("name", NAMES)
def test_copies_agree_across_threads_and_processes(
    name: str, process_pool: ProcessPoolExecutor
) -> None:
    tasks = tasks_json(name, "train", 3, seed=11)
    jobs = [(task, seed) for task in tasks for seed in (0, 1)]
    expected = [scripted_episode(name, task, seed) for task, seed in jobs]
    assert len({json.dumps(trace) for trace in expected}) > 1  # the script really varies
    with ThreadPoolExecutor(max_workers=4) as threads:
        in_threads = list(threads.map(lambda job: scripted_episode(name, *job), jobs * 2))
    assert in_threads == expected * 2
    names = [name] * len(jobs)
    in_processes = list(process_pool.map(scripted_episode, names, *zip(*jobs, strict=True)))
    assert in_processes == expected
    # task generation itself is the same in another interpreter (other hash seed)
    assert process_pool.submit(tasks_json, name, "test", 5, 3).result() == tasks_json(
        name, "test", 5, 3
    )
