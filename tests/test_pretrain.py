from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch

from onthejob import curriculum, evals, knowledge
from onthejob.curriculum import CurriculumConfig, EpisodePools, Mixture
from onthejob.envs import make_tasks
from onthejob.envs.arith import evaluate
from onthejob.models import TinyConfig, load_model
from onthejob.train import ConfigError
from onthejob.train.checkpoint import latest_checkpoint
from onthejob.train.pretrain import (
    PretrainConfig,
    build_pools,
    collate,
    encode_example,
    lr_at,
    pretrain,
    weighted_lm_loss,
)


def test_weighted_lm_loss_hand_computed():
    # position 0: p(target=1) = 3/4; position 1: p(target=0) = 2/3
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]])
    targets = torch.tensor([[1, 0]])
    ce0, ce1 = -math.log(0.75), -math.log(2 / 3)
    both = weighted_lm_loss(logits, targets, torch.tensor([[1.0, 1.0]]))
    assert both.item() == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
    weighted = weighted_lm_loss(logits, targets, torch.tensor([[1.0, 0.25]]))
    assert weighted.item() == pytest.approx((ce0 + 0.25 * ce1) / 1.25, abs=1e-6)
    only_second = weighted_lm_loss(logits, targets, torch.tensor([[0.0, 2.0]]))
    assert only_second.item() == pytest.approx(ce1, abs=1e-6)


def test_weighted_lm_loss_equals_cross_entropy_for_unit_weights():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert weighted_lm_loss(logits, targets, torch.ones(3, 5)).item() == pytest.approx(
        expected.item(), abs=1e-5
    )


def test_encode_example_weights_answer_tokens_fully(tokenizer):
    example = curriculum.knowledge_example(random.Random(0), 3, pasted=False, n_questions=2)
    ids, weights = encode_example(tokenizer, example, context_weight=0.1, max_len=10_000)
    assert len(ids) == len(weights) and weights[0] == 0.0
    full = [tokenizer.decode([i]) for i, w in zip(ids, weights, strict=True) if w == 1.0]
    answers = [m["content"] for m in example.messages if m["role"] == "assistant"]
    assert "".join(full) == "<|end|>".join(answers) + "<|end|>"
    assert set(weights) == {0.0, 0.1, 1.0}


def test_encode_example_weighs_the_quoted_values(tokenizer):
    example = curriculum.knowledge_example(random.Random(0), 3, pasted=False, n_questions=2)
    replies = [m["content"] for m in example.messages if m["role"] == "assistant"]
    values = [
        reply.split("\n")[0].split(":", 1)[1] for reply in replies
    ]  # " kai." of "x owner: kai."
    assert [example.messages[m]["content"][lo:hi] for m, lo, hi in example.value_spans] == values
    ids, weights = encode_example(tokenizer, example, 0.1, 10_000, value_weight=4.0)
    heavy = [tokenizer.decode([i]) for i, w in zip(ids, weights, strict=True) if w == 4.0]
    assert "".join(heavy) == "".join(values)
    assert set(weights) == {0.0, 0.1, 1.0, 4.0}


def test_a_value_span_that_cuts_a_token_is_refused(tokenizer):
    example = curriculum.knowledge_example(random.Random(0), 3, pasted=False)
    message, lo, hi = example.value_spans[0]
    broken = dataclasses.replace(example, value_spans=((message, lo + 2, hi),))
    with pytest.raises(ValueError, match="cuts a token"):
        encode_example(tokenizer, broken, 0.1, 10_000, value_weight=4.0)
    in_question = dataclasses.replace(example, value_spans=((1, 0, 4),))
    with pytest.raises(ValueError, match="not trained"):
        encode_example(tokenizer, in_question, 0.1, 10_000, value_weight=4.0)


def test_collate_shifts_targets_and_pads():
    rows = [([5, 6, 7], [0.0, 1.0, 1.0]), ([8, 9], [0.0, 0.5])]
    input_ids, mask, targets, weights = collate(rows, pad_id=0)
    assert input_ids.tolist() == [[5, 6], [8, 9]]
    assert targets.tolist() == [[6, 7], [9, 0]]  # 9 predicts padding, with weight 0
    assert weights.tolist() == [[1.0, 1.0], [0.5, 0.0]]
    assert mask.tolist() == [[1, 1], [1, 1]]


def test_learning_rate_schedule():
    config = PretrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(100, config) == pytest.approx(0.1)


def test_documents_grow_then_hold_at_least_eight_items():
    config = CurriculumConfig()
    rng = random.Random(0)
    early = [curriculum.items_for(0.0, config, rng) for _ in range(50)]
    late = [curriculum.items_for(0.9, config, rng) for _ in range(50)]
    assert max(early) <= 3 and min(early) >= 1
    assert min(late) >= 8 and max(late) <= 12


def test_knowledge_probe_pairs_share_the_question_and_only_one_has_notes():
    rng = random.Random(1)
    for _ in range(50):
        with_doc, without = curriculum.knowledge_probe(rng, 10)
        assert with_doc.messages[1:] == without.messages[1:]
        assert "notes:" in with_doc.messages[0]["content"]
        assert "notes:" not in without.messages[0]["content"]
        assert with_doc.item is not None and with_doc.answer


