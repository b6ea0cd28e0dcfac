"""world.users and world.week: a short week through the real server, held against the store.

The model is the conftest's tiny random model with a 1024-position context, saved as a
model directory: its replies are wrong, which exercises corrections, failed orders, tool
calls, throttles and thumbs down; what is checked is that everything the simulated users
sent and got acknowledged is in the store, and that the report says what the store says.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from onthejob.cli import main
from onthejob.prompts import AGENT_SYSTEM, KNOWLEDGE_SYSTEM
from onthejob.serve.chat import TOOLS_HEADER
from onthejob.store import Store
from onthejob.world import OrgConfig, ServiceConfig
from onthejob.world.users import TaskRecord, UsersConfig, evaluation_text, judge
from onthejob.world.week import WeekConfig, run_week, week_service_config
from tests.serve_support import running_server

ROOT = Path(__file__).resolve().parents[1]
SMALL_ORG = OrgConfig(items=16, users=2, questions_per_day=2, orders_per_day=1)


@pytest.fixture(scope="module")
def model_dir(served_model_dir):
    return served_model_dir


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (this process excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_a_short_week_is_in_the_store_exactly_as_the_users_sent_it(tmp_path, model_dir):
    config = WeekConfig(
        org_seed=5, days=2, org=SMALL_ORG, users=UsersConfig(step_budget=3, wrong_thumb_share=0.3)
    )
    seen: list[tuple[int, int]] = []
    report = run_week(
        config, tmp_path / "run", model_dir, progress=lambda d, n, s: seen.append((d, n))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # one call per user-day
    assert processes_mentioning(str(tmp_path)) == []  # the shop and the server are gone
    sent = report.sent
    assert sent.tool_calls > 0 and sent.observations > 0 and sent.actions > 0
    assert report.totals().corrections > 0  # the random model is wrong, users correct it

    with Store(report.store) as store:
        counts = store.counts()
        assert counts["sessions"] == sent.sessions == sent.ended == len(report.sessions)
        assert counts["turns"] == sent.turns
        assert counts["tool_calls"] == sent.tool_calls
        assert counts["feedback"] == sent.feedback == len(report.sessions)
        assert counts["transitions"] == sent.actions

        observed, roles = 0, {"system": 0, "user": 0, "assistant": 0, "tool": 0}
        tool_turns_by_session: dict[str, list[str]] = {}
        for record in report.sessions:
            session = store.session(record.id)
            assert session.tenant == report.tenant and session.user == record.user
            assert session.ended is not None and session.meta["day"] == record.day
            turns = store.turns(record.id)
            assert session.meta["kind"] == record.kind == record.tasks[0].kind
            if turns and record.kind == "question":  # the reading format: no tools listed
                assert turns[0].content == KNOWLEDGE_SYSTEM
            elif turns:
                assert turns[0].content.startswith(AGENT_SYSTEM["shop"] + "\n" + TOOLS_HEADER)
            for turn in turns:
                roles[turn.role] += 1
                observed += sum(call.observation is not None for call in turn.tool_calls)
            assert all(t.model_version == report.model for t in turns if t.role == "assistant")
            tool_turns_by_session[record.id] = [t.content for t in turns if t.role == "tool"]
            (feedback,) = store.feedback(record.id)
            assert feedback.thumb == (1 if record.thumb == "up" else -1)
            assert feedback.evaluation == record.evaluation
            assert feedback.author == f"simulated:{record.user}"
        assert observed == sent.observations
        assert roles == {
            "system": sent.system_messages,
            "user": sent.user_messages,
            "assistant": sent.replies,
            "tool": sent.observations,
        }

        # every shop action was logged under its serving session, and what the shop logged
        # is what the agent was shown (a last observation may be unsent if the chat got full)
        transitions = store.transitions("supplier")
        logged: dict[str, list[str]] = {}
        for transition in transitions:
            assert transition.session in tool_turns_by_session
            logged.setdefault(transition.session, []).append(transition.observation)
        for session_id, shown in tool_turns_by_session.items():
            assert logged.get(session_id, [])[: len(shown)] == shown

        # the report's numbers are the store's
        for day in report.days:
            ids = {s.id for s in report.sessions if s.day == day.day}
            thumbs = [f.thumb for f in store.feedback(tenant=report.tenant) if f.session in ids]
            assert (thumbs.count(1), thumbs.count(-1)) == (day.thumbs_up, day.thumbs_down)
            assert day.sessions == len(ids)
        assert report.totals().wrong_thumbs == sum(
            s.thumb != s.honest_thumb for s in report.sessions
        )
        assert report.totals().actions == sent.actions

    written = json.loads((tmp_path / "run" / "week.json").read_text())
    assert written["sent"] == asdict(sent)
    assert written["totals"]["sessions"] == len(report.sessions)
    assert [d["day"] for d in written["days"]] == [0, 1]

    # the next run continues the same live shop on the next day, with the same version
    again = run_week(
        replace(config, days=1),
        tmp_path / "run2",
        model_dir,
        store=tmp_path / "run" / "store.sqlite",
        registry=tmp_path / "run" / "registry.sqlite",
        shop=tmp_path / "run" / "shop.sqlite",
    )
    assert again.first_day == 2 and again.model == report.model
    with Store(report.store) as store:
        assert store.counts()["sessions"] == sent.sessions + again.sent.sessions
    assert processes_mentioning(str(tmp_path)) == []


def test_the_same_week_twice_is_the_same_week(tmp_path, model_dir):
    """Seeded users and greedy replies: a fresh run of the same config repeats everything."""
    org = replace(SMALL_ORG, users=1)
    config = WeekConfig(org_seed=9, days=1, org=org, users=UsersConfig(step_budget=2))

    def outline(report):
        return (
            [
                (s.user, s.day, s.kind, s.thumb, s.evaluation, [asdict(t) for t in s.tasks])
                for s in report.sessions
            ],
            [asdict(d) for d in report.days],
            asdict(report.sent),
        )

    first = run_week(config, tmp_path / "a", model_dir)
    second = run_week(config, tmp_path / "b", model_dir)
    assert outline(first) == outline(second)
    assert {s.id for s in first.sessions}.isdisjoint(s.id for s in second.sessions)


def test_a_failed_start_leaves_no_process_behind(tmp_path):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(Exception, match="empty"):
        run_week(WeekConfig(org_seed=1, days=1, org=SMALL_ORG), tmp_path / "run", not_a_model)
    assert processes_mentioning(str(tmp_path)) == []


def test_judging_a_session():
    right = TaskRecord("question", "who owns billing?", True, True, expected="priya")
    corrected = TaskRecord(
        "question", "who owns search?", True, False, corrections=1, replies=["omar", "yuki"]
    )
    corrected.expected = "yuki"
    failed_order = TaskRecord("order", "buy 1 red mug.", False, False, expected="no order")
    quiet = UsersConfig(wrong_thumb_share=0.0, vague_share=0.0, silent_share=0.0)
    rng = random.Random(0)
    assert judge([right, failed_order], quiet, rng)[:2] == ("up", "up")  # 1 of 2 done
    assert judge([corrected, failed_order], quiet, rng)[:2] == ("down", "down")  # 0.25
    thumb, honest, text = judge([right, corrected, failed_order], quiet, rng)
    assert (thumb, honest) == ("up", "up")  # (1 + 0.5 + 0) / 3 = 0.5
    assert text == evaluation_text([right, corrected, failed_order])
    assert text.splitlines() == [
        "2 of 3 tasks done.",
        "right: who owns billing?",
        "wrong: who owns search? said omar, it is yuki; right after my correction.",
        "order failed (no order): buy 1 red mug.",
    ]
    always_wrong = replace(quiet, wrong_thumb_share=1.0)
    assert judge([right], always_wrong, rng)[:2] == ("down", "up")
    silent = replace(quiet, silent_share=1.0)
    assert judge([right], silent, rng)[2] is None
    # seeded: the same draws give the same feedback
    noisy = UsersConfig(wrong_thumb_share=0.5, vague_share=0.3, silent_share=0.3)
    first = [judge([right, failed_order], noisy, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    draws = [judge([right], noisy, random.Random(seed)) for seed in range(200)]
    flipped = sum(thumb != honest for thumb, honest, _ in draws) / len(draws)
    assert 0.35 < flipped < 0.65
    assert 0.2 < sum(text is None for _, _, text in draws) / len(draws) < 0.4


def test_configs_check_their_fields():
    with pytest.raises(ValueError, match="paste_share"):
        UsersConfig(paste_share=1.5)
    with pytest.raises(ValueError, match="vague_share \\+ silent_share"):
        UsersConfig(vague_share=0.6, silent_share=0.6)
    with pytest.raises(ValueError, match="step_budget"):
        UsersConfig(step_budget=0)
    with pytest.raises(ValueError, match="days"):
        WeekConfig(days=0)


def test_the_week_keeps_the_shop_throttle_real_but_out_of_the_users_way():
    config = WeekConfig(days=5, users=UsersConfig(step_budget=10))
    service = week_service_config(config)
    production = ServiceConfig()
    # every action the users' budgets allow over the run fits in one rate window
    assert service.max_actions >= 10 * config.org.orders_per_day * 5
    # everything that punishes bot-like behaviour is as in production
    assert replace(service, max_actions=production.max_actions) == production
    given = ServiceConfig(max_actions=5)
    assert week_service_config(replace(config, service=given)) == given


def run_cli(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ONTHEJOB_HOME": str(home), "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "onthejob.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_work_runs_a_day_and_prints_the_table(tmp_path, model_dir):
    result = run_cli(
        "work", "--org", "4", "--days", "1", "--model", str(model_dir), "--quiet", home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "work at" in result.stdout and "with doc" in result.stdout and "up/down" in result.stdout
    (report_path,) = (tmp_path / "runs").glob("work-*/week.json")
    report = json.loads(report_path.read_text())
    assert report["first_day"] == 0 and len(report["days"]) == 1
    with Store(tmp_path / "store.sqlite") as store:
        assert store.counts()["sessions"] == report["sent"]["sessions"] > 0
        assert store.counts()["feedback"] == report["sent"]["feedback"]
    assert (tmp_path / "world" / report["tenant"] / "shop.sqlite").is_file()
    assert processes_mentioning(str(tmp_path)) == []


def _sigint_default() -> None:
    """In the child before exec: Ctrl-C's default, which Python turns into KeyboardInterrupt.
    A suite started in the background by a shell without job control inherits SIGINT
    ignored, and Python keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_work_stops_everything_on_ctrl_c(tmp_path, model_dir):
    env = {**os.environ, "ONTHEJOB_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "onthejob.cli", "work", "--org", "4", "--days", "3", "--quiet",
         "--model", str(model_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_default,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob("work-*/server.log")):  # the server is starting
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "onthejob: interrupted"
    deadline = time.monotonic() + 10
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []


def test_work_without_a_pretrained_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))
    assert main(["work", "--org", "1", "--days", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.strip().endswith("run `onthejob pretrain` first")
    assert main(["work", "--model", str(tmp_path / "absent")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_work_against_a_server_that_does_not_answer_is_a_one_line_error(
    tmp_path, monkeypatch, capsys
):
    """--server is checked before the shop starts: no process, nothing written in the run."""
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    url = f"http://127.0.0.1:{port}"
    assert main(["work", "--org", "1", "--server", url, "--run-dir", str(run_dir), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"onthejob work: no server answers at {url} (")
    assert err.strip().endswith("start one with `onthejob serve`")
    assert list(run_dir.iterdir()) == []


def test_work_against_a_server_without_the_orgs_model_is_a_one_line_error(
    tmp_path, model_dir, monkeypatch, capsys
):
    """The server answers, but the org's tenant has no promoted version: the server's own
    reason, in one line, and where the sessions so far are."""
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))
    with running_server(tmp_path / "server", model_dir) as server:  # promotes tenant "default"
        argv = ["work", "--org", "1", "--days", "1", "--server", server.url, "--quiet"]
        argv += ["--store", str(server.store_path), "--run-dir", str(tmp_path / "run")]
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("onthejob work: a request failed (Error code: 404 - tenant ")
    assert "has no promoted model version" in err
    assert f"the sessions recorded so far are in {server.store_path}" in err
