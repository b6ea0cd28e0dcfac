from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from onthejob.models import (
    LoraSettings,
    adapter_disabled,
    add_lora,
    build_model,
    encode_text,
    gather_logprobs,
)
from onthejob.models.fast import LeanDecoder, lean_decoder_supports
from onthejob.models.logprobs import forward_logits
from onthejob.sampling import (
    HFCacheDecoder,
    PrefixCache,
    SamplingConfig,
    next_tokens,
    sample,
    top_candidates,
)
from tests.conftest import TINY

TEXTS = [
    "who owns billing?",
    "compute 12 + 7 * 3",
    "def f(x):",
    "search blue shirt size m",
    "the owner",
]


def sharpen(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Random weights large enough that the next-token distribution is far from uniform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 or name.endswith("bias"):  # norm weights stay at 1
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (and two threads crawl on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tokenizer):
    return sharpen(build_model(TINY, tokenizer, seed=0))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """Prompts of 3 to ~40 tokens, so rows are left-padded by different amounts."""
    out = [encode_text(tokenizer, text) for text in TEXTS]
    out.append(encode_text(tokenizer, " ".join(TEXTS)))
    out.append(encode_text(tokenizer, "who")[:1])
    return out


def count_keeps(monkeypatch) -> list[int]:
    """The batch size after each time the lean decoder drops finished rows, as it happens."""
    kept: list[int] = []
    original = LeanDecoder.keep

    def counting_keep(self, rows):
        kept.append(len(rows))
        original(self, rows)

    monkeypatch.setattr(LeanDecoder, "keep", counting_keep)
    return kept


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def hf_greedy(model, tokenizer, prompts, max_new_tokens: int) -> list[list[int]]:
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None
    config.pad_token_id = tokenizer.pad_token_id
    config.do_sample = False
    config.max_new_tokens = max_new_tokens
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, ids.shape[1] :].tolist()


def full_forward_logprobs(
    model, prompt: list[int], completion: list[int], temperature: float
) -> list[float]:
    ids = torch.tensor([prompt + completion])
    with torch.inference_mode():
        logits = forward_logits(model, ids, torch.ones_like(ids))[:, len(prompt) - 1 : -1]
        return gather_logprobs(logits, torch.tensor([completion]), temperature)[0].tolist()


GREEDY = SamplingConfig(max_new_tokens=12, temperature=0.0)


def test_greedy_equals_hf_generate(model, tokenizer, prompts):
    ours = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    assert ours.token_ids == hf_greedy(model, tokenizer, prompts, GREEDY.max_new_tokens)
    assert ours.finish_reasons == ["length"] * len(prompts)


def qwen2(tokenizer):
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def qwen3(tokenizer):
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def gpt2(tokenizer):
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256)
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize(("build", "lean"), [(qwen2, True), (qwen3, True), (gpt2, False)])
def test_greedy_equals_hf_generate_on_other_architectures(build, lean, tokenizer, prompts):
    # Qwen2: biased q/k/v and 4 query heads per KV head; Qwen3: per-head q/k norms;
    # GPT-2: not a lean architecture, so the generic loop over the HF forward and cache.
    torch.manual_seed(0)
    model = sharpen(build(tokenizer))
    assert (lean_decoder_supports(model, 64) is None) == lean
    ours = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    assert ours.token_ids == hf_greedy(model, tokenizer, prompts, GREEDY.max_new_tokens)


