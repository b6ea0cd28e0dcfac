"""A training forward that runs each group's shared prompt once: GRPO's G rollouts of a task
all start with the same prompt tokens, so their prefix is computed once per group and its
keys and values are attended to by all G continuations.

Covers: hidden states (autograd on) of right-padded continuations [m, S] whose first
`prefix_lengths[group_of[i]]` positions are a prefix shared by their group, for the
Llama-family models that `onthejob.models.fast.LeanDecoder` runs (Llama, Qwen2, Qwen3,
Mistral; plain or PEFT LoRA). It reuses that decoder's pieces (fused q|k|v and gate|up
projections, float32 `rms_norm`, rotary tables of the model's own rotary module), built
fresh at each call so the fused weights stay in the autograd graph. Saves (G - 1) / G of
the prompt's compute in forward and backward.

Not covered: other architectures (`grpo.masked_logprobs` runs their own HF forward
instead), attention dropout (none of the supported defaults use it), gradient
checkpointing.

Departures from the HF forward: the same arithmetic on a different grouping of rows
(prefix rows once, continuation rows attending to their group's prefix keys through an
explicit mask); checked against the HF forward in tests/test_grpo.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onthejob.models.fast import LeanDecoder, base_causal_lm, lean_decoder_supports, rms_norm


def shared_prefix_supported(model: torch.nn.Module, max_len: int) -> bool:
    """True when `shared_prefix_hidden` can run this model for sequences up to max_len."""
    return lean_decoder_supports(model, max_len) is None


def shared_prefix_hidden(
    model: torch.nn.Module,
    prefix_ids: torch.Tensor,
    prefix_lengths: torch.Tensor,
    suffix_ids: torch.Tensor,
    group_of: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states [m, S, H] of the continuations, before the final norm.

    prefix_ids [n, P]: each group's shared prefix, right-padded (length prefix_lengths[g]);
    suffix_ids [m, S]: each row's tokens after its group's prefix, right-padded;
    group_of [m]: the group (row of prefix_ids) of each continuation.
    """
    n, p = prefix_ids.shape
    m, s = suffix_ids.shape
    dec = LeanDecoder(model, batch_size=1, max_len=p + s)  # pieces only: its cache stays unused
    device = suffix_ids.device
    offsets = prefix_lengths[group_of]
    suffix_positions = offsets[:, None] + torch.arange(s, device=device)
    cos_pre, sin_pre = dec.cos[:p][None, :, None], dec.sin[:p][None, :, None]
    cos_suf, sin_suf = dec.cos[suffix_positions][:, :, None], dec.sin[suffix_positions][:, :, None]
    prefix_valid = torch.arange(p, device=device)[None] < prefix_lengths[:, None]  # [n, P]
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    mask = torch.cat(
        [prefix_valid[group_of][:, None, :].expand(m, s, p), causal.expand(m, s, s)], dim=-1
    )[:, None]  # [m, 1, S, P + S]: the group's real prefix tokens, then causal

    embed = base_causal_lm(model).model.embed_tokens
    x_pre, x_suf = embed(prefix_ids), embed(suffix_ids)
    gqa = dec.group > 1
    for layer in dec.layers:
        q_pre, k_pre, v_pre = dec._qkv(
            layer, dec._rms_norm(layer.input_norm, x_pre), cos_pre, sin_pre
        )
        q_suf, k_suf, v_suf = dec._qkv(
            layer, dec._rms_norm(layer.input_norm, x_suf), cos_suf, sin_suf
        )
        k_pre, v_pre = k_pre.transpose(1, 2), v_pre.transpose(1, 2)  # [n, KV, P, D]
        out_pre = F.scaled_dot_product_attention(
            q_pre.transpose(1, 2), k_pre, v_pre, is_causal=True, scale=dec.scale, enable_gqa=gqa
        )  # right padding: causal attention is exact for every real prefix position
        keys = torch.cat([k_pre[group_of], k_suf.transpose(1, 2)], dim=2)
        values = torch.cat([v_pre[group_of], v_suf.transpose(1, 2)], dim=2)
        out_suf = F.scaled_dot_product_attention(
            q_suf.transpose(1, 2), keys, values, attn_mask=mask, scale=dec.scale, enable_gqa=gqa
        )
        x_pre = x_pre + layer.o_proj(out_pre.transpose(1, 2).reshape(n, p, -1))
        x_suf = x_suf + layer.o_proj(out_suf.transpose(1, 2).reshape(m, s, -1))
        x_pre = x_pre + dec._mlp(layer, dec._rms_norm(layer.post_attention_norm, x_pre))
        x_suf = x_suf + dec._mlp(layer, dec._rms_norm(layer.post_attention_norm, x_suf))
    return x_suf


def final_norm(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's final norm (float32 `rms_norm` where LeanDecoder uses it)."""
    return rms_norm(base_causal_lm(model).model.norm, hidden)
