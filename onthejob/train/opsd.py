"""On-policy self-distillation (OPSD): write what the model reads in its context into its weights.

The teacher is the model *with* a context (documents, corrections, a user's written
evaluation); the student is the same model *without* it. The student answers its own
prompt (sampled with `onthejob.sampling.sample`, token ids kept as sampled); the teacher
scores the same sampled ids behind its prompt, which differs from the student's only by
the inserted context; the loss is a per-token divergence between the two next-token
distributions at every sampled position. No reward, no labels: the signal is dense and
the samples are the student's own.

Covers: `Probe` and `teacher_messages` (the one place the context goes in), the
divergences as pure functions of logits (forward KL, reverse KL, generalized JSD(beta),
the sampled-token policy-gradient form, a clip per token and one per vocabulary entry,
the masked mean), and `distill`: a LoRA student by default, a teacher that is fixed (the
base with the adapter switched off: one copy of the weights), an EMA of the student, or
the live student; metrics JSONL with the per-token divergence distribution (p50, p90,
max and the share of the top 10% of tokens, since a few tokens can dominate), both KL
directions logged whatever the loss, atomic checkpoints and exact resume, and the
adapter (or the full weights) saved with `onthejob.models.save_model`.

Not covered: which sessions, contexts and probes to learn from, and the gate (see
`onthejob.sleep`); evaluation of recall (`onthejob.evals`); top-k or chunked
approximations of the full-vocabulary divergence; choosing replay probes (they come in
as probes without a context); an SFT term in the loss; several processes or GPUs.

How it relates to the methods it draws on:

- GKD (Agarwal et al. 2024, "On-policy distillation of language models"): the student's
  own samples scored by a teacher with a full-vocabulary per-token divergence, including
  the generalized JSD(beta). Departures: GKD's teacher is another (larger) model seeing
  the same prompt; here it is the same weights seeing more context. On-policy by default
  (GKD's lambda = 1); `on_policy` < 1 lets the teacher draw that share of the samples
  behind its context, split per probe rather than drawn per batch as GKD does. One
  sample per probe by default, as GKD and TRL. beta follows GKD's and TRL's convention:
  the mixture is beta * teacher + (1 - beta) * student, beta = 0 is forward
  KL(teacher || student) and beta = 1 reverse KL(student || teacher), each as the limit
  of JSD(beta) divided by beta (resp. 1 - beta).
- OPSD (Zhao et al. 2026, "Self-distilled reasoner"): one model as teacher (given
  privileged information, there a reference solution) and as student (the problem
  only), on-policy samples, a full-vocabulary divergence or the sampled-token form with
  advantage = teacher log-prob - student log-prob, and the teacher fixed at the initial
  policy (their LoRA adapter switched off), as "fixed" here. Their repository clips each
  vocabulary entry's pointwise term at 0.05 because style tokens carried 6-15x the
  divergence of content tokens: `entry_clip`. `clip` is the coarser cap on a token's
  summed divergence (a capped token gives no gradient). Departures: the privileged
  information is deployment experience, not a solution; no thinking mode and no
  instruction telling the teacher not to copy.
- SDFT (Shenfeld et al. 2026, "Self-distillation enables continual learning"): the
  teacher is the model conditioned on a demonstration, the student samples on-policy, the
  teacher is an EMA of the student ("ema" here). Its paper writes the loss as reverse KL,
  but its results were produced with per-token forward KL (the author in
  idanshen/Self-Distillation issue #5). Hence forward KL is the default here and both
  directions are offered and logged: measure, do not assume.

Further departures: divergences compare the models' own distributions (temperature 1)
whatever the sampling temperature, so the sampled-token form is an unbiased reverse-KL
gradient only when sampling at temperature 1 (the default). The loss is the mean over
every sampled token of the step (long answers weigh more, as DAPO's token-level mean).
One optimizer step per batch of samples; constant learning rate. With `update_share` < 1
the saved student keeps only that share of what training changed (WiSE-FT's weight-space
interpolation toward the starting weights, Wortsman et al. 2022; `models.keep_share`),
which none of the three papers does: at held-out orgs the sleep's LoRA update cost the
grindable skills 2-3 points however little it taught (docs/results.md, session 18).
Replay probes (no context: the teacher sees the student's chat) anchor the student to its
starting skills; with `replay_temperature` < 1 their teacher's distribution is sharpened
first, so the student learns a sharper copy of those skills on its own samples, where SFT
on the teacher's greedy answers learns it on the teacher's. None of the three papers
replays or sharpens.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PreTrainedTokenizerBase

from onthejob.models import (
    LoraSettings,
    adapter_disabled,
    add_lora,
    keep_share,
    model_device,
    save_model,
    trainable_state,
)
from onthejob.models.fast import base_causal_lm
from onthejob.models.logprobs import gather_logprobs
from onthejob.models.tokenizer import chat_prompt_ids
from onthejob.prompts import ANSWER_TOKENS
from onthejob.sampling import SamplingConfig, sample
from onthejob.train import ConfigError
from onthejob.train.checkpoint import after_step, budget_left, resume_run
from onthejob.train.optim import adamw
from onthejob.train.shared_prefix import final_norm, shared_prefix_hidden, shared_prefix_supported
from onthejob.train.update import UpdateConfig, UpdateResult

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "sampled")
TEACHERS = ("fixed", "base", "ema", "live")
NOTES = "notes:\n"
"""What precedes the context in the teacher's system turn: the curriculum shows documents so."""
TIMING_FIELDS = ("sampling_s", "train_s", "step_s", "tokens_per_s")
"""Metric fields that measure time; every other field is reproducible for a seed."""


