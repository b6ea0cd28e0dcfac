"""`onthejob train`: GRPO-family RL with verifiable rewards on the grindable envs.

Covers: group-relative advantages, the clipped policy loss with three ways of
aggregating tokens, an optional k3 KL penalty to a reference, and the loop that
rolls out groups of G episodes per task (multi-turn, token in and token out,
see `onthejob.rollout`), drops or resamples groups whose rewards are all
equal, takes one gradient step per batch, checkpoints atomically and resumes
exactly, logs metrics (JSONL, TensorBoard, a progress bar), and evaluates
held-out success before and after training. Full fine-tuning by default;
LoRA with `GRPOConfig.lora`. Runs on the CPU or a GPU (`train(device=...)`),
in float32 or under bf16 autocast (`GRPOConfig.bf16`; weights and optimizer
state stay float32). For speed, the training forward runs each group's
shared prompt once (`onthejob.train.shared_prefix`) and the output head only at
the trained positions; no forward runs for old or reference log-probs unless
kl_coef > 0.

Not covered: process rewards, reward models, value functions (PPO), async or
off-policy rollouts (the sampler always runs the current weights),
multi-process or multi-GPU training, sequence packing. The update's metrics
(loss, entropy, clip fraction, log-prob mismatch) cover the kept groups only; a
step that keeps none logs 0 for them.

Departures from GRPO as written in DeepSeekMath (Shao et al. 2024):

- Advantages are the group's rewards minus their mean; dividing by the group's
  standard deviation is off by default (Dr. GRPO, Liu et al. 2025: it
  up-weights groups whose rewards barely differ). `scale_rewards=True` puts it
  back, as TRL does it: the unbiased std plus 1e-4.
- The ratio is clipped to [1 - clip_low, 1 + clip_high] with clip_high >
  clip_low (DAPO's clip-higher), not a symmetric epsilon.
- Token aggregation is a choice (`loss_type`, TRL's definitions): "grpo" is the
  paper's (mean over a sequence's tokens, then mean over sequences), "dapo"
  (the default) sums over every token of the batch and divides by their number,
  "dr_grpo" divides the sum by (sequences x the most agent tokens a sequence can
  have), a constant, so long answers are neither favoured nor penalised.
- The KL penalty is off by default (kl_coef = 0, as DAPO and Dr. GRPO); when on,
  it is the paper's k3 estimator added to each token's loss. The reference is
  the starting model: the adapter switched off under LoRA, a frozen copy under
  full fine-tuning. With kl_coef = 0 no reference exists and none is run.
- One gradient step per batch by default (epochs_per_batch = 1), so the policy
  that sampled is the policy being updated and the ratio is 1 up to float
  error. The old log-probs are always the sampler's own, computed under the
  same softmax(logits / temperature) as the trainer's (never recomputed by a
  second forward); their gap to the trainer's is logged as
  `logprob_mismatch`.
- Groups whose rewards are all equal carry no signal; they are dropped
  (`zero_variance="skip"`) or replaced by freshly drawn groups for up to
  `resample_rounds` rounds (DAPO's dynamic sampling, bounded).
- Episodes are multi-turn: one outcome reward per episode, shared by every
  agent token of it; observations and forced end-of-turn tokens are context,
  never trained (loss mask 0).
- Learning rate: linear warm-up, then constant.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from onthejob import evals
from onthejob.curriculum import available_tasks
from onthejob.envs import ENVS, Task, level_problem
from onthejob.models import bf16_autocast, load_model, model_device, save_model
from onthejob.models.fast import base_causal_lm
from onthejob.models.lora import LoraSettings, adapter_disabled, add_lora
from onthejob.rollout import ENV_TIMEOUT, Trajectory, run_groups
from onthejob.sampling import SamplingConfig
from onthejob.train import check_fields, config_key
from onthejob.train.checkpoint import resume_run, save_checkpoint
from onthejob.train.optim import adamw
from onthejob.train.pretrain import onthejob_home
from onthejob.train.shared_prefix import final_norm, shared_prefix_hidden, shared_prefix_supported

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
ZERO_VARIANCE = ("skip", "resample")
TRAIN_FIELDS = (
    "loss",
    "entropy",
    "clip_fraction",
    "clip_low_fraction",
    "clip_high_fraction",
    "logprob_mismatch",
    "logprob_mismatch_max",
    "grad_norm",
    "tokens_trained",
)
"""Metric fields of the update (0 on a step where no group was kept)."""
TIMING_FIELDS = ("tokens_per_s", "sampling_s", "env_s", "train_s", "step_s")
"""Metric fields that measure time; every other field is reproducible for a seed."""


@dataclass(frozen=True)
class GRPOConfig:
    """Everything that decides a GRPO run (hashed into the default run and output names)."""

    envs: tuple[str, ...] = ("arith", "program", "shop")
    """Environments to train on; each step's groups are spread across them."""
    steps: int = 60
    """Training steps (batches of rollouts)."""
    batch_size: int = 64
    """Rollouts per step (a multiple of group_size)."""
    group_size: int = 8
    """Rollouts per task (G): advantages are relative within a group."""
    max_new_tokens: int | None = None
    """Most tokens per agent turn; None: evals.MAX_NEW_TOKENS of each env."""
    max_turns: int | None = None
    """Most agent turns per episode; None: evals.MAX_TURNS of each env."""
    temperature: float = 0.6
    """Sampling temperature; the trainer's log-probs use the same logits / temperature. Below
    1 so that multi-step solutions (arith's counting) succeed often enough to give groups
    reward variance (at 1.0 the rollout reward fell to a third of the greedy success)."""
    top_p: float = 1.0
    """Nucleus sampling (1 = off); log-probs stay those of the untruncated distribution."""
    lr: float = 5e-5
    """Peak learning rate (AdamW); 2e-4 collapsed the counting policy (docs/results.md)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    warmup: int = 0
    """Linear warm-up, in optimizer steps; constant afterwards."""
    loss_type: str = "dapo"
    """Token aggregation: "grpo", "dr_grpo" or "dapo" (see policy_loss)."""
    clip_low: float = 0.2
    """The ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.28
    """The ratio is clipped above at 1 + clip_high."""
    scale_rewards: bool = False
    """Divide advantages by the group's reward std (the paper's GRPO); off as in Dr. GRPO."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the starting model (0: no reference, no extra forward)."""
    zero_variance: str = "skip"
    """Groups with all-equal rewards: "skip" them, or "resample" fresh groups in their place."""
    resample_rounds: int = 2
    """With zero_variance="resample": most extra rounds of rollouts per step."""
    epochs_per_batch: int = 1
    """Gradient steps on each batch (mu); 1 keeps training exactly on-policy."""
    micro_batch_size: int = 32
    """Rollouts per forward/backward; gradients accumulate over a batch."""
    bf16: bool = False
    """Autocast sampling, evaluation and the training forward to bfloat16 (weights,
    optimizer state and the loss stay float32): the choice on a GPU; on an AVX2-only CPU
    it is many times slower."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter instead of every weight."""
    difficulty: int = 1
    """Env difficulty level for training and evaluation."""
    seed: int = 0
    """Seeds task choice, sampling and LoRA initialisation (all pure functions of seed and step)."""
    checkpoint_every: int = 10
    """Steps between checkpoints (0: none)."""
    eval_n: int = 50
    """Held-out tasks per env evaluated before and after training (0: no evaluation)."""
    train_tasks: int = 1000
    """Train-split tasks drawn per env (fewer when the level has fewer)."""
    env_workers: int = 4
    """Threads stepping envs at once."""
    env_timeout: float = ENV_TIMEOUT
    """Seconds one env step may take before its episode ends with reward 0."""

    def __post_init__(self) -> None:
        problems = {
            "envs": not self.envs or any(e not in ENVS for e in self.envs),
            "steps": self.steps < 1,
            "group_size": self.group_size < 2,
            "batch_size": self.batch_size < self.group_size
            or self.batch_size % self.group_size != 0,
            "max_new_tokens": self.max_new_tokens is not None and self.max_new_tokens < 1,
            "max_turns": self.max_turns is not None and self.max_turns < 1,
            "temperature": not self.temperature > 0,
            "top_p": not 0 < self.top_p <= 1,
            "lr": not self.lr > 0,
            "weight_decay": self.weight_decay < 0,
            "grad_clip": not self.grad_clip > 0,
            "warmup": self.warmup < 0,
            "loss_type": self.loss_type not in LOSS_TYPES,
            "clip_low": not 0 <= self.clip_low < 1,
            "clip_high": self.clip_high < 0,
            "kl_coef": self.kl_coef < 0,
            "zero_variance": self.zero_variance not in ZERO_VARIANCE,
            "resample_rounds": self.resample_rounds < 0,
            "epochs_per_batch": self.epochs_per_batch < 1,
            "micro_batch_size": self.micro_batch_size < 1,
            "checkpoint_every": self.checkpoint_every < 0,
            "eval_n": self.eval_n < 0,
            "train_tasks": self.train_tasks < 1,
            "env_workers": self.env_workers < 1,
            "env_timeout": not self.env_timeout > 0,
            "difficulty": level_problem(self.envs, self.difficulty) is not None,
        }
        expected = {
            "envs": f"a non-empty subset of {', '.join(sorted(ENVS))}",
            "group_size": "at least 2 (advantages compare rollouts of a task)",
            "batch_size": f"a positive multiple of the group size ({self.group_size})",
            "temperature": "> 0 (the loss needs sampling log-probs)",
            "top_p": "in (0, 1]",
            "loss_type": " or ".join(LOSS_TYPES),
            "clip_low": "in [0, 1)",
            "zero_variance": " or ".join(ZERO_VARIANCE),
            "difficulty": "a level every chosen env has",
        }
        default = {name: ">= 0" if name in _NON_NEGATIVE else "> 0" for name in problems}
        check_fields(
            self, {name: (bad, expected.get(name, default[name])) for name, bad in problems.items()}
        )

    def key(self) -> str:
        """Short hash of the config (names the default run and output directories)."""
        return config_key(self)

    def new_tokens(self, env: str) -> int:
        return self.max_new_tokens or evals.MAX_NEW_TOKENS.get(env, 32)

    def turns(self, env: str) -> int:
        return self.max_turns or evals.MAX_TURNS.get(env, 4)


