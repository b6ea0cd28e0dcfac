"""Serving: the OpenAI-compatible chat API, sessions, feedback and the web UI.

    protocol.py   request and response bodies (pydantic), OpenAI's shapes
    chat.py       what the model reads of a request; the text protocol of tool calls
    engine.py     loaded model versions and the worker that batches generation
    exchange.py   one exchange: session and version checks, prompt, reply, the record
    app.py        the FastAPI app (routes, bodies, streaming, errors) and running it
    static/       the web UI (plain HTML, JS and CSS; no build step, no CDN)

`onthejob serve` runs it (see `onthejob.cli`).
"""

from onthejob.serve.app import ServeConfig, create_app, serve, serve_in_thread
from onthejob.serve.engine import Engine, EngineConfig

__all__ = ["Engine", "EngineConfig", "ServeConfig", "create_app", "serve", "serve_in_thread"]
