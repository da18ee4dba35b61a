"""Perplexity of a reference answer under a policy, for the SFT-style baselines (PPL-Top, IFD)."""

from __future__ import annotations

import torch

from .prompts import PromptFormat, render


@torch.no_grad()
def answer_perplexity(model, tokenizer, prompts: list[str], targets: list[str], template: str | PromptFormat, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(PPL(target | rendered prompt), PPL(target alone)) per row: exp of the mean next-token loss over the target
    tokens (plus EOS). IFD (Cherry-LLM) is their ratio."""
    conditional = [tokenizer(render(template, p, tokenizer))["input_ids"] for p in prompts]
    bos = [tokenizer.eos_token_id]  # the unconditional context: a lone separator token
    target_ids = [tokenizer(" " + t)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    model.eval()
    out = []
    for contexts in (conditional, [bos] * len(targets)):
        values = []
        for start in range(0, len(targets), batch_size):
            rows = range(start, min(start + batch_size, len(targets)))
            seqs = [contexts[r] + target_ids[r] for r in rows]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            labels = torch.full((len(seqs), width), -100)
            for i, (r, seq) in enumerate(zip(rows, seqs)):
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
                labels[i, len(contexts[r]) : len(seq)] = torch.tensor(target_ids[r])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            shifted = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted.clamp(min=0), reduction="none")
            valid = shifted != -100
            values.append(torch.exp((nll * valid).sum(1) / valid.sum(1)))
        out.append(torch.cat(values) if values else torch.zeros(0))
    return out[0], out[1]
