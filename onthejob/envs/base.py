"""The environment interface: `Task`, the `Env` protocol, and the bookkeeping text envs share.

Covers: the task record (prompt the agent sees, hidden verification data, split), how a
task's split and id follow from its content, drawing tasks deterministically from a seed,
and `TextEnv`, a small base class with what every grindable env does the same way: choose
the task on reset, count steps against a budget, refuse `step` before reset and after the
end, snapshot and restore.

Does not cover: any particular environment (see `arith`, `program`, `shop`), the registry
(`onthejob.envs`), serving an env over HTTP (`onthejob.envs.http`), or agents and rollouts
(`onthejob.rollout`).

Where it departs from Gymnasium: observations and actions are short strings; `reset`
takes a `Task` as well as a seed; the capability flags (`resettable`, `replicable`,
`stationary`) are part of the interface, and `snapshot`/`restore` replace pickling an env.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Generic, Protocol, TypeVar

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
"""Share of each env's task space that belongs to the test split."""


@dataclass(frozen=True)
class Task:
    """One problem of one environment; everything an env needs to start an episode of it."""

    id: str
    """Stable id derived from the content, e.g. "arith-3f2a9c01"."""
    env: str
    """Registry name of the env this task belongs to."""
    prompt: str
    """The instructions the agent sees: its first observation."""
    data: dict[str, Any]
    """Hidden verification data, never shown to the agent (JSON-serializable)."""
    split: str
    """"train" or "test"; decided by a hash of the task's defining content."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict; `Task.from_json` reads it back."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> Task:
        """Read a dict written by `to_json`; a malformed one is a one-line ValueError."""
        names = [f.name for f in fields(cls)]
        if not isinstance(value, dict) or sorted(value) != sorted(names):
            raise ValueError(f"a task is a JSON object with exactly the keys {names}")
        for name in names:
            expected = dict if name == "data" else str
            if not isinstance(value[name], expected):
                raise ValueError(f"task field {name!r} must be a {expected.__name__}")
        if value["split"] not in SPLITS:
            raise ValueError(f"task split must be one of {list(SPLITS)}, got {value['split']!r}")
        return cls(**value)


class NotSupported(RuntimeError):
    """The env cannot do this (e.g. snapshot a live service that has no reset)."""


class Env(Protocol):
    """A text environment, Gymnasium style: text observations in, one-line text actions out.

    The capability flags are read-only properties here so that both class constants
    (local envs) and values read at run time (`HTTPEnv`) satisfy the protocol.
    """

    @property
    def name(self) -> str:
        """Registry name."""
        ...

    @property
    def resettable(self) -> bool:
        """reset() starts from a clean state; snapshot()/restore() work."""
        ...

    @property
    def replicable(self) -> bool:
        """Copies with the same task and seed give identical trajectories."""
        ...

    @property
    def stationary(self) -> bool:
        """The world does not change between episodes."""
        ...

    def reset(
        self, seed: int | None = None, task: Task | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode of `task`, or of a train task drawn from `seed`; returns (obs, info)."""
        ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Act; returns (obs, reward, terminated, truncated, info)."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-serializable public view of the episode (no hidden task data)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-serializable full state; raises NotSupported on envs that are not resettable."""
        ...

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Return to a state taken by snapshot(); raises NotSupported where not resettable."""
        ...

    def expert_action(self) -> str:
        """The oracle's next action, computed from hidden state."""
        ...


def split_of(env: str, key: str) -> str:
    """The split of a task whose defining content is `key` (deterministic, ~TEST_FRACTION test)."""
    digest = hashlib.sha256(f"{env}|{key}".encode()).hexdigest()
    return "test" if int(digest[:8], 16) % 1000 < TEST_FRACTION * 1000 else "train"


def draw_budget(n: int) -> int:
    """How many draws sample_tasks makes to find n distinct tasks before it gives up."""
    return 50 * n + 1000


def make_task(env: str, key: str, prompt: str, data: dict[str, Any]) -> Task:
    """A task whose split follows from `key` and whose id from its whole content."""
    content = json.dumps([prompt, data], sort_keys=True)
    digest = hashlib.sha256(f"{env}|{content}".encode()).hexdigest()
    return Task(
        id=f"{env}-{digest[:8]}", env=env, prompt=prompt, data=data, split=split_of(env, key)
    )


