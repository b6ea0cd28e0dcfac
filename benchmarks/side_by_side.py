"""What the side-by-side benchmarks share: the model they run, the CPU they run on, and
how a trainer's steps are timed and compared.

Covers: picking the model (`--model`, the cached pretrained default, the newest cached
default of an older config, else a fresh `TinyConfig()` model with a tokenizer trained
on text the benchmark gives), left-padding prompts for HF `generate`, a warning when other processes load the CPU, the
callback that times a Hugging Face `Trainer`'s steps, the TRL arguments both TRL
peers run with (CPU, constant learning rate, AdamW (0.9, 0.99), no logging or saving)
and the settings read back from a TRL trainer, the per-step record of one side
(`SideResult`), the per-step statistic compared (median, first step left out as
warm-up) and the settings table printed above the numbers. Not covered: what each
benchmark runs; each script says so in its docstring.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from onthejob.cli import add_shape_flags, shape_from_flags
from onthejob.models import TinyConfig, build_model, save_model, train_tokenizer
from onthejob.train import ConfigError
from onthejob.train.pretrain import PretrainConfig, default_model_dir, onthejob_home


def prepare_process(threads: int) -> None:
    """Torch threads (0: torch's own choice), quiet HF loading, and a note if the CPU is busy."""
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores / 2:
        print(
            f"note: load average {load:.1f} on {cores} cores before starting: other processes "
            f"compete for the CPU; timings will be noisy"
        )


def resolve_model_dir(
    arg: str | None, scratch: Path, tokenizer_texts: Callable[[], list[str]]
) -> tuple[Path, str]:
    """The model to train and how it was chosen: --model, the cached default, or a fresh one
    (its tokenizer trained on tokenizer_texts(), its weights random)."""
    if arg:
        return Path(arg), "given"
    cached = default_model_dir()
    if cached.is_dir():
        return cached, "pretrained default"
    older = sorted((onthejob_home() / "models").glob("default-*"), key=lambda p: p.stat().st_mtime)
    if older:
        return older[-1], f"pretrained default of an older config ({cached.name} is not built)"
    path = scratch / "fresh-model"
    tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=PretrainConfig().vocab_size)
    save_model(build_model(TinyConfig(), tokenizer), tokenizer, path)
    return path, "fresh TinyConfig() model (no pretrained default is cached)"


LARGER = TinyConfig(
    hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=16, intermediate_size=2816
)
"""The GPU benchmarks' larger shape: 207.1M parameters with the default tokenizer."""


def parse_with_shape(
    parser: argparse.ArgumentParser, base: TinyConfig
) -> tuple[argparse.Namespace, TinyConfig]:
    """The parsed flags and the model shape the shape flags make of `base`
    (`onthejob.cli.add_shape_flags`, added here); a shape that cannot be built is a usage
    error naming the flag."""
    add_shape_flags(
        parser,
        f"{base.num_layers} blocks of width {base.hidden_size}, {base.num_heads} heads,"
        f" ffn {base.intermediate_size}",
    )
    args = parser.parse_args()
    try:
        return args, shape_from_flags(args, base)
    except ConfigError as e:
        parser.error(str(e))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded batch for HF `generate`: (input_ids, attention_mask)."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@dataclass
class SideResult:
    """What one trainer did, step by step (each benchmark adds what it records)."""

    name: str
    step_seconds: list[float] = field(default_factory=list)
    """Wall seconds of each optimizer step (sampling, forwards and update)."""
    completion_tokens: list[float] = field(default_factory=list)
    """Mean sampled tokens per sequence (end token included) of each step."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The trainer's own key settings, read back from it after construction."""
    total_seconds: float = 0.0
    """Wall seconds of the whole training call (setup and saving included)."""


def trl_cpu_arguments(
    out: Path, steps: int, rows_per_step: int, lr: float, seed: int
) -> dict[str, Any]:
    """The TRL config arguments both peers share: float32 on the CPU, one micro-batch of
    rows_per_step per step, AdamW (0.9, 0.99) at a constant rate with no warm-up, no weight
    decay, gradient clip 1.0, and no logging, saving, evaluation or progress bar."""
    return {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": rows_per_step,
        "gradient_accumulation_steps": 1,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.99,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": seed,
    }


def trl_optimizer_settings(trainer: Any) -> dict[str, Any]:
    """The optimiser settings a TRL trainer really runs with, read back from it."""
    schedule = getattr(trainer.args.lr_scheduler_type, "value", trainer.args.lr_scheduler_type)
    return {
        "lr, schedule": f"{trainer.args.learning_rate:g}, {schedule} (warmup {trainer.args.warmup_steps})",
        "AdamW betas, wd, clip": (
            f"({trainer.args.adam_beta1}, {trainer.args.adam_beta2}), "
            f"{trainer.args.weight_decay}, {trainer.args.max_grad_norm}"
        ),
        "dtype": str(next(trainer.model.parameters()).dtype),
    }


def step_clock(step_seconds: list[float]) -> Any:
    """A transformers TrainerCallback appending each optimizer step's wall seconds
    (on_step_begin to on_step_end) to step_seconds."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_seconds.append(time.perf_counter() - self.started)

    return StepClock()


def per_step_seconds(step_seconds: Sequence[float]) -> float:
    """Median seconds per step, the first (warm-up) step left out when there are more."""
    return statistics.median(step_seconds[1:] or step_seconds)


def print_settings(names: Sequence[str], settings: Sequence[Mapping[str, Any]]) -> None:
    """One row per setting of the first side, one column per side ('-' where a side lacks it)."""
    width = max(len(key) for key in settings[0]) + 2
    print(f"\n{'setting':{width}s}" + "".join(f"{name:>44s}" for name in names))
    for key in settings[0]:
        print(f"{key:{width}s}" + "".join(f"{str(s.get(key, '-')):>44s}" for s in settings))
    print()
