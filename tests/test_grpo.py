"""GRPO: the loss against hand-computed numbers, masks and log-probs of multi-turn
trajectories, the loop at toy scale, and exact resume after kill -9 (a real subprocess)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from onthejob.curriculum import available_tasks
from onthejob.envs import make_tasks
from onthejob.models import add_lora, build_model, render_chat, save_model
from onthejob.models.tokenizer import END
from onthejob.prompts import agent_opening
from onthejob.rollout import Trajectory, run_episodes, run_groups
from onthejob.sampling import SamplingConfig
from onthejob.train import ConfigError
from onthejob.train.grpo import (
    TIMING_FIELDS,
    GRPOConfig,
    Learner,
    collate,
    group_advantages,
    kl_k3,
    masked_logprobs,
    policy_loss,
    step_tasks,
    train,
    train_on_groups,
)

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- pure functions


def test_group_advantages_centre_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # group means 0.5 and 0.75
    expected = [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]
    assert group_advantages(rewards, 4).tolist() == pytest.approx(expected)


def test_group_advantages_scaled_by_unbiased_std_plus_1e4():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # group 1: squared deviations 4 x 0.25 = 1, / 3 -> std 0.577350; 0.5 / 0.577450 = 0.865876
    # group 2: 3 x 0.0625 + 0.5625 = 0.75, / 3 -> std 0.5; 0.25 / 0.5001 = 0.499900,
    #          -0.75 / 0.5001 = -1.499700
    expected = [0.865876, -0.865876, -0.865876, 0.865876, 0.4999, 0.4999, 0.4999, -1.4997]
    assert group_advantages(rewards, 4, scale=True).tolist() == pytest.approx(expected, abs=1e-5)


def test_group_advantages_of_equal_rewards_are_zero():
    assert group_advantages(torch.ones(4), 4, scale=True).tolist() == [0.0] * 4


def _loss_case():
    """Two sequences, old log-probs 0, so ratio = exp(logprobs).

    seq 0, A = +1, ratios 1.0, 1.5, 0.5 (all masked)
    seq 1, A = -1, ratios 0.7, 1.1, 2.0 (the last masked out)
    Clip range [0.8, 1.28]. Per token -min(r A, clip(r) A):
      seq 0: -1.0, -1.28 (1.5 clipped high), -0.5 (0.5 keeps r: min picks it)  sum -2.78
      seq 1: max(r, clip(r)) = 0.8 (0.7 clipped low), 1.1                       sum  1.9
    """
    ratios = torch.tensor([[1.0, 1.5, 0.5], [0.7, 1.1, 2.0]])
    logprobs = ratios.log().requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logprobs, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("grpo", (-2.78 / 3 + 1.9 / 2) / 2),  # per-sequence means -0.926667, 0.95 -> 0.011667
        ("dapo", (-2.78 + 1.9) / 5),  # -0.176 over the 5 masked tokens
        ("dr_grpo", (-2.78 + 1.9) / (2 * 4)),  # -0.11: 2 sequences x max_tokens 4
    ],
)
def test_policy_loss_by_hand(loss_type, expected):
    logprobs, old, advantages, mask = _loss_case()
    loss, stats = policy_loss(logprobs, old, advantages, mask, 0.2, 0.28, loss_type, max_tokens=4)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # clipped branch taken on 2 of 5 tokens: 1.5 (A > 0, high) and 0.7 (A < 0, low)
    assert stats["clip_fraction"] == pytest.approx(0.4)
    assert stats["clip_low_fraction"] == pytest.approx(0.2)
    assert stats["clip_high_fraction"] == pytest.approx(0.2)


def test_policy_loss_gradient_by_hand():
    """dapo: d loss / d logprob = -A r / 5 where the ratio is not clipped, 0 where it is."""
    logprobs, old, advantages, mask = _loss_case()
    loss, _ = policy_loss(logprobs, old, advantages, mask, 0.2, 0.28, "dapo")
    loss.backward()
    assert logprobs.grad is not None
    expected = [[-0.2, 0.0, -0.1], [0.0, 0.22, 0.0]]
    assert logprobs.grad.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_dr_grpo_takes_a_max_token_count_per_sequence():
    logprobs, old, advantages, mask = _loss_case()
    loss, _ = policy_loss(
        logprobs, old, advantages, mask, 0.2, 0.28, "dr_grpo", torch.tensor([4.0, 2.0])
    )
    assert loss.item() == pytest.approx((-2.78 / 4 + 1.9 / 2) / 2)  # 0.1275


def test_kl_k3_by_hand_and_in_the_loss():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.2)]])
    mask = torch.tensor([[1.0, 1.0]])
    # d = log(0.25 / 0.5) = -0.693147: e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147; equal -> 0
    kl = kl_k3(logprobs, ref, mask)
    assert kl.tolist() == [pytest.approx([0.193147, 0.0], abs=1e-6)]
    assert kl_k3(logprobs, ref, torch.tensor([[0.0, 1.0]])).tolist() == [[0.0, 0.0]]
    # ratio 1, A = 0: the loss is kl_coef times the token mean of the KL (dapo)
    loss, _ = policy_loss(
        logprobs, logprobs, torch.zeros(1), mask, loss_type="dapo", per_token_kl=kl, kl_coef=0.1
    )
    assert float(loss) == pytest.approx(0.1 * 0.193147 / 2, abs=1e-7)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError) as e:
        GRPOConfig(batch_size=60, group_size=8)
    assert e.value.field == "batch_size"
    for bad in (
        {"loss_type": "ppo"},
        {"envs": ("arith", "chess")},
        {"difficulty": 4, "envs": ("program",)},
        {"clip_low": 1.0},
        {"zero_variance": "keep"},
    ):
        with pytest.raises(ConfigError) as e:
            GRPOConfig(**bad)  # type: ignore[arg-type]
        assert e.value.field == next(iter(bad))


def test_step_tasks_are_a_pure_function_of_seed_and_step():
    config = GRPOConfig(envs=("arith", "shop"), batch_size=24, group_size=8)
    pools = {env: make_tasks(env, "train", 20, seed=0, difficulty=1) for env in config.envs}
    first = step_tasks(config, pools, step=3, n_groups=3)
    assert first == step_tasks(config, pools, step=3, n_groups=3)
    assert first != step_tasks(config, pools, step=4, n_groups=3)
    assert sum(len(v) for v in first.values()) == 3 and set(first) == {"arith", "shop"}
    assert all(len({t.id for t in tasks}) == len(tasks) for tasks in first.values())
    other_seed = GRPOConfig(envs=("arith", "shop"), batch_size=24, group_size=8, seed=1)
    assert step_tasks(other_seed, pools, step=3, n_groups=3) != first


# ---------------------------------------------------------------------------- masks, log-probs


def test_multi_turn_mask_and_trainer_logprobs_match_the_sampler(tiny_model, tokenizer):
    """Program env, 3 attempts: the mask is 1 exactly on sampled tokens, and the trainer's
    log-probs of those tokens equal the sampler's."""
    tasks = make_tasks("program", "test", 2, seed=0, difficulty=1)
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.7, seed=1)
    trajectories = run_episodes(
        tiny_model, tokenizer, "program", tasks, sampling, max_turns=3, env_config={"difficulty": 1}
    )
    end_id = tokenizer.convert_tokens_to_ids(END)
    for t in trajectories:
        assert len(t.turns) == 3, t.end_reason  # an untrained model fails every attempt
        prompt = render_chat(tokenizer, t.messages[:2], add_generation_prompt=True).ids
        sampled = {i for start, stop in t.turns for i in range(start, stop)}
        assert {i for i, m in enumerate(t.loss_mask) if m} == sampled
        assert all(t.loss_mask[i] == 0 for i in range(len(prompt)))
        for k, (_, stop) in enumerate(t.turns):
            if t.token_ids[stop - 1] != end_id:  # cut by the budget: a forced, unmasked end
                assert t.token_ids[stop] == end_id and t.loss_mask[stop] == 0
            if k + 1 < len(t.turns):  # the observation between turns is unmasked
                observation = render_chat(
                    tokenizer, [t.messages[2 + 2 * k + 1]], add_generation_prompt=True
                ).ids
                after = t.token_ids[stop : t.turns[k + 1][0]]
                assert after[-len(observation) :] == observation
                assert not any(t.loss_mask[stop : t.turns[k + 1][0]])

    batch = collate([[t] for t in trajectories], [[1.0], [-1.0]], [15, 15], tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, entropy = masked_logprobs(tiny_model, batch, temperature=0.7, with_entropy=True)
    assert int(batch.mask.sum()) == sum(sum(t.loss_mask) for t in trajectories)
    assert torch.allclose(logprobs, batch.old_logprobs, atol=1e-4)
    assert entropy is not None and bool((entropy > 0).all())
    # the sampler's own log-probs, read off the trajectory at the masked positions
    t = trajectories[0]
    start, stop = t.turns[1]
    assert logprobs[0, start - 1 : stop - 1].tolist() == pytest.approx(
        t.logprobs[start:stop], abs=1e-4
    )


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_forward_matches_the_hf_forward(tokenizer, lora):
    """Groups of multi-turn shop episodes: running each group's prompt once gives the same
    log-probs and the same gradients as the HF forward over whole sequences."""
    model = build_model(TINY, tokenizer, seed=0)
    if lora:
        model = add_lora(model, _lora())
        for name, p in model.named_parameters():  # a non-zero adapter, so that it matters
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    model.eval()
    tasks = make_tasks("shop", "test", 2, seed=4, difficulty=1)
    sampling = SamplingConfig(max_new_tokens=5, temperature=1.0, seed=2)
    groups = run_groups(model, tokenizer, "shop", tasks, 3, sampling, max_turns=2)
    advantages = [[1.0, -0.5, -0.5], [0.2, 0.3, -0.5]]
    results = []
    for share in (False, True):
        batch = collate(groups, advantages, [10, 10], tokenizer.pad_token_id, share_prefix=share)
        assert (batch.prefix_ids is not None) == share
        if share:
            assert batch.prefix_lengths is not None and int(batch.prefix_lengths.min()) > 10
        model.zero_grad()
        logprobs, entropy = masked_logprobs(model, batch, temperature=1.0, with_entropy=True)
        loss, _ = policy_loss(logprobs, batch.old_logprobs, batch.advantages, batch.mask.float())
        loss.backward()
        trained = [p for p in model.parameters() if p.requires_grad]
        results.append(
            (logprobs[batch.mask], entropy, loss.item(), [p.grad.clone() for p in trained])
        )
    (lp_a, ent_a, loss_a, grads_a), (lp_b, ent_b, loss_b, grads_b) = results
    assert torch.allclose(lp_a, lp_b, atol=1e-5)
    assert torch.allclose(
        lp_a,
        torch.cat(
            [torch.tensor(t.logprobs)[torch.tensor(t.loss_mask) == 1] for g in groups for t in g]
        ),
        atol=1e-4,
    )
    assert ent_a is not None and ent_b is not None and torch.allclose(ent_a, ent_b, atol=1e-5)
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def _learner(model, tokenizer, lr=1e-3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return Learner(model, tokenizer, optimizer, scheduler)


def test_lora_update_moves_only_the_adapter_and_kl_starts_at_zero(tokenizer):
    model = add_lora(build_model(TINY, tokenizer, seed=0), _lora()).eval()
    tasks = make_tasks("arith", "test", 2, seed=0, difficulty=1)
    groups = run_groups(
        model, tokenizer, "arith", tasks, 4, SamplingConfig(max_new_tokens=4, seed=0), max_turns=1
    )
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n}
    config = GRPOConfig(
        envs=("arith",), temperature=1.0, kl_coef=0.1, max_new_tokens=4, micro_batch_size=3
    )
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    stats = train_on_groups(config, _learner(model, tokenizer), [(g, advantages) for g in groups])
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the reference
    assert stats["logprob_mismatch"] < 1e-4 and stats["grad_norm"] > 0
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in base_before.items())
    assert any(not torch.equal(params[n], p) for n, p in lora_before.items())