_NON_NEGATIVE = (
    "weight_decay",
    "warmup",
    "clip_high",
    "kl_coef",
    "resample_rounds",
    "checkpoint_every",
    "eval_n",
)


# ---------------------------------------------------------------------------- the loss


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False) -> torch.Tensor:
    """A_i = r_i - mean of its group (groups are consecutive runs of group_size rewards).

    With scale, A_i is further divided by (the group's unbiased std + 1e-4), as TRL does.
    """
    grouped = rewards.float().view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.reshape(-1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - policy.

    Unbiased and never negative (Schulman's k3, the GRPO paper's estimator); 0 where mask is 0.
    """
    d = ref_logprobs - logprobs
    return (torch.exp(d) - d - 1) * mask


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_tokens: float | torch.Tensor,
) -> torch.Tensor:
    """Reduce a per-token [B, T] quantity to a scalar the way `loss_type` says (see policy_loss)."""
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dapo":
        return masked.sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        return (masked.sum(-1) / max_tokens).sum() / len(masked)
    raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    loss_type: str = "dapo",
    max_tokens: float | torch.Tensor = 1.0,
    per_token_kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss of a batch; returns (loss, stats).

    Inputs are [B, T] per token (advantages [B], one per sequence; mask 1 on trained tokens).
    Per token, with ratio = exp(logprobs - old_logprobs):

        loss_t = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + kl_coef * kl_t

    and the tokens are aggregated (TRL's definitions):

    - "grpo":    mean over each sequence's tokens, then mean over the sequences;
    - "dapo":    sum over every token of the batch / number of those tokens;
    - "dr_grpo": sum over every token / (B * max_tokens); max_tokens is the most agent
                 tokens a sequence may have (a number, or [B] when sequences differ in it).

    stats: clip_fraction (share of tokens whose clipped branch was taken: ratio below
    1 - clip_low with A < 0, or above 1 + clip_high with A > 0), clip_low_fraction,
    clip_high_fraction, ratio_mean.
    """
    adv = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if per_token_kl is not None and kl_coef != 0:
        per_token = per_token + kl_coef * per_token_kl
    loss = aggregate(per_token, mask, loss_type, max_tokens)
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        low = ((ratio < 1 - clip_low) & (adv < 0)).float() * mask
        high = ((ratio > 1 + clip_high) & (adv > 0)).float() * mask
        stats = {
            "clip_fraction": float((low.sum() + high.sum()) / tokens),
            "clip_low_fraction": float(low.sum() / tokens),
            "clip_high_fraction": float(high.sum() / tokens),
            "ratio_mean": float((ratio * mask).sum() / tokens),
        }
    return loss, stats


def loss_share(loss_type: str, mask: torch.Tensor, batch_tokens: int, batch_rows: int) -> float:
    """Weight of one micro-batch's loss in the batch's: tokens for dapo, sequences otherwise."""
    if loss_type == "dapo":
        return float(mask.sum()) / max(1, batch_tokens)
    return len(mask) / batch_rows


# ---------------------------------------------------------------------------- log-probs


@dataclass
class MicroBatch:
    """Right-padded tensors of whole groups of trajectories; position t predicts token t + 1.

    With a shared prefix, each group's common prompt (all but its last token) is stored
    once in prefix_ids and input_ids hold the rest of each trajectory; without one,
    input_ids hold whole trajectories.
    """

    input_ids: torch.Tensor
    """[b, L] token ids after the group's prefix (padding after each sequence)."""
    targets: torch.Tensor
    """[b, L-1] the next token at each position."""
    mask: torch.Tensor
    """[b, L-1] bool: the target is a sampled agent token."""
    old_logprobs: torch.Tensor
    """[b, L-1] sampler log-probs of the targets (0 off the mask)."""
    advantages: torch.Tensor
    """[b] one per trajectory."""
    max_tokens: torch.Tensor
    """[b] most agent tokens the trajectory's env allows (dr_grpo's constant)."""
    prefix_ids: torch.Tensor | None = None
    """[n, P] each group's shared prefix, right-padded; None: no prefix sharing."""
    prefix_lengths: torch.Tensor | None = None
    """[n] length of each group's prefix."""
    group_of: torch.Tensor | None = None
    """[b] the group (row of prefix_ids) of each trajectory."""
    forward_tokens: int = 0
    """Real (unpadded) positions the forward runs: each shared prefix once, plus every
    trajectory's rest."""

    def to(self, device: torch.device) -> MicroBatch:
        """The same batch with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def collate(
    groups: Sequence[Sequence[Trajectory]],
    advantages: Sequence[Sequence[float]],
    max_tokens: Sequence[int],
    pad_id: int,
    share_prefix: bool = False,
) -> MicroBatch:
    """Pad groups of trajectories into one MicroBatch (ids and log-probs as sampled, never
    re-tokenized); max_tokens is per group. With share_prefix, each group's common prompt
    goes into the prefix once (see `onthejob.train.shared_prefix`)."""
    cuts = [_shared_prompt(group) - 1 if share_prefix else 0 for group in groups]
    rows = [
        (t, cut, g) for g, (group, cut) in enumerate(zip(groups, cuts, strict=True)) for t in group
    ]
    width = max(len(t.token_ids) - cut for t, cut, _ in rows)
    ids = [t.token_ids[cut:] + [pad_id] * (width - len(t.token_ids) + cut) for t, cut, _ in rows]
    pad = [[0] * (width - len(t.token_ids) + cut) for t, cut, _ in rows]
    mask = [t.loss_mask[cut + 1 :] + z for (t, cut, _), z in zip(rows, pad, strict=True)]
    old = [t.logprobs[cut + 1 :] + [0.0] * len(z) for (t, cut, _), z in zip(rows, pad, strict=True)]
    input_ids = torch.tensor(ids, dtype=torch.long)
    batch = MicroBatch(
        input_ids=input_ids,
        targets=input_ids[:, 1:],
        mask=torch.tensor(mask, dtype=torch.bool),
        old_logprobs=torch.tensor(old, dtype=torch.float32),
        advantages=torch.tensor([a for group in advantages for a in group], dtype=torch.float32),
        max_tokens=torch.tensor(
            [m for group, m in zip(groups, max_tokens, strict=True) for _ in group],
            dtype=torch.float32,
        ),
        forward_tokens=sum(len(t.token_ids) - cut for t, cut, _ in rows) + sum(cuts),
    )
    if share_prefix:
        longest = max(cuts)
        prefixes = [
            g[0].token_ids[:cut] + [pad_id] * (longest - cut)
            for g, cut in zip(groups, cuts, strict=True)
        ]
        batch.prefix_ids = torch.tensor(prefixes, dtype=torch.long).view(len(groups), longest)
        batch.prefix_lengths = torch.tensor(cuts, dtype=torch.long)
        batch.group_of = torch.tensor([g for _, _, g in rows], dtype=torch.long)
    return batch


def _shared_prompt(group: Sequence[Trajectory]) -> int:
    """Tokens every member starts with, up to the first agent token (at least 1)."""
    common = min(t.turns[0][0] if t.turns else len(t.token_ids) for t in group)
    head = group[0].token_ids
    for t in group[1:]:
        if t.token_ids[:common] != head[:common]:
            common = next(
                i for i, (a, b) in enumerate(zip(t.token_ids, head, strict=False)) if a != b
            )
    return max(1, common)


def masked_logprobs(
    model: torch.nn.Module,
    batch: MicroBatch,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [b, L-1] of the masked targets under softmax(logits / temperature), 0 elsewhere.

    The output head runs only at masked positions, and no attention mask is passed:
    right padding comes after every real token, so causal attention alone is exact for
    the positions used. A batch with a shared prefix runs through
    `shared_prefix_hidden`. Entropy (nats, [N] over masked positions) is from detached logits.
    """
    lm = base_causal_lm(model)  # PEFT's LoRA layers sit inside it, so an adapter counts
    body, head = getattr(lm, "model", None), lm.get_output_embeddings()
    if batch.prefix_ids is not None:
        assert batch.prefix_lengths is not None and batch.group_of is not None
        hidden = shared_prefix_hidden(
            model, batch.prefix_ids, batch.prefix_lengths, batch.input_ids, batch.group_of
        )
        logits = head(final_norm(model, hidden[:, :-1][batch.mask])).float()
    elif body is not None and head is not None:
        hidden = body(input_ids=batch.input_ids, use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][batch.mask]).float()
    else:  # any other causal LM: its own forward, then pick the positions
        logits = lm(input_ids=batch.input_ids, use_cache=False).logits[:, :-1][batch.mask].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch.targets[batch.mask]
    log_total = logits.logsumexp(-1)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1) - log_total
    out = torch.zeros(batch.mask.shape, dtype=picked.dtype, device=picked.device)
    out = out.masked_scatter(batch.mask, picked)
    entropy = None
    if with_entropy:  # H = logsumexp(z) - sum softmax(z) z: one exp, no log_softmax
        with torch.no_grad():
            z, lse = logits.detach(), log_total.detach()
            entropy = lse - (z - lse[:, None]).exp_().mul_(z).sum(-1)
    return out, entropy


