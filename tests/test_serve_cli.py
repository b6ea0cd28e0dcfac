"""Smoke tests of `onthejob serve` (a real subprocess on a free port) and `onthejob feedback`."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from onthejob.cli import main
from onthejob.registry import Registry
from onthejob.store import Store
from tests.serve_support import GREETING, taught_model_dir

ROOT = Path(__file__).resolve().parents[1]


def onthejob(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ONTHEJOB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "onthejob.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory, tokenizer, tiny_model):
    """`onthejob serve --port 0 --model DIR --tenant acme`, its URL and files."""
    model_dir = taught_model_dir(tmp_path_factory, tokenizer, tiny_model)
    home = tmp_path_factory.mktemp("home")
    store, registry = home / "store.sqlite", home / "registry.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onthejob.cli", "serve", "--port", "0", "--model", str(model_dir)]
        + ["--tenant", "acme", "--store", str(store), "--registry", str(registry)],
        cwd=ROOT,
        env={**os.environ, "ONTHEJOB_HOME": str(home), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        printed, url = [], None
        deadline = time.monotonic() + 120
        while url is None:
            try:
                printed.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no 'serving' line; printed: {printed}") from None
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", printed[-1])
            url = found.group(1) if found else None
        assert "registered" in printed[0] and "promoted for tenant acme" in printed[0]
        while True:  # listening is printed just before uvicorn starts: wait for it
            try:
                if httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url, home, store, registry
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_registers_the_model_and_answers(served):
    url, _, store_path, registry_path = served
    promoted = Registry(registry_path).promoted("acme")
    assert promoted is not None and promoted.id == "acme-v1"
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello"}], "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == GREETING
    session = reply.headers["x-session-id"]
    with Store(store_path) as store:
        assert store.session(session).tenant == "acme"  # the server's tenant by default
        assert [t.content for t in store.turns(session)] == ["hello", GREETING]
    assert "<title>onthejob</title>" in httpx.get(url).text


def test_feedback_command_posts_to_the_server(served, capsys):
    url, home, store_path, _ = served
    session = httpx.post(f"{url}/v1/sessions", json={"user": "erin"}).json()["id"]
    given = onthejob(
        "feedback", session, "--up", "--note", "quick and right", "--url", url, home=home
    )
    assert given.returncode == 0, given.stderr
    assert f"recorded for session {session}" in given.stdout
    with Store(store_path) as store:
        (feedback,) = store.feedback(session)
    assert (feedback.thumb, feedback.evaluation, feedback.author) == (1, "quick and right", "erin")

    assert main(["feedback", "nope", "--down", "--url", url]) == 1  # in-process: faster
    err = capsys.readouterr().err
    assert err.startswith("onthejob feedback: unknown session 'nope'")
    assert len(err.strip().splitlines()) == 1


def test_feedback_and_serve_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """In-process: nothing starts serving, each error is one line on stderr."""
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))  # no pretrained model here
    assert main(["feedback", "s1", "--url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.strip() == (
        "onthejob feedback: give --up, --down or --note TEXT (or several)"
    )
    assert main(["feedback", "s1", "--up", "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot reach the server" in err
    args = ["--store", str(tmp_path / "s.sqlite"), "--registry", str(tmp_path / "r.sqlite")]
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "run `onthejob pretrain` first" in err
    assert main(["serve", *args, "--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "absent") in err
