"""`shop`: buy the right item in a small text web shop.

Covers: a catalogue generated from the task's seed (shirts, jackets, hats, mugs, lamps and
bags with a color, a material, a size and a price; ids like "p317"), a goal such as
"buy 2 blue cotton shirts in size m, at most 30 dollars each.", and pages the agent moves
through with one-line actions:

    search <words>   results: id, name, size and price of each matching item
    open <id>        the item's page
    add <n>          put n of the open item in the cart (1 to 9)
    remove <id>      take an item out of the cart
    cart             the cart page
    checkout         place the order and end the episode
    back             the previous page

The catalogue always holds exactly one item that meets the goal, plus near misses that
meet all but one constraint (another color, material or size, or over budget), some of
which the goal's own search words find. The reward is 1.0 iff the placed order is the
asked quantity of items that meet every constraint, judged from the env's cart, never
from what the agent writes. A step budget truncates the episode with reward 0.

Difficulty: 1 states color and category (quantity 1, 12 items); 2 adds the material
(quantity up to 3, 20 items); 3 adds the size (30 items, more near misses).

Does not cover: pagination, sorting, reviews, accounts, or a shop that changes while the
agent works (the live, non-resettable service is `onthejob.world`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from onthejob.envs.base import Task, TextEnv, clip, make_task

CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "shirt": (("cotton", "wool", "linen"), ("s", "m", "l", "xl")),
    "jacket": (("wool", "leather", "denim"), ("s", "m", "l", "xl")),
    "hat": (("wool", "cotton", "straw"), ("s", "m", "l")),
    "mug": (("ceramic", "glass", "steel"), ("small", "large")),
    "lamp": (("metal", "wood", "glass"), ("small", "large")),
    "bag": (("leather", "canvas", "nylon"), ("small", "large")),
}
"""category -> (materials, sizes)."""
COLORS = ("red", "blue", "green", "black", "white", "gray")
VOCABULARY = (
    set(CATEGORIES)
    | set(COLORS)
    | {m for materials, _ in CATEGORIES.values() for m in materials}
    | {s for _, sizes in CATEGORIES.values() for s in sizes}
)
PAGE_SIZE = 5
"""Most results a search page lists; the goal's own search words always fit on one page."""
MAX_ACTION_CHARS = 200
"""Longer action lines are refused."""
PUNCTUATION = ".,;:!?'\"()"
"""Stripped from the ends of search words."""
HELP = "actions: search <words>, open <id>, add <n>, remove <id>, cart, checkout, back."


@dataclass(frozen=True)
class Level:
    """What one difficulty level states and how crowded the shop is."""

    stated: tuple[str, ...]
    """Attributes the goal states besides category and color (and the budget)."""
    max_quantity: int
    """Largest quantity the goal asks for."""
    items: int
    """Items in the catalogue."""
    near_misses: int
    """Items that meet all constraints but one."""


LEVELS = {
    1: Level(stated=(), max_quantity=1, items=12, near_misses=4),
    2: Level(stated=("material",), max_quantity=3, items=20, near_misses=6),
    3: Level(stated=("material", "size"), max_quantity=3, items=30, near_misses=9),
}


@dataclass(frozen=True)
class ShopConfig:
    """Configuration of the shop env."""

    difficulty: int = 2
    """1: color and category; 2: adds material and quantity; 3: adds size and more near misses."""
    max_steps: int = 8
    """Actions per episode before truncation (the expert needs 4)."""

    def __post_init__(self) -> None:
        if self.difficulty not in LEVELS:
            raise ValueError(
                f"shop difficulty must be one of {sorted(LEVELS)}, got {self.difficulty}"
            )
        if self.max_steps < 1:
            raise ValueError(f"shop max_steps must be at least 1, got {self.max_steps}")


def item_name(item: dict[str, Any]) -> str:
    return f"{item['color']} {item['material']} {item['category']}"


def item_words(item: dict[str, Any]) -> set[str]:
    return {item["category"], item["color"], item["material"], item["size"]}