# ---------------------------------------------------------------------------- the plan


def step_tasks(
    config: GRPOConfig, pools: dict[str, list[Task]], step: int, n_groups: int, round_: int = 0
) -> dict[str, list[Task]]:
    """The tasks of one round of one step's groups, per env: a pure function of (seed, step, round).

    Group j of the step goes to env (step * n_groups + j) mod len(envs), so envs share
    every step (and rotate when there are fewer groups than envs); each env's tasks are
    drawn without replacement from its train pool.
    """
    counts = dict.fromkeys(config.envs, 0)
    for j in range(n_groups):
        counts[config.envs[(step * n_groups + j + round_) % len(config.envs)]] += 1
    plan = {}
    for env, k in counts.items():
        if k == 0:
            continue
        rng = random.Random(f"grpo/{config.seed}/{step}/{round_}/{env}")
        pool = pools[env]
        plan[env] = rng.sample(pool, k) if k <= len(pool) else rng.choices(pool, k=k)
    return plan


def rollout_seed(config: GRPOConfig, step: int, round_: int, env: str) -> int:
    """Seed of the sampler and of the env copies of one (step, round, env)."""
    return random.Random(f"grpo-sample/{config.seed}/{step}/{round_}/{env}").randrange(2**31)


# ---------------------------------------------------------------------------- the loop


