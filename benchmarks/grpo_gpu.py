"""GRPO on a GPU: tokens/s and model FLOP utilization (MFU) of a larger from-scratch model in bf16.

One run does four things, in order:

1. Measures the GPU's matmul peak: the median rate of an n x n x n bf16 product on
   random data (CUDA events, warm-up first). MFU is reported against this measured
   number, not the datasheet's.
2. Pretrains a larger Llama config from scratch (`onthejob.train.pretrain`, the same
   curriculum as the default model, bf16 autocast) on the GPU, so that GRPO has
   non-zero rewards to learn from.
3. Runs onthejob's GRPO (`onthejob.train.grpo.train`, the trainer `onthejob train`
   runs) on it in bf16 autocast, once per `--batch` given, with the default envs
   (arith, program, shop), group size and per-env completion lengths; the learning rate
   is `--lr` (2e-5: the default model's 2e-4 halved this model's reward in 10 steps).
4. Reads each step's metrics and prints, per batch size, the medians (first step left
   out as warm-up) of: seconds per step, generated tokens/s, trained tokens/s, and MFU
   of the training phase, of the sampling phase and of the whole step.

Model FLOPs, counted the usual way (Kaplan et al.): 2N per token of a forward pass and
6N per token of forward plus backward, N = the parameters that take part in matmuls
(every weight but the input embedding; a tied output head counts once). Attention's
score and value products are not counted (under 5% at these lengths), so MFU is a
slight underestimate. Training tokens are the positions the training forward ran
(`tokens_trained`: each group's shared prompt once, padding excluded); sampling
tokens are the generated agent tokens only (`tokens_generated`: the prefill of
prompts and observations is not counted), so the sampling MFU is a lower bound.
The step's time also covers env steps (program runs real subprocess sandboxes).

Not covered: a side-by-side peer on the GPU (`grpo_vs_trl.py` is the CPU comparison),
multi-GPU, torch.compile, CUDA graphs.

    python benchmarks/grpo_gpu.py [--device cuda] [--hidden 1024] [--layers 16]
        [--pretrain-steps 1200] [--steps 10] [--batch 64 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from side_by_side import LARGER, parse_with_shape, prepare_process

from onthejob.models import TinyConfig, check_device, count_parameters, load_model
from onthejob.train.grpo import GRPOConfig, train
from onthejob.train.pretrain import PretrainConfig, pretrain


def matmul_peak(device: torch.device, n: int, repeats: int = 20) -> float:
    """Median TFLOP/s of an n x n x n bf16 matmul on random data (3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=out)
            stop.record()
            stop.synchronize()
            seconds.append(start.elapsed_time(stop) / 1000)
        else:
            started = time.perf_counter()
            torch.matmul(a, b, out=out)
            seconds.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(seconds) / 1e12


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters taking part in matmuls: all but the input embedding (a tied head counts once)."""
    embed = model.get_input_embeddings().weight  # type: ignore[operator]
    head = model.get_output_embeddings().weight  # type: ignore[operator]
    total = count_parameters(model)
    return total if embed is head else total - embed.numel()


def larger_pretraining(shape: TinyConfig, steps: int, batch: int, lr: float) -> PretrainConfig:
    """The default curriculum and loss, for the given shape, in bf16 autocast."""
    return replace(
        PretrainConfig(),
        model=shape,
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup_steps=min(50, steps // 10 + 1),
        bf16=True,
        checkpoint_every=10**9,
    )


def summarize(records: list[dict[str, Any]], n: int, peak: float) -> dict[str, float]:
    """Medians over the steps after the first, and the MFU they imply against peak TFLOP/s."""
    steady = records[1:] or records

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    trained = [r for r in steady if r["tokens_trained"] > 0 and r["train_s"] > 0]
    step_flops = [
        (6 * n * r["tokens_trained"] + 2 * n * r["tokens_generated"]) / r["step_s"] for r in steady
    ]
    return {
        "step_s": median([r["step_s"] for r in steady]),
        "sampling_s": median([r["sampling_s"] for r in steady]),
        "env_s": median([r["env_s"] for r in steady]),
        "train_s": median([r["train_s"] for r in steady]),
        "generated_tokens_per_s": median([r["tokens_generated"] / r["step_s"] for r in steady]),
        "sampling_tokens_per_s": median(
            [r["tokens_generated"] / r["sampling_s"] for r in steady if r["sampling_s"] > 0]
        ),
        "trained_tokens_per_s": median([r["tokens_trained"] / r["train_s"] for r in trained]),
        "mfu_train": median([6 * n * r["tokens_trained"] / r["train_s"] for r in trained])
        / (peak * 1e12),
        "mfu_sampling": median(
            [2 * n * r["tokens_generated"] / r["sampling_s"] for r in steady if r["sampling_s"] > 0]
        )
        / (peak * 1e12),
        "mfu_step": median(step_flops) / (peak * 1e12),
        "reward_first": records[0]["reward"],
        "reward_last": records[-1]["reward"],
        "steps_trained": len([r for r in records if r["tokens_trained"] > 0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1... (cpu: a smoke run)")
    parser.add_argument("--pretrain-steps", type=int, default=1200, help="from-scratch steps")
    parser.add_argument("--pretrain-batch", type=int, default=64, help="examples per step")
    parser.add_argument("--pretrain-lr", type=float, default=5e-4, help="peak pretraining lr")
    parser.add_argument("--steps", type=int, default=10, help="GRPO steps per batch size")
    parser.add_argument(
        "--lr",
        type=float,
        default=2e-5,
        help="GRPO learning rate (the default model's 2e-4 collapsed this one's reward)",
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 512], help="rollouts/step")
    parser.add_argument("--group", type=int, default=8, help="rollouts per task")
    parser.add_argument("--micro-batch", type=int, default=64, help="rollouts per forward")
    parser.add_argument("--eval-n", type=int, default=0, help="held-out tasks per env (0: none)")
    parser.add_argument("--peak-n", type=int, default=8192, help="size of the peak matmul")
    parser.add_argument("--out", help="directory for results.json and the metrics (default: tmp)")
    args, shape = parse_with_shape(parser, LARGER)
    prepare_process(0)
    device = check_device(args.device)
    out = Path(args.out or tempfile.mkdtemp(prefix="grpo-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="grpo-gpu-work-"))

    peak = matmul_peak(device, args.peak_n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; measured bf16 matmul peak {peak:.1f} TFLOP/s (n={args.peak_n})")

    pre = larger_pretraining(shape, args.pretrain_steps, args.pretrain_batch, args.pretrain_lr)
    started = time.perf_counter()
    model_dir = pretrain(
        pre,
        out_dir=work / "model",
        run_dir=work / "pretrain",
        show_progress=False,
        device=args.device,
    )
    pretrain_s = time.perf_counter() - started
    model, _ = load_model(model_dir)
    n = matmul_parameters(model)
    total = count_parameters(model)
    del model
    lines = (work / "pretrain" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    print(
        f"pretrained {total / 1e6:.1f}M parameters ({n / 1e6:.1f}M in matmuls) from scratch:"
        f" {pre.steps} steps in {pretrain_s:.0f} s, loss {last['loss']:.3f},"
        f" {last['tokens_per_s']:.0f} tokens/s"
    )
    shutil.copy(work / "pretrain" / "metrics.jsonl", out / "pretrain_metrics.jsonl")

    results: dict[str, Any] = {
        "device": name,
        "peak_tflops": peak,
        "parameters": total,
        "matmul_parameters": n,
        "model": asdict(pre.model),
        "pretrain": {"steps": pre.steps, "batch": pre.batch_size, "lr": pre.lr, "s": pretrain_s},
        "runs": {},
    }
    for batch in args.batch:
        config = GRPOConfig(
            steps=args.steps,
            batch_size=batch,
            group_size=args.group,
            lr=args.lr,
            micro_batch_size=args.micro_batch,
            bf16=True,
            eval_n=args.eval_n,
            checkpoint_every=0,
            env_workers=8,
        )
        run_dir = work / f"grpo-{batch}"
        started = time.perf_counter()
        result = train(
            config,
            model_dir,
            out_dir=work / f"grpo-{batch}-model",
            run_dir=run_dir,
            show_progress=False,
            device=args.device,
        )
        wall = time.perf_counter() - started
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        shutil.copy(run_dir / "metrics.jsonl", out / f"grpo_{batch}_metrics.jsonl")
        summary = summarize(records, n, peak)
        summary["wall_s"] = wall
        if result.eval_before:
            summary["eval_before"], summary["eval_after"] = result.eval_before, result.eval_after
        results["runs"][str(batch)] = summary
        print(f"batch {batch}: {json.dumps(summary)}")
    (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\nGRPO, bf16 autocast, {total / 1e6:.0f}M-parameter model, {name}")
    print(f"measured matmul peak: {peak:.0f} TFLOP/s; MFU against it")
    header = ("batch", "s/step", "gen tok/s", "train tok/s", "MFU train", "MFU sample", "MFU step")
    print("".join(f"{h:>13s}" for h in header))
    for batch, s in results["runs"].items():
        row = (
            batch,
            f"{s['step_s']:.2f}",
            f"{s['generated_tokens_per_s']:.0f}",
            f"{s['trained_tokens_per_s']:.0f}",
            f"{100 * s['mfu_train']:.1f}%",
            f"{100 * s['mfu_sampling']:.2f}%",
            f"{100 * s['mfu_step']:.2f}%",
        )
        print("".join(f"{c:>13s}" for c in row))
    print(f"results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