# ---------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """A prompt the student practises on, and the context only the teacher sees."""

    messages: tuple[dict[str, str], ...]
    """The student's chat, without the context; it ends before the assistant's reply."""
    context: str | None
    """What the teacher sees in addition: documents, corrections, an evaluation. None: a
    replay probe, whose teacher sees exactly the student's chat."""
    answer: str | None = None
    """The expected answer when known; for evaluation only, never trained on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if not self.messages:
            raise ValueError("a probe needs at least one message (the question)")
        for m in self.messages:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"probe messages need string role and content, got {m!r}")
        if self.messages[-1]["role"] == "assistant":
            raise ValueError("a probe's chat must end before the assistant's reply, not with it")
        if self.context is not None and (
            not isinstance(self.context, str) or not self.context.strip()
        ):
            raise ValueError(
                "a probe's context must be non-empty text (the teacher's notes), or None for a"
                " replay probe"
            )


def teacher_messages(probe: Probe) -> list[dict[str, str]]:
    """The probe's chat with its context inserted in one place: the end of the system turn,
    as "notes:\\n<context>" (how the curriculum teaches the model to read documents, see
    `curriculum.knowledge_example`); a system turn holding only the notes is put first
    when the chat has none. A context of None leaves the chat as it is: a replay probe,
    on which the divergence anchors the student to the teacher's own behaviour."""
    messages = [dict(m) for m in probe.messages]
    if probe.context is None:  # a replay probe: the teacher sees what the student sees
        return messages
    if messages[0]["role"] == "system":
        system = messages[0]["content"]
        messages[0]["content"] = (
            f"{system}\n{NOTES}{probe.context}" if system else NOTES + probe.context
        )
    else:
        messages.insert(0, {"role": "system", "content": NOTES + probe.context})
    return messages


def inserted_span(student_ids: Sequence[int], teacher_ids: Sequence[int]) -> tuple[int, int] | None:
    """(start, stop) with teacher_ids[:start] + teacher_ids[stop:] == student_ids, else None."""
    extra = len(teacher_ids) - len(student_ids)
    if extra <= 0:
        return None
    head = 0
    while head < len(student_ids) and student_ids[head] == teacher_ids[head]:
        head += 1
    if list(teacher_ids[head + extra :]) != list(student_ids[head:]):
        return None
    return head, head + extra


