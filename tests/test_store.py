"""The experience store: round trips, queries, bad input that leaves nothing behind,
migrations, concurrent writers, and durability across a SIGKILL (real subprocesses)."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from onthejob import store as store_module
from onthejob.store import (
    SCHEMA_VERSION,
    NewTurn,
    NotFound,
    Store,
    StoreError,
    schema_version,
)

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """1000.0, 1001.0, 1002.0, ... one second per timestamp taken."""

    def __init__(self) -> None:
        self.ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self.ticks))


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.sqlite", clock=FakeClock()) as s:
        yield s


def test_a_session_round_trips_with_tool_calls_and_observations(store):
    session = store.start_session("acme", "alice", meta={"day": 1, "task": "restock"})
    assert session.tenant == "acme" and session.user == "alice" and session.ended is None
    added = store.add_turns(
        session.id,
        [
            NewTurn("system", "you work at acme"),
            NewTurn("user", "how many blue shirts are left?", token_ids=[5, 6, 7]),
            NewTurn(
                "assistant",
                "",
                token_ids=[9, 10],
                model_version="v1",
                tool_calls=(("call_0", "stock", '{"item": "blue shirt"}'),),
            ),
            NewTurn("tool", "blue shirt: 4 left", tool_call_id="call_0"),
        ],
    )
    assert [t.index for t in added] == [0, 1, 2, 3]
    more = store.add_turns(session.id, [NewTurn("assistant", "4 are left", model_version="v1")])
    assert more[0].index == 4  # indexes continue across calls

    turns = store.turns(session.id)
    assert [t.content for t in turns] == [
        "you work at acme",
        "how many blue shirts are left?",
        "",
        "blue shirt: 4 left",
        "4 are left",
    ]
    assert turns[1].token_ids == [5, 6, 7] and turns[0].token_ids is None
    (call,) = turns[2].tool_calls
    assert (call.id, call.name, call.arguments) == ("call_0", "stock", '{"item": "blue shirt"}')
    assert call.turn_id == turns[2].id
    assert call.observation == "blue shirt: 4 left" and call.observed == turns[3].at
    assert turns[3].tool_call_id == "call_0"
    assert turns[4].model_version == "v1"

    reopened = Store(store.path)
    assert reopened.session(session.id) == session
    assert reopened.turns(session.id) == turns
    reopened.close()

    ended = store.end_session(session.id)
    assert ended.ended is not None and ended.ended > ended.started
    assert store.session(session.id) == ended
    assert store.counts() == {
        "tenants": 1,
        "users": 1,
        "sessions": 1,
        "turns": 5,
        "tool_calls": 1,
        "feedback": 0,
        "transitions": 0,
    }


def test_timestamps_come_from_the_clock(store):
    tenant = store.ensure_tenant("acme")
    assert tenant.created == 1000.0
    assert store.ensure_tenant("acme") == tenant  # a second call changes nothing
    user = store.ensure_user("acme", "bob")
    assert (user.tenant, user.id, user.created) == ("acme", "bob", 1002.0)
    assert store.ensure_user("acme", "bob") == user
    session = store.start_session("acme", "bob")
    assert session.started == 1004.0
    (turn,) = store.add_turns(session.id, [GOOD])
    assert turn.at == 1005.0
    assert store.end_session(session.id).ended == 1006.0
    assert store.add_feedback(session.id, 1, None, "bob").at == 1007.0
    assert store.log_transition("shop", "a", "look", "page").at == 1008.0


def test_sessions_filter_by_tenant_user_time_and_feedback(store):
    a1 = store.start_session("acme", "alice")
    a2 = store.start_session("acme", "bob")
    b1 = store.start_session("globex", "carol")
    a3 = store.start_session("acme")  # anonymous
    assert store.sessions() == [a1, a2, b1, a3]  # by start time
    assert store.sessions(tenant="acme") == [a1, a2, a3]
    assert store.sessions(user="bob") == [a2]
    assert store.sessions(since=a2.started, until=a3.started) == [a2, b1]
    assert store.sessions(tenant="acme", limit=2) == [a1, a2]

    store.add_feedback(a1.id, +1, None, "alice")
    store.add_feedback(a2.id, +1, None, "bob")
    store.add_feedback(a2.id, -1, "it ordered the wrong size", "bob")  # changed their mind
    store.add_feedback(b1.id, None, "fine, slow", "carol")  # an evaluation only
    assert store.sessions(thumb=+1) == [a1]  # the latest thumb counts
    assert store.sessions(thumb=-1) == [a2]
    assert store.sessions(has_feedback=True) == [a1, a2, b1]
    assert store.sessions(has_feedback=False) == [a3]
    assert store.sessions(tenant="acme", has_feedback=True, thumb=-1) == [a2]

    assert [f.thumb for f in store.feedback(a2.id)] == [1, -1]
    assert [f.session for f in store.feedback(tenant="globex")] == [b1.id]
    assert len(store.feedback()) == 4
    (note,) = store.feedback(b1.id)
    assert (note.thumb, note.evaluation, note.author) == (None, "fine, slow", "carol")


def test_transitions_are_read_by_service_account_and_since_id(store):
    t1 = store.log_transition("shop", "acct-1", "search shirt", "3 results", cost=0.5)
    t2 = store.log_transition(
        "shop", "acct-2", "buy p1", "bought", cost=24.0, session="s1", state={"stock": 3}
    )
    store.log_transition("ops", "acct-1", "status", "green")
    t3 = store.log_transition("shop", "acct-1", "buy p1", "out of stock", state={"stock": 0})
    assert [t.id for t in store.transitions("shop")] == [t1.id, t2.id, t3.id]
    assert store.transitions("shop", since_id=t1.id) == [t2, t3]
    assert store.transitions("shop", account="acct-1") == [t1, t3]
    assert t2.state == {"stock": 3} and t2.session == "s1" and t2.cost == 24.0
    assert t1.state is None
    assert store.transitions("nothing") == []


def test_a_durable_file_wal_and_full_sync(store):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert schema_version(store.path) == SCHEMA_VERSION


# -- bad input -------------------------------------------------------------------------

GOOD = NewTurn("user", "a good turn that must not be written when its batch is bad")

BAD_BATCHES = {
    "unknown role": [GOOD, NewTurn("robot", "beep")],
    "float token ids": [GOOD, NewTurn("user", "x", token_ids=[1, 2.0])],  # type: ignore[list-item]
    "bool token ids": [GOOD, NewTurn("user", "x", token_ids=[True])],
    "negative token ids": [GOOD, NewTurn("user", "x", token_ids=[-1])],
    "token ids not a list": [GOOD, NewTurn("user", "x", token_ids="1 2")],  # type: ignore[arg-type]
    "bytes content": [GOOD, NewTurn("user", b"x")],  # type: ignore[arg-type]
    "lone surrogate": [GOOD, NewTurn("user", "caf\udce9")],
    "surrogate in tool arguments": [
        GOOD,
        NewTurn("assistant", "", tool_calls=(("c9", "stock", '{"q": "\ud800"}'),)),
    ],
    "tool call on a user turn": [GOOD, NewTurn("user", "x", tool_calls=(("c9", "s", "{}"),))],
    "malformed tool call": [GOOD, NewTurn("assistant", "", tool_calls=(("c9", "s"),))],  # type: ignore[arg-type]
    "duplicate call id in the batch": [
        NewTurn("assistant", "", tool_calls=(("c9", "a", "{}"), ("c9", "b", "{}"))),
    ],
    "call id used earlier in the session": [
        GOOD,
        NewTurn("assistant", "", tool_calls=(("c0", "stock", "{}"),)),
    ],
    "answer to an unknown call": [GOOD, NewTurn("tool", "4 left", tool_call_id="nope")],
    "second answer to a call": [GOOD, NewTurn("tool", "again", tool_call_id="c0")],
    "tool_call_id on a user turn": [GOOD, NewTurn("user", "x", tool_call_id="c0")],
    "not a NewTurn": [GOOD, {"role": "user", "content": "x"}],  # type: ignore[list-item]
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_a_bad_batch_raises_and_writes_nothing(store, case):
    session = store.start_session("acme", "alice")
    store.add_turns(
        session.id,
        [
            NewTurn("assistant", "", tool_calls=(("c0", "stock", "{}"),)),
            NewTurn("tool", "4 left", tool_call_id="c0"),
        ],
    )
    before = store.counts()
    turns_before = store.turns(session.id)
    with pytest.raises(StoreError) as excinfo:
        store.add_turns(session.id, BAD_BATCHES[case])
    assert "\n" not in str(excinfo.value)
    assert store.counts() == before
    assert store.turns(session.id) == turns_before
    # The session still works, and its indexes continue without a gap.
    (next_turn,) = store.add_turns(session.id, [GOOD])
    assert next_turn.index == 2


def test_turns_for_an_unknown_or_ended_session_are_refused(store):
    with pytest.raises(NotFound, match="unknown session"):
        store.add_turns("no-such-session", [GOOD])
    with pytest.raises(NotFound):
        store.turns("no-such-session")
    with pytest.raises(NotFound):
        store.session("no-such-session")
    session = store.start_session("acme")
    store.end_session(session.id)
    with pytest.raises(StoreError, match="has ended"):
        store.add_turns(session.id, [GOOD])
    with pytest.raises(StoreError, match="already ended"):
        store.end_session(session.id)
    assert store.counts()["turns"] == 0


def test_bad_sessions_and_ids_are_refused(store):
    store.start_session("acme", session_id="fixed")
    before = store.counts()
    with pytest.raises(StoreError, match="already exists"):
        store.start_session("acme", session_id="fixed")
    for bad in ("", "two\nlines", "x" * 201, "caf\udce9", 7):
        with pytest.raises(StoreError):
            store.start_session(bad)  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            store.start_session("acme", user=bad)  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            store.start_session("acme", session_id=bad)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="JSON"):
        store.start_session("acme", meta={"f": object()})
    with pytest.raises(StoreError, match="JSON"):
        store.start_session("acme", meta={"x": float("nan")})
    with pytest.raises(StoreError):
        store.start_session("acme", meta={"x": "\ud800"})
    with pytest.raises(StoreError, match="dict"):
        store.start_session("acme", meta=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.session("caf\udce9")
    with pytest.raises(StoreError):
        store.sessions(tenant="caf\udce9")
    assert store.counts() == before


def test_bad_feedback_is_refused(store):
    session = store.start_session("acme", "alice")
    before = store.counts()
    for thumb in (0, 2, True, "up", 1.5):
        with pytest.raises(StoreError, match="thumb"):
            store.add_feedback(session.id, thumb, None, "alice")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="thumb .* evaluation"):
        store.add_feedback(session.id, None, None, "alice")
    with pytest.raises(StoreError, match="Unicode"):
        store.add_feedback(session.id, 1, "great\udcff", "alice")
    with pytest.raises(StoreError):
        store.add_feedback(session.id, 1, None, "")
    with pytest.raises(NotFound):
        store.add_feedback("nope", 1, None, "alice")
    with pytest.raises(NotFound):
        store.feedback("nope")
    with pytest.raises(StoreError, match="thumb"):
        store.sessions(thumb=0)
    assert store.counts() == before


def test_bad_transitions_are_refused(store):
    for kwargs in (
        {"cost": "free"},
        {"cost": float("nan")},
        {"cost": True},
        {"state": [1]},
        {"state": {"f": object()}},
        {"session": ""},
    ):
        with pytest.raises(StoreError):
            store.log_transition("shop", "acct", "buy", "ok", **kwargs)
    with pytest.raises(StoreError):
        store.log_transition("shop", "acct", "buy \udc80", "ok")
    with pytest.raises(StoreError):
        store.log_transition("", "acct", "buy", "ok")
    assert store.counts()["transitions"] == 0


def test_a_closed_store_says_so(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.counts()


# -- schema and migrations -------------------------------------------------------------


def test_an_empty_file_at_schema_0_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    sqlite3.connect(path).close()  # a valid, empty SQLite file: user_version 0
    assert schema_version(path) == 0
    with Store(path) as s:
        assert s.counts() == dict.fromkeys(store_module.TABLES, 0)
    assert schema_version(path) == SCHEMA_VERSION


def test_an_older_file_is_migrated_and_keeps_its_data(tmp_path, monkeypatch):
    path = tmp_path / "store.sqlite"
    with Store(path) as s:
        session = s.start_session("acme", "alice")
        s.add_turns(session.id, [GOOD])
    # A newer release adds a migration; the file written by this one is brought up to it.
    monkeypatch.setattr(
        store_module,
        "MIGRATIONS",
        [
            *store_module.MIGRATIONS,
            "ALTER TABLE sessions ADD COLUMN title TEXT; UPDATE sessions SET title = 'untitled';",
        ],
    )
    with Store(path) as s:
        assert schema_version(path) == SCHEMA_VERSION + 1
        assert s.turns(session.id)[0].content == GOOD.content
        title = s._conn().execute("SELECT title FROM sessions").fetchone()[0]
        assert title == "untitled"
    with Store(path) as s:  # opening again migrates nothing
        assert schema_version(path) == SCHEMA_VERSION + 1


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "store.sqlite"
    Store(path).close()
    monkeypatch.setattr(
        store_module,
        "MIGRATIONS",
        [
            *store_module.MIGRATIONS,
            "CREATE TABLE extra (x INTEGER); ALTER TABLE no_such_table ADD COLUMN y TEXT;",
        ],
    )
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path)
    assert schema_version(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "extra" not in tables


def test_a_file_from_newer_code_is_refused(tmp_path):
    path = tmp_path / "store.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this code"):
        Store(path)
    assert schema_version(path) == SCHEMA_VERSION + 1


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store(path)
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path)


def test_statements_split_on_complete_statements_only():
    script = "CREATE TABLE t (x TEXT DEFAULT 'a;b'); INSERT INTO t VALUES ('c;d');\n"
    assert store_module._statements(script) == [
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');",
        "INSERT INTO t VALUES ('c;d');",
    ]


# -- concurrency -----------------------------------------------------------------------


def test_concurrent_threads_lose_no_turn(store):
    shared = store.start_session("acme", "everyone")
    own = [store.start_session("acme", f"user-{i}") for i in range(8)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(25):
                store.add_turns(
                    own[i].id, [NewTurn("user", f"{i}-{j}"), NewTurn("assistant", "ok")]
                )
                store.add_turns(shared.id, [NewTurn("user", f"{i}-{j}")])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["turns"] == 8 * 25 * 3
    for i, session in enumerate(own):
        turns = store.turns(session.id)
        assert [t.index for t in turns] == list(range(50))
        assert [t.content for t in turns[::2]] == [f"{i}-{j}" for j in range(25)]
    shared_turns = store.turns(shared.id)
    assert [t.index for t in shared_turns] == list(range(200))
    assert sorted(t.content for t in shared_turns) == sorted(
        f"{i}-{j}" for i in range(8) for j in range(25)
    )
    # Connections of finished threads are closed when the next thread connects.
    last = threading.Thread(target=store.counts)
    last.start()
    last.join()
    assert len(store._connections) <= 3


WRITER = """
import sys
from onthejob.store import NewTurn, Store
store = Store(sys.argv[1], timeout=60)
session = sys.argv[2]
for j in range(int(sys.argv[3])):
    store.add_turns(session, [NewTurn("user", f"{sys.argv[4]}-{j}")])
    store.log_transition("shop", sys.argv[4], "look", "page")
