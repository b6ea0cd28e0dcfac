"""Supervised fine-tuning: the baselines that OPSD must beat at the same token budget.

Covers: `sft`, next-token cross-entropy on the trained assistant turns of chats (every
other token is context with weight 0), a LoRA adapter by default, AdamW at a constant
rate, metrics JSONL and a progress bar, atomic checkpoints and exact resume, the
adapter (or the full weights) saved with `onthejob.models.save_model`; and the
examples of the two baselines:

- `transcript_examples`: SFT on the session transcript ("reciting the work log"): each
  session's chat as it happened, the loss on the assistant's turns, with the documents
  and corrections where they were (in context, never trained on);
- `teacher_sample_examples`: SFT on teacher samples (off-policy context distillation):
  the teacher (the model with the probe's context, `opsd.teacher_messages`) answers each
  probe; the student is trained on that answer behind the probe without the context.

Both report the tokens trained on, so the gate compares methods at the same budget
(`SFTConfig.token_budget`).

Not covered: packing, loss on user or document text (the tokenizer rendering and the
weights are `onthejob.train.pretrain`'s, reused as they are), several processes or GPUs.

Departures from plain SFT: the loss is the mean over every trained token of a step (not
per example), and the teacher's answers are rendered as chat text again (the student
learns the canonical tokenization of the answer, which is how it would be fed back to it;
a teacher sample cut by the token budget is dropped rather than trained to end there).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PreTrainedTokenizerBase

from onthejob.curriculum import Example
from onthejob.models import keep_share, model_device, save_model, trainable_state
from onthejob.models.fast import base_causal_lm
from onthejob.prompts import ANSWER_TOKENS
from onthejob.sampling import SamplingConfig, sample
from onthejob.train.checkpoint import after_step, budget_left, resume_run
from onthejob.train.opsd import Probe, epoch_indices, prepare_student, probe_prompts
from onthejob.train.optim import adamw
from onthejob.train.pretrain import collate, encode_example, weighted_lm_loss
from onthejob.train.update import UpdateConfig, UpdateResult

TIMING_FIELDS = ("step_s", "tokens_per_s")
"""Metric fields that measure time; every other field is reproducible for a seed."""


@dataclass(frozen=True)
class SFTExample:
    """A chat to learn from and which of its messages are trained (like `curriculum.Example`)."""

    messages: tuple[dict[str, str], ...]
    """The chat, assistant replies included."""
    trained: tuple[bool, ...]
    """Per message: True where the loss is taken (assistant messages only)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        object.__setattr__(self, "trained", tuple(bool(t) for t in self.trained))
        if len(self.trained) != len(self.messages):
            raise ValueError(
                f"trained has {len(self.trained)} flags for {len(self.messages)} messages; give one per message"
            )
        if not any(self.trained):
            raise ValueError("an SFT example needs at least one trained (assistant) message")
        for message, trained in zip(self.messages, self.trained, strict=True):
            if trained and message.get("role") != "assistant":
                raise ValueError(
                    f"only assistant messages can be trained, got {message.get('role')!r}"
                )


@dataclass(frozen=True)
class SFTConfig(UpdateConfig):
    """Everything that decides an SFT run (hashed into its checkpoints): the shared update
    settings of `UpdateConfig` (the same budget and adapter as OPSD) and the cut length."""

    max_len: int = 1024
    """Examples are cut to this many tokens."""

    def problems(self) -> dict[str, tuple[bool, str]]:
        return {**super().problems(), "max_len": (self.max_len < 1, "> 0")}


# ---------------------------------------------------------------------------- the baselines' data


def transcript_examples(sessions: Sequence[Sequence[dict[str, str]]]) -> list[SFTExample]:
    """One example per session: its messages as they happened, every assistant turn
    trained (sessions without one are skipped)."""
    examples = []
    for turns in sessions:
        messages = tuple({"role": m["role"], "content": m["content"]} for m in turns)
        trained = tuple(m["role"] == "assistant" for m in messages)
        if any(trained):
            examples.append(SFTExample(messages, trained))
    return examples


