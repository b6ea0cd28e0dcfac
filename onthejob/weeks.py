"""Weeks: work and sleep alternating at one org, and what the served model keeps.

Covers: `WeeksConfig` and `run_weeks(config, run_dir)`. Each week is five working days at
the org (`world.week.run_week`; the live shop, the store and the registry carry on from
the week before, so the org's knowledge changes under the agent), then one sleep of the
org's tenant on that week's sessions (`sleep.sleep`, whose gate decides whether the
candidate serves next week). After every sleep the tenant's promoted model, the one that
serves next, is asked every earlier sleep's held-out targets with no context:

- retention: of the targets whose item is unchanged since the week they were taught, the
  share answered right;
- update: of the targets whose item changed since, the share answered with the item's
  current value (updated) and the share with the old one (stale);
- the guard suite of that model (the gate's own measurement of it in that sleep).

With `exam` a last week follows in which nobody pastes a document: the agent's right
first answers at work without the documents, against the first week's. Everything goes
to run_dir/weeks.json, and the retention and stale curves to run_dir/weeks.png.

Not covered: how a week or a sleep runs (`onthejob.world`, `onthejob.sleep`), dreaming.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from onthejob import knowledge
from onthejob.evals import answer_all
from onthejob.registry import Registry
from onthejob.sleep import SelectionPolicy, SleepConfig, SleepError, sleep
from onthejob.sleep.plan import key_of_question, student_messages
from onthejob.sleep.run import load_version
from onthejob.store import Store
from onthejob.train.pretrain import default_model_dir
from onthejob.world import DAYS_PER_WEEK, make_org
from onthejob.world.org import Org, OrgConfig, item_key
from onthejob.world.users import UsersConfig
from onthejob.world.week import WeekConfig, run_week


@dataclass(frozen=True)
class WeeksConfig:
    """Which org, how many weeks, and how each sleep runs."""

    org_seed: int = 1
    """Seed of the organisation."""
    weeks: int = 4
    """Weeks of work, each followed by a sleep."""
    org: OrgConfig = field(default_factory=OrgConfig)
    """Shape of the org: knowledge, users, tasks per day."""
    sleep: SleepConfig = field(default_factory=SleepConfig)
    """Every sleep's method, budget and gate."""
    users: UsersConfig = field(default_factory=UsersConfig)
    """How the simulated users behave in the working weeks."""
    exam: bool = False
    """After the last sleep, a week in which no document is pasted."""

    def __post_init__(self) -> None:
        if not 1 <= self.weeks <= 52:
            raise ValueError(f"weeks must be 1 to 52, got {self.weeks}")


@dataclass
class Taught:
    """The held-out targets of one sleep, as they were true in the week it slept on."""

    week: int
    questions: list[tuple[str, str]]
    """(question, answer then)."""


@dataclass
class AfterSleep:
    """What the served model knows after the sleep at the end of `week`."""

    week: int
    status: str
    """The candidate's status (promoted, rejected...), or "no sleep" with `reason`."""
    reason: str
    retention: dict[int, tuple[int, int]]
    """Week taught -> (right, asked) over its unchanged targets."""
    updated: tuple[int, int]
    """(answered with the new value, asked) over targets whose item changed since taught."""
    stale: int
    """Of those, answered with the old value."""
    guard: dict[str, float]
    recall: float | None
    """The sleep's own no-context recall of its targets (the served model's)."""
    teacher: float | None
    """The parent's with-context accuracy on them (what the teacher could give)."""


@dataclass
class WeeksReport:
    config: dict[str, Any]
    weeks: list[dict[str, Any]]
    """Per week: its work totals and what the served model knew after its sleep."""
    exam: dict[str, Any] | None
    wall_s: float


