"""The knowledge-heavy reading proxy: pretrain the default shape on a curriculum that is mostly
documents and questions, and read held-out documents every quarter of the run.

Sessions 12-26 measured every change aimed at context reading (issue 2's >= 0.90 with the
document) here first: it answers in about 11 minutes on one thread what the whole
curriculum answers in 13-20, and the changes it ranked first (the quoted line, Muon, the
value weight) carried over to the whole curriculum (docs/results.md, "Quote the line, then
answer" and "Weighing the value"). The mixture is
`Mixture(knowledge=0.8, correction=0.1, arith=0.1, program=0, shop=0, world_model=0)`: no
program or shop pool is built, so the run starts in seconds.

Each evaluation is `evals.context_reading` on `--n` held-out questions about fresh
documents of 8-12 items (the same questions `onthejob eval` asks, so +-0.035 at n=200),
greedy, and at the end also on one-item documents (copying without search). Any field of
`PretrainConfig` is set with `--set FIELD=JSON`, nested fields with dots
(`--set value_weight=2 --set curriculum.short_fraction=0.4`), a nested config's fields together
as a JSON object (`--set 'model={"num_layers": 2, "hidden_size": 256, "num_heads": 8}'`);
the proxy's mixture and 1,200 steps are the starting point, not the package default.

Not covered: the environments' skills (`onthejob eval` on a model from `onthejob
pretrain`), timings (runs two at a time share the cores; the seconds printed compare only
within one batch of runs).

    python benchmarks/reading_proxy.py [--seed 0] [--steps 1200] [--evals 4] [--n 200]
        [--threads 1] [--set FIELD=JSON ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from side_by_side import prepare_process
from transformers import PreTrainedTokenizerBase

from onthejob import evals
from onthejob.curriculum import CurriculumConfig, Mixture
from onthejob.train.pretrain import PretrainConfig, pretrain

PROXY_MIXTURE = Mixture(
    knowledge=0.8, correction=0.1, arith=0.1, program=0.0, shop=0.0, world_model=0.0
)
"""Documents and questions, with corrections and sums to keep the chat shape (no env pools)."""


def override(config: Any, field: str, value: Any) -> Any:
    """A copy of the dataclass `config` with `field` (dotted for nested dataclasses) set."""
    name, _, rest = field.partition(".")
    names = {f.name for f in dataclasses.fields(config)}
    if name not in names:
        raise ValueError(
            f"{type(config).__name__} has no field {name!r} (fields: {', '.join(sorted(names))})"
        )
    current = getattr(config, name)
    if rest:
        value = override(current, rest, value)
    elif dataclasses.is_dataclass(current) and isinstance(value, dict):
        value = dataclasses.replace(current, **value)  # several fields at once: checked together
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif not _same_kind(current, value):
        raise ValueError(
            f"{type(config).__name__}.{name} takes a value of type {type(current).__name__}, got {value!r}"
        )
    return dataclasses.replace(config, **{name: value})


def _same_kind(current: Any, value: Any) -> bool:
    """Whether value may replace current: a number for a number (an int for a float), else
    the same type (a bool is not a number here)."""
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, int | float):
        return isinstance(value, int | float) and (
            isinstance(current, float) or isinstance(value, int)
        )
    return isinstance(value, type(current))


def proxy_config(seed: int, steps: int, settings: list[str]) -> PretrainConfig:
    """The proxy's PretrainConfig with each `FIELD=JSON` of settings applied in order."""
    config = PretrainConfig(
        steps=steps, seed=seed, curriculum=CurriculumConfig(mixture=PROXY_MIXTURE)
    )
    for setting in settings:
        field, sep, text = setting.partition("=")
        if not sep:
            raise ValueError(f"--set {setting!r}: write FIELD=VALUE, e.g. value_weight=2")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word such as adamw
        config = override(config, field.strip(), value)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    parser.add_argument("--steps", type=int, default=1200, help="pretraining steps")
    parser.add_argument("--evals", type=int, default=4, help="evaluations, evenly spaced")
    parser.add_argument("--n", type=int, default=200, help="held-out questions per evaluation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    parser.add_argument("--out", help="directory for proxy.json and the model (default: tmp)")
    args = parser.parse_args()
    if args.evals < 1 or args.n < 2:
        parser.error(f"--evals must be >= 1 and --n >= 2, got {args.evals} and {args.n}")
    try:
        config = proxy_config(args.seed, args.steps, args.set)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    prepare_process(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="reading-proxy-"))
    out.mkdir(parents=True, exist_ok=True)
    marks = {max(1, round(args.steps * (i + 1) / args.evals)) for i in range(args.evals)}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def on_step(step: int, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        if step not in marks:
            return
        model.eval()
        reading = evals.context_reading(model, tokenizer, n=args.n)
        row: dict[str, Any] = {
            "step": step,
            "reading": reading.with_context,
            "without": reading.without_context,
            "seconds": round(time.perf_counter() - started),
        }
        if step == args.steps:
            row["one_item"] = evals.context_reading(
                model, tokenizer, n=args.n // 2, items=(1, 1)
            ).with_context
        rows.append(row)
        print(json.dumps(row), flush=True)
        model.train()

    pretrain(config, out / "model", out / "run", show_progress=False, on_step=on_step)
    result = {"settings": args.set, "seed": args.seed, "config_key": config.key(), "evals": rows}
    (out / "proxy.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'step':>6s} {'reading':>8s} {'without':>8s}")
    for row in rows:
        print(f"{row['step']:>6d} {row['reading']:>8.3f} {row['without']:>8.3f}")
    print(f"one-item {rows[-1]['one_item']:.3f}; results in {out / 'proxy.json'}")


if __name__ == "__main__":
    main()