@dataclass
class Learner:
    """The model being trained and what updates it."""

    model: torch.nn.Module
    """The policy (a PeftModel under LoRA)."""
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: Any
    """LambdaLR: warm-up, then constant."""
    reference: torch.nn.Module | None = None
    """Frozen starting model for the KL under full fine-tuning (LoRA switches its adapter off)."""


@dataclass
class TrainResult:
    """Where a run's outputs are and what its evaluation found."""

    out_dir: Path
    """The trained model (HF directory) or, under LoRA, the adapter directory."""
    run_dir: Path
    """metrics.jsonl, tb/, eval.json, checkpoint/."""
    eval_before: dict[str, float] = field(default_factory=dict)
    """Held-out success per env before training."""
    eval_after: dict[str, float] = field(default_factory=dict)
    """Held-out success per env after training."""
    eval_n: dict[str, int] = field(default_factory=dict)
    """Held-out tasks played per env."""


def evaluate(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: GRPOConfig
) -> tuple[dict[str, float], dict[str, int]]:
    """Greedy held-out success per env (evals.env_success at the config's difficulty)."""
    rates, played = {}, {}
    with bf16_autocast(model_device(model), enabled=config.bf16):
        for env in config.envs:
            rates[env], played[env] = evals.env_success(
                model, tokenizer, env, n=config.eval_n, difficulty=config.difficulty
            )
    return rates, played


