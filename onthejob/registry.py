"""The model registry: which model versions exist, where they came from, and which one
answers each tenant.

Covers: registering a version (a Hugging Face base model directory plus an optional PEFT
adapter directory, the method that made it, its config, its parent), recording its
evaluation results, and the status decisions made about it: promote, reject, roll back.
Every status change is an event with who, why and when, so the lineage of what served
each tenant can be read back.

Not covered: loading the weights (`onthejob.models`), deciding whether a candidate is good
enough (the gate in `onthejob.sleep`), or serving it (`onthejob.serve`).

Design decisions:

- Its own SQLite file (default `onthejob_home()/registry.sqlite`), not the experience
  store's: the registry is small and written rarely (by the gate and by operators), the
  store is large and written on every turn; keeping them apart means the store can be
  archived or deleted without losing the lineage of the weights, and a registry can be
  copied along with the model directories it names. Same engine and rules as the store:
  WAL, `synchronous=FULL`, a versioned schema migrated on open.
- Exactly one promoted version per tenant, guarded twice: promote and rollback run in one
  `BEGIN IMMEDIATE` transaction, and a partial unique index on (tenant) where status is
  "promoted" makes a second promoted row impossible even for a buggy caller.
- Promoting a version demotes the previously promoted one to "superseded", not to
  "candidate": it was good and served, so it stays a valid target for a rollback, and it
  is never confused with a version nobody has judged yet.
- Rollback: the promoted version becomes "rolled_back", and the most recently promoted
  version before it that is still "superseded" (not since rejected or rolled back) is
  promoted again. Rolling back twice walks further back through the history.
- An operator may promote any version that is not already promoted, a rejected one
  included: the gate's verdict is advice, the event log records who overrode it and why.
  The promoted version cannot be rejected directly: roll it back first.
- Paths are stored absolute. `register` checks that the base looks like a model directory
  and the adapter like a PEFT adapter directory, so a typo fails when registered, not when
  the server loads it.
- Version ids default to "<tenant>-v<n>" (short enough to type in `onthejob models`).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onthejob.store import StoreError, connect, migrate

STATUSES = ("candidate", "promoted", "superseded", "rejected", "rolled_back")
"""candidate: registered, not judged; promoted: answers its tenant; superseded: was
promoted, replaced by a newer promotion; rejected: judged not good enough; rolled_back:
was promoted, withdrawn by a rollback."""

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE versions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        parent TEXT REFERENCES versions(id),
        base TEXT NOT NULL,
        adapter TEXT,
        method TEXT NOT NULL,
        config TEXT NOT NULL,
        evals TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('candidate', 'promoted', 'superseded', 'rejected', 'rolled_back')),
        reason TEXT,
        created REAL NOT NULL
    );
    CREATE UNIQUE INDEX one_promoted_per_tenant ON versions(tenant) WHERE status = 'promoted';
    CREATE INDEX versions_by_tenant ON versions(tenant, created);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        version TEXT NOT NULL REFERENCES versions(id),
        tenant TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        reason TEXT,
        actor TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX events_by_tenant ON events(tenant, id);
    """,
]
"""SQL scripts, applied in order; after script i the file is at schema version i + 1."""
SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes."""

MAX_NAME_LENGTH = 200
"""Longest tenant, version id or method name accepted."""


class RegistryError(Exception):
    """A registry operation cannot be done; the message says why and what to do."""


class UnknownVersion(RegistryError):
    """No version has this id."""


@dataclass(frozen=True)
class ModelVersion:
    """One model version: a base model, optionally with an adapter, and what is known of it."""

    id: str
    """Version id, e.g. "acme-v3"."""
    tenant: str
    """The tenant it serves (its experience trained it)."""
    parent: str | None
    """The version it was trained from, or None for a root (e.g. the pretrained model)."""
    base: str
    """Absolute path of the Hugging Face base model directory."""
    adapter: str | None
    """Absolute path of the PEFT adapter directory, or None: the base model itself."""
    method: str
    """What made it: "pretrain", "grpo", "opsd", "sft", "dream", ..."""
    config: dict[str, Any]
    """The training config (JSON)."""
    evals: dict[str, Any]
    """Evaluation results, e.g. {"recall": 0.62, "guard": {"arith": 0.4}}."""
    status: str
    """One of STATUSES."""
    reason: str | None
    """Why it has its current status (the last decision's reason)."""
    created: float
    """When it was registered (seconds since the epoch)."""


def default_registry_path() -> Path:
    """Where the registry lives by default: onthejob_home()/registry.sqlite."""
    from onthejob.train.pretrain import onthejob_home  # lazily: it imports torch

    return onthejob_home() / "registry.sqlite"


class Registry:
    """Model versions and their status decisions in one SQLite file (threads and processes
    may share it)."""

    def __init__(
        self, path: str | Path, clock: Callable[[], float] = time.time, timeout: float = 30.0
    ) -> None:
        """Open or create the registry at `path` and bring its schema up to date."""
        self.path = Path(path)
        self.clock = clock
        self.timeout = timeout
        if self.path.is_dir():
            raise RegistryError(f"registry path is a directory, not a file: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = connect(self.path, timeout, "registry")
            try:
                migrate(conn, self.path, MIGRATIONS, "registry")
            finally:
                conn.close()
        except StoreError as e:
            raise RegistryError(str(e)) from None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call (the registry is small and called rarely), one
        transaction: all of it or nothing."""
        try:
            conn = connect(self.path, self.timeout, "registry")
        except StoreError as e:
            raise RegistryError(str(e)) from None
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise RegistryError(f"registry {self.path}: {e}") from e
        finally:
            conn.close()

    # -- writing -----------------------------------------------------------------------

    def register(
        self,
        tenant: str,
        base: str | Path,
        adapter: str | Path | None = None,
        method: str = "pretrain",
        config: dict[str, Any] | None = None,
        parent: str | None = None,
        evals: dict[str, Any] | None = None,
        version_id: str | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Add a candidate version; its directories must exist and look like what they are."""
        _check_name("tenant", tenant)
        _check_name("method", method)
        if version_id is not None:
            _check_name("version id", version_id)
        base_dir = _check_base(base)
        adapter_dir = None if adapter is None else _check_adapter(adapter)
        config_json = _to_json("config", {} if config is None else config)
        evals_json = _to_json("evals", {} if evals is None else evals)
        with self._transaction(write=True) as conn:
            if parent is not None:
                _version(conn, parent)
            if version_id is None:
                (n,) = conn.execute(
                    "SELECT COUNT(*) FROM versions WHERE tenant = ?", (tenant,)
                ).fetchone()
                version_id = f"{tenant}-v{n + 1}"
                while conn.execute("SELECT 1 FROM versions WHERE id = ?", (version_id,)).fetchone():
                    n += 1
                    version_id = f"{tenant}-v{n + 1}"
            elif conn.execute("SELECT 1 FROM versions WHERE id = ?", (version_id,)).fetchone():
                raise RegistryError(f"version {version_id!r} already exists; choose another id")
            now = self.clock()
            conn.execute(
                "INSERT INTO versions (id, tenant, parent, base, adapter, method, config, evals,"
                " status, reason, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'candidate', ?, ?)",
                (
                    version_id,
                    tenant,
                    parent,
                    str(base_dir),
                    None if adapter_dir is None else str(adapter_dir),
                    method,
                    config_json,
                    evals_json,
                    "registered",
                    now,
                ),
            )
            self._event(conn, version_id, tenant, None, "candidate", "registered", actor, now)
            return _version(conn, version_id)

    def record_evals(self, version_id: str, evals: dict[str, Any]) -> ModelVersion:
        """Merge evaluation results into the version's (a key given again is replaced)."""
        if not isinstance(evals, dict):
            raise RegistryError(f"evals must be a dict, got {type(evals).__name__}")
        _to_json("evals", evals)
        with self._transaction(write=True) as conn:
            version = _version(conn, version_id)
            merged = {**version.evals, **evals}
            conn.execute(
                "UPDATE versions SET evals = ? WHERE id = ?",
                (_to_json("evals", merged), version_id),
            )
            return _version(conn, version_id)

    def promote(
        self, version_id: str, reason: str | None = None, actor: str | None = None
    ) -> ModelVersion:
        """Make this version the one that answers its tenant; the previous one is superseded."""
        _check_reason(reason)
        with self._transaction(write=True) as conn:
            version = _version(conn, version_id)
            if version.status == "promoted":
                raise RegistryError(f"version {version_id!r} is already promoted")
            now = self.clock()
            previous = _promoted(conn, version.tenant)
            if previous is not None:
                self._set_status(
                    conn, previous, "superseded", f"superseded by {version_id}", actor, now
                )
            self._set_status(conn, version, "promoted", reason, actor, now)
            return _version(conn, version_id)

    def reject(self, version_id: str, reason: str, actor: str | None = None) -> ModelVersion:
        """Mark a version as not good enough; the promoted one must be rolled back instead."""
        _check_reason(reason)
        if not reason:
            raise RegistryError("rejecting a version needs a reason")
        with self._transaction(write=True) as conn:
            version = _version(conn, version_id)
            if version.status == "promoted":
                raise RegistryError(
                    f"version {version_id!r} is promoted; roll it back instead of rejecting it"
                )
            if version.status == "rejected":
                raise RegistryError(f"version {version_id!r} is already rejected")
            self._set_status(conn, version, "rejected", reason, actor, self.clock())
            return _version(conn, version_id)

    def rollback(
        self, tenant: str, reason: str | None = None, actor: str | None = None
    ) -> ModelVersion:
        """Withdraw the tenant's promoted version and promote again the one it replaced
        (the latest earlier promotion still superseded); returns the version now promoted."""
        _check_reason(reason)
        with self._transaction(write=True) as conn:
            current = _promoted(conn, tenant)
            if current is None:
                raise RegistryError(f"tenant {tenant!r} has no promoted version to roll back")
            target = None
            for (version_id,) in conn.execute(
                "SELECT version FROM events WHERE tenant = ? AND to_status = 'promoted'"
                " ORDER BY id DESC",
                (tenant,),
            ).fetchall():
                candidate = _version(conn, version_id)
                if candidate.status == "superseded":
                    target = candidate
                    break
            if target is None:
                raise RegistryError(
                    f"nothing to roll back to: no earlier promoted version of tenant {tenant!r}"
                    " is still good (promote one by id instead)"
                )
            now = self.clock()
            self._set_status(conn, current, "rolled_back", reason, actor, now)
            restored = f"rollback of {current.id}" + (f": {reason}" if reason else "")
            self._set_status(conn, target, "promoted", restored, actor, now)
            return _version(conn, target.id)

    def _set_status(
        self,
        conn: sqlite3.Connection,
        version: ModelVersion,
        status: str,
        reason: str | None,
        actor: str | None,
        now: float,
    ) -> None:
        conn.execute(
            "UPDATE versions SET status = ?, reason = ? WHERE id = ?", (status, reason, version.id)
        )
        self._event(conn, version.id, version.tenant, version.status, status, reason, actor, now)

    def _event(
        self,
        conn: sqlite3.Connection,
        version_id: str,
        tenant: str,
        from_status: str | None,
        to_status: str,
        reason: str | None,
        actor: str | None,
        now: float,
    ) -> None:
        conn.execute(
            "INSERT INTO events (version, tenant, from_status, to_status, reason, actor, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (version_id, tenant, from_status, to_status, reason, actor, now),
        )

    # -- reading -----------------------------------------------------------------------

    def get(self, version_id: str) -> ModelVersion:
        """The version with this id; UnknownVersion if there is none."""
        with self._transaction(write=False) as conn:
            return _version(conn, version_id)

    def promoted(self, tenant: str) -> ModelVersion | None:
        """The version that answers this tenant, or None if none was promoted."""
        with self._transaction(write=False) as conn:
            return _promoted(conn, tenant)

    def history(
        self, tenant: str | None = None, version_id: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Every status change, oldest first, of one tenant and/or one version: dicts with
        version, tenant, from, to, reason, actor, at."""
        sql = "SELECT version, tenant, from_status, to_status, reason, actor, at FROM events"
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if tenant is not None:
            _check_name("tenant", tenant)
            where.append("tenant = ?")
            params.append(tenant)
        if version_id is not None:
            where.append("version = ?")
            params.append(version_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._transaction(write=False) as conn:
            if version_id is not None:
                _version(conn, version_id)
            rows = conn.execute(sql + " ORDER BY id", params).fetchall()
        keys = ("version", "tenant", "from", "to", "reason", "actor", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def list(self, tenant: str | None = None) -> builtins.list[ModelVersion]:
        """All versions (of one tenant), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM versions"
        params: builtins.list[Any] = []
        if tenant is not None:
            _check_name("tenant", tenant)
            sql += " WHERE tenant = ?"
            params.append(tenant)
        with self._transaction(write=False) as conn:
            rows = conn.execute(sql + " ORDER BY created, rowid", params).fetchall()
        return [_version_row(row) for row in rows]


# -- checks and rows -------------------------------------------------------------------

_COLUMNS = "id, tenant, parent, base, adapter, method, config, evals, status, reason, created"


def _version_row(row: tuple[Any, ...]) -> ModelVersion:
    return ModelVersion(
        id=row[0],
        tenant=row[1],
        parent=row[2],
        base=row[3],
        adapter=row[4],
        method=row[5],
        config=json.loads(row[6]),
        evals=json.loads(row[7]),
        status=row[8],
        reason=row[9],
        created=row[10],
    )


def _version(conn: sqlite3.Connection, version_id: str) -> ModelVersion:
    if not isinstance(version_id, str):
        raise RegistryError(f"a version id is a string, got {type(version_id).__name__}")
    _check_unicode("version id", version_id)
    row = conn.execute(f"SELECT {_COLUMNS} FROM versions WHERE id = ?", (version_id,)).fetchone()
    if row is None:
        raise UnknownVersion(f"unknown model version {version_id!r} (see `onthejob models list`)")
    return _version_row(row)


def _promoted(conn: sqlite3.Connection, tenant: str) -> ModelVersion | None:
    _check_name("tenant", tenant)
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM versions WHERE tenant = ? AND status = 'promoted'", (tenant,)
    ).fetchone()
    return None if row is None else _version_row(row)


def _check_unicode(what: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RegistryError(f"{what} is not valid Unicode (lone surrogate); use UTF-8") from None


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise RegistryError(f"{what} must be a string, got {type(value).__name__}")
    _check_unicode(what, value)
    if not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        raise RegistryError(
            f"{what} must be 1 to {MAX_NAME_LENGTH} printable characters, got {value[:40]!r}"
        )


def _check_reason(reason: object) -> None:
    if reason is None:
        return
    if not isinstance(reason, str):
        raise RegistryError(f"a reason must be a string, got {type(reason).__name__}")
    _check_unicode("reason", reason)


def _to_json(what: str, value: object) -> str:
    if not isinstance(value, dict):
        raise RegistryError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{what} must be JSON-serializable: {e}") from None
    _check_unicode(what, text)
    return text


def _check_base(base: str | Path) -> Path:
    """The base model directory, absolute, if it looks like a HF causal-LM directory."""
    from onthejob.models.hf import ModelDirError, check_model_dir  # lazily: imports torch

    try:
        return check_model_dir(Path(base).expanduser().resolve())
    except ModelDirError as e:
        raise RegistryError(f"base of a model version: {e}") from None


def _check_adapter(adapter: str | Path) -> Path:
    """The adapter directory, absolute, if it holds a PEFT adapter config and weights."""
    path = Path(adapter).expanduser().resolve()
    if not path.is_dir():
        raise RegistryError(f"adapter directory not found: {path}")
    config = path / "adapter_config.json"
    if not config.is_file():
        raise RegistryError(f"not an adapter directory (no adapter_config.json): {path}")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"malformed adapter_config.json in {path}: {e}") from None
    if not any(path.glob("adapter_model.*")):
        raise RegistryError(f"no adapter weights (adapter_model.safetensors) in {path}")
    return path