def test_a_one_item_probe_states_only_the_item_asked_about():
    rng = random.Random(2)
    for _ in range(30):
        with_doc, _ = curriculum.knowledge_probe(rng, 1)
        notes = with_doc.messages[0]["content"].split("notes:\n", 1)[1]
        assert [knowledge.parse_statement(line) for line in notes.splitlines()] == [with_doc.item]


def test_answer_type_names_the_relation_or_the_kind():
    assert evals.answer_type(knowledge.Fact("billing", "port", "1501")) == "port"
    assert evals.answer_type(knowledge.Procedure("auth", "deploy", ("a", "b", "c"))) == "procedure"
    assert evals.answer_type(knowledge.Convention("wiki", "ops")) == "convention"


TOY = PretrainConfig(
    steps=6,
    batch_size=4,
    warmup_steps=2,
    checkpoint_every=3,
    tokenizer_sample=100,
    vocab_size=400,
    model=TinyConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64
    ),
    curriculum=CurriculumConfig(
        mixture=Mixture(knowledge=0.5, correction=0.2, arith=0.3, program=0, shop=0, world_model=0)
    ),
    pools=EpisodePools(arith=10, program=0, shop=0, world_model=0),
)


def test_resume_from_checkpoint_gives_the_same_model(tmp_path):
    straight = pretrain(
        TOY, out_dir=tmp_path / "a", run_dir=tmp_path / "run-a", resume=False, show_progress=False
    )
    lines = (tmp_path / "run-a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]

    # A crash one step after the step-3 checkpoint, with a metrics line torn mid-write.
    run_c = tmp_path / "run-c"

    def crash_at_step_4(step, model, tokenizer):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(
            TOY,
            out_dir=tmp_path / "never",
            run_dir=run_c,
            resume=False,
            show_progress=False,
            on_step=crash_at_step_4,
        )
    with (run_c / "metrics.jsonl").open("a") as log:
        log.write('{"step": 5, "lo')
    assert latest_checkpoint(run_c) is not None

    resumed = pretrain(TOY, out_dir=tmp_path / "c", run_dir=run_c, resume=True, show_progress=False)
    a, _ = load_model(straight)
    c, _ = load_model(resumed)
    for (name, pa), (_, pc) in zip(a.state_dict().items(), c.state_dict().items(), strict=True):
        assert torch.allclose(pa, pc, atol=1e-6), name
    steps = [json.loads(x)["step"] for x in (run_c / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_fresh_run_does_not_keep_an_old_runs_metrics(tmp_path):
    run_dir = tmp_path / "run"
    pretrain(TOY, out_dir=tmp_path / "a", run_dir=run_dir, resume=False, show_progress=False)
    pretrain(TOY, out_dir=tmp_path / "b", run_dir=run_dir, resume=False, show_progress=False)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "field,value",
    [("steps", 0), ("batch_size", 0), ("lr", 0.0), ("max_len", 1), ("vocab_size", 100),
     ("micro_batches", 0), ("min_lr_ratio", 1.5), ("checkpoint_every", 0), ("optimizer", "sgd")],
)  # fmt: skip
def test_a_bad_pretrain_config_names_its_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be"):
        PretrainConfig(**{field: value})


def test_arith_episodes_are_counting_solutions_and_every_env_keeps_two_levels():
    pools = EpisodePools(arith=12, program=0, shop=6, world_model=0)
    assert pools.levels("arith") == (1, 2)
    assert pools.levels("shop") == pools.levels("program") == (1, 2)
    built = build_pools(PretrainConfig(pools=pools))
    assert set(built) == {"arith", "shop"}
    for example in built["arith"]:
        prompt, reply = example.messages[1]["content"], example.messages[-1]["content"]
        expression = prompt.split("\n")[0].removeprefix("compute ")
        numbers = expression.split()[::2]
        assert 2 <= len(numbers) <= 3 and all(len(n) == 1 for n in numbers)
        assert reply.startswith(f"{expression}: {numbers[0]} {numbers[1]}")
        assert reply.endswith(f". so {evaluate(expression)}")


def halving_tasks(env: str, split: str, n: int, seed: int, difficulty: int) -> list[str]:
    """The ids `available_tasks` promises: make_tasks at n, n // 2, ... until one serves."""
    while True:
        try:
            return [t.id for t in make_tasks(env, split, n, seed=seed, difficulty=difficulty)]
        except ValueError:
            n //= 2


@pytest.mark.parametrize(
    ("env", "split", "n", "difficulty"),
    [
        ("arith", "train", 400, 1),
        ("arith", "test", 400, 1),
        ("arith", "train", 7, 2),
        ("shop", "test", 30, 1),
    ],
)
def test_available_tasks_is_the_first_size_make_tasks_serves_when_halving(
    env, split, n, difficulty
):
    got = [t.id for t in curriculum.available_tasks(env, split, n, 0, difficulty)]
    assert got == halving_tasks(env, split, n, 0, difficulty)
    assert len(set(got)) == len(got)


def test_available_tasks_names_the_env_reason_when_nothing_is_found():
    with pytest.raises(ValueError, match="split must be one of"):
        curriculum.available_tasks("arith", "dev", 10, 0, 1)