def run_weeks(
    config: WeeksConfig,
    run_dir: Path,
    model_dir: Path | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> WeeksReport:
    """Alternate weeks of work and sleeps (see the module docstring); write weeks.json/png."""
    started = time.monotonic()
    model_dir = model_dir or default_model_dir()
    if not model_dir.is_dir():
        raise ValueError(
            f"no model at {model_dir}; run `onthejob pretrain` first (or pass --model)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    store_path, registry_path = run_dir / "store.sqlite", run_dir / "registry.sqlite"
    shop = run_dir / "shop.sqlite"
    org = make_org(config.org_seed, config.org)
    registry = Registry(registry_path)
    taught: list[Taught] = []
    weeks: list[dict[str, Any]] = []
    for number in range(config.weeks):
        since = time.time()
        work = run_week(
            WeekConfig(config.org_seed, DAYS_PER_WEEK, config.org, config.users),
            run_dir / f"week-{number}",
            model_dir if number == 0 else None,
            store=store_path,
            registry=registry_path,
            shop=shop,
        )
        week = work.days[0].week
        totals = work.totals()
        log(
            f"week {week}: {totals.sessions} sessions, right with the document"
            f" {totals.right_with_document}/{totals.with_document}, without"
            f" {totals.right_without_document}/{totals.without_document}"
        )
        policy = SelectionPolicy(tenant=org.tenant, thumbs="any", since=since)
        try:
            with Store(store_path) as store:
                result = sleep(
                    store,
                    registry,
                    policy,
                    config.sleep,
                    run_dir / f"sleep-{number}",
                    model_dir,
                    show_progress=False,
                )
        except SleepError as e:  # nothing to consolidate this week: say so and go on
            after = measure(org, registry, taught, week, "no sleep", str(e), None, None, {})
        else:
            taught.append(
                Taught(week, [(q.text, str(q.answer)) for q in result.plan.targets if q.answer])
            )
            promoted = result.version.status == "promoted"
            guard = result.guard_after if promoted else result.guard_before
            after = measure(
                org,
                registry,
                taught,
                week,
                result.version.status,
                result.decision.reason,
                result.recall_after if promoted else result.recall_before,
                result.teacher_accuracy,
                guard,
            )
        log(f"after the sleep of week {week}: {after.status}; {_retention_line(after)}")
        weeks.append({"week": week, "work": asdict(totals), "after_sleep": asdict(after)})
        _write(run_dir, config, weeks, None, started)

    exam = None
    if config.exam:
        no_documents = replace(config.users, paste_share=0.0)
        work = run_week(
            WeekConfig(config.org_seed, DAYS_PER_WEEK, config.org, no_documents),
            run_dir / "exam",
            store=store_path,
            registry=registry_path,
            shop=shop,
        )
        exam = asdict(work.totals())
        log(
            f"exam week {work.days[0].week} (no documents): right"
            f" {exam['right_without_document']}/{exam['without_document']}"
        )
    report = _write(run_dir, config, weeks, exam, started)
    plot(report, run_dir / "weeks.png")
    return report


def measure(
    org: Org,
    registry: Registry,
    taught: list[Taught],
    week: int,
    status: str,
    reason: str,
    recall: float | None,
    teacher: float | None,
    guard: dict[str, float],
) -> AfterSleep:
    """Ask the tenant's promoted model every taught target with no context (see the
    module docstring for what counts as retained, updated and stale)."""
    after = AfterSleep(week, status, reason, {}, (0, 0), 0, guard, recall, teacher)
    served = registry.promoted(org.tenant)
    if served is None or not taught:
        return after
    now = {item_key(item): item for item in org.knowledge_at(week).items}
    asked = [(t.week, text, answer) for t in taught for text, answer in t.questions]
    model, tokenizer = load_version(served)
    replies = answer_all(model, tokenizer, [list(student_messages(q)) for _, q, _ in asked], 16)
    retention: dict[int, list[int]] = {}
    updated = changed = stale = 0
    for (when, text, then), reply in zip(asked, replies, strict=True):
        key = key_of_question(text)
        item = now.get(key) if key is not None else None
        current = knowledge.answer_to(text, item) if item is not None else None
        if current is None or knowledge.is_correct(current, then):
            counts = retention.setdefault(when, [0, 0])
            counts[0] += knowledge.is_correct(reply, then)
            counts[1] += 1
        else:
            changed += 1
            updated += knowledge.is_correct(reply, current)
            stale += knowledge.is_correct(reply, then)
    after.retention = {w: (right, n) for w, (right, n) in sorted(retention.items())}
    after.updated, after.stale = (updated, changed), stale
    return after


def _retention_line(after: AfterSleep) -> str:
    parts = [f"week {w} {right}/{n}" for w, (right, n) in after.retention.items()]
    updated, changed = after.updated
    return (
        f"retained {', '.join(parts) or '-'}; changed items: {updated}/{changed} updated,"
        f" {after.stale} stale"
    )


def _write(
    run_dir: Path,
    config: WeeksConfig,
    weeks: list[dict[str, Any]],
    exam: dict[str, Any] | None,
    started: float,
) -> WeeksReport:
    report = WeeksReport(asdict(config), weeks, exam, time.monotonic() - started)
    tmp = run_dir / "weeks.json.tmp"
    tmp.write_text(json.dumps(asdict(report), indent=2))
    tmp.replace(run_dir / "weeks.json")
    return report


def plot(report: WeeksReport, path: Path) -> None:
    """Retention of each week's knowledge over the later sleeps, and the stale share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    after = [w["after_sleep"] for w in report.weeks]
    taught_weeks = sorted({k for a in after for k in a["retention"]})
    for taught in taught_weeks:
        xs, ys = [], []
        for a in after:
            right_n = a["retention"].get(taught)
            if right_n and right_n[1]:
                xs.append(a["week"])
                ys.append(right_n[0] / right_n[1])
        left.plot(xs, ys, marker="o", label=f"taught in week {taught}")
    left.set(
        xlabel="after the sleep of week", ylabel="no-context recall", ylim=(0, 1), title="retention"
    )
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=8)
    xs = [a["week"] for a in after if a["updated"][1]]
    right.plot(
        xs, [a["stale"] / a["updated"][1] for a in after if a["updated"][1]], "o-", label="stale"
    )
    right.plot(
        xs,
        [a["updated"][0] / a["updated"][1] for a in after if a["updated"][1]],
        "o-",
        label="updated",
    )
    right.set(xlabel="after the sleep of week", ylabel="share of changed items", ylim=(0, 1))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_title("items changed since taught")
    right.legend(fontsize=8)
    method = report.config["sleep"]["method"]
    fig.suptitle(f"org {report.config['org_seed']}, sleep method {method}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(run_dirs: list[Path], path: Path) -> list[dict[str, Any]]:
    """One figure over several `run_weeks` folders (e.g. one per sleep method): recall of
    every unchanged taught item, and the stale share of the changed ones, after each sleep.
    Returns one summary row per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for run_dir in run_dirs:
        file = run_dir / "weeks.json"
        if not file.is_file():
            raise ValueError(f"no weeks.json in {run_dir}; give folders of `onthejob weeks` runs")
        report = json.loads(file.read_text())
        label = f"{report['config']['sleep']['method']} ({run_dir.name})"
        after = [w["after_sleep"] for w in report["weeks"]]
        weeks = [a["week"] for a in after]
        retained = [
            sum(r for r, _ in a["retention"].values())
            / max(1, sum(n for _, n in a["retention"].values()))
            for a in after
        ]
        stale = [a["stale"] / a["updated"][1] if a["updated"][1] else None for a in after]
        left.plot(weeks, retained, "o-", label=label)
        right.plot(
            [w for w, s in zip(weeks, stale, strict=True) if s is not None],
            [s for s in stale if s is not None],
            "o-",
            label=label,
        )
        exam = report.get("exam") or {}
        rows.append(
            {
                "run": str(run_dir),
                "method": report["config"]["sleep"]["method"],
                "promoted": sum(a["status"] == "promoted" for a in after),
                "retained": retained,
                "stale": stale,
                "exam": (exam.get("right_without_document"), exam.get("without_document")),
            }
        )
    left.set(xlabel="after the sleep of week", ylabel="share right", ylim=(0, 1))
    left.set_title("no-context recall of everything taught (unchanged items)")
    right.set(xlabel="after the sleep of week", ylabel="share of changed items", ylim=(0, 1))
    right.set_title("stale answers (the value before the change)")
    for axis in (left, right):
        axis.legend(fontsize=8)
        axis.title.set_fontsize(10)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows
