"""Serving under load: turns/s and latency of `onthejob serve` with 8 concurrent users.

Starts `onthejob serve` as its own process on a fresh store and registry (the model
promoted for one tenant), then plays simulated users through the official `openai`
client: each user runs sessions of `--session-turns` turns; the first turn of a session
pastes a fresh document of 8-12 items and asks about it, later turns ask more questions
about it (the traffic of a working week); replies are greedy, `--max-tokens` long at
most. The same traffic is sent twice against the same running server: by one user
alone, then by `--users` users at once; the peer of the concurrent run is the lone user,
and the last line is the ratio of their throughputs (what dynamic batching buys).
Latency is per chat request, measured at the client (HTTP, the store's durable write
and generation included).

    .venv/bin/python benchmarks/serve_load.py [--model DIR] [--users 8] [--turns 20]

Default model: the cached pretrained default (`onthejob pretrain`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai

from onthejob import knowledge
from onthejob.prompts import KNOWLEDGE_SYSTEM
from onthejob.world.week import ensure_promoted, server_child

TENANT = "bench"


def user_traffic(seed: int, turns: int, session_turns: int) -> list[list[str]]:
    """The user messages of each session: a pasted document and a question, then questions."""
    rng = random.Random(seed)
    sessions: list[list[str]] = []
    while sum(len(s) for s in sessions) < turns:
        items = knowledge.random_items(rng, rng.randint(8, 12))
        document = knowledge.document(items, rng)
        asked = [knowledge.question(item, rng).text for item in rng.sample(items, session_turns)]
        left = turns - sum(len(s) for s in sessions)
        messages = [f"my notes:\n{document}\n\n{asked[0]}", *asked[1:]][:left]
        sessions.append(messages)
    return sessions


def play(url: str, traffic: list[list[str]], max_tokens: int, latencies: list[float]) -> int:
    """One user's sessions, turn after turn; returns the prompt tokens sent."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    http = httpx.Client(base_url=url, timeout=60)
    prompt_tokens = 0
    try:
        for messages in traffic:
            session = http.post("/v1/sessions", json={"tenant": TENANT}).json()["id"]
            history: list[dict[str, str]] = [{"role": "system", "content": KNOWLEDGE_SYSTEM}]
            for text in messages:
                history.append({"role": "user", "content": text})
                started = time.perf_counter()
                reply = api.chat.completions.create(
                    model="default",
                    messages=history,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=0,
                    extra_headers={"X-Session-Id": session},
                )
                latencies.append(time.perf_counter() - started)
                history.append({"role": "assistant", "content": reply.choices[0].message.content})
                prompt_tokens += reply.usage.prompt_tokens if reply.usage else 0
    finally:
        api.close()
        http.close()
    return prompt_tokens


def run(url: str, users: int, turns: int, session_turns: int, max_tokens: int, seed: int):
    traffic = [user_traffic(seed + u, turns, session_turns) for u in range(users)]
    latencies: list[float] = []
    prompts = [0] * users
    errors: list[BaseException] = []

    def one(u: int) -> None:
        try:
            prompts[u] = play(url, traffic[u], max_tokens, latencies)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(u,)) for u in range(users)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {
        "turns_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * p95,
        "turns": len(latencies),
        "prompt_tokens": sum(prompts) / max(1, len(latencies)),
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the cached pretrained model)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=20, help="turns per user")
    parser.add_argument("--session-turns", type=int, default=4, help="turns per session")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.model:
        model_dir = Path(args.model)
    else:
        from onthejob.train.pretrain import default_model_dir

        model_dir = default_model_dir()
    if not model_dir.is_dir():
        sys.exit(f"no model at {model_dir}; run `onthejob pretrain` or pass --model")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        ensure_promoted(work / "registry.sqlite", TENANT, model_dir)
        server = server_child(
            work / "store.sqlite", work / "registry.sqlite", TENANT, work / "server.log"
        )
        with server:
            url = server.start()
            run(url, 1, 3, args.session_turns, args.max_tokens, seed=10_000)  # warm-up
            alone = run(url, 1, args.turns, args.session_turns, args.max_tokens, args.seed)
            together = run(
                url, args.users, args.turns, args.session_turns, args.max_tokens, args.seed
            )
    print(f"model {model_dir}; max_tokens {args.max_tokens}, greedy")
    for name, result in (("1 user", alone), (f"{args.users} users", together)):
        print(
            f"{name:>9}: {result['turns']} turns in {result['seconds']:.1f} s,"
            f" {result['turns_per_s']:.1f} turns/s, p50 {result['p50_ms']:.0f} ms,"
            f" p95 {result['p95_ms']:.0f} ms, mean prompt {result['prompt_tokens']:.0f} tokens"
        )
    print(f"speedup: {together['turns_per_s'] / alone['turns_per_s']:.2f}")


if __name__ == "__main__":
    main()
