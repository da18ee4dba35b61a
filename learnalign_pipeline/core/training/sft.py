"""Supervised pre-training of the built-in policy: next-token loss on the target tokens only."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..policy.model import TinyPolicyConfig, build_model, train_tokenizer
from ..task.prompts import PromptFormat, render
from .batches import epoch_batches
from .config import PretrainConfig


def target_batch(
    contexts: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) for context + target sequences; labels are -100 outside
    the target, so a causal-LM loss scores the target tokens only (supervised pre-training, answer perplexity)."""
    seqs = [c + t for c, t in zip(contexts, targets)]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100)
    for i, (context, seq) in enumerate(zip(contexts, seqs)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        labels[i, len(context) : len(seq)] = torch.tensor(seq[len(context) :])
    return input_ids, attention_mask, labels


def supervised_pretrain(
    model,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    config: PretrainConfig,
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Next-token loss on the target tokens only (the prompt conditions but is not learned)."""
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) * max(0.0, 1 - s / config.steps)
    )
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    target_ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    model.train()
    history = []
    for step, rows in enumerate(epoch_batches(range(len(prompts)), config.batch_size, config.steps, config.seed)):
        input_ids, attention_mask, labels = target_batch(
            [prompt_ids[r] for r in rows], [target_ids[r] for r in rows], tokenizer.pad_token_id
        )
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        record = {"step": step, "loss": float(out.loss.detach()), "lr": schedule.get_last_lr()[0]}
        history.append(record)
        if log:
            log(record)
    model.eval()
    return history


def pretrain_tiny_policy(
    questions: list[str],
    targets: list[str],
    spec: TinyPolicyConfig,
    config: PretrainConfig,
    prompt_format: str | PromptFormat,
    log=None,
):
    """Train the tokenizer on the corpus, build the model and pre-train it: returns (model, tokenizer, history).

    Targets are completions such as "3+4=7. #### 7"; a space separates them from the rendered question, as in
    generation. With a chat format the questions are wrapped in the new tokenizer's chat template (the tokenizer
    itself is trained on the plain text) and every target ends with the tokenizer's EOS, <|im_end|> for qwen style.
    """
    fmt = prompt_format if isinstance(prompt_format, PromptFormat) else PromptFormat(prompt_format)
    completions = [" " + t for t in targets]
    plain = (render(fmt.template, q) + c for q, c in zip(questions[:5000], completions[:5000]))
    tokenizer = train_tokenizer(plain, spec.vocab_size, style=spec.style)
    prompts = [fmt.render(q, tokenizer) for q in questions]
    model = build_model(spec, tokenizer, config.seed)
    history = supervised_pretrain(model, tokenizer, prompts, completions, config, log=log)
    return model, tokenizer, history
