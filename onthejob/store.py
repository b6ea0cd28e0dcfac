"""The experience store: everything that happened at work, in one SQLite file.

Covers: tenants (organizations) and their users; sessions; turns with their full text,
token ids and the model version that produced them; tool calls and the observations
that answered them; feedback (a thumb and/or a written evaluation, with author and
time); and the transitions of the live, non-resettable service (what an account did and
what it saw), which dreaming learns a world model from. Queries the later stages need:
sessions by tenant, time and feedback; a session's turns; every transition of a service.

Not covered: model versions (`onthejob.registry`), the HTTP API (`onthejob.serve`), what
to learn from a session (`onthejob.sleep`), and size limits on input (the server's job).

Design decisions:

- SQLite in WAL mode with `synchronous=FULL`: a write is on disk when its transaction
  commits, so `add_turns` returning means the turns survive a SIGKILL or power loss. WAL
  lets readers run while one writer commits.
- One connection per thread (the server calls from a thread pool; a sqlite3 connection
  must not be used by two threads at once). Every write is one `BEGIN IMMEDIATE`
  transaction: it takes the write lock up front, so concurrent writers, in this process or
  another one (the server and the live service may share the file), wait up to `timeout`
  seconds instead of failing on a lock upgrade, and nothing is ever half-written.
- Versioned schema: `MIGRATIONS` is a list of SQL scripts applied in order inside one
  transaction; the version is SQLite's `PRAGMA user_version`. A file written by newer
  code is refused with a clear error rather than misread.
- Input is checked before anything is written: every string must be encodable as UTF-8
  (a lone surrogate is a `StoreError`, not a crash inside sqlite), token ids are
  non-negative ints, roles are known. Ids of tenants, users and sessions are printable,
  non-empty and at most `MAX_ID_LENGTH` characters.
- A session's thumb is its latest feedback with a thumb: a user who changes their mind
  counts once, with their last word.
- Tool call ids are unique within a session, not globally (models number their calls
  per conversation).
- `transitions.session` is plain text, not a foreign key: the live service may log into
  its own file, where the serving sessions do not exist.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
"""Roles a turn may have (the OpenAI chat roles)."""
MAX_ID_LENGTH = 200
"""Longest tenant, user, session or tool-call id accepted."""

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL
    );
    CREATE TABLE users (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        id TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        user TEXT,
        started REAL NOT NULL,
        ended REAL,
        meta TEXT NOT NULL DEFAULT '{}',
        FOREIGN KEY (tenant, user) REFERENCES users(tenant, id)
    );
    CREATE INDEX sessions_by_start ON sessions(started);
    CREATE INDEX sessions_by_tenant ON sessions(tenant, started);
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL REFERENCES sessions(id),
        idx INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        content TEXT NOT NULL,
        token_ids TEXT,
        model_version TEXT,
        at REAL NOT NULL,
        tool_call_id TEXT,
        UNIQUE (session, idx)
    );
    CREATE TABLE tool_calls (
        session TEXT NOT NULL REFERENCES sessions(id),
        id TEXT NOT NULL,
        turn_id INTEGER NOT NULL REFERENCES turns(id),
        name TEXT NOT NULL,
        arguments TEXT NOT NULL,
        observation TEXT,
        observed REAL,
        PRIMARY KEY (session, id)
    );
    CREATE INDEX tool_calls_by_turn ON tool_calls(turn_id);
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL REFERENCES sessions(id),
        thumb INTEGER CHECK (thumb IN (1, -1)),
        evaluation TEXT,
        author TEXT NOT NULL,
        at REAL NOT NULL,
        CHECK (thumb IS NOT NULL OR evaluation IS NOT NULL)
    );
    CREATE INDEX feedback_by_session ON feedback(session, at);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        account TEXT NOT NULL,
        action TEXT NOT NULL,
        observation TEXT NOT NULL,
        cost REAL NOT NULL,
        at REAL NOT NULL,
        session TEXT,
        state TEXT
    );
    CREATE INDEX transitions_by_service ON transitions(service, id);
    """,
]
"""SQL scripts, applied in order; after script i the file is at schema version i + 1."""
SCHEMA_VERSION: int = len(MIGRATIONS)
"""The schema version this code writes (PRAGMA user_version of an up-to-date file)."""

TABLES = ("tenants", "users", "sessions", "turns", "tool_calls", "feedback", "transitions")


class StoreError(Exception):
    """Something about the store or its input is wrong; the message says what to do."""


