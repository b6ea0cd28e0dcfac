"""GRPO step time and reward: onthejob's `train` against TRL's `GRPOTrainer`, side by side.

Both run in this one process, one after the other (TRL first), on the same
model directory, the same task (the `arith` env, difficulty 1, its train
split), the same chat template and end token, and the same settings: rollouts
per step, group size, most completion tokens, temperature, learning rate,
optimizer (AdamW, betas 0.9/0.99, no weight decay, gradient norm clipped at
1, constant rate), DAPO's token-level loss with the ratio clipped to
[1 - 0.2, 1 + 0.28], no KL, no std scaling of advantages, one optimizer step
per batch of rollouts, float32 on the CPU. Rewards come from the arith env's
own check on both sides, of the same completion text (the sampled ids decoded
without the final end token, special tokens kept, as `onthejob.sampling` does).

TRL is set up to be as fast as it fairly can on a CPU: no vLLM, no bf16/fp16,
no gradient checkpointing, HF `generate` with its KV cache, no logging,
saving, evaluation or progress bar, no dataloader workers, and the whole batch
in one forward/backward (onthejob uses its own default micro-batch).

Seconds per step: a `TrainerCallback` times TRL from `on_step_begin` to
`on_step_end` (generation, scoring, loss, backward and optimizer step);
onthejob's own `step_s` in metrics.jsonl covers the same (rollouts, scoring
and the update; evaluation is off, eval_n=0, and checkpoints are off). The
first step of each is a warm-up and is left out; the median of the rest is
compared. Reward: the mean reward of the last few steps' rollouts on each side.
Ends with one line `speedup: X.XX` (TRL seconds/step / onthejob seconds/step).

Both stop a completion at the end token (`<|end|>`), so `--max-new-tokens` is a
cap: the printed mean completion length says how much each side decoded.
Model: `--model DIR`, else the cached pretrained default
(`default_model_dir()` under $ONTHEJOB_HOME), else the newest cached default
of an older config, else a fresh `TinyConfig()` model with a tokenizer trained
on arith episodes (random weights: rewards stay near 0).

Not matched, by design or because the two differ in kind:

- Tasks per step: both draw groups from the same pool of train tasks, but each
  with its own sampler, so the tasks of step k differ between the sides.
- Groups whose rewards are all equal: onthejob drops them before the update
  (its default, `zero_variance="skip"`, so it does no forward/backward for
  them), TRL trains on them with zero advantage, so their tokens only add to
  the DAPO denominator. The update direction is the same; its size differs
  (Adam mostly absorbs the scale).
- Micro-batches: TRL does all rollouts in one forward/backward, onthejob in
  micro-batches of `GRPOConfig.micro_batch_size`.
- Env steps: onthejob scores in a pool of threads; TRL calls the reward
  function once per batch, which scores serially.

    .venv/bin/python benchmarks/grpo_vs_trl.py [--model DIR] [--steps 10] [--batch 64]
        [--group 8] [--max-new-tokens 64] [--lr LR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import side_by_side
import torch
from side_by_side import (
    per_step_seconds,
    prepare_process,
    print_settings,
    resolve_model_dir,
    step_clock,
    trl_cpu_arguments,
    trl_optimizer_settings,
)

from onthejob import curriculum
from onthejob.curriculum import available_tasks
from onthejob.envs import Task, make_env
from onthejob.models import (
    count_parameters,
    end_token_ids,
    load_model,
    render_chat,
)
from onthejob.prompts import agent_opening
from onthejob.train.grpo import GRPOConfig, train

ENV = "arith"
DIFFICULTY = 1


@dataclass
class SideResult(side_by_side.SideResult):
    """One trainer's steps, with the arith rewards and the time spent checking them."""

    rewards: list[float] = field(default_factory=list)
    """Mean reward of each step's rollouts."""
    scoring_seconds: list[float] = field(default_factory=list)
    """Seconds of each step spent in the arith env's checks (inside step_seconds)."""


# ---------------------------------------------------------------------------- model and tasks


def arith_texts() -> list[str]:
    """Chat text of solved arith episodes, to train a tokenizer for a fresh model."""
    examples = curriculum.build_pool(ENV, 2000, seed=0, difficulties=(1, 2))
    return [message["content"] for example in examples for message in example.messages]