def default_run_dir(config: GRPOConfig, model_dir: Path) -> Path:
    return onthejob_home() / "runs" / f"grpo-{_run_key(config, model_dir)}"


def default_out_dir(config: GRPOConfig, model_dir: Path) -> Path:
    kind = "grpo-lora" if config.lora is not None else "grpo"
    return onthejob_home() / "models" / f"{kind}-{_run_key(config, model_dir)}"


def _run_key(config: GRPOConfig, model_dir: Path) -> str:
    blob = f"{config.key()}/{Path(model_dir).resolve()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train(
    config: GRPOConfig,
    model_dir: Path,
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    device: str = "cpu",
) -> TrainResult:
    """Run GRPO from the model at model_dir; save the result to out_dir and return where it is.

    `device` places the model and the work (cpu, cuda, cuda:1...); it is not part of
    the config, so a run may resume on another device.

    A full fine-tune is saved as a HF model directory (`load_model(out_dir)`); a LoRA run
    as a PEFT adapter directory (`load_adapter(load_model(model_dir)[0], out_dir)`).
    """
    model_dir = Path(model_dir)
    run_dir = run_dir or default_run_dir(config, model_dir)
    out_dir = out_dir or default_out_dir(config, model_dir)
    base, tokenizer = load_model(model_dir, device=device)
    model: PreTrainedModel | PeftModel = base
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    reference: torch.nn.Module | None = None
    if config.lora is not None:
        model = add_lora(base, config.lora)
    elif config.kl_coef > 0:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, config.lr, config.weight_decay, betas=(0.9, 0.99))
    warmup = config.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )

    start, _ = resume_run(run_dir, model, optimizer, scheduler, config.key(), resume)
    log_path = run_dir / "metrics.jsonl"
    eval_path = run_dir / "eval.json"
    record_eval: dict[str, Any] = {}
    if start > 0 and eval_path.is_file():
        record_eval = json.loads(eval_path.read_text())
    if config.eval_n > 0 and "before" not in record_eval:
        before, played = evaluate(model, tokenizer, config)
        record_eval = {"difficulty": config.difficulty, "n": played, "before": before}
        eval_path.write_text(json.dumps(record_eval, indent=2))

    pools = {
        env: available_tasks(env, "train", config.train_tasks, config.seed, config.difficulty)
        for env in config.envs
    }
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1)
    learner = Learner(model, tokenizer, optimizer, scheduler, reference)
    with (
        Progress(
            TextColumn("grpo"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} reward {task.fields[reward]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
        ) as progress,
        log_path.open("a") as log,
    ):
        bar = progress.add_task("grpo", total=config.steps, completed=start, reward=float("nan"))
        for step in range(start, config.steps):
            record = grpo_step(config, learner, pools, step)
            log.write(json.dumps(record) + "\n")
            log.flush()
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float):
                    writer.add_scalar(name, value, step + 1)
            progress.update(bar, advance=1, reward=record["reward"])
            every = config.checkpoint_every
            if every > 0 and ((step + 1) % every == 0 or step + 1 == config.steps):
                save_checkpoint(
                    run_dir, model, optimizer, scheduler, step + 1, {"config_key": config.key()}
                )
    writer.close()

    model.eval()
    result = TrainResult(out_dir=out_dir, run_dir=run_dir)
    save_model(model, tokenizer, out_dir)  # under LoRA: the adapter directory only
    (out_dir / "grpo_config.json").write_text(
        json.dumps({"base_model": str(model_dir.resolve()), **asdict(config)}, indent=2)
    )
    if config.eval_n > 0:
        after, played = evaluate(model, tokenizer, config)
        record_eval["after"] = after
        eval_path.write_text(json.dumps(record_eval, indent=2))
        result.eval_before, result.eval_after = record_eval["before"], after
        result.eval_n = played
    return result