def test_one_update_raises_the_rewarded_samples_and_lowers_the_others(tiny_model, tokenizer):
    import copy

    model = copy.deepcopy(tiny_model)
    tasks = make_tasks("arith", "test", 2, seed=3, difficulty=1)
    groups = run_groups(
        model, tokenizer, "arith", tasks, 4, SamplingConfig(max_new_tokens=6, seed=5), max_turns=1
    )
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    config = GRPOConfig(envs=("arith",), temperature=1.0, max_new_tokens=6)
    batch = collate(groups, [advantages.tolist()] * 2, [6, 6], tokenizer.pad_token_id)
    with torch.no_grad():
        before = masked_logprobs(model, batch, 1.0)[0].sum(-1)
    train_on_groups(config, _learner(model, tokenizer, lr=1e-3), [(g, advantages) for g in groups])
    with torch.no_grad():
        after = masked_logprobs(model, batch, 1.0)[0].sum(-1)
    change = (after - before).view(2, 4)
    assert bool((change[:, 0::2] > 0).all()) and bool((change[:, 1::2] < 0).all())


def test_collate_counts_forward_tokens_with_each_shared_prefix_once():
    def trajectory(ids: list[int], first_agent: int) -> Trajectory:
        mask = [0] * first_agent + [1] * (len(ids) - first_agent)
        return Trajectory(
            "arith", "t", ids, mask, [-0.5 * m for m in mask], [(first_agent, len(ids))]
        )

    group = [trajectory([5, 6, 7, 8, 9], 3), trajectory([5, 6, 7, 10, 11, 12], 3)]
    plain = collate([group], [[1.0, -1.0]], [4], pad_id=0)
    assert plain.forward_tokens == 5 + 6
    shared = collate([group], [[1.0, -1.0]], [4], pad_id=0, share_prefix=True)
    # the prompt (3 tokens) minus its last token is stored once: 2 + (5 - 2) + (6 - 2)
    assert shared.prefix_ids is not None and shared.prefix_ids.tolist() == [[5, 6]]
    assert shared.forward_tokens == 2 + 3 + 4
    moved = shared.to(torch.device("cpu"))
    assert moved.forward_tokens == 9 and torch.equal(moved.input_ids, shared.input_ids)


