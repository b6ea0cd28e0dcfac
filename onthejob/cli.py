"""The `onthejob` command: one subcommand per stage that exists.

    onthejob pretrain    train the tiny default model from scratch (cached)
    onthejob train       GRPO on the grindable envs, evaluated before and after
    onthejob eval        evaluate a model: context reading, corrections, envs, world model
    onthejob env-serve   serve one environment over HTTP on 127.0.0.1
    onthejob models      model versions: list, show, register, promote, rollback
    onthejob serve       the OpenAI-compatible chat API, sessions, feedback and web UI
    onthejob feedback    give a running server a thumb and/or a note on a session
    onthejob work        a week of simulated users at an org, through the real server
    onthejob sleep       consolidate a tenant's experience into a candidate version, gated

Each subcommand is a thin shell over a library function; flags map to the
fields of that stage's config dataclass.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the commands import their modules when they run (a fast start)
    from onthejob.models import TinyConfig
    from onthejob.sleep import SleepConfig
    from onthejob.train import ConfigError


SHAPE_FLAGS = {
    "num_layers": "layers",
    "hidden_size": "hidden",
    "num_heads": "heads",
    "num_kv_heads": "kv-heads",
    "intermediate_size": "ffn",
}
"""The model-shape flags (`add_shape_flags`), by the `TinyConfig` field each sets."""


def add_shape_flags(parser: argparse.ArgumentParser, base: str = "TinyConfig's") -> None:
    """--layers, --hidden, --heads, --kv-heads, --ffn: a model shape as changes to a base
    shape, named in the help (`shape_from_flags`); `onthejob pretrain` and the benchmarks."""
    parser.add_argument("--layers", type=_count, help=f"transformer blocks (default: {base})")
    parser.add_argument("--hidden", type=_count, help="width of the residual stream")
    parser.add_argument("--heads", type=_count, help="attention heads")
    parser.add_argument(
        "--kv-heads", type=_count, help="key/value heads (default: as many as --heads)"
    )
    parser.add_argument("--ffn", type=_count, help="width of the SwiGLU MLP")


def shape_from_flags(args: argparse.Namespace, base: TinyConfig) -> TinyConfig:
    """`base` with the fields the shape flags give (--kv-heads follows --heads when only
    --heads is given). A shape that cannot be built raises a `ConfigError` whose field is
    the flag ("--heads"), so a command can print it as one line."""
    from onthejob.train import ConfigError

    shape = {field: getattr(args, flag.replace("-", "_")) for field, flag in SHAPE_FLAGS.items()}
    if shape["num_kv_heads"] is None:
        shape["num_kv_heads"] = shape["num_heads"]
    try:
        return replace(base, **{field: v for field, v in shape.items() if v is not None})
    except ConfigError as e:
        raise ConfigError(f"--{SHAPE_FLAGS[e.field]}", e.problem) from None


def cmd_pretrain(args: argparse.Namespace) -> int:
    from onthejob.train import ConfigError
    from onthejob.train.pretrain import PretrainConfig, default_model_dir, pretrain

    config = PretrainConfig()
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    if args.batch_size is not None:
        config = replace(config, batch_size=args.batch_size)
    if args.bf16:
        config = replace(config, bf16=True)
    if _bad_device("pretrain", args.device):
        return 2
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
    try:
        config = replace(config, model=shape_from_flags(args, config.model), seed=args.seed)
    except ConfigError as e:
        print(f"onthejob pretrain: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_model_dir(config)
    if out.exists() and not args.force:
        print(f"pretrained model cached at {out} (use --force to retrain)")
        return 0
    if _unwritable("pretrain", {"the folder of --out" if args.out else "the cache": out.parent}):
        return 2
    started = time.time()
    path = pretrain(
        config,
        out_dir=out,
        resume=not args.force,
        show_progress=not args.quiet,
        device=args.device,
    )
    print(f"pretrained model saved to {path} in {time.time() - started:.0f}s")
    return 0


TRAIN_FLAGS = {
    "envs": "env",
    "steps": "steps",
    "batch_size": "batch-size",
    "group_size": "group-size",
    "max_new_tokens": "max-new-tokens",
    "temperature": "temperature",
    "lr": "lr",
    "loss_type": "loss-type",
    "clip_low": "clip-low",
    "clip_high": "clip-high",
    "kl_coef": "kl-coef",
    "scale_rewards": "scale-rewards",
    "zero_variance": "zero-variance",
    "epochs_per_batch": "epochs-per-batch",
    "difficulty": "difficulty",
    "seed": "seed",
    "eval_n": "eval-n",
    "checkpoint_every": "checkpoint-every",
    "bf16": "bf16",
}
"""GRPOConfig field -> `onthejob train` flag."""


def _bad_device(command: str, device: str) -> bool:
    """Print why --device is unusable here (and return True), else False."""
    from onthejob.models import check_device

    try:
        check_device(device)
    except ValueError as e:
        print(f"onthejob {command}: {e}", file=sys.stderr)
        return True
    return False


def _unwritable(command: str, folders: dict[str, Path | None]) -> bool:
    """Create each output folder (and its parents) before any work starts; True, after a
    one-line error naming what it is for, when one cannot be created or written. Work that
    ends in an unwritable path would be lost."""
    for what, folder in folders.items():
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):  # a file is what will be written there
                pass
        except OSError as e:
            reason = e.strerror or str(e)
            print(f"onthejob {command}: cannot write {what} {folder}: {reason}", file=sys.stderr)
            return True
    return False


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from onthejob.models import LoraSettings
    from onthejob.train import ConfigError
    from onthejob.train.checkpoint import CheckpointMismatch, latest_checkpoint
    from onthejob.train.grpo import GRPOConfig, default_run_dir, train
    from onthejob.train.pretrain import default_model_dir

    overrides = {
        name: getattr(args, name)
        for name in TRAIN_FLAGS
        if name != "envs" and getattr(args, name) is not None
    }
    if args.env is not None:
        overrides["envs"] = tuple(e.strip() for e in args.env.split(",") if e.strip())
    if args.lora:
        overrides["lora"] = LoraSettings(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
    try:
        config = GRPOConfig(**overrides)
    except ConfigError as e:
        print(f"onthejob train: --{TRAIN_FLAGS.get(e.field, e.field)} {e.problem}", file=sys.stderr)
        return 2
    if _bad_device("train", args.device):
        return 2
    out_dir = Path(args.out) if args.out else None
    run_dir = Path(args.run_dir) if args.run_dir else None
    folders = {"the folder of --out": out_dir and out_dir.parent, "--run-dir": run_dir}
    if _unwritable("train", folders):
        return 2
    if args.model:
        model_dir = Path(args.model)
    else:
        model_dir = default_model_dir()
        if not model_dir.is_dir():
            print(
                f"onthejob: no pretrained model at {model_dir}; run `onthejob pretrain` first",
                file=sys.stderr,
            )
            return 2
    if args.resume:
        where = run_dir or default_run_dir(config, model_dir)
        if latest_checkpoint(where) is None:
            print(f"onthejob train: --resume: no checkpoint in {where}; starting at step 0")
    started = time.time()
    try:
        result = train(
            config,
            model_dir,
            out_dir=out_dir,
            run_dir=run_dir,
            resume=args.resume,
            show_progress=not args.quiet,
            device=args.device,
        )
    except CheckpointMismatch as e:
        print(f"onthejob train: --resume: {e}", file=sys.stderr)
        return 2
    if result.eval_before:
        table = Table(title=f"held-out success (level {config.difficulty}, greedy)")
        for column in ("env", "tasks", "before", "after", "change"):
            table.add_column(column, justify="left" if column == "env" else "right")
        for env, before in result.eval_before.items():
            after = result.eval_after[env]
            table.add_row(
                env,
                str(result.eval_n[env]),
                f"{before:.3f}",
                f"{after:.3f}",
                f"{after - before:+.3f}",
            )
        Console().print(table)
    if config.lora is not None:
        print(
            f"LoRA adapter saved to {result.out_dir} (load: onthejob.models.load_adapter("
            f"load_model('{model_dir}')[0], '{result.out_dir}'))"
        )
    else:
        print(f"model saved to {result.out_dir}")
    print(
        f"metrics in {result.run_dir} (TensorBoard: {result.run_dir / 'tb'}); {time.time() - started:.0f}s"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from onthejob import evals
    from onthejob.envs import ENVS, level_problem
    from onthejob.models import load_model
    from onthejob.train.pretrain import default_model_dir

    env_names = [name.strip() for name in args.envs.split(",") if name.strip()]
    unknown = [name for name in env_names if name not in ENVS]
    if unknown:
        print(
            f"onthejob eval: unknown env {', '.join(unknown)} in --envs; choose from "
            f"{', '.join(sorted(ENVS))}",
            file=sys.stderr,
        )
        return 2
    level = level_problem(env_names, args.difficulty)
    if level is not None:
        print(f"onthejob eval: --difficulty: {level}", file=sys.stderr)
        return 2
    json_path = Path(args.json) if args.json else None
    if json_path is not None and json_path.is_dir():
        print(f"onthejob eval: --json {json_path} is a folder; give a file name", file=sys.stderr)
        return 2
    if _unwritable("eval", {"the folder of --json": json_path and json_path.parent}):
        return 2
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
    copying = evals.context_reading(model, tokenizer, n=n, items=(1, 1))
    weakest = sorted(copying.by_answer.items(), key=lambda kv: kv[1])[:3]
    rows.append(
        (
            "  one-item documents (copying, no search)",
            copying.with_context,
            "weakest: " + ", ".join(f"{name} {acc:.2f}" for name, acc in weakest),
        )
    )
    rows.append(("following a correction", evals.correction_following(model, tokenizer, n=n), ""))
    for env_name in env_names:
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
    table.add_column("skill", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("note")
    for name, score, note in rows:
        table.add_row(name, f"{score:.3f}", note)
    Console().print(table)
    print(f"evaluated in {time.time() - started:.0f}s")
    if json_path is not None:
        record = {
            "model": str(model_dir),
            "n": n,
            "scores": {name.strip(): score for name, score, _ in rows},
            "reading": asdict(reading),
            "copying": asdict(copying),
        }
        json_path.write_text(json.dumps(record, indent=2))
    return 0


def cmd_env_serve(args: argparse.Namespace) -> int:
    from onthejob.envs import http

    argv = [args.name, "--port", str(args.port)]
    for setting in args.set or []:
        argv += ["--set", setting]
    http.main(argv)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from onthejob.registry import Registry, RegistryError, default_registry_path
    from onthejob.serve.app import ServeConfig, create_app, serve
    from onthejob.serve.engine import EngineConfig
    from onthejob.serve.protocol import ApiError
    from onthejob.store import StoreError, default_store_path
    from onthejob.train.pretrain import default_model_dir
    from onthejob.web import bind

    store_path = Path(args.store) if args.store else default_store_path()
    registry_path = Path(args.registry) if args.registry else default_registry_path()
    try:
        registry = Registry(registry_path)
        version = registry.promoted(args.tenant)
        if version is None:  # the tenant gets --model (else the pretrained default)
            model_dir = Path(args.model) if args.model else default_model_dir()
            if not args.model and not model_dir.is_dir():
                print(
                    f"onthejob: no pretrained model at {model_dir} and tenant {args.tenant!r} has"
                    " no promoted version; run `onthejob pretrain` first (or pass --model DIR)",
                    file=sys.stderr,
                )
                return 2
            actor = "onthejob serve"
            version = registry.register(args.tenant, model_dir, method="base", actor=actor)
            registry.promote(version.id, reason="served by onthejob serve", actor=actor)
            print(f"registered {model_dir} as {version.id}, promoted for tenant {args.tenant}")
        elif args.model:
            print(
                f"tenant {args.tenant} already has promoted version {version.id}; serving it"
                " (--model is used only for a tenant without one)"
            )
        engine = EngineConfig(device=args.device, max_batch=args.max_batch)
        app = create_app(
            store_path, registry_path, ServeConfig(default_tenant=args.tenant, engine=engine)
        )
    except (RegistryError, StoreError) as e:
        print(f"onthejob: {e}", file=sys.stderr)
        return 2
    try:
        app.state.service.load(version)  # a broken model fails now, not on the first request
    except ApiError as e:
        print(f"onthejob: {e.message}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        print(f"onthejob: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(
        f"serving {version.id} for tenant {args.tenant} on http://{host}:{port}"
        f" (web UI at /; store {store_path}; registry {registry_path})",
        flush=True,
    )
    serve(app, sock)
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    import urllib.parse

    import httpx

    thumb = "up" if args.up else "down" if args.down else None
    if thumb is None and not (args.note or "").strip():
        print("onthejob feedback: give --up, --down or --note TEXT (or several)", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    path = f"/v1/sessions/{urllib.parse.quote(args.session, safe='')}/feedback"
    body = {"thumb": thumb, "evaluation": args.note, "author": args.author}
    try:
        response = httpx.post(url + path, json=body, timeout=30)
    except httpx.HTTPError as e:
        print(
            f"onthejob feedback: cannot reach the server at {url} ({e}); start it with"
            " `onthejob serve` or pass --url",
            file=sys.stderr,
        )
        return 1
    if not response.is_success:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}: {response.text[:200]}"
        print(f"onthejob feedback: {message}", file=sys.stderr)
        return 1
    given = response.json()
    what = ", ".join(
        part
        for part in (
            f"thumb {thumb}" if thumb else "",
            f"note of {len(args.note)} characters" if args.note else "",
        )
        if part
    )
    print(f"feedback {given['id']} recorded for session {args.session} ({what})")
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    import httpx
    import openai
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from onthejob.registry import Registry, default_registry_path
    from onthejob.store import default_store_path
    from onthejob.train.pretrain import default_model_dir, onthejob_home
    from onthejob.world import make_org
    from onthejob.world.users import SessionRecord, UsersConfig
    from onthejob.world.week import WeekConfig, run_week

    try:
        users = UsersConfig(
            seed=args.seed,
            paste_share=args.paste_share,
            step_budget=args.step_budget,
            wrong_thumb_share=args.wrong_thumbs,
        )
        config = WeekConfig(org_seed=args.org, days=args.days, users=users)
    except ValueError as e:
        print(f"onthejob work: {e}", file=sys.stderr)
        return 2
    tenant = make_org(args.org, config.org).tenant
    store = Path(args.store) if args.store else default_store_path()
    registry = Path(args.registry) if args.registry else default_registry_path()
    shop = Path(args.shop) if args.shop else onthejob_home() / "world" / tenant / "shop.sqlite"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (
        Path(args.run_dir) if args.run_dir else onthejob_home() / "runs" / f"work-{tenant}-{stamp}"
    )
    model_dir = Path(args.model) if args.model else None
    if model_dir is not None and not model_dir.is_dir():
        print(f"onthejob work: model directory not found: {model_dir}", file=sys.stderr)
        return 2
    folders = {"--run-dir": run_dir, "the folder of --store": store.parent}
    if _unwritable("work", {**folders, "the folder of --shop": shop.parent}):
        return 2
    if model_dir is None and args.server is None:
        promoted = Registry(registry).promoted(tenant) if registry.exists() else None
        if promoted is None:
            model_dir = default_model_dir()
            if not model_dir.is_dir():
                print(
                    f"onthejob: no pretrained model at {model_dir}; run `onthejob pretrain` first",
                    file=sys.stderr,
                )
                return 2
    console = Console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task(f"{tenant}: starting the shop and the server", total=None)

        def progress(done: int, total: int, sessions: list[SessionRecord]) -> None:
            last = sessions[-1] if sessions else None
            what = "" if last is None else f"day {last.day}, {last.user}: {_tasks_done(sessions)}"
            bar.update(task, completed=done, total=total, description=f"{tenant} sessions {what}")

        try:
            report = run_week(
                config,
                run_dir,
                model_dir,
                store=store,
                registry=registry,
                shop=shop,
                server_url=args.server,
                server_port=args.port,
                progress=progress,
            )
        except RuntimeError as e:
            print(f"onthejob work: {e}", file=sys.stderr)
            return 1
        except (httpx.HTTPError, openai.APIError) as e:  # the server, or the shop, failed
            print(
                f"onthejob work: a request failed ({' '.join(str(e).split())}); the sessions"
                f" recorded so far are in {store}, the shop's state in {shop}",
                file=sys.stderr,
            )
            return 1
    first, last = report.days[0], report.days[-1]
    weeks = f"week {first.week}" + (f" to {last.week}" if last.week != first.week else "")
    table = Table(
        title=f"work at {tenant}, days {first.day}-{last.day} ({weeks}), model {report.model}",
        caption="questions right at the first reply, with the document holding the answer in"
        " the conversation and without it; right after a correction, of those wrong first;"
        " orders judged from the live shop's state",
    )
    for column in ("day", "sessions", "with doc", "no doc", "corrected", "orders", "actions", "up/down", "notes"):  # fmt: skip
        table.add_column(column, justify="left" if column == "day" else "right")
    rows = [(str(day.day), day) for day in report.days]
    for label, row in [*rows, ("all", report.totals())]:
        wrong_first = row.questions - row.right_with_document - row.right_without_document
        table.add_row(
            label,
            str(row.sessions),
            _share(row.right_with_document, row.with_document),
            _share(row.right_without_document, row.without_document),
            _share(row.right_after_correction, wrong_first),
            _share(row.orders_done, row.orders),
            str(row.actions) + (f" ({row.refused_orders}!)" if row.refused_orders else ""),
            f"{row.thumbs_up}/{row.thumbs_down}",
            str(row.evaluations),
        )
    console.print(table)
    sent = report.sent
    print(
        f"users sent {sent.user_messages} messages and {sent.observations} tool results and gave"
        f" {sent.feedback} thumbs ({sent.evaluations} with notes); the agent made"
        f" {sent.tool_calls} tool calls ({sent.actions} shop actions logged;"
        " '!' marks orders the shop refused: throttled or banned)"
    )
    print(
        f"store {report.store}; shop {report.shop} (day {report.first_day + len(report.days)} next)"
    )
    print(f"report {run_dir / 'week.json'}; {report.wall_s:.0f}s")
    return 0


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} {part / whole:.2f}" if whole else "-"


def _tasks_done(sessions: list) -> str:
    tasks = [t for s in sessions for t in s.tasks]
    return f"{sum(t.success for t in tasks)}/{len(tasks)} tasks done"


def _quiet_loading() -> None:
    """No per-load progress bar from transformers, and no deprecation notice peft triggers
    inside it: commands that load models many times print their own progress."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated")


def _flag_problem(error: ConfigError) -> str:
    """A sleep trainer's config error, named by the flag that sets the field."""
    flag = {"token_budget": "tokens"}.get(error.field, error.field).replace("_", "-")
    return f"--{flag} {error.problem}"


def _sleep_config(args: argparse.Namespace) -> SleepConfig:
    """The SleepConfig of the sleep flags (`_add_sleep_flags`)."""
    from onthejob.sleep import PlanConfig, SleepConfig

    base = SleepConfig()
    train = {"seed": args.seed}
    if args.steps is not None:
        train["steps"] = args.steps
    if args.tokens is not None:
        train["token_budget"] = args.tokens
    if args.lr is not None:
        train["lr"] = args.lr
    if args.update_share is not None:
        train["update_share"] = args.update_share
    guard_envs = tuple(e.strip() for e in args.guard_envs.split(",") if e.strip())
    return SleepConfig(
        method=args.method,
        plan=PlanConfig(
            hindsight=args.hindsight,
            context_scope=args.context,
            openers=base.plan.openers if args.openers is None else tuple(args.openers),
            seed=args.seed,
        ),
        opsd=replace(
            base.opsd,
            **train,
            teacher=args.teacher or base.opsd.teacher,
            divergence=args.divergence or base.opsd.divergence,
            beta=base.opsd.beta if args.beta is None else args.beta,
            replay_temperature=(
                base.opsd.replay_temperature
                if args.replay_temperature is None
                else args.replay_temperature
            ),
        ),
        sft=replace(base.sft, **train),
        gate=replace(base.gate, tolerance=args.tolerance),
        guard_envs=guard_envs,
        guard_n=args.guard_n,
        guard_samples=args.guard_samples,
        replay=_replay_of(args.replay, guard_envs),
        promote=not args.no_promote,
        device=args.device,
    )


