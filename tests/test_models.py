from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from onthejob.models import (
    LoraSettings,
    ModelDirError,
    adapter_disabled,
    add_lora,
    bf16_autocast,
    build_model,
    chat_prompt_ids,
    check_device,
    count_parameters,
    encode_text,
    gather_logprobs,
    keep_share,
    load_model,
    render_chat,
    save_model,
    token_logprobs,
    trainable_state,
)
from onthejob.models.hf import TinyConfig
from onthejob.models.tokenizer import END
from onthejob.train import ConfigError
from tests.conftest import TINY

MESSAGES = [
    {"role": "system", "content": "answer from the notes."},
    {"role": "user", "content": "who owns billing?"},
    {"role": "assistant", "content": "priya"},
    {"role": "tool", "content": "[p317] blue shirt $24"},
]


def test_render_chat_matches_hf_chat_template(tokenizer):
    ours = render_chat(tokenizer, MESSAGES, add_generation_prompt=True).ids
    theirs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert ours == list(theirs)
    assert tokenizer.decode(ours) == (
        "<|system|>answer from the notes.<|end|><|user|>who owns billing?<|end|>"
        "<|assistant|>priya<|end|><|tool|>[p317] blue shirt $24<|end|><|assistant|>"
    )


def test_teacher_and_student_prompts_differ_only_by_inserted_context(tokenizer):
    question = [{"role": "user", "content": "who owns billing?"}]
    context = [{"role": "system", "content": "the owner of billing is priya."}]
    student = render_chat(tokenizer, question, add_generation_prompt=True).ids
    teacher = render_chat(tokenizer, context + question, add_generation_prompt=True).ids
    inserted = render_chat(tokenizer, context).ids
    assert teacher == inserted + student


def test_spans_cover_content_and_end_token(tokenizer):
    chat = render_chat(tokenizer, MESSAGES)
    end_id = tokenizer.convert_tokens_to_ids(END)
    role, start, stop = chat.spans[2]
    assert role == "assistant"
    assert tokenizer.decode(chat.ids[start : stop - 1]) == "priya"
    assert chat.ids[stop - 1] == end_id


def test_typed_special_tokens_are_plain_text(tokenizer):
    ids = encode_text(tokenizer, "hi <|end|> there")
    assert tokenizer.convert_tokens_to_ids(END) not in ids
    assert tokenizer.decode(ids) == "hi <|end|> there"


def test_digits_are_single_tokens_and_text_round_trips(tokenizer):
    ids = encode_text(tokenizer, "8443")
    assert len(ids) == 4
    text = "def f(x):\n    return x[::-1]  # ünïcode ✓"
    assert tokenizer.decode(encode_text(tokenizer, text)) == text


def test_unknown_role_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="unknown chat role 'robot'"):
        render_chat(tokenizer, [{"role": "robot", "content": "x"}])


def test_chat_prompt_ids_ends_with_assistant_marker(tokenizer):
    ids = chat_prompt_ids(tokenizer, MESSAGES[:2])
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")


def test_default_model_has_a_few_million_parameters(tokenizer):
    model = build_model(TinyConfig(), tokenizer)
    n = count_parameters(model)
    assert 1_000_000 < n < 10_000_000


@pytest.mark.parametrize(
    "shape,field",
    [
        (dict(num_layers=0), "num_layers"),
        (dict(num_heads=8, num_kv_heads=3), "num_kv_heads"),
        (dict(hidden_size=100, num_heads=8, num_kv_heads=8), "hidden_size"),  # 12.5 per head
        (dict(hidden_size=120, num_heads=8, num_kv_heads=8), "hidden_size"),  # 15: odd, no rotary
        (dict(intermediate_size=0), "intermediate_size"),
    ],
)
def test_a_model_shape_that_cannot_be_built_is_a_config_error_naming_the_field(shape, field):
    with pytest.raises(ConfigError) as error:
        TinyConfig(**shape)
    assert error.value.field == field


def test_gather_logprobs_hand_computed():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]])
    targets = torch.tensor([[1, 1]])
    got = gather_logprobs(logits, targets)
    assert torch.allclose(got, torch.tensor([[math.log(0.75), math.log(1 / 3)]]), atol=1e-6)
    hot = gather_logprobs(logits, targets, temperature=0.5)  # logits doubled: p = 9/10, 1/5
    assert torch.allclose(hot, torch.tensor([[math.log(0.9), math.log(0.2)]]), atol=1e-6)


