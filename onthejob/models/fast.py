"""A lean decode forward for Llama-family causal LMs: static KV cache, few calls per layer.

Covers: prefill and one-token decode steps for Hugging Face Llama, Qwen2, Qwen3
and Mistral models (and the same models wrapped by PEFT), with a KV cache
preallocated as [batch, kv_heads, max_len, head_dim] and written in place,
rotary cos/sin tables computed once by the model's own rotary module, and
position ids taken from the attention mask (left padding), dropping
finished rows from the batch (`keep`), and carrying a row's keys and values
over to a later prefill whose prompt extends it (`export`, `CachedPrefix`: the
prefill then computes only the new columns). `sample` in `onthejob.sampling`
drives it; `lean_decoder_supports` says when it applies.

Not covered: sliding-window attention shorter than the sequence, rope types
that depend on the sequence length ("dynamic"), MoE blocks, training (it runs
under `torch.inference_mode` and keeps no autograd state). Unsupported models
go through the model's own forward and cache instead. No `torch.compile` (its
compile time on a 2-core CPU is many times a whole sampling call) and no
implicit bf16 (this project's AVX2 CPU runs bf16 matmuls far slower than fp32;
a model loaded in bf16 does run in bf16).

Departures from the HF forward it mirrors (same arithmetic, fewer and larger
calls; checked against it in tests/test_sampling.py):

- Plain `nn.Linear` projections are fused (q|k|v into one matrix, gate|up into
  one). With autograd off (sampling), a PEFT LoRA linear counts as plain: its
  active adapters' updates are added to a copy of its weight, so an active
  adapter counts, a disabled one does not, and neither costs extra matmuls.
  Anything else (a LoRA layer with autograd on, DoRA, a quantized layer) is
  called as the module it is. Fused matrices are copies taken when the decoder
  is built: build a fresh decoder after the weights change (`sample` builds one
  per call).
- Prefill runs the batch in chunks of rows, each cut to its own longest prompt,
  so rows sorted by length carry little padding (HF pads all rows to the
  longest prompt).
- Decode attention in float32 is two batched matmuls and a softmax (faster
  than CPU SDPA for one query row); the query heads that share a KV head act as
  rows of one query, so grouped-query attention repeats no keys. Other dtypes
  use SDPA, which keeps its softmax in float32.
- RMSNorm in float32 is `torch.nn.functional.rms_norm`; other dtypes call the
  model's own norm module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LEAN_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")

Projection = Callable[[torch.Tensor], torch.Tensor]


def base_causal_lm(model: nn.Module) -> Any:
    """The HF causal LM inside a PEFT wrapper (its LoRA layers sit inside it); else `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def lean_decoder_supports(model: nn.Module, max_len: int) -> str | None:
    """None if `LeanDecoder` can run `model` for sequences up to `max_len`, else the reason not."""
    lm = base_causal_lm(model)
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(LEAN_MODEL_TYPES)}"
    body = getattr(lm, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb"):
        return "model has no .model.layers / .model.rotary_emb"
    rope_type = str(getattr(body.rotary_emb, "rope_type", "default"))
    if rope_type == "dynamic" or "longrope" in rope_type:
        return f"rope type {rope_type!r} depends on the sequence length"
    config = lm.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv_freq = getattr(body.rotary_emb, "inv_freq", None)
    if inv_freq is None or 2 * inv_freq.numel() != head_dim:
        return "rotary embedding does not cover the whole head (partial rotary)"
    for layer in body.layers:
        window = getattr(layer.self_attn, "sliding_window", None)
        if window is not None and window < max_len:
            return f"sliding-window attention ({window}) shorter than the sequence ({max_len})"
        if not all(
            hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")
        ):
            return "MLP is not a gated (gate/up/down) block"
    return None


def _linear_weights(module: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) that compute `module` as one F.linear, or None to call it as it is.

    A plain nn.Linear gives its own. With autograd off, a PEFT LoRA linear gives its base
    weight plus its active adapters' updates (peft's own `get_delta_weight`): a copy, so
    sampling with an adapter costs what sampling without one does, and no gradient could
    reach the adapter through it (with autograd on, the module is called). A disabled
    adapter gives the base weight; LoRA variants such as DoRA are called as modules.
    """
    if type(module) is nn.Linear:
        return module.weight, module.bias
    base = getattr(module, "base_layer", None)
    if torch.is_grad_enabled() or type(base) is not nn.Linear:
        return None
    if not all(hasattr(module, a) for a in ("get_delta_weight", "lora_A", "lora_variant")):
        return None
    if module.disable_adapters:
        return None if module.merged else (base.weight, base.bias)
    if module.merged:  # the base weight already holds the update
        return base.weight, base.bias
    active = [name for name in module.active_adapters if name in module.lora_A]
    if any(name in module.lora_variant for name in active):
        return None
    weight = base.weight
    for name in active:
        weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def _as_function(module: Any) -> Projection:
    """A linear (see `_linear_weights`) as a bare F.linear call; anything else as itself."""
    weights = _linear_weights(module)
    if weights is None:
        return module
    weight, bias = weights
    return lambda x: F.linear(x, weight, bias)


def _fused(modules: list[Any]) -> Projection | None:
    """One F.linear over the stacked weights of linears; None if any is not one."""
    parts = [_linear_weights(m) for m in modules]
    if any(part is None for part in parts):
        return None
    pairs = [part for part in parts if part is not None]
    weight = torch.cat([w for w, _ in pairs])
    bias = None
    if any(b is not None for _, b in pairs):
        bias = torch.cat([w.new_zeros(len(w)) if b is None else b for w, b in pairs])
    return lambda x: F.linear(x, weight, bias)


@dataclass(frozen=True)
class CachedPrefix:
    """The keys and values of a row's first tokens, one [kv_heads, n, head_dim] tensor per
    layer each, as a `LeanDecoder` of the same weights computed them (`LeanDecoder.export`):
    a later prefill of a prompt that starts with those tokens copies them in instead of
    computing them again. Rotary positions are already applied (a prompt starts at 0)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        """Tokens covered."""
        return int(self.keys[0].shape[1])

    def cut(self, n: int) -> CachedPrefix:
        """The first n tokens' keys and values (views, no copy)."""
        return CachedPrefix([k[:, :n] for k in self.keys], [v[:, :n] for v in self.values])


@dataclass
class _Layer:
    """One decoder block: its norms and attention module, its projections as fused or module calls."""

    input_norm: nn.Module
    post_attention_norm: nn.Module
    attention: Any
    qkv: Projection | None
    """q|k|v in one matmul (plain linears), or None to call q_proj, k_proj, v_proj."""
    o_proj: Projection
    gate_up: Projection | None
    """gate|up in one matmul (plain linears), or None to call the block's MLP as a whole."""
    down_proj: Projection
    mlp: Any


def _layer(block: Any) -> _Layer:
    attn, mlp = block.self_attn, block.mlp
    return _Layer(
        input_norm=block.input_layernorm,
        post_attention_norm=block.post_attention_layernorm,
        attention=attn,
        qkv=_fused([attn.q_proj, attn.k_proj, attn.v_proj]),
        o_proj=_as_function(attn.o_proj),
        gate_up=_fused([mlp.gate_proj, mlp.up_proj]),
        down_proj=_as_function(mlp.down_proj),
        mlp=mlp,
    )


def rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """An HF RMSNorm module applied to x: torch's fused kernel in float32 (equal to HF's
    there), the module itself for other dtypes or other norms."""
    if (
        x.dtype == torch.float32
        and type(norm).__name__.endswith("RMSNorm")
        and hasattr(norm, "variance_epsilon")
    ):
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


class LeanDecoder:
    """Prefill and decode steps of one batch, with a static KV cache sized for `max_len`."""

    def __init__(self, model: nn.Module, batch_size: int, max_len: int) -> None:
        reason = lean_decoder_supports(model, max_len)
        if reason is not None:
            raise ValueError(f"LeanDecoder cannot run this model: {reason}")
        lm = base_causal_lm(model)
        config, body = lm.config, lm.model
        self.embed: nn.Module = body.embed_tokens
        self.norm: nn.Module = body.norm
        self.lm_head = _as_function(lm.get_output_embeddings())
        self.layers = [_layer(block) for block in body.layers]
        self.num_heads: int = config.num_attention_heads
        self.num_kv_heads: int = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim: int = (
            getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        )
        self.group = self.num_heads // self.num_kv_heads
        self.scale = float(getattr(body.layers[0].self_attn, "scaling", self.head_dim**-0.5))
        weight: torch.Tensor = body.embed_tokens.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.batch_size, self.max_len = batch_size, max_len

        # Rotary tables from the model's own module (covers llama3/yarn scaling), with the
        # sign of rotate_half folded into sin so that rotating is a roll and one addcmul.
        positions = torch.arange(max_len, device=self.device)[None]
        probe = torch.zeros(1, max_len, self.head_dim, dtype=self.dtype, device=self.device)
        cos, sin = body.rotary_emb(probe, positions)
        half = self.head_dim // 2
        self.cos = cos[0].to(self.dtype)
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).to(self.dtype)

        shape = (batch_size, self.num_kv_heads, max_len, self.head_dim)
        self.keys = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [
            torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers
        ]
        # Additive mask over cache columns for decode steps: -inf on each row's left padding
        # (one copy per KV head, so that it folds into the score matmul as [B * KV, 1, T]).
        self.key_bias = torch.zeros(
            batch_size, self.num_kv_heads, 1, max_len, dtype=self.dtype, device=self.device
        )
        self.length = 0
        """Cache columns filled so far (the same for every row: prompts are left-padded)."""
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        """Position id of each row's next token."""

    def _rms_norm(self, norm: Any, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(norm, x)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, dims=-1), sin)

    def _qkv(
        self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated q [B, S, H, D] and k [B, S, KV, D], and v [B, S, KV, D]."""
        b, s = x.shape[:2]
        h, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        attn = layer.attention
        qk_norm = hasattr(attn, "q_norm")  # Qwen3: RMSNorm over each head before rotary
        if layer.qkv is not None and not qk_norm:
            qkv = layer.qkv(x).view(b, s, h + 2 * kv, d)
            qk = self._rotate(qkv[:, :, : h + kv], cos, sin)  # q and k heads rotate together
            return qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]
        if layer.qkv is not None:
            q, k, v = layer.qkv(x).view(b, s, h + 2 * kv, d).split([h, kv, kv], dim=2)
        else:
            q = attn.q_proj(x).view(b, s, h, d)
            k = attn.k_proj(x).view(b, s, kv, d)
            v = attn.v_proj(x).view(b, s, kv, d)
        if qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin), v

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.gate_up is None:
            return layer.mlp(x)
        gate, up = layer.gate_up(x).chunk(2, dim=-1)
        return layer.down_proj(layer.mlp.act_fn(gate).mul_(up))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._rms_norm(self.norm, hidden)).float()

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        chunk_rows: int = 0,
        cached: Sequence[CachedPrefix | None] | None = None,
    ) -> torch.Tensor:
        """Run the left-padded prompts [B, L]; fill the cache; float32 logits [B, V] of the last position.

        Identical rows (GRPO's G rollouts of a task, OPSD's samples of a probe) run once:
        the distinct prompts fill the first cache rows, which are then copied to every row
        that repeats them. Rows go through in chunks of `chunk_rows` (0: an eighth of the
        distinct rows, at least 8), each cut to its own longest prompt, so sorting the
        prompts by length first saves most of the padding's compute.

        `cached[i]`, where given, holds the keys and values of row i's first tokens (fewer
        than its prompt has): they are copied in, and a chunk computes only its last
        columns, as many as its rows' longest uncached part (a multi-turn episode's next
        turn computes the new observation, not the whole chat again).
        """
        b, length = input_ids.shape
        if b != self.batch_size or length >= self.max_len:
            raise ValueError(f"prefill of shape {tuple(input_ids.shape)} does not fit the cache")
        self.key_bias.zero_()
        self.key_bias[..., :length].masked_fill_(
            (attention_mask == 0)[:, None, None], float("-inf")
        )
        self.positions = attention_mask.long().sum(-1)
        self.length = length
        rows_and_mask = torch.cat([input_ids, attention_mask.long()], dim=1)
        _, copy_of = torch.unique(rows_and_mask, dim=0, return_inverse=True)
        n = int(copy_of.max()) + 1
        # Distinct rows in order of first appearance (the caller's length order is kept).
        every = torch.arange(b, device=input_ids.device)
        first = torch.full((n,), b, device=input_ids.device).scatter_reduce(
            0, copy_of, every, "amin"
        )
        order = first.argsort()
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=input_ids.device)
        copy_of = rank[copy_of]
        ids, mask = input_ids[first[order]], attention_mask[first[order]]
        real = mask.sum(-1).tolist()
        prefixes = [None if cached is None else cached[i] for i in first[order].tolist()]
        for i, prefix in enumerate(prefixes):
            if prefix is not None and not 0 < prefix.length < real[i]:
                raise ValueError(
                    f"a cached prefix of {prefix.length} tokens for a prompt of {real[i]}: it"
                    " must cover at least one token and leave at least one to compute"
                )
        chunk_rows = chunk_rows or max(8, n // 8)
        logits = []
        for start in range(0, n, chunk_rows):
            rows = slice(start, min(start + chunk_rows, n))
            width = max(real[rows])
            new = max(
                r - (p.length if p else 0) for r, p in zip(real[rows], prefixes[rows], strict=True)
            )
            self._fill_cached(rows, real[rows], prefixes[rows], new)
            logits.append(
                self._prefill_rows(
                    rows, ids[rows, length - width :], mask[rows, length - width :], new
                )
            )
        if n < b:
            for cache in (*self.keys, *self.values):
                cache[:, :, :length] = cache[copy_of, :, :length]
        return torch.cat(logits)[copy_of]

    def _fill_cached(
        self, rows: slice, real: list[int], prefixes: list[CachedPrefix | None], new: int
    ) -> None:
        """Zero the cache left of a chunk's last `new` columns (masked columns must hold
        finite numbers: 0 * NaN = NaN), then copy in its rows' cached prefixes."""
        for layer, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            keys[rows, :, : self.length - new] = 0
            values[rows, :, : self.length - new] = 0
            for row, length, prefix in zip(
                range(rows.start, rows.stop), real, prefixes, strict=True
            ):
                if prefix is not None:
                    start = self.length - length
                    keys[row, :, start : start + prefix.length] = prefix.keys[layer]
                    values[row, :, start : start + prefix.length] = prefix.values[layer]

    def _prefill_rows(
        self, rows: slice, input_ids: torch.Tensor, attention_mask: torch.Tensor, new: int
    ) -> torch.Tensor:
        """Compute the last `new` of a chunk's `width` columns against all of them (the
        columns before hold cached keys and values, or padding)."""
        b, width = input_ids.shape
        offset, skip = self.length - width, width - new
        valid = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, skip:]
        causal = torch.ones(new, width, dtype=torch.bool, device=self.device).tril(skip)
        # Real queries see real keys up to themselves; pad queries see only themselves
        # (their outputs are never read, but an all-masked row would give NaN).
        columns = torch.arange(width, device=self.device)
        itself = columns[None] == torch.arange(skip, width, device=self.device)[:, None]
        mask = (causal[None] & valid[:, None, :]) | itself
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]

        hidden = self.embed(input_ids[:, skip:])
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            q, k, v = self._qkv(layer, self._rms_norm(layer.input_norm, hidden), cos, sin)
            keys[rows, :, offset + skip : self.length] = k.transpose(1, 2)
            values[rows, :, offset + skip : self.length] = v.transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                keys[rows, :, offset : self.length],
                values[rows, :, offset : self.length],
                attn_mask=mask[:, None],
                scale=self.scale,
                enable_gqa=self.group > 1,
            )
            hidden = hidden + layer.o_proj(out.transpose(1, 2).reshape(b, new, -1))
            hidden += self._mlp(layer, self._rms_norm(layer.post_attention_norm, hidden))
        return self._logits(hidden[:, -1])

    def _decode_attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """q [B, KV, G, D] against cached keys/values [B, KV, T, D] -> [B, KV * G * D]."""
        b, kv, g, d = q.shape
        t = keys.shape[2]
        bias = self.key_bias[..., :t]
        if q.dtype != torch.float32:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=bias[:, :1], scale=self.scale
            )
            return out.reshape(b, -1)
        # A scaled, masked matmul, a softmax and a matmul: faster than CPU SDPA for one query row.
        scores = torch.baddbmm(
            bias.reshape(b * kv, 1, t),
            q.reshape(b * kv, g, d),
            keys.reshape(b * kv, t, d).transpose(1, 2),
            alpha=self.scale,
        )
        return torch.bmm(scores.softmax(dim=-1), values.reshape(b * kv, t, d)).view(b, -1)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; float32 logits [B, V] for the next one."""
        b, t = self.batch_size, self.length
        if t >= self.max_len:
            raise ValueError(f"KV cache is full ({self.max_len} positions)")
        kv, g, d = self.num_kv_heads, self.group, self.head_dim
        cos, sin = self.cos[self.positions][:, None, None], self.sin[self.positions][:, None, None]

        hidden = self.embed(tokens[:, None])
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            q, k, v = self._qkv(layer, self._rms_norm(layer.input_norm, hidden), cos, sin)
            keys[:, :, t] = k[:, 0]
            values[:, :, t] = v[:, 0]
            # The g query heads of one KV head act as g query rows against its keys.
            out = self._decode_attention(
                q.reshape(b, kv, g, d), keys[:, :, : t + 1], values[:, :, : t + 1]
            )
            hidden += layer.o_proj(out.reshape(b, 1, -1))
            hidden += self._mlp(layer, self._rms_norm(layer.post_attention_norm, hidden))
        self.length = t + 1
        self.positions += 1
        return self._logits(hidden[:, 0])

    def export(self, row: int, n: int) -> CachedPrefix:
        """A copy of the keys and values of the first n tokens of `row` (an index into the
        current batch): its prompt's, then those fed by `step` since."""
        filled = int(self.positions[row])
        if not 0 < n <= filled:
            raise ValueError(f"row {row} holds {filled} tokens; cannot export {n}")
        start = self.length - filled
        return CachedPrefix(
            [k[row, :, start : start + n].clone() for k in self.keys],
            [v[row, :, start : start + n].clone() for v in self.values],
        )

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current batch), cache included: finished rows stop costing."""
        t = self.length
        for i, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            keys[: len(rows), :, :t] = keys[
                rows, :, :t
            ]  # the gather copies first, so overlap is safe
            values[: len(rows), :, :t] = values[rows, :, :t]
            self.keys[i], self.values[i] = keys[: len(rows)], values[: len(rows)]
        self.key_bias = self.key_bias[rows]
        self.positions = self.positions[rows]
        self.batch_size = len(rows)
