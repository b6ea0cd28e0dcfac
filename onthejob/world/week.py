"""A working week: the live shop, the server and the org's simulated users, run day by day.

Covers: `run_week(config, run_dir, ...)`, which

1. opens (or continues) the org's live supplier shop as its own process
   (`python -m onthejob.world.service`, its state in SQLite, every transition logged into
   the experience store too);
2. makes sure the org's tenant has a promoted model version in the registry (the model
   given, else the one already promoted) and starts `onthejob serve` as its own process
   on the same store, unless a `server_url` of a running server is given;
3. for each day: draws the day's tasks from the org (`Org.tasks`, with the shop's live
   catalogue), lets each simulated user (`onthejob.world.users`) work through theirs in
   sessions, then moves the shop's world clock one day on (`POST /advance`);
4. stops both processes and returns a `WeekReport`: per day, questions answered right
   with and without the document in context, corrections, orders done, thumbs and
   evaluations; in all, what the users sent (`Sent`), to hold against the store.

It also holds `Child`, the one way this package starts a process that prints its URL,
waits for it and stops it (tests and the load benchmark start servers with it too).

Does not cover: what the agent learns from the week (`onthejob sleep`), or evaluating the
model outside the sessions (`onthejob.evals`).

Design decisions:

- The week continues the shop's clock: day d of the shop is day d % 5 of week d // 5, so
  running `onthejob work` again on the same shop is the next week (the org's knowledge
  changes) on the same live, never-reset service. The clock moves after every day,
  including the last, so the next run starts on a fresh day.
- Users work one after another within a day (in the order of `Org.users`), so stock and
  orders, and with greedy replies everything, are the same for the same model.
- The shop's rate limit is real but scaled to the simulation: a simulated day lasts
  seconds, not hours, so the default `ServiceConfig` of a week allows in one rate window
  every action the users' step budgets allow in the whole run (a user acting within
  their budget is never rate-limited by accident); repeated failing actions, throttles
  and bans keep their production settings, so an agent that behaves like a bot is
  throttled or banned for real, and the report counts it.
- Child processes are stopped on every way out (an error, Ctrl-C); on Linux they are also
  asked to die with the process that started them (PR_SET_PDEATHSIG), so a SIGKILLed
  week leaves no server behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx

from onthejob.world.client import ServiceClient
from onthejob.world.org import Org, OrgConfig, make_org
from onthejob.world.service import ServiceConfig
from onthejob.world.supplier import DAYS_PER_WEEK, week_of
from onthejob.world.users import Sent, SessionRecord, SimulatedUser, UsersConfig

URL_PATTERN = re.compile(r"http://127\.0\.0\.1:\d+")


@dataclass(frozen=True)
class WeekConfig:
    """What a week of work is: which org, how many days, how its people and shop behave."""

    org_seed: int = 1
    """Seed of the organisation (held-out orgs are other seeds)."""
    days: int = DAYS_PER_WEEK
    """Working days to run (5 is a week; more runs into the next weeks)."""
    org: OrgConfig = field(default_factory=OrgConfig)
    """Shape of the org: knowledge, users, tasks per day."""
    users: UsersConfig = field(default_factory=UsersConfig)
    """How the simulated users behave."""
    service: ServiceConfig | None = None
    """Costs and limits of the live shop; None: `week_service_config` of this week."""
    startup_timeout_s: float = 180.0
    """Longest to wait for the shop or the server to come up."""

    def __post_init__(self) -> None:
        if isinstance(self.org_seed, bool) or not isinstance(self.org_seed, int):
            raise ValueError(f"org_seed must be an int, got {self.org_seed!r}")
        if not 1 <= self.days <= 365:
            raise ValueError(f"days must be 1 to 365, got {self.days}")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be positive, got {self.startup_timeout_s}")


def week_service_config(config: WeekConfig) -> ServiceConfig:
    """The production ServiceConfig with its rate window widened to the week's budgets."""
    if config.service is not None:
        return config.service
    base = ServiceConfig()
    budget = config.users.step_budget * config.org.orders_per_day * config.days
    return replace(base, max_actions=max(base.max_actions, budget + base.max_actions))


