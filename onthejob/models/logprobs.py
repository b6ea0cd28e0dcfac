"""Per-token log-probabilities of a batch under a causal LM.

Covers: log p(x_t | x_<t) for every position of a padded batch (left or right
padding), at a sampling temperature, computed as logit minus logsumexp so the
full log-softmax is never materialised; and the per-token entropy.

Not covered: divergences between two models (see `onthejob.train`).
"""

from __future__ import annotations

import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding safe)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits [B, T, V] of a padded batch, with position ids derived from the mask."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        use_cache=False,
    )
    return out.logits


def gather_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature)[target] for each position, in float32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """[B, T-1] log-probs of tokens 1..T-1 given their prefix; padded positions are 0."""
    logits = forward_logits(model, input_ids, attention_mask)[:, :-1]
    logprobs = gather_logprobs(logits, input_ids[:, 1:], temperature)
    return logprobs * attention_mask[:, 1:].to(logprobs.dtype)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) at each position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
