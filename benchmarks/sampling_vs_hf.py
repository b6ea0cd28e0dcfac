"""Sampling throughput: `onthejob.sampling.sample` against Hugging Face `generate`.

Both run in this one process, on the same model, the same 64 left-padded
prompts of 20-60 tokens and the same settings (temperature 1.0, top-k and
top-p off by default), 64 new tokens per prompt. Both are forced to the full
64 tokens by turning end-of-sequence off on both sides: `eos_token_ids=[]` for
`sample`, `eos_token_id=None` in HF's generation config (HF's `min_new_tokens`
would add a logits processor that `sample` does not pay for). HF uses its
default dynamic KV cache and SDPA attention. After one warm-up of each, timed
runs alternate between the two, so load from other processes hits both alike,
and the best run of each is compared (as `timeit` does: on a shared machine the
best run is the one least disturbed). Ends with one line `speedup: X.XX`
(HF time / onthejob time, higher is better).

On a GPU (`--device cuda`), both sides run the same weights in `--dtype`
(bfloat16: no autocast on either side), the clock stops after a CUDA
synchronize, and `--hidden/--layers/--heads/--ffn` give the fresh model a
larger shape than the default's.

    .venv/bin/python benchmarks/sampling_vs_hf.py [--model PATH] [--repeats 5]
        [--device cuda --dtype bfloat16 --hidden 1024 --layers 16 --heads 16 --kv-heads 16 --ffn 2816]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time
from typing import Any

import torch
from side_by_side import left_pad, parse_with_shape

from onthejob.models import (
    TinyConfig,
    build_model,
    chat_prompt_ids,
    check_device,
    count_parameters,
    load_model,
    train_tokenizer,
)
from onthejob.sampling import SamplingConfig, sample
from onthejob.train.pretrain import PretrainConfig

SYLLABLES = (
    "ka lo mi ne ru sa ti vo ze pa do fi gu ha je ko li mu no pe qi ra su to vu wa xe yo zu".split()
)


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences over a few thousand made-up words plus digits: enough for a 4096-token BPE."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(6000)]
    texts = []
    for _ in range(count):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 40)))
        texts.append(f"{sentence.capitalize()}. {rng.randint(0, 9999)} + {rng.randint(0, 999)} = ?")
    return texts


def build_prompts(tokenizer, batch: int, seed: int = 1) -> list[list[int]]:
    """Chat prompts of 20-60 tokens: a user message cut to a random number of words."""
    rng = random.Random(seed)
    texts = synthetic_texts(batch * 4, seed=seed)
    prompts = []
    for text in texts:
        target = rng.randint(20, 60)
        words = text.split()
        ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": " ".join(words)}])
        while len(ids) > target and len(words) > 1:
            words = words[:-1]
            ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": " ".join(words)}])
        if 20 <= len(ids) <= 60:
            prompts.append(ids)
        if len(prompts) == batch:
            return prompts
    raise RuntimeError("could not build enough prompts of 20-60 tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="a local HF model directory (default: a fresh TinyConfig model)",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=PretrainConfig().vocab_size,
        help="vocabulary of the fresh model (default: the pretrained default's)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1...")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="weights of both"
    )
    args, shape = parse_with_shape(parser, TinyConfig())
    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    dtype = getattr(torch, args.dtype)

    model: Any
    if args.model:
        model, tokenizer = load_model(args.model)
    else:
        # The default model's shape (unless the flags say otherwise) and vocabulary size
        # (the ratio depends on the vocabulary: HF's per-step sampling cost grows with it).
        tokenizer = train_tokenizer(synthetic_texts(20000), vocab_size=args.vocab_size)
        model = build_model(shape, tokenizer).eval()
    model.to(device=device, dtype=dtype)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores / 2:
        print(
            f"note: load average {load:.1f} on {cores} cores before starting: other processes "
            f"compete for the CPU; timings will be noisy (--threads 1 is steadier)"
        )
    prompts = build_prompts(tokenizer, args.batch)
    lengths = [len(p) for p in prompts]
    print(
        f"model: {type(model).__name__}, {count_parameters(model) / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
        f"attention {model.config._attn_implementation}, dtype {model.dtype}, device {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"batch {args.batch}, prompt tokens min/mean/max {min(lengths)}/{statistics.mean(lengths):.0f}/{max(lengths)}, "
        f"new tokens {args.max_new_tokens}, temperature {args.temperature}, top_k {args.top_k}, top_p {args.top_p}"
    )

    config = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=0,
    )
    generation_config = copy.deepcopy(model.generation_config)
    # Full length, like eos_token_ids=[] below. generate() treats None as "unset" and
    # fills it from the model's configs, so clear eos there too.
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    generation_config.eos_token_id = None
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.do_sample = True
    generation_config.temperature = args.temperature
    generation_config.top_k = args.top_k
    generation_config.top_p = args.top_p
    generation_config.max_new_tokens = args.max_new_tokens
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    def run_hf() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        new = out.shape[1] - input_ids.shape[1]
        assert new == args.max_new_tokens, f"HF generated {new} tokens, not {args.max_new_tokens}"
        return args.batch * new

    def run_onthejob() -> int:
        samples = sample(model, tokenizer, prompts, config, eos_token_ids=[])
        assert all(len(ids) == args.max_new_tokens for ids in samples.token_ids)
        return sum(len(ids) for ids in samples.token_ids)

    runners = {"hf generate": run_hf, "onthejob sample": run_onthejob}
    for run in runners.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens = {}
    for _ in range(args.repeats):  # alternate, so that load from elsewhere hits both alike
        for name, run in runners.items():
            start = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - start)
    for name in runners:
        best, median = min(times[name]), statistics.median(times[name])
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(
            f"{name:16s} {tokens[name] / best:7.0f} tokens/s best, {tokens[name] / median:7.0f} median"
            f"  (runs, s: {runs})"
        )
    print(f"speedup: {min(times['hf generate']) / min(times['onthejob sample']):.2f}")


if __name__ == "__main__":
    main()
