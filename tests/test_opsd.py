"""OPSD: the divergences against hand-computed numbers, teacher and student prompts that differ
only by the context, the teacher kinds, and tiny runs that learn, save, load and resume."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from onthejob.models import adapter_disabled, add_lora, build_model, load_adapter
from onthejob.models.lora import LoraSettings
from onthejob.prompts import KNOWLEDGE_SYSTEM
from onthejob.train import ConfigError, opsd
from onthejob.train.opsd import (
    OPSDConfig,
    Probe,
    Teacher,
    clip_per_token,
    completion_logits,
    distill,
    forward_kl,
    generalized_jsd,
    inserted_span,
    masked_mean,
    probe_divergence,
    probe_prompts,
    reverse_kl,
    sampled_token_loss,
    teacher_messages,
    token_temperatures,
)
from tests.resume_support import crash_then_resume

from .conftest import TINY

LN = math.log

# Two positions: p_s = (0.5, 0.5), p_t = (0.75, 0.25) on a 2-token vocabulary, then
# p_s = (0.5, 0.25, 0.25), p_t = (0.25, 0.25, 0.5) on a 3-token one (logits are log-probs).
#
#   forward KL(t||s), first:  0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.304099 - 0.173287 = 0.130812
#   reverse KL(s||t), first:  0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)   = -0.202733 + 0.346574 = 0.143841
#   JSD(0.5), first: m = (0.625, 0.375);
#     KL(t||m) = 0.75 ln 1.2 + 0.25 ln(2/3) = 0.136741 - 0.101366 = 0.035375
#     KL(s||m) = 0.5 ln 0.8 + 0.5 ln(4/3)   = -0.111572 + 0.143841 = 0.032269
#     0.5 * 0.035375 + 0.5 * 0.032269 = 0.033822
#   second: forward = 0.25 ln 0.5 + 0 + 0.5 ln 2 = 0.25 ln 2 = 0.173287; reverse the same.
#   JSD(0.25), second: m = 0.25 t + 0.75 s = (0.4375, 0.25, 0.3125);
#     KL(t||m) = 0.25 ln(0.25/0.4375) + 0.5 ln(0.5/0.3125) = -0.139904 + 0.235002 = 0.095098
#     KL(s||m) = 0.5 ln(0.5/0.4375) + 0.25 ln(0.25/0.3125) = 0.066766 - 0.055786 = 0.010980
#     0.25 * 0.095098 + 0.75 * 0.010980 = 0.032009


def _two_token():
    return torch.tensor([[[LN(0.5), LN(0.5)]]]), torch.tensor([[[LN(0.75), LN(0.25)]]])


def _three_token():
    return torch.tensor([[[LN(0.5), LN(0.25), LN(0.25)]]]), torch.tensor(
        [[[LN(0.25), LN(0.25), LN(0.5)]]]
    )


def test_divergences_by_hand():
    s2, t2 = _two_token()
    s3, t3 = _three_token()
    assert forward_kl(s2, t2).item() == pytest.approx(0.130812, abs=1e-6)
    assert reverse_kl(s2, t2).item() == pytest.approx(0.143841, abs=1e-6)
    assert generalized_jsd(s2, t2, 0.5).item() == pytest.approx(0.033822, abs=1e-6)
    assert forward_kl(s3, t3).item() == pytest.approx(0.173287, abs=1e-6)
    assert reverse_kl(s3, t3).item() == pytest.approx(0.173287, abs=1e-6)
    assert generalized_jsd(s3, t3, 0.25).item() == pytest.approx(0.032009, abs=1e-6)


def test_divergences_keep_batch_and_time_shape_and_ignore_logit_offsets():
    s2, t2 = _two_token()
    student = torch.cat([s2, s2 + 7.0], dim=1)  # [1, 2, 2]: softmax ignores a constant
    teacher = torch.cat([t2, t2 - 3.0], dim=1)
    out = forward_kl(student, teacher)
    assert out.shape == (1, 2)
    assert out.tolist()[0] == pytest.approx([0.130812, 0.130812], abs=1e-5)


def test_jsd_limits():
    """beta = 0 is forward KL and beta = 1 reverse KL, exactly; near them, JSD(beta) / beta
    tends to forward KL and JSD(beta) / (1 - beta) to reverse KL."""
    s2, t2 = _two_token()
    assert generalized_jsd(s2, t2, 0.0).item() == forward_kl(s2, t2).item()
    assert generalized_jsd(s2, t2, 1.0).item() == reverse_kl(s2, t2).item()
    eps = 1e-3
    assert (generalized_jsd(s2, t2, eps) / eps).item() == pytest.approx(0.130812, rel=2e-3)
    assert (generalized_jsd(s2, t2, 1 - eps) / eps).item() == pytest.approx(0.143841, rel=2e-3)


def test_forward_kl_gradient_is_student_minus_teacher_probabilities():
    """d KL(t || s) / d student logits = p_s - p_t = (0.5 - 0.75, 0.5 - 0.25)."""
    s2, t2 = _two_token()
    student = s2.clone().requires_grad_(True)
    forward_kl(student, t2).sum().backward()
    assert student.grad is not None
    assert student.grad.flatten().tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)


def test_entry_clip_caps_each_vocabulary_term():
    """forward terms 0.304099 and -0.173287: capped at 0.1, 0.1 - 0.173287 = -0.073287;
    reverse terms -0.202733 and 0.346574: -0.202733 + 0.1 = -0.102733 (negative terms stay)."""
    s2, t2 = _two_token()
    assert forward_kl(s2, t2, entry_clip=0.1).item() == pytest.approx(-0.073287, abs=1e-6)
    assert reverse_kl(s2, t2, entry_clip=0.1).item() == pytest.approx(-0.102733, abs=1e-6)
    assert forward_kl(s2, t2, entry_clip=1.0).item() == pytest.approx(0.130812, abs=1e-6)


def test_clip_per_token_caps_values_and_stops_their_gradient():
    div = torch.tensor([0.01, 0.2, 0.5], requires_grad=True)
    clipped = clip_per_token(div, 0.1)
    assert clipped.tolist() == pytest.approx([0.01, 0.1, 0.1])
    clipped.sum().backward()
    assert div.grad is not None
    assert div.grad.tolist() == [1.0, 0.0, 0.0]
    assert clip_per_token(div, None) is div


def test_masked_mean_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    assert masked_mean(per_token, mask).item() == pytest.approx((1 + 2 + 5) / 3)
    assert masked_mean(per_token, torch.zeros(2, 3)).item() == 0.0


def test_sampled_token_loss_value_and_gradient_sign():
    """log p_s = ln 0.25, log p_t = ln 0.5: A = ln 2 = 0.693147, loss = -A ln 0.25 = 0.960906,
    d loss / d log p_s = -A < 0, so a step raises the token the teacher prefers; a token the
    teacher likes less (ln 0.125) is pushed down (+0.693147)."""
    student = torch.tensor([LN(0.25), LN(0.25)], requires_grad=True)
    teacher = torch.tensor([LN(0.5), LN(0.125)])
    loss = sampled_token_loss(student, teacher)
    assert loss.tolist() == pytest.approx([0.960906, -0.960906], abs=1e-6)
    loss.sum().backward()
    assert student.grad is not None
    assert student.grad.tolist() == pytest.approx([-0.693147, 0.693147], abs=1e-6)
    clipped = sampled_token_loss(student, teacher, clip=0.5)  # |A| capped at 0.5
    assert clipped.tolist() == pytest.approx([-0.5 * LN(0.25), 0.5 * LN(0.25)], abs=1e-6)


# ---------------------------------------------------------------------------- probes and prompts


def _probes() -> list[Probe]:
    facts = [
        ("who owns billing?", "billing is owned by priya."),
        ("who owns search?", "search is owned by omar."),
        ("what port does auth use?", "auth runs on port 8080."),
        ("tickets for auth?", "tickets for auth are written ops-number."),
    ]
    system = {"role": "system", "content": KNOWLEDGE_SYSTEM}
    return [Probe((system, {"role": "user", "content": q}), ctx) for q, ctx in facts]


def test_teacher_messages_put_the_context_at_the_end_of_the_system_turn():
    probe = _probes()[0]
    chat = teacher_messages(probe)
    assert chat[0] == {
        "role": "system",
        "content": f"{KNOWLEDGE_SYSTEM}\nnotes:\nbilling is owned by priya.",
    }
    assert chat[1:] == list(probe.messages[1:])
    no_system = Probe(({"role": "user", "content": "who owns billing?"},), "billing: priya.")
    assert teacher_messages(no_system) == [
        {"role": "system", "content": "notes:\nbilling: priya."},
        {"role": "user", "content": "who owns billing?"},
    ]


@pytest.mark.parametrize("with_system", [True, False])
def test_teacher_and_student_ids_differ_only_by_the_inserted_context(tokenizer, with_system):
    probe = _probes()[2]
    if not with_system:
        probe = Probe(probe.messages[1:], probe.context)
    student, teacher = probe_prompts(tokenizer, probe)
    span = inserted_span(student, teacher)
    assert span is not None
    start, stop = span
    assert teacher[:start] + teacher[stop:] == student
    inserted = tokenizer.decode(teacher[start:stop])
    expected = (
        "\nnotes:\nauth runs on port 8080."
        if with_system
        else "<|system|>notes:\nauth runs on port 8080.<|end|>"
    )
    assert inserted == expected
    assert student[-1] == teacher[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")


def test_inserted_span_by_hand():
    assert inserted_span([1, 2, 3], [1, 9, 9, 2, 3]) == (1, 3)
    assert inserted_span([1, 2, 3], [1, 2, 3, 4]) == (3, 4)
    assert inserted_span([1, 2, 3], [1, 9, 2, 4]) is None  # something else changed too
    assert inserted_span([1, 2, 3], [1, 2, 3]) is None  # nothing inserted


def test_bad_probes_say_what_is_wrong():
    with pytest.raises(ValueError, match="end before the assistant"):
        Probe(({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}), "ctx")
    with pytest.raises(ValueError, match="context must be non-empty"):
        Probe(({"role": "user", "content": "q"},), "  ")
    with pytest.raises(ValueError, match="at least one message"):
        Probe((), "ctx")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("divergence", "kl"),
        ("teacher", "frozen"),
        ("beta", 1.5),
        ("clip", 0.0),
        ("ema_decay", 1.0),
        ("temperature", 0.0),
        ("batch_size", 0),
        ("token_budget", 0),
        ("on_policy", 1.5),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        OPSDConfig(**{field: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field} must be")


def test_entry_clip_needs_a_full_vocabulary_divergence():
    with pytest.raises(ConfigError, match="entry_clip"):
        OPSDConfig(divergence="sampled", entry_clip=0.05)


# ---------------------------------------------------------------------------- logits and teachers


def _hf_logits_at_completions(model, prompts, completions):
    expected = []
    for prompt, group in zip(prompts, completions, strict=True):
        for c in group:
            logits = model(input_ids=torch.tensor([prompt + c])).logits[0]
            expected.append(logits[len(prompt) - 1 : len(prompt) - 1 + len(c)])
    return torch.cat(expected)


@pytest.mark.parametrize("shared", [True, False])
def test_completion_logits_are_the_hf_forwards_logits_at_the_sampled_positions(
    tokenizer, tiny_model, monkeypatch, shared
):
    if not shared:
        monkeypatch.setattr(opsd, "shared_prefix_supported", lambda *_: False)
    prompts = [[5, 6, 7, 8], [9, 10]]
    completions = [[[11, 12, 13], [14]], [[15, 16]]]
    with torch.no_grad():
        got = completion_logits(tiny_model, prompts, completions, pad_id=0)
        expected = _hf_logits_at_completions(tiny_model, prompts, completions)
    assert got.shape == (6, len(tokenizer))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_completion_logits_of_an_adapter_switched_off_are_the_bases(tokenizer):
    base = build_model(TINY, tokenizer, seed=0).eval()
    original = copy.deepcopy(base)
    model = add_lora(base, LoraSettings(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # an adapter that changes the logits
    prompts, completions = [[5, 6, 7, 8]], [[[11, 12, 13], [14]]]
    with torch.no_grad():
        on = completion_logits(model, prompts, completions, pad_id=0)
        with adapter_disabled(model) as off:
            got = completion_logits(off, prompts, completions, pad_id=0)
        expected = _hf_logits_at_completions(original, prompts, completions)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(on, expected, atol=1e-2)


def _sharp_model(tokenizer):
    """A random tiny model's next-token distributions are near uniform, so a context barely
    moves them (~1e-4 nats/token); weights scaled by 3 make the context matter (~0.95)."""
    model = build_model(TINY, tokenizer, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_fixed_teacher_is_the_adapter_disabled_base_after_training(tokenizer):
    model = _sharp_model(tokenizer)
    original = copy.deepcopy(model)
    student_ids, teacher_ids = probe_prompts(tokenizer, _probes()[0])
    config = OPSDConfig(steps=2, batch_size=2, samples_per_probe=2, max_new_tokens=6, lr=1e-2)
    result = distill(model, tokenizer, _probes(), config, show_progress=False)
    with adapter_disabled(result.model) as base:
        torch.testing.assert_close(_logits(base, teacher_ids), _logits(original, teacher_ids))
    assert not torch.allclose(_logits(result.model, student_ids), _logits(original, student_ids))


def test_fixed_teacher_of_full_fine_tuning_is_the_starting_weights(tokenizer):
    model = _sharp_model(tokenizer)
    original = copy.deepcopy(model)
    params = list(model.parameters())
    teacher = Teacher(model, params, "fixed", 0.0, fresh=False)
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    _, ids = probe_prompts(tokenizer, _probes()[1])
    moved = _logits(model, ids)
    with teacher.weights() as scorer:
        torch.testing.assert_close(_logits(scorer, ids), _logits(original, ids))
    torch.testing.assert_close(_logits(model, ids), moved)  # the student is back afterwards


def test_ema_teacher_moves_by_one_minus_decay():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
    params = list(layer.parameters())
    teacher = Teacher(layer, params, "ema", 0.9, fresh=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0]]))
    teacher.update()  # 0.9 * (1, 2) + 0.1 * (3, 0) = (1.2, 1.8)
    with teacher.weights() as scorer:
        assert scorer.weight.tolist() == [pytest.approx([1.2, 1.8])]
    assert layer.weight.tolist() == [[3.0, 0.0]]


# ---------------------------------------------------------------------------- runs


@pytest.mark.parametrize(
    ("divergence", "lora", "lr"), [("forward_kl", True, 3e-3), ("reverse_kl", False, 1e-3)]
)
def test_distill_lowers_the_divergence_on_its_probes(tokenizer, divergence, lora, lr):
    """30 steps on 4 probes: the no-context student's per-token KL to the with-context
    teacher (measured on fresh samples) falls by a quarter or more (measured: 0.95 -> 0.55
    with LoRA and forward KL, 0.95 -> 0.49 with full fine-tuning)."""
    model = _sharp_model(tokenizer)
    original = copy.deepcopy(model)
    probes = _probes()
    before = probe_divergence(model, tokenizer, probes, max_new_tokens=8)
    config = OPSDConfig(
        steps=30,
        batch_size=4,
        samples_per_probe=4,
        max_new_tokens=8,
        lr=lr,
        divergence=divergence,
        lora=lora,
    )
    result = distill(model, tokenizer, probes, config, show_progress=False)
    after = probe_divergence(result.model, tokenizer, probes, teacher=original, max_new_tokens=8)
    assert before["forward_kl"] > 0.5
    assert after["forward_kl"] < 0.75 * before["forward_kl"]
    assert after["reverse_kl"] < 0.75 * before["reverse_kl"]
    assert result.steps == 30
    assert result.tokens == sum(r["tokens"] for r in result.history)


def test_run_logs_saves_and_loads_back(tokenizer, tmp_path):
    model = _sharp_model(tokenizer)
    config = OPSDConfig(
        steps=3, batch_size=2, samples_per_probe=2, max_new_tokens=6, lr=1e-2, lora_rank=4
    )
    out, run = tmp_path / "adapter", tmp_path / "run"
    result = distill(
        model, tokenizer, _probes(), config, out_dir=out, run_dir=run, show_progress=False
    )
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for key in (
        "divergence",
        "divergence_p50",
        "divergence_p90",
        "divergence_max",
        "forward_kl",
        "reverse_kl",
    ):
        assert all(math.isfinite(r[key]) for r in lines)
    assert lines[0]["divergence_p50"] <= lines[0]["divergence_p90"] <= lines[0]["divergence_max"]
    assert json.loads((out / "opsd_config.json").read_text())["steps"] == 3

    loaded = load_adapter(_sharp_model(tokenizer), out)
    ids, _ = probe_prompts(tokenizer, _probes()[0])
    torch.testing.assert_close(_logits(loaded, ids), _logits(result.model, ids))


def test_update_share_keeps_that_share_of_the_run_and_saves_it(tokenizer, tmp_path):
    """The same seeded run twice, keeping all of it and half of it: the fresh adapter's
    update B @ A of the second is half the first's, and the saved adapter is the kept one."""
    config = OPSDConfig(
        steps=3, batch_size=2, samples_per_probe=2, max_new_tokens=6, lr=1e-2, lora_rank=4
    )
    whole = distill(_sharp_model(tokenizer), tokenizer, _probes(), config, show_progress=False)
    out = tmp_path / "adapter"
    half = distill(
        _sharp_model(tokenizer),
        tokenizer,
        _probes(),
        replace(config, update_share=0.5),
        out_dir=out,
        show_progress=False,
    )
    params = [dict(r.model.named_parameters()) for r in (whole, half)]
    names = [n for n in params[0] if ".lora_A." in n]
    assert names and half.share_error == 0.0
    for name in names:
        b = name.replace(".lora_A.", ".lora_B.")
        delta = [(p[b] @ p[name]).detach() for p in params]
        torch.testing.assert_close(delta[1], 0.5 * delta[0])
    loaded = load_adapter(_sharp_model(tokenizer), out)
    ids, _ = probe_prompts(tokenizer, _probes()[0])
    torch.testing.assert_close(_logits(loaded, ids), _logits(half.model, ids))
    with pytest.raises(ConfigError, match="update_share must be in"):
        replace(config, update_share=1.5)


