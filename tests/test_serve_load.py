"""Load and faults: `onthejob serve` as a real process under 8 concurrent clients.

Each client is the official `openai` client in its own thread, keeping its own
conversations and recording every reply the server acknowledged. Afterwards the store
must hold every acknowledged turn, in order, word for word: under load (8 clients x 50
turns), and after the server is SIGKILLed in the middle of the load and started again on
the same store (which must then serve again, continuing the same sessions).

The model is the conftest's tiny random model with a 1024-position context; replies are
sampled (temperature 1) so that they differ and a mixed-up turn would show, and kept to a
few tokens so the whole run takes seconds.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import openai
import pytest

from onthejob.models import build_model, save_model
from onthejob.store import Store
from onthejob.world.week import ensure_promoted, server_child
from tests.conftest import TINY

TENANT = "load"
CLIENTS = 8
TURNS_PER_SESSION = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("load-model") / "model"
    save_model(build_model(replace(TINY, max_positions=1024), tokenizer, seed=0), tokenizer, path)
    return path


@dataclass
class Client:
    """One simulated client: its conversations as acknowledged by the server."""

    number: int
    url: str
    acknowledged: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """session id -> [(role, content)] of every acknowledged exchange, in order."""
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def turns(self) -> int:
        return sum(len(turns) for turns in self.acknowledged.values()) // 2

    def run(self, turns: int) -> None:
        api = openai.OpenAI(base_url=f"{self.url}/v1", api_key="load", max_retries=0)
        http = httpx.Client(base_url=self.url, timeout=60)
        try:
            session, history = "", []
            for turn in range(turns):
                if self.stop.is_set():
                    return
                if turn % TURNS_PER_SESSION == 0:
                    response = http.post("/v1/sessions", json={"tenant": TENANT, "user": "u"})
                    response.raise_for_status()
                    session, history = response.json()["id"], []
                    self.acknowledged[session] = []
                question = f"client {self.number} turn {turn}: how are you?"
                messages = [
                    *({"role": r, "content": c} for r, c in history),
                    {"role": "user", "content": question},
                ]
                reply = api.chat.completions.create(
                    model="default",
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=3,
                    temperature=1.0,
                    extra_headers={"X-Session-Id": session},
                )
                content = reply.choices[0].message.content or ""
                history += [("user", question), ("assistant", content)]
                self.acknowledged[session] = list(history)
        except BaseException as error:  # the fault test expects connection errors
            self.error = error
        finally:
            api.close()
            http.close()


def run_clients(clients: list[Client], turns: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=c.run, args=(turns,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    return threads


def stored(store: Store, session: str) -> list[tuple[str, str]]:
    return [(t.role, t.content) for t in store.turns(session)]


def start_server(workdir: Path, model_dir: Path):
    ensure_promoted(workdir / "registry.sqlite", TENANT, model_dir)
    server = server_child(
        workdir / "store.sqlite", workdir / "registry.sqlite", TENANT, workdir / "server.log"
    )
    server.start(timeout=120)
    return server


def test_eight_clients_fifty_turns_each_lose_nothing(tmp_path, model_dir):
    with start_server(tmp_path, model_dir) as server:
        clients = [Client(n, server.url) for n in range(CLIENTS)]
        started = time.monotonic()
        for thread in run_clients(clients, 50):
            thread.join(timeout=300)
        elapsed = time.monotonic() - started
        assert [c.error for c in clients] == [None] * CLIENTS
        assert [c.turns() for c in clients] == [50] * CLIENTS
    with Store(tmp_path / "store.sqlite") as store:
        for client in clients:
            for session, turns in client.acknowledged.items():
                assert stored(store, session) == turns
        assert store.counts()["turns"] == 2 * 50 * CLIENTS
        assert store.counts()["sessions"] == CLIENTS * 50 // TURNS_PER_SESSION
    print(f"{50 * CLIENTS / elapsed:.0f} turns/s with {CLIENTS} clients")


def test_a_sigkilled_server_loses_no_acknowledged_turn_and_serves_again(tmp_path, model_dir):
    server = start_server(tmp_path, model_dir)
    try:
        clients = [Client(n, server.url) for n in range(CLIENTS)]
        threads = run_clients(clients, 10_000)
        deadline = time.monotonic() + 120
        while sum(c.turns() for c in clients) < 80:  # well into the load
            assert time.monotonic() < deadline, "the load did not get going"
            assert all(c.error is None for c in clients), [c.error for c in clients]
            time.sleep(0.02)
        server.kill()
        for thread in threads:
            thread.join(timeout=60)
        assert all(c.error is not None for c in clients)  # every client was cut off mid-load
        acknowledged = sum(c.turns() for c in clients)
    finally:
        server.stop()

    conn = sqlite3.connect(tmp_path / "store.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    with Store(tmp_path / "store.sqlite") as store:
        total = 0
        for client in clients:
            for session, turns in client.acknowledged.items():
                kept = stored(store, session)
                # every acknowledged exchange is there; at most the one in flight beyond it,
                # and exchanges are whole: a user turn always has its reply
                assert kept[: len(turns)] == turns
                assert len(kept) - len(turns) in (0, 2)
                assert [role for role, _ in kept] == ["user", "assistant"] * (len(kept) // 2)
                total += len(turns) // 2
        assert total == acknowledged >= 80

    with start_server(tmp_path, model_dir) as again:
        api = openai.OpenAI(base_url=f"{again.url}/v1", api_key="load", max_retries=0)
        with Store(tmp_path / "store.sqlite") as store:
            for client in clients:
                session = list(client.acknowledged)[-1]
                history = [{"role": r, "content": c} for r, c in stored(store, session)]
                reply = api.chat.completions.create(
                    model="default",
                    messages=[*history, {"role": "user", "content": "still there?"}],  # type: ignore[list-item]
                    max_tokens=3,
                    extra_headers={"X-Session-Id": session},
                )
                assert stored(store, session)[-2:] == [
                    ("user", "still there?"),
                    ("assistant", reply.choices[0].message.content or ""),
                ]
        api.close()