@dataclass
class DayReport:
    """What happened on one day."""

    day: int
    """World-clock day."""
    week: int
    sessions: int = 0
    questions: int = 0
    with_document: int = 0
    """Questions asked with the document holding the answer in the conversation."""
    right_with_document: int = 0
    """Of those, answered right at the first reply."""
    without_document: int = 0
    right_without_document: int = 0
    corrections: int = 0
    """Corrections the users made."""
    right_after_correction: int = 0
    """Questions answered wrong first and right after a correction."""
    stale: int = 0
    """First answers that were right in an earlier week."""
    orders: int = 0
    orders_done: int = 0
    actions: int = 0
    """Shop actions the agent took (tool calls run against the live shop)."""
    refused_orders: int = 0
    """Orders the shop refused (throttled or banned account)."""
    thumbs_up: int = 0
    thumbs_down: int = 0
    evaluations: int = 0
    wrong_thumbs: int = 0
    """Thumbs that said the opposite of how the session went."""

    def add(self, session: SessionRecord) -> None:
        self.sessions += 1
        for task in session.tasks:
            if task.kind == "question":
                self.questions += 1
                if task.with_document:
                    self.with_document += 1
                    self.right_with_document += task.first_success
                else:
                    self.without_document += 1
                    self.right_without_document += task.first_success
                self.corrections += task.corrections
                self.right_after_correction += task.success and not task.first_success
                self.stale += task.stale
            else:
                self.orders += 1
                self.orders_done += task.success
                self.actions += task.actions
                self.refused_orders += bool(task.refused)
        self.thumbs_up += session.thumb == "up"
        self.thumbs_down += session.thumb == "down"
        self.evaluations += session.evaluation is not None
        self.wrong_thumbs += session.thumb != session.honest_thumb


@dataclass
class WeekReport:
    """A week of work: per day, in all, and every session."""

    org_seed: int
    tenant: str
    model: str
    """The model version that answered."""
    first_day: int
    """World-clock day the run started on."""
    days: list[DayReport]
    sent: Sent
    """What the users sent and the server acknowledged, over the whole run."""
    sessions: list[SessionRecord]
    store: str
    """The experience store the sessions and transitions are in."""
    shop: str
    """The live shop's database."""
    wall_s: float = 0.0

    def totals(self) -> DayReport:
        """All days added up (day and week of the first day)."""
        total = DayReport(self.first_day, week_of(self.first_day))
        for day in self.days:
            for f in fields(DayReport):
                if f.name not in ("day", "week"):
                    setattr(total, f.name, getattr(total, f.name) + getattr(day, f.name))
        return total

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["totals"] = asdict(self.totals())
        return record

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)


# ---------------------------------------------------------------------- child processes


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """A child process that prints its base URL on stdout (the shop, `onthejob serve`).

    Output goes to `log`; `start` waits until a URL is printed and GET /health answers.
    """

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 180.0) -> str:
        """Start it; returns its URL once it answers (RuntimeError with its last output if not)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        start = self.log.stat().st_size if self.log.exists() else 0
        self.url = ""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + timeout
        try:
            while not self.url:
                text = self.log.read_bytes()[start:].decode("utf-8", "replace")
                found = URL_PATTERN.search(text)
                if found:
                    self.url = found.group(0)
                    break
                self._check_alive(deadline)
                time.sleep(0.05)
            while True:
                try:
                    if httpx.get(f"{self.url}/health", timeout=5).is_success:
                        return self.url
                except httpx.HTTPError:
                    pass
                self._check_alive(deadline)
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}: {self.tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{self.name} did not come up in time; its output: {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no output)"
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; waits for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, no goodbye (the fault tests' crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def shop_child(org: Org, shop: Path, store: Path | None, config: ServiceConfig, log: Path) -> Child:
    """The org's live supplier shop as a process (`python -m onthejob.world.service`)."""
    argv = [sys.executable, "-m", "onthejob.world.service", "--db", str(shop), "--port", "0"]
    argv += ["--seed", str(org.seed)]
    if store is not None:
        argv += ["--store", str(store)]
    for settings in (asdict(org.config.supplier), asdict(config)):
        for key, value in settings.items():
            argv += ["--set", f"{key}={json.dumps(value)}"]
    return Child("the live shop", argv, log)


def server_child(
    store: Path, registry: Path, tenant: str, log: Path, port: int = 0, max_batch: int = 32
) -> Child:
    """`onthejob serve` as a process, serving `tenant`'s promoted version on `store`."""
    argv = [sys.executable, "-m", "onthejob.cli", "serve", "--port", str(port)]
    argv += ["--store", str(store), "--registry", str(registry), "--tenant", tenant]
    argv += ["--max-batch", str(max_batch)]
    return Child("onthejob serve", argv, log)