def test_token_budget_stops_early(tokenizer):
    config = OPSDConfig(
        steps=50, batch_size=2, samples_per_probe=2, max_new_tokens=6, token_budget=30
    )
    result = distill(_sharp_model(tokenizer), tokenizer, _probes(), config, show_progress=False)
    assert result.tokens >= 30
    assert result.steps < 50
    assert result.tokens - result.history[-1]["tokens"] < 30  # stopped at the first step past it


def test_resume_after_a_crash_equals_a_straight_run(tokenizer, tmp_path, monkeypatch):
    """EMA teacher, checkpoints every 2 steps; a crash in step 3 then resume gives the
    same adapter as 4 steps in one go (the EMA weights are in the checkpoint)."""
    config = OPSDConfig(
        steps=4,
        batch_size=2,
        samples_per_probe=2,
        max_new_tokens=6,
        lr=1e-2,
        teacher="ema",
        ema_decay=0.5,
        checkpoint_every=2,
        lora_rank=4,
    )

    def run(run_dir, resume):
        model = _sharp_model(tokenizer)
        return distill(
            model, tokenizer, _probes(), config, run_dir=run_dir, show_progress=False, resume=resume
        )

    crash_then_resume(run, opsd, "opsd_step", 3, tmp_path, monkeypatch)