def clip(text: str, limit: int = 40) -> str:
    """One line of at most `limit` characters, safe to put in an observation."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


C = TypeVar("C")


class TextEnv(Generic[C]):
    """Shared bookkeeping of the grindable envs: task choice, step budget, end of episode.

    A subclass sets `name` and `config_type`, and implements `sample_task` (one candidate
    task from an rng), `_start` (first observation), `_act` (one step), `_budget` (steps
    allowed) and `expert_action`; it keeps its episode state in `self._ep`, a JSON-able dict,
    so that snapshot/restore need nothing more.
    """

    name: ClassVar[str]
    config_type: ClassVar[type[Any]]
    resettable: ClassVar[bool] = True
    replicable: ClassVar[bool] = True
    stationary: ClassVar[bool] = True
    out_of_budget: ClassVar[str] = "out of steps."
    """Appended to the observation when the budget truncates the episode."""

    def __init__(self, config: C | None = None):
        self.config: C = config if config is not None else self.config_type()
        self._task: Task | None = None
        self._steps = 0
        self._done = False
        self._ep: dict[str, Any] = {}

    # ------------------------------------------------------------------ to implement

    @classmethod
    def sample_task(cls, rng: random.Random, config: C) -> Task:
        """One candidate task (of either split) drawn from `rng`."""
        raise NotImplementedError

    def _start(self) -> str:
        """Set up `self._ep` for `self.task`; return the first observation."""
        raise NotImplementedError

    def _act(self, action: str) -> tuple[str, float, bool]:
        """One step: (obs, reward, terminated). Never raises on any string, however long."""
        raise NotImplementedError

    def _budget(self) -> int:
        """Steps allowed per episode."""
        raise NotImplementedError

    def expert_action(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ tasks

    @classmethod
    def sample_tasks(cls, config: C, split: str, n: int, seed: int = 0) -> list[Task]:
        """n distinct tasks of `split`, the same for the same (config, seed); a prefix is stable in n."""
        found = cls.draw_distinct(config, split, n, draw_budget(n), seed)
        if len(found) < n:
            raise ValueError(
                f"found only {len(found)} distinct {split} tasks of {cls.name} with {config}; ask for fewer or raise the difficulty"
            )
        return [task for _, task in found]

    @classmethod
    def draw_distinct(
        cls, config: C, split: str, n: int, draws: int, seed: int = 0
    ) -> list[tuple[int, Task]]:
        """The first n distinct tasks of `split` among `draws` draws from seed's stream, each
        with the index of the draw that found it (sample_tasks and available_tasks share it)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        rng = random.Random(seed)
        found: list[tuple[int, Task]] = []
        seen: set[str] = set()
        for i in range(draws):
            if len(found) == n:
                break
            task = cls.sample_task(rng, config)
            if task.split == split and task.id not in seen:
                seen.add(task.id)
                found.append((i, task))
        return found

    @property
    def task(self) -> Task:
        if self._task is None:
            raise RuntimeError(f"{self.name}: call reset() first")
        return self._task

    # ------------------------------------------------------------------ the Env protocol

    def reset(
        self, seed: int | None = None, task: Task | None = None
    ) -> tuple[str, dict[str, Any]]:
        if task is None:
            if seed is None:
                seed = random.SystemRandom().randrange(2**31)
            task = self.sample_tasks(self.config, "train", 1, seed)[0]
        elif not isinstance(task, Task) or task.env != self.name:
            got = task.env if isinstance(task, Task) else type(task).__name__
            raise ValueError(
                f"{self.name}: reset() got a task of {got!r}; pass a Task of {self.name!r}"
            )
        self._task = task
        self._steps = 0
        self._done = False
        self._ep = {}
        obs = self._start()
        return obs, {"task_id": task.id, "split": task.split}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._task is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        if self._done:
            raise RuntimeError(f"{self.name}: the episode is over; call reset() to start another")
        if not isinstance(action, str):
            raise TypeError(f"{self.name}: an action is a str, got {type(action).__name__}")
        self._steps += 1
        obs, reward, terminated = self._act(action)
        truncated = not terminated and self._steps >= self._budget()
        if truncated:
            obs = f"{obs} {self.out_of_budget}"
        self._done = terminated or truncated
        info: dict[str, Any] = {"steps": self._steps, "max_steps": self._budget()}
        if self._done:
            info["success"] = reward > 0
        return obs, reward, terminated, truncated, info

    def state(self) -> dict[str, Any]:
        task = self._task
        return {
            "env": self.name,
            "task_id": task.id if task else None,
            "prompt": task.prompt if task else None,
            "steps": self._steps,
            "max_steps": self._budget(),
            "done": self._done,
            **self._public_state(),
        }

    def _public_state(self) -> dict[str, Any]:
        """The parts of `self._ep` the agent may see (default: none)."""
        return {}

    def snapshot(self) -> dict[str, Any]:
        if not self.resettable:
            raise NotSupported(f"{self.name} cannot be snapshotted: it is not resettable")
        return json.loads(
            json.dumps(
                {
                    "env": self.name,
                    "config": asdict(self.config),  # type: ignore[call-overload]
                    "task": self._task.to_json() if self._task else None,
                    "steps": self._steps,
                    "done": self._done,
                    "episode": self._ep,
                }
            )
        )

    def restore(self, snapshot: dict[str, Any]) -> None:
        if not self.resettable:
            raise NotSupported(f"{self.name} cannot be restored: it is not resettable")
        if not isinstance(snapshot, dict) or snapshot.get("env") != self.name:
            raise ValueError(
                f"{self.name}: restore() needs a snapshot taken from a {self.name} env"
            )
        try:
            copy = json.loads(json.dumps(snapshot))
            config = self.config_type(**copy["config"])
            task = Task.from_json(copy["task"]) if copy["task"] is not None else None
            steps, done, episode = int(copy["steps"]), bool(copy["done"]), dict(copy["episode"])
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{self.name}: malformed snapshot ({error!r}); pass one taken by snapshot()"
            ) from None
        if task is not None and task.env != self.name:
            raise ValueError(f"{self.name}: the snapshot holds a task of {task.env!r}")
        self.config, self._task, self._ep = config, task, episode
        self._steps, self._done = steps, done
