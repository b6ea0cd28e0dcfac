"""Tenant isolation, measured: does tenant B's model recall what tenant A's users taught?

Not a speed benchmark: a measurement of the Sleep issue's isolation bar ("facts planted in
tenant A's sessions are recalled by tenant B's model no better than chance").

One deployment serves two orgs: one experience store and one model registry, each org
its own live shop. Both orgs work a week (`world.week.run_week`), then each tenant
sleeps on its own sessions (`sleep.sleep`, OPSD by default; the gate decides as usual).
A's held-out targets (questions about what A's users pasted and corrected, in phrasings
never used in training) are then asked with no context of:

- A's candidate (what A's sleep learned; the gate's verdict does not matter here),
- B's candidate (whose adapter was trained on B's sessions only),
- the base model both started from,

and compared with uniform chance over each question's answer pool (`evals.chance_of`).
The same is done the other way round (B's targets). The leak is B's recall of A's targets
minus the base model's: with isolation it is zero up to noise, whatever the model learned.

    ONTHEJOB_HOME=.cache .venv/bin/python benchmarks/tenant_isolation.py [--orgs 1,2]
        [--method opsd] [--tokens 24000] [--lr LR] [--guard-n 100] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from side_by_side import prepare_process

from onthejob import evals, knowledge
from onthejob.models import load_model
from onthejob.registry import Registry
from onthejob.sleep import SelectionPolicy, SleepConfig, SleepResult, sleep
from onthejob.sleep.gate import no_context_recall
from onthejob.sleep.plan import SleepQuestion, key_of_question
from onthejob.sleep.run import load_version
from onthejob.store import Store
from onthejob.train.pretrain import default_model_dir
from onthejob.world import make_org
from onthejob.world.org import Org, item_key
from onthejob.world.week import WeekConfig, run_week


def chance(org: Org, week: int, targets: list[SleepQuestion]) -> float:
    """Mean uniform-guess chance of the targets (their items as the org knows them)."""
    items = {item_key(item): item for item in org.knowledge_at(week).items}
    odds = []
    for target in targets:
        key = key_of_question(target.text)
        item = items.get(key) if key is not None else None
        odds.append(evals.chance_of(item) if item is not None else 0.0)
    return statistics.mean(odds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", default="1,2", help="seeds of tenant A and tenant B")
    parser.add_argument("--method", default="opsd", help="sleep method of both tenants")
    parser.add_argument("--tokens", type=int, default=24000, help="token budget of each sleep")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of each sleep")
    parser.add_argument("--guard-n", type=int, default=100, help="guard tasks per env")
    parser.add_argument("--model", default=None, help="the base model (default: pretrained)")
    parser.add_argument("--run-dir", default=None, help="keep the world here (default: temp)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    prepare_process(args.threads)
    seeds = [int(s) for s in args.orgs.split(",")]
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise SystemExit("--orgs takes two different org seeds, e.g. 1,2")
    base_dir = Path(args.model) if args.model else default_model_dir()
    if not base_dir.is_dir():
        raise SystemExit(f"no model at {base_dir}; run `onthejob pretrain` first or pass --model")
    orgs = [make_org(seed) for seed in seeds]
    config = SleepConfig(method=args.method, guard_n=args.guard_n)
    train = {"token_budget": args.tokens, "steps": 1000}
    if args.lr is not None:
        train["lr"] = args.lr
    config = replace(config, opsd=replace(config.opsd, **train), sft=replace(config.sft, **train))

    with tempfile.TemporaryDirectory(prefix="isolation-") as scratch:
        root = Path(args.run_dir) if args.run_dir else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        store, registry_path = root / "store.sqlite", root / "registry.sqlite"
        weeks = []
        for org in orgs:
            report = run_week(
                WeekConfig(org_seed=org.seed),
                root / f"week-{org.tenant}",
                base_dir,
                store=store,
                registry=registry_path,
                shop=root / f"shop-{org.tenant}.sqlite",
            )
            weeks.append(report.days[0].week)
            print(f"{org.tenant}: a week of work, {report.totals().sessions} sessions")
        registry = Registry(registry_path)
        results: list[SleepResult] = []
        for org in orgs:
            with Store(store) as opened:
                result = sleep(
                    opened,
                    registry,
                    SelectionPolicy(tenant=org.tenant, thumbs="any"),
                    config,
                    root / f"sleep-{org.tenant}",
                    show_progress=False,
                )
            results.append(result)
            print(
                f"{org.tenant}: sleep {args.method} on {result.sessions} sessions,"
                f" {len(result.plan.targets)} targets, candidate {result.version.status}"
                f" ({result.decision.reason})"
            )

        # each tenant's trained candidate, whatever the gate said (the gate judges forgetting,
        # not isolation)
        models = {org.tenant: load_version(r.version) for org, r in zip(orgs, results, strict=True)}
        models["base"] = load_model(base_dir)
        print(
            f"\n{'targets of':18s}{'own model':>11s}{'other model':>13s}{'base':>7s}"
            f"{'chance':>9s}{'leak (other - base)':>21s}"
        )
        for me, other, result, week in zip(orgs, orgs[::-1], results, weeks, strict=True):
            targets = [q for q in result.plan.targets if q.answer is not None]
            recall = {
                name: no_context_recall(*models[name], targets)
                for name in (me.tenant, other.tenant, "base")
            }
            print(
                f"{me.tenant:18s}{recall[me.tenant]:11.3f}{recall[other.tenant]:13.3f}"
                f"{recall['base']:7.3f}{chance(me, week, targets):9.4f}"
                f"{recall[other.tenant] - recall['base']:+21.3f}   (n={len(targets)})"
            )
        answered_alike = sum(
            knowledge.is_correct(str(a.answer), str(b.answer))
            for a in results[0].plan.targets
            for b in results[1].plan.targets
            if a.text == b.text
        )
        print(f"questions asked of both tenants with the same answer: {answered_alike}")


if __name__ == "__main__":
    main()
