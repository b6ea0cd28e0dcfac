"""The live supplier shop: a real HTTP service on 127.0.0.1 whose state lives in SQLite.

Covers: `LiveShop`, the service itself without HTTP (usable in-process), and `make_app`,
the thin FastAPI layer over it, with `python -m onthejob.world.service --db PATH --port 0
--seed N` to run it as its own process (the first stdout line is the base URL). It sells
the grindable `shop` clone's goods through the clone's action language (search, open, add,
remove, cart, checkout, back) and writes the clone's pages, with what a clone lacks:

- no reset: stock, carts, orders and accounts persist in the SQLite file across restarts;
  /reset (and /snapshot, /restore) answer 409 saying the service is live;
- drift on a world clock (`day`, moved only by POST /advance): stock runs down as orders
  are placed and restocks on each item's schedule, prices move every day, and the page
  layout (field order, labels) changes every week (`onthejob.world.supplier`);
- costs: every action is charged to its account (a search more than a page), reported in
  each response and in the account's totals;
- throttling and bans: an account that sends more than `max_actions` actions in
  `window_s` seconds, repeats the same failing action `max_repeated_failures` times in a
  row, or keeps acting while throttled commits an offence: 429 and a throttle; after
  `offences_to_ban` offences, 403 and a ban for `ban_s` seconds;
- accounts: anyone acts through an account id (created on first use); the cart belongs
  to the account, the page being looked at to the (account, session) pair;
- a log of every transition (account, action, observation, cost, time, session, status),
  in the service's own table and, when a `Store` is given, in the experience store too.
  Refused actions (429, 403) are transitions as well: the agent saw them.

Routes: POST /act {"account", "action", "session"?} -> {"observation", "cost", "spent",
"done", "day"}; GET /state (public: day, catalogue with price and stock, orders,
accounts); POST /advance {"days"} (the org driver's clock); GET /transitions; GET
/health. Errors are {"error": "<one line>", "kind": ...}: 422 malformed input, 413 an
oversize body, 429 throttled, 403 banned, 409 reset, 503 experience store down.

Does not cover: authentication (bind to 127.0.0.1 only; /advance trusts its caller),
several processes on one database file (one process owns it; calls are serialised by a
lock), or judging orders (the org's `ServiceTask.check` reads GET /state).

Design decisions: one SQLite transaction per call, and the experience-store row is
written inside it before the commit, so a call either happened entirely (service state,
its transition row and the store row) or not at all; a store failure rolls the action
back and answers 503. Bans, throttles and offences persist; the request times of the
rate window are kept in memory only, so a restart forgets the current window. The day
moves only when /advance is called, never with wall time, so runs are deterministic
for a seed and a sequence of calls; wall time (`clock`) is used only for rate limits.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from onthejob.envs.base import clip
from onthejob.envs.shop import (
    HELP,
    MAX_ACTION_CHARS,
    cart_page,
    item_page,
    item_words,
    results_page,
    search_words,
)
from onthejob.web import app_in_thread, serve_announced
from onthejob.world.supplier import (
    SupplierConfig,
    layout_of_week,
    make_catalogue,
    next_restock,
    price_on,
    public_item,
    restocks_on,
    week_of,
)

SCHEMA_VERSION = 1
ACCOUNT_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""Account ids: lower-case letters, digits, '.', '_' and '-', 1 to 64 characters."""
SESSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""Session ids: letters, digits, '.', '_', ':' and '-', 1 to 128 characters."""
MAX_BODY_BYTES = 16_384
"""Largest request body the HTTP layer reads."""
MAX_HISTORY = 20
"""Pages `back` can return through."""
MAX_ADVANCE_DAYS = 365


@dataclass(frozen=True)
class ServiceConfig:
    """Costs and limits of the live service (settings of a process, not of the world)."""

    name: str = "supplier"
    """The service's name in the experience store."""
    search_cost: int = 3
    """Credits a search costs (it queries the whole catalogue)."""
    page_cost: int = 1
    """Credits open, add, remove, cart, back and an unknown action cost."""
    checkout_cost: int = 2
    """Credits a checkout attempt costs."""
    window_s: float = 10.0
    """Length of the rate window, in seconds of wall time."""
    max_actions: int = 20
    """Most actions an account may send within one window."""
    max_repeated_failures: int = 4
    """The same failing action this many times in a row is an offence."""
    throttle_s: float = 30.0
    """Seconds an account is throttled after an offence; acting meanwhile is another offence."""
    offences_to_ban: int = 3
    """Offences (counted until forgotten or banned) that earn a ban."""
    ban_s: float = 600.0
    """Seconds a ban lasts."""
    forget_s: float = 3600.0
    """Offences are forgotten after this many seconds without a new one."""

    def __post_init__(self) -> None:
        for name in ("search_cost", "page_cost", "checkout_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"service {name} must not be negative, got {getattr(self, name)}")
        for name in ("max_actions", "max_repeated_failures", "offences_to_ban"):
            if getattr(self, name) < 1:
                raise ValueError(f"service {name} must be at least 1, got {getattr(self, name)}")
        for name in ("window_s", "throttle_s", "ban_s", "forget_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"service {name} must be positive, got {getattr(self, name)}")


class Refused(Exception):
    """The service refused to act for this account (see `Throttled`, `Banned`)."""

    status: int = 400
    kind: str = "refused"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until the account may act again."""


class Throttled(Refused):
    """Too fast or too repetitive: wait `retry_after` seconds (HTTP 429)."""

    status = 429
    kind = "throttled"


class Banned(Refused):
    """Banned for repeated offences until `retry_after` seconds from now (HTTP 403)."""

    status = 403
    kind = "banned"


class StoreUnavailable(RuntimeError):
    """The experience store could not log the transition; the action was rolled back."""


class NotLive(RuntimeError):
    """What a live service cannot do (reset, snapshot, restore)."""


class TransitionLog(Protocol):
    """Where transitions go besides the service's own table (`onthejob.store.Store` fits)."""

    def log_transition(
        self,
        service: str,
        account: str,
        action: str,
        observation: str,
        cost: float = 0.0,
        session: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class ActResult:
    """What one action did."""

    observation: str
    cost: int
    """Credits this action cost."""
    spent: int
    """Credits the account has spent on actions, this one included."""
    done: bool
    """True when the action placed an order (the end of a shopping episode)."""
    day: int
    """The world-clock day it happened on."""


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    id TEXT PRIMARY KEY, category TEXT NOT NULL, color TEXT NOT NULL, material TEXT NOT NULL,
    size TEXT NOT NULL, base_price INTEGER NOT NULL, capacity INTEGER NOT NULL,
    restock_offset INTEGER NOT NULL, price INTEGER NOT NULL, stock INTEGER NOT NULL);
CREATE TABLE accounts (
    id TEXT PRIMARY KEY, created REAL NOT NULL, actions INTEGER NOT NULL DEFAULT 0,
    spent INTEGER NOT NULL DEFAULT 0, ordered INTEGER NOT NULL DEFAULT 0,
    cart TEXT NOT NULL DEFAULT '{}', last_failure TEXT, failures INTEGER NOT NULL DEFAULT 0,
    offences INTEGER NOT NULL DEFAULT 0, last_offence REAL NOT NULL DEFAULT 0,
    throttled_until REAL NOT NULL DEFAULT 0, banned_until REAL NOT NULL DEFAULT 0);
CREATE TABLE pages (
    account TEXT NOT NULL, session TEXT NOT NULL, page TEXT NOT NULL, history TEXT NOT NULL,
    PRIMARY KEY (account, session));
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, account TEXT NOT NULL, session TEXT, day INTEGER NOT NULL,
    time REAL NOT NULL, lines TEXT NOT NULL, total INTEGER NOT NULL);
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, day INTEGER NOT NULL, account TEXT NOT NULL,
    session TEXT, action TEXT NOT NULL, observation TEXT NOT NULL, cost INTEGER NOT NULL,
    status INTEGER NOT NULL);
CREATE INDEX transitions_by_account ON transitions (account, id);
CREATE INDEX orders_by_account ON orders (account, id);
"""

_ACCOUNT_FIELDS = (
    "id created actions spent ordered cart last_failure failures offences last_offence "
    "throttled_until banned_until"
).split()


class LiveShop:
    """The supplier shop and its SQLite state; thread-safe, one instance per database file."""

    resettable = False
    replicable = False
    stationary = False

    def __init__(
        self,
        path: str | Path,
        seed: int | None = None,
        supplier: SupplierConfig | None = None,
        config: ServiceConfig | None = None,
        store: TransitionLog | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """Open the shop in `path`, creating it (catalogue from `seed`, default 0) if new.

        An existing file keeps its seed and catalogue: `seed`, if given, must match it.
        `supplier` drives drift from now on (it must be the one the org uses); `config`
        sets costs and limits; `store` receives a copy of every transition.
        """
        self.path = Path(path)
        self.supplier = supplier if supplier is not None else SupplierConfig()
        self.config = config if config is not None else ServiceConfig()
        self.store = store
        self.clock = clock
        self._lock = threading.RLock()
        self._recent: dict[str, deque[float]] = {}
        if self.path.is_dir():
            raise ValueError(f"the shop database path is a directory: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self.seed = self._open(seed)
        except BaseException:
            self._db.close()
            raise

    def _open(self, seed: int | None) -> int:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            if tables:
                raise ValueError(f"{self.path} is an SQLite file of something else, not a shop")
            seed = 0 if seed is None else seed
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                meta = {"schema": SCHEMA_VERSION, "seed": seed, "day": 0, "created": self.clock()}
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
                )
                db.executemany(
                    "INSERT INTO items VALUES (:id, :category, :color, :material, :size,"
                    " :base_price, :capacity, :restock_offset, :base_price, :capacity)",
                    make_catalogue(seed, self.supplier),
                )
            return seed
        meta = self._meta()
        if meta.get("schema") != SCHEMA_VERSION:
            raise ValueError(
                f"{self.path} has shop schema {meta.get('schema')}, this code reads {SCHEMA_VERSION}"
            )
        if seed is not None and seed != meta["seed"]:
            raise ValueError(
                f"{self.path} holds the shop of seed {meta['seed']}, not {seed}; pass --seed {meta['seed']} or a new --db"
            )
        return int(meta["seed"])

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    @property
    def day(self) -> int:
        with self._lock:
            return int(self._meta()["day"])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LiveShop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _items(self, db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
        cursor = db.execute(
            "SELECT id, category, color, material, size, base_price, capacity, restock_offset,"
            " price, stock FROM items ORDER BY id"
        )
        names = [d[0] for d in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor}

    def _account(self, db: sqlite3.Connection, account: str, now: float) -> dict[str, Any]:
        row = db.execute(
            f"SELECT {', '.join(_ACCOUNT_FIELDS)} FROM accounts WHERE id = ?", (account,)
        ).fetchone()
        if row is None:
            db.execute("INSERT INTO accounts (id, created) VALUES (?, ?)", (account, now))
            return self._account(db, account, now)
        values = dict(zip(_ACCOUNT_FIELDS, row, strict=True))
        values["cart"] = json.loads(values["cart"])
        return values

    # ------------------------------------------------------------------ acting

    def act(self, account: str, action: str, session: str | None = None) -> ActResult:
        """Do one action for `account`; raises Throttled/Banned when refused, ValueError on bad input."""
        _check_input(account, action, session)
        with self._transaction() as db:
            now = self.clock()
            day = int(self._meta()["day"])
            acct = self._account(db, account, now)
            refusal = self._refusal(acct, now)
            if refusal is None:
                page, history = self._page(db, account, session)
                observation, cost, done, failed = self._step(
                    db, acct, page, history, action, day, session
                )
                refusal = self._repeated_failure(acct, action, failed, now)
            if refusal is not None:
                observation, cost, done = str(refusal), 0, False
            else:
                self._save_page(db, account, session, page, history)
            acct["actions"] += 1
            acct["spent"] += cost
            self._save_account(db, acct)
            status = refusal.status if refusal is not None else 200
            db.execute(
                "INSERT INTO transitions (time, day, account, session, action, observation,"
                " cost, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now, day, account, session, action, observation, cost, status),
            )
            if self.store is not None:
                hidden = {"day": day, "status": status, "spent": acct["spent"], "done": done}
                if refusal is None:
                    hidden.update(page=page, cart=acct["cart"])
                try:
                    self.store.log_transition(
                        self.config.name, account, action, observation, cost, session, hidden
                    )
                except Exception as error:
                    raise StoreUnavailable(
                        f"experience store failed, action not taken: {error}"
                    ) from None
        if refusal is not None:
            raise refusal
        return ActResult(observation, cost, acct["spent"], done, day)

    def _refusal(self, acct: dict[str, Any], now: float) -> Refused | None:
        """Whether a ban, a throttle or the rate window refuses this request (counts it)."""
        cfg = self.config
        if acct["banned_until"] > now:
            left = acct["banned_until"] - now
            return Banned(
                f"banned for {left:.0f} more seconds for acting like a bot (too many requests or the same failing action over and over).",
                left,
            )
        if acct["offences"] and now - acct["last_offence"] > cfg.forget_s:
            acct["offences"] = 0
        recent = self._recent.setdefault(acct["id"], deque())
        recent.append(now)
        while recent and recent[0] <= now - cfg.window_s:
            recent.popleft()
        if acct["throttled_until"] > now:
            left = acct["throttled_until"] - now
            return self._offence(acct, now, f"still throttled for {left:.0f} seconds")
        if len(recent) > cfg.max_actions:
            return self._offence(
                acct, now, f"more than {cfg.max_actions} actions in {cfg.window_s:g} seconds"
            )
        return None

    def _repeated_failure(
        self, acct: dict[str, Any], action: str, failed: bool, now: float
    ) -> Refused | None:
        line = " ".join(action.lower().split())
        if not failed:
            acct["last_failure"], acct["failures"] = None, 0
            return None
        acct["failures"] = acct["failures"] + 1 if acct["last_failure"] == line else 1
        acct["last_failure"] = line
        repeats = acct["failures"]
        if repeats < self.config.max_repeated_failures:
            return None
        acct["last_failure"], acct["failures"] = None, 0
        return self._offence(acct, now, f"the same failing action {repeats} times in a row")

    def _offence(self, acct: dict[str, Any], now: float, why: str) -> Refused:
        cfg = self.config
        acct["offences"] += 1
        acct["last_offence"] = now
        if acct["offences"] >= cfg.offences_to_ban:
            acct["offences"], acct["throttled_until"] = 0, 0.0
            acct["banned_until"] = now + cfg.ban_s
            return Banned(
                f"banned for {cfg.ban_s:.0f} seconds: {why}, offence {cfg.offences_to_ban} of {cfg.offences_to_ban}.",
                cfg.ban_s,
            )
        acct["throttled_until"] = now + cfg.throttle_s
        return Throttled(
            f"throttled for {cfg.throttle_s:.0f} seconds: {why}. slow down; acting while throttled leads to a ban.",
            cfg.throttle_s,
        )

    def _page(
        self, db: sqlite3.Connection, account: str, session: str | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        row = db.execute(
            "SELECT page, history FROM pages WHERE account = ? AND session = ?",
            (account, session or ""),
        ).fetchone()
        if row is None:
            return {"kind": "home"}, []
        return json.loads(row[0]), json.loads(row[1])

    def _save_page(
        self,
        db: sqlite3.Connection,
        account: str,
        session: str | None,
        page: dict[str, Any],
        history: list[dict[str, Any]],
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?)",
            (account, session or "", json.dumps(page), json.dumps(history[-MAX_HISTORY:])),
        )

    def _save_account(self, db: sqlite3.Connection, acct: dict[str, Any]) -> None:
        values = {**acct, "cart": json.dumps(acct["cart"])}
        names = [name for name in _ACCOUNT_FIELDS if name != "id"]
        db.execute(
            f"UPDATE accounts SET {', '.join(f'{n} = :{n}' for n in names)} WHERE id = :id",
            values,
        )

    def _step(
        self,
        db: sqlite3.Connection,
        acct: dict[str, Any],
        page: dict[str, Any],
        history: list[dict[str, Any]],
        action: str,
        day: int,
        session: str | None,
    ) -> tuple[str, int, bool, bool]:
        """One action of the shop language: (observation, cost, done, failed); edits page/history/cart."""
        cfg = self.config
        lines = action.strip().lower().splitlines()
        line = lines[0].strip() if lines else ""
        verb, _, rest = line.partition(" ")
        rest = rest.strip()
        items = self._items(db)
        cart: dict[str, int] = acct["cart"]

        def go(new: dict[str, Any]) -> str:
            history.append(dict(page))
            page.clear()
            page.update(new)
            return self._render(page, items, cart, day)

        if verb == "search":
            words = search_words(rest)
            if not words:
                return (
                    "search needs words like a color, material, size or category, e.g. search blue shirt.",
                    cfg.search_cost,
                    False,
                    True,
                )
            return go({"kind": "results", "query": words}), cfg.search_cost, False, False
        cost = cfg.checkout_cost if verb == "checkout" else cfg.page_cost
        if not line:
            return f"empty action. {HELP}", cost, False, True
        if verb == "open":
            if rest not in items:
                return (
                    f"no item {clip(rest, 12) or 'id'}. open an id from the results.",
                    cost,
                    False,
                    True,
                )
            return go({"kind": "item", "id": rest}), cost, False, False
        if verb == "add":
            if page["kind"] != "item":
                return "open an item first, then add <n>.", cost, False, True
            if not (rest.isdigit() and 1 <= int(rest) <= 9):
                return "add needs a quantity from 1 to 9, e.g. add 2.", cost, False, True
            item = items[page["id"]]
            have = cart.get(item["id"], 0)
            if have + int(rest) > item["stock"]:
                return self._short(item, have, day), cost, False, True
            cart[item["id"]] = have + int(rest)
            total = sum(n * items[i]["price"] for i, n in cart.items())
            return (
                f"added {rest} x {item['id']} to cart. cart total {total} dollars.",
                cost,
                False,
                False,
            )
        if verb == "remove":
            if rest not in cart:
                return (
                    f"{clip(rest, 12) or 'that'} is not in the cart. remove <id> of a cart item.",
                    cost,
                    False,
                    True,
                )
            del cart[rest]
            return f"removed {rest} from cart.", cost, False, False
        if verb == "cart" and not rest:
            return go({"kind": "cart"}), cost, False, False
        if verb == "checkout" and not rest:
            if not cart:
                return "cart is empty, add an item first.", cost, False, True
            for item_id, n in cart.items():
                if n > items[item_id]["stock"]:
                    short = self._short(items[item_id], 0, day)
                    return f"order failed: {short}", cost, False, True
            placed = self._checkout(db, acct, items, session, day)
            history.clear()
            page.clear()
            page["kind"] = "home"
            return placed, cost, True, False
        if verb == "back" and not rest:
            if not history:
                return "already on the home page. search <words> to find items.", cost, False, True
            page.clear()
            page.update(history.pop())
            return self._render(page, items, cart, day), cost, False, False
        return f"unknown action. {HELP}", cost, False, True

    def _short(self, item: dict[str, Any], have: int, day: int) -> str:
        restock = next_restock(item, day, self.supplier)
        if item["stock"] == 0:
            return f"{item['id']} is out of stock until day {restock}."
        in_cart = f", {have} already in the cart" if have else ""
        return f"only {item['stock']} of {item['id']} in stock{in_cart}; more on day {restock}."

    def _render(
        self, page: dict[str, Any], items: dict[str, dict[str, Any]], cart: dict[str, int], day: int
    ) -> str:
        layout = layout_of_week(self.seed, week_of(day))
        if page["kind"] == "home":
            return "home page. search <words> to find items."
        if page["kind"] == "item":
            item = items[page["id"]]
            if item["stock"]:
                note = f", {item['stock']} in stock"
            else:
                note = f", out of stock until day {next_restock(item, day, self.supplier)}"
            return item_page(item, layout, note)
        if page["kind"] == "cart":
            return cart_page(cart, items, layout)
        hits = [item for item in items.values() if set(page["query"]) <= item_words(item)]
        return results_page(page["query"], hits, layout)

    def _checkout(
        self,
        db: sqlite3.Connection,
        acct: dict[str, Any],
        items: dict[str, dict[str, Any]],
        session: str | None,
        day: int,
    ) -> str:
        """Place the cart as an order at today's prices, take it from stock, empty the cart."""
        cart: dict[str, int] = acct["cart"]
        lines = [
            {**public_item(items[i]), "quantity": n, "price": items[i]["price"]}
            for i, n in cart.items()
        ]
        total = sum(line["quantity"] * line["price"] for line in lines)
        for line in lines:
            db.execute(
                "UPDATE items SET stock = stock - ? WHERE id = ?", (line["quantity"], line["id"])
            )
        cursor = db.execute(
            "INSERT INTO orders (account, session, day, time, lines, total) VALUES (?, ?, ?, ?, ?, ?)",
            (acct["id"], session, day, self.clock(), json.dumps(lines), total),
        )
        placed = ", ".join(f"{n} x {i}" for i, n in cart.items())
        acct["ordered"] += total
        cart.clear()
        return f"order placed: {placed}. order {cursor.lastrowid}, total {total} dollars."

    # ------------------------------------------------------------------ the world clock

    def advance(self, days: int = 1) -> int:
        """Move the world clock `days` days on: each day restocks due items and reprices all; returns the new day."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_ADVANCE_DAYS:
            raise ValueError(f"days must be an int from 1 to {MAX_ADVANCE_DAYS}, got {days!r}")
        with self._transaction() as db:
            day = int(self._meta()["day"])
            items = list(self._items(db).values())
            for _ in range(days):
                day += 1
                for item in items:
                    item["price"] = price_on(self.seed, item, day, self.supplier)
                    if restocks_on(item, day, self.supplier):
                        item["stock"] = item["capacity"]
            db.executemany("UPDATE items SET price = :price, stock = :stock WHERE id = :id", items)
            db.execute("UPDATE meta SET value = ? WHERE key = 'day'", (json.dumps(day),))
        return day

    def reset(self, *args: object, **kwargs: object) -> None:
        raise NotLive(
            "this is a live service: it has no reset; its state persists and changes over time"
        )

    # ------------------------------------------------------------------ reading

    def state(self, account: str | None = None) -> dict[str, Any]:
        """The public state: day, week, catalogue (price, stock), orders and accounts (of `account` if given)."""
        if account is not None:
            _check_account(account)
        with self._lock:
            meta = self._meta()
            day = int(meta["day"])
            catalogue = [
                {**public_item(item), "price": item["price"], "stock": item["stock"]}
                for item in self._items(self._db).values()
            ]
            where, params = ("WHERE account = ?", (account,)) if account else ("", ())
            orders = [
                {
                    "id": row[0],
                    "account": row[1],
                    "session": row[2],
                    "day": row[3],
                    "time": row[4],
                    "lines": json.loads(row[5]),
                    "total": row[6],
                }
                for row in self._db.execute(
                    f"SELECT id, account, session, day, time, lines, total FROM orders {where} ORDER BY id",
                    params,
                )
            ]
            accounts = {}
            for row in self._db.execute(
                f"SELECT id, actions, spent, ordered, throttled_until, banned_until FROM accounts {where.replace('account', 'id')} ORDER BY id",
                params,
            ):
                accounts[row[0]] = dict(
                    zip(
                        ("actions", "spent", "ordered", "throttled_until", "banned_until"),
                        row[1:],
                        strict=True,
                    )
                )
            last_order = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM orders").fetchone()[0]
            transitions = self._db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
        return {
            "seed": self.seed,
            "day": day,
            "week": week_of(day),
            "catalogue": catalogue,
            "orders": orders,
            "last_order": last_order,
            "accounts": accounts,
            "transitions": transitions,
        }

    def transitions(
        self, account: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Logged transitions with id > after, oldest first (of `account` if given)."""
        if account is not None:
            _check_account(account)
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be 1 to 10000, got {limit}")
        sql = "SELECT id, time, day, account, session, action, observation, cost, status FROM transitions WHERE id > ?"
        params: list[Any] = [after]
        if account is not None:
            sql += " AND account = ?"
            params.append(account)
        names = "id time day account session action observation cost status".split()
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id LIMIT ?", [*params, limit]).fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]


def _check_account(account: object) -> None:
    if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account):
        shown = account[:40] if isinstance(account, str) else type(account).__name__
        raise ValueError(
            f"account must be 1 to 64 of a-z, 0-9, '.', '_', '-' starting with a letter or digit; got {shown!r}"
        )


def _check_input(account: object, action: object, session: object) -> None:
    _check_account(account)
    if not isinstance(action, str):
        raise ValueError(f"action must be a string, got {type(action).__name__}")
    if len(action) > MAX_ACTION_CHARS:
        raise ValueError(
            f"action too long: {len(action)} characters, at most {MAX_ACTION_CHARS}; send one action line"
        )
    if session is not None and (
        not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session)
    ):
        raise ValueError("session must be 1 to 128 of letters, digits, '.', '_', ':', '-', or null")


# ---------------------------------------------------------------------- HTTP


class ActRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    account: str
    action: str
    session: str | None = None


class AdvanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    days: int = 1


def _error(status: int, kind: str, message: str, retry_after: float | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "kind": kind}
    headers = None
    if retry_after is not None:
        body["retry_after"] = round(retry_after, 3)
        headers = {"Retry-After": str(max(1, round(retry_after)))}
    return JSONResponse(status_code=status, content=body, headers=headers)


def make_app(shop: LiveShop) -> FastAPI:
    """The HTTP layer over `shop`: JSON in and out, every error a one-line message."""
    app = FastAPI(title="onthejob live supplier shop")

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(422, "invalid_request", "body is not valid JSON; send a JSON object")
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error(422, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400:  # FastAPI could not read the body at all (e.g. not UTF-8)
            return _error(400, "invalid_request", "body is not UTF-8 JSON; send a JSON object")
        return _error(error.status_code, "http", str(error.detail))

    @app.exception_handler(ValueError)
    async def refused_value(request: Request, error: ValueError) -> JSONResponse:
        return _error(422, "invalid_request", str(error))

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        return _error(error.status, error.kind, str(error), error.retry_after)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, error: StoreUnavailable) -> JSONResponse:
        return _error(503, "store_unavailable", str(error))

    @app.exception_handler(NotLive)
    async def not_live(request: Request, error: NotLive) -> JSONResponse:
        return _error(409, "not_supported", str(error))

    @app.post("/act")
    def act(request: ActRequest) -> dict[str, Any]:
        return asdict(shop.act(request.account, request.action, request.session))

    @app.get("/state")
    def state(account: str | None = None) -> dict[str, Any]:
        return shop.state(account)

    @app.post("/advance")
    def advance(request: AdvanceRequest | None = None) -> dict[str, Any]:
        return {"day": shop.advance(request.days if request is not None else 1)}

    @app.get("/transitions")
    def transitions(
        account: str | None = None, after: int = 0, limit: int = 1000
    ) -> dict[str, Any]:
        return {"transitions": shop.transitions(account, after, limit)}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "service": shop.config.name, "seed": shop.seed, "day": shop.day}

    @app.api_route("/reset", methods=["GET", "POST", "PUT", "DELETE"])
    @app.api_route("/snapshot", methods=["GET", "POST"])
    @app.api_route("/restore", methods=["POST", "PUT"])
    def no_reset() -> None:
        shop.reset()

    return app


@contextmanager
def serve_in_thread(shop: LiveShop, port: int = 0) -> Iterator[str]:
    """Serve `shop` on 127.0.0.1 from a background thread; yields the base URL."""
    with app_in_thread(make_app(shop), "127.0.0.1", port, name="live-shop") as url:
        yield url


def _settings(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """--set KEY=VALUE pairs split into SupplierConfig and ServiceConfig fields."""
    supplier_keys = {f.name for f in fields(SupplierConfig)}
    service_keys = {f.name for f in fields(ServiceConfig)}
    supplier: dict[str, Any] = {}
    service: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in supplier_keys | service_keys:
            valid = ", ".join(sorted(supplier_keys | service_keys))
            raise SystemExit(f"--set needs KEY=VALUE with KEY one of: {valid}; got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        (supplier if key in supplier_keys else service)[key] = value
    return supplier, service


def main(argv: list[str] | None = None) -> None:
    """`python -m onthejob.world.service --db shop.sqlite --port 0 --seed 7`: prints the URL, serves."""
    import argparse

    parser = argparse.ArgumentParser(description="run the live supplier shop on 127.0.0.1")
    parser.add_argument("--db", required=True, help="SQLite file of the shop (created if new)")
    parser.add_argument("--port", type=int, default=0, help="0 takes a free port")
    parser.add_argument("--seed", type=int, default=None, help="org seed (a new shop: default 0)")
    parser.add_argument("--store", default=None, help="experience store to log transitions to")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config field"
    )
    args = parser.parse_args(argv)
    supplier_values, service_values = _settings(args.set)
    try:
        supplier = SupplierConfig(**supplier_values)
        config = ServiceConfig(**service_values)
        store = None
        if args.store is not None:
            from onthejob.store import Store

            store = Store(args.store)
        shop = LiveShop(args.db, args.seed, supplier, config, store)
    except (ValueError, TypeError, OSError, sqlite3.Error) as error:
        raise SystemExit(f"live shop: {error}") from None
    try:
        serve_announced(make_app(shop), "127.0.0.1", args.port, lifespan="off")
    finally:
        shop.close()
        if store is not None:
            store.close()


if __name__ == "__main__":
    main()
