"""Capacity or curriculum? Pretrain a larger model on the default curriculum and track the
held-out skills the tiny default misses, step by step.

The tiny default (1.8M parameters, 6 CPU minutes) reads a pasted document at about 0.3
where issue 2 asks 0.9, and scores near 0 on held-out env tasks. This script pretrains a
larger Llama (default 207M parameters) from scratch on the same curriculum
(`onthejob.train.pretrain`, bf16 autocast, on a GPU), and every `--eval-every` steps
evaluates, greedy and on held-out items: context reading with and without the document,
following a correction, and env success at level 1 (`onthejob.evals`, as `onthejob eval`
does). If the larger model reads well, the default misses for lack of capacity or compute;
if it does not, the curriculum is what to change.

Not covered: RL (see `grpo_gpu.py`), the default shape (that is `onthejob pretrain`).

    python benchmarks/pretrain_scale.py [--device cuda] [--steps 900] [--batch 128]
        [--eval-every 300] [--n 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from grpo_gpu import larger_pretraining
from side_by_side import LARGER, parse_with_shape, prepare_process
from transformers import PreTrainedTokenizerBase

from onthejob import evals
from onthejob.models import bf16_autocast, check_device, count_parameters, model_device
from onthejob.train.pretrain import pretrain

ENVS = ("arith", "program", "shop")


def evaluate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, n: int) -> dict[str, Any]:
    """The held-out skills `onthejob eval` reports, greedy, n items each."""
    device = model_device(model)
    model.eval()
    with torch.no_grad(), bf16_autocast(device):
        reading = evals.context_reading(model, tokenizer, n=n)
        scores: dict[str, Any] = {
            "reading_with": reading.with_context,
            "reading_without": reading.without_context,
            "reading_chance": reading.chance,
            "reading_by_kind": reading.by_kind,
            "correction": evals.correction_following(model, tokenizer, n=n),
        }
        for env in ENVS:
            scores[env] = evals.env_success(model, tokenizer, env, n=n, difficulty=1)[0]
    model.train()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1... (cpu: a smoke run)")
    parser.add_argument("--steps", type=int, default=900, help="pretraining steps")
    parser.add_argument("--batch", type=int, default=128, help="examples per step")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--eval-every", type=int, default=300, help="steps between evaluations")
    parser.add_argument("--n", type=int, default=100, help="held-out items per skill")
    parser.add_argument("--out", help="directory for scale.json (default: tmp)")
    args, shape = parse_with_shape(parser, LARGER)
    prepare_process(0)
    check_device(args.device)
    out = Path(args.out or tempfile.mkdtemp(prefix="pretrain-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pretrain-scale-work-"))

    config = larger_pretraining(shape, args.steps, args.batch, args.lr)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def on_step(step: int, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        if step % args.eval_every and step != args.steps:
            return
        row = {
            "step": step,
            "elapsed_s": time.perf_counter() - started,
            **evaluate(model, tokenizer, args.n),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    pretrain(
        config,
        out_dir=work / "model",
        run_dir=work / "run",
        show_progress=False,
        on_step=on_step,
        device=args.device,
    )
    from onthejob.models import load_model

    model, _ = load_model(work / "model")
    result = {
        "parameters": count_parameters(model),
        "model": asdict(config.model),
        "config": {"steps": config.steps, "batch": config.batch_size, "lr": config.lr},
        "evals": rows,
    }
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['parameters'] / 1e6:.1f}M parameters, batch {args.batch}, lr {args.lr}")
    header = ("step", "read w/", "read w/o", "correct", *ENVS)
    print("".join(f"{h:>10s}" for h in header))
    for row in rows:
        cells = (row["step"], row["reading_with"], row["reading_without"], row["correction"])
        cells += tuple(row[env] for env in ENVS)
        print(f"{cells[0]:>10d}" + "".join(f"{c:>10.3f}" for c in cells[1:]))
    print(f"results in {out / 'scale.json'}")


if __name__ == "__main__":
    main()
