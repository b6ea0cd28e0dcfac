"""SFT baselines: which tokens are trained, the two baselines' examples, a tiny run that
learns, the token budget, and saving, loading and resuming."""

from __future__ import annotations

import json

import pytest
import torch

from onthejob.models import build_model, load_adapter, render_chat
from onthejob.prompts import KNOWLEDGE_SYSTEM
from onthejob.sampling import SamplingConfig, sample
from onthejob.train import ConfigError
from onthejob.train import sft as sft_module
from onthejob.train.opsd import OPSDConfig, Probe, probe_prompts, teacher_messages
from onthejob.train.sft import (
    SFTConfig,
    SFTExample,
    batch_loss,
    encode,
    example_loss,
    sft,
    teacher_sample_examples,
    transcript_examples,
)
from tests.resume_support import crash_then_resume

from .conftest import TINY
from .test_opsd import _sharp_model

SYSTEM = {"role": "system", "content": KNOWLEDGE_SYSTEM}
FACTS = [
    ("who owns billing?", "billing is owned by priya.", "priya"),
    ("who owns search?", "search is owned by omar.", "omar"),
    ("what port does auth use?", "auth runs on port 8080.", "8080"),
    ("who owns tickets?", "tickets is owned by lena.", "lena"),
]


def _examples() -> list[SFTExample]:
    return [
        SFTExample(
            (SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": a}),
            (False, False, True),
        )
        for q, _, a in FACTS
    ]


def _probes() -> list[Probe]:
    return [Probe((SYSTEM, {"role": "user", "content": q}), ctx, a) for q, ctx, a in FACTS]


def test_only_the_trained_turns_and_their_end_tokens_carry_weight(tokenizer):
    example = SFTExample(
        (
            SYSTEM,
            {"role": "user", "content": "who owns billing?"},
            {"role": "assistant", "content": "omar"},
            {"role": "user", "content": "no. billing is owned by priya. who owns billing?"},
            {"role": "assistant", "content": "priya"},
        ),
        (False, False, False, False, True),
    )
    ids, weights = encode(tokenizer, example, max_len=1024)
    chat = render_chat(tokenizer, list(example.messages))
    assert ids == chat.ids
    _, start, stop = chat.spans[4]  # the last assistant turn: its content and its end token
    assert [i for i, w in enumerate(weights) if w] == list(range(start, stop))
    assert all(w in (0.0, 1.0) for w in weights)


def test_batch_loss_is_the_cross_entropy_of_the_trained_tokens(tokenizer, tiny_model):
    rows = [encode(tokenizer, e, 1024) for e in _examples()[:2]]
    with torch.no_grad():
        loss, tokens = batch_loss(tiny_model, rows, pad_id=tokenizer.pad_token_id)
        losses = []
        for ids, weights in rows:
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([ids])).logits[0], -1)
            losses += [-float(logp[i - 1, ids[i]]) for i, w in enumerate(weights) if w]
    assert tokens == len(losses)
    assert float(loss) == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_bad_examples_and_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="only assistant messages"):
        SFTExample(({"role": "user", "content": "q"},), (True,))
    with pytest.raises(ValueError, match="at least one trained"):
        SFTExample(({"role": "user", "content": "q"},), (False,))
    with pytest.raises(ValueError, match="one per message"):
        SFTExample(({"role": "user", "content": "q"},), (False, True))
    with pytest.raises(ConfigError, match="^lr must be > 0"):
        SFTConfig(lr=0.0)
    with pytest.raises(ConfigError, match="^token_budget"):
        SFTConfig(token_budget=0)
    with pytest.raises(ConfigError, match="^max_len must be > 0"):
        SFTConfig(max_len=0)


@pytest.mark.parametrize(
    "field,value",
    [("steps", 0), ("micro_batch_size", 0), ("lora_rank", 0), ("grad_clip", 0.0),
     ("weight_decay", -1.0), ("token_budget", 0), ("checkpoint_every", -1)],
)  # fmt: skip
def test_sft_and_opsd_check_their_shared_update_settings_alike(field, value):
    messages = []
    for config_type in (SFTConfig, OPSDConfig):
        with pytest.raises(ConfigError) as error:
            config_type(**{field: value})
        messages.append(str(error.value))
    assert messages[0] == messages[1] and messages[0].startswith(f"{field} must be")


def test_each_method_keeps_its_own_learning_rate_and_micro_batch():
    assert (SFTConfig().lr, SFTConfig().micro_batch_size) == (2e-4, 16)
    assert (OPSDConfig().lr, OPSDConfig().micro_batch_size) == (5e-4, 32)
    assert SFTConfig().lora_settings() is not None and SFTConfig(lora=False).lora_settings() is None


