"""The optimizers: Newton-Schulz orthogonalisation, Muon's update by hand, AdamW's part against
torch's AdamW, and which parameters Muon takes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from onthejob.train.optim import MuonAdamW, muon_adamw, orthogonalize


@pytest.mark.parametrize("shape", [(8, 8), (6, 16), (16, 6)])
def test_orthogonalize_moves_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    matrix = torch.randn(*shape) * torch.logspace(-1, 0, shape[1])  # condition ~10
    result = orthogonalize(matrix)
    assert result.shape == matrix.shape
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.55 and singular.max() < 1.3, singular
    # the same singular vectors as U V^T: their product is close to the exact polar factor
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    polar = u @ vh
    cosine = (result * polar).sum() / (result.norm() * polar.norm())
    assert cosine > 0.95


def test_orthogonalize_of_a_diagonal_matrix_is_diagonal_and_scale_free():
    diagonal = torch.diag(torch.tensor([3.0, 1.0]))
    result = orthogonalize(diagonal)
    assert torch.allclose(result, torch.diag(torch.diagonal(result)))
    assert torch.allclose(orthogonalize(diagonal * 7), result, atol=1e-6)


def test_muon_step_is_nesterov_momentum_orthogonalised_and_rms_scaled():
    weight = nn.Parameter(torch.zeros(4, 2))
    optimizer = MuonAdamW([{"params": [weight], "muon": True}], lr=0.1, momentum=0.5)
    grads = [torch.arange(8.0).reshape(4, 2) - 3, torch.ones(4, 2)]
    expected = torch.zeros(4, 2)
    buffer = torch.zeros(4, 2)
    for grad in grads:
        weight.grad = grad.clone()
        optimizer.step()
        buffer = 0.5 * buffer + grad
        expected -= 0.1 * 0.2 * math.sqrt(4) * orthogonalize(grad + 0.5 * buffer)
        assert torch.allclose(weight.detach(), expected, atol=1e-6)


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    ours = nn.Parameter(torch.randn(5, 3))
    theirs = nn.Parameter(ours.detach().clone())
    mine = MuonAdamW([{"params": [ours], "weight_decay": 0.1}], lr=0.01)
    reference = torch.optim.AdamW([theirs], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(4):
        grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    assert torch.allclose(ours.detach(), theirs.detach(), atol=1e-6)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(10, 4)
            self.q_proj = nn.Linear(4, 4, bias=True)
            self.norm = nn.LayerNorm(4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed_tokens.weight  # tied: counted once

    model = Tiny()
    optimizer = muon_adamw(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    muon = [g for g in optimizer.param_groups if g["muon"]]
    assert [p for g in muon for p in g["params"]] == [model.q_proj.weight]
    assert muon[0]["weight_decay"] == 0.05
    others = [p for g in optimizer.param_groups if not g["muon"] for p in g["params"]]
    assert len(others) == 4  # embedding (once), q bias, norm weight and bias
    decayed = [g for g in optimizer.param_groups if not g["muon"] and g["weight_decay"]]
    assert [p for g in decayed for p in g["params"]] == [model.embed_tokens.weight]


def test_muon_adamw_state_round_trips_through_state_dict():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    optimizer = muon_adamw(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    copy = muon_adamw(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95))
    copy.load_state_dict(optimizer.state_dict())
    for a, b in zip(optimizer.param_groups, copy.param_groups, strict=True):
        for p, q in zip(a["params"], b["params"], strict=True):
            for key, value in optimizer.state[p].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(copy.state[q][key]))
