"""The reading proxy (benchmarks/reading_proxy.py) runs end to end at a tiny scale, and a
setting it cannot apply is a usage error that names the field."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reading_proxy.py"
TINY_MODEL = '{"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 48}'


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def test_the_proxy_reads_at_each_mark_and_copies_at_the_end(tmp_path):
    done = run(
        *("--steps", "4", "--evals", "2", "--n", "4", "--out", str(tmp_path)),
        *("--set", f"model={TINY_MODEL}", "--set", "tokenizer_sample=200"),
        *("--set", "vocab_size=400", "--set", "pools.arith=50", "--set", "value_weight=2"),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "proxy.json").read_text())
    assert [row["step"] for row in result["evals"]] == [2, 4]
    assert "one_item" in result["evals"][-1] and "one_item" not in result["evals"][0]
    assert all(0 <= row["reading"] <= 1 for row in result["evals"])
    config = json.loads((tmp_path / "model" / "pretrain_config.json").read_text())
    assert config["value_weight"] == 2 and config["model"]["num_layers"] == 1
    mixture = config["curriculum"]["mixture"]
    assert (mixture["knowledge"], mixture["program"], mixture["shop"]) == (0.8, 0.0, 0.0)


def test_a_setting_the_proxy_cannot_apply_is_named(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from reading_proxy import proxy_config

    config = proxy_config(1, 10, ["curriculum.short_fraction=0.4", "optimizer=adamw", "lr=1"])
    assert (config.seed, config.steps, config.optimizer, config.lr) == (1, 10, "adamw", 1)
    assert config.curriculum.short_fraction == 0.4 and config.curriculum.mixture.knowledge == 0.8
    for setting, message in (
        ("nope=1", "PretrainConfig has no field 'nope'"),
        ("curriculum.nope=1", "CurriculumConfig has no field 'nope'"),
        ("value_weight", "write FIELD=VALUE"),
        ("steps=-1", "steps must be > 0"),
        ('steps="x"', "PretrainConfig.steps takes a value of type int, got 'x'"),
        ("steps=1.5", "PretrainConfig.steps takes a value of type int, got 1.5"),
        ("bf16=1", "PretrainConfig.bf16 takes a value of type bool, got 1"),
        ("model=3", "PretrainConfig.model takes a value of type TinyConfig, got 3"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            proxy_config(0, 10, [setting])


def test_a_bad_setting_is_a_usage_error_before_any_work(tmp_path):
    done = run("--set", "nope=1", "--out", str(tmp_path))
    assert done.returncode == 2
    last = done.stderr.splitlines()[-1]
    assert "error: PretrainConfig has no field 'nope' (fields: batch_size, bf16," in last
    assert not list(tmp_path.iterdir())