class NotFound(StoreError):
    """An unknown session, tenant, user or tool call."""


@dataclass(frozen=True)
class Tenant:
    """An organization; its experience trains only its own models."""

    id: str
    """Name, e.g. "acme"."""
    created: float
    """When it was first seen (seconds since the epoch)."""


@dataclass(frozen=True)
class User:
    """A person (or simulated user) of one tenant."""

    id: str
    """Name, unique within the tenant."""
    tenant: str
    """The tenant this user belongs to."""
    created: float
    """When the user was first seen."""


@dataclass(frozen=True)
class Session:
    """One conversation of a user with the agent."""

    id: str
    """Session id (uuid4 hex unless the caller chose one)."""
    tenant: str
    """The tenant it belongs to."""
    user: str | None
    """The user, or None for an anonymous session."""
    started: float
    """When it started."""
    ended: float | None
    """When it ended, or None while it is open."""
    meta: dict[str, Any]
    """Free JSON-serializable data (client, task id, day of the week...)."""


@dataclass(frozen=True)
class ToolCall:
    """A tool call the agent made in an assistant turn, and what the tool answered."""

    id: str
    """Call id, unique within the session (e.g. "call_0")."""
    turn_id: int
    """The assistant turn that made the call."""
    name: str
    """Tool name."""
    arguments: str
    """Arguments as the model wrote them (JSON text, not checked: record what happened)."""
    observation: str | None
    """The tool's answer, once a "tool" turn answered this call."""
    observed: float | None
    """When the observation arrived."""


@dataclass(frozen=True)
class NewTurn:
    """A turn to append to a session (what `add_turns` takes)."""

    role: str
    """One of ROLES."""
    content: str
    """Full text of the message."""
    token_ids: list[int] | None = None
    """Token ids exactly as sampled or fed (token-in, token-out), if known."""
    model_version: str | None = None
    """Registry id of the model that produced an assistant turn."""
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    """Calls an assistant turn makes: (call id, name, arguments JSON)."""
    tool_call_id: str | None = None
    """For role "tool": the call this turn answers (fills that call's observation)."""


@dataclass(frozen=True)
class Turn:
    """A stored turn."""

    id: int
    """Row id, unique in the store."""
    session: str
    """The session it belongs to."""
    index: int
    """Position in the session: 0, 1, 2, ..."""
    role: str
    """One of ROLES."""
    content: str
    """Full text."""
    token_ids: list[int] | None
    """Token ids, if they were given."""
    model_version: str | None
    """Model that produced it, if given."""
    at: float
    """When it was stored."""
    tool_calls: tuple[ToolCall, ...]
    """Calls made in this turn (assistant turns)."""
    tool_call_id: str | None
    """The call this "tool" turn answers."""


@dataclass(frozen=True)
class Feedback:
    """A thumb and/or a written evaluation of a session."""

    id: int
    """Row id."""
    session: str
    """The session judged."""
    thumb: int | None
    """+1 (up), -1 (down) or None (an evaluation only)."""
    evaluation: str | None
    """Free-text evaluation, or None (a thumb only)."""
    author: str
    """Who gave it (a user id, "simulated:alice", ...)."""
    at: float
    """When it was given."""


@dataclass(frozen=True)
class Transition:
    """One action of one account on the live service, and what it observed."""

    id: int
    """Row id; increases with time, never reused (read new ones with since_id)."""
    service: str
    """The service, e.g. "supplier-shop"."""
    account: str
    """The account that acted."""
    action: str
    """The action as sent."""
    observation: str
    """What the service answered."""
    cost: float
    """What the action cost."""
    at: float
    """When it happened."""
    session: str | None
    """The serving session it belongs to, if known (not checked: may live in another file)."""
    state: dict[str, Any] | None
    """Hidden service state after the action, for evaluation only (never shown to agents)."""


def default_store_path() -> Path:
    """Where `onthejob serve` keeps its store by default: onthejob_home()/store.sqlite."""
    from onthejob.train.pretrain import onthejob_home  # lazily: it imports torch

    return onthejob_home() / "store.sqlite"