def test_a_model_with_an_adapter_trains_it_further_against_its_starting_self(tokenizer):
    model = add_lora(_sharp_model(tokenizer), LoraSettings(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # last week's adapter
    start = copy.deepcopy(model)
    config = OPSDConfig(steps=2, batch_size=2, samples_per_probe=2, max_new_tokens=6, lr=1e-2)
    result = distill(model, tokenizer, _probes(), config, show_progress=False)
    assert result.model is model
    student_ids, _ = probe_prompts(tokenizer, _probes()[0])
    assert not torch.allclose(_logits(model, student_ids), _logits(start, student_ids))
    with pytest.raises(ConfigError, match="lora"):
        distill(model, tokenizer, _probes(), OPSDConfig(lora=False), show_progress=False)


def test_errors_are_one_line(tokenizer, tiny_model):
    with pytest.raises(ValueError, match="no probes"):
        distill(tiny_model, tokenizer, [], OPSDConfig(), show_progress=False)
    long = Probe(({"role": "user", "content": "q"},), "word " * 300)
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        distill(tiny_model, tokenizer, [long], OPSDConfig(), show_progress=False)


def test_replay_probes_start_at_zero_divergence_and_anchor_the_student(tokenizer):
    """A replay probe (context None): the teacher sees the student's own chat, so a fresh
    adapter starts at zero divergence there, while the context probes do not."""
    replay = [Probe(p.messages, None) for p in _probes()]
    config = OPSDConfig(steps=1, batch_size=4, samples_per_probe=2, max_new_tokens=6)
    result = distill(_sharp_model(tokenizer), tokenizer, replay, config, show_progress=False)
    assert result.history[0]["divergence"] == pytest.approx(0.0, abs=1e-6)
    with_context = distill(
        _sharp_model(tokenizer), tokenizer, _probes(), config, show_progress=False
    )
    assert with_context.history[0]["divergence"] > 0.01
    with pytest.raises(ValueError, match="or None for a replay probe"):
        Probe(_probes()[0].messages, "  ")


def test_token_temperatures_follow_completion_logits_order():
    completions = [[[1, 2], [3]], [[4]]]  # group 0: two samples (2 and 1 tokens), group 1: one
    got = token_temperatures([0.5, 1.0], completions)
    assert got.tolist() == [[0.5], [0.5], [0.5], [1.0]]


def _entropy_at_prompt_end(model, tokenizer, probe):
    logits = _logits(model, probe_prompts(tokenizer, probe)[0])[0, -1].float()
    return float(-(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum())


def test_a_replay_temperature_below_one_sharpens_the_replay_probes_only(tokenizer):
    """At replay_temperature 0.5 a replay probe's teacher is the base sharpened, so a
    fresh adapter starts away from it and training lowers the student's entropy there;
    a probe with a context is scored exactly as at temperature 1."""
    replay = [Probe(p.messages, None) for p in _probes()]
    config = OPSDConfig(steps=1, batch_size=4, samples_per_probe=2, max_new_tokens=6)
    sharp = replace(config, replay_temperature=0.5)
    first = distill(_sharp_model(tokenizer), tokenizer, replay, sharp, show_progress=False)
    assert first.history[0]["divergence"] > 0.01
    plain, tempered = (
        distill(_sharp_model(tokenizer), tokenizer, _probes(), c, show_progress=False)
        for c in (config, sharp)
    )
    assert tempered.history[0]["divergence"] == plain.history[0]["divergence"]
    before = _entropy_at_prompt_end(_sharp_model(tokenizer), tokenizer, replay[0])
    trained = distill(
        _sharp_model(tokenizer),
        tokenizer,
        replay,
        replace(sharp, steps=30, lr=5e-3, replay_temperature=0.25),
        show_progress=False,
    ).model
    assert _entropy_at_prompt_end(trained, tokenizer, replay[0]) < before - 0.1
    with pytest.raises(ConfigError, match="replay_temperature"):
        OPSDConfig(replay_temperature=0.0)


def test_the_base_teacher_switches_an_earlier_adapter_off(tokenizer):
    """teacher="base" on a model that carries last week's adapter scores as the base model
    (adapter off); "fixed" scores as the adapter as it started."""
    model = add_lora(_sharp_model(tokenizer), LoraSettings(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = probe_prompts(tokenizer, _probes()[0])[1]
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    with torch.no_grad(), adapter_disabled(model):
        base = _logits(model, ids)
    adapted = _logits(model, ids)
    assert not torch.allclose(base, adapted)
    with Teacher(model, params, "base", 0.0, fresh=False).weights() as teacher:
        torch.testing.assert_close(_logits(teacher, ids), base)
    with Teacher(model, params, "fixed", 0.0, fresh=False).weights() as teacher:
        torch.testing.assert_close(_logits(teacher, ids), adapted)
    with pytest.raises(ConfigError, match='"base" only with lora'):
        OPSDConfig(teacher="base", lora=False)


def test_on_policy_below_one_lets_the_teacher_draw_the_rest_behind_the_context(
    tokenizer, monkeypatch
):
    """on_policy 0.5 with 4 samples per probe: the student draws 2 per probe from its own
    prompt, the teacher 2 from the prompt with the context; both are scored and counted."""
    calls = []
    real_sample = opsd.sample

    def spy(model, tokenizer_, prompts, config, **kwargs):
        calls.append([list(p) for p in prompts])
        return real_sample(model, tokenizer_, prompts, config, **kwargs)

    monkeypatch.setattr(opsd, "sample", spy)
    probes = _probes()[:2]
    config = OPSDConfig(steps=1, batch_size=2, samples_per_probe=4, max_new_tokens=6, on_policy=0.5)
    result = distill(_sharp_model(tokenizer), tokenizer, probes, config, show_progress=False)
    pairs = [probe_prompts(tokenizer, p) for p in probes]
    student_prompts, teacher_prompts = calls
    assert sorted(map(tuple, student_prompts)) == sorted(tuple(s) for s, _ in pairs for _ in "ab")
    assert sorted(map(tuple, teacher_prompts)) == sorted(tuple(t) for _, t in pairs for _ in "ab")
    record = result.history[0]
    assert record["teacher_samples"] == 4
    assert record["tokens"] > 0 and math.isfinite(record["divergence"])
    assert OPSDConfig(on_policy=0.6, samples_per_probe=4).student_samples() == 2
    assert OPSDConfig(on_policy=0.0).student_samples() == 0
