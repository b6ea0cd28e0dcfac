"""Environments: the registry of grindable envs and the functions others call to get them.

Covers: `ENVS` (name -> env class), `make_env` and `make_tasks`, `level_problem` (whether
chosen envs all have a difficulty level), and re-exports of the
interface (`Task`, `Env`, `NotSupported`). Each env lives in its own module: `arith`
(one-step arithmetic), `program` (program synthesis from examples, judged in the sandbox),
`shop` (a text web shop). `onthejob.envs.http` serves any env over HTTP.

Does not cover: the non-grindable deployment world (`onthejob.world`) or dream envs
(`onthejob.dream`); they implement the same `Env` protocol without being registered here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from onthejob.envs.arith import ArithConfig, ArithEnv
from onthejob.envs.base import Env, NotSupported, Task, TextEnv
from onthejob.envs.program import ProgramConfig, ProgramEnv
from onthejob.envs.shop import ShopConfig, ShopEnv

ENVS: dict[str, type[TextEnv[Any]]] = {"arith": ArithEnv, "program": ProgramEnv, "shop": ShopEnv}

__all__ = [
    "ENVS",
    "ArithConfig",
    "ArithEnv",
    "Env",
    "NotSupported",
    "ProgramConfig",
    "ProgramEnv",
    "ShopConfig",
    "ShopEnv",
    "Task",
    "level_problem",
    "make_config",
    "make_env",
    "make_tasks",
]


def env_class(name: str) -> type[TextEnv[Any]]:
    """The registered class called `name`; unknown names are a one-line ValueError."""
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; valid names: {', '.join(sorted(ENVS))}")
    return ENVS[name]


def make_config(name: str, **config: Any) -> Any:
    """The typed config of env `name` with `config` overriding its defaults."""
    cls = env_class(name)
    valid = [f.name for f in fields(cls.config_type)]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown config {unknown} for env {name!r}; valid keys: {', '.join(valid)}"
        )
    return cls.config_type(**config)


def level_problem(names: Sequence[str], difficulty: int) -> str | None:
    """Why `difficulty` is not a level of every env in `names` (registered names), else None."""
    try:
        for name in names:
            make_config(name, difficulty=difficulty)
    except ValueError as e:
        return str(e)
    return None


def make_env(name: str, **config: Any) -> TextEnv[Any]:
    """A fresh env of the registered kind `name`, e.g. make_env("arith", difficulty=3)."""
    return env_class(name)(make_config(name, **config))


def make_tasks(env: str, split: str, n: int, seed: int = 0, **config: Any) -> list[Task]:
    """n distinct tasks of `split` for env `env`: deterministic in (seed, config); train and test never share a task."""
    return env_class(env).sample_tasks(make_config(env, **config), split, n, seed)
