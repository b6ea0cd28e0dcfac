"""Load and faults: concurrent users lose no acknowledged turn, and neither does a server
killed with SIGKILL mid-load (a real subprocess), which serves again after a restart."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from onthejob.models import build_model, save_model
from onthejob.store import Store
from tests.conftest import TINY
from tests.serve_support import running_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory, tokenizer):
    """A random tiny model with room for 50-turn sessions (what it says does not matter)."""
    path = tmp_path_factory.mktemp("load") / "model"
    save_model(build_model(replace(TINY, max_positions=2048), tokenizer, seed=1), tokenizer, path)
    return path


failures: list[str] = []
"""Error bodies users got (the tests expect none)."""


def converse(url: str, session: str, turns: int, acknowledged: list, stop: threading.Event):
    """One user: each turn sends the whole history plus a new message; records each reply
    the server acknowledged (a 200) as (session, index of the user turn, message, reply)."""
    history: list[dict] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(turns):
            if stop.is_set():
                return
            history.append({"role": "user", "content": f"turn {i} of {session[:6]}"})
            try:
                response = client.post(
                    "/v1/chat/completions",
                    json={"messages": history, "max_tokens": 3, "temperature": 0},
                    headers={"X-Session-Id": session},
                )
            except httpx.HTTPError:
                return  # the server went away: this turn was never acknowledged
            if response.status_code != 200:
                failures.append(response.text)
                return
            reply = response.json()["choices"][0]["message"]["content"]
            history.append({"role": "assistant", "content": reply})
            acknowledged.append((session, 2 * i, history[-2]["content"], reply))


def check_acknowledged(store: Store, acknowledged: list) -> None:
    for session, index, message, reply in acknowledged:
        turns = store.turns(session)
        assert (turns[index].role, turns[index].content) == ("user", message)
        assert (turns[index + 1].role, turns[index + 1].content) == ("assistant", reply)


def test_eight_users_fifty_turns_each_lose_nothing(tmp_path, long_context_model):
    users, turns = 8, 50
    with running_server(tmp_path, long_context_model) as server:
        sessions = [
            httpx.post(f"{server.url}/v1/sessions", json={}).json()["id"] for _ in range(users)
        ]
        acknowledged: list = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=converse, args=(server.url, s, turns, acknowledged, stop))
            for s in sessions
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert len(acknowledged) == users * turns
        with Store(server.store_path) as store:
            check_acknowledged(store, acknowledged)
            assert store.counts()["turns"] == 2 * users * turns


def start_server(home: Path, model: Path) -> tuple[subprocess.Popen, str]:
    args = ["serve", "--port", "0", "--model", str(model), "--store", str(home / "store.sqlite")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "onthejob.cli", *args, "--registry", str(home / "registry.sqlite")],
        cwd=ROOT,
        env={**os.environ, "ONTHEJOB_HOME": str(home), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise AssertionError("the server printed no URL") from None
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if found:
            break
    url = found.group(1)
    while True:
        try:
            httpx.get(f"{url}/health", timeout=5).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def test_sigkill_mid_load_loses_no_acknowledged_turn(tmp_path, long_context_model):
    proc, url = start_server(tmp_path, long_context_model)
    try:
        sessions = [httpx.post(f"{url}/v1/sessions", json={}).json()["id"] for _ in range(4)]
        acknowledged: list = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=converse, args=(url, s, 1000, acknowledged, stop))
            for s in sessions
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert failures == []
    assert len(acknowledged) >= 40
    with Store(tmp_path / "store.sqlite") as store:
        check_acknowledged(store, acknowledged)
        for session in sessions:  # exchanges are whole: a user turn always has its reply
            roles = [t.role for t in store.turns(session)]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
        stored = {
            s: [{"role": t.role, "content": t.content} for t in store.turns(s)] for s in sessions
        }

    proc, url = start_server(tmp_path, long_context_model)  # the same store and registry
    try:
        session = sessions[0]
        messages = [*stored[session], {"role": "user", "content": "after the restart"}]
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": messages, "max_tokens": 3},
            headers={"X-Session-Id": session},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        with Store(tmp_path / "store.sqlite") as store:
            assert store.turns(session)[-2].content == "after the restart"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
