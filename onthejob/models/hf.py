"""Hugging Face model directories: the tiny default config, build, load, save.

Covers: the embedded default architecture (a Llama-style causal LM of a few
million parameters; a shape that cannot be built, such as an odd head size, is a
`ConfigError` naming the field), building it from scratch around a local tokenizer, and
loading or saving any local causal-LM directory (config + safetensors +
tokenizer). Nothing here reaches the network: a path that is not a model
directory is a one-line `ModelDirError` naming the path.

Not covered: training (see `onthejob.train`), adapters (see `lora.py`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from onthejob.train import check_fields

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class ModelDirError(ValueError):
    """A model directory is missing or malformed."""


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the embedded default model (Llama architecture)."""

    hidden_size: int = 192
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 6
    """Attention heads (query heads)."""
    num_kv_heads: int = 6
    """Key/value heads (fewer than num_heads gives grouped-query attention)."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP."""
    max_positions: int = 1024
    """Longest sequence the model is trained and sampled at."""
    rope_theta: float = 10000.0
    """Rotary embedding base."""
    tie_embeddings: bool = True
    """Share input embedding and output head (saves vocab x hidden parameters)."""

    def __post_init__(self) -> None:
        heads, kv_heads = max(self.num_heads, 1), max(self.num_kv_heads, 1)
        problems = {
            "num_layers": (self.num_layers < 1, "> 0"),
            "num_heads": (self.num_heads < 1, "> 0"),
            "num_kv_heads": (
                self.num_kv_heads < 1 or heads % kv_heads != 0,
                f"> 0 and a divisor of num_heads ({self.num_heads})",
            ),
            "hidden_size": (
                self.hidden_size < 1 or self.hidden_size % (2 * heads) != 0,
                f"a multiple of 2 x num_heads ({2 * heads}): each head's size must be even"
                " for the rotary embedding",
            ),
            "intermediate_size": (self.intermediate_size < 1, "> 0"),
            "max_positions": (self.max_positions < 2, ">= 2"),
        }
        check_fields(self, problems)


def build_model(
    config: TinyConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> LlamaForCausalLM:
    """A freshly initialised Llama-style causal LM sized for `tokenizer`."""
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        rope_theta=config.rope_theta,  # type: ignore[call-arg]  # v5 folds it into rope_parameters
        tie_word_embeddings=config.tie_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def check_model_dir(path: str | Path) -> Path:
    """Return `path` if it looks like a HF causal-LM directory, else raise ModelDirError."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(
            f"model directory not found: {path} (train one with `onthejob pretrain`)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"not a model directory (no config.json): {path}")
    try:
        json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"malformed config.json in {path}: {e}") from e
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelDirError(f"no weights (*.safetensors) in model directory: {path}")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelDirError(f"no tokenizer in model directory: {path}")
    return path


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a ValueError that says what is wrong with it."""
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:1, ...") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: no CUDA GPU is visible to torch here (use cpu)"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) here"
            )
    return resolved


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (its input embedding's device; adapters included)."""
    return model.get_input_embeddings().weight.device  # type: ignore[operator]


def bf16_autocast(device: str | torch.device, enabled: bool = True) -> torch.autocast:
    """Autocast to bfloat16 on `device` when enabled: matmuls run in bf16, while weights,
    optimizer state and the reductions autocast keeps in float32 stay float32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local causal LM and its tokenizer; never downloads."""
    path = check_model_dir(path)
    device = check_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelDirError(f"cannot load model from {path}: {first_line}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def save_model(
    model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> Path:
    """Save model (safetensors) and tokenizer atomically: write beside, then rename.

    A PEFT model saves its adapter only (load it with `models.lora.load_adapter`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path
