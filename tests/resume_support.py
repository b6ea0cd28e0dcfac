"""Shared by the OPSD and SFT tests: a run that crashes mid-way and resumes must end
exactly where a straight run ends.

`crash_then_resume` runs the loop once straight, once with its step function raising
KeyboardInterrupt on the crash_at-th call (after a checkpoint), then once more with
resume=True in the crashed run's directory; it checks tokens, the trained adapter
weights and the metric lines, which must each appear once in step order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def crash_then_resume(
    run: Callable[[Path, bool], Any],
    module: Any,
    step_name: str,
    crash_at: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run(run_dir, resume) trains from scratch and returns a result with .tokens and .model;
    module.step_name is the per-step function to crash in."""
    straight = run(tmp_path / "straight", False)
    real_step = getattr(module, step_name)
    calls = []

    def crash(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(module, step_name, crash)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crashed", False)
    monkeypatch.setattr(module, step_name, real_step)
    resumed = run(tmp_path / "crashed", True)

    assert resumed.tokens == straight.tokens
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        if "lora" in name:
            torch.testing.assert_close(a, b, msg=name)
    lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
    expected = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [json.loads(x)["step"] for x in expected]
