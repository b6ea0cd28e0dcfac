"""Shared by the serving tests: a tiny model taught a few replies, and a running server.

The model is the conftest's tiny random model, copied and trained for a second or two on
four chats (rendered exactly as the server renders them), so that greedy replies are
known: a greeting, a tool call, an answer after the tool's result, and counting (for
stop strings and max_tokens). Nothing is faked: the server loads it from a model
directory and samples it like any other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from onthejob.models import render_chat, save_model
from onthejob.registry import Registry
from onthejob.serve import ServeConfig, create_app, serve_in_thread
from onthejob.serve.chat import model_turns
from onthejob.serve.engine import EngineConfig
from onthejob.serve.protocol import ChatRequest

SHOP_TOOL = {
    "type": "function",
    "function": {
        "name": "shop",
        "description": "search and buy in the supplier shop",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
GREETING = "hi there, how can i help?"
CALL = "shop: search blue shirt"
OBSERVATION = "[p317] blue cotton shirt size m $24"
ANSWER = "p317 is a blue cotton shirt for 24 dollars."
COUNTING = "one two three four five six seven eight nine ten"
NOTES = "p317 24 ok"
NOTED_CALL = f"{NOTES}\nshop: open p317"
"""A call after lines of notes: the notes are the reply's content."""

TAUGHT: list[tuple[dict, str]] = [
    ({"messages": [{"role": "user", "content": "hello"}]}, GREETING),
    (
        {"messages": [{"role": "user", "content": "find a blue shirt"}], "tools": [SHOP_TOOL]},
        CALL,
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "find a blue shirt"},
                {"role": "assistant", "content": CALL},
                {"role": "tool", "content": OBSERVATION, "tool_call_id": "call_1"},
            ],
            "tools": [SHOP_TOOL],
        },
        ANSWER,
    ),
    ({"messages": [{"role": "user", "content": "count to ten"}]}, COUNTING),
    (
        {"messages": [{"role": "user", "content": "open a cheap one"}], "tools": [SHOP_TOOL]},
        NOTED_CALL,
    ),
]
"""(request body, the reply the model learns to give to it)."""


def teach(tokenizer, base_model, max_steps: int = 400) -> torch.nn.Module:
    """A copy of `base_model` trained until greedy decoding gives the TAUGHT replies: until
    every reply token (and its end) has been the argmax after the tokens before it for 20
    steps (checked every 20), so the result does not hang on how many threads summed the
    gradients (a fixed 80 steps taught it with two threads and not with one)."""
    model = copy.deepcopy(base_model).train()
    rows = []
    for body, reply in TAUGHT:
        turns = model_turns(ChatRequest.model_validate(body))
        messages = [{"role": t.role, "content": t.content} for t in turns]
        messages.append({"role": "assistant", "content": reply})
        chat = render_chat(tokenizer, messages)
        _, start, stop = chat.spans[-1]
        labels = [-100] * len(chat.ids)
        labels[start - 1 : stop - 1] = chat.ids[start:stop]  # predict the reply and its end
        rows.append((chat.ids, labels))
    width = max(len(ids) for ids, _ in rows)  # one right-padded batch
    input_ids = torch.tensor(
        [ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows]
    )
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    taught = labels != -100
    checks_passed = 0
    for step in range(max_steps):
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        if step % 20 == 0:
            learned = bool((logits.argmax(-1)[taught] == labels[taught]).all())
            checks_passed = checks_passed + 1 if learned else 0
            if checks_passed == 2:  # learned 20 steps ago: a margin for the served numerics
                return model.eval()
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=-100
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    raise AssertionError(f"the TAUGHT replies were not learned in {max_steps} steps")


_TAUGHT_DIRS: dict[int, Path] = {}


def taught_model_dir(tmp_path_factory, tokenizer, tiny_model) -> Path:
    """The taught model saved as a HF directory (trained once per test run)."""
    key = id(tiny_model)
    if key not in _TAUGHT_DIRS:
        path = tmp_path_factory.mktemp("taught") / "model"
        save_model(teach(tokenizer, tiny_model), tokenizer, path)
        _TAUGHT_DIRS[key] = path
    return _TAUGHT_DIRS[key]


@dataclass
class Running:
    """A server running in this process, its store and registry."""

    url: str
    store_path: Path
    registry_path: Path
    version: str
    """The promoted version of tenant "default"."""


@contextmanager
def running_server(
    workdir: Path, model_dir: Path, config: ServeConfig | None = None
) -> Iterator[Running]:
    """Register and promote `model_dir` for tenant "default" and serve on a free port."""
    store_path, registry_path = workdir / "store.sqlite", workdir / "registry.sqlite"
    registry = Registry(registry_path)
    version = registry.register("default", model_dir)
    registry.promote(version.id)
    config = config or ServeConfig(engine=EngineConfig(batch_wait_s=0.0))
    app = create_app(store_path, registry_path, config)
    with serve_in_thread(app) as url:
        yield Running(url, store_path, registry_path, version.id)