def probe_prompts(tokenizer: PreTrainedTokenizerBase, probe: Probe) -> tuple[list[int], list[int]]:
    """(student prompt ids, teacher prompt ids), both ending with the assistant marker.

    Raises ValueError when they differ by more than one inserted span (a template that
    renders the two chats differently would bias every teacher log-prob)."""
    student = chat_prompt_ids(tokenizer, probe.messages)
    teacher = chat_prompt_ids(tokenizer, teacher_messages(probe))
    if teacher != student and inserted_span(student, teacher) is None:
        raise ValueError(
            "the teacher's prompt differs from the student's by more than the inserted context "
            "(the chat template renders them differently); give the probe a system turn"
        )
    return student, teacher


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class OPSDConfig(UpdateConfig):
    """Everything that decides an OPSD run (hashed into its checkpoints): the shared update
    settings of `UpdateConfig` and what only on-policy distillation has."""

    lr: float = 5e-4
    """Learning rate (AdamW, constant). With 4 samples per probe (130 steps in 24k
    tokens) 1e-3 was the rate that moved recall (2e-4: +0.000 at org 21); with one
    sample per probe (520 steps) 5e-4 recalls as much as 1e-3 at orgs 27 and 28 and
    keeps arith's guard (docs/results.md, session 10)."""
    micro_batch_size: int = 32
    """Samples per forward/backward (whole probes); gradients accumulate over a step."""
    samples_per_probe: int = 1
    """Student samples per probe per step. One (GKD's and TRL's choice) gives four times
    the optimizer steps of four for the same sampled tokens; the student then fits the
    probes its teacher answers right (at org 27, 4 samples left 18 of 49 unlearned, one
    left 2) and recalled more in 6 of 7 held-out sleeps, as much in the seventh
    (docs/results.md, session 10)."""
    max_new_tokens: int = ANSWER_TOKENS
    """Most tokens per student sample (its end token included)."""
    temperature: float = 1.0
    """Sampling temperature; the divergence always compares the temperature-1 distributions."""
    divergence: str = "forward_kl"
    """"forward_kl" KL(teacher||student), "reverse_kl" KL(student||teacher), "jsd" (beta) or "sampled"."""
    beta: float = 0.5
    """JSD(beta) mixture weight of the teacher: 0 is forward KL, 1 reverse KL (divergence="jsd")."""
    clip: float | None = None
    """Cap on each token's divergence (a capped token gives no gradient); with "sampled", a cap on |advantage|."""
    entry_clip: float | None = None
    """Cap on each vocabulary entry's pointwise term (OPSD's repository uses 0.05); full-vocabulary forms."""
    teacher: str = "fixed"
    """"fixed" (starting weights: under a fresh adapter, the adapter off), "base" (the adapter
    off even when training an earlier one further: the base model reads the context),
    "ema", or "live"."""
    ema_decay: float = 0.99
    """teacher="ema": teacher <- decay * teacher + (1 - decay) * student after each step."""
    on_policy: float = 1.0
    """Share of each probe's samples the student draws (GKD's lambda): round(on_policy *
    samples_per_probe) of them; the teacher draws the rest behind the context. 1.0 is
    pure OPSD, 0.0 distillation on the teacher's samples only (full-vocabulary targets
    where SFT on teacher samples has the one sampled token)."""

    replay_temperature: float = 1.0
    """Temperature of the teacher's distribution on replay probes (context None): below 1
    the student is pulled toward a sharper copy of the teacher's own behaviour on them
    (towards its greedy choices at every position of the student's samples), at 1 it is
    only anchored to it. Knowledge probes always compare temperature-1 distributions."""

    def problems(self) -> dict[str, tuple[bool, str]]:
        return {
            **super().problems(),
            "samples_per_probe": (self.samples_per_probe < 1, "> 0"),
            "max_new_tokens": (self.max_new_tokens < 1, "> 0"),
            "temperature": (not self.temperature > 0, "> 0 (the student must sample)"),
            "divergence": (self.divergence not in DIVERGENCES, " or ".join(DIVERGENCES)),
            "beta": (not 0 <= self.beta <= 1, "in [0, 1]"),
            "clip": (self.clip is not None and not self.clip > 0, "> 0 or None (off)"),
            "entry_clip": (
                self.entry_clip is not None
                and (not self.entry_clip > 0 or self.divergence == "sampled"),
                "> 0 or None (off), and only with a full-vocabulary divergence",
            ),
            "teacher": (
                self.teacher not in TEACHERS or (self.teacher == "base" and not self.lora),
                " or ".join(TEACHERS) + ' ("base" only with lora: it switches the adapter off)',
            ),
            "ema_decay": (not 0 <= self.ema_decay < 1, "in [0, 1)"),
            "on_policy": (
                not 0 <= self.on_policy <= 1,
                "in [0, 1] (1: the student's samples only)",
            ),
            "replay_temperature": (
                not self.replay_temperature > 0,
                "> 0 (1: the teacher as it is)",
            ),
        }

    def student_samples(self) -> int:
        """How many of a probe's samples_per_probe samples the student draws."""
        return round(self.on_policy * self.samples_per_probe)


