"""shop: catalogue and goal generation, pages and actions, and a reward judged from the order."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onthejob.envs import Task, make_env, make_tasks
from onthejob.envs.shop import LEVELS, PAGE_SIZE, item_words, mismatch, search_words


def first_task(difficulty: int = 2, quantity: int | None = None) -> Task:
    tasks = make_tasks("shop", "train", 30, seed=1, difficulty=difficulty)
    return next(t for t in tasks if quantity is None or t.data["quantity"] == quantity)


def goal_text(task: Task) -> str:
    return task.prompt.splitlines()[0]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_exactly_one_item_meets_the_goal_and_near_misses_surround_it(level: int) -> None:
    for task in make_tasks("shop", "train", 40, seed=level, difficulty=level):
        data = task.data
        catalogue = data["catalogue"]
        assert len(catalogue) == LEVELS[level].items
        assert len({item["id"] for item in catalogue}) == len(catalogue)
        fits = [
            item["id"] for item in catalogue if mismatch(item, data["goal"], data["budget"]) is None
        ]
        assert fits == [data["target"]]
        found = [item for item in catalogue if set(data["query"].split()) <= item_words(item)]
        assert data["target"] in {item["id"] for item in found} and len(found) <= PAGE_SIZE
        goal = goal_text(task)
        assert (
            goal.startswith(f"buy {data['quantity']} ")
            and f"at most {data['budget']} dollars" in goal
        )
        for value in data["goal"].values():
            assert re.search(rf"\b{value}s?\b", goal), (value, goal)
        assert set(data["goal"]) == {"category", "color", *LEVELS[level].stated}


def test_near_misses_appear_in_the_goals_own_search() -> None:
    tasks = make_tasks("shop", "train", 40, seed=0, difficulty=3)
    crowded = 0
    for task in tasks:
        query = set(task.data["query"].split())
        crowded += sum(query <= item_words(item) for item in task.data["catalogue"]) > 1
    assert crowded > 30  # most goals need the agent to read sizes and prices, not just search


def test_pages_and_actions() -> None:
    env = make_env("shop", max_steps=9)
    task = first_task(quantity=2)
    data = task.data
    target = data["target"]
    obs, _ = env.reset(task=task)
    assert obs == task.prompt and obs.endswith("cart, checkout, back.")
    obs, *_ = env.step(f"search {data['query']}s")  # plural words are understood
    assert obs.startswith(f"results for {data['query']}:") and f"\n{target} " in obs
    obs, *_ = env.step(f"OPEN {target.upper()}")
    assert obs.startswith(f"item {target}: ")
    obs, *_ = env.step("add 1")
    assert obs.startswith(f"added 1 x {target} to cart.")
    obs, *_ = env.step("cart")
    assert obs.startswith(f"cart:\n1 x {target} ") and "total" in obs
    obs, *_ = env.step("back")
    assert obs.startswith(f"item {target}: ")
    obs, *_ = env.step("back")
    assert obs.startswith("results for")
    assert env.state()["cart"] == {target: 1}
    obs, *_ = env.step(f"remove {target}")
    assert obs == f"removed {target} from cart." and env.state()["cart"] == {}
    obs, reward, terminated, truncated, info = env.step("checkout")
    assert obs == "cart is empty, add an item first." and not terminated
    obs, reward, terminated, truncated, info = env.step("back")
    assert truncated and obs.endswith("out of steps, no order placed.") and reward == 0.0


@pytest.mark.parametrize(
    ("action", "start"),
    [
        ("", "empty action."),
        ("dance", "unknown action."),
        ("search cheap things", "search needs words"),
        ("open p0", "no item p0."),
        ("add 2", "open an item first"),
        ("remove p1", "p1 is not in the cart."),
        ("back", "already on the home page."),
        ("checkout", "cart is empty"),
        ("search zzz\ncheckout", "search needs words"),  # only the first line counts
        ("search " + "blue " * 100, "action too long"),
    ],
)
def test_bad_actions_say_what_is_valid(action: str, start: str) -> None:
    env = make_env("shop")
    env.reset(task=first_task())
    obs, reward, terminated, truncated, _ = env.step(action)
    assert obs.startswith(start) and reward == 0.0 and not terminated and not truncated


def test_bad_quantity() -> None:
    env = make_env("shop")
    task = first_task()
    env.reset(task=task)
    env.step(f"open {task.data['target']}")
    for bad in ("add", "add 0", "add 10", "add two", "add -1"):
        obs, *_ = env.step(bad)
        assert obs == "add needs a quantity from 1 to 9, e.g. add 2."
    assert env.state()["cart"] == {}


def order(env_task: Task, lines: list[tuple[str, int]]) -> tuple[str, float]:
    env = make_env("shop", max_steps=20)
    env.reset(task=env_task)
    for item, n in lines:
        env.step(f"open {item}")
        env.step(f"add {n}")
    obs, reward, terminated, *_ = env.step("checkout")
    assert terminated
    return obs, reward


def test_reward_is_judged_from_the_order() -> None:
    task = first_task(quantity=2)
    data = task.data
    target = data["target"]
    assert order(task, [(target, 2)]) == (f"order placed: 2 x {target}. order correct.", 1.0)
    assert order(task, [(target, 1), (target, 1)])[1] == 1.0
    obs, reward = order(task, [(target, 1)])
    assert reward == 0.0 and obs.endswith("order wrong: quantity 1, wanted 2.")
    assert order(task, [(target, 3)])[1] == 0.0
    for item in data["catalogue"]:
        if item["id"] != target:
            obs, reward = order(task, [(item["id"], 2)])
            assert reward == 0.0 and "order wrong" in obs
            assert order(task, [(target, 2), (item["id"], 1)])[1] == 0.0
            break


def test_what_the_agent_claims_does_not_count() -> None:
    env = make_env("shop")
    env.reset(task=first_task())
    for claim in ("order placed. order correct.", "checkout p317", "reward 1", "done"):
        obs, reward, terminated, *_ = env.step(claim)
        assert reward == 0.0 and not terminated


def test_expert_recovers_from_a_wrong_cart() -> None:
    env = make_env("shop")
    task = first_task(quantity=2)
    wrong = next(item["id"] for item in task.data["catalogue"] if item["id"] != task.data["target"])
    env.reset(task=task)
    env.step(f"open {wrong}")
    env.step("add 3")
    assert env.expert_action() == f"remove {wrong}"
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(env.expert_action())
        total, done = total + reward, terminated or truncated
    assert total == 1.0


def test_expert_needs_four_steps_and_observations_are_lowercase() -> None:
    env = make_env("shop", difficulty=3)
    for task in make_tasks("shop", "test", 20, seed=0, difficulty=3):
        obs, _ = env.reset(task=task)
        actions, seen = [], [obs]
        done = False
        while not done:
            actions.append(env.expert_action())
            obs, reward, terminated, truncated, _ = env.step(actions[-1])
            seen.append(obs)
            done = terminated or truncated
        assert [a.split()[0] for a in actions] == [
            "search",
            "open",
            "add",
            "checkout",
        ] and reward == 1.0
        assert all(o == o.lower() for o in seen)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=9))
def test_random_actions_never_crash_nor_score(actions: list[str]) -> None:
    env = make_env("shop")
    env.reset(task=first_task())
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert obs and reward == 0.0 and not terminated
        if truncated:
            break


def test_search_ignores_punctuation_and_plurals() -> None:
    assert search_words("buy 2 blue shirts, in size m, at most 30 dollars each.") == [
        "blue",
        "shirt",
        "m",
    ]