def normalize(word: str) -> str:
    """A search word in the shop's vocabulary form ("shirts" -> "shirt"); unknown words unchanged."""
    if word not in VOCABULARY and word.endswith("s") and word[:-1] in VOCABULARY:
        return word[:-1]
    return word


def mismatch(item: dict[str, Any], goal: dict[str, str], budget: int) -> str | None:
    """Why `item` does not meet the goal, or None if it does."""
    for attribute, wanted in goal.items():
        if item[attribute] != wanted:
            return f"{item['id']} is {item[attribute]}, wanted {wanted}"
    if item["price"] > budget:
        return f"{item['id']} costs {item['price']} dollars, over {budget}"
    return None


# ---------------------------------------------------------------------- pages
# Public so that the live supplier (`onthejob.world.service`) writes the same pages; it
# passes other layouts to change them between weeks, the clone always uses LAYOUT.


@dataclass(frozen=True)
class Layout:
    """How a page writes an item after its id: which fields, in what order, with what labels."""

    fields: tuple[str, ...] = ("name", "size", "price")
    """Order of the fields; each of "name", "size", "price" once."""
    size: str = "size {}"
    """Label of the size, {} is the value."""
    price: str = "{} dollars"
    """Label of the price, {} is the value."""


LAYOUT = Layout()
"""The clone's layout."""


def describe(item: dict[str, Any], layout: Layout = LAYOUT) -> str:
    """The item's fields as a page writes them, e.g. "blue cotton shirt, size m, 24 dollars"."""
    parts = {
        "name": item_name(item),
        "size": layout.size.format(item["size"]),
        "price": layout.price.format(item["price"]),
    }
    return ", ".join(parts[field] for field in layout.fields)


def results_page(words: list[str], hits: list[dict[str, Any]], layout: Layout = LAYOUT) -> str:
    """The search results page for `words` given every matching item, at most PAGE_SIZE shown."""
    query = " ".join(words)
    if not hits:
        return f"no results for {query}. try fewer words."
    shown = hits[:PAGE_SIZE]
    lines = [f"{item['id']} {describe(item, layout)}" for item in shown]
    more = len(hits) - len(shown)
    if more:
        lines.append(f"{more} more, add words to narrow.")
    return f"results for {query}:\n" + "\n".join(lines)


def item_page(item: dict[str, Any], layout: Layout = LAYOUT, note: str = "") -> str:
    """The item's page; `note` (e.g. ", 3 in stock") follows its fields."""
    return f"item {item['id']}: {describe(item, layout)}{note}.\nadd <n> to buy, back to return."


def cart_page(
    cart: dict[str, int], items: dict[str, dict[str, Any]], layout: Layout = LAYOUT
) -> str:
    """The cart page: one line per item id -> quantity, and the total at current prices."""
    if not cart:
        return "cart is empty."
    lines = [f"{n} x {i} {describe(items[i], layout)} each" for i, n in cart.items()]
    total = sum(n * items[i]["price"] for i, n in cart.items())
    return "cart:\n" + "\n".join(lines) + f"\ntotal {total} dollars."


def search_words(text: str) -> list[str]:
    """The distinct known words of a search, in the shop's vocabulary form, punctuation
    around words ignored ("shirts," -> "shirt"); may be empty."""
    words = [normalize(w.strip(PUNCTUATION)) for w in text.split()]
    return [w for w in dict.fromkeys(words) if w in VOCABULARY]


def request_text(quantity: int, goal: dict[str, str], budget: int) -> str:
    """The goal as a user says it, e.g. "buy 2 blue cotton shirts in size m, at most 30 dollars each."."""
    plural = "s" if quantity > 1 else ""
    material = f" {goal['material']}" if "material" in goal else ""
    size = f" in size {goal['size']}" if "size" in goal else ""
    return f"buy {quantity} {goal['color']}{material} {goal['category']}{plural}{size}, at most {budget} dollars each."


