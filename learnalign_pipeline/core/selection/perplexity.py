"""Perplexity of a reference answer under a policy, for the SFT-style baselines (PPL-Top, IFD)."""

from __future__ import annotations

import torch

from ..task.prompts import PromptFormat, encode_prompt, encode_text, pad_token_id, render
from ..training.sft import target_batch


@torch.no_grad()
def answer_perplexity(
    model, tokenizer, prompts: list[str], targets: list[str], template: str | PromptFormat, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(PPL(target | rendered prompt), PPL(target alone)) per row: exp of the mean next-token loss over the target
    tokens (plus EOS). IFD (Cherry-LLM) is their ratio."""
    conditional = [encode_prompt(tokenizer, render(template, p, tokenizer)) for p in prompts]
    bos = [tokenizer.eos_token_id]  # the unconditional context: a lone separator token
    # the target continues its context: no BOS of its own inside the sequence
    target_ids = [encode_text(tokenizer, " " + t) + [tokenizer.eos_token_id] for t in targets]
    model.eval()
    out = []
    for contexts in (conditional, [bos] * len(targets)):
        values = []
        for start in range(0, len(targets), batch_size):
            rows = slice(start, start + batch_size)
            batch = target_batch(contexts[rows], target_ids[rows], pad_token_id(tokenizer))
            ids, mask, labels = (t.to(model.device) for t in batch)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            shifted = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted.clamp(min=0), reduction="none")
            valid = shifted != -100
            values.append(torch.exp((nll * valid).sum(1) / valid.sum(1)))
        out.append(torch.cat(values).cpu() if values else torch.zeros(0))
    return out[0], out[1]
