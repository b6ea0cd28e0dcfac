"""Batched sampling with a KV cache: token ids and sampling log-probs out.

Covers: sampling completions for a batch of token-id prompts of different
lengths (left-padded internally, positions from the mask) with temperature,
top-k and top-p, end-of-turn tokens, stop strings and a token budget; the
sampled ids come back exactly as sampled (never re-tokenized text) with the
log-prob of each under softmax(logits / temperature) before truncation, which
is what importance ratios in RL need. Llama, Qwen2, Qwen3 and Mistral models,
plain or PEFT-wrapped, run through the lean static-cache forward of
`onthejob.models.fast`; any other causal LM runs through its own HF forward
and cache, one token per step.

Streaming: `sample(..., on_tokens=f)` calls `f(prompt_indices, token_ids)` once
per decode step with the token each still-sampling prompt just drew (a prompt's
last call carries its EOS or stop-completing token), so a server can stream
text while the batch decodes; the callback runs on the sampling thread and must
be quick.

Multi-turn: `sample(..., prefix_cache=c, cache_keys=k)` keeps each prompt's
keys and values, its completion's too, in `c` under its key, and the next call
whose prompt under that key extends them computes only the new tokens (an
agent's next turn: its last reply and the tool's page). Lean path only.

Not covered: beam search, repetition penalties, min-length, speculative
decoding, and continuous batching (no new prompts join a running
batch). The lean path drops finished rows from its batch as they accumulate;
the generic loop keeps computing them until the last row finishes.

Departures from HF `generate`: log-probs are of the untruncated tempered
distribution (HF's scores are after its logits processors); top-k and top-p
apply in that order, top-p keeps the smallest set of tokens whose mass reaches
top_p (HF's rule, written as "mass strictly before the token < top_p"); a stop
string is searched for in the decoded completion only (never the prompt) and
the completion is cut right after the token that completed it, so `texts`
include the stop string; a seed gives a private `torch.Generator`, so the
global RNG is never touched and the same inputs give the same samples (one
generator serves the whole batch, so a prompt's sample also depends on the
other prompts in it). Tokens are drawn by inverse CDF (a cumsum and a binary
search) instead of `torch.multinomial`, which costs ~20x more on a CPU; the
distribution is the same, the random stream is not, so seeded samples match HF
only when greedy. Rows run sorted by prompt length inside (results come back in
prompt order).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from onthejob.models.fast import (
    CachedPrefix,
    LeanDecoder,
    base_causal_lm,
    lean_decoder_supports,
)
from onthejob.models.hf import model_device
from onthejob.models.logprobs import positions_from_mask
from onthejob.models.tokenizer import end_token_ids

FINISH_REASONS = ("length", "eos", "stop")

TokenCallback = Callable[[list[int], list[int]], None]
"""on_tokens(prompt_indices, token_ids): the token each still-sampling prompt drew this step."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample one batch of completions."""

    max_new_tokens: int = 64
    """Most tokens sampled per completion (the EOS or stop token included)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of top tokens whose mass reaches top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    stop_strings: tuple[str, ...] = ()
    """End a completion right after the token that completes any of these strings."""
    seed: int | None = None
    """Seed of a private generator (None: draw from torch's global RNG)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if isinstance(self.stop_strings, str):
            raise ValueError("stop_strings must be a tuple of strings, e.g. ('\\n',), not a string")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain an empty string")


@dataclass
class Samples:
    """Completions of one batch, in prompt order."""

    token_ids: list[list[int]]
    """Completion ids per prompt (prompt excluded), through the EOS or stop-completing token."""
    logprobs: list[list[float]]
    """Per completion token: log-prob under softmax(logits / temperature), before top-k/top-p."""
    finish_reasons: list[str]
    """'eos', 'stop' or 'length'."""
    texts: list[str]
    """Decoded completions (a final EOS token is not included)."""


class PrefixCache:
    """Keys and values of earlier sampling calls' prompts and completions, by the caller's
    key (an episode), so that a next prompt which extends them computes only its new tokens.

    A multi-turn caller passes one `PrefixCache` and a key per prompt to every `sample`
    call of a run: turn t+1's prompt is turn t's prompt, its completion and the new
    observation, and only the observation (and the completion's last token) is computed
    again. A key's entry is used as far as its tokens agree with the new prompt (any other
    prompt gets no reuse, never a wrong one), and replaced by the new call's. The entries
    hold the weights' keys and values: use one cache only while the weights stay the same
    (one rollout), and only with the lean decoder (other models re-prefill, unaided).
    Each entry holds its row's keys and values: between turns the cache takes about the
    memory the decoder's own cache takes during one.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[list[int], CachedPrefix]] = {}
        self.reused = 0
        """Prompt tokens copied from the cache instead of computed, over all calls."""
        self.computed = 0
        """Prompt tokens computed, over all calls."""

    def lookup(self, key: Hashable, prompt: Sequence[int]) -> CachedPrefix | None:
        """The cached keys and values of `prompt`'s first tokens (all but its last at most),
        or None where the key has none or its tokens part from the prompt at once."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        tokens, prefix = entry
        n = 0
        for cached, asked in zip(tokens, prompt[: len(prompt) - 1], strict=False):
            if cached != asked:
                break
            n += 1
        return prefix.cut(n) if n else None

    def store(self, key: Hashable, tokens: list[int], prefix: CachedPrefix) -> None:
        """Keep `prefix`, the keys and values of `tokens`, as the key's entry."""
        if len(tokens) != prefix.length:
            raise ValueError(f"{len(tokens)} tokens for a prefix of {prefix.length}")
        self._entries[key] = (tokens, prefix)

    def __len__(self) -> int:
        return len(self._entries)


def top_candidates(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens kept by top-k, then top-p: (logits, token ids), [B, C] each, best first.

    Dropped tokens inside the C columns have logit -inf. Top-p keeps the smallest set of
    best tokens whose mass reaches top_p, i.e. each token whose better tokens hold < top_p.
    """
    if 0 < top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)  # sorted: no full sort of the vocabulary
    else:
        values, ids = logits.sort(dim=-1, descending=True)
    if top_p < 1.0:
        probs = values.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= top_p
        drop[:, 0] = False
        values = values.masked_fill(drop, float("-inf"))
    return values, ids


def next_tokens(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of float32 logits [B, V]; return (tokens [B], log-probs [B])."""
    if config.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)
    scaled = logits / config.temperature if config.temperature != 1.0 else logits
    top = scaled.amax(dim=-1, keepdim=True)
    weights = (scaled - top).exp_()
    ids = None
    if 0 < config.top_k < scaled.shape[-1] or config.top_p < 1.0:
        log_total = weights.sum(dim=-1).log_()
        values, ids = top_candidates(scaled, config.top_k, config.top_p)
        weights = (values - top).exp_()
    # Inverse-CDF sampling on unnormalised weights: one cumsum and one search, ~20x faster
    # than torch.multinomial on a CPU. u lies in (0, total], and the first index whose
    # cdf reaches u always has a positive weight.
    cdf = weights.cumsum_(dim=-1)
    uniform = torch.rand(len(cdf), 1, generator=generator, device=cdf.device)
    tokens = torch.searchsorted(cdf, (1.0 - uniform).mul_(cdf[:, -1:]))
    if ids is None:
        log_total = cdf[:, -1].log()
    else:
        tokens = ids.gather(-1, tokens)
    tokens = tokens.squeeze(-1)
    picked = scaled.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, picked - top.squeeze(-1) - log_total


class HFCacheDecoder:
    """Any HF causal LM, one token per step through its own forward and KV cache."""

    def __init__(self, model: nn.Module) -> None:
        self.model = base_causal_lm(
            model
        )  # PEFT's layers sit inside it, so an adapter still counts
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.pass_positions = "position_ids" in params
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache: Any = None
        self.attention_mask = torch.empty(0)
        self.positions = torch.empty(0)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "attention_mask": self.attention_mask,
            "use_cache": True,
            **self.keep_last,
        }
        if self.pass_positions:
            kwargs["position_ids"] = positions
        if self.cache is not None:
            kwargs[self.cache_arg] = self.cache
        out = self.model(input_ids=input_ids, **kwargs)
        self.cache = getattr(out, "cache", None)
        if self.cache is None:
            self.cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1].float()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the left-padded prompts; float32 logits [B, V] of the last position."""
        self.attention_mask = attention_mask
        positions = positions_from_mask(attention_mask)
        self.positions = positions[:, -1:] + 1
        return self._forward(input_ids, positions)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; float32 logits [B, V] for the next one."""
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones(len(tokens), 1)], dim=1
        )
        logits = self._forward(tokens[:, None], self.positions)
        self.positions = self.positions + 1
        return logits


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _check_prompts(
    model: nn.Module, prompts: Sequence[Sequence[int]], config: SamplingConfig
) -> list[list[int]]:
    if len(prompts) == 0:
        raise ValueError("no prompts given; pass a list of token-id lists")
    vocab = model.get_input_embeddings().num_embeddings  # type: ignore[operator]
    limit = _max_positions(model)
    checked = []
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab})")
        if limit is not None and len(ids) + config.max_new_tokens > limit:
            raise ValueError(
                f"prompt {i} ({len(ids)} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the "
                f"model's {limit} positions; shorten the prompt or lower max_new_tokens"
            )
        checked.append(ids)
    return checked


