"""The settings every sleep method's weight update shares: one home for them.

Covers: `UpdateConfig`, the optimisation and bookkeeping fields that OPSD
(`onthejob.train.opsd.OPSDConfig`) and the SFT baselines (`onthejob.train.sft.SFTConfig`)
both have (steps, batch, AdamW, LoRA, gradient clip, micro-batches, token budget, seed,
logging, checkpoints), their checks, and the config hash; and `UpdateResult`, what
either method's run returns. The methods' own configs
extend it with what only they have (OPSD's divergence and teacher, SFT's cut length)
and may change a default (each method's learning rate).

Not covered: GRPO's config (`onthejob.train.grpo.GRPOConfig`), whose update is an RL
step with its own sampling and clipping, and pretraining's (`PretrainConfig`).

Why a shared base: the gate compares methods at the same budget, so the fields that
set the budget and the update must mean the same thing in every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onthejob.models import LoraSettings
from onthejob.train import check_fields, config_key


@dataclass(frozen=True)
class UpdateConfig:
    """Steps, optimiser, adapter and bookkeeping of a sleep method's update."""

    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 8
    """Probes (OPSD) or examples (SFT) per step, drawn without replacement, epoch after epoch."""
    lr: float = 2e-4
    """Learning rate (AdamW, constant)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    lora: bool = True
    """Train a LoRA adapter (default) instead of every weight."""
    lora_rank: int = 4
    """LoRA rank. On the default model, OPSD sleeps at orgs 24-26 kept the arith guard with
    rank 4 (+4, 0, +4 points) where rank 16 lost it (-6, -6, +2), for the same recall; at
    orgs 27-28 rank 4 still lost 2-4 points (docs/results.md)."""
    lora_alpha: float = 8.0
    """LoRA scale numerator (the update is multiplied by alpha / rank: 2, as at rank 16)."""
    update_share: float = 1.0
    """Share of the trained change the result keeps: the saved weights are before +
    update_share x (after - before), WiSE-FT's weight-space interpolation
    (`models.keep_share`; exact for full weights and a fresh adapter, at the adapter's
    rank for one trained further). 1: the weights as trained. Below 1 a copy of the
    trainable weights is kept through the run (all of them under full fine-tuning).
    Not the sleep's default: at held-out orgs 64-67, 0.75 cost 7 points of recall for a
    point of arithmetic, and the shop lost as much (docs/results.md, session 18)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    micro_batch_size: int = 16
    """Samples (OPSD) or examples (SFT) per forward/backward; gradients accumulate over a step."""
    token_budget: int | None = None
    """Stop after the step that brings the tokens trained on to this many (None: all steps)."""
    seed: int = 0
    """Seeds the order of probes or examples, sampling and the adapter's initialisation."""
    log_every: int = 1
    """Steps between metric lines (the last step is always logged)."""
    checkpoint_every: int = 0
    """Steps between checkpoints in run_dir (0: none)."""

    def problems(self) -> dict[str, tuple[bool, str]]:
        """Per field: (whether its value is wrong, what it must be). Subclasses add theirs."""
        return {
            "steps": (self.steps < 1, "> 0"),
            "batch_size": (self.batch_size < 1, "> 0"),
            "lr": (not self.lr > 0, "> 0"),
            "weight_decay": (self.weight_decay < 0, ">= 0"),
            "lora_rank": (self.lora_rank < 1, "> 0"),
            "lora_alpha": (not self.lora_alpha > 0, "> 0"),
            "update_share": (not 0 < self.update_share <= 1, "in (0, 1]"),
            "grad_clip": (not self.grad_clip > 0, "> 0"),
            "micro_batch_size": (self.micro_batch_size < 1, "> 0"),
            "token_budget": (
                self.token_budget is not None and self.token_budget < 1,
                "> 0 (or unset: no budget)",
            ),
            "log_every": (self.log_every < 1, "> 0"),
            "checkpoint_every": (self.checkpoint_every < 0, ">= 0"),
        }

    def __post_init__(self) -> None:
        check_fields(self, self.problems())

    def lora_settings(self) -> LoraSettings | None:
        """The adapter to train, or None for full fine-tuning."""
        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha) if self.lora else None

    def key(self) -> str:
        """Short hash of the config (every field, the subclass's included)."""
        return config_key(self)


@dataclass
class UpdateResult:
    """What an OPSD or SFT run produced."""

    model: torch.nn.Module
    """The trained model: a PeftModel under LoRA (the caller's model, adapter injected)."""
    steps: int
    """Optimizer steps taken (fewer than config.steps when the token budget ran out)."""
    tokens: int
    """Tokens trained on over all steps: OPSD's sampled tokens, SFT's trained targets
    (the gate compares methods at the same count)."""
    seconds: float
    """Wall seconds of the loop."""
    metrics: dict[str, Any]
    """The last step's metrics."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every logged step's metrics."""
    out_dir: Path | None = None
    """Where the adapter (or the full model) was saved."""
    run_dir: Path | None = None
    """metrics.jsonl and checkpoint/."""
    share_error: float = 0.0
    """Relative error of keeping `update_share` of an adapter trained further at its rank
    (`models.keep_share`); 0.0 when exact."""