def random_item(rng: random.Random) -> dict[str, Any]:
    category = rng.choice(sorted(CATEGORIES))
    materials, sizes = CATEGORIES[category]
    """An item of a random category with random attributes and price (no id)."""
    return {
        "category": category,
        "color": rng.choice(COLORS),
        "material": rng.choice(materials),
        "size": rng.choice(sizes),
        "price": rng.randint(8, 45),
    }


def _near_miss(
    rng: random.Random, target: dict[str, Any], level: Level, budget: int
) -> dict[str, Any]:
    """A copy of the target that breaks exactly one stated constraint."""
    item = dict(target)
    materials, sizes = CATEGORIES[item["category"]]
    if "material" not in level.stated:
        item["material"] = rng.choice(materials)
    if "size" not in level.stated:
        item["size"] = rng.choice(sizes)
    item["price"] = rng.randint(8, budget)
    broken = rng.choice(["price", "price", "color", *level.stated])
    if broken == "price":
        item["price"] = budget + rng.randint(1, 15)
    elif broken == "color":
        item["color"] = rng.choice([c for c in COLORS if c != target["color"]])
    else:
        values = materials if broken == "material" else sizes
        item[broken] = rng.choice([v for v in values if v != target[broken]])
    return item


class ShopEnv(TextEnv[ShopConfig]):
    """Search, open, add to cart and check out the one item that meets the goal."""

    name: ClassVar[str] = "shop"
    config_type = ShopConfig
    out_of_budget: ClassVar[str] = "out of steps, no order placed."

    @classmethod
    def sample_task(cls, rng: random.Random, config: ShopConfig) -> Task:
        level = LEVELS[config.difficulty]
        target = random_item(rng)
        target["price"] = rng.randint(8, 40)
        budget = 5 * -(-(target["price"] + rng.randint(0, 6)) // 5)  # round up to a multiple of 5
        quantity = rng.randint(1, level.max_quantity)
        goal = {"category": target["category"], "color": target["color"]}
        goal.update({attribute: target[attribute] for attribute in level.stated})
        query = [
            target["color"],
            *([target["material"]] if "material" in level.stated else []),
            target["category"],
        ]

        items = [target]
        found = 1  # items the goal's search words find: at most PAGE_SIZE
        for attempt in range(20 * level.items):
            if len(items) == level.items:
                break
            if attempt < 3 * level.near_misses and len(items) <= level.near_misses:
                item = _near_miss(rng, target, level, budget)
            else:
                item = random_item(rng)
            hit = set(query) <= item_words(item)
            if mismatch({**item, "id": ""}, goal, budget) is None or (hit and found == PAGE_SIZE):
                continue
            found += hit
            items.append(item)
        rng.shuffle(items)
        for item, number in zip(
            items, sorted(rng.sample(range(100, 1000), len(items))), strict=True
        ):
            item["id"] = f"p{number}"
        catalogue = [
            {key: item[key] for key in ("id", "category", "color", "material", "size", "price")}
            for item in items
        ]

        request = request_text(quantity, goal, budget)
        data = {
            "goal": goal,
            "budget": budget,
            "quantity": quantity,
            "target": target["id"],
            "query": " ".join(query),
            "catalogue": catalogue,
        }
        return make_task(cls.name, request, f"{request}\n{HELP}", data)

    # ------------------------------------------------------------------ episode

    def _budget(self) -> int:
        return self.config.max_steps

    def _start(self) -> str:
        self._ep = {"page": {"kind": "home"}, "history": [], "cart": {}}
        return self.task.prompt

    def _items(self) -> dict[str, dict[str, Any]]:
        return {item["id"]: item for item in self.task.data["catalogue"]}

    def _go(self, page: dict[str, Any]) -> str:
        self._ep["history"].append(self._ep["page"])
        self._ep["page"] = page
        return self._render(page)

    def _render(self, page: dict[str, Any]) -> str:
        items = self._items()
        if page["kind"] == "home":
            return "home page. search <words> to find items."
        if page["kind"] == "item":
            return item_page(items[page["id"]])
        if page["kind"] == "cart":
            return cart_page(self._ep["cart"], items)
        hits = [item for item in items.values() if set(page["query"]) <= item_words(item)]
        if hits:  # what the page shows, for the expert
            page["ids"] = [item["id"] for item in hits[:PAGE_SIZE]]
        return results_page(page["query"], hits)

    def _act(self, action: str) -> tuple[str, float, bool]:
        lines = action.strip().lower().splitlines()
        line = lines[0].strip() if lines else ""
        verb, _, rest = line.partition(" ")
        rest = rest.strip()
        items = self._items()
        page = self._ep["page"]
        cart: dict[str, int] = self._ep["cart"]
        if not line:
            return f"empty action. {HELP}", 0.0, False
        if len(line) > MAX_ACTION_CHARS:
            return f"action too long, at most {MAX_ACTION_CHARS} characters. {HELP}", 0.0, False
        if verb == "search":
            known = search_words(rest)
            if not known:
                return (
                    "search needs words like a color, material, size or category, e.g. search blue shirt.",
                    0.0,
                    False,
                )
            return self._go({"kind": "results", "query": known}), 0.0, False
        if verb == "open":
            if rest not in items:
                return f"no item {clip(rest, 12) or 'id'}. open an id from the results.", 0.0, False
            return self._go({"kind": "item", "id": rest}), 0.0, False
        if verb == "add":
            if page["kind"] != "item":
                return "open an item first, then add <n>.", 0.0, False
            if not (rest.isdigit() and 1 <= int(rest) <= 9):
                return "add needs a quantity from 1 to 9, e.g. add 2.", 0.0, False
            cart[page["id"]] = cart.get(page["id"], 0) + int(rest)
            total = sum(n * items[i]["price"] for i, n in cart.items())
            return f"added {rest} x {page['id']} to cart. cart total {total} dollars.", 0.0, False
        if verb == "remove":
            if rest not in cart:
                return (
                    f"{clip(rest, 12) or 'that'} is not in the cart. remove <id> of a cart item.",
                    0.0,
                    False,
                )
            del cart[rest]
            return f"removed {rest} from cart.", 0.0, False
        if verb == "cart" and not rest:
            return self._go({"kind": "cart"}), 0.0, False
        if verb == "checkout" and not rest:
            if not cart:
                return "cart is empty, add an item first.", 0.0, False
            return self._checkout()
        if verb == "back" and not rest:
            if not self._ep["history"]:
                return "already on the home page. search <words> to find items.", 0.0, False
            self._ep["page"] = self._ep["history"].pop()
            return self._render(self._ep["page"]), 0.0, False
        return f"unknown action. {HELP}", 0.0, False

    def _checkout(self) -> tuple[str, float, bool]:
        data = self.task.data
        items = self._items()
        cart: dict[str, int] = self._ep["cart"]
        self._ep["order"] = dict(cart)
        placed = ", ".join(f"{n} x {i}" for i, n in cart.items())
        problems = [mismatch(items[i], data["goal"], data["budget"]) for i in cart]
        problem = next((p for p in problems if p is not None), None)
        quantity = sum(cart.values())
        if problem is None and quantity != data["quantity"]:
            problem = f"quantity {quantity}, wanted {data['quantity']}"
        if problem is None:
            return f"order placed: {placed}. order correct.", 1.0, True
        return f"order placed: {placed}. order wrong: {problem}.", 0.0, True

    def expert_action(self) -> str:
        data = self.task.data
        target, quantity = data["target"], data["quantity"]
        cart: dict[str, int] = self._ep["cart"]
        page = self._ep["page"]
        wrong = [i for i in cart if i != target]
        if wrong:
            return f"remove {wrong[0]}"
        have = cart.get(target, 0)
        if have > quantity:
            return f"remove {target}"
        if have == quantity:
            return "checkout"
        if page["kind"] == "item" and page["id"] == target:
            return f"add {quantity - have}"
        if page["kind"] == "results" and target in page.get("ids", []):
            return f"open {target}"
        return f"search {data['query']}"

    def _public_state(self) -> dict[str, Any]:
        return {
            "page": self._ep.get("page"),
            "cart": dict(self._ep.get("cart", {})),
            "order": self._ep.get("order"),
        }