def test_lean_decoder_logits_equal_generic_loop(model, tokenizer, prompts):
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    lean = LeanDecoder(model, len(prompts), ids.shape[1] + 4)
    generic = HFCacheDecoder(model)
    with torch.inference_mode():
        a, b = lean.prefill(ids, mask, chunk_rows=3), generic.prefill(ids, mask)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        for _ in range(3):
            token = a.argmax(-1)
            a, b = lean.step(token), generic.step(token)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=5, seed=1),
        SamplingConfig(max_new_tokens=10, temperature=1.3, top_p=0.8, seed=2),
        SamplingConfig(max_new_tokens=10, temperature=0.0),
    ],
)
def test_logprobs_equal_full_forward(config, model, tokenizer, prompts):
    # Log-probs are of softmax(logits / T) before truncation (unscaled when greedy).
    out = sample(model, tokenizer, prompts, config, eos_token_ids=[])
    temperature = config.temperature or 1.0
    for prompt, ids, logprobs in zip(prompts, out.token_ids, out.logprobs, strict=True):
        expected = full_forward_logprobs(model, prompt, ids, temperature)
        assert logprobs == pytest.approx(expected, abs=1e-4)


def test_same_seed_same_samples_and_global_rng_untouched(model, tokenizer, prompts):
    config = SamplingConfig(max_new_tokens=16, seed=7)
    state = torch.get_rng_state()
    first = sample(model, tokenizer, prompts, config)
    second = sample(model, tokenizer, prompts, config)
    assert torch.equal(state, torch.get_rng_state())
    assert first == second


def test_different_seeds_differ(model, tokenizer, prompts):
    first = sample(
        model, tokenizer, prompts, SamplingConfig(max_new_tokens=16, seed=1), eos_token_ids=[]
    )
    second = sample(
        model, tokenizer, prompts, SamplingConfig(max_new_tokens=16, seed=2), eos_token_ids=[]
    )
    assert first.token_ids != second.token_ids


def test_without_seed_the_global_rng_decides(model, tokenizer, prompts):
    config = SamplingConfig(max_new_tokens=8)
    torch.manual_seed(3)
    first = sample(model, tokenizer, prompts, config, eos_token_ids=[])
    torch.manual_seed(3)
    assert sample(model, tokenizer, prompts, config, eos_token_ids=[]) == first


def test_top_k_one_is_greedy(model, tokenizer, prompts):
    greedy = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    config = SamplingConfig(max_new_tokens=12, top_k=1, seed=3)
    top1 = sample(model, tokenizer, prompts, config, eos_token_ids=[])
    assert top1.token_ids == greedy.token_ids
    # At temperature 1 the reported distribution is the greedy one (before truncation).
    for ours, theirs in zip(top1.logprobs, greedy.logprobs, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-5)


def test_top_candidates_by_hand():
    logits = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).log()[
        :, [2, 0, 3, 1]
    ]  # ids 1, 3, 0, 2 best first

    def kept(**kwargs) -> list[int]:
        values, ids = top_candidates(logits, **kwargs)
        return ids[torch.isfinite(values)].tolist()

    assert kept() == [1, 3, 0]  # probability 0 is -inf
    assert kept(top_p=0.4) == [1]
    assert kept(top_p=0.75) == [1, 3]  # 0.5 < 0.75 <= 0.8
    assert kept(top_p=0.9) == [1, 3, 0]
    assert kept(top_k=2) == [1, 3]
    # top-p applies to the top-k renormalised distribution: 0.5/0.8 = 0.625 < 0.7
    assert kept(top_k=2, top_p=0.7) == [1, 3]
    assert kept(top_k=2, top_p=0.6) == [1]


def test_sampled_frequencies_follow_truncated_distribution():
    rows = 40_000
    logits = torch.tensor([0.5, 0.3, 0.2, 0.0]).log().repeat(rows, 1)
    generator = torch.Generator().manual_seed(0)
    config = SamplingConfig(top_p=0.75)
    tokens, logprobs = next_tokens(logits, config, generator)
    freq = torch.bincount(tokens, minlength=4).float() / rows
    assert freq.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=0.01)
    assert logprobs[tokens == 0][0].item() == pytest.approx(math.log(0.5))  # untruncated
    tokens, _ = next_tokens(logits, SamplingConfig(top_k=2), generator)
    freq = torch.bincount(tokens, minlength=4).float() / rows
    assert freq.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=0.01)
    tokens, _ = next_tokens(logits, SamplingConfig(), generator)
    freq = torch.bincount(tokens, minlength=4).float() / rows
    assert freq.tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=0.01)