def test_transcript_examples_train_every_assistant_turn_of_each_session():
    sessions = [
        [
            {"role": "system", "content": KNOWLEDGE_SYSTEM},
            {
                "role": "user",
                "content": "my notes:\nbilling is owned by priya.\n\nwho owns billing?",
            },
            {"role": "assistant", "content": "priya"},
            {"role": "user", "content": "and search?"},
            {"role": "assistant", "content": "unknown"},
        ],
        [{"role": "user", "content": "hello"}],  # no assistant turn: nothing to recite
    ]
    (example,) = transcript_examples(sessions)
    assert example.messages == tuple(sessions[0])
    assert example.trained == (False, False, True, False, True)


@pytest.mark.parametrize(("lora", "lr"), [(True, 3e-3), (False, 3e-3)])
def test_sft_lowers_the_loss_on_its_examples(tokenizer, lora, lr):
    """30 steps on 4 answers: the trained-token cross-entropy falls to under a tenth
    (measured: 6.94 -> 0.02 nats with LoRA on the sharpened tiny model)."""
    model = _sharp_model(tokenizer)
    examples = _examples()
    before = example_loss(model, tokenizer, examples)
    config = SFTConfig(steps=30, batch_size=4, lr=lr, lora=lora)
    result = sft(model, tokenizer, examples, config, show_progress=False)
    after = example_loss(result.model, tokenizer, examples)
    assert before > 5.0
    assert after < 0.1 * before
    per_step = sum(sum(encode(tokenizer, e, 1024)[1]) for e in examples)
    assert result.tokens == 30 * per_step == sum(r["tokens"] for r in result.history)


def test_teacher_sample_examples_are_the_teachers_answers_without_the_context(tokenizer):
    """A tiny model first learns (full SFT) to answer from the notes; its greedy answers with
    the context become examples behind the probe's prompt without it."""
    model = build_model(TINY, tokenizer, seed=0).eval()
    reading = [
        SFTExample(
            (*teacher_messages(p), {"role": "assistant", "content": p.answer or ""}),
            (False,) * 2 + (True,),
        )
        for p in _probes()
    ]
    model = sft(
        model,
        tokenizer,
        reading,
        SFTConfig(steps=40, batch_size=4, lr=3e-3, lora=False),
        show_progress=False,
    ).model
    probes = _probes()
    examples = teacher_sample_examples(model, tokenizer, probes, max_new_tokens=12)
    greedy = sample(
        model,
        tokenizer,
        [probe_prompts(tokenizer, p)[1] for p in probes],
        SamplingConfig(max_new_tokens=12, temperature=0.0),
    )
    expected = [
        (p, text)
        for p, text, why in zip(probes, greedy.texts, greedy.finish_reasons, strict=True)
        if why == "eos"
    ]
    assert [e.messages for e in examples] == [
        (*p.messages, {"role": "assistant", "content": text}) for p, text in expected
    ]
    assert all(e.trained == (False, False, True) for e in examples)
    assert [text for _, text in expected] == [p.answer for p in probes]  # it learned to read
    with pytest.raises(ValueError, match="greedy answers are all the same"):
        teacher_sample_examples(model, tokenizer, probes, samples_per_probe=2)


def test_token_budget_stops_at_the_first_step_past_it(tokenizer):
    model = build_model(TINY, tokenizer, seed=0).eval()
    result = sft(
        model,
        tokenizer,
        _examples(),
        SFTConfig(steps=50, batch_size=2, token_budget=40),
        show_progress=False,
    )
    assert result.tokens >= 40
    assert result.tokens - result.history[-1]["tokens"] < 40
    assert result.steps < 50


def test_run_logs_saves_loads_back_and_resumes(tokenizer, tmp_path, monkeypatch):
    config = SFTConfig(steps=4, batch_size=2, lr=1e-2, lora_rank=4, checkpoint_every=2)
    straight = sft(
        build_model(TINY, tokenizer, seed=0),
        tokenizer,
        _examples(),
        config,
        out_dir=tmp_path / "adapter",
        run_dir=tmp_path / "a",
        show_progress=False,
    )
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "adapter" / "sft_config.json").read_text())["steps"] == 4
    loaded = load_adapter(build_model(TINY, tokenizer, seed=0), tmp_path / "adapter")
    ids = torch.tensor([encode(tokenizer, _examples()[0], 1024)[0]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, straight.model(input_ids=ids).logits
        )

    def run(run_dir, resume):
        model = build_model(TINY, tokenizer, seed=0)
        return sft(
            model,
            tokenizer,
            _examples(),
            config,
            run_dir=run_dir,
            show_progress=False,
            resume=resume,
        )

    crash_then_resume(run, sft_module, "sft_step", 3, tmp_path, monkeypatch)


def test_errors_are_one_line(tokenizer, tiny_model):
    with pytest.raises(ValueError, match="no examples"):
        sft(tiny_model, tokenizer, [], SFTConfig(), show_progress=False)
    with pytest.raises(ValueError, match="no trained token within max_len=4"):
        sft(tiny_model, tokenizer, _examples(), SFTConfig(max_len=4), show_progress=False)