"""


def test_concurrent_processes_share_one_file(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as s:
        session = s.start_session("acme")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), session.id, "40", f"p{k}"], cwd=ROOT
        )
        for k in range(3)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with Store(path) as s:
        turns = s.turns(session.id)
        assert [t.index for t in turns] == list(range(120))
        assert s.counts()["transitions"] == 120


# -- durability ------------------------------------------------------------------------

KILL_SELF = """
import os, signal, sys
from onthejob.store import NewTurn, Store
store = Store(sys.argv[1])
session = store.start_session("acme", "alice", session_id="s1")
store.add_turns("s1", [NewTurn("user", "hello", token_ids=[1, 2, 3])])
store.add_turns("s1", [NewTurn("assistant", "hi", model_version="v1")])
store.add_feedback("s1", 1, "good", "alice")
os.kill(os.getpid(), signal.SIGKILL)  # no close, no commit hooks, no atexit
"""

ACKNOWLEDGE = """
import sys
from onthejob.store import NewTurn, Store
store = Store(sys.argv[1])
session = store.start_session("acme", session_id="s1")
for j in range(100000):
    (turn,) = store.add_turns("s1", [NewTurn("user", f"turn {j}")])
    print(turn.index, flush=True)
"""


def test_turns_survive_a_sigkill_right_after_add_turns_returns(tmp_path):
    path = tmp_path / "store.sqlite"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SELF, str(path)], cwd=ROOT, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with Store(path) as s:
        turns = s.turns("s1")
        assert [(t.role, t.content) for t in turns] == [("user", "hello"), ("assistant", "hi")]
        assert turns[0].token_ids == [1, 2, 3]
        assert [(f.thumb, f.evaluation) for f in s.feedback("s1")] == [(1, "good")]


def test_no_acknowledged_turn_is_lost_when_the_writer_is_killed_mid_load(tmp_path):
    path = tmp_path / "store.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", ACKNOWLEDGE, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged = [int(proc.stdout.readline()) for _ in range(30)]
    proc.kill()  # SIGKILL while it is writing more
    proc.wait(timeout=60)
    assert acknowledged == list(range(30))
    with Store(path) as s:
        turns = s.turns("s1")
    assert len(turns) >= 30
    assert [t.content for t in turns] == [f"turn {j}" for j in range(len(turns))]
