"""Per-problem GRPO gradients from one batched forward/backward, projected as they are captured.

Forward hooks on the chosen nn.Linear layers keep each layer's input x and its output; one
`torch.autograd.grad` call then gives the gradient gy at every captured output (weights frozen, so no weight
gradient is ever accumulated, which a per-problem loop wastes time on). Because a
causal LM processes rows independently and `per_problem_loss` normalizes each problem by its own quantities,
the backward pass of sum_p loss_p delivers to problem p's rows exactly d loss_p / d output, so
dW_p = sum over p's rows and tokens of gy x^T is the exact per-problem gradient of that layer's weight.
The projector turns the (x, gy) pairs into features without ever forming dW_p for all layers at once.

Only linear weights count (biases, norms and embeddings are left out, as LESS and LoGra do); they hold nearly
all of a transformer's parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import polars as pl
import torch
from torch import nn

from .grpo import GRPOLossConfig, per_problem_loss, token_logprobs
from .projection import Projector, per_problem_outer
from .rollouts import to_rollout_batch

Scope = Literal["all_linear", "last_blocks", "attention"]
_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def linear_layers(model: nn.Module, scope: Scope = "all_linear", last_blocks: int = 1) -> dict[str, nn.Linear]:
    """The linear layers whose weight gradients form the features, by scope, in module order.

    A linear layer whose weight is shared with an embedding (a tied output head) is left out: that weight's
    gradient also has the embedding's part, which is not an outer product of captured activations.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layers = {
        name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) not in embedding_weights
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
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._frozen: list[nn.Parameter] = []

    def __enter__(self) -> "_Capture":
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
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output

        return hook

    def output_grads(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(self.outputs)
        grads = torch.autograd.grad(loss, [self.outputs[n] for n in names], allow_unused=True, materialize_grads=True)
        self.outputs.clear()  # drop the graph
        return dict(zip(names, grads))


class ExactGradients:
    """Identity "projection": the full flattened per-problem weight gradients (for tests and reference runs)."""

    name = "exact"

    def project_layer(self, name, x, gy, owner, num_problems):
        return per_problem_outer(x.float(), gy.float(), owner, num_problems).flatten(1)

    def finalize(self, blocks):
        return blocks


def capture_batch(model, ref_model, batch, loss_config: GRPOLossConfig, layers: dict[str, nn.Linear], temperature: float = 1.0):
    """(inputs x, output gradients gy) of each layer for one batch: one forward and one backward of sum_p loss_p."""
    ref_logp = None
    if loss_config.beta:
        with torch.no_grad():
            ref_logp = token_logprobs(ref_model, batch, temperature)
    with _Capture(model, layers) as capture:
        logp = token_logprobs(model, batch, temperature)
        loss = per_problem_loss(logp, batch, loss_config, ref_logp=ref_logp).sum()
        output_grads = capture.output_grads(loss)
    return capture.inputs, output_grads


@dataclass(frozen=True)
class FeatureBatchResult:
    problem_ids: list[str]
    features: torch.Tensor  # [P, width] float32, rows in `problem_ids` order


def gradient_features(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer,
    problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    loss_config: GRPOLossConfig,
    projector: Projector,
    template: str,
    scope: Scope = "all_linear",
    last_blocks: int = 1,
    problems_per_batch: int = 32,
    temperature: float = 1.0,
) -> FeatureBatchResult:
    """Projected gradient of each problem's GRPO loss (at `model`, KL against `ref_model`).

    Problems whose rollouts all got the same reward have zero advantage; callers skip them (see
    `zero_variance_ids`) since their gradient is at most the small KL term.
    """
    layers = linear_layers(model, scope, last_blocks)
    if not layers:
        raise ValueError(f"gradient scope {scope!r} selects no linear layers")
    model.eval()  # deterministic forward (no dropout); gradients still flow
    blocks = []
    for start in range(0, problems.height, problems_per_batch):
        chunk = problems[start : start + problems_per_batch]
        batch = to_rollout_batch(chunk, rollouts, tokenizer, template, loss_config.scale_rewards, loss_config.advantage_eps)
        inputs, output_grads = capture_batch(model, ref_model, batch, loss_config, layers, temperature)
        per_layer = [
            projector.project_layer(name, inputs[name], output_grads[name], batch.problem_index, batch.num_problems)
            for name in layers
        ]
        blocks.append(projector.finalize(torch.cat(per_layer, dim=1)))
    width = blocks[0].shape[1] if blocks else 0
    features = torch.cat(blocks) if blocks else torch.zeros(0, width)
    return FeatureBatchResult(problems["problem_id"].to_list(), features)


def zero_variance_ids(rates: pl.DataFrame) -> set[str]:
    """Problems with p in {0, 1}: every advantage is zero, so no backward pass is needed."""
    return set(rates.filter((pl.col("success_rate") <= 0) | (pl.col("success_rate") >= 1))["problem_id"].to_list())