def cmd_sleep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from onthejob.registry import Registry, RegistryError, default_registry_path
    from onthejob.sleep import SelectionPolicy, SleepError, sleep
    from onthejob.store import Store, StoreError, default_store_path
    from onthejob.train import ConfigError
    from onthejob.world import make_org

    tenant = args.tenant if args.tenant else make_org(args.org).tenant
    store_path = Path(args.store) if args.store else default_store_path()
    if not store_path.is_file():
        print(
            f"onthejob sleep: no experience store at {store_path}; run `onthejob work` first",
            file=sys.stderr,
        )
        return 2
    try:
        policy = SelectionPolicy(
            tenant=tenant,
            thumbs=args.thumbs,
            require_evaluation=args.require_evaluation,
            since=_when(args.since, "--since"),
            until=_when(args.until, "--until"),
            users=tuple(u.strip() for u in (args.users or "").split(",") if u.strip()),
        )
        config = _sleep_config(args)
    except ConfigError as e:  # a trainer's field: name its flag
        print(f"onthejob sleep: {_flag_problem(e)}", file=sys.stderr)
        return 2
    except (SleepError, ValueError) as e:
        print(f"onthejob sleep: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else None
    if _unwritable("sleep", {"--run-dir": run_dir}):
        return 2
    console = Console()
    _quiet_loading()
    started = time.time()
    try:
        with Store(store_path) as store:
            result = sleep(
                store,
                Registry(Path(args.registry) if args.registry else default_registry_path()),
                policy,
                config,
                run_dir=run_dir,
                model_dir=Path(args.model) if args.model else None,
                show_progress=not args.quiet,
                log=lambda line: console.print(f"[dim]{line}[/dim]") if not args.quiet else None,
            )
    except (SleepError, StoreError, RegistryError) as e:
        print(f"onthejob sleep: {e}", file=sys.stderr)
        return 2
    plan = result.plan
    table = Table(
        title=f"sleep of {tenant}: {result.method} on {result.sessions} sessions"
        f" ({len(plan.probes)} probes, {len(plan.targets)} held-out targets)"
    )
    for column in ("measure", "parent", "candidate", "change"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(
        "recall, no context",
        f"{result.recall_before:.3f}",
        f"{result.recall_after:.3f}",
        f"{result.recall_after - result.recall_before:+.3f}",
    )
    table.add_row("teacher: the parent with the context", f"{result.teacher_accuracy:.3f}", "", "")
    for name, before in result.guard_before.items():
        after = result.guard_after[name]
        table.add_row(f"guard: {name}", f"{before:.3f}", f"{after:.3f}", f"{after - before:+.3f}")
    console.print(table)
    version = result.version
    if result.train:
        print(
            f"trained {result.train['steps']} steps on {result.train['tokens']} tokens in"
            f" {result.train['seconds']:.0f}s"
        )
    verdict = {"promoted": "promoted", "rejected": "rejected"}.get(version.status, "kept")
    print(
        f"{verdict} {version.id} (parent {result.parent.id}, status {version.status}):"
        f" {result.decision.reason}"
    )
    print(f"run {result.run_dir} (plan.json, sleep.json); {time.time() - started:.0f}s")
    return 0


def _when(text: str | None, flag: str) -> float | None:
    """A time flag: seconds since the epoch, or an ISO date or date-time (local time)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"{flag} takes seconds since the epoch or an ISO date (2025-01-31T09:00), got {text!r}"
        ) from None


def cmd_models(args: argparse.Namespace) -> int:
    import getpass

    from rich.console import Console
    from rich.table import Table

    from onthejob.registry import Registry, RegistryError, default_registry_path

    path = Path(args.registry) if args.registry else default_registry_path()
    if not path.exists():
        if args.models_command == "list":
            print(f"no model versions yet (no registry at {path})")
            return 0
        if args.models_command != "register":
            print(
                f"onthejob models: no registry at {path}; register a model first", file=sys.stderr
            )
            return 2
    try:
        actor = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (e.g. a container without /etc/passwd entry)
        actor = "cli"
    try:
        registry = Registry(path)
        if args.models_command == "list":
            table = Table(title=f"model versions ({path})")
            for column in ("id", "tenant", "status", "method", "parent", "adapter", "evals"):
                table.add_column(column)
            for v in registry.list(args.tenant):
                evals = ", ".join(f"{k}={_short(x)}" for k, x in sorted(v.evals.items()))
                table.add_row(
                    v.id, v.tenant, v.status, v.method, v.parent or "-", v.adapter or "-", evals
                )
            Console().print(table)
        elif args.models_command == "show":
            version = registry.get(args.id)
            record = {**asdict(version), "history": registry.history(version_id=version.id)}
            print(json.dumps(record, indent=2))
        elif args.models_command == "register":
            try:
                config = json.loads(args.config) if args.config else None
            except json.JSONDecodeError as e:
                raise RegistryError(f"--config is not a JSON object: {e}") from None
            version = registry.register(
                args.tenant,
                args.base,
                adapter=args.adapter,
                method=args.method,
                config=config,
                parent=args.parent,
                version_id=args.id,
                actor=actor,
            )
            print(f"registered {version.id} ({version.status})")
        elif args.models_command == "promote":
            version = registry.promote(args.id, reason=args.reason, actor=actor)
            print(f"promoted {version.id} for tenant {version.tenant}")
        else:
            version = registry.rollback(args.tenant, reason=args.reason, actor=actor)
            print(f"rolled back tenant {version.tenant}: {version.id} is promoted again")
    except RegistryError as e:
        print(f"onthejob models: {e}", file=sys.stderr)
        return 2
    return 0


def _short(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else json.dumps(value)


def _add_sleep_flags(p: argparse.ArgumentParser) -> None:
    """How a sleep trains and is judged (`onthejob sleep` and `onthejob weeks`)."""
    p.add_argument(
        "--method",
        choices=("opsd", "sft_transcript", "sft_teacher", "none"),
        default="opsd",
        help="how to update (none: context only)",
    )
    p.add_argument(
        "--hindsight", action="store_true", help="the teacher also reads the users' evaluations"
    )
    p.add_argument(
        "--context",
        choices=("document", "all"),
        default="document",
        help="teacher context: the document holding the item, or every note",
    )
    p.add_argument(
        "--openers",
        nargs="*",
        metavar="OPENER",
        help='ask every knowledge probe again behind each opener ("hi!" "quick question:");'
        " the flag alone: none",
    )
    p.add_argument("--steps", type=int, help="most training steps (default 4000)")
    p.add_argument(
        "--tokens",
        type=int,
        help="token budget: stop once this many are trained on (default 192000, every method)",
    )
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument(
        "--update-share",
        type=float,
        help="share of the trained change the candidate keeps (1: all; WiSE-FT interpolation)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of probes, sampling and adapter")
    p.add_argument(
        "--guard-envs", default="arith,program,shop", help="grindable envs of the guard suite"
    )
    p.add_argument("--guard-n", type=_count, default=100, help="held-out tasks per guard env")
    p.add_argument(
        "--guard-samples",
        type=_env_counts,
        default=None,
        help='plays per guard task by env, sampled and averaged (default "arith=64,shop=8");'
        ' envs not named play once, greedily; "greedy" plays every env greedily',
    )
    p.add_argument(
        "--teacher",
        choices=("fixed", "base", "ema", "live"),
        help="opsd teacher (base: adapter off even when an earlier adapter trains further)",
    )
    p.add_argument(
        "--divergence",
        choices=("forward_kl", "reverse_kl", "jsd", "sampled"),
        help="opsd's per-token divergence between teacher and student",
    )
    p.add_argument("--beta", type=float, help="jsd's teacher weight: 0 forward KL, 1 reverse KL")
    p.add_argument(
        "--replay",
        type=_replay,
        default=None,
        help="replay probes (training tasks, no context) mixed into opsd/sft_teacher: by env"
        ' ("arith=16,shop=64"), a number spread evenly over the guard envs, or "none"'
        ' (default "arith=16,program=16,shop=64")',
    )
    p.add_argument(
        "--replay-temperature",
        type=float,
        help="opsd teacher's temperature on replay probes (below 1: a sharper copy of its skills)",
    )
    p.add_argument(
        "--tolerance", type=float, default=0.02, help="most a guard score may fall (0.02: 2 points)"
    )
    p.add_argument("--no-promote", action="store_true", help="leave a passing candidate unpromoted")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1...")


def cmd_weeks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from onthejob.sleep import SleepError
    from onthejob.train import ConfigError
    from onthejob.train.pretrain import onthejob_home
    from onthejob.weeks import WeeksConfig, compare, run_weeks
    from onthejob.world.users import UsersConfig

    try:
        config = WeeksConfig(
            org_seed=args.org,
            weeks=args.weeks,
            sleep=_sleep_config(args),
            users=UsersConfig(seed=args.seed),
            exam=args.exam,
        )
    except ConfigError as e:  # a trainer's field: name its flag
        print(f"onthejob weeks: {_flag_problem(e)}", file=sys.stderr)
        return 2
    except (SleepError, ValueError) as e:
        print(f"onthejob weeks: {e}", file=sys.stderr)
        return 2
    if args.compare:
        if _unwritable("weeks", {"the folder of --out": Path(args.out).parent}):
            return 2
        try:
            rows = compare([Path(d) for d in args.compare], Path(args.out))
        except ValueError as e:
            print(f"onthejob weeks: {e}", file=sys.stderr)
            return 2
        for row in rows:
            right, asked = row["exam"]
            print(
                f"{row['method']:15s} promoted {row['promoted']}, recall of what was taught"
                f" {' '.join(f'{x:.2f}' for x in row['retained'])}, stale"
                f" {' '.join('-' if x is None else f'{x:.2f}' for x in row['stale'])}, exam"
                f" {right}/{asked}  ({row['run']})"
            )
        print(f"figure: {args.out}")
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else onthejob_home() / "runs" / f"weeks-{args.org}-{args.method}-{stamp}"
    )
    if (run_dir / "store.sqlite").exists():
        print(
            f"onthejob weeks: {run_dir} already holds a run (the world cannot be reset);"
            " pick another --run-dir",
            file=sys.stderr,
        )
        return 2
    if _unwritable("weeks", {"--run-dir": run_dir}):
        return 2
    console = Console()
    _quiet_loading()
    try:
        report = run_weeks(
            config,
            run_dir,
            Path(args.model) if args.model else None,
            log=lambda line: console.print(f"[dim]{line}[/dim]") if not args.quiet else None,
        )
    except ValueError as e:
        print(f"onthejob weeks: {e}", file=sys.stderr)
        return 2
    table = Table(title=f"{args.weeks} weeks at org {args.org}, sleep method {args.method}")
    for column in (
        "week",
        "right at work (doc / no doc)",
        "sleep",
        "retained",
        "updated / stale",
        "guard",
    ):
        table.add_column(column)
    for week in report.weeks:
        work, after = week["work"], week["after_sleep"]
        retained = ", ".join(
            f"w{w}: {right}/{n}" for w, (right, n) in sorted(after["retention"].items())
        )
        updated, changed = after["updated"]
        guard = ", ".join(f"{name} {value:.2f}" for name, value in after["guard"].items())
        table.add_row(
            str(week["week"]),
            f"{work['right_with_document']}/{work['with_document']}"
            f" / {work['right_without_document']}/{work['without_document']}",
            after["status"],
            retained or "-",
            f"{updated}/{changed} / {after['stale']}/{changed}" if changed else "-",
            guard or "-",
        )
    console.print(table)
    if report.exam is not None:
        exam = report.exam
        first = report.weeks[0]["work"]
        console.print(
            f"exam week, no documents: right {exam['right_without_document']}/"
            f"{exam['without_document']} (week {report.weeks[0]['week']} without a document:"
            f" {first['right_without_document']}/{first['without_document']})"
        )
    console.print(f"weeks.json and weeks.png in {run_dir} ({report.wall_s:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onthejob", description="agents that learn on the job")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the tiny default model from scratch (cached)")
    _one_line_errors(p)
    p.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    p.add_argument("--steps", type=_count, help="optimizer steps (default: the config's)")
    p.add_argument("--batch-size", type=_count, help="examples per step")
    p.add_argument("--out", help="model directory to write (default: the cache)")
    p.add_argument(
        "--tiny", action="store_true", help="a seconds-long run at toy scale (smoke tests)"
    )
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1...")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (on a GPU)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of data, initialisation, sampling")
    add_shape_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="GRPO on the grindable envs, evaluated before and after")
    _one_line_errors(p)
    p.add_argument("--env", help="comma-separated environments (default: arith,program,shop)")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--batch-size", type=int, help="rollouts per step")
    p.add_argument("--group-size", type=int, help="rollouts per task (G)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per agent turn (default: per env)")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--loss-type", help="grpo, dr_grpo or dapo")
    p.add_argument("--clip-low", type=float, help="ratio clipped below at 1 - clip-low")
    p.add_argument("--clip-high", type=float, help="ratio clipped above at 1 + clip-high")
    p.add_argument("--kl-coef", type=float, help="weight of the KL to the starting model")
    p.add_argument(
        "--scale-rewards",
        action="store_true",
        default=None,
        help="divide advantages by the group's std",
    )
    p.add_argument("--zero-variance", help="groups with equal rewards: skip or resample")
    p.add_argument("--epochs-per-batch", type=int, help="gradient steps per batch (mu)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter, not every weight")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (with --lora)")
    p.add_argument("--model", help="model directory (default: the cached pretrained model)")
    p.add_argument("--out", help="where to save the result (default: in the cache)")
    p.add_argument("--run-dir", help="metrics, TensorBoard and checkpoints (default: in the cache)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--seed", type=int, help="seed of tasks and sampling")
    p.add_argument("--difficulty", type=int, help="env level for training and evaluation")
    p.add_argument("--eval-n", type=int, help="held-out tasks per env before and after (0: none)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1...")
    p.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="autocast to bfloat16 (on a GPU; weights and optimizer stay float32)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on held-out items")
    _one_line_errors(p)
    p.add_argument("--model", help="model directory (default: the cached pretrained model)")
    p.add_argument("--n", type=_count, default=100, help="items per suite")
    p.add_argument("--difficulty", type=int, default=1, help="level of the environment tasks")
    p.add_argument("--envs", default="arith,program,shop", help="comma-separated environments")
    p.add_argument("--json", help="also write the scores to this file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("env-serve", help="serve one environment over HTTP on 127.0.0.1")
    _one_line_errors(p)
    p.add_argument("name", help="environment name: arith, program or shop")
    p.add_argument("--port", type=_port, default=8000, help="port (0: a free one, printed)")
    p.add_argument("--set", action="append", help="config override KEY=VALUE (repeatable)")
    p.set_defaults(func=cmd_env_serve)

    p = sub.add_parser("serve", help="the chat API, sessions, feedback and web UI on 127.0.0.1")
    _one_line_errors(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (keep it local)")
    p.add_argument("--port", type=_port, default=8000, help="port (0: a free one, printed)")
    p.add_argument("--store", help="experience store file (default: in the cache)")
    p.add_argument("--registry", help="model registry file (default: in the cache)")
    p.add_argument(
        "--model",
        help="model directory registered and promoted if the tenant has no promoted version"
        " (default: the cached pretrained model)",
    )
    p.add_argument(
        "--tenant", default="default", help="tenant of --model and of requests without X-Tenant"
    )
    p.add_argument("--device", default="cpu", help="where models run: cpu, cuda, cuda:1...")
    p.add_argument("--max-batch", type=_count, default=32, help="most requests decoded together")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("feedback", help="give a running server a thumb and/or a note on a session")
    _one_line_errors(p)
    p.add_argument("session", help="session id")
    thumbs = p.add_mutually_exclusive_group()
    thumbs.add_argument("--up", action="store_true", help="thumb up")
    thumbs.add_argument("--down", action="store_true", help="thumb down")
    p.add_argument("--note", help="a written evaluation")
    p.add_argument("--author", help="who gives it (default: the session's user, else anonymous)")
    p.add_argument(
        "--url",
        default=os.environ.get("ONTHEJOB_URL", "http://127.0.0.1:8000"),
        help="the server (default: $ONTHEJOB_URL, else http://127.0.0.1:8000)",
    )
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("work", help="a week of simulated users at an org, through the real server")
    _one_line_errors(p)
    p.add_argument("--org", type=_seed, default=1, help="seed of the organisation")
    p.add_argument("--days", type=int, default=5, help="working days (5: a week)")
    p.add_argument(
        "--model",
        help="model directory to serve (default: the org's promoted version, else the cached"
        " pretrained model)",
    )
    p.add_argument("--store", help="experience store file (default: in the cache)")
    p.add_argument("--registry", help="model registry file (default: in the cache)")
    p.add_argument("--shop", help="the org's live shop database (default: in the cache; continues)")
    p.add_argument("--run-dir", help="logs and week.json (default: a new folder in the cache)")
    p.add_argument("--port", type=_port, default=0, help="port of the server (0: a free one)")
    p.add_argument("--server", help="URL of a running `onthejob serve` on --store to use instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the users' choices")
    p.add_argument(
        "--paste-share", type=float, default=0.5, help="chance a user pastes the document"
    )
    p.add_argument("--step-budget", type=int, default=10, help="most shop actions per order")
    p.add_argument(
        "--wrong-thumbs", type=float, default=0.1, help="share of sessions with a wrong thumb"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_work)

    p = sub.add_parser("sleep", help="consolidate a tenant's experience into a candidate, gated")
    _one_line_errors(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="the tenant whose sessions train its own adapter")
    who.add_argument("--org", type=_seed, help="seed of a simulated org: its tenant")
    p.add_argument(
        "--thumbs", choices=("up", "down", "any"), default="up", help="sessions by latest thumb"
    )
    p.add_argument(
        "--require-evaluation", action="store_true", help="only sessions with a written note"
    )
    p.add_argument("--since", help="only sessions started at or after (epoch seconds or ISO date)")
    p.add_argument("--until", help="only sessions started before (epoch seconds or ISO date)")
    p.add_argument("--users", help="only these users' sessions (comma-separated)")
    _add_sleep_flags(p)
    p.add_argument("--store", help="experience store file (default: in the cache)")
    p.add_argument("--registry", help="model registry file (default: in the cache)")
    p.add_argument(
        "--model", help="base model of a tenant with no promoted version (default: pretrained)"
    )
    p.add_argument("--run-dir", help="plan, metrics and the candidate (default: in the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_sleep)

    p = sub.add_parser(
        "weeks", help="weeks of work, each followed by a sleep; what the model keeps"
    )
    _one_line_errors(p)
    p.add_argument("--org", type=_seed, default=1, help="seed of the organisation")
    p.add_argument("--weeks", type=int, default=4, help="weeks of work, each followed by a sleep")
    p.add_argument("--exam", action="store_true", help="then a week with no document pasted")
    _add_sleep_flags(p)
    p.add_argument("--model", help="the model of the first week (default: the pretrained default)")
    p.add_argument("--run-dir", help="a new folder for the world, store, registry and report")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--compare", nargs="+", metavar="DIR", help="plot finished runs side by side instead"
    )
    p.add_argument("--out", default="weeks-compare.png", help="the --compare figure")
    p.set_defaults(func=cmd_weeks)

    p = sub.add_parser("models", help="model versions: list, show, register, promote, rollback")
    _one_line_errors(p)
    models = p.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", help="registry file (default: in the cache)")
    q = models.add_parser("list", parents=[registry], help="a table of the versions")
    q.add_argument("--tenant", help="only this tenant's versions")
    q = models.add_parser("show", parents=[registry], help="one version and its history, as JSON")
    q.add_argument("id", help="version id")
    q = models.add_parser("register", parents=[registry], help="add a candidate version")
    q.add_argument("--tenant", required=True, help="the tenant it serves")
    q.add_argument("--base", required=True, help="Hugging Face base model directory")
    q.add_argument("--adapter", help="PEFT adapter directory (default: the base itself)")
    q.add_argument("--method", default="pretrain", help="what made it: pretrain, grpo, opsd...")
    q.add_argument("--config", help="its training config as a JSON object")
    q.add_argument("--parent", help="the version it was trained from")
    q.add_argument("--id", help="version id (default: TENANT-vN)")
    q = models.add_parser("promote", parents=[registry], help="make a version answer its tenant")
    q.add_argument("id", help="version id")
    q.add_argument("--reason", help="why (kept in the history)")
    q = models.add_parser(
        "rollback", parents=[registry], help="withdraw the promoted version, restore the previous"
    )
    q.add_argument("--tenant", required=True, help="whose promoted version to roll back")
    q.add_argument("--reason", help="why (kept in the history)")
    for q in models.choices.values():
        _one_line_errors(q)
    p.set_defaults(func=cmd_models)
    return parser


def _count(text: str) -> int:
    """argparse type: an integer > 0."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _env_counts(text: str) -> dict[str, int]:
    """ "arith=64,shop=4" -> {"arith": 64, "shop": 4}; "greedy" -> {}."""
    if text.strip() == "greedy":
        return {}
    counts = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        env, _, count = part.partition("=")
        if not count.strip().isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not env=count with a count of 1 or more, e.g. arith=64"
            )
        counts[env.strip()] = int(count)
    return counts


def _replay(text: str) -> int | dict[str, int]:
    """ "48" -> 48 (spread over the guard envs later); "arith=16,shop=64" -> by env;
    "none" -> {}."""
    if text.strip() == "none":
        return {}
    if text.strip().isdigit():
        return int(text)
    return _env_counts(text)


def _replay_of(
    value: int | dict[str, int] | None, guard_envs: tuple[str, ...]
) -> dict[str, int] | None:
    """The SleepConfig.replay of a `--replay` value: a number is spread over the guard envs."""
    from onthejob.sleep.plan import spread

    return spread(guard_envs, value) if isinstance(value, int) else value


def _seed(text: str) -> int:
    """argparse type: an integer >= 0 (a seed: an org, the users' choices)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535, or 0 for a free one."""
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port from 1 to 65535, or 0 for a free one, got {value}"
        )
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make a bad flag of this subcommand a one-line error (argparse prints its usage too)."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:
        # Only a stage that loaded the models package (and so torch) can raise a
        # ModelDirError; looking it up here keeps `onthejob feedback` free of torch.
        hf = sys.modules.get("onthejob.models.hf")
        if hf is not None and isinstance(e, hf.ModelDirError):
            print(f"onthejob: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("onthejob: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
