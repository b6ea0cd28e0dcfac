"""Multi-turn rollouts: `onthejob.rollout.run_episodes` against the same loop sampling
each turn with Hugging Face `generate`.

All three sides play the same held-out shop tasks (the sleep guard's level 1) in one
process, on the same model and settings, through the same episode loop
(`run_episodes`: render the chat, sample a turn, step the env, append the page):

- onthejob: `sample` with a `PrefixCache`, so each turn computes only the new tokens
  (the last reply's final token and the shop's page) on top of the chat so far;
- onthejob, re-prefill: `sample` without it (`reuse_prefix=False`), the whole chat
  prefilled again every turn, as before session 19;
- HF generate: each turn one `model.generate` call over the whole left-padded chat
  (its dynamic KV cache lives within the call, as in a TRL or plain-HF agent loop), its
  log-probs read from the returned scores.

Greedy by default (`--temperature 0`), so every side plays exactly the same episodes
and the lines "same episodes" count them; at temperature 1 HF draws its own (the two
onthejob sides share a seed, so they are still compared) and the per-episode tokens
show how comparable the work was. One warm-up episode batch
of each side first; sides alternate over `--repeats` rounds, the best round of each is
compared. Ends with one line `speedup: X.XX` (HF seconds / onthejob seconds, higher is
better).

    .venv/bin/python benchmarks/rollout_vs_hf.py [--model PATH] [--tasks 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from side_by_side import left_pad, prepare_process, resolve_model_dir

import onthejob.rollout
from onthejob import curriculum
from onthejob.evals import EVAL_SEED, MAX_NEW_TOKENS, MAX_TURNS, available_tasks
from onthejob.models import load_model
from onthejob.models.tokenizer import end_token_ids
from onthejob.rollout import Trajectory, run_episodes
from onthejob.sampling import PrefixCache, Samples, SamplingConfig


def shop_texts() -> list[str]:
    """Chat text of solved shop episodes, to train a tokenizer for a fresh model."""
    examples = curriculum.build_pool("shop", 500, seed=0, difficulties=(1,))
    return [message["content"] for example in examples for message in example.messages]


def hf_sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    eos_token_ids: Sequence[int] | None = None,
    on_tokens: Any = None,
    prefix_cache: PrefixCache | None = None,
    cache_keys: Sequence[Hashable] | None = None,
) -> Samples:
    """`sample`'s contract by one HF `generate` call: the whole prompts, every turn."""
    eos = end_token_ids(tokenizer) if eos_token_ids is None else list(eos_token_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids, mask = left_pad(prompts, pad)
    width = ids.shape[1]
    greedy = config.temperature == 0.0
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=config.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else config.temperature,
        top_k=None,
        top_p=None,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
        output_scores=True,
    )
    new = out.sequences[:, width:]
    logprobs = torch.stack(out.scores, dim=1).log_softmax(-1)
    picked = logprobs.gather(-1, new[..., None])[..., 0]
    token_ids, token_logprobs, reasons, texts = [], [], [], []
    for row in range(len(prompts)):
        seq = new[row].tolist()
        end = next((k for k, t in enumerate(seq) if t in eos), None)
        cut = len(seq) if end is None else end + 1
        token_ids.append(seq[:cut])
        token_logprobs.append(picked[row, :cut].tolist())
        reasons.append("length" if end is None else "eos")
        texts.append(tokenizer.decode(seq[:cut] if end is None else seq[:end]))
    return Samples(token_ids, token_logprobs, reasons, texts)


def play(side: str, model: Any, tokenizer: Any, tasks: list, sampling: SamplingConfig) -> tuple:
    """(seconds, trajectories, clock) of one side over the tasks."""
    clock: dict[str, float] = {}
    real: Callable[..., Samples] = onthejob.rollout.sample
    if side == "hf":
        onthejob.rollout.sample = lambda *a, **k: hf_sample(*a, **k)  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        with torch.inference_mode():
            played = run_episodes(
                model,
                tokenizer,
                "shop",
                tasks,
                sampling,
                max_turns=MAX_TURNS["shop"],
                env_config={"difficulty": 1},
                seed=EVAL_SEED,
                clock=clock,
                reuse_prefix=side == "onthejob",
            )
        return time.perf_counter() - started, played, clock
    finally:
        onthejob.rollout.sample = real


def describe(played: list[Trajectory]) -> str:
    n = len(played)
    turns = sum(len(t.turns) for t in played) / n
    tokens = sum(len(t.token_ids) for t in played) / n
    return f"{turns:.2f} turns, {tokens:.0f} chat tokens an episode, success {sum(t.success for t in played) / n:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local HF model directory")
    parser.add_argument("--tasks", type=int, default=100, help="held-out shop tasks played")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    args = parser.parse_args()
    prepare_process(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, how = resolve_model_dir(args.model, Path(scratch), shop_texts)
        model, tokenizer = load_model(model_dir)
    model.eval()
    tasks = available_tasks("shop", "test", args.tasks, EVAL_SEED, 1)
    sampling = SamplingConfig(
        max_new_tokens=MAX_NEW_TOKENS["shop"],
        temperature=args.temperature,
        seed=None if args.temperature == 0 else 1,
    )
    print(f"model: {model_dir} ({how}); {len(tasks)} shop tasks, level 1")
    print(
        f"settings: up to {MAX_TURNS['shop']} turns of up to {sampling.max_new_tokens} tokens,"
        f" temperature {args.temperature}, {torch.get_num_threads()} torch thread(s)"
    )
    sides = ("onthejob", "re-prefill", "hf")
    for side in sides:  # warm-up
        play(side, model, tokenizer, tasks[:4], sampling)
    best: dict[str, float] = {}
    last: dict[str, tuple] = {}
    for _ in range(args.repeats):
        for side in sides:
            seconds, played, clock = play(side, model, tokenizer, tasks, sampling)
            best[side] = min(best.get(side, seconds), seconds)
            last[side] = (played, clock)
    print()
    print(f"| side | seconds (best of {args.repeats}) | episodes |")
    print("|---|---:|---|")
    for side in sides:
        print(f"| {side} | {best[side]:.2f} | {describe(last[side][0])} |")
    clock = last["onthejob"][1]
    computed, reused = clock["prefilled tokens"], clock["reused tokens"]
    print(
        f"\nprompt tokens computed with the prefix cache: {computed:,.0f}"
        f" ({computed / len(tasks):,.0f} an episode); reused: {reused:,.0f}"
        f" ({reused / len(tasks):,.0f} an episode)"
    )
    ours = [t.token_ids for t in last["onthejob"][0]]
    for side in sides[1:] if args.temperature == 0 else sides[1:2]:  # HF draws its own
        same = sum(a == t.token_ids for a, t in zip(ours, last[side][0], strict=True))
        print(f"same episodes as {side}: {same} of {len(ours)}")
    print(f"re-prefill / onthejob: {best['re-prefill'] / best['onthejob']:.2f}")
    print(f"speedup: {best['hf'] / best['onthejob']:.2f}")


if __name__ == "__main__":
    main()