def grpo_step(
    config: GRPOConfig, learner: Learner, pools: dict[str, list[Task]], step: int
) -> dict[str, Any]:
    """Roll out, score, and update once; returns the step's metrics record."""
    started = time.perf_counter()
    clock: dict[str, float] = {}
    n_groups = config.batch_size // config.group_size
    played: list[Trajectory] = []
    kept: list[tuple[list[Trajectory], torch.Tensor]] = []
    skipped = 0
    rounds = 1 + (config.resample_rounds if config.zero_variance == "resample" else 0)
    for round_ in range(rounds):
        plan = step_tasks(config, pools, step, n_groups - len(kept), round_)
        for env, tasks in plan.items():
            seed = rollout_seed(config, step, round_, env)
            sampling = SamplingConfig(
                max_new_tokens=config.new_tokens(env),
                temperature=config.temperature,
                top_p=config.top_p,
                seed=seed,
            )
            with bf16_autocast(model_device(learner.model), enabled=config.bf16):
                groups = run_groups(
                    learner.model,
                    learner.tokenizer,
                    env,
                    tasks,
                    config.group_size,
                    sampling,
                    max_turns=config.turns(env),
                    env_config={"difficulty": config.difficulty},
                    seed=seed,
                    env_workers=config.env_workers,
                    env_timeout=config.env_timeout,
                    clock=clock,
                )
            for group in groups:
                played += group
                rewards = torch.tensor([t.reward for t in group])
                if bool((rewards == rewards[0]).all()):
                    skipped += 1
                else:
                    kept.append(
                        (group, group_advantages(rewards, len(group), config.scale_rewards))
                    )
        if len(kept) == n_groups:
            break

    train_started = time.perf_counter()
    stats = train_on_groups(config, learner, kept)
    train_s = time.perf_counter() - train_started
    step_s = time.perf_counter() - started

    generated = sum(sum(t.loss_mask) for t in played)
    record: dict[str, Any] = {"step": step + 1, "reward": _mean([t.reward for t in played])}
    for env in config.envs:
        successes = [t.success for t in played if t.env == env]
        if successes:
            record[f"pass_rate/{env}"] = _mean(successes)
    record.update(stats)
    record.update(
        {
            "groups_kept": len(kept),
            "groups_skipped": skipped,
            "rollouts": len(played),
            "env_errors": sum(t.end_reason.startswith("env ") for t in played),
            "tokens_generated": generated,
            "lr": learner.scheduler.get_last_lr()[0],
            "tokens_per_s": round(generated / max(step_s, 1e-9), 1),
            "sampling_s": round(clock.get("sampling", 0.0), 4),
            "env_s": round(clock.get("env", 0.0), 4),
            "train_s": round(train_s, 4),
            "step_s": round(step_s, 4),
        }
    )
    return record


