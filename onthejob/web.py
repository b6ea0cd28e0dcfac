"""Running a FastAPI app on 127.0.0.1: the one place that binds a socket and starts uvicorn.

Covers: `bind` (a TCP socket bound before uvicorn gets it, so port 0 takes a free port
that no other process can grab in between), `serve_foreground` (serve until SIGINT or
SIGTERM, then return, so the caller closes what it opened) and `app_in_thread` (serve an
app from a background thread for tests and in-process use; yields the base URL, stops on
exit).
The environment adapter (`onthejob.envs.http`), the chat server (`onthejob.serve`) and
the live shop (`onthejob.world.service`) all run through here.

Not covered: the apps themselves.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to (host, port); port 0 takes a free port and holds it."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every small response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _server(app: Any, lifespan: Literal["auto", "on", "off"]) -> uvicorn.Server:
    """The uvicorn server every app here runs on: quiet, 5 s to finish requests on stop."""
    config = uvicorn.Config(
        app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=5
    )
    return uvicorn.Server(config)


def serve_foreground(app: Any, sock: socket.socket, lifespan: Literal["auto", "on", "off"]) -> None:
    """Serve `app` on a bound socket in this (main) thread until SIGINT or SIGTERM.

    After a SIGTERM it returns normally. uvicorn shuts down gracefully on the signal and
    then raises it again, which under SIGTERM's default action ends the process before
    the caller's `finally` and `with` blocks run (the live shop's SQLite file was left
    with its -wal and -shm files). So while it serves, SIGTERM's handler only asks the
    server to stop; the previous handler comes back on return. SIGINT still ends in
    KeyboardInterrupt, which unwinds through the caller's blocks as well.
    """
    server = _server(app, lifespan)

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_announced(app: Any, host: str, port: int, lifespan: Literal["auto", "on", "off"]) -> None:
    """Bind (host, port), print the base URL as one line (what a launcher waits for; port 0
    takes a free port), then `serve_foreground` until SIGINT or SIGTERM; the socket is
    closed on the way out. A port that cannot be bound (in use, not allowed) exits the
    process with a one-line error: this is what a server's command line calls."""
    try:
        sock = bind(host, port)
    except OSError as error:
        raise SystemExit(f"cannot listen on {host}:{port}: {error}") from None
    try:
        print(f"http://{host}:{sock.getsockname()[1]}", flush=True)
        serve_foreground(app, sock, lifespan=lifespan)
    finally:
        sock.close()


@contextmanager
def app_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "http",
    lifespan: Literal["auto", "on", "off"] = "off",
    start_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve `app` from a daemon thread; yields "http://host:port"; stops the server on exit.

    A server that has not started within `start_timeout` seconds (or whose thread died)
    is a RuntimeError naming `name` and the address.
    """
    sock = bind(host, port)
    server = _server(app, lifespan)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=name)
    thread.start()
    address = f"{host}:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} server on {address} did not start")
            time.sleep(0.01)
        yield f"http://{address}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)
        sock.close()