# ---------------------------------------------------------------------------- the losses


def _entries(terms: torch.Tensor, entry_clip: float | None) -> torch.Tensor:
    """Sum pointwise terms [..., V] over the vocabulary, each capped at entry_clip first."""
    if entry_clip is not None:
        terms = terms.clamp(max=entry_clip)
    return terms.sum(-1)


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, entry_clip: float | None = None
) -> torch.Tensor:
    """KL(teacher || student) = sum_v p_t (log p_t - log p_s) per position: [..., V] -> [...]."""
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float(), dim=-1)
    return _entries(log_t.exp() * (log_t - log_s), entry_clip)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, entry_clip: float | None = None
) -> torch.Tensor:
    """KL(student || teacher) = sum_v p_s (log p_s - log p_t) per position: [..., V] -> [...]."""
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float(), dim=-1)
    return _entries(log_s.exp() * (log_s - log_t), entry_clip)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float,
    entry_clip: float | None = None,
) -> torch.Tensor:
    """GKD's JSD(beta) per position: beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1 - beta) s.

    beta = 0 is defined as forward KL(t || s) and beta = 1 as reverse KL(s || t), the limits
    of JSD(beta) / beta and JSD(beta) / (1 - beta) (GKD's and TRL's convention).
    """
    if beta == 0:
        return forward_kl(student_logits, teacher_logits, entry_clip)
    if beta == 1:
        return reverse_kl(student_logits, teacher_logits, entry_clip)
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float(), dim=-1)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    terms = beta * log_t.exp() * (log_t - log_m) + (1 - beta) * log_s.exp() * (log_s - log_m)
    return _entries(terms, entry_clip)


def sampled_token_loss(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, clip: float | None = None
) -> torch.Tensor:
    """Per-token policy-gradient loss -A * log p_s(y), A = log p_t(y) - log p_s(y) detached.

    Its gradient, in expectation over the student's samples y, is that of reverse KL
    (the sampled-token form of OPSD): a token the teacher likes more than the student gets
    pushed up. clip bounds |A|.
    """
    advantage = (teacher_logprobs - student_logprobs).detach()
    if clip is not None:
        advantage = advantage.clamp(-clip, clip)
    return -advantage * student_logprobs


