"""Models: HF checkpoint I/O, the tiny default, the local tokenizer and chat template,
log-probs and LoRA adapters."""

from onthejob.models.hf import (
    ModelDirError,
    TinyConfig,
    bf16_autocast,
    build_model,
    check_device,
    check_model_dir,
    count_parameters,
    load_model,
    model_device,
    save_model,
)
from onthejob.models.logprobs import entropy, gather_logprobs, token_logprobs
from onthejob.models.lora import (
    LoraSettings,
    adapter_disabled,
    add_lora,
    keep_share,
    load_adapter,
    trainable_state,
)
from onthejob.models.tokenizer import (
    END,
    PAD,
    ChatIds,
    chat_prompt_ids,
    encode_text,
    end_token_ids,
    render_chat,
    train_tokenizer,
)

__all__ = [
    "END",
    "PAD",
    "ChatIds",
    "LoraSettings",
    "ModelDirError",
    "TinyConfig",
    "adapter_disabled",
    "add_lora",
    "bf16_autocast",
    "build_model",
    "chat_prompt_ids",
    "check_device",
    "check_model_dir",
    "count_parameters",
    "encode_text",
    "end_token_ids",
    "entropy",
    "gather_logprobs",
    "keep_share",
    "load_adapter",
    "load_model",
    "model_device",
    "render_chat",
    "save_model",
    "token_logprobs",
    "train_tokenizer",
    "trainable_state",
]
