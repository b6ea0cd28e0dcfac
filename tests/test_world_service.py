"""world.service: the live supplier shop in-process, over HTTP, and as its own process."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from onthejob.envs.shop import LAYOUT, item_page, item_words, results_page
from onthejob.world.client import ServiceClient
from onthejob.world.org import ServiceTask, make_org
from onthejob.world.service import (
    Banned,
    LiveShop,
    NotLive,
    Refused,
    ServiceConfig,
    StoreUnavailable,
    Throttled,
    main,
    serve_in_thread,
)
from onthejob.world.supplier import DAYS_PER_WEEK, make_catalogue, next_restock
from tests.process_support import start_module


class Clock:
    """Wall time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Log:
    """A transition log that records calls, or fails on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = False

    def log_transition(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            raise OSError("disk full")
        self.calls.append(args)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(tmp_path: Path, clock: Clock) -> Iterator[LiveShop]:
    with LiveShop(tmp_path / "shop.sqlite", seed=7, clock=clock) as live:
        yield live


def fits(task: ServiceTask, item: dict[str, Any]) -> bool:
    return all(item[k] == v for k, v in task.goal.items()) and item["price"] <= task.budget


def place(shop: LiveShop | ServiceClient, account: str, item_id: str, n: int) -> str:
    for action in (f"open {item_id}", f"add {n}"):
        shop.act(account, action)
    return shop.act(account, "checkout").observation


# ---------------------------------------------------------------------- pages and costs


def test_week_zero_pages_read_like_the_clone_and_actions_cost(shop: LiveShop) -> None:
    items = {item["id"]: item for item in shop.state()["catalogue"]}
    first = next(iter(items.values()))
    words = [first["color"], first["category"]]
    result = shop.act("acme-7-priya", f"search {first['color']} {first['category']}s")
    hits = [item for item in items.values() if set(words) <= item_words(item)]
    assert result.observation == results_page(words, hits, LAYOUT)
    assert (result.cost, result.spent, result.done, result.day) == (3, 3, False, 0)
    opened = shop.act("acme-7-priya", f"open {first['id']}")
    expected = item_page(first, LAYOUT, f", {first['stock']} in stock")
    assert opened.observation == expected and (opened.cost, opened.spent) == (1, 4)
    assert shop.act("acme-7-priya", "fly away").observation.startswith("unknown action.")
    assert shop.state()["accounts"]["acme-7-priya"]["spent"] == 5


def test_order_from_actions_is_in_the_state_and_passes_the_task_checker(
    shop: LiveShop,
) -> None:
    org = make_org(7)
    state = shop.state()
    task = next(
        t for t in org.tasks(0, 0, catalogue=state["catalogue"]) if isinstance(t, ServiceTask)
    )
    target = next(item for item in state["catalogue"] if fits(task, item))
    since = state["last_order"]
    assert not task.check(shop.state(), since).success
    placed = place(shop, task.account, target["id"], task.quantity)
    assert placed.startswith(f"order placed: {task.quantity} x {target['id']}. order 1, total")
    after = shop.state()
    (order,) = after["orders"]
    assert order["account"] == task.account and order["lines"][0]["quantity"] == task.quantity
    stock = next(i["stock"] for i in after["catalogue"] if i["id"] == target["id"])
    assert stock == target["stock"] - task.quantity
    assert task.check(after, since).success
    # one more order from the account: the orders since the task began are no longer the ask
    other = next(i for i in after["catalogue"] if i["stock"] and i["id"] != target["id"])
    assert "order placed" in place(shop, task.account, other["id"], 1)
    assert not task.check(shop.state(), since).success


# ---------------------------------------------------------------------- no reset, persistence


def test_no_reset_and_state_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "shop.sqlite"
    with LiveShop(path, seed=7, clock=clock) as shop:
        item = shop.state()["catalogue"][0]
        shop.act("a1", f"open {item['id']}", session="s1")
        shop.act("a1", "add 1", session="s1")
        shop.advance(2)
        with pytest.raises(NotLive, match="live service"):
            shop.reset()
        assert not (shop.resettable or shop.replicable or shop.stationary)
    with LiveShop(path, clock=clock) as shop:
        assert shop.seed == 7 and shop.day == 2
        assert shop.act("a1", "cart").observation.startswith(f"cart:\n1 x {item['id']} ")
        assert shop.act("a1", "back", session="s1").observation.startswith("home page")
    with pytest.raises(ValueError, match="seed 7, not 8"):
        LiveShop(path, seed=8)


# ---------------------------------------------------------------------- drift


def test_stock_runs_out_and_restocks_on_schedule(shop: LiveShop) -> None:
    item = shop.state()["catalogue"][0]
    assert "order placed" in place(shop, "a1", item["id"], item["stock"])
    opened = shop.act("b2", f"open {item['id']}").observation
    full = next(i for i in make_catalogue(7, shop.supplier) if i["id"] == item["id"])
    restock = next_restock(full, 0, shop.supplier)
    assert f"out of stock until day {restock}" in opened
    assert (
        shop.act("b2", "add 1").observation == f"{item['id']} is out of stock until day {restock}."
    )
    shop.advance(restock - 1)
    assert _stock(shop, item["id"]) == 0
    shop.advance(1)
    assert _stock(shop, item["id"]) == item["stock"]


def test_checkout_fails_when_someone_else_bought_the_stock_first(shop: LiveShop) -> None:
    item = shop.state()["catalogue"][1]
    shop.act("slow", f"open {item['id']}")
    shop.act("slow", f"add {item['stock']}")
    place(shop, "fast", item["id"], 1)
    failed = shop.act("slow", "checkout")
    assert failed.observation.startswith(f"order failed: only {item['stock'] - 1} of {item['id']}")
    assert not failed.done and len(shop.state()["orders"]) == 1


def test_prices_and_layout_drift_with_the_world_clock(shop: LiveShop) -> None:
    before = {i["id"]: i["price"] for i in shop.state()["catalogue"]}
    item = shop.state()["catalogue"][2]
    page0 = shop.act("a1", f"open {item['id']}").observation
    assert shop.advance(1) == 1
    after = {i["id"]: i["price"] for i in shop.state()["catalogue"]}
    assert sum(before[i] != after[i] for i in before) > len(before) // 3
    assert shop.advance(DAYS_PER_WEEK - 1) == DAYS_PER_WEEK
    assert shop.state()["week"] == 1
    page1 = shop.act("a1", f"open {item['id']}").observation
    assert page1.split(":")[0] == page0.split(":")[0]  # same item
    assert page1 != item_page(
        {**item, "price": _price(shop, item["id"])}, LAYOUT, f", {item['stock']} in stock"
    )
    with pytest.raises(ValueError, match="days must be"):
        shop.advance(0)


def test_drift_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    states = []
    for name in ("a", "b"):
        with LiveShop(tmp_path / f"{name}.sqlite", seed=3) as shop:
            shop.advance(4)
            states.append(shop.state()["catalogue"])
    assert states[0] == states[1]
    with LiveShop(tmp_path / "c.sqlite", seed=4) as other:
        other.advance(4)
        assert other.state()["catalogue"] != states[0]


# ---------------------------------------------------------------------- bots


def test_too_many_requests_throttle_then_ban_and_the_ban_persists(
    tmp_path: Path, clock: Clock
) -> None:
    config = ServiceConfig(max_actions=5, window_s=10, throttle_s=30, offences_to_ban=2, ban_s=600)
    path = tmp_path / "shop.sqlite"
    with LiveShop(path, seed=1, config=config, clock=clock) as shop:
        for _ in range(5):
            clock.now += 1
            shop.act("polite", "cart")
        clock.now += 11  # a new window: the polite account never trips
        for _ in range(5):
            shop.act("polite", "cart")
        for _ in range(5):
            shop.act("bot", "cart")
        with pytest.raises(Throttled, match="more than 5 actions in 10 seconds") as throttled:
            shop.act("bot", "cart")
        assert throttled.value.retry_after == 30
        clock.now += 5
        with pytest.raises(Banned, match="banned for 600 seconds"):
            shop.act("bot", "cart")
    with LiveShop(path, config=config, clock=clock) as shop:
        clock.now += 100
        with pytest.raises(Banned, match="more seconds"):
            shop.act("bot", "cart")
        clock.now += 600
        assert shop.act("bot", "cart").observation == "cart is empty."
        assert shop.act("polite", "cart").observation == "cart is empty."


def test_the_same_failing_action_over_and_over_is_throttled(shop: LiveShop, clock: Clock) -> None:
    for _ in range(3):
        clock.now += 2
        shop.act("a1", "open p1")
    clock.now += 2
    with pytest.raises(Throttled, match="same failing action 4 times"):
        shop.act("a1", "open p1")
    for _ in range(3):  # different failures, or a success in between, do not add up
        clock.now += 40
        shop.act("b2", "open p1")
        shop.act("b2", "open p2")
        shop.act("b2", "cart")


# ---------------------------------------------------------------------- transitions


def test_every_action_is_logged_here_and_in_the_store(tmp_path: Path, clock: Clock) -> None:
    store_module = pytest.importorskip("onthejob.store")
    store = store_module.Store(tmp_path / "store.sqlite")
    config = ServiceConfig(max_actions=6, offences_to_ban=2)
    sent = ["search blue shirt", "open p1", "cart", "back", "dance", "search mugs", "cart", "cart"]
    with LiveShop(
        tmp_path / "shop.sqlite", seed=2, config=config, store=store, clock=clock
    ) as shop:
        for action in sent:
            with contextlib.suppress(Refused):
                shop.act("acme-2-omar", action, session="sess-1")
        own = shop.transitions()
        assert [t["action"] for t in own] == sent
        assert [t["status"] for t in own] == [200] * 6 + [429, 403]
        assert shop.state()["transitions"] == len(sent)
        logged = store.transitions("supplier")
        assert [t.action for t in logged] == sent
        assert [t.observation for t in logged] == [t["observation"] for t in own]
        assert [t.cost for t in logged] == [t["cost"] for t in own]
        assert {t.session for t in logged} == {"sess-1"} and logged[0].state["status"] == 200
    store.close()


def test_a_failing_store_rolls_the_action_back(tmp_path: Path) -> None:
    log = Log()
    with LiveShop(tmp_path / "shop.sqlite", seed=2, store=log) as shop:
        item = shop.state()["catalogue"][0]
        shop.act("a1", f"open {item['id']}")
        log.fail = True
        with pytest.raises(StoreUnavailable, match="disk full"):
            shop.act("a1", "add 1")
        log.fail = False
        assert shop.act("a1", "cart").observation == "cart is empty."
        assert len(shop.transitions()) == len(log.calls) == 2


# ---------------------------------------------------------------------- HTTP


@pytest.fixture
def served(shop: LiveShop) -> Iterator[tuple[str, ServiceClient]]:
    with serve_in_thread(shop) as url, ServiceClient(url) as client:
        yield url, client


def test_http_act_state_advance_and_the_client(served: tuple[str, ServiceClient]) -> None:
    url, client = served
    assert client.health() == {"ok": True, "service": "supplier", "seed": 7, "day": 0}
    result = client.act("acme-7-lena", "search red", session="chat-1")
    assert result.observation.startswith("results for red:") and result.cost == 3
    assert client.advance(2) == 2 and client.state()["day"] == 2
    assert client.act("acme-7-lena", "cart").day == 2
    assert len(client.transitions(account="acme-7-lena")) == 2
    assert client.state(account="nobody")["accounts"] == {}
    with pytest.raises(NotLive):
        client._call("POST", "/reset")


BAD = [
    (b"{", 422, "not valid JSON"),
    (b'{"account": "a", "action": "\xff"}', 400, "UTF-8"),
    (b"[]", 422, "dictionary"),
    (b'{"account": 3, "action": "cart"}', 422, "account"),
    (b'{"account": "a", "action": ["cart"]}', 422, "action"),
    (b'{"account": "Mr X", "action": "cart"}', 422, "account must be"),
    (b'{"account": "a", "action": "cart", "session": "a b"}', 422, "session must be"),
    (b'{"account": "a", "action": "cart", "admin": true}', 422, "Extra inputs"),
    (b'{"account": "a", "action": "' + b"x" * 300 + b'"}', 422, "too long"),
    (b"x" * 20_000, 413, "over 16384 bytes"),
]


def test_bad_input_is_a_clear_4xx_and_writes_nothing(served: tuple[str, ServiceClient]) -> None:
    url, client = served
    with httpx.Client(base_url=url) as http:
        for body, status, message in BAD:
            response = http.post("/act", content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (body[:40], response.text)
            assert message in response.json()["error"] and "\n" not in response.json()["error"]
        for method in ("POST", "GET", "DELETE"):
            response = http.request(method, "/reset")
            assert response.status_code == 409 and "live service" in response.json()["error"]
        assert http.post("/advance", json={"days": "1"}).status_code == 422
        assert http.post("/advance", json={"days": 10_000}).status_code == 422
        assert http.get("/transitions", params={"limit": 0}).status_code == 422
    assert client.state()["transitions"] == 0 and client.state()["accounts"] == {}
    with pytest.raises(ValueError, match="account must be"):
        client.act("Mr X", "cart")


def test_http_429_then_403_with_retry_after(tmp_path: Path, clock: Clock) -> None:
    config = ServiceConfig(max_actions=3, offences_to_ban=2)
    with (
        LiveShop(tmp_path / "s.sqlite", seed=1, config=config, clock=clock) as shop,
        serve_in_thread(shop) as url,
        httpx.Client(base_url=url) as http,
    ):
        codes = [http.post("/act", json={"account": "bot", "action": "cart"}) for _ in range(5)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 403]
        assert codes[3].headers["retry-after"] == "30" and codes[3].json()["kind"] == "throttled"
        assert codes[4].json()["kind"] == "banned" and "banned for 600" in codes[4].json()["error"]


# ---------------------------------------------------------------------- its own process


def start(db: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    return start_module(
        "onthejob.world.service", "--db", str(db), "--port", "0", *args, ready_path="/health"
    )


def test_a_real_process_keeps_its_state_across_a_kill_and_restart(tmp_path: Path) -> None:
    db, store_path = tmp_path / "shop.sqlite", tmp_path / "store.sqlite"
    store_args = ["--store", str(store_path)] if _has_store() else []
    process, url = start(db, "--seed", "5", *store_args)
    try:
        with ServiceClient(url) as client:
            item = client.state()["catalogue"][0]
            assert "order placed" in place(client, "acme-5-kai", item["id"], 1)
            client.act("acme-5-kai", f"open {item['id']}")
            client.act("acme-5-kai", "add 1")
            assert client.advance(1) == 1
            before = client.state()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    process, url = start(db, *store_args)
    try:
        with ServiceClient(url) as client:
            after = client.state()
            assert after["day"] == 1 and after["seed"] == 5
            assert after["orders"] == before["orders"] and after["catalogue"] == before["catalogue"]
            assert client.act("acme-5-kai", "cart").observation.startswith(
                f"cart:\n1 x {item['id']}"
            )
            assert client.state()["transitions"] == 6
    finally:
        process.terminate()
        process.wait(10)
    # SIGTERM is a clean stop: the process closes its databases and exits 0, so SQLite
    # folds its write-ahead logs back into the files and removes them
    assert process.returncode == 0, process.communicate()[1][-500:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(("-wal", "-shm"))]
    assert leftovers == []
    if store_args:
        from onthejob.store import Store

        with Store(store_path) as store:
            assert len(store.transitions("supplier")) == 6


def test_the_command_refuses_another_seed_or_a_bad_setting(tmp_path: Path) -> None:
    db = tmp_path / "shop.sqlite"
    LiveShop(db, seed=5).close()
    for args, message in (
        (["--seed", "6"], "seed 5, not 6"),
        (["--set", "max_actions=0"], "max_actions must be at least 1"),
        (["--set", "nonsense=1"], "KEY one of"),
    ):
        with pytest.raises(SystemExit, match=message):
            main(["--db", str(db), *args])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}: "):
            main(["--db", str(db), "--port", str(port)])


# ---------------------------------------------------------------------- helpers


def _stock(shop: LiveShop, item_id: str) -> int:
    return next(int(i["stock"]) for i in shop.state()["catalogue"] if i["id"] == item_id)


def _price(shop: LiveShop, item_id: str) -> int:
    return next(int(i["price"]) for i in shop.state()["catalogue"] if i["id"] == item_id)


def _has_store() -> bool:
    try:
        from onthejob.store import Store  # noqa: F401
    except ImportError:
        return False
    return True
