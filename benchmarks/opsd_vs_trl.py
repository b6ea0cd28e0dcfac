"""On-policy self-distillation step time: onthejob's `distill` against TRL's `GKDTrainer`.

Both run in this one process, one after the other (TRL first), on the same model
directory, the same probes and the same settings: knowledge probes from the curriculum
(a document of 8-12 items and one question; the student sees the question, the teacher
the same chat with the document appended to the system turn, `opsd.teacher_messages`),
student samples per step, most completion tokens, temperature 1 (no top-k/top-p), a
LoRA adapter (rank 16, alpha 32, no dropout, on every projection), the teacher the
same base model (fixed) given the context, per-token forward KL(teacher || student)
averaged over every sampled token of the step (GKD's beta = 0), AdamW (betas 0.9/0.99,
no weight decay, gradient norm clipped at 1, constant rate), one optimizer step per
batch, float32 on the CPU, the whole batch in one forward/backward.

TRL's GKDTrainer gives its teacher the student's own input, so it is subclassed here
for one thing only: its loss feeds the teacher that probe's teacher prompt (left-padded,
rendered by the tokenizer's chat template) followed by the student's completion, and
compares the two models' logits at the completion tokens; the loss is the mean over
the sampled completion tokens (TRL's `generalized_jsd_loss` with beta = 0 and its
"batchmean" over the label mask). Everything else is GKDTrainer as it comes: lmbda = 1
(always on-policy), HF `generate` with its KV cache, a second copy of the base model as
the teacher (GKD takes a teacher model; onthejob switches its adapter off instead), no
vLLM, no bf16, no gradient checkpointing, no logging, saving or evaluation.

Seconds per step: a `TrainerCallback` times TRL from `on_step_begin` to `on_step_end`
(generation, both forwards, backward, optimizer step); onthejob's own `step_s` covers the
same. The first step of each is a warm-up and is left out; the median of the rest is
compared. Ends with one line `speedup: X.XX` (TRL seconds/step / onthejob seconds/step).

Model: `--model DIR`, else the cached pretrained default (`default_model_dir()` under
$ONTHEJOB_HOME), else the newest cached default of an older config, else a fresh
`TinyConfig()` model with a tokenizer trained on knowledge chats (random weights: the
divergence is near 0, the timing is still the method's).

Not matched, by design or because the two differ in kind:

- Which prompts a step samples: onthejob draws `--probes` probes and `--samples` samples
  of each; TRL's dataset holds every probe `--samples` times and its shuffled sampler
  draws `--probes x --samples` rows, so a step has the same number of sequences of the
  same kind, not the same grouping. onthejob runs each probe's prompt once for its
  samples (`onthejob.train.shared_prefix`); TRL runs every row whole.
- Positions: TRL's loss forwards pass no position ids, so left-padded rows are shifted
  (as GKDTrainer does for its student); onthejob derives them from the tokens.
- The head: TRL computes logits at every position of the batch ([B, T, V]); onthejob only
  at the sampled tokens.

    .venv/bin/python benchmarks/opsd_vs_trl.py [--model DIR] [--steps 10] [--probes 8]
        [--samples 4] [--max-new-tokens 32] [--lr LR] [--threads N] [--only trl|onthejob]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import side_by_side
import torch
from side_by_side import (
    per_step_seconds,
    prepare_process,
    print_settings,
    resolve_model_dir,
    step_clock,
    trl_cpu_arguments,
    trl_optimizer_settings,
)

from onthejob import curriculum
from onthejob.models import (
    count_parameters,
    load_model,
)
from onthejob.prompts import KNOWLEDGE_SYSTEM
from onthejob.train.opsd import NOTES, OPSDConfig, Probe, distill, probe_prompts, teacher_messages

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SideResult(side_by_side.SideResult):
    """One trainer's steps, with its loss."""

    losses: list[float] = field(default_factory=list)
    """Mean per-token forward KL of each step's samples (the loss)."""


# ---------------------------------------------------------------------------- model and probes


def knowledge_texts() -> list[str]:
    """Chat text of knowledge questions, to train a tokenizer for a fresh model."""
    rng = random.Random(0)
    return [
        m["content"]
        for _ in range(1500)
        for m in curriculum.knowledge_example(rng, rng.randint(8, 12), pasted=False).messages
    ]


def knowledge_probes(n: int, seed: int) -> list[Probe]:
    """n curriculum questions, each with its document as the teacher's context."""
    rng = random.Random(seed)
    probes = []
    for _ in range(n):
        with_doc, without = curriculum.knowledge_probe(rng, rng.randint(8, 12))
        document = with_doc.messages[0]["content"].removeprefix(f"{KNOWLEDGE_SYSTEM}\n{NOTES}")
        probe = Probe(without.messages[:-1], document, with_doc.answer)
        if teacher_messages(probe) != list(with_doc.messages[:-1]):
            raise SystemExit(
                "opsd.teacher_messages no longer shows documents as the curriculum does"
            )
        probes.append(probe)
    return probes


