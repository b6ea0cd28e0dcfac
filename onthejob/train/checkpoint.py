"""Training checkpoints and a run directory's bookkeeping: the one place that saves and
resumes the state of a training run (the optimizers are built in `onthejob.train.optim`).

Covers: saving model weights, optimizer and scheduler state, the step, RNG
states and a JSON-able `extra` dict into a directory, atomically (write a
temporary directory, then rename), and loading it back. A run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
Also what every training loop does around its steps: where a run starts
(`resume_run`: fresh, or from the checkpoint of the same config, with
metrics.jsonl cut back to it), and, for loops bounded by steps and a token budget
(`Budgeted`: OPSD and SFT), when to stop, log and checkpoint (`budget_left`,
`after_step`).

Not covered: the exported model directory that other stages load (see
`onthejob.models.save_model`).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch

CHECKPOINT = "checkpoint"


class CheckpointMismatch(ValueError):
    """A run directory to resume holds a checkpoint of another config."""


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write run_dir/checkpoint atomically and return its path."""
    final = run_dir / CHECKPOINT
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, "extra": extra or {}}))
    old = run_dir / f"{CHECKPOINT}.old"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to resume from, if any (also one left as .old by a kill mid-rename)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        path = run_dir / name
        if (path / "meta.json").is_file() and (path / "state.pt").is_file():
            return path
    return None


def checkpoint_meta(path: Path) -> tuple[int, dict[str, Any]]:
    """A checkpoint's (step, extra), read without touching any state."""
    meta = json.loads((path / "meta.json").read_text())
    return int(meta["step"]), dict(meta["extra"])


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[int, dict[str, Any]]:
    """Restore states in place; returns (step, extra)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return checkpoint_meta(path)


def truncate_log(log_path: Path, step: int) -> None:
    """Keep only the metric lines of steps <= step: a resumed run rewrites the steps after its
    checkpoint, and a line torn by a kill mid-write always lies after the checkpoint."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] <= step:
            kept.append(line)
    log_path.write_text("".join(line + "\n" for line in kept))


def resume_run(
    run_dir: Path,
    state: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config_key: str,
    resume: bool,
) -> tuple[int, dict[str, Any]]:
    """Where a run in run_dir starts, as (step, extra): (0, {}) for a fresh run, whose
    stale checkpoints are removed (a fresh run never resumes someone's old state);
    with `resume`, the latest checkpoint's step and extra, loaded into state, optimizer
    and scheduler in place. A checkpoint of another config is an error. Either way
    metrics.jsonl keeps only the lines up to the start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(run_dir)
    start, extra = 0, dict[str, Any]()
    if checkpoint is not None and not resume:
        for stale in (checkpoint, checkpoint.with_name(CHECKPOINT + ".old")):
            shutil.rmtree(stale, ignore_errors=True)
    elif checkpoint is not None:
        _, saved = checkpoint_meta(checkpoint)  # read before any state is touched
        if saved.get("config_key") != config_key:
            raise CheckpointMismatch(
                f"{run_dir} holds a run of another config; drop resume or pick another run dir"
            )
        start, extra = load_checkpoint(checkpoint, state, optimizer, scheduler)
    truncate_log(run_dir / "metrics.jsonl", start)
    return start, extra


class Budgeted(Protocol):
    """A loop config bounded by steps and, optionally, a token budget (OPSD, SFT)."""

    @property
    def steps(self) -> int: ...
    @property
    def token_budget(self) -> int | None: ...
    @property
    def log_every(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    def key(self) -> str: ...


def budget_left(config: Budgeted, step: int, tokens: int) -> bool:
    """Whether another step runs: steps remain and the token budget (if any) is not spent."""
    return step < config.steps and (config.token_budget is None or tokens < config.token_budget)


def after_step(
    config: Budgeted,
    run_dir: Path | None,
    state: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    record: dict[str, Any],
    history: list[dict[str, Any]],
    step: int,
    tokens: int,
) -> None:
    """The bookkeeping after `step` steps and `tokens` trained tokens: every log_every
    steps and at the last one, the record joins history and run_dir/metrics.jsonl;
    every checkpoint_every steps (0: never) and at the last one, a checkpoint that
    `resume_run` accepts (it carries the config key and the token count)."""
    last = not budget_left(config, step, tokens)
    if step % config.log_every == 0 or last:
        history.append(record)
        if run_dir is not None:
            with (run_dir / "metrics.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")
    every = config.checkpoint_every
    if run_dir is not None and every > 0 and (step % every == 0 or last):
        extra = {"config_key": config.key(), "tokens": tokens}
        save_checkpoint(run_dir, state, optimizer, None, step, extra)