def _left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


class _StopStrings:
    """Finds stop strings in the tail of each completion, decoding only a short window."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        # Every token decodes to at least one byte, so a stop string of n bytes touches at
        # most n tokens; one more covers a token that starts before it.
        self.window = max(len(s.encode("utf-8")) for s in stop_strings) + 1

    def hits(self, tokens: torch.Tensor, step: int, rows: list[int]) -> list[int]:
        """Those of `rows` whose completion now contains a stop string."""
        start = max(0, step + 1 - self.window)
        tails = tokens[rows, start : step + 1].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        return [
            row
            for row, text in zip(rows, texts, strict=True)
            if any(s in text for s in self.stop_strings)
        ]


@dataclass
class _Finished:
    """Where each row's completion ended: its length and its reason (index into FINISH_REASONS)."""

    lengths: torch.Tensor
    reasons: torch.Tensor


def _decode(
    decoder: LeanDecoder | HFCacheDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: SamplingConfig,
    eos_ids: torch.Tensor,
    stops: _StopStrings | None,
    generator: torch.Generator | None,
    on_tokens: TokenCallback | None = None,
    cached: list[CachedPrefix | None] | None = None,
    exports: dict[int, CachedPrefix] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, _Finished]:
    """The sampling loop: tokens [B, N], log-probs [B, N] and where each row finished.

    `on_tokens` gets batch rows (not prompt indices) and their tokens, live rows only.
    `cached` (lean decoder only): per batch row, the keys and values of its prompt's first
    tokens. `exports`, where given, receives per batch row the keys and values of its
    prompt and its completion but the last token (those `step` fed while the row lived),
    taken as the row leaves the batch.
    """
    batch, budget, device = len(input_ids), config.max_new_tokens, input_ids.device
    tokens = torch.zeros(batch, budget, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, budget, dtype=torch.float32, device=device)
    finished = _Finished(
        lengths=torch.full((batch,), budget, dtype=torch.long, device=device),
        reasons=torch.zeros(batch, dtype=torch.long, device=device),
    )
    rows = torch.arange(batch, device=device)  # the batch row of each decoder row
    live = torch.ones(batch, dtype=torch.bool, device=device)  # decoder rows still sampling

    prompt_lengths = attention_mask.sum(-1)

    def export(decoder_rows: torch.Tensor) -> None:
        if exports is None or not isinstance(decoder, LeanDecoder):
            return
        for row in decoder_rows.tolist():
            b = int(rows[row])
            n = int(prompt_lengths[b] + finished.lengths[b]) - 1
            exports[b] = decoder.export(row, n)

    if isinstance(decoder, LeanDecoder):
        logits = decoder.prefill(input_ids, attention_mask, cached=cached)
    else:
        logits = decoder.prefill(input_ids, attention_mask)
    for step in range(budget):
        token, logprob = next_tokens(logits, config, generator)
        tokens[rows, step] = token
        logprobs[rows, step] = logprob
        if on_tokens is not None:
            on_tokens(rows[live].tolist(), token[live].tolist())
        if len(eos_ids):
            ended = torch.isin(token, eos_ids) & live
            finished.lengths[rows[ended]] = step + 1
            finished.reasons[rows[ended]] = FINISH_REASONS.index("eos")
            live &= ~ended
        if stops is not None:
            for row in stops.hits(tokens, step, rows[live].tolist()):
                finished.lengths[row] = step + 1
                finished.reasons[row] = FINISH_REASONS.index("stop")
                live &= rows != row
        n_live = int(live.sum())
        if n_live == 0 or step + 1 == budget:
            break
        # Drop finished rows from the lean decoder's batch once a quarter of it is idle
        # (copying the cache costs about one step; not worth it at the very end).
        if isinstance(decoder, LeanDecoder) and n_live <= 0.75 * len(live) and budget - step > 4:
            kept = live.nonzero().squeeze(1)
            export((~live).nonzero().squeeze(1))
            decoder.keep(kept)
            rows, live, token = rows[kept], live[kept], token[kept]
        logits = decoder.step(token)
    export(torch.arange(len(rows), device=device))
    return tokens, logprobs, finished


