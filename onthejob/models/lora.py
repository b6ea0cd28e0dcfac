"""LoRA adapters (PEFT) on one model in memory.

Covers: wrapping a causal LM with a LoRA adapter, switching it off to get the
base model back without a second copy of the weights (OPSD's fixed teacher),
saving/loading adapters in the PEFT directory format, and `keep_share`: keeping a
share of what training changed (weight-space interpolation between the weights before
and after, as in WiSE-FT, Wortsman et al. 2022), exactly for full weights and fresh
adapters, and at the adapter's rank for an adapter trained further.

Not covered: merging adapters into the base for export (peft's
`merge_and_unload` does that as it comes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraModel

_DISABLED: set[int] = set()
"""ids of the LoRA models `adapter_disabled` has switched off right now (nesting is a no-op)."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters."""

    rank: int = 16
    """Rank r of the low-rank update."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )
    """Names of the linear layers that get an adapter."""


def add_lora(model: torch.nn.Module, settings: LoraSettings = LoraSettings()) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter (initialised to a zero update)."""
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block the model computes as its base (adapter off); no-op for plain models.

    LoRA layers are switched directly (peft's `disable_adapter` first surveys every
    layer's status, which cost 6 of its 9 ms per call at the default size: OPSD's
    fixed teacher switches twice a step)."""
    if isinstance(model, PeftModel) and isinstance(model.base_model, LoraModel):
        if id(model) in _DISABLED:
            yield model
            return
        _DISABLED.add(id(model))
        model.base_model.disable_adapter_layers()
        try:
            yield model
        finally:
            model.base_model.enable_adapter_layers()
            _DISABLED.discard(id(model))
    elif isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
    else:
        yield model


def load_adapter(
    model: torch.nn.Module, adapter_dir: str | Path, trainable: bool = False
) -> PeftModel:
    """Attach a saved adapter to a base model."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"not an adapter directory (no adapter_config.json): {adapter_dir}")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable parameters, by name: the "before" of `keep_share`."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def keep_share(model: torch.nn.Module, before: dict[str, torch.Tensor], share: float) -> float:
    """Move the trained parameters in place so the model computes `before` plus `share` of
    the change: W0 + share * (W1 - W0) for every weight `before` holds, LoRA updates
    included (the update is B @ A, so its factors are not interpolated one by one).

    - A plain weight: interpolated as it stands.
    - A fresh adapter (B was zero before): B becomes share * B, exact.
    - An adapter trained further (B0 @ A0 -> B1 @ A1): the target (1 - share) B0 A0 +
      share B1 A1 has rank up to twice the adapter's; it is cut back to the adapter's rank
      by a truncated SVD of the factors (QR of each, SVD of the small core).

    Returns the relative Frobenius error of those cuts over all adapters (0.0: exact)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1], got {share}")
    params = dict(model.named_parameters())
    cut, total = 0.0, 0.0
    with torch.no_grad():
        for name, old in before.items():
            if ".lora_A." in name or ".lora_B." in name:
                continue
            params[name].lerp_(old.to(params[name]), 1 - share)
        for name_a in [n for n in before if ".lora_A." in n]:
            name_b = name_a.replace(".lora_A.", ".lora_B.")
            a1, b1 = params[name_a], params[name_b]
            a0, b0 = before[name_a].to(a1), before[name_b].to(b1)
            if not b0.any():
                b1.mul_(share)
                continue
            b_new, a_new, lost, kept = _low_rank_blend(b0, a0, b1, a1, share)
            b1.copy_(b_new)
            a1.copy_(a_new)
            cut, total = cut + lost, total + kept + lost
    return (cut / total) ** 0.5 if total > 0 else 0.0


def _low_rank_blend(
    b0: torch.Tensor, a0: torch.Tensor, b1: torch.Tensor, a1: torch.Tensor, share: float
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B, A) of the adapter's rank closest to (1 - share) B0 A0 + share B1 A1 in Frobenius
    norm, the squared norm cut off, and the squared norm kept."""
    rank = a1.shape[0]
    b = torch.cat([(1 - share) * b0, share * b1], dim=1).float()  # out x 2r
    a = torch.cat([a0, a1], dim=0).float()  # 2r x in
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    root = s[:rank].sqrt()
    b_new = (q_b @ u[:, :rank]) * root
    a_new = (root[:, None] * vh[:rank]) @ q_a.T
    lost, kept = float((s[rank:] ** 2).sum()), float((s[:rank] ** 2).sum())
    return b_new.to(b1.dtype), a_new.to(a1.dtype), lost, kept
