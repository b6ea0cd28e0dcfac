"""The generation engine: the sampler's per-step callback, dynamic batching, streaming,
per-request budgets and stop strings, seeded requests, the model cache."""

from __future__ import annotations

import pytest

from onthejob.models import end_token_ids, render_chat, save_model
from onthejob.sampling import SamplingConfig, sample
from onthejob.serve.engine import Engine, EngineConfig, ModelSource, PromptTooLong, Settings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer, tiny_model):
    path = tmp_path_factory.mktemp("engine") / "model"
    save_model(tiny_model, tokenizer, path)
    return path


@pytest.fixture
def engine():
    engine = Engine(EngineConfig(batch_wait_s=0.0))
    yield engine
    engine.close()


def prompt(tokenizer, text: str) -> list[int]:
    return render_chat(tokenizer, [{"role": "user", "content": text}], True).ids


TEXTS = ["hello", "who owns search?", "compute 12 + 7 * 3", "the owner of billing is", "hi"]


def test_on_tokens_reports_every_sampled_token_of_every_prompt(tiny_model, tokenizer):
    prompts = [prompt(tokenizer, t) for t in TEXTS]
    seen: dict[int, list[int]] = {i: [] for i in range(len(prompts))}

    def on_tokens(indices: list[int], ids: list[int]) -> None:
        assert len(indices) == len(set(indices))
        for i, token in zip(indices, ids, strict=True):
            seen[i].append(token)

    config = SamplingConfig(max_new_tokens=24, temperature=1.0, seed=3, stop_strings=("e",))
    samples = sample(tiny_model, tokenizer, prompts, config, on_tokens=on_tokens)
    assert [seen[i] for i in range(len(prompts))] == samples.token_ids
    assert len({len(ids) for ids in samples.token_ids}) > 1  # rows ended at different steps
    again = sample(tiny_model, tokenizer, prompts, config)
    assert again.token_ids == samples.token_ids  # the callback changes nothing


def test_concurrent_requests_are_batched_with_the_answers_they_get_alone(
    engine, model_dir, tokenizer
):
    loaded = engine.load(ModelSource("v", model_dir))
    greedy = Settings(max_tokens=12, temperature=0)
    alone = [engine.submit(loaded, prompt(tokenizer, t), greedy).result() for t in TEXTS]
    assert engine.batches == [1] * len(TEXTS)
    blocker = engine.submit(loaded, prompt(tokenizer, "long"), Settings(max_tokens=60))
    handles = [engine.submit(loaded, prompt(tokenizer, t), greedy) for t in TEXTS]
    together = [h.result() for h in handles]
    blocker.result()
    assert max(engine.batches) >= 3  # queued while the blocker decoded, then one batch
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.text for c in together] == [c.text for c in alone]


def test_each_request_keeps_its_own_budget_in_a_shared_batch(engine, model_dir, tokenizer):
    loaded = engine.load(ModelSource("v", model_dir))
    engine.submit(loaded, prompt(tokenizer, "long"), Settings(max_tokens=60))
    budgets = [2, 7, 19]
    handles = [
        engine.submit(loaded, prompt(tokenizer, "hello"), Settings(max_tokens=n, temperature=0))
        for n in budgets
    ]
    results = [h.result() for h in handles]
    longest = results[-1].token_ids
    for n, result in zip(budgets, results, strict=True):
        assert len(result.token_ids) <= n
        assert result.token_ids == longest[: len(result.token_ids)]  # the same greedy path
        if len(result.token_ids) == n and n < len(longest):
            assert result.finish_reason == "length"


def test_streamed_deltas_add_up_to_the_reply_and_stop_strings_never_leak(
    engine, model_dir, tokenizer
):
    loaded = engine.load(ModelSource("v", model_dir))
    for stop in ((), ("e",), ("th", "zz")):
        for seed in range(4):
            settings = Settings(max_tokens=30, temperature=1.0, seed=seed, stop=stop)
            handle = engine.submit(loaded, prompt(tokenizer, "hello"), settings, stream=True)
            deltas = list(handle.deltas())
            result = handle.result()
            assert "".join(deltas) == result.text
            ids = result.token_ids
            if ids[-1] in end_token_ids(tokenizer):
                ids = ids[:-1]
            sampled = tokenizer.decode(ids)
            cuts = [sampled.find(s) for s in stop if s in sampled]
            if cuts:  # the ids keep the stop string, the text ends before it
                assert result.finish_reason == "stop"
                assert result.text == sampled[: min(cuts)]
            else:
                assert sampled.startswith(result.text)


def test_seeded_requests_repeat_and_run_alone(engine, model_dir, tokenizer):
    loaded = engine.load(ModelSource("v", model_dir))
    engine.submit(loaded, prompt(tokenizer, "long"), Settings(max_tokens=60))
    settings = Settings(max_tokens=10, temperature=1.0, seed=7)
    handles = [engine.submit(loaded, prompt(tokenizer, "hello"), settings) for _ in range(3)]
    results = [h.result().token_ids for h in handles]
    assert results[0] == results[1] == results[2]
    assert engine.batches[-3:] == [1, 1, 1]


def test_models_are_loaded_once_and_the_least_recent_dropped(model_dir):
    engine = Engine(EngineConfig(max_loaded=1))
    try:
        first = engine.load(ModelSource("a", model_dir))
        assert engine.load(ModelSource("a", model_dir)) is first
        engine.load(ModelSource("b", model_dir))
        assert engine.loaded() == ["b"]
        assert engine.load(ModelSource("a", model_dir)) is not first
    finally:
        engine.close()


def test_budgets_and_prompts_that_do_not_fit(engine, model_dir):
    loaded = engine.load(ModelSource("v", model_dir))
    assert loaded.context == 256
    assert engine.budget(loaded, 250, None) == 6  # the default is lowered to what is left
    assert engine.budget(loaded, 10, None) == 246
    assert engine.budget(loaded, 10, 20) == 20
    with pytest.raises(PromptTooLong, match="lower max_tokens to at most 56"):
        engine.budget(loaded, 200, 100)
    with pytest.raises(PromptTooLong, match="shorten the conversation"):
        engine.budget(loaded, 256, None)


def test_a_closed_engine_refuses_requests(model_dir, tokenizer):
    engine = Engine()
    loaded = engine.load(ModelSource("v", model_dir))
    engine.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(loaded, prompt(tokenizer, "hi"), Settings(max_tokens=3))


@pytest.mark.parametrize(
    "kwargs", [{"max_batch": 0}, {"batch_wait_s": -1}, {"default_max_tokens": 0}, {"max_loaded": 0}]
)
def test_bad_engine_config(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EngineConfig(**kwargs)