def train_on_groups(
    config: GRPOConfig, learner: Learner, groups: list[tuple[list[Trajectory], torch.Tensor]]
) -> dict[str, float]:
    """epochs_per_batch optimizer steps on the kept groups; returns loss and diagnostics.

    With no group kept, nothing steps (the schedule counts optimizer steps) and every
    field is 0.
    """
    model, optimizer = learner.model, learner.optimizer
    if not groups:
        return dict.fromkeys(TRAIN_FIELDS + (("kl",) if config.kl_coef > 0 else ()), 0.0)
    device = model_device(model)
    batches = [batch.to(device) for batch in micro_batches(config, learner, groups)]
    n_rows = sum(len(group) for group, _ in groups)
    batch_tokens = sum(int(b.mask.sum()) for b in batches)
    mismatch_sum, mismatch_max, entropy_sum, kl_sum, loss_sum = 0.0, 0.0, 0.0, 0.0, 0.0
    totals: dict[str, float] = {}
    grad_norm = torch.zeros(())
    model.train()
    for epoch in range(config.epochs_per_batch):
        optimizer.zero_grad(set_to_none=True)
        first = epoch == 0
        for batch in batches:
            with bf16_autocast(device, enabled=config.bf16):  # the loss below is float32
                logprobs, entropy = masked_logprobs(model, batch, config.temperature, first)
                ref_logprobs = None
                if config.kl_coef > 0:
                    ref_logprobs = reference_logprobs(learner, batch, config.temperature)
            mask = batch.mask.float()
            per_token_kl = None
            if ref_logprobs is not None:
                per_token_kl = kl_k3(logprobs, ref_logprobs, mask)
            loss, stats = policy_loss(
                logprobs,
                batch.old_logprobs,
                batch.advantages,
                mask,
                config.clip_low,
                config.clip_high,
                config.loss_type,
                batch.max_tokens,
                per_token_kl,
                config.kl_coef,
            )
            share = loss_share(config.loss_type, batch.mask, batch_tokens, n_rows)
            (loss * share).backward()
            tokens = float(mask.sum())
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value * tokens
            if first:
                loss_sum += float(loss.detach()) * share
                gap = (logprobs.detach() - batch.old_logprobs)[batch.mask].abs()
                mismatch_sum += float(gap.sum())
                mismatch_max = max(mismatch_max, float(gap.max()) if len(gap) else 0.0)
                entropy_sum += float(entropy.sum()) if entropy is not None else 0.0
                if per_token_kl is not None:
                    kl_sum += float(per_token_kl.detach().sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], config.grad_clip
        )
        optimizer.step()
        learner.scheduler.step()
    model.eval()
    tokens = max(1, batch_tokens)
    all_tokens = tokens * config.epochs_per_batch
    record = {
        "loss": round(loss_sum, 6),
        "entropy": round(entropy_sum / tokens, 6),
        "clip_fraction": round(totals.get("clip_fraction", 0.0) / all_tokens, 6),
        "clip_low_fraction": round(totals.get("clip_low_fraction", 0.0) / all_tokens, 6),
        "clip_high_fraction": round(totals.get("clip_high_fraction", 0.0) / all_tokens, 6),
        "logprob_mismatch": round(mismatch_sum / tokens, 8),
        "logprob_mismatch_max": round(mismatch_max, 8),
        "grad_norm": round(float(grad_norm), 6),
        "tokens_trained": sum(batch.forward_tokens for batch in batches),
    }
    if config.kl_coef > 0:
        record["kl"] = round(kl_sum / tokens, 8)
    return record