# ---------------------------------------------------------------------------- TRL


def run_trl(
    model_dir: Path, probes: list[Probe], args: argparse.Namespace, out: Path
) -> SideResult:
    """TRL's GKDTrainer, its teacher fed the probe's context; each step timed by a callback."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.experimental.utils import DataCollatorForChatML

    result = SideResult("trl")
    model, tokenizer = load_model(model_dir)
    teacher, _ = load_model(model_dir)  # GKD needs a teacher model: a second copy of the base

    class ContextTeacherCollator(DataCollatorForChatML):
        """GKD's collator, plus each row's teacher prompt (left-padded)."""

        def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            batch = super().__call__(examples)
            prompts = [
                list(
                    tokenizer.apply_chat_template(
                        e["teacher_messages"],
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=True,
                    )["input_ids"]
                )
                for e in examples
            ]
            width = max(map(len, prompts))
            batch["teacher_prompts"] = torch.tensor(
                [[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts]
            )
            batch["teacher_prompt_attention_mask"] = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
            )
            return batch

    class ContextTeacherGKD(GKDTrainer):
        """GKDTrainer whose teacher reads the context: teacher prompt + the student's completion."""

        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            width = inputs["prompts"].shape[1]  # generate() keeps the left-padded prompts first
            completion = inputs["input_ids"][:, width:]
            completion_mask = inputs["attention_mask"][:, width:]
            student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            teacher_prompts = inputs["teacher_prompts"]
            with torch.no_grad():
                teacher_logits = self.teacher_model(
                    input_ids=torch.cat([teacher_prompts, completion], dim=1),
                    attention_mask=torch.cat(
                        [inputs["teacher_prompt_attention_mask"], completion_mask], dim=1
                    ),
                ).logits
            labels = inputs["labels"][:, width:]
            loss = self.generalized_jsd_loss(
                student_logits=student.logits[:, width - 1 : -1],
                teacher_logits=teacher_logits[:, teacher_prompts.shape[1] - 1 : -1],
                labels=labels,
                beta=self.beta,
            )
            result.losses.append(float(loss.detach()))
            result.completion_tokens.append(float((labels != -100).sum()) / len(labels))
            return (loss, student) if return_outputs else loss

    rows = args.probes * args.samples
    config = GKDConfig(
        **trl_cpu_arguments(out, args.steps, rows, args.lr, args.seed),
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        lmbda=1.0,
        beta=0.0,
        seq_kd=False,
        max_length=2048,
        gradient_checkpointing=False,
    )
    dataset = Dataset.from_list(
        [
            {
                "messages": [*p.messages, {"role": "assistant", "content": p.answer or ""}],
                "teacher_messages": teacher_messages(p),
            }
            for p in probes
            for _ in range(args.samples)
        ]
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    trainer = ContextTeacherGKD(
        model=model,
        teacher_model=teacher,
        args=config,
        data_collator=ContextTeacherCollator(tokenizer=tokenizer, max_length=config.max_length),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[step_clock(result.step_seconds)],
    )
    generation = trainer.generation_config
    result.settings = {
        "sequences/step": trainer.args.per_device_train_batch_size,
        "max new tokens": generation.max_new_tokens,
        "temperature / top_k / top_p": f"{generation.temperature} / {generation.top_k} / {generation.top_p}",
        "on-policy share (lmbda)": trainer.lmbda,
        "divergence": f"JSD beta={trainer.beta} (forward KL)",
        **trl_optimizer_settings(trainer),
        "LoRA r / alpha": f"{lora.r} / {lora.lora_alpha}",
        "trainable params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "teacher": "a second copy of the base",
        "end tokens": generation.eos_token_id,
        "sampler": "HF generate, dynamic KV cache",
    }
    started = time.perf_counter()
    trainer.train()
    result.total_seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- onthejob


def run_onthejob(model_dir: Path, probes: list[Probe], args: argparse.Namespace) -> SideResult:
    """onthejob's distill on the probes; per-step numbers from its metrics."""
    model, tokenizer = load_model(model_dir)
    config = OPSDConfig(
        steps=args.steps,
        batch_size=args.probes,
        samples_per_probe=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        lr=args.lr,
        weight_decay=0.0,
        divergence="forward_kl",
        teacher="fixed",
        lora=True,
        lora_rank=16,
        lora_alpha=32.0,
        grad_clip=1.0,
        micro_batch_size=args.probes * args.samples,
        seed=args.seed,
    )
    result = SideResult("onthejob")
    started = time.perf_counter()
    run = distill(model, tokenizer, probes, config, show_progress=False)
    result.total_seconds = time.perf_counter() - started
    for record in run.history:
        result.step_seconds.append(record["step_s"])
        result.losses.append(record["loss"])
        result.completion_tokens.append(record["sample_length"])
    result.settings = {
        "sequences/step": config.batch_size * config.samples_per_probe,
        "max new tokens": config.max_new_tokens,
        "temperature / top_k / top_p": f"{config.temperature} / 0 / 1.0",
        "on-policy share (lmbda)": 1.0,
        "divergence": config.divergence,
        "lr, schedule": f"{config.lr:g}, constant (warmup 0)",
        "AdamW betas, wd, clip": f"(0.9, 0.99), {config.weight_decay}, {config.grad_clip}",
        "LoRA r / alpha": f"{config.lora_rank} / {config.lora_alpha:g}",
        "trainable params": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        "teacher": "the base, adapter switched off",
        "end tokens": tokenizer.eos_token_id,
        "dtype": str(next(run.model.parameters()).dtype),
        "sampler": "onthejob.sampling.sample, static KV cache",
    }
    return result


# ---------------------------------------------------------------------------- report


def check_same_prompts(model_dir: Path, probes: list[Probe]) -> None:
    """TRL's collator renders prompts with the chat template; onthejob with render_chat."""
    from trl.experimental.utils import DataCollatorForChatML

    _, tokenizer = load_model(model_dir)
    collator = DataCollatorForChatML(tokenizer=tokenizer, max_length=2048)
    for probe in probes:
        student, teacher = probe_prompts(tokenizer, probe)
        messages = [*probe.messages, {"role": "assistant", "content": probe.answer or ""}]
        theirs = collator([{"messages": messages}])["prompts"][0].tolist()
        template = tokenizer.apply_chat_template(
            teacher_messages(probe), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        if theirs != student or list(template) != teacher:
            raise SystemExit(
                f"the tokenizer's chat_template renders a probe differently from render_chat; "
                f"fix chat_template.jinja in {model_dir}"
            )


def print_results(results: list[SideResult]) -> None:
    print_settings([r.name for r in results], [r.settings for r in results])
    for r in results:
        print(
            f"{r.name:9s} {per_step_seconds(r.step_seconds):6.3f} s/step (median of steps 2-{len(r.step_seconds)}), "
            f"loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}, "
            f"mean completion {statistics.mean(r.completion_tokens):.1f} tokens, "
            f"whole run {r.total_seconds:.1f} s"
        )
        print(f"{'':9s} step seconds: {', '.join(f'{s:.3f}' for s in r.step_seconds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local HF model directory")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--probes", type=int, default=8, help="probes per step")
    parser.add_argument("--samples", type=int, default=4, help="student samples per probe")
    parser.add_argument("--n-probes", type=int, default=64, help="probes in the pool")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4, help="the recorded runs used 2e-4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own)"
    )
    parser.add_argument(
        "--only", choices=("trl", "onthejob"), default=None, help="run one side only"
    )
    args = parser.parse_args()
    prepare_process(args.threads)
    with tempfile.TemporaryDirectory(prefix="opsd_vs_trl-") as scratch:
        scratch_dir = Path(scratch)
        model_dir, how = resolve_model_dir(args.model, scratch_dir, knowledge_texts)
        model, tokenizer = load_model(model_dir)
        print(
            f"model: {model_dir} ({how}), {count_parameters(model) / 1e6:.2f}M parameters, "
            f"vocab {len(tokenizer)}, torch threads {torch.get_num_threads()}"
        )
        del model
        probes = knowledge_probes(args.n_probes, args.seed)
        check_same_prompts(model_dir, probes)
        lengths = [len(probe_prompts(tokenizer, p)[1]) for p in probes]
        print(
            f"probes: {len(probes)} knowledge questions, teacher prompts {min(lengths)}-{max(lengths)} "
            f"tokens (student and teacher prompts rendered identically by both, checked); "
            f"{args.steps} steps of {args.probes} x {args.samples} samples"
        )
        results = []
        if args.only in (None, "trl"):
            results.append(run_trl(model_dir, probes, args, scratch_dir / "trl"))
            gc.collect()  # TRL's trainer, models and generation cache go before onthejob starts
        if args.only in (None, "onthejob"):
            results.append(run_onthejob(model_dir, probes, args))
    print_results(results)
    if args.only is None:
        trl, ours = results
        print(
            f"speedup: {per_step_seconds(trl.step_seconds) / per_step_seconds(ours.step_seconds):.2f}"
        )


if __name__ == "__main__":
    main()