def sample(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    eos_token_ids: Sequence[int] | None = None,
    on_tokens: TokenCallback | None = None,
    prefix_cache: PrefixCache | None = None,
    cache_keys: Sequence[Hashable] | None = None,
) -> Samples:
    """Sample one completion per prompt (token-id lists); ids and log-probs exactly as sampled.

    `eos_token_ids` end a completion (default: `end_token_ids(tokenizer)`; [] for none).
    `on_tokens(prompt_indices, token_ids)` is called after every decode step (see the
    module docstring). With a `prefix_cache`, prompt i reuses and then replaces the entry
    of `cache_keys[i]` (see `PrefixCache`).
    """
    if prefix_cache is not None and (cache_keys is None or len(cache_keys) != len(prompts)):
        raise ValueError("a prefix_cache needs cache_keys, one key per prompt")
    checked = _check_prompts(model, prompts, config)
    eos = end_token_ids(tokenizer) if eos_token_ids is None else [int(t) for t in eos_token_ids]
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    max_len = max(map(len, checked)) + config.max_new_tokens
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    # Rows run sorted by prompt length, so that prefill chunks carry little padding.
    order = sorted(range(len(checked)), key=lambda i: len(checked[i]))

    training = [(m, m.training) for m in model.modules()]
    if model.training:  # no dropout while sampling, adapters included (a no-op costs ~1.5 ms)
        model.eval()
    try:
        with torch.inference_mode():
            input_ids, attention_mask = _left_pad([checked[i] for i in order], pad_id, device)
            decoder: LeanDecoder | HFCacheDecoder
            if lean_decoder_supports(model, max_len) is None:
                decoder = LeanDecoder(model, len(checked), max_len)
            else:
                decoder = HFCacheDecoder(model)
            eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
            stops = _StopStrings(tokenizer, config.stop_strings) if config.stop_strings else None
            step_callback: TokenCallback | None = None
            if on_tokens is not None:
                callback = on_tokens  # rows run in `order`; the callback speaks prompt indices

                def step_callback(rows: list[int], ids: list[int]) -> None:
                    callback([order[row] for row in rows], ids)

            cached: list[CachedPrefix | None] | None = None
            exports: dict[int, CachedPrefix] | None = None
            if prefix_cache is not None and isinstance(decoder, LeanDecoder):
                assert cache_keys is not None
                keys = [cache_keys[i] for i in order]
                cached = [prefix_cache.lookup(keys[r], checked[i]) for r, i in enumerate(order)]
                exports = {}
                reused = sum(prefix.length for prefix in cached if prefix is not None)
                prefix_cache.reused += reused
                prefix_cache.computed += sum(map(len, checked)) - reused
            tokens, logprobs, finished = _decode(
                decoder,
                input_ids,
                attention_mask,
                config,
                eos_ids,
                stops,
                generator,
                step_callback,
                cached,
                exports,
            )
            if prefix_cache is not None and exports is not None:
                for row, prefix in exports.items():
                    prompt = checked[order[row]]
                    fed = tokens[row, : prefix.length - len(prompt)].tolist()
                    prefix_cache.store(keys[row], prompt + fed, prefix)
    finally:
        for module, mode in training:
            module.training = mode

    rank = {row: r for r, row in enumerate(order)}
    lengths = finished.lengths.tolist()
    reasons = [FINISH_REASONS[r] for r in finished.reasons.tolist()]
    all_ids, all_logprobs = tokens.tolist(), logprobs.tolist()
    token_ids = [all_ids[rank[i]][: lengths[rank[i]]] for i in range(len(checked))]
    token_logprobs = [all_logprobs[rank[i]][: lengths[rank[i]]] for i in range(len(checked))]
    finish_reasons = [reasons[rank[i]] for i in range(len(checked))]
    text_ids = [
        ids[:-1] if why == "eos" else ids
        for ids, why in zip(token_ids, finish_reasons, strict=True)
    ]
    return Samples(
        token_ids=token_ids,
        logprobs=token_logprobs,
        finish_reasons=finish_reasons,
        texts=tokenizer.batch_decode(text_ids, skip_special_tokens=False),
    )
