"""The local tokenizer and the one chat template.

Covers: training a byte-level BPE tokenizer from text with the `tokenizers`
library (no downloads), wrapping it as a Hugging Face fast tokenizer that saves
and loads with the model directory, and rendering chats to token ids.

The chat format is the only one in the project::

    <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|><|tool|>...<|end|>

`render_chat` is the one place that turns messages into ids. It encodes each
message's content on its own, so the ids of a prompt never depend on what
follows it, and two prompts that differ only by an inserted message share every
other token (the teacher/student pitfall of on-policy distillation). The same
template is stored as a Jinja `chat_template` so `apply_chat_template` of
transformers gives identical ids (tested).

Not covered: tokenizers of arbitrary Hugging Face checkpoints are used as they
come; `render_chat` needs the role and end tokens of this format, so other
checkpoints go through `apply_chat_template` (see `chat_prompt_ids`).

Departures: digits are split one per token (arithmetic generalises across
numbers of any length), and text that a user types is never parsed for special
tokens, so typing "<|end|>" cannot end a turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

ROLES = ("system", "user", "assistant", "tool")
PAD = "<|pad|>"
END = "<|end|>"
SPECIAL_TOKENS = [PAD, END] + [f"<|{role}|>" for role in ROLES]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and return it with the chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw `tokenizers.Tokenizer` of this format as a HF fast tokenizer."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[f"<|{role}|>" for role in ROLES],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class ChatIds:
    """A rendered chat: token ids plus where each message's content starts and ends."""

    ids: list[int]
    """All token ids, role markers and end tokens included."""
    spans: list[tuple[str, int, int]]
    """(role, start, stop) of each message's content and its end token, in order."""


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token of the vocabulary."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"token {token!r} is not in the vocabulary")
    return found


def has_onthejob_format(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries this project's role and end tokens."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in SPECIAL_TOKENS)


_ENCODE_LOCK = threading.Lock()
"""`encode_text` flips a flag on the shared backend tokenizer; the lock keeps another
thread from encoding while the flag is flipped (a server renders chats from many threads)."""


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode plain text; special-token strings inside it are treated as ordinary text.

    Thread-safe: the backend's `encode_special_tokens` flag is flipped under a lock."""
    backend: Tokenizer = tokenizer.backend_tokenizer
    with _ENCODE_LOCK:
        before = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            return list(backend.encode(text, add_special_tokens=False).ids)
        finally:
            backend.encode_special_tokens = before


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = False,
) -> ChatIds:
    """Render messages to ids with this project's template (the one place that does so)."""
    role_ids = {role: token_id(tokenizer, f"<|{role}|>") for role in ROLES}
    end_id = token_id(tokenizer, END)
    ids: list[int] = []
    spans: list[tuple[str, int, int]] = []
    for message in messages:
        role = message.get("role")
        if role not in role_ids:
            raise ValueError(f"unknown chat role {role!r}; use one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message content must be a string, got {type(content).__name__}")
        ids.append(role_ids[role])
        start = len(ids)
        ids.extend(encode_text(tokenizer, content))
        ids.append(end_id)
        spans.append((role, start, len(ids)))
    if add_generation_prompt:
        ids.append(role_ids["assistant"])
    return ChatIds(ids=ids, spans=spans)


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]
) -> list[int]:
    """Prompt ids ending with the assistant marker, for this format or any HF chat template."""
    if has_onthejob_format(tokenizer):
        return render_chat(tokenizer, messages, add_generation_prompt=True).ids
    if tokenizer.chat_template is None:
        raise ValueError("tokenizer has no chat template; give the model directory one")
    out: Any = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True
    )
    return [int(i) for i in (out["input_ids"] if hasattr(out, "keys") else out)]


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if has_onthejob_format(tokenizer):
        ids.add(token_id(tokenizer, END))
    return sorted(i for i in ids if i is not None)