def teacher_sample_examples(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[Probe],
    samples_per_probe: int = 1,
    max_new_tokens: int = ANSWER_TOKENS,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[SFTExample]:
    """The teacher's answers to the probes (with their context), as examples without it.

    The teacher is `model` as given (call it before training: the starting model, an
    earlier adapter included), greedy by default; answers that ran out of tokens before
    their end token are dropped.
    """
    if temperature == 0 and samples_per_probe > 1:
        raise ValueError(
            "greedy answers are all the same; use samples_per_probe=1 or temperature > 0"
        )
    prompts = [probe_prompts(tokenizer, probe)[1] for probe in probes]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    rows = [p for p in prompts for _ in range(samples_per_probe)]
    samples = sample(model, tokenizer, rows, sampling)
    examples = []
    for i, (text, why) in enumerate(zip(samples.texts, samples.finish_reasons, strict=True)):
        if why != "eos":
            continue
        probe = probes[i // samples_per_probe]
        messages = (*probe.messages, {"role": "assistant", "content": text})
        examples.append(SFTExample(messages, (False,) * len(probe.messages) + (True,)))
    return examples


# ---------------------------------------------------------------------------- the loop


def encode(
    tokenizer: PreTrainedTokenizerBase, example: SFTExample, max_len: int
) -> tuple[list[int], list[float]]:
    """Token ids and per-token weights (1 on the trained turns' tokens and end tokens, else 0)."""
    as_curriculum = Example("sft", example.messages, example.trained)
    return encode_example(tokenizer, as_curriculum, context_weight=0.0, max_len=max_len)


def batch_loss(
    model: torch.nn.Module, rows: list[tuple[list[int], list[float]]], pad_id: int
) -> tuple[torch.Tensor, float]:
    """(weighted cross-entropy of the rows' trained tokens, their number); the output head
    runs only where the weight is non-zero."""
    device = model_device(model)
    input_ids, mask, targets, weights = (t.to(device) for t in collate(rows, pad_id))
    lm = base_causal_lm(model)
    body, head = getattr(lm, "model", None), lm.get_output_embeddings()
    keep = weights > 0
    if body is not None and head is not None:
        hidden = body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = head(hidden[keep])
    else:
        logits = lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[keep]
    return weighted_lm_loss(logits, targets[keep], weights[keep]), float(weights[keep].sum())


def example_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SFTExample],
    max_len: int = 1024,
) -> float:
    """Mean cross-entropy per trained token over the examples (no gradients)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0.0
    with torch.no_grad():
        for lo in range(0, len(examples), 16):
            rows = [encode(tokenizer, e, max_len) for e in examples[lo : lo + 16]]
            loss, tokens = batch_loss(model, rows, pad_id)
            total, count = total + float(loss) * tokens, count + tokens
    return total / max(count, 1.0)


def sft(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SFTExample],
    config: SFTConfig,
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    show_progress: bool = True,
    resume: bool = False,
) -> UpdateResult:
    """Fine-tune on the examples' trained turns (see the module docstring).

    Under LoRA (the default) the given model gets the adapter in place: use the result's
    `model`. A model that already carries an adapter trains it further. run_dir
    (optional) receives metrics.jsonl and checkpoints; out_dir (optional) the adapter, or
    under full fine-tuning the model directory, with sft_config.json.
    """
    if not examples:
        raise ValueError("no examples to fine-tune on; give at least one SFTExample")
    rows = [encode(tokenizer, example, config.max_len) for example in examples]
    for i, (_, weights) in enumerate(rows):
        if not any(weights):
            raise ValueError(
                f"example {i} has no trained token within max_len={config.max_len}; raise max_len"
            )
    torch.manual_seed(config.seed)
    lora = config.lora_settings()
    student, _ = prepare_student(model, lora)
    before = trainable_state(student) if config.update_share < 1 else {}
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = adamw(params, config.lr, config.weight_decay, betas=(0.9, 0.99))

    start, tokens = 0, 0
    if run_dir is not None:
        start, extra = resume_run(run_dir, student, optimizer, None, config.key(), resume)
        tokens = int(extra.get("tokens", 0))

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    started = time.perf_counter()
    step = start
    with Progress(
        TextColumn("sft"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
    ) as progress:
        bar = progress.add_task("sft", total=config.steps, completed=start, loss=float("nan"))
        while budget_left(config, step, tokens):
            chosen = epoch_indices(len(rows), config.batch_size, config.seed, step, salt="sft")
            batch = [rows[i] for i in chosen]
            record = {
                "step": step + 1,
                **sft_step(config, student, optimizer, params, batch, pad_id),
            }
            step += 1
            tokens += record["tokens"]
            record["tokens_total"] = tokens
            after_step(config, run_dir, student, optimizer, record, history, step, tokens)
            progress.update(bar, completed=step, loss=record["loss"])
    seconds = time.perf_counter() - started
    student.eval()
    share_error = keep_share(student, before, config.update_share) if before else 0.0
    if out_dir is not None:
        save_model(student, tokenizer, out_dir)  # type: ignore[arg-type]  # a PeftModel or a HF model
        (out_dir / "sft_config.json").write_text(
            json.dumps({**asdict(config), "examples": len(examples), "steps_taken": step}, indent=2)
        )
    return UpdateResult(
        student, step, tokens, seconds, record, history, out_dir, run_dir, share_error
    )


def sft_step(
    config: SFTConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    rows: list[tuple[list[int], list[float]]],
    pad_id: int,
) -> dict[str, Any]:
    """One optimizer step on the rows (micro-batches of similar length); returns its metrics."""
    started = time.perf_counter()
    rows = sorted(rows, key=lambda row: len(row[0]))
    total = sum(sum(weights) for _, weights in rows)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for lo in range(0, len(rows), config.micro_batch_size):
        loss, tokens = batch_loss(model, rows[lo : lo + config.micro_batch_size], pad_id)
        (loss * tokens / total).backward()
        loss_sum += float(loss.detach()) * tokens / total
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    model.eval()
    step_s = time.perf_counter() - started
    return {
        "loss": round(loss_sum, 6),
        "grad_norm": round(float(grad_norm), 6),
        "tokens": int(total),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(total / max(step_s, 1e-9), 1),
    }
