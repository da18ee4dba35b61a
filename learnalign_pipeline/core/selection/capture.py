"""Capturing what per-problem gradients are made of: each chosen linear layer's input x and the gradient gy at its
output, from one batched forward and one backward of sum_p loss_p.

Forward hooks on the chosen nn.Linear layers keep each layer's input and its (graph-attached) output; one
`torch.autograd.grad` call then gives gy at every captured output, with the weights frozen so no weight gradient
is ever accumulated (a per-problem loop wastes time on that). Because a causal LM processes rows independently
and `per_problem_loss` normalizes each problem by its own quantities, the backward pass of sum_p loss_p delivers
to problem p's rows exactly d loss_p / d output, so dW_p = sum over p's rows and tokens of gy x^T is the exact
per-problem gradient of that layer's weight (`projection.py` turns the pairs into features).

Only linear weights count (biases, norms and embeddings are left out, as LESS and LoGra do); they hold nearly
all of a transformer's parameters. When a problem's K rollouts share its prompt, the prompt runs once and its
key/value cache is shared by the K completions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import DynamicCache

from ..training.grpo import GRPOLossConfig, per_problem_loss, token_logprobs

Scope = Literal["all_linear", "last_blocks", "attention"]
_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def linear_layers(model: nn.Module, scope: Scope = "all_linear", last_blocks: int = 1) -> dict[str, nn.Linear]:
    """The linear layers whose weight gradients form the features, by scope, in module order.

    A linear layer whose weight is shared with an embedding (a tied output head) is left out: that weight's
    gradient also has the embedding's part, which is not an outer product of captured activations.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in embedding_weights
    }
    if scope == "all_linear":
        return layers
    if scope == "attention":
        return {n: m for n, m in layers.items() if ".self_attn." in n}
    if scope == "last_blocks":
        blocks = {n: int(b.group(1)) for n in layers if (b := _BLOCK.search(n))}
        first = max(blocks.values()) - last_blocks + 1
        return {n: layers[n] for n, b in blocks.items() if b >= first}
    raise ValueError(f"unknown gradient scope {scope!r}; use all_linear, last_blocks or attention")