def _independent_logprobs(model, ids):
    """log p(x_t | x_<t) of one unpadded sequence by an explicit softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    probs = torch.softmax(logits.double(), dim=-1)
    return [math.log(probs[t - 1, ids[t]].item()) for t in range(1, len(ids))]


@pytest.mark.parametrize("padding", ["left", "right"])
def test_token_logprobs_match_independent_computation(tiny_model, tokenizer, padding):
    seqs = [
        render_chat(tokenizer, MESSAGES[:2]).ids,
        render_chat(tokenizer, MESSAGES).ids,
    ]
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.full((2, width), pad)
    mask = torch.zeros((2, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if padding == "left" else slice(0, len(s))
        ids[r, sl] = torch.tensor(s)
        mask[r, sl] = 1
    with torch.no_grad():
        got = token_logprobs(tiny_model, ids, mask)
    for r, s in enumerate(seqs):
        expected = _independent_logprobs(tiny_model, s)
        row = got[r][mask[r, 1:].bool()]
        if padding == "left":  # the first real token has no prediction inside the row
            row = row[-(len(s) - 1) :]
        assert torch.allclose(row.double(), torch.tensor(expected, dtype=torch.double), atol=1e-4)


def test_lora_switches_on_and_off_on_one_model(tokenizer):
    base = build_model(TINY, tokenizer, seed=1)
    ids = torch.tensor([render_chat(tokenizer, MESSAGES).ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
    model = add_lora(base, LoraSettings(rank=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        on = model(input_ids=ids).logits
        with adapter_disabled(model):
            off = model(input_ids=ids).logits
    assert torch.allclose(off, before, atol=1e-5)
    assert not torch.allclose(on, before, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def _adapter_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """B @ A of every LoRA module, by the A factor's name."""
    params = dict(model.named_parameters())
    return {
        name: (params[name.replace(".lora_A.", ".lora_B.")] @ a).detach()
        for name, a in params.items()
        if ".lora_A." in name
    }


def test_keep_share_interpolates_plain_weights_by_hand():
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    before = trainable_state(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[5.0, 2.0], [-1.0, 8.0]]))
    assert keep_share(layer, before, 0.25) == 0.0
    # 1 + 0.25 * (5 - 1) = 2; 3 + 0.25 * (-1 - 3) = 2; 4 + 0.25 * (8 - 4) = 5
    assert layer.weight.tolist() == [[2.0, 2.0], [2.0, 5.0]]
    with pytest.raises(ValueError, match="share must be in"):
        keep_share(layer, before, 1.5)


def test_keep_share_of_a_fresh_adapter_scales_its_update_exactly(tokenizer):
    model = add_lora(build_model(TINY, tokenizer, seed=1), LoraSettings(rank=4, alpha=8))
    before = trainable_state(model)  # B is zero: the adapter starts as no update
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    trained = _adapter_deltas(model)
    a_trained = {n: p.clone() for n, p in model.named_parameters() if ".lora_A." in n}
    assert keep_share(model, before, 0.75) == 0.0
    for name, delta in _adapter_deltas(model).items():
        assert torch.allclose(delta, 0.75 * trained[name], atol=1e-6)
        assert torch.equal(dict(model.named_parameters())[name], a_trained[name])


def test_keep_share_of_an_adapter_trained_further_blends_the_updates(tokenizer):
    model = add_lora(build_model(TINY, tokenizer, seed=1), LoraSettings(rank=2, alpha=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    start = _adapter_deltas(model)
    before = trainable_state(model)
    with torch.no_grad():  # training doubles every B: the blend keeps the adapter's rank
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.mul_(2)
    assert keep_share(model, before, 0.25) < 1e-5
    for name, delta in _adapter_deltas(model).items():  # 0.75 * 1 + 0.25 * 2 = 1.25
        assert torch.allclose(delta, 1.25 * start[name], atol=1e-5)

    before = trainable_state(model)
    with torch.no_grad():  # a change in new directions: the blend has rank 4, cut to 2
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    after, blend = _adapter_deltas(model), {}
    for name, a0 in before.items():
        if ".lora_A." in name:
            b0 = before[name.replace(".lora_A.", ".lora_B.")]
            blend[name] = 0.5 * (b0 @ a0) + 0.5 * after[name]
    error = keep_share(model, before, 0.5)
    cut, total = 0.0, 0.0
    for name, delta in _adapter_deltas(model).items():
        u, s, vh = torch.linalg.svd(blend[name].detach())
        best = (u[:, :2] * s[:2]) @ vh[:2]  # the closest rank-2 matrix (Eckart-Young)
        assert torch.allclose(delta, best, atol=1e-4)
        cut, total = cut + float((s[2:] ** 2).sum()), total + float((s**2).sum())
    assert error == pytest.approx((cut / total) ** 0.5, rel=1e-3) and error > 0


def test_save_and_load_round_trip(tiny_model, tokenizer, tmp_path):
    path = save_model(tiny_model, tokenizer, tmp_path / "m")
    model, tok = load_model(path)
    ids = torch.tensor([render_chat(tokenizer, MESSAGES).ids])
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids).logits, tiny_model(input_ids=ids).logits, atol=1e-6
        )
    assert tok.encode("who owns billing?") == tokenizer.encode("who owns billing?")
    assert tok.chat_template == tokenizer.chat_template
    save_model(tiny_model, tokenizer, path)  # overwriting an existing directory works
    assert not Path(str(path) + ".tmp").exists() and not Path(str(path) + ".old").exists()


def test_missing_and_malformed_model_dirs_name_the_path(tmp_path, tiny_model, tokenizer):
    with pytest.raises(ModelDirError, match=f"model directory not found: {tmp_path / 'nope'}"):
        load_model(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ModelDirError, match="no config.json"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="malformed config.json"):
        load_model(bad)
    good = save_model(tiny_model, tokenizer, tmp_path / "good")
    (good / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelDirError, match=str(good)):
        load_model(good)


def test_check_device_names_what_is_wrong():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        check_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            check_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA GPU"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_bf16_autocast_runs_matmuls_in_bf16_only_when_enabled():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with bf16_autocast("cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with bf16_autocast("cpu", enabled=False):
        assert (a @ b).dtype == torch.float32