def test_bf16_update_follows_the_float32_update(tiny_model, tokenizer):
    import copy

    tasks = make_tasks("arith", "test", 2, seed=3, difficulty=1)
    groups = run_groups(
        tiny_model,
        tokenizer,
        "arith",
        tasks,
        4,
        SamplingConfig(max_new_tokens=6, seed=5),
        max_turns=1,
    )
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    stats, grads = {}, {}
    for bf16 in (False, True):
        model = copy.deepcopy(tiny_model)
        learner = _learner(model, tokenizer, lr=1e-3)
        config = GRPOConfig(envs=("arith",), temperature=1.0, max_new_tokens=6, bf16=bf16)
        stats[bf16] = train_on_groups(config, learner, [(g, advantages) for g in groups])
        # the gradients of the update stay on the parameters after the optimizer step
        grads[bf16] = torch.cat(
            [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        )
    assert stats[True]["tokens_trained"] == stats[False]["tokens_trained"] > 0
    assert stats[True]["loss"] == pytest.approx(stats[False]["loss"], abs=0.02)
    assert stats[False]["logprob_mismatch"] < 1e-4  # float32 matches the sampler
    assert 0 < stats[True]["logprob_mismatch"] < 0.1  # bf16 rounds, a little
    cosine = torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0)
    assert cosine > 0.95