def test_temperature_reshapes_the_distribution():
    rows = 40_000
    logits = torch.tensor([0.5, 0.3, 0.2]).log().repeat(rows, 1)
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        tokens, logprobs = next_tokens(logits, SamplingConfig(temperature=temperature), generator)
        tempered = torch.tensor([0.5, 0.3, 0.2]) ** (1 / temperature)
        tempered /= tempered.sum()
        freq = torch.bincount(tokens, minlength=3).float() / rows
        assert freq.tolist() == pytest.approx(tempered.tolist(), abs=0.01)
        assert logprobs.tolist() == pytest.approx(tempered.log()[tokens].tolist(), abs=1e-5)


def test_eos_stops_and_is_in_ids_not_text(model, tokenizer, prompts):
    free = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    eos = free.token_ids[0][3]  # a token greedy decoding emits: call it the end token
    out = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[eos])
    for free_ids, ids, reason, text in zip(
        free.token_ids, out.token_ids, out.finish_reasons, out.texts, strict=True
    ):
        if eos in free_ids:
            cut = free_ids.index(eos) + 1
            assert (ids, reason) == (free_ids[:cut], "eos")
            assert text == tokenizer.decode(ids[:-1])
        else:
            assert (ids, reason) == (free_ids, "length")
    assert out.finish_reasons[0] == "eos" and len(out.token_ids[0]) <= 4


def test_rows_that_finish_leave_the_batch_without_changing_the_others(
    model, tokenizer, prompts, monkeypatch
):
    # Half the rows end at once, so the lean decoder drops them and goes on with the rest.
    batch = [prompts[0]] * 6 + prompts[1:]
    config = SamplingConfig(max_new_tokens=12, temperature=0.0)
    free = sample(model, tokenizer, batch, config, eos_token_ids=[])
    eos = free.token_ids[0][1]
    kept = count_keeps(monkeypatch)
    out = sample(model, tokenizer, batch, config, eos_token_ids=[eos])
    assert kept, "expected the decoder to drop finished rows"
    for free_ids, ids in zip(free.token_ids, out.token_ids, strict=True):
        cut = free_ids.index(eos) + 1 if eos in free_ids else len(free_ids)
        assert ids == free_ids[:cut]
    seeded = SamplingConfig(max_new_tokens=12, seed=5)
    assert sample(model, tokenizer, batch, seeded, eos_token_ids=[eos]) == sample(
        model, tokenizer, batch, seeded, eos_token_ids=[eos]
    )


def test_default_eos_is_the_end_token(model, tokenizer, prompts):
    out = sample(model, tokenizer, prompts, SamplingConfig(max_new_tokens=40, seed=0))
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    for ids, reason in zip(out.token_ids, out.finish_reasons, strict=True):
        assert (reason == "eos") == (ids[-1] == end)
        assert end not in ids[:-1]


def test_stop_string_cuts_after_its_last_token(model, tokenizer, prompts):
    free = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    text = free.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    config = SamplingConfig(max_new_tokens=12, temperature=0.0, stop_strings=(stop,))
    out = sample(model, tokenizer, prompts, config, eos_token_ids=[])
    for free_ids, ids, reason, text in zip(
        free.token_ids, out.token_ids, out.finish_reasons, out.texts, strict=True
    ):
        cuts = [k for k in range(1, len(free_ids) + 1) if stop in tokenizer.decode(free_ids[:k])]
        if cuts:
            assert (ids, reason) == (free_ids[: cuts[0]], "stop")
            assert stop in text
        else:
            assert (ids, reason) == (free_ids, "length")
    assert out.finish_reasons[0] == "stop"