class _Capture:
    """Forward hooks keeping each chosen layer's input and (graph-attached) output.

    While active, every parameter is frozen and only the embedding output requires grad, so the forward pass
    records just what activation gradients need and `torch.autograd.grad` on the captured outputs never
    computes a weight gradient (the per-problem weight gradients are formed from x and gy instead).
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Linear]):
        self.model = model
        self.layers = layers
        self.inputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}  # one entry per forward call
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        self._handles: list = []
        self._frozen: list[nn.Parameter] = []

    def __enter__(self) -> _Capture:
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        embed = self.model.get_input_embeddings()
        self._handles.append(embed.register_forward_hook(lambda module, args, output: output.requires_grad_()))
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for p in self._frozen:
            p.requires_grad_(True)

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name].append(args[0].detach())
            self.outputs[name].append(output)

        return hook

    def output_grads(self, loss: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        flat = [(n, i) for n in self.layers for i in range(len(self.outputs[n]))]
        grads = torch.autograd.grad(
            loss, [self.outputs[n][i] for n, i in flat], allow_unused=True, materialize_grads=True
        )
        self.outputs.clear()  # drop the graph
        out: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        for (n, _), g in zip(flat, grads):
            out[n].append(g)
        return out


def capture_batch(
    model, ref_model, batch, loss_config: GRPOLossConfig, layers: dict[str, nn.Linear], temperature: float = 1.0
):
    """(x, gy) of each layer for one batch from one forward and one backward of sum_p loss_p.

    Returns per layer x [N, T, in], gy [N, T, out] and the problem of each of the N rows. When every problem's
    K rollouts share its prompt (as rollouts do), the prompt runs once per problem and its keys and values are
    shared by the K completions: rows are then whole problems, prompt tokens followed by all K completions.
    """
    # The reference is the scored policy itself when the KL is taken against the stage's start: its log-probs are
    # the policy's own (detached), so no second forward is needed.
    self_reference = ref_model is model
    models = [model] + ([ref_model] if loss_config.beta else [])
    shareable = all(getattr(m.config, "model_type", None) in _PLAIN_DECODERS for m in models)
    layout = _shared_prefix_layout(batch) if shareable else None
    ref_logp = None
    if loss_config.beta and not self_reference:
        with torch.no_grad():
            if layout is None:
                ref_logp = token_logprobs(ref_model, batch, temperature)
            else:
                ref_logp = _shared_prefix_logprobs(ref_model, batch, layout, temperature)
    with _Capture(model, layers) as capture:
        if layout is None:
            logp = token_logprobs(model, batch, temperature)
        else:
            logp = _shared_prefix_logprobs(model, batch, layout, temperature)
        if loss_config.beta and self_reference:
            ref_logp = logp.detach()
        loss = per_problem_loss(logp, batch, loss_config, ref_logp=ref_logp).sum()
        output_grads = capture.output_grads(loss)
    if layout is None:
        return (
            {n: x[0] for n, x in capture.inputs.items()},
            {n: g[0] for n, g in output_grads.items()},
            batch.problem_index,
        )

    def per_problem_rows(prompt: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        # [P, Lp, d] and [P*K, Lc, d] -> [P, Lp + K*Lc, d]: a problem's tokens in one row (padding has gy = 0)
        return torch.cat([prompt, completions.reshape(prompt.shape[0], -1, completions.shape[-1])], dim=1)

    inputs = {n: per_problem_rows(*capture.inputs[n]) for n in layers}
    grads = {n: per_problem_rows(*output_grads[n]) for n in layers}
    return inputs, grads, torch.arange(batch.num_problems)


# Decoders whose logits are exactly lm_head(last hidden state) and that take explicit position ids with a
# key/value cache: the shared-prompt forward reproduces their full forward.
_PLAIN_DECODERS = {"qwen2", "qwen3", "llama", "mistral"}


@dataclass(frozen=True)
class _PrefixLayout:
    prompt_ids: torch.Tensor  # [P, Lp] right-padded
    prompt_mask: torch.Tensor  # [P, Lp]
    prompt_len: torch.Tensor  # [P]
    completion_ids: torch.Tensor  # [R, Lc] right-padded
    completion_mask: torch.Tensor  # [R, Lc]
    samples: int  # K rows per problem


def _shared_prefix_layout(batch) -> _PrefixLayout | None:
    """Split rows into per-problem prompts and per-row completions, or None if rows don't share prompts."""
    owner, num = batch.problem_index, batch.num_problems
    counts = torch.bincount(owner, minlength=num)
    if owner.numel() == 0 or not bool((counts == counts[0]).all()) or not bool((owner[1:] >= owner[:-1]).all()):
        return None
    if not bool(batch.completion_mask.any(dim=1).all()):
        return None
    k = int(counts[0])
    lengths = batch.attention_mask.sum(dim=1)
    row_prompt = batch.completion_mask.argmax(dim=1) + 1  # first completion target t predicts token t+1
    first_rows = torch.arange(num) * k
    prompt_len = row_prompt[first_rows]
    if not torch.equal(row_prompt, prompt_len.repeat_interleave(k)):
        return None
    lp, lc = int(prompt_len.max()), int((lengths - row_prompt).max())
    cols = torch.arange(lp)
    prompt_mask = (cols[None, :] < prompt_len[:, None]).long()
    prompt_ids = batch.input_ids[first_rows, :lp] * prompt_mask  # padding as token 0: masked out anyway
    if not torch.equal(
        batch.input_ids[:, :lp] * prompt_mask.repeat_interleave(k, 0), prompt_ids.repeat_interleave(k, 0)
    ):
        return None  # some rows of a problem have different prompts
    index = (row_prompt[:, None] + torch.arange(lc)[None, :]).clamp(max=batch.input_ids.shape[1] - 1)
    completion_mask = (torch.arange(lc)[None, :] < (lengths - row_prompt)[:, None]).long()
    completion_ids = batch.input_ids.gather(1, index) * completion_mask
    return _PrefixLayout(prompt_ids, prompt_mask, prompt_len, completion_ids, completion_mask, k)


def _shared_prefix_logprobs(model, batch, layout: _PrefixLayout, temperature: float) -> torch.Tensor:
    """`token_logprobs` with each prompt run once and its key/value cache repeated for its K completions."""
    k, (num, lp) = layout.samples, layout.prompt_ids.shape
    base = model.base_model
    cache = DynamicCache(config=model.config)
    prompt = base(
        input_ids=layout.prompt_ids,
        attention_mask=layout.prompt_mask,
        position_ids=torch.arange(lp).expand(num, lp),
        past_key_values=cache,
        use_cache=True,
    )
    cache.batch_repeat_interleave(k)  # differentiable: gradients from all K completions sum into the prompt
    lc = layout.completion_ids.shape[1]
    row_prompt = layout.prompt_len.repeat_interleave(k)
    completion = base(
        input_ids=layout.completion_ids,
        attention_mask=torch.cat([layout.prompt_mask.repeat_interleave(k, 0), layout.completion_mask], dim=1),
        position_ids=row_prompt[:, None] + torch.arange(lc)[None, :],
        past_key_values=cache,
        use_cache=True,
    )
    last_prompt = prompt.last_hidden_state[torch.arange(num), layout.prompt_len - 1].repeat_interleave(k, 0)
    hidden = torch.cat([last_prompt[:, None], completion.last_hidden_state[:, :-1]], dim=1)  # state predicting token j
    logits = model.get_output_embeddings()(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, layout.completion_ids.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(layout.completion_mask.bool(), logp, 0.0)
    # back to the right-padded [R, T-1] layout: completion token j of row r is target column prompt_len - 1 + j
    width = batch.completion_mask.shape[1]
    full = torch.zeros(logp.shape[0], width + lc, dtype=logp.dtype)
    full = full.scatter(1, (row_prompt - 1)[:, None] + torch.arange(lc)[None, :], logp)
    return full[:, :width]