def micro_batches(
    config: GRPOConfig, learner: Learner, groups: list[tuple[list[Trajectory], torch.Tensor]]
) -> list[MicroBatch]:
    """Whole groups, sorted by length, packed into micro-batches of at most micro_batch_size
    rows (at least one group each); prompts shared when the model allows it."""
    ordered = sorted(groups, key=lambda ga: max(len(t.token_ids) for t in ga[0]))
    longest = max(len(t.token_ids) for group, _ in groups for t in group)
    share = shared_prefix_supported(learner.model, longest)
    pad_id = learner.tokenizer.pad_token_id or 0
    Group = tuple[list[Trajectory], torch.Tensor]
    batches: list[list[Group]] = [[]]
    for item in ordered:
        rows = sum(len(group) for group, _ in batches[-1])
        if batches[-1] and rows + len(item[0]) > config.micro_batch_size:
            batches.append([])
        batches[-1].append(item)
    return [
        collate(
            [g for g, _ in chunk],
            [a.tolist() for _, a in chunk],
            [config.new_tokens(g[0].env) * config.turns(g[0].env) for g, _ in chunk],
            pad_id,
            share_prefix=share,
        )
        for chunk in batches
    ]


def reference_logprobs(learner: Learner, batch: MicroBatch, temperature: float) -> torch.Tensor:
    """Log-probs of the batch under the starting model: the adapter switched off, or the copy."""
    with torch.no_grad():
        if learner.reference is not None:
            return masked_logprobs(learner.reference, batch, temperature)[0]
        with adapter_disabled(learner.model) as base:
            return masked_logprobs(base, batch, temperature)[0]


def _mean(values: Sequence[float | bool]) -> float:
    return round(sum(float(v) for v in values) / len(values), 6) if values else math.nan
