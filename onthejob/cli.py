"""The `onthejob` command: one subcommand per stage that exists.

    onthejob pretrain    train the tiny default model from scratch (cached)
    onthejob eval        evaluate a model: context reading, corrections, envs, world model
    onthejob env-serve   serve one environment over HTTP on 127.0.0.1

Each subcommand is a thin shell over a library function; flags map to the
fields of that stage's config dataclass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from onthejob.models.hf import ModelDirError


def cmd_pretrain(args: argparse.Namespace) -> int:
    from onthejob.train.pretrain import PretrainConfig, default_model_dir, pretrain

    config = PretrainConfig()
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    if args.batch_size is not None:
        config = replace(config, batch_size=args.batch_size)
    if args.tiny:  # a seconds-long run for smoke tests: small model, small pools
        from onthejob.curriculum import EpisodePools
        from onthejob.models import TinyConfig

        config = replace(
            config,
            model=TinyConfig(
                hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=128
            ),
            pools=EpisodePools(arith=20, program=8, shop=10, world_model=10),
            tokenizer_sample=300,
            vocab_size=512,
        )
    out = Path(args.out) if args.out else default_model_dir(config)
    if out.exists() and not args.force:
        print(f"pretrained model cached at {out} (use --force to retrain)")
        return 0
    started = time.time()
    path = pretrain(config, out_dir=out, resume=not args.force, show_progress=not args.quiet)
    print(f"pretrained model saved to {path} in {time.time() - started:.0f}s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from onthejob import evals
    from onthejob.models import load_model
    from onthejob.train.pretrain import default_model_dir

    model_dir = Path(args.model) if args.model else default_model_dir()
    model, tokenizer = load_model(model_dir)
    n = args.n
    started = time.time()
    reading = evals.context_reading(model, tokenizer, n=n)
    rows: list[tuple[str, float, str]] = [
        ("context reading, with the document", reading.with_context, "target >= 0.90"),
        ("context reading, without it", reading.without_context, f"chance {reading.chance:.3f}"),
    ]
    for kind, acc in reading.by_kind.items():
        rows.append((f"  with the document: {kind}s", acc, ""))
    rows.append(("following a correction", evals.correction_following(model, tokenizer, n=n), ""))
    for env_name in args.envs.split(","):
        rate, played = evals.env_success(
            model, tokenizer, env_name, n=n, difficulty=args.difficulty
        )
        rows.append(
            (
                f"{env_name} success (held-out, level {args.difficulty})",
                rate,
                f"{played} tasks; target 0.10-0.70",
            )
        )
    rows.append(("world model: next shop page exact", evals.world_model(model, tokenizer, n=n), ""))

    table = Table(title=f"evaluation of {model_dir.name} ({n} held-out items each, greedy)")
    table.add_column("skill")
    table.add_column("score", justify="right")
    table.add_column("note")
    for name, score, note in rows:
        table.add_row(name, f"{score:.3f}", note)
    Console().print(table)
    print(f"evaluated in {time.time() - started:.0f}s")
    if args.json:
        record = {
            "model": str(model_dir),
            "n": n,
            "scores": {name.strip(): score for name, score, _ in rows},
            "reading": asdict(reading),
        }
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


def cmd_env_serve(args: argparse.Namespace) -> int:
    from onthejob.envs import http

    argv = [args.name, "--port", str(args.port)]
    for setting in args.set or []:
        argv += ["--set", setting]
    http.main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onthejob", description="agents that learn on the job")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the tiny default model from scratch (cached)")
    p.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the config's)")
    p.add_argument("--batch-size", type=int, help="examples per step")
    p.add_argument("--out", help="model directory to write (default: the cache)")
    p.add_argument(
        "--tiny", action="store_true", help="a seconds-long run at toy scale (smoke tests)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a model on held-out items")
    p.add_argument("--model", help="model directory (default: the cached pretrained model)")
    p.add_argument("--n", type=int, default=100, help="items per suite")
    p.add_argument("--difficulty", type=int, default=1, help="level of the environment tasks")
    p.add_argument("--envs", default="arith,program,shop", help="comma-separated environments")
    p.add_argument("--json", help="also write the scores to this file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("env-serve", help="serve one environment over HTTP on 127.0.0.1")
    p.add_argument("name", help="environment name: arith, program or shop")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--set", action="append", help="config override KEY=VALUE (repeatable)")
    p.set_defaults(func=cmd_env_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModelDirError as e:
        print(f"onthejob: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onthejob: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