def _lora():
    from onthejob.models import LoraSettings

    return LoraSettings(rank=4, alpha=8)


# ---------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def arith_model_dir(tmp_path_factory, tokenizer):
    """The conftest tiny model after 30 supervised steps on arith answers: it writes numbers
    and ends its turn, so about 1 in 20 samples is right and groups have reward variance."""
    model = build_model(TINY, tokenizer, seed=0)
    rows = []
    for task in available_tasks("arith", "train", 200, 0, 1):
        answer = {"role": "assistant", "content": task.data["answer"]}
        chat = render_chat(tokenizer, [*agent_opening("arith", task.prompt), answer])
        rows.append((chat.ids, chat.spans[-1][1], chat.spans[-1][2]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        picked = [rows[i] for i in torch.randint(len(rows), (32,), generator=generator).tolist()]
        width = max(len(ids) for ids, _, _ in picked)
        input_ids = torch.full((32, width), tokenizer.pad_token_id)
        weights = torch.zeros(32, width)
        for r, (ids, start, stop) in enumerate(picked):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            weights[r, start:stop] = 1.0
        logits = model(input_ids=input_ids).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
        )
        loss = (ce * weights[:, 1:].reshape(-1)).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("arith-model") / "model"
    save_model(model.eval(), tokenizer, out)
    return out


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_train_logs_checkpoints_evaluates_and_saves(arith_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path / "home"))
    config = GRPOConfig(
        envs=("arith",), steps=3, batch_size=16, group_size=4, eval_n=8, checkpoint_every=2
    )
    result = train(config, arith_model_dir, tmp_path / "out", tmp_path / "run", show_progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {
            "reward",
            "pass_rate/arith",
            "loss",
            "entropy",
            "clip_fraction",
            "grad_norm",
        } <= set(r)
        assert {"groups_kept", "groups_skipped", "tokens_generated", *TIMING_FIELDS} <= set(r)
        assert r["groups_kept"] + r["groups_skipped"] == 4 and r["rollouts"] == 16
        assert r["logprob_mismatch"] < 1e-4
    assert sum(r["groups_kept"] for r in records) > 0  # some groups trained
    assert any((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["step"] == 3
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(saved["before"]) == set(saved["after"]) == {"arith"} and saved["n"]["arith"] == 8
    assert result.eval_before == saved["before"]
    assert (tmp_path / "out" / "config.json").is_file()
    assert (tmp_path / "out" / "grpo_config.json").is_file()


def test_resample_replaces_zero_variance_groups(arith_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path / "home"))
    config = GRPOConfig(
        envs=("arith",),
        steps=1,
        batch_size=16,
        group_size=4,
        eval_n=0,
        zero_variance="resample",
        resample_rounds=2,
    )
    train(config, arith_model_dir, tmp_path / "out", tmp_path / "run", show_progress=False)
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # each round draws as many groups as are still missing
    assert record["rollouts"] == 4 * (record["groups_kept"] + record["groups_skipped"])
    if record["groups_skipped"] > 0:
        assert record["rollouts"] > 16


def run_train_cli(args: list[str], home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "ONTHEJOB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "onthejob.cli", "train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_kill_9_then_resume_reproduces_the_uninterrupted_metrics(arith_model_dir, tmp_path):
    common = [
        "--model", str(arith_model_dir), "--env", "arith", "--steps", "10",
        "--batch-size", "32", "--group-size", "8", "--max-new-tokens", "6",
        "--checkpoint-every", "2", "--eval-n", "0", "--seed", "3", "--quiet",
    ]  # fmt: skip
    reference = run_train_cli(
        [*common, "--run-dir", str(tmp_path / "a"), "--out", str(tmp_path / "a-out")], tmp_path
    )
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out
    expected = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in expected] == list(range(1, 11))
    assert sum(r["groups_kept"] for r in expected) > 0

    run_dir = tmp_path / "b"
    args = [*common, "--run-dir", str(run_dir), "--out", str(tmp_path / "b-out")]
    victim = run_train_cli(args, tmp_path)
    metrics, meta = run_dir / "metrics.jsonl", run_dir / "checkpoint" / "meta.json"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and victim.poll() is None:
        if meta.is_file() and metrics.is_file():
            try:
                saved = json.loads(meta.read_text())["step"]
            except (json.JSONDecodeError, OSError):
                saved = None
            logged = len(metrics.read_text().splitlines())
            if saved is not None and logged > saved:  # a later step is under way
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = logged
                break
        time.sleep(0.02)
    victim.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed"
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b-out").exists()

    resumed = run_train_cli([*args, "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    got = read_metrics(metrics)
    assert [r["step"] for r in got] == list(range(1, 11))
    for a, b in zip(without_timing(expected), without_timing(got), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["step"], key)
