"""The simulated organisation the agent is deployed into: its knowledge and its live service.

Covers: `org` (an organisation from a seed: users, documents of facts, procedures and
conventions that change week by week, and the day's tasks with their checkers),
`supplier` (the live shop's goods, prices, restocks and layouts as pure functions of seed
and day), `service` (the live supplier shop: HTTP on 127.0.0.1, state in SQLite, no
reset, drift, costs, throttling and bans, every transition logged) and `client`
(`ServiceClient`, its HTTP client).

Does not cover: the simulated users who run a week of sessions through the serving API
(they draw their tasks from `Org.tasks` and act through `ServiceClient`).
"""

from onthejob.world.client import ServiceClient
from onthejob.world.org import (
    Change,
    Document,
    Knowledge,
    Org,
    OrgConfig,
    QuestionTask,
    ServiceTask,
    User,
    Verdict,
    make_org,
)
from onthejob.world.service import (
    ActResult,
    Banned,
    LiveShop,
    NotLive,
    Refused,
    ServiceConfig,
    Throttled,
)
from onthejob.world.supplier import DAYS_PER_WEEK, SupplierConfig

__all__ = [
    "DAYS_PER_WEEK",
    "ActResult",
    "Banned",
    "Change",
    "Document",
    "Knowledge",
    "LiveShop",
    "NotLive",
    "Org",
    "OrgConfig",
    "QuestionTask",
    "Refused",
    "ServiceClient",
    "ServiceConfig",
    "ServiceTask",
    "SupplierConfig",
    "Throttled",
    "User",
    "Verdict",
    "make_org",
]