def ensure_promoted(registry_path: Path, tenant: str, model_dir: Path | None) -> str:
    """The tenant's version to serve: `model_dir` (registered and promoted unless it already
    is the promoted one), else the promoted one; ValueError when there is neither."""
    from onthejob.registry import Registry

    registry = Registry(registry_path)
    promoted = registry.promoted(tenant)
    if model_dir is None:
        if promoted is None:
            raise ValueError(
                f"tenant {tenant!r} has no promoted model in {registry_path}; pass a model directory"
            )
        return promoted.id
    wanted = Path(model_dir).resolve()
    if promoted is not None and promoted.adapter is None and Path(promoted.base) == wanted:
        return promoted.id
    version = registry.register(tenant, wanted, method="base", actor="onthejob work")
    registry.promote(version.id, reason="served for a week of work", actor="onthejob work")
    return version.id


# ---------------------------------------------------------------------- the week


Progress = Callable[[int, int, list[SessionRecord]], None]
"""progress(user-days done, user-days in all, the sessions of the user-day just done)."""


def check_answers(url: str) -> None:
    """Return if an onthejob server answers at url; RuntimeError saying what happened if not."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as e:
        raise RuntimeError(
            f"no server answers at {url} ({e}); start one with `onthejob serve`"
        ) from e
    if not response.is_success:
        raise RuntimeError(f"the server at {url} answered /health with HTTP {response.status_code}")


def run_week(
    config: WeekConfig,
    run_dir: Path,
    model_dir: Path | None = None,
    *,
    store: Path | None = None,
    registry: Path | None = None,
    shop: Path | None = None,
    server_url: str | None = None,
    server_port: int = 0,
    progress: Progress | None = None,
) -> WeekReport:
    """Run `config.days` working days of the org; everything is stopped on the way out.

    run_dir: logs and `week.json`; store, registry and shop default to files in it.
    model_dir: the model to serve (registered and promoted for the org's tenant); None: the
    tenant's promoted version. server_url: a running server on `store` to use instead of
    starting one (then `registry` and `model_dir` are not used); server_port: the port of
    the server started here (0: a free one).
    """
    started = time.monotonic()
    if server_url is not None:
        check_answers(server_url)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = store or run_dir / "store.sqlite"
    shop = shop or run_dir / "shop.sqlite"
    org = make_org(config.org_seed, config.org)
    with ExitStack() as stack:
        shop_url = stack.enter_context(
            shop_child(org, shop, store, week_service_config(config), run_dir / "shop.log")
        ).start(config.startup_timeout_s)
        if server_url is None:
            registry = registry or run_dir / "registry.sqlite"
            ensure_promoted(registry, org.tenant, model_dir)
            server = stack.enter_context(
                server_child(store, registry, org.tenant, run_dir / "server.log", server_port)
            )
            server_url = server.start(config.startup_timeout_s)
        service = stack.enter_context(ServiceClient(shop_url))
        users = [SimulatedUser(org, user, server_url, service, config.users) for user in org.users]
        for user in users:
            stack.callback(user.close)
        first_day = service.health()["day"]
        days: list[DayReport] = []
        sessions: list[SessionRecord] = []
        total = config.days * len(users)
        for offset in range(config.days):
            day = first_day + offset
            report = DayReport(day, week_of(day))
            catalogue = service.state()["catalogue"]
            tasks = org.tasks(week_of(day), day % DAYS_PER_WEEK, catalogue=catalogue)
            for number, user in enumerate(users):
                mine = [t for t in tasks if t.user == user.user.name]
                done = user.work_day(day, mine)
                for session in done:
                    report.add(session)
                sessions += done
                if progress is not None:
                    progress(offset * len(users) + number + 1, total, done)
            days.append(report)
            service.advance(1)
        sent = Sent()
        for user in users:
            sent.add(user.sent)
        model = next((s.model for s in sessions if s.model), "")
    week = WeekReport(
        org_seed=config.org_seed,
        tenant=org.tenant,
        model=model,
        first_day=first_day,
        days=days,
        sent=sent,
        sessions=sessions,
        store=str(store),
        shop=str(shop),
        wall_s=time.monotonic() - started,
    )
    week.write(run_dir / "week.json")
    return week
