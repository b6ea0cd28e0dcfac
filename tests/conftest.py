"""Shared fixtures: a tiny tokenizer and model built in seconds (never the cached demo model)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from onthejob.models import TinyConfig, build_model, save_model, train_tokenizer

SAMPLE_TEXTS = [
    "the owner of billing is priya.",
    "who owns search? omar",
    "compute 12 + 7 * 3",
    "def f(x):\n    return x * 3 + 1",
    "search blue shirt\n[p317] blue cotton shirt size m $24",
    "tickets for auth are written ops-number.",
] * 40

TINY = TinyConfig(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=128,
    max_positions=256,
)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(SAMPLE_TEXTS, vocab_size=400)


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory, tokenizer):
    """The tiny random model with a 1024-position context, saved as a model directory
    (what a week of work serves: its replies are wrong, which exercises every path)."""
    path = tmp_path_factory.mktemp("served-model") / "model"
    save_model(build_model(replace(TINY, max_positions=1024), tokenizer, seed=0), tokenizer, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return build_model(TINY, tokenizer, seed=0).eval()
