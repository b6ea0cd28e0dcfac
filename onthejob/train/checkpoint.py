"""Training checkpoints and the optimizer: the one place that builds, saves and resumes
the optimizer state of a training run.

Covers: saving model weights, optimizer and scheduler state, the step, RNG
states and a JSON-able `extra` dict into a directory, atomically (write a
temporary directory, then rename), and loading it back. A run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.

Not covered: the exported model directory that other stages load (see
`onthejob.models.save_model`).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint"


def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (never on norms' gains or biases)."""
    params = list(params)
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
    )


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


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[int, dict[str, Any]]:
    """Restore states in place; returns (step, extra)."""
    state = torch.load(path / "state.pt", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    meta = json.loads((path / "meta.json").read_text())
    return int(meta["step"]), dict(meta["extra"])
