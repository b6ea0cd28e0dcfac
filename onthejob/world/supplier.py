"""The supplier's goods and how they drift: pure functions of (seed, day), no state, no I/O.

Covers: the catalogue of the live supplier shop, drawn from a seed with the grindable `shop`
clone's vocabulary (the same categories, colors, materials and sizes, the same "p317" ids);
how much of each item the supplier holds and on which days it restocks; the price of an
item on a given day; and the page layout of a given week. The live service
(`onthejob.world.service`) keeps stock and orders in SQLite and asks these functions for
everything else; the organisation (`onthejob.world.org`) asks them for goods to order when
it has no live state at hand.

Does not cover: stock levels after orders (that is state, kept by the service), costs,
throttling, or anything over HTTP.

Design decisions: a price is a function of (seed, item, day), not a random walk, so any
day's prices can be computed without replaying the days before it and prices stay near
the base price; day 0 shows the base price and week 0 the clone's own layout, so on its
first day the live shop reads exactly like the clone, and the drift starts from there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from onthejob.envs.shop import LAYOUT, Layout, random_item

DAYS_PER_WEEK = 5
"""Working days in a week of the world clock: day d belongs to week d // DAYS_PER_WEEK."""

LAYOUTS = (
    LAYOUT,
    Layout(fields=("name", "price", "size")),
    Layout(price="price {}"),
    Layout(fields=("price", "name", "size")),
    Layout(size="sized {}", price="{} usd"),
)
"""Layouts the live shop chooses from after week 0 (the first is the clone's)."""


@dataclass(frozen=True)
class SupplierConfig:
    """What the supplier sells and how fast it drifts."""

    items: int = 60
    """Items in the catalogue (at most 900: ids are p100 to p999)."""
    max_stock: int = 6
    """Most units of one item the supplier holds; each item holds 2 to max_stock."""
    restock_every: int = 3
    """Days between restocks of one item (each item has its own offset)."""
    price_drift: float = 0.25
    """Each day's price lies within this share of the item's base price."""

    def __post_init__(self) -> None:
        if not 1 <= self.items <= 900:
            raise ValueError(f"supplier items must be 1 to 900, got {self.items}")
        if self.max_stock < 2:
            raise ValueError(f"supplier max_stock must be at least 2, got {self.max_stock}")
        if self.restock_every < 1:
            raise ValueError(
                f"supplier restock_every must be at least 1 day, got {self.restock_every}"
            )
        if not 0 <= self.price_drift < 1:
            raise ValueError(f"supplier price_drift must be in [0, 1), got {self.price_drift}")


def week_of(day: int) -> int:
    """The week a day of the world clock belongs to."""
    return day // DAYS_PER_WEEK


def make_catalogue(seed: int, config: SupplierConfig) -> list[dict[str, Any]]:
    """The supplier's items: id, category, color, material, size, base_price, capacity, restock_offset."""
    rng = random.Random(f"supplier:{seed}")
    numbers = sorted(rng.sample(range(100, 1000), config.items))
    catalogue = []
    for number in numbers:
        item = random_item(rng)
        catalogue.append(
            {
                "id": f"p{number}",
                "category": item["category"],
                "color": item["color"],
                "material": item["material"],
                "size": item["size"],
                "base_price": item["price"],
                "capacity": rng.randint(2, config.max_stock),
                "restock_offset": rng.randrange(config.restock_every),
            }
        )
    return catalogue


def price_on(seed: int, item: dict[str, Any], day: int, config: SupplierConfig) -> int:
    """The item's price in whole dollars on `day` (its base price on day 0)."""
    if day == 0 or config.price_drift == 0:
        return int(item["base_price"])
    rng = random.Random(f"price:{seed}:{item['id']}:{day}")
    factor = 1 + rng.uniform(-config.price_drift, config.price_drift)
    return max(5, round(item["base_price"] * factor))


def restocks_on(item: dict[str, Any], day: int, config: SupplierConfig) -> bool:
    """Whether the item is filled back up to its capacity at the start of `day`."""
    return day > 0 and (day + item["restock_offset"]) % config.restock_every == 0


def next_restock(item: dict[str, Any], day: int, config: SupplierConfig) -> int:
    """The first day after `day` on which the item restocks."""
    later = day + 1
    while not restocks_on(item, later, config):
        later += 1
    return later


def layout_of_week(seed: int, week: int) -> Layout:
    """The page layout of a week: the clone's in week 0, then each week another than the last."""
    layout = LAYOUT
    for later in range(1, week + 1):
        others = [candidate for candidate in LAYOUTS if candidate != layout]
        layout = random.Random(f"layout:{seed}:{later}").choice(others)
    return layout


def catalogue_on(seed: int, day: int, config: SupplierConfig) -> list[dict[str, Any]]:
    """The catalogue with each item's price on `day` and full stock (what a fresh shop shows)."""
    return [
        {**public_item(item), "price": price_on(seed, item, day, config), "stock": item["capacity"]}
        for item in make_catalogue(seed, config)
    ]


def public_item(item: dict[str, Any]) -> dict[str, Any]:
    """The fields of an item anyone may see: id, category, color, material, size."""
    return {key: item[key] for key in ("id", "category", "color", "material", "size")}
