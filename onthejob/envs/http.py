"""Serve an env over HTTP, and `HTTPEnv`, a client that is an `Env` again.

Covers: the OpenEnv convention (POST /reset, POST /step, GET /state) plus what the `Env`
protocol needs beyond it (GET /metadata for the name and flags, POST /snapshot,
POST /restore, GET /expert_action), as a FastAPI app around one env instance; running it
with uvicorn on 127.0.0.1 (`serve`, or `serve_in_thread` for tests and in-process use);
and `HTTPEnv(base_url)`, which calls those routes with httpx, so an episode through
HTTP is the same episode as a local one.

Errors: a malformed body (bad JSON, wrong types, unknown fields) is 422, a request that
does not fit the episode (step before reset, step after the end) is 409, a task or
snapshot the env refuses and anything the env does not support is 400; every error body
is {"error": "<one line>", "kind": ...}. `HTTPEnv` raises them again as the exceptions a
local env raises (RuntimeError, ValueError, NotSupported).

Does not cover: authentication, several sessions per server (one server holds one env,
its calls serialized by a lock; run more servers for more envs), or TLS. Bind only to
127.0.0.1: /expert_action and /snapshot reveal the hidden task.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from onthejob.envs.base import Env, NotSupported, Task
from onthejob.web import app_in_thread, serve_announced


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    seed: int | None = None
    task: dict[str, Any] | None = None


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    action: str


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    snapshot: dict[str, Any]


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "kind": kind})


def make_app(env: Env) -> FastAPI:
    """A FastAPI app that exposes `env` (one instance, calls serialized)."""
    app = FastAPI(title=f"onthejob env: {env.name}")
    lock = threading.Lock()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
        return _error(422, "invalid_request", message)

    @app.exception_handler(NotSupported)
    async def not_supported(request: Request, error: NotSupported) -> JSONResponse:
        return _error(400, "not_supported", str(error))

    @app.exception_handler(RuntimeError)
    async def wrong_time(request: Request, error: RuntimeError) -> JSONResponse:
        return _error(409, "conflict", str(error))

    @app.exception_handler(ValueError)
    async def refused(request: Request, error: ValueError) -> JSONResponse:
        return _error(400, "invalid_value", str(error))

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return {
            "name": env.name,
            "resettable": env.resettable,
            "replicable": env.replicable,
            "stationary": env.stationary,
        }

    @app.post("/reset")
    def reset(request: ResetRequest) -> dict[str, Any]:
        task = Task.from_json(request.task) if request.task is not None else None
        with lock:
            observation, info = env.reset(seed=request.seed, task=task)
        return {"observation": observation, "info": info}

    @app.post("/step")
    def step(request: StepRequest) -> dict[str, Any]:
        with lock:
            observation, reward, terminated, truncated, info = env.step(request.action)
        return {
            "observation": observation,
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "info": info,
        }

    @app.get("/state")
    def state() -> dict[str, Any]:
        with lock:
            return env.state()

    @app.post("/snapshot")
    def snapshot() -> dict[str, Any]:
        with lock:
            return env.snapshot()

    @app.post("/restore")
    def restore(request: RestoreRequest) -> dict[str, Any]:
        with lock:
            env.restore(request.snapshot)
        return {"ok": True}

    @app.get("/expert_action")
    def expert_action() -> dict[str, Any]:
        with lock:
            return {"action": env.expert_action()}

    return app


def serve(env: Env, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `env` until SIGINT or SIGTERM (blocking; after a SIGTERM it returns normally).
    Prints the base URL once the port is bound (port 0 takes a free one)."""
    serve_announced(make_app(env), host, port, lifespan="off")


def main(argv: list[str] | None = None) -> None:
    """`python -m onthejob.envs.http shop --port 8001 --set difficulty=3`."""
    import argparse
    import json

    from onthejob.envs import make_env

    parser = argparse.ArgumentParser(description="serve one env over HTTP on 127.0.0.1")
    parser.add_argument("name", help="registered env name, e.g. arith, program, shop")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config field"
    )
    args = parser.parse_args(argv)
    config: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    try:
        env = make_env(args.name, **config)
    except (ValueError, TypeError) as error:  # an unknown env, key or value
        raise SystemExit(f"env server: {error}") from None
    serve(env, port=args.port)


@contextmanager
def serve_in_thread(env: Env, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `env` from a background thread; yields the base URL; stops the server on exit."""
    with app_in_thread(make_app(env), host, port, name="env-http") as url:
        yield url


class HTTPEnv:
    """An `Env` whose episodes run on a server started by `serve` / `serve_in_thread`."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, timeout=timeout)
        meta = self._call("GET", "/metadata")
        self.name: str = meta["name"]
        self.resettable: bool = meta["resettable"]
        self.replicable: bool = meta["replicable"]
        self.stationary: bool = meta["stationary"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise ConnectionError(f"env server {self.base_url} unreachable: {error}") from None
        if response.is_success:
            return response.json()
        try:
            payload = response.json()
            message, kind = str(payload["error"]), payload.get("kind")
        except (ValueError, KeyError, TypeError):
            message, kind = response.text[:200], None
        message = f"{self.base_url}{path}: {message}"
        if kind == "not_supported":
            raise NotSupported(message)
        if response.status_code == 409:
            raise RuntimeError(message)
        if 400 <= response.status_code < 500:
            raise ValueError(message)
        raise RuntimeError(f"env server error {response.status_code}: {message}")

    def reset(
        self, seed: int | None = None, task: Task | None = None
    ) -> tuple[str, dict[str, Any]]:
        reply = self._call(
            "POST", "/reset", {"seed": seed, "task": task.to_json() if task else None}
        )
        return reply["observation"], reply["info"]

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(f"an action is a str, got {type(action).__name__}")
        reply = self._call("POST", "/step", {"action": action})
        return (
            reply["observation"],
            float(reply["reward"]),
            reply["terminated"],
            reply["truncated"],
            reply["info"],
        )

    def state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/state"))

    def snapshot(self) -> dict[str, Any]:
        return dict(self._call("POST", "/snapshot"))

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._call("POST", "/restore", {"snapshot": snapshot})

    def expert_action(self) -> str:
        return str(self._call("GET", "/expert_action")["action"])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HTTPEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