def test_max_new_tokens(model, tokenizer, prompts):
    out = sample(
        model, tokenizer, prompts, SamplingConfig(max_new_tokens=5, seed=0), eos_token_ids=[]
    )
    assert [len(ids) for ids in out.token_ids] == [5] * len(prompts)
    assert [len(lp) for lp in out.logprobs] == [5] * len(prompts)
    assert out.finish_reasons == ["length"] * len(prompts)


def test_stops_early_when_every_row_finished(model, tokenizer, prompts, monkeypatch):
    first = sample(model, tokenizer, prompts[:1], GREEDY, eos_token_ids=[]).token_ids[0][0]
    steps = []
    original = LeanDecoder.step

    def counting_step(self, tokens):
        steps.append(1)
        return original(self, tokens)

    monkeypatch.setattr(LeanDecoder, "step", counting_step)
    out = sample(model, tokenizer, prompts[:1], GREEDY, eos_token_ids=[first])
    assert out.token_ids == [[first]] and out.texts == [""] and steps == []


def test_left_padding_does_not_change_a_completion(model, tokenizer, prompts):
    # Twenty rows: more than one prefill chunk, and rows padded by up to ~40 tokens.
    batch = prompts + [p[: max(1, len(p) // 2)] for p in prompts] + prompts[:6]
    together = sample(model, tokenizer, batch, GREEDY, eos_token_ids=[])
    for prompt, ids in zip(batch, together.token_ids, strict=True):
        assert sample(model, tokenizer, [prompt], GREEDY, eos_token_ids=[]).token_ids == [ids]


@pytest.mark.parametrize(
    "targets",
    [
        LoraSettings().target_modules,  # every projection goes through its LoRA module
        ("q_proj", "v_proj", "down_proj"),  # a mix of LoRA modules and fused plain matmuls
    ],
)
def test_lora_adapter_counts(targets, model, tokenizer, prompts):
    peft_model = add_lora(copy.deepcopy(model), LoraSettings(rank=4, target_modules=targets))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    base = sample(model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    tuned = sample(peft_model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    assert tuned.token_ids != base.token_ids
    for prompt, ids, logprobs in zip(prompts, tuned.token_ids, tuned.logprobs, strict=True):
        expected = full_forward_logprobs(peft_model, prompt, ids, 1.0)  # HF forward, adapter on
        assert logprobs == pytest.approx(expected, abs=1e-4)
    with adapter_disabled(peft_model):
        untuned = sample(peft_model, tokenizer, prompts, GREEDY, eos_token_ids=[])
    assert untuned.token_ids == base.token_ids


def test_training_mode_is_restored_and_dropout_off(tokenizer, prompts):
    peft_model = add_lora(
        sharpen(build_model(TINY, tokenizer, seed=0)), LoraSettings(rank=4, dropout=0.5)
    )
    peft_model.train()
    config = SamplingConfig(max_new_tokens=8, seed=0)
    assert sample(peft_model, tokenizer, prompts, config) == sample(
        peft_model, tokenizer, prompts, config
    )
    assert all(m.training for m in peft_model.modules())


def test_bfloat16_model_samples_in_its_dtype(model, tokenizer, prompts):
    low = copy.deepcopy(model).to(torch.bfloat16)
    out = sample(
        low, tokenizer, prompts, SamplingConfig(max_new_tokens=6, seed=0), eos_token_ids=[]
    )
    for prompt, ids, logprobs in zip(prompts, out.token_ids, out.logprobs, strict=True):
        assert logprobs == pytest.approx(full_forward_logprobs(low, prompt, ids, 1.0), abs=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"stop_strings": "\n"}, "tuple of strings"),
        ({"stop_strings": ("",)}, "empty string"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize(
    ("bad_prompts", "max_new_tokens", "message"),
    [
        ([], 4, "no prompts given"),
        ([[5], []], 4, "prompt 1 is empty"),
        ([[5, 10_000]], 4, "outside the vocabulary"),
    ],
)
def test_bad_prompts(model, tokenizer, bad_prompts, max_new_tokens, message):
    with pytest.raises(ValueError, match=message):
        sample(model, tokenizer, bad_prompts, SamplingConfig(max_new_tokens=max_new_tokens))


def test_prompt_too_long_for_the_model(model, tokenizer):
    limit = model.config.max_position_embeddings
    config = SamplingConfig(max_new_tokens=10)
    with pytest.raises(ValueError, match=f"exceeds the model's {limit} positions"):
        sample(model, tokenizer, [[5], [5] * (limit - 5)], config)
    sample(model, tokenizer, [[5] * (limit - 10)], config)  # exactly fits


def test_identical_prompts_are_prefilled_once_and_sample_as_if_each_ran(
    model, tokenizer, prompts, monkeypatch
):
    batch = [prompts[0], prompts[1], prompts[0], prompts[0], prompts[1]]
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    alone = [sample(model, tokenizer, [p], greedy).token_ids[0] for p in batch[:2]]
    prefilled = []
    original = LeanDecoder._prefill_rows

    def counting(self, rows, input_ids, attention_mask, new):
        prefilled.append(len(input_ids))
        return original(self, rows, input_ids, attention_mask, new)

    monkeypatch.setattr(LeanDecoder, "_prefill_rows", counting)
    together = sample(model, tokenizer, batch, greedy).token_ids
    assert sum(prefilled) == 2
    assert together == [alone[0], alone[1], alone[0], alone[0], alone[1]]
    seeded = SamplingConfig(max_new_tokens=10, seed=3)
    rows = sample(model, tokenizer, batch, seeded).token_ids
    assert rows == sample(model, tokenizer, batch, seeded).token_ids
    assert len({tuple(rows[i]) for i in (0, 2, 3)}) > 1  # copies share a prompt, not samples


def test_a_prefix_cache_computes_only_the_new_tokens_and_samples_as_without_it(
    model, tokenizer, prompts, monkeypatch
):
    """Three turns of seven episodes, some finishing early (so rows leave the batch mid
    turn): with the cache each turn computes only what the last one did not, and samples
    exactly what a full re-prefill does."""
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    free = sample(model, tokenizer, prompts, greedy, eos_token_ids=[]).token_ids
    eos = sorted({free[k][2] for k in range(3)})  # rows 0-2 end early, others may later
    kept = count_keeps(monkeypatch)
    observation = encode_text(tokenizer, "tool: 3 items found, the first costs 12")
    cache, chats, computed, reasons = PrefixCache(), [list(p) for p in prompts], [], []
    for turn in range(3):
        if turn == 2:  # episode 4 starts over: its entry no longer applies
            chats[4] = encode_text(tokenizer, "a new episode")
        fresh = sample(model, tokenizer, chats, greedy, eos_token_ids=eos)
        before = cache.computed
        reused = sample(
            model, tokenizer, chats, greedy, eos, prefix_cache=cache, cache_keys=range(7)
        )
        computed.append(cache.computed - before)
        reasons += fresh.finish_reasons
        assert reused.token_ids == fresh.token_ids and reused.texts == fresh.texts
        for a, b in zip(reused.logprobs, fresh.logprobs, strict=True):
            assert a == pytest.approx(b, abs=1e-4)
        chats = [
            chat + ids + observation[: 3 + k]
            for k, (chat, ids) in enumerate(zip(chats, fresh.token_ids, strict=True))
        ]
    assert {"eos", "length"} <= set(reasons) and kept  # rows left the batch mid turn
    assert len(cache) == 7
    # the third turn computes each episode's last token and observation (4 starts over)
    new = [1 + 3 + k for k in range(7)]
    new[4] = len(encode_text(tokenizer, "a new episode"))
    assert computed[0] == sum(map(len, prompts)) and computed[2] == sum(new)
    with pytest.raises(ValueError, match="needs cache_keys, one key per prompt"):
        sample(model, tokenizer, chats, greedy, prefix_cache=cache)
