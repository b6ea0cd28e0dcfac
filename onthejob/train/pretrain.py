"""`onthejob pretrain`: train the tiny default model from scratch on the curriculum.

Covers: the tokenizer built from a sample of the curriculum, the model built
from `TinyConfig`, a weighted next-token loss (full weight on the trained
assistant turns, `context_weight` on every other token), Muon on the blocks'
matrices and AdamW on the rest (or AdamW alone) with warm-up and cosine decay,
bf16 autocast, the CPU or a GPU (`device`), periodic atomic checkpoints and exact
resume (batch k is a pure function of (seed, k)), a progress bar, and the
finished model saved as a Hugging Face directory in the cache.

Not covered: evaluation (`onthejob.evals`), RL (`onthejob.train.grpo`).

Departure from plain LM pretraining: the loss is weighted per token, not
uniform (context tokens light, the replies full, and the part of a reply read
from the context, its value, heavier); documents grow from short to long over
training (see curriculum).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from onthejob import curriculum
from onthejob.curriculum import CurriculumConfig, EpisodePools
from onthejob.models import (
    TinyConfig,
    bf16_autocast,
    build_model,
    check_device,
    render_chat,
    save_model,
    train_tokenizer,
)
from onthejob.models.tokenizer import SPECIAL_TOKENS, encode_text
from onthejob.train import check_fields
from onthejob.train.checkpoint import latest_checkpoint, resume_run, save_checkpoint
from onthejob.train.optim import adamw, muon_adamw

CURRICULUM_VERSION = "6"
OPTIMIZERS = ("muon", "adamw")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides the pretrained model (it is hashed into the cache key)."""

    steps: int = 1400
    """Optimizer steps (the default run fits 6 minutes on 2 CPU cores: 1,480 took 350-370 s
    on session 12's machine, too close to the bar)."""
    batch_size: int = 8
    """Examples per step: the same examples in 4x the steps of batch 32 read their context
    at 0.30 where batch 32 read at 0.10 (docs/results.md: the copy skill forms after a
    number of updates, not of examples)."""
    lr: float = 1e-3
    """Peak learning rate (3e-3 learned single-digit sums and reading more slowly: docs/results.md)."""
    warmup_steps: int = 20
    """Linear warm-up steps before cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.05
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    context_weight: float = 0.1
    """Loss weight of tokens outside the trained assistant turns."""
    value_weight: float = 4.0
    """Loss weight of the tokens of a trained reply that had to be read from the context
    (`curriculum.Example.value_spans`: a knowledge reply's quoted value), the one part of
    the reply that needs the right line. 4 against 1 read 0.66 / 0.685 against 0.565 /
    0.585 on the knowledge-heavy proxy (seeds 0, 1), and 0.72 against 0.55 on the whole
    curriculum (0.65 in a second run; docs/results.md, session 15)."""
    max_len: int = 640
    """Examples are cut to this many tokens."""
    vocab_size: int = 1536
    """BPE vocabulary size."""
    tokenizer_sample: int = 3000
    """Curriculum examples the tokenizer is trained on."""
    bf16: bool = False
    """Autocast to bfloat16: the choice on a GPU; on a CPU faster only with AVX512-BF16 or
    AMX (on AVX2-only CPUs it is ~40x slower)."""
    micro_batches: int = 2
    """Each batch is sorted by length and split into this many micro-batches, each padded to
    its own longest example (less padding than one micro-batch; at batch 32, 4 computed 1.19x
    the real tokens where 2 computed 1.44x)."""
    optimizer: str = "muon"
    """"muon": Muon on the blocks' matrices, AdamW on the rest (`train.optim.muon_adamw`; the
    copy skill forms in about half the steps); "adamw": AdamW on everything."""
    seed: int = 0
    """Seed of data, initialisation and sampling."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    model: TinyConfig = field(default_factory=TinyConfig)
    """Model shape."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Data mixture and document growth."""
    pools: EpisodePools = field(default_factory=EpisodePools)
    """Sizes of the pools of solved environment episodes."""

    def __post_init__(self) -> None:
        problems = {
            "steps": (self.steps < 1, "> 0"),
            "batch_size": (self.batch_size < 1, "> 0"),
            "lr": (not self.lr > 0, "> 0"),
            "warmup_steps": (self.warmup_steps < 0, ">= 0"),
            "min_lr_ratio": (not 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            "weight_decay": (self.weight_decay < 0, ">= 0"),
            "grad_clip": (not self.grad_clip > 0, "> 0"),
            "context_weight": (self.context_weight < 0, ">= 0"),
            "value_weight": (self.value_weight < 0, ">= 0"),
            "max_len": (self.max_len < 2, ">= 2 (a token and the one it predicts)"),
            "vocab_size": (
                self.vocab_size <= len(SPECIAL_TOKENS) + 256,
                "> 262 (bytes and special tokens)",
            ),
            "micro_batches": (self.micro_batches < 1, "> 0"),
            "optimizer": (self.optimizer not in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            "checkpoint_every": (self.checkpoint_every < 1, "> 0"),
        }
        check_fields(self, problems)

    def key(self) -> str:
        """Short hash of the config and curriculum version (the cache key)."""
        blob = json.dumps({"v": CURRICULUM_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def onthejob_home() -> Path:
    """Where caches and runs live: $ONTHEJOB_HOME, else ~/.cache/onthejob."""
    return Path(os.environ.get("ONTHEJOB_HOME", Path.home() / ".cache" / "onthejob"))


def default_model_dir(config: PretrainConfig | None = None) -> Path:
    """The cached pretrained model of this config."""
    return onthejob_home() / "models" / f"default-{(config or PretrainConfig()).key()}"


def weighted_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum_t w_t * CE(logits_t, target_t) / sum_t w_t (positions with w_t = 0 do not count)."""
    ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    w = weights.reshape(-1).float()
    return (ce * w).sum() / w.sum().clamp(min=1e-8)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    example: curriculum.Example,
    context_weight: float,
    max_len: int,
    value_weight: float = 1.0,
) -> tuple[list[int], list[float]]:
    """Token ids and per-token loss weights (weight i is for predicting token i; token 0 gets 0):
    1 on trained turns, value_weight on their value spans, context_weight elsewhere."""
    chat = render_chat(tokenizer, list(example.messages))
    weights = [context_weight] * len(chat.ids)
    weights[0] = 0.0
    for (role, start, stop), trained in zip(chat.spans, example.trained, strict=True):
        if trained:
            if role != "assistant":
                raise ValueError(f"only assistant turns can be trained, got {role}")
            for i in range(start, stop):
                weights[i] = 1.0
    if value_weight != 1.0:
        for message, lo, hi in example.value_spans:
            if not example.trained[message]:
                raise ValueError(f"value span in message {message}, which is not trained")
            _, start, stop = chat.spans[message]
            content = example.messages[message]["content"]
            first, last = value_tokens(tokenizer, content, chat.ids[start : stop - 1], lo, hi)
            weights[start + first : start + last] = [value_weight] * (last - first)
    return chat.ids[:max_len], weights[:max_len]


def value_tokens(
    tokenizer: PreTrainedTokenizerBase, content: str, ids: list[int], lo: int, hi: int
) -> tuple[int, int]:
    """Token positions [first, last) in ids (content's encoding) of content's characters
    [lo, hi). Raises ValueError when the span does not begin and end on token boundaries."""
    head, upto = encode_text(tokenizer, content[:lo]), encode_text(tokenizer, content[:hi])
    if ids[: len(head)] != head or ids[: len(upto)] != upto:
        raise ValueError(
            f"value span {lo}:{hi} of {content!r} cuts a token; spans must start and end"
            " between tokens"
        )
    return len(head), len(upto)


def collate(
    rows: list[tuple[list[int], list[float]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, targets, weights) for next-token training."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    weights = torch.zeros((len(rows), width))
    for r, (ids, w) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        weights[r, : len(w)] = torch.tensor(w)
    return input_ids[:, :-1], mask[:, :-1], input_ids[:, 1:], weights[:, 1:]


def lr_at(step: int, config: PretrainConfig) -> float:
    """Warm-up then cosine decay to min_lr_ratio, as a multiplier of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def build_pools(config: PretrainConfig) -> dict[str, list[curriculum.Example]]:
    """The solved-episode pools for every environment kind with a non-zero share."""
    names, weights = config.curriculum.mixture.kinds()
    pools = {}
    for name, share in zip(names, weights, strict=True):
        size = getattr(config.pools, name, 0)
        if share > 0 and size > 0:
            pools[name] = curriculum.build_pool(
                name, size, seed=config.seed, difficulties=config.pools.levels(name)
            )
    return pools


def build_tokenizer(config: PretrainConfig, data: curriculum.Curriculum) -> PreTrainedTokenizerBase:
    """Train the BPE tokenizer on a sample of the curriculum (late progress: long documents)."""
    texts: list[str] = []
    for i in range(config.tokenizer_sample):
        example = data.example(10**9 + i, progress=1.0)
        texts.extend(m["content"] for m in example.messages)
    return train_tokenizer(texts, vocab_size=config.vocab_size)


def pretrain(
    config: PretrainConfig,
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    resume: bool = True,
    show_progress: bool = True,
    on_step: Callable[[int, torch.nn.Module, PreTrainedTokenizerBase], None] | None = None,
    device: str = "cpu",
) -> Path:
    """Train and save the model to out_dir (default: the cache); returns out_dir.

    `device` only places the work (cpu, cuda, cuda:1...); it is not part of the cache key.
    """
    where = check_device(device)
    out_dir = out_dir or default_model_dir(config)
    run_dir = run_dir or onthejob_home() / "runs" / f"pretrain-{config.key()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    pools = build_pools(config)
    data = curriculum.Curriculum(config.curriculum, pools, seed=config.seed)
    tokenizer_dir = run_dir / "tokenizer"
    tokenizer: PreTrainedTokenizerBase
    if resume and (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        tokenizer = build_tokenizer(config, data)
        tokenizer.save_pretrained(tokenizer_dir)
    model = build_model(config.model, tokenizer, seed=config.seed)
    model.to(where)  # type: ignore[arg-type]  # transformers types .to as a model's
    if config.optimizer == "muon":
        optimizer: torch.optim.Optimizer = muon_adamw(
            model, config.lr, config.weight_decay, betas=(0.9, 0.95)
        )
    else:
        optimizer = adamw(model.parameters(), config.lr, config.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config))

    start, _ = resume_run(run_dir, model, optimizer, scheduler, config.key(), resume)
    log_path = run_dir / "metrics.jsonl"
    model.train()
    pad_id = tokenizer.pad_token_id
    t0 = time.time()
    tokens_seen = 0
    with (
        Progress(
            TextColumn("pretrain"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
        ) as progress,
        log_path.open("a") as log,
    ):
        bar = progress.add_task("pretrain", total=config.steps, completed=start, loss=float("nan"))
        for step in range(start, config.steps):
            rows = [
                encode_example(
                    tokenizer,
                    data.example(step * config.batch_size + i, step / config.steps),
                    config.context_weight,
                    config.max_len,
                    config.value_weight,
                )
                for i in range(config.batch_size)
            ]
            rows.sort(key=lambda row: len(row[0]))
            total_weight = sum(sum(w[1:]) for _, w in rows)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            per_micro = math.ceil(len(rows) / config.micro_batches)
            for lo in range(0, len(rows), per_micro):
                batch = collate(rows[lo : lo + per_micro], pad_id)
                input_ids, mask, targets, weights = (t.to(where) for t in batch)
                with bf16_autocast(where, enabled=config.bf16):
                    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                share = float(weights.sum()) / total_weight
                loss = weighted_lm_loss(logits, targets, weights) * share
                loss.backward()
                loss_sum += loss.item()
                tokens_seen += int(mask.sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            record = {
                "step": step + 1,
                "loss": round(loss_sum, 5),
                "grad_norm": round(float(grad_norm), 4),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": round(tokens_seen / max(1e-9, time.time() - t0)),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            progress.update(bar, advance=1, loss=record["loss"])
            if on_step is not None:
                on_step(step + 1, model, tokenizer)
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                log.flush()
                save_checkpoint(
                    run_dir, model, optimizer, scheduler, step + 1, {"config_key": config.key()}
                )
    model.eval()
    save_model(model, tokenizer, out_dir)
    (out_dir / "pretrain_config.json").write_text(json.dumps(asdict(config), indent=2))
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        shutil.rmtree(checkpoint)
    return out_dir
