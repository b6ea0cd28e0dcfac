"""`ServiceClient`: talk to the live supplier shop over HTTP, as a simulated user's tool runner does.

Covers: acting (`act`), reading the public state, advancing the world clock, reading the
transition log and checking health, with httpx; refusals come back as the same exceptions
the in-process `LiveShop` raises (`Throttled`, `Banned`), bad input as ValueError, so code
written against one works against the other.

Does not cover: retrying (a throttled client should wait `retry_after` seconds; retrying
at once is what gets an account banned), or starting the service (see
`onthejob.world.service`).
"""

from __future__ import annotations

from typing import Any

import httpx

from onthejob.world.service import ActResult, Banned, NotLive, StoreUnavailable, Throttled


class ServiceClient:
    """A client of one live shop, e.g. ServiceClient("http://127.0.0.1:8123")."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ConnectionError(f"live shop {self.base_url} unreachable: {error}") from None
        if response.is_success:
            return response.json()
        try:
            body = response.json()
            message, kind = str(body["error"]), body.get("kind")
            retry_after = float(body.get("retry_after", 0.0))
        except (ValueError, KeyError, TypeError):
            message, kind, retry_after = response.text[:200], None, 0.0
        if kind == "throttled":
            raise Throttled(message, retry_after)
        if kind == "banned":
            raise Banned(message, retry_after)
        if kind == "not_supported":
            raise NotLive(message)
        if kind == "store_unavailable":
            raise StoreUnavailable(message)
        if 400 <= response.status_code < 500:
            raise ValueError(f"{self.base_url}{path}: {message}")
        raise RuntimeError(f"live shop error {response.status_code} on {path}: {message}")

    def act(self, account: str, action: str, session: str | None = None) -> ActResult:
        """Do one action; raises Throttled (429) or Banned (403) when refused."""
        reply = self._call(
            "POST", "/act", json={"account": account, "action": action, "session": session}
        )
        return ActResult(**reply)

    def state(self, account: str | None = None) -> dict[str, Any]:
        """The public state (GET /state), the orders and account of `account` only if given."""
        params = {"account": account} if account is not None else None
        return dict(self._call("GET", "/state", params=params))

    def advance(self, days: int = 1) -> int:
        """Move the world clock on; returns the new day (only the org's driver should)."""
        return int(self._call("POST", "/advance", json={"days": days})["day"])

    def transitions(
        self, account: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if account is not None:
            params["account"] = account
        return list(self._call("GET", "/transitions", params=params)["transitions"])

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
