"""The generation engine: loaded model versions and one worker that batches requests.

Covers: loading a model version (a Hugging Face base directory plus an optional PEFT
adapter) once and keeping the most recently used ones in memory; answering token-id
prompts with `onthejob.sampling.sample`; streaming text while a batch decodes.

Design:

- One generation worker thread owns all sampling. HTTP threads `submit` a prompt and
  get a `Generation` handle to wait on or stream from. The worker takes the oldest
  waiting request and batches with it every waiting request of the same model version
  and compatible settings (temperature, top_p, stop strings; seeded requests run alone,
  because one generator serves a whole batch) into one `sample` call: dynamic batching.
  Requests may differ in max_tokens: the batch runs to the largest budget and each
  completion is cut to its own (the first k tokens of a sample do not depend on how many
  follow, so the cut changes nothing but the time spent).
- Batches form while the previous one decodes (no prompt joins a running batch; the
  sampler has no continuous batching). When the worker goes idle it waits up to
  `batch_wait_s` for as many requests as its recent batches held, so that closed-loop
  clients (each sends its next request after its reply) keep arriving as one batch
  instead of splitting into a batch of one and a batch of the rest.
- Streaming is real: `sample` calls back after every decode step, and each streaming
  request's new tokens are decoded to text deltas right away. Text that might be the
  start of a stop string, or an incomplete UTF-8 character, is held back until it is
  resolved, so the concatenated deltas equal the final text.
- OpenAI semantics for stop strings: the returned text ends before the stop string (the
  sampler's text includes it); the token ids are kept exactly as sampled, the stop
  string's tokens included. finish_reason is "stop" (end token or stop string) or
  "length".

Not covered: continuous batching, request cancellation (a client that goes away still
has its row decoded to the end of its batch), GPU memory accounting, and sharing one base
model between several adapters (each version loads its own copy of its base: PEFT wraps
the base's layers in place).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from onthejob.models import load_adapter, load_model
from onthejob.models.tokenizer import end_token_ids
from onthejob.sampling import SamplingConfig, _max_positions, sample


@dataclass(frozen=True)
class EngineConfig:
    """How the engine loads models and batches requests."""

    max_batch: int = 32
    """Most requests decoded together in one `sample` call."""
    batch_wait_s: float = 0.01
    """Longest an idle worker waits for more requests to fill a batch (0: never waits)."""
    default_max_tokens: int = 256
    """Reply budget when a request gives none (lowered to what the context leaves)."""
    max_loaded: int = 4
    """Model versions kept in memory; the least recently used one is dropped beyond this."""
    device: str = "cpu"
    """Where models run ("cpu", "cuda", "cuda:1", ...)."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")
        if self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")
        if self.max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {self.max_loaded}")


class PromptTooLong(ValueError):
    """A prompt (plus its reply budget) does not fit the model's context."""


class EngineClosed(RuntimeError):
    """The engine has shut down; no request is taken any more."""


@dataclass(frozen=True)
class ModelSource:
    """What to load for one model version."""

    key: str
    """The version id (the cache key)."""
    base: Path
    """Hugging Face model directory."""
    adapter: Path | None = None
    """PEFT LoRA adapter directory on top of `base`, if any."""


@dataclass
class LoadedModel:
    """A model version in memory."""

    key: str
    """The version id."""
    model: torch.nn.Module
    """The causal LM (PEFT-wrapped when the version has an adapter)."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer."""
    context: int | None
    """Most positions (prompt + reply) it takes, if its config says."""