def clip_per_token(divergence: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Cap each token's divergence at clip (None: unchanged); a capped token gives no gradient."""
    return divergence if clip is None else divergence.clamp(max=clip)


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per_token over the positions where mask is 1 (0 when none is)."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def token_loss(
    config: OPSDConfig,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss to minimise, per-token divergence before any clip, detached) at the
    sampled positions: logits [N, V], targets [N] (the sampled ids)."""
    if config.divergence == "sampled":
        log_s = gather_logprobs(student_logits, targets)
        log_t = gather_logprobs(teacher_logits, targets)
        return sampled_token_loss(log_s, log_t, config.clip), (log_s - log_t).detach()
    full = {
        "forward_kl": lambda clip: forward_kl(student_logits, teacher_logits, clip),
        "reverse_kl": lambda clip: reverse_kl(student_logits, teacher_logits, clip),
        "jsd": lambda clip: generalized_jsd(student_logits, teacher_logits, config.beta, clip),
    }[config.divergence]
    divergence = full(config.entry_clip)
    if config.entry_clip is None:
        unclipped = divergence.detach()
    else:
        with torch.no_grad():
            unclipped = full(None)
    return clip_per_token(divergence, config.clip), unclipped


# ---------------------------------------------------------------------------- logits of samples


def completion_logits(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
) -> torch.Tensor:
    """Float32 logits [N, V] that predict every completion token, in order: group by group,
    completion by completion, token by token. completions[g] all follow prompts[g].

    The output head runs only at those positions. Each group's prompt runs once
    (`shared_prefix_hidden`) where the model allows it; otherwise whole right-padded
    sequences run through the model's own forward (causal attention alone is exact for
    every real position, so no attention mask is passed).
    """
    device = model_device(model)
    rows = [(g, list(c)) for g, group in enumerate(completions) for c in group]
    lm = base_causal_lm(model)
    body, head = getattr(lm, "model", None), lm.get_output_embeddings()
    longest = max(len(prompts[g]) + len(c) for g, c in rows)
    if min(map(len, prompts)) >= 2 and shared_prefix_supported(model, longest):
        cut = max(len(p) - 1 for p in prompts)
        prefix = [list(p[:-1]) + [pad_id] * (cut - len(p) + 1) for p in prompts]
        width = max(len(c) for _, c in rows) + 1
        suffix = [[prompts[g][-1], *c] + [pad_id] * (width - 1 - len(c)) for g, c in rows]
        mask = torch.tensor(
            [[j < len(c) for j in range(width - 1)] for _, c in rows], device=device
        )
        hidden = shared_prefix_hidden(
            model,
            torch.tensor(prefix, dtype=torch.long, device=device),
            torch.tensor([len(p) - 1 for p in prompts], device=device),
            torch.tensor(suffix, dtype=torch.long, device=device),
            torch.tensor([g for g, _ in rows], device=device),
        )
        return head(final_norm(model, hidden[:, :-1][mask])).float()
    width = longest
    ids = [list(prompts[g]) + c + [pad_id] * (width - len(prompts[g]) - len(c)) for g, c in rows]
    mask = torch.tensor(
        [
            [len(prompts[g]) - 1 <= t < len(prompts[g]) - 1 + len(c) for t in range(width)]
            for g, c in rows
        ],
        device=device,
    )
    input_ids = torch.tensor(ids, dtype=torch.long, device=device)
    if body is not None and head is not None:
        return head(body(input_ids=input_ids, use_cache=False).last_hidden_state[mask]).float()
    return lm(input_ids=input_ids, use_cache=False).logits[mask].float()


# ---------------------------------------------------------------------------- student and teacher


def prepare_student(
    model: torch.nn.Module, lora: LoraSettings | None
) -> tuple[torch.nn.Module, bool]:
    """(the model to train, whether it carries a fresh adapter).

    A plain model gets a fresh LoRA adapter (PEFT injects it into the model's layers in
    place) or, with lora None, trains every weight. A model that already carries an
    adapter (a tenant's earlier version) trains that adapter further.
    """
    if isinstance(model, PeftModel):
        if lora is None:
            raise ConfigError(
                "lora",
                "must be on for a model that carries an adapter (merge it first with merge_and_unload)",
            )
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        return model, False
    if lora is not None:
        return add_lora(model, lora), True
    model.requires_grad_(True)
    return model, False


class Teacher:
    """What scores the student's samples, always behind the context and without gradients:

    - "fixed": the starting weights (under a fresh adapter: the adapter switched off, one
      copy of the weights; otherwise a copy of the trained weights as they started);
    - "base": the adapter switched off, also when an earlier adapter is trained further
      (a consolidated adapter answers from memory and reads its context worse: measured
      at org 21, with-context accuracy 0.26 for the base against 0.18 for the adapter);
    - "ema": an exponential moving average of the trained weights, from their start;
    - "live": the student's current weights.

    Stored weights take the student's place by swapping tensor storage, not by copying.
    """

    def __init__(
        self,
        student: torch.nn.Module,
        params: list[torch.nn.Parameter],
        kind: str,
        decay: float,
        fresh: bool,
    ) -> None:
        self.student, self.params, self.kind, self.decay = student, params, kind, decay
        self.adapter_off = (kind == "fixed" and fresh) or kind == "base"
        self.stored: list[torch.Tensor] = []
        if kind == "ema" or (kind == "fixed" and not fresh):
            self.stored = [p.detach().clone() for p in params]

    @contextmanager
    def weights(self) -> Iterator[torch.nn.Module]:
        """Inside the block, the student module computes as the teacher."""
        if self.adapter_off:
            with adapter_disabled(self.student) as base:
                yield base
        elif self.stored:
            self._swap()
            try:
                yield self.student
            finally:
                self._swap()
        else:
            yield self.student

    def _swap(self) -> None:
        with torch.no_grad():
            for param, stored in zip(self.params, self.stored, strict=True):
                param.data, stored.data = stored.data, param.data

    def update(self) -> None:
        """After an optimizer step: move the EMA towards the student."""
        if self.kind == "ema":
            with torch.no_grad():
                for param, stored in zip(self.params, self.stored, strict=True):
                    stored.lerp_(param.detach(), 1 - self.decay)

    def state(self) -> torch.nn.Module:
        """The teacher's own state as a module (its EMA weights), for checkpoints."""
        holder = torch.nn.Module()
        if self.kind == "ema":
            for i, tensor in enumerate(self.stored):
                holder.register_buffer(f"ema_{i}", tensor)
        return holder


# ---------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """One run's moving parts."""

    config: OPSDConfig
    student: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    prompts: list[tuple[list[int], list[int]]]
    """(student, teacher) prompt ids per probe."""
    replay: list[bool]
    """Per probe: a replay probe (no context), whose teacher runs at replay_temperature."""
    optimizer: torch.optim.Optimizer
    teacher: Teacher
    params: list[torch.nn.Parameter]


def epoch_indices(n: int, batch_size: int, seed: int, step: int, salt: str = "opsd") -> list[int]:
    """The items (of n) in batch `step`: each epoch visits every item once, in an order
    that is a pure function of (salt, seed, epoch)."""
    picked = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(i, n)
        order = list(range(n))
        random.Random(f"{salt}/{seed}/{epoch}").shuffle(order)
        picked.append(order[position])
    return picked


def sample_seed(config: OPSDConfig, step: int) -> int:
    """Seed of the student's sampler at one step."""
    return random.Random(f"opsd-sample/{config.seed}/{step}").randrange(2**31)


def distill(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[Probe],
    config: OPSDConfig,
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    show_progress: bool = True,
    resume: bool = False,
) -> UpdateResult:
    """Distill each probe's context into the student (see the module docstring).

    Under LoRA (the default) the given model gets the adapter in place: use the result's
    `model` (`adapter_disabled(result.model)` computes as the base). run_dir (optional)
    receives metrics.jsonl and checkpoints; out_dir (optional) the adapter, or under
    full fine-tuning the model directory, with opsd_config.json.
    """
    if not probes:
        raise ValueError("no probes to distill on; give at least one Probe")
    prompts = [probe_prompts(tokenizer, probe) for probe in probes]
    limit = getattr(getattr(base_causal_lm(model), "config", None), "max_position_embeddings", None)
    for i, (_, teacher_ids) in enumerate(prompts):
        if isinstance(limit, int) and len(teacher_ids) + config.max_new_tokens > limit:
            raise ValueError(
                f"probe {i}: teacher prompt ({len(teacher_ids)} tokens) + max_new_tokens "
                f"({config.max_new_tokens}) exceeds the model's {limit} positions; shorten its context"
            )
    torch.manual_seed(config.seed)
    lora = config.lora_settings()
    student, fresh = prepare_student(model, lora)
    before = trainable_state(student) if config.update_share < 1 else {}
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = adamw(params, config.lr, config.weight_decay, betas=(0.9, 0.99))
    teacher = Teacher(student, params, config.teacher, config.ema_decay, fresh)
    replay = [probe.context is None for probe in probes]
    run = _Run(config, student, tokenizer, prompts, replay, optimizer, teacher, params)
    saved = torch.nn.ModuleDict({"student": student, "teacher": teacher.state()})

    start, tokens = 0, 0
    if run_dir is not None:
        start, extra = resume_run(run_dir, saved, optimizer, None, config.key(), resume)
        tokens = int(extra.get("tokens", 0))

    history: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    started = time.perf_counter()
    step = start
    with (
        Progress(
            TextColumn("opsd"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} divergence {task.fields[divergence]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
        ) as progress,
    ):
        bar = progress.add_task(
            "opsd", total=config.steps, completed=start, divergence=float("nan")
        )
        while budget_left(config, step, tokens):
            record = opsd_step(run, step)
            step += 1
            tokens += record["tokens"]
            record["tokens_total"] = tokens
            after_step(config, run_dir, saved, optimizer, record, history, step, tokens)
            progress.update(bar, completed=step, divergence=record["divergence"])
    seconds = time.perf_counter() - started
    student.eval()
    share_error = keep_share(student, before, config.update_share) if before else 0.0
    if out_dir is not None:
        save_model(student, tokenizer, out_dir)  # type: ignore[arg-type]  # a PeftModel or a HF model
        (out_dir / "opsd_config.json").write_text(
            json.dumps({**asdict(config), "probes": len(probes), "steps_taken": step}, indent=2)
        )
    return UpdateResult(
        student, step, tokens, seconds, record, history, out_dir, run_dir, share_error
    )


def opsd_step(run: _Run, step: int) -> dict[str, Any]:
    """Sample, score and update once; returns the step's metrics."""
    config, student, tokenizer = run.config, run.student, run.tokenizer
    started = time.perf_counter()
    chosen = epoch_indices(len(run.prompts), config.batch_size, config.seed, step)
    k = config.samples_per_probe
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    groups: list[list[list[int]]] = [[] for _ in chosen]
    finish_reasons: list[str] = []

    def draw(model: torch.nn.Module, side: int, n: int, seed: int) -> None:
        """n samples per chosen probe, behind its student (side 0) or teacher (1) prompt."""
        prompts = [run.prompts[i][side] for i in chosen for _ in range(n)]
        drawn = sample(model, tokenizer, prompts, replace(sampling, seed=seed))
        for row, ids in enumerate(drawn.token_ids):
            groups[row // n].append(ids)
        finish_reasons.extend(drawn.finish_reasons)

    own = config.student_samples()
    if own:
        draw(student, 0, own, sample_seed(config, step))
    if own < k:  # the teacher draws the rest behind the context (GKD's lambda < 1)
        with run.teacher.weights() as teacher:
            draw(teacher, 1, k - own, sample_seed(config, step) + 1)
    token_ids = [ids for group in groups for ids in group]
    sampling_s = time.perf_counter() - started

    train_started = time.perf_counter()
    total = sum(len(ids) for ids in token_ids)
    per_micro = max(1, config.micro_batch_size // k)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, divergences, forward, reverse, clipped = 0.0, [], 0.0, 0.0, 0
    for lo in range(0, len(chosen), per_micro):
        probes = chosen[lo : lo + per_micro]
        completions = groups[lo : lo + per_micro]
        if student.training:  # the teacher computes without dropout
            student.eval()
        with torch.no_grad(), run.teacher.weights() as teacher:
            teacher_logits = completion_logits(
                teacher, [run.prompts[i][1] for i in probes], completions, pad_id
            )
        if config.replay_temperature != 1:
            teacher_logits = teacher_logits / token_temperatures(
                [config.replay_temperature if run.replay[i] else 1.0 for i in probes],
                completions,
            ).to(teacher_logits.device)
        student.train()
        student_logits = completion_logits(
            student, [run.prompts[i][0] for i in probes], completions, pad_id
        )
        targets = torch.tensor(
            [t for group in completions for ids in group for t in ids], device=student_logits.device
        )
        per_token, divergence = token_loss(config, student_logits, teacher_logits, targets)
        loss = per_token.sum() / total
        loss.backward()
        loss_sum += float(loss.detach())
        divergences.append(divergence)
        clipped += clipped_tokens(config, per_token, divergence)
        with torch.no_grad():
            forward += float(forward_kl(student_logits, teacher_logits).sum())
            reverse += float(reverse_kl(student_logits, teacher_logits).sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip)
    run.optimizer.step()
    run.teacher.update()
    student.eval()
    train_s = time.perf_counter() - train_started
    step_s = time.perf_counter() - started
    return {
        "step": step + 1,
        "loss": round(loss_sum, 6),
        **divergence_stats(torch.cat(divergences)),
        "forward_kl": round(forward / total, 6),
        "reverse_kl": round(reverse / total, 6),
        "clipped_fraction": round(clipped / total, 6),
        "grad_norm": round(float(grad_norm), 6),
        "tokens": total,
        "teacher_samples": len(chosen) * (k - own),
        "sample_length": round(total / len(token_ids), 3),
        "eos_fraction": round(finish_reasons.count("eos") / len(token_ids), 4),
        "sampling_s": round(sampling_s, 4),
        "train_s": round(train_s, 4),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(total / max(step_s, 1e-9), 1),
    }


def token_temperatures(
    temperatures: Sequence[float], completions: Sequence[Sequence[Sequence[int]]]
) -> torch.Tensor:
    """[N, 1]: each completion token's temperature, in `completion_logits` order (group by
    group, completion by completion, token by token); temperatures[g] is group g's."""
    per_token = [
        t for t, group in zip(temperatures, completions, strict=True) for ids in group for _ in ids
    ]
    return torch.tensor(per_token, dtype=torch.float32).unsqueeze(-1)


def clipped_tokens(config: OPSDConfig, per_token: torch.Tensor, divergence: torch.Tensor) -> int:
    """Tokens whose loss a clip changed (for "sampled": whose |advantage| exceeded clip)."""
    if config.divergence == "sampled":
        return int((divergence.abs() > config.clip).sum()) if config.clip is not None else 0
    return int((per_token.detach() != divergence).sum())


def divergence_stats(per_token: torch.Tensor) -> dict[str, float]:
    """Mean, p50, p90 and max of per-token divergences, and the share of their sum carried
    by the top 10% of tokens (a few tokens dominating shows here first)."""
    values = per_token.detach().float().flatten()
    ordered = values.sort(descending=True).values
    top = ordered[: max(1, len(ordered) // 10)]
    positive = ordered.clamp(min=0).sum()
    return {
        "divergence": round(float(values.mean()), 6),
        "divergence_p50": round(float(values.quantile(0.5)), 6),
        "divergence_p90": round(float(values.quantile(0.9)), 6),
        "divergence_max": round(float(ordered[0]), 6),
        "divergence_top10_share": round(float(top.clamp(min=0).sum() / positive), 4)
        if positive > 0
        else 0.0,
    }


def probe_divergence(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[Probe],
    teacher: torch.nn.Module | None = None,
    samples_per_probe: int = 4,
    max_new_tokens: int = ANSWER_TOKENS,
    temperature: float = 1.0,
    seed: int = 10_007,
) -> dict[str, float]:
    """Mean per-token forward and reverse KL between `model` without the context and the
    teacher with it, on fresh samples of `model` (no gradients; seeded).

    teacher None: the model's base (its adapter switched off; the model itself when it has
    none), i.e. the "fixed" teacher of a fresh adapter.
    """
    prompts = [probe_prompts(tokenizer, probe) for probe in probes]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    samples = sample(
        model, tokenizer, [s for s, _ in prompts for _ in range(samples_per_probe)], sampling
    )
    k = samples_per_probe
    groups = [samples.token_ids[g * k : (g + 1) * k] for g in range(len(prompts))]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        student_logits = completion_logits(model, [s for s, _ in prompts], groups, pad_id)
        if teacher is None:
            with adapter_disabled(model) as base:
                teacher_logits = completion_logits(base, [t for _, t in prompts], groups, pad_id)
        else:
            teacher_logits = completion_logits(teacher, [t for _, t in prompts], groups, pad_id)
        return {
            "forward_kl": float(forward_kl(student_logits, teacher_logits).mean()),
            "reverse_kl": float(reverse_kl(student_logits, teacher_logits).mean()),
            "tokens": float(len(student_logits)),
        }
