"""The run-directory bookkeeping every training loop shares (train/checkpoint.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from onthejob.train.checkpoint import (
    CheckpointMismatch,
    after_step,
    budget_left,
    latest_checkpoint,
    resume_run,
    save_checkpoint,
)


@dataclass(frozen=True)
class Loop:
    steps: int = 5
    token_budget: int | None = None
    log_every: int = 2
    checkpoint_every: int = 3

    def key(self) -> str:
        return f"loop-{self.steps}-{self.token_budget}"


def _state():
    model = torch.nn.Linear(2, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _steps(run_dir):
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_budget_ends_at_the_step_count_or_the_first_step_past_the_token_budget():
    assert budget_left(Loop(), 4, 10**9)
    assert not budget_left(Loop(), 5, 0)
    assert budget_left(Loop(token_budget=100), 1, 99)
    assert not budget_left(Loop(token_budget=100), 1, 100)


def test_after_step_logs_every_n_and_the_last_and_checkpoints_with_key_and_tokens(tmp_path):
    model, optimizer = _state()
    config, history = Loop(), []
    for step in range(1, 6):
        after_step(config, tmp_path, model, optimizer, {"step": step}, history, step, 10 * step)
    assert [r["step"] for r in history] == [2, 4, 5]
    assert _steps(tmp_path) == [2, 4, 5]
    meta = json.loads((latest_checkpoint(tmp_path) / "meta.json").read_text())
    assert meta == {"step": 5, "extra": {"config_key": config.key(), "tokens": 50}}


def test_resume_run_continues_the_same_config_and_cuts_the_log_back(tmp_path):
    model, optimizer = _state()
    config, history = Loop(checkpoint_every=2, log_every=1), []
    for step in range(1, 4):  # checkpoint at 2, log lines 1..3: step 3 is lost by a crash
        after_step(config, tmp_path, model, optimizer, {"step": step}, history, step, 7 * step)
    start, extra = resume_run(tmp_path, *_state(), None, config.key(), resume=True)
    assert (start, extra["tokens"]) == (2, 14)
    assert _steps(tmp_path) == [1, 2]
    other = torch.nn.Linear(3, 1)  # another config's shape: its state is never loaded
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointMismatch, match="another config"):
        resume_run(tmp_path, other, torch.optim.AdamW(other.parameters()), None, "x", resume=True)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_a_fresh_run_removes_a_stale_checkpoint(tmp_path):
    model, optimizer = _state()
    save_checkpoint(tmp_path, model, optimizer, None, 3, {"config_key": "old"})
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 3}\n')
    assert resume_run(tmp_path, *_state(), None, "new", resume=False) == (0, {})
    assert latest_checkpoint(tmp_path) is None
    assert _steps(tmp_path) == []