@dataclass(frozen=True)
class Settings:
    """Sampling settings of one request."""

    max_tokens: int
    """Most tokens in the reply."""
    temperature: float = 1.0
    """0: greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    stop: tuple[str, ...] = ()
    """Stop strings; the reply ends before the first one."""
    seed: int | None = None
    """Seed for reproducible samples (such a request is decoded alone)."""


@dataclass
class Completion:
    """A finished reply."""

    token_ids: list[int]
    """Reply ids exactly as sampled (end token or stop string's tokens included)."""
    logprobs: list[float]
    """Sampling log-prob of each id."""
    text: str
    """The reply text (without the end token and without a stop string)."""
    finish_reason: str
    """'stop' (end token or stop string) or 'length'."""
    prompt_tokens: int
    """Length of the prompt."""


_DONE = object()


class Generation:
    """A submitted request: wait for its `result()` or iterate `deltas()` as it decodes."""

    def __init__(
        self, loaded: LoadedModel, prompt: list[int], settings: Settings, stream: bool, key: Any
    ) -> None:
        self.loaded = loaded
        self.prompt = prompt
        self.settings = settings
        self.stream = stream
        self.batch_key = key
        self._events: queue.Queue[Any] = queue.Queue()
        self._done = threading.Event()
        self._result: Completion | None = None
        self._error: BaseException | None = None
        # Streaming state, touched by the worker thread only.
        self._ids: list[int] = []
        self._sent = 0  # characters of text already sent as deltas
        self._hold = max((len(s) for s in settings.stop), default=1) - 1
        self._ends = set(end_token_ids(loaded.tokenizer))

    # -- the worker's side -------------------------------------------------------------

    def _token(self, token: int) -> None:
        """One new token (streaming requests): send the text that is now certain."""
        if len(self._ids) >= self.settings.max_tokens or token in self._ends:
            return
        self._ids.append(token)
        text = str(self.loaded.tokenizer.decode(self._ids, skip_special_tokens=False))
        cut = _first_stop(text, self.settings.stop)
        if cut is not None:
            ready = cut
        else:
            ready = len(text) - self._hold
            while ready > self._sent and text[ready - 1] == "\ufffd":  # an unfinished character
                ready -= 1
        if ready > self._sent:
            self._events.put(text[self._sent : ready])
            self._sent = ready

    def _finish(self, result: Completion | None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        if result is not None and self.stream and len(result.text) > self._sent:
            self._events.put(result.text[self._sent :])
        self._events.put(_DONE)
        self._done.set()

    # -- the caller's side -------------------------------------------------------------

    def deltas(self) -> Iterator[str]:
        """Text deltas as they are decoded (streaming requests); ends when the reply does."""
        if not self.stream:
            raise RuntimeError("deltas() needs a request submitted with stream=True")
        while True:
            item = self._events.get()
            if item is _DONE:
                return
            yield item

    def result(self, timeout: float | None = None) -> Completion:
        """The finished reply (waits for it); raises what the worker raised."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no reply within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class Engine:
    """Loaded model versions and the worker that answers prompts in batches."""

    def __init__(self, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._load_lock = threading.Lock()
        self._queue: queue.Queue[Generation | None] = queue.Queue()
        self._closed = False
        self._recent_sizes: list[int] = [1]
        self._seeded = itertools.count()
        self.batches: list[int] = []
        """Size of every batch decoded so far (for tests and benchmarks)."""
        self._worker = threading.Thread(target=self._run, name="generation", daemon=True)
        self._worker.start()

    # -- models ------------------------------------------------------------------------

    def load(self, source: ModelSource) -> LoadedModel:
        """The version in memory, loaded on first use (ModelDirError / ValueError if bad)."""
        with self._load_lock:
            loaded = self._loaded.get(source.key)
            if loaded is None:
                base, tokenizer = load_model(source.base, device=self.config.device)
                model: torch.nn.Module = base
                if source.adapter is not None:
                    model = load_adapter(model, source.adapter)
                model.eval()
                loaded = LoadedModel(source.key, model, tokenizer, _max_positions(model))
                self._loaded[source.key] = loaded
                while len(self._loaded) > self.config.max_loaded:
                    self._loaded.popitem(last=False)  # queued requests keep their own reference
            self._loaded.move_to_end(source.key)
            return loaded

    def loaded(self) -> list[str]:
        """Ids of the versions in memory, least recently used first."""
        with self._load_lock:
            return list(self._loaded)

    def budget(self, loaded: LoadedModel, prompt_tokens: int, max_tokens: int | None) -> int:
        """The reply budget for a prompt; PromptTooLong if the prompt does not fit."""
        limit = loaded.context
        if limit is not None and prompt_tokens >= limit:
            raise PromptTooLong(
                f"the prompt is {prompt_tokens} tokens and model {loaded.key} takes at most "
                f"{limit} in all; shorten the conversation or start a new session"
            )
        if max_tokens is None:
            wanted = self.config.default_max_tokens
            return wanted if limit is None else min(wanted, limit - prompt_tokens)
        if limit is not None and prompt_tokens + max_tokens > limit:
            raise PromptTooLong(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"the {limit} positions of model {loaded.key}; lower max_tokens to at most "
                f"{limit - prompt_tokens} or shorten the conversation"
            )
        return max_tokens

    # -- requests ----------------------------------------------------------------------

    def submit(
        self, loaded: LoadedModel, prompt: list[int], settings: Settings, stream: bool = False
    ) -> Generation:
        """Queue a prompt (token ids) for the worker; returns its handle at once."""
        if self._closed:
            raise EngineClosed("the server is shutting down; retry on a running server")
        self.budget(loaded, len(prompt), settings.max_tokens)
        key: Any = (loaded.key, settings.temperature, settings.top_p, settings.stop)
        if settings.seed is not None:
            key = (*key, "seeded", next(self._seeded))
        generation = Generation(loaded, prompt, settings, stream, key)
        self._queue.put(generation)
        return generation

    def close(self) -> None:
        """Stop taking requests; waiting ones fail with EngineClosed; the worker exits."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=60)

    # -- the worker --------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[Generation] = []
        while True:
            if not pending:
                first = self._queue.get()
                if first is None:
                    break
                pending.append(first)
            if not self._gather(pending):
                break
            batch = self._pick(pending)
            pending = [g for g in pending if g not in batch]
            self._decode(batch)
        closed = EngineClosed("the server shut down before this request was answered")
        for generation in pending:
            generation._finish(None, closed)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item._finish(None, closed)

    def _gather(self, pending: list[Generation]) -> bool:
        """Add waiting requests to `pending`, waiting a little for a full batch; False on close."""
        expected = min(max(self._recent_sizes), self.config.max_batch)
        deadline = time.monotonic() + self.config.batch_wait_s
        while True:
            try:
                if len(pending) < expected:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            pending.append(item)

    def _pick(self, pending: list[Generation]) -> list[Generation]:
        """The oldest request and the compatible ones that fit one batch with it."""
        first = pending[0]
        batch, longest, budget = [first], len(first.prompt), first.settings.max_tokens
        limit = first.loaded.context
        for other in pending[1:]:
            if len(batch) == self.config.max_batch:
                break
            if other.batch_key != first.batch_key:
                continue
            new_longest = max(longest, len(other.prompt))
            new_budget = max(budget, other.settings.max_tokens)
            if limit is not None and new_longest + new_budget > limit:
                continue  # a later batch takes it
            batch.append(other)
            longest, budget = new_longest, new_budget
        return batch

    def _decode(self, batch: list[Generation]) -> None:
        self.batches.append(len(batch))
        self._recent_sizes = [*self._recent_sizes[-3:], len(batch)]
        first = batch[0]
        settings, loaded = first.settings, first.loaded
        config = SamplingConfig(
            max_new_tokens=max(g.settings.max_tokens for g in batch),
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop_strings=settings.stop,
            seed=settings.seed,
        )
        streaming = [g.stream for g in batch]

        def on_tokens(indices: list[int], ids: list[int]) -> None:
            for index, token in zip(indices, ids, strict=True):
                if streaming[index]:
                    batch[index]._token(token)

        try:
            samples = sample(
                loaded.model,
                loaded.tokenizer,
                [g.prompt for g in batch],
                config,
                on_tokens=on_tokens if any(streaming) else None,
            )
        except Exception as error:  # a bad batch fails its requests, never the worker
            for generation in batch:
                generation._finish(None, error)
            return
        for i, generation in enumerate(batch):
            generation._finish(
                _completion(
                    loaded.tokenizer,
                    generation,
                    samples.token_ids[i],
                    samples.logprobs[i],
                    samples.finish_reasons[i],
                )
            )


def _completion(
    tokenizer: PreTrainedTokenizerBase,
    generation: Generation,
    ids: list[int],
    logprobs: list[float],
    reason: str,
) -> Completion:
    """The request's reply from its row of the batch: cut to its own budget and stop strings."""
    settings = generation.settings
    if len(ids) > settings.max_tokens:
        ids, logprobs, reason = (
            ids[: settings.max_tokens],
            logprobs[: settings.max_tokens],
            "length",
        )
    ends = set(end_token_ids(tokenizer))
    text_ids = ids[:-1] if reason == "eos" and ids and ids[-1] in ends else ids
    text = str(tokenizer.decode(text_ids, skip_special_tokens=False))
    cut = _first_stop(text, settings.stop)
    if cut is not None:
        text, reason = text[:cut], "stop"
    return Completion(
        token_ids=list(ids),
        logprobs=list(logprobs),
        text=text,
        finish_reason="length" if reason == "length" else "stop",
        prompt_tokens=len(generation.prompt),
    )
