"""The optimizers of every training loop: AdamW, and Muon for pretraining's hidden matrices.

Covers: `adamw` (weight decay on matrices only), used by GRPO, OPSD and SFT, and
`muon_adamw`, the optimizer of `onthejob pretrain`: Muon (Jordan et al. 2024,
"Muon: an optimizer for hidden layers") on the 2-D weights inside the
transformer blocks, AdamW on everything else (the embedding, which the tied
output head shares, norm gains, biases). Both are one `torch.optim.Optimizer`, so
one learning-rate scheduler and one checkpoint hold the whole state.

Why Muon for pretraining: the tiny default has to learn to copy a value out of its
context, and that skill forms late, as a jump in accuracy after a plateau. With
Muon the jump comes in about half the steps it takes AdamW at the same learning
rate, batch and data (docs/results.md, "Quote the line, then answer; batch 8; Muon"). Fine-tuning (GRPO, OPSD, SFT)
keeps AdamW: their updates are small, often LoRA, and were tuned with it.

How it departs from the reference Muon: the orthogonalised update is scaled by
0.2 * sqrt(max(rows, cols)), as in Moonshot's "Muon is Scalable for LLM
Training" (Liu et al. 2025), so its RMS matches an AdamW update and the same
learning rate serves both parameter groups; weight decay is decoupled, as in
AdamW. Newton-Schulz runs 5 quintic iterations with Jordan's coefficients in
the parameters' dtype (float32 here), not bfloat16.

Not covered: distributed Muon (each process orthogonalises its full gradient,
which DDP has already averaged), Muon for embeddings or the output head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Jordan's quintic Newton-Schulz coefficients: 5 iterations take every singular value of a
normalised matrix into roughly [0.7, 1.2]."""


def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (never on norms' gains or biases)."""
    params = list(params)
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
    )


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximation of U V^T for matrix = U S V^T (every singular value moved near 1), by
    quintic Newton-Schulz iterations on the matrix scaled to unit Frobenius norm. A stack of
    matrices (..., rows, cols) is orthogonalised matrix by matrix, in batched matmuls."""
    a, b, c = NS_COEFFICIENTS
    x = matrix / (matrix.norm(dim=(-2, -1), keepdim=True) + eps)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the parameter groups marked `muon=True`, AdamW on the others."""

    def __init__(
        self,
        groups: list[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        momentum: float = 0.95,
        eps: float = 1e-8,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "momentum": momentum,
            "eps": eps,
            "weight_decay": 0.0,
            "muon": False,
        }
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MuonAdamW takes no closure")
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if decay:
                torch._foreach_mul_(params, 1 - lr * decay)
            if group["muon"]:
                self._muon_update(params, group, lr)
            else:
                for p in params:
                    self._adamw_update(p, group, lr)

    def _muon_update(self, params: list[torch.Tensor], group: dict[str, Any], lr: float) -> None:
        """Nesterov momentum, orthogonalised, scaled to an AdamW update's RMS. Matrices of one
        shape are orthogonalised together (one batched matmul per iteration, not one each)."""
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in params:
            grad = p.grad
            assert grad is not None
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.mul_(group["momentum"]).add_(grad)
            update = grad.add(buffer, alpha=group["momentum"])
            by_shape.setdefault(tuple(p.shape), []).append((p, update))
        for shape, pairs in by_shape.items():
            directions = orthogonalize(torch.stack([update for _, update in pairs]))
            scale = 0.2 * math.sqrt(max(shape))
            for (p, _), direction in zip(pairs, directions, strict=True):
                p.add_(direction, alpha=-lr * scale)

    def _adamw_update(self, p: torch.Tensor, group: dict[str, Any], lr: float) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))


def muon_adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> MuonAdamW:
    """Muon for the 2-D weights of the transformer blocks; AdamW (decay on matrices only) for
    the embedding, the output head and every 1-D parameter. Tied weights count once."""
    hidden: list[nn.Parameter] = []
    other_matrices: list[nn.Parameter] = []
    vectors: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if p.ndim == 2 and "embed" not in name and "lm_head" not in name:
            hidden.append(p)
        elif p.ndim >= 2:
            other_matrices.append(p)
        else:
            vectors.append(p)
    groups: list[dict[str, Any]] = [
        {"params": hidden, "muon": True, "weight_decay": weight_decay},
        {"params": other_matrices, "weight_decay": weight_decay},
        {"params": vectors},
    ]
    return MuonAdamW([g for g in groups if g["params"]], lr, betas=betas)