def train_pool(seed: int) -> list[Task]:
    """The train tasks both sides draw from: the pool onthejob's trainer builds itself."""
    return available_tasks(ENV, "train", GRPOConfig().train_tasks, seed, DIFFICULTY)


def completion_text(ids: list[int], end_ids: list[int], tokenizer: Any) -> str:
    """The answer an env sees: the ids without a final end token, decoded like `sample` does."""
    if ids and ids[-1] in end_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def arith_reward(task: Task, text: str) -> float:
    """The arith env's own verdict on one answer (a fresh env, as each rollout gets)."""
    env = make_env(ENV, difficulty=DIFFICULTY)
    env.reset(task=task)
    return float(env.step(text)[1])


# ---------------------------------------------------------------------------- TRL


def run_trl(model_dir: Path, tasks: list[Task], args: argparse.Namespace, out: Path) -> SideResult:
    """TRL's GRPOTrainer on the tasks; each step timed by a callback."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    result = SideResult("trl")
    model, tokenizer = load_model(model_dir)
    by_id = {task.id: task for task in tasks}
    end_ids = end_token_ids(tokenizer)

    def arith_env(completion_ids: list[list[int]], task_id: list[str], **_: Any) -> list[float]:
        started = time.perf_counter()
        rewards = [
            arith_reward(by_id[tid], completion_text(ids, end_ids, tokenizer))
            for ids, tid in zip(completion_ids, task_id, strict=True)
        ]
        result.scoring_seconds.append(time.perf_counter() - started)
        result.rewards.append(statistics.mean(rewards))
        result.completion_tokens.append(statistics.mean(len(ids) for ids in completion_ids))
        return rewards

    config = TRLConfig(
        **trl_cpu_arguments(out, args.steps, args.batch, args.lr, args.seed),
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        beta=0.0,
        num_iterations=1,
        scale_rewards="none",
        use_vllm=False,
        activation_checkpointing=False,
        log_completions=False,
    )
    dataset = Dataset.from_list(
        [{"prompt": agent_opening(ENV, task.prompt), "task_id": task.id} for task in tasks]
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=arith_env,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[step_clock(result.step_seconds)],
    )
    generation = trainer.generation_config
    result.settings = {
        "rollouts/step": trainer.args.generation_batch_size,
        "group size": trainer.args.num_generations,
        "max new tokens": generation.max_new_tokens,
        "temperature / top_p": f"{generation.temperature} / {generation.top_p}",
        **trl_optimizer_settings(trainer),
        "loss, clip": f"{trainer.loss_type}, [{1 - trainer.epsilon_low}, {1 + trainer.epsilon_high}]",
        "KL coef": trainer.beta,
        "scale rewards": trainer.args.scale_rewards,
        "updates per batch": trainer.num_iterations * trainer.args.steps_per_generation,
        "micro-batch": trainer.args.per_device_train_batch_size,
        "end tokens": trainer.eos_token_ids,
        "activation checkpointing": trainer.args.activation_checkpointing,
        "sampler": f"HF generate, {generation.cache_implementation or 'dynamic'} KV cache",
    }
    started = time.perf_counter()
    trainer.train()
    result.total_seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- onthejob


def run_onthejob(model_dir: Path, args: argparse.Namespace, out: Path) -> SideResult:
    """onthejob's GRPO on the arith env; per-step numbers read from its metrics.jsonl."""
    config = GRPOConfig(
        envs=(ENV,),
        steps=args.steps,
        batch_size=args.batch,
        group_size=args.group,
        max_new_tokens=args.max_new_tokens,
        max_turns=1,
        temperature=args.temperature,
        top_p=1.0,
        lr=args.lr,
        weight_decay=0.0,
        grad_clip=1.0,
        warmup=0,
        loss_type="dapo",
        clip_low=0.2,
        clip_high=0.28,
        scale_rewards=False,
        kl_coef=0.0,
        epochs_per_batch=1,
        difficulty=DIFFICULTY,
        seed=args.seed,
        checkpoint_every=0,
        eval_n=0,
    )
    result = SideResult("onthejob")
    _, tokenizer = load_model(model_dir)
    result.settings = {
        "rollouts/step": config.batch_size,
        "group size": config.group_size,
        "max new tokens": config.new_tokens(ENV),
        "temperature / top_p": f"{config.temperature} / {config.top_p}",
        "lr, schedule": f"{config.lr:g}, constant (warmup {config.warmup})",
        "AdamW betas, wd, clip": f"(0.9, 0.99), {config.weight_decay}, {config.grad_clip}",
        "loss, clip": f"{config.loss_type}, [{1 - config.clip_low}, {1 + config.clip_high}]",
        "KL coef": config.kl_coef,
        "scale rewards": "group" if config.scale_rewards else "none",
        "updates per batch": config.epochs_per_batch,
        "micro-batch": config.micro_batch_size,
        "end tokens": end_token_ids(tokenizer),
        "dtype": "torch.float32",
        "activation checkpointing": False,
        "sampler": "onthejob.sampling.sample, static KV cache",
    }
    started = time.perf_counter()
    train(config, model_dir, out_dir=out / "model", run_dir=out / "run", show_progress=False)
    result.total_seconds = time.perf_counter() - started
    for line in (out / "run" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        result.step_seconds.append(record["step_s"])
        result.rewards.append(record["reward"])
        result.completion_tokens.append(record["tokens_generated"] / record["rollouts"])
        result.scoring_seconds.append(record["env_s"])
    return result


# ---------------------------------------------------------------------------- report


def check_same_prompts(model_dir: Path, tasks: list[Task]) -> None:
    """TRL renders prompts with the tokenizer's Jinja template; onthejob with render_chat."""
    _, tokenizer = load_model(model_dir)
    for task in tasks:
        chat = agent_opening(ENV, task.prompt)
        ours = render_chat(tokenizer, chat, add_generation_prompt=True).ids
        theirs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
        if list(theirs) != ours:
            raise SystemExit(
                f"the tokenizer's chat_template renders {task.prompt!r} differently from "
                f"render_chat; fix chat_template.jinja in {model_dir}"
            )


def print_results(results: list[SideResult], window: int) -> None:
    print_settings([r.name for r in results], [r.settings for r in results])
    for r in results:
        last = r.rewards[-window:]
        seconds = ", ".join(f"{s:.2f}" for s in r.step_seconds)
        rewards = ", ".join(f"{x:.2f}" for x in r.rewards)
        print(
            f"{r.name:9s} {per_step_seconds(r.step_seconds):6.2f} s/step (median of steps 2-{len(r.step_seconds)}), "
            f"reward {statistics.mean(last):.3f} (mean of the last {len(last)} steps), "
            f"mean completion {statistics.mean(r.completion_tokens):.1f} tokens, "
            f"scoring {statistics.median(r.scoring_seconds):.2f} s/step, "
            f"whole run {r.total_seconds:.1f} s"
        )
        print(f"{'':9s} step seconds: {seconds}")
        print(f"{'':9s} step rewards: {rewards}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="a local HF model directory (default: the cached pretrained default)",
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="rollouts per optimizer step")
    parser.add_argument("--group", type=int, default=8, help="rollouts per task (G)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=GRPOConfig().lr)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reward-window", type=int, default=3, help="last steps whose reward is averaged"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--only",
        choices=("trl", "onthejob"),
        default=None,
        help="run one side only (a quick check; no speedup line)",
    )
    args = parser.parse_args()
    prepare_process(args.threads)
    with tempfile.TemporaryDirectory(prefix="grpo_vs_trl-") as scratch:
        scratch_dir = Path(scratch)
        model_dir, how = resolve_model_dir(args.model, scratch_dir, arith_texts)
        model, tokenizer = load_model(model_dir)
        print(
            f"model: {model_dir} ({how}), {count_parameters(model) / 1e6:.2f}M parameters, "
            f"vocab {len(tokenizer)}, torch threads {torch.get_num_threads()}"
        )
        del model
        tasks = train_pool(args.seed)
        check_same_prompts(model_dir, tasks)
        print(
            f"task: {ENV} difficulty {DIFFICULTY}, {len(tasks)} train tasks, "
            f"prompts rendered identically by both (checked); {args.steps} steps"
        )
        results = []
        if args.only in (None, "trl"):
            results.append(run_trl(model_dir, tasks, args, scratch_dir / "trl"))
        if args.only in (None, "onthejob"):
            results.append(run_onthejob(model_dir, args, scratch_dir / "onthejob"))
    print_results(results, args.reward_window)
    if args.only is None:
        trl, ours = results
        print(
            f"speedup: {per_step_seconds(trl.step_seconds) / per_step_seconds(ours.step_seconds):.2f}"
        )


if __name__ == "__main__":
    main()