class Store:
    """The experience store in one SQLite file; safe to share between threads and processes."""

    def __init__(
        self,
        path: str | Path,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        """Open or create the store at `path` and bring its schema up to date.

        clock: where timestamps come from (tests pass a fake one).
        timeout: seconds a write waits for another writer before giving up.
        """
        self.path = Path(path)
        self.clock = clock
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        if self.path.is_dir():
            raise StoreError(f"store path is a directory, not a file: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            migrate(self._conn(), self.path, MIGRATIONS)
        except BaseException:
            self.close()
            raise

    # -- connections and transactions ------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = connect(self.path, self.timeout)
        with self._lock:
            # Connections of threads that have ended are closed here, not leaked.
            alive = []
            for thread, other in self._connections:
                if thread.is_alive():
                    alive.append((thread, other))
                else:
                    other.close()
            self._connections = [*alive, (threading.current_thread(), conn)]
        self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed (and on disk), or none of it."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreError(f"store {self.path} is busy ({e}); try again") from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"store {self.path}: {e}") from e
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one consistent snapshot."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        except sqlite3.Error as e:
            raise StoreError(f"store {self.path}: {e}") from e
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for _, conn in self._connections:
                conn.close()
            self._connections = []

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tenants, users, sessions ------------------------------------------------------

    def ensure_tenant(self, tenant: str) -> Tenant:
        """The tenant, created if it does not exist yet."""
        _check_id("tenant", tenant)
        with self._write() as conn:
            return self._ensure_tenant(conn, tenant, self.clock())

    def ensure_user(self, tenant: str, user: str) -> User:
        """The user of this tenant, created (with the tenant) if needed."""
        _check_id("tenant", tenant)
        _check_id("user", user)
        with self._write() as conn:
            now = self.clock()
            self._ensure_tenant(conn, tenant, now)
            return self._ensure_user(conn, tenant, user, now)

    def _ensure_tenant(self, conn: sqlite3.Connection, tenant: str, now: float) -> Tenant:
        conn.execute("INSERT OR IGNORE INTO tenants (id, created) VALUES (?, ?)", (tenant, now))
        (created,) = conn.execute("SELECT created FROM tenants WHERE id = ?", (tenant,)).fetchone()
        return Tenant(tenant, created)

    def _ensure_user(self, conn: sqlite3.Connection, tenant: str, user: str, now: float) -> User:
        conn.execute(
            "INSERT OR IGNORE INTO users (tenant, id, created) VALUES (?, ?, ?)",
            (tenant, user, now),
        )
        (created,) = conn.execute(
            "SELECT created FROM users WHERE tenant = ? AND id = ?", (tenant, user)
        ).fetchone()
        return User(user, tenant, created)

    def start_session(
        self,
        tenant: str,
        user: str | None = None,
        meta: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Open a session (creating its tenant and user as needed); a taken id is an error."""
        _check_id("tenant", tenant)
        if user is not None:
            _check_id("user", user)
        if session_id is None:
            session_id = uuid.uuid4().hex
        _check_id("session id", session_id)
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise StoreError(f"session meta must be a JSON object (a dict), got {_kind(meta)}")
        meta_json = _to_json("session meta", meta)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
                raise StoreError(f"session {session_id!r} already exists; choose another id")
            started = self.clock()
            self._ensure_tenant(conn, tenant, started)
            if user is not None:
                self._ensure_user(conn, tenant, user, started)
            conn.execute(
                "INSERT INTO sessions (id, tenant, user, started, meta) VALUES (?, ?, ?, ?, ?)",
                (session_id, tenant, user, started, meta_json),
            )
        return Session(session_id, tenant, user, started, None, json.loads(meta_json))

    def end_session(self, session_id: str) -> Session:
        """Close an open session; ending one twice is an error."""
        with self._write() as conn:
            session = _session(conn, session_id)
            if session.ended is not None:
                raise StoreError(f"session {session_id!r} has already ended")
            ended = self.clock()
            conn.execute("UPDATE sessions SET ended = ? WHERE id = ?", (ended, session_id))
        return Session(
            session.id, session.tenant, session.user, session.started, ended, session.meta
        )

    def session(self, session_id: str) -> Session:
        """The session with this id; NotFound if there is none."""
        with self._read() as conn:
            return _session(conn, session_id)

    def sessions(
        self,
        tenant: str | None = None,
        since: float | None = None,
        until: float | None = None,
        thumb: int | None = None,
        has_feedback: bool | None = None,
        user: str | None = None,
        limit: int | None = None,
    ) -> list[Session]:
        """Sessions ordered by start time, filtered by every argument that is not None.

        since <= started < until. thumb: the session's latest thumb equals it.
        has_feedback: the session has (True) or has not (False) any feedback.
        limit: at most this many, the earliest first.
        """
        where: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            _check_text("tenant", tenant)
            where.append("s.tenant = ?")
            params.append(tenant)
        if user is not None:
            _check_text("user", user)
            where.append("s.user = ?")
            params.append(user)
        if since is not None:
            where.append("s.started >= ?")
            params.append(since)
        if until is not None:
            where.append("s.started < ?")
            params.append(until)
        if thumb is not None:
            _check_thumb(thumb)
            where.append(
                "(SELECT f.thumb FROM feedback f WHERE f.session = s.id AND f.thumb IS NOT NULL"
                " ORDER BY f.at DESC, f.id DESC LIMIT 1) = ?"
            )
            params.append(thumb)
        if has_feedback is not None:
            exists = "EXISTS (SELECT 1 FROM feedback f WHERE f.session = s.id)"
            where.append(exists if has_feedback else f"NOT {exists}")
        sql = "SELECT s.id, s.tenant, s.user, s.started, s.ended, s.meta FROM sessions s"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.started, s.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            return [_session_row(row) for row in conn.execute(sql, params)]

    # -- turns and tool calls ----------------------------------------------------------

    def add_turns(self, session_id: str, turns: Sequence[NewTurn]) -> list[Turn]:
        """Append turns to an open session in one transaction, durable when this returns.

        Indexes continue the session's count. An assistant turn's tool calls go into their
        own table; a "tool" turn with a tool_call_id fills in that call's observation. Any
        bad turn (unknown role, non-int token ids, unknown call id...) raises StoreError and
        nothing of the batch is written.
        """
        checked = [_check_new_turn(i, t) for i, t in enumerate(turns)]
        stored: list[Turn] = []
        with self._write() as conn:
            session = _session(conn, session_id)
            if session.ended is not None:
                raise StoreError(f"session {session_id!r} has ended; start a new one")
            (index,) = conn.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session = ?", (session_id,)
            ).fetchone()
            for turn, token_json in checked:
                at = self.clock()
                cursor = conn.execute(
                    "INSERT INTO turns (session, idx, role, content, token_ids, model_version,"
                    " at, tool_call_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        session_id,
                        index,
                        turn.role,
                        turn.content,
                        token_json,
                        turn.model_version,
                        at,
                        turn.tool_call_id,
                    ),
                )
                turn_id = cursor.lastrowid
                assert turn_id is not None
                calls = []
                for call_id, name, arguments in turn.tool_calls:
                    if conn.execute(
                        "SELECT 1 FROM tool_calls WHERE session = ? AND id = ?",
                        (session_id, call_id),
                    ).fetchone():
                        raise StoreError(
                            f"tool call id {call_id!r} is already used in session"
                            f" {session_id!r}; call ids must be unique within a session"
                        )
                    conn.execute(
                        "INSERT INTO tool_calls (session, id, turn_id, name, arguments)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (session_id, call_id, turn_id, name, arguments),
                    )
                    calls.append(ToolCall(call_id, turn_id, name, arguments, None, None))
                if turn.tool_call_id is not None:
                    row = conn.execute(
                        "SELECT observation FROM tool_calls WHERE session = ? AND id = ?",
                        (session_id, turn.tool_call_id),
                    ).fetchone()
                    if row is None:
                        raise NotFound(
                            f"tool turn answers call {turn.tool_call_id!r}, which no assistant"
                            f" turn of session {session_id!r} made"
                        )
                    if row[0] is not None:
                        raise StoreError(
                            f"tool call {turn.tool_call_id!r} of session {session_id!r}"
                            " already has an observation"
                        )
                    conn.execute(
                        "UPDATE tool_calls SET observation = ?, observed = ?"
                        " WHERE session = ? AND id = ?",
                        (turn.content, at, session_id, turn.tool_call_id),
                    )
                stored.append(
                    Turn(
                        id=turn_id,
                        session=session_id,
                        index=index,
                        role=turn.role,
                        content=turn.content,
                        token_ids=None if turn.token_ids is None else list(turn.token_ids),
                        model_version=turn.model_version,
                        at=at,
                        tool_calls=tuple(calls),
                        tool_call_id=turn.tool_call_id,
                    )
                )
                index += 1
        return stored

    def turns(self, session_id: str) -> list[Turn]:
        """The session's turns in order, with their tool calls and observations."""
        with self._read() as conn:
            _session(conn, session_id)
            calls: dict[int, list[ToolCall]] = {}
            for row in conn.execute(
                "SELECT c.id, c.turn_id, c.name, c.arguments, c.observation, c.observed"
                " FROM tool_calls c JOIN turns t ON t.id = c.turn_id"
                " WHERE c.session = ? ORDER BY t.idx, c.rowid",
                (session_id,),
            ):
                calls.setdefault(row[1], []).append(ToolCall(*row))
            return [
                Turn(
                    id=row[0],
                    session=session_id,
                    index=row[1],
                    role=row[2],
                    content=row[3],
                    token_ids=None if row[4] is None else json.loads(row[4]),
                    model_version=row[5],
                    at=row[6],
                    tool_calls=tuple(calls.get(row[0], ())),
                    tool_call_id=row[7],
                )
                for row in conn.execute(
                    "SELECT id, idx, role, content, token_ids, model_version, at, tool_call_id"
                    " FROM turns WHERE session = ? ORDER BY idx",
                    (session_id,),
                )
            ]

    # -- feedback ----------------------------------------------------------------------

    def add_feedback(
        self, session_id: str, thumb: int | None, evaluation: str | None, author: str
    ) -> Feedback:
        """Record a thumb (+1 / -1) and/or a written evaluation of a session."""
        if thumb is None and evaluation is None:
            raise StoreError("feedback needs a thumb (+1 or -1), an evaluation, or both")
        if thumb is not None:
            _check_thumb(thumb)
        if evaluation is not None:
            _check_text("evaluation", evaluation)
        _check_id("author", author)
        with self._write() as conn:
            _session(conn, session_id)
            at = self.clock()
            cursor = conn.execute(
                "INSERT INTO feedback (session, thumb, evaluation, author, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (session_id, thumb, evaluation, author, at),
            )
            assert cursor.lastrowid is not None
            return Feedback(cursor.lastrowid, session_id, thumb, evaluation, author, at)

    def feedback(self, session_id: str | None = None, tenant: str | None = None) -> list[Feedback]:
        """Feedback in the order it was given, of one session and/or one tenant."""
        sql = (
            "SELECT f.id, f.session, f.thumb, f.evaluation, f.author, f.at FROM feedback f"
            " JOIN sessions s ON s.id = f.session"
        )
        where: list[str] = []
        params: list[Any] = []
        if session_id is not None:
            where.append("f.session = ?")
            params.append(session_id)
        if tenant is not None:
            _check_text("tenant", tenant)
            where.append("s.tenant = ?")
            params.append(tenant)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY f.at, f.id"
        with self._read() as conn:
            if session_id is not None:
                _session(conn, session_id)
            return [Feedback(*row) for row in conn.execute(sql, params)]

    # -- the live service --------------------------------------------------------------

    def log_transition(
        self,
        service: str,
        account: str,
        action: str,
        observation: str,
        cost: float = 0.0,
        session: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> Transition:
        """Record one action of the live service and what it answered (durable on return)."""
        _check_id("service", service)
        _check_id("account", account)
        _check_text("action", action)
        _check_text("observation", observation)
        if session is not None:
            _check_id("session id", session)
        if isinstance(cost, bool) or not isinstance(cost, int | float) or cost != cost:
            raise StoreError(f"transition cost must be a number, got {cost!r}")
        if state is not None and not isinstance(state, dict):
            raise StoreError(f"transition state must be a dict or None, got {_kind(state)}")
        state_json = None if state is None else _to_json("transition state", state)
        with self._write() as conn:
            at = self.clock()
            cursor = conn.execute(
                "INSERT INTO transitions (service, account, action, observation, cost, at,"
                " session, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (service, account, action, observation, float(cost), at, session, state_json),
            )
            assert cursor.lastrowid is not None
            return Transition(
                cursor.lastrowid,
                service,
                account,
                action,
                observation,
                float(cost),
                at,
                session,
                None if state_json is None else json.loads(state_json),
            )

    def transitions(
        self, service: str, since_id: int = 0, account: str | None = None
    ) -> list[Transition]:
        """The service's transitions with id > since_id, oldest first."""
        sql = (
            "SELECT id, service, account, action, observation, cost, at, session, state"
            " FROM transitions WHERE service = ? AND id > ?"
        )
        _check_text("service", service)
        params: list[Any] = [service, since_id]
        if account is not None:
            _check_text("account", account)
            sql += " AND account = ?"
            params.append(account)
        sql += " ORDER BY id"
        with self._read() as conn:
            return [_transition_row(row) for row in conn.execute(sql, params)]

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self._read() as conn:
            return {
                table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in TABLES
            }


# -- schema ----------------------------------------------------------------------------


def _statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (semicolons inside triggers or strings
    do not split). executescript() would commit the migration's transaction early."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:80]}")
    return statements


def connect(path: Path, timeout: float, what: str = "store") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with WAL, full sync and
    foreign keys on; shared with `onthejob.registry`."""
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot open {what} {path}: {e}") from e
    return conn


def migrate(
    conn: sqlite3.Connection, path: Path, migrations: Sequence[str], what: str = "store"
) -> None:
    """Bring the file to the latest schema of `migrations` in one transaction (another
    process opening the same file waits on the write lock, then finds nothing left to do)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot open {what} {path}: {e}") from e
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise StoreError(
                f"{what} {path} has schema version {version}, newer than this code's"
                f" {len(migrations)}; upgrade onthejob to read it"
            )
        for target in range(version + 1, len(migrations) + 1):
            try:
                for statement in _statements(migrations[target - 1]):
                    conn.execute(statement)
            except sqlite3.Error as e:
                raise StoreError(
                    f"cannot migrate {what} {path} to schema version {target}: {e}"
                ) from e
            conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def schema_version(path: str | Path) -> int:
    """The schema version of the store file at `path`, without migrating it."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


# -- checks and rows -------------------------------------------------------------------


def _kind(value: object) -> str:
    return type(value).__name__


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a string, got {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise StoreError(
            f"{what} is not valid Unicode (lone surrogate at character {e.start}); send UTF-8 text"
        ) from None
    return value


def _check_id(what: str, value: object) -> str:
    _check_text(what, value)
    assert isinstance(value, str)
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise StoreError(
            f"{what} must be 1 to {MAX_ID_LENGTH} printable characters, got {value[:40]!r}"
        )
    return value


def _check_thumb(thumb: object) -> None:
    if isinstance(thumb, bool) or thumb not in (1, -1):
        raise StoreError(f"thumb must be +1 (up) or -1 (down), got {thumb!r}")


def _to_json(what: str, value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serializable: {e}") from None
    return _check_text(what, text)


def _check_new_turn(position: int, turn: object) -> tuple[NewTurn, str | None]:
    """Check one turn of a batch; returns it with its token ids as JSON."""
    where = f"turn {position}"
    if not isinstance(turn, NewTurn):
        raise StoreError(f"{where}: expected a NewTurn, got {_kind(turn)}")
    if turn.role not in ROLES:
        raise StoreError(f"{where}: unknown role {turn.role!r}; use one of {list(ROLES)}")
    _check_text(f"{where} content", turn.content)
    token_json = None
    if turn.token_ids is not None:
        ids = turn.token_ids
        if not isinstance(ids, list | tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
        ):
            raise StoreError(f"{where}: token_ids must be a list of non-negative ints")
        token_json = json.dumps(list(ids))
    if turn.model_version is not None:
        _check_id(f"{where} model_version", turn.model_version)
    if turn.tool_calls and turn.role != "assistant":
        raise StoreError(f"{where}: only assistant turns make tool calls, not {turn.role!r}")
    seen = set()
    for call in turn.tool_calls:
        if not isinstance(call, tuple | list) or len(call) != 3:
            raise StoreError(f"{where}: a tool call is (call id, name, arguments JSON)")
        call_id, name, arguments = call
        _check_id(f"{where} tool call id", call_id)
        _check_id(f"{where} tool name", name)
        _check_text(f"{where} tool arguments", arguments)
        if call_id in seen:
            raise StoreError(f"{where}: tool call id {call_id!r} appears twice")
        seen.add(call_id)
    if turn.tool_call_id is not None:
        if turn.role != "tool":
            raise StoreError(f"{where}: tool_call_id is only for role 'tool', not {turn.role!r}")
        _check_id(f"{where} tool_call_id", turn.tool_call_id)
    return turn, token_json


def _session_row(row: tuple[Any, ...]) -> Session:
    return Session(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))


def _transition_row(row: tuple[Any, ...]) -> Transition:
    state = None if row[8] is None else json.loads(row[8])
    return Transition(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], state)


def _session(conn: sqlite3.Connection, session_id: str) -> Session:
    _check_text("session id", session_id)
    row = conn.execute(
        "SELECT id, tenant, user, started, ended, meta FROM sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown session {session_id!r}; start one first")
    return _session_row(row)
