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

import json
import re
from dataclasses import dataclass
from typing import Literal

import polars as pl
import torch
from torch import nn

from .artifacts import TensorBundle
from .grpo import GRPOLossConfig, per_problem_loss, token_logprobs
from .projection import Projector, per_problem_outer
from .prompts import PromptFormat
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
        self.inputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}  # one entry per forward call
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
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
            self.inputs[name].append(args[0].detach())
            self.outputs[name].append(output)

        return hook

    def output_grads(self, loss: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        flat = [(n, i) for n in self.layers for i in range(len(self.outputs[n]))]
        grads = torch.autograd.grad(loss, [self.outputs[n][i] for n, i in flat], allow_unused=True, materialize_grads=True)
        self.outputs.clear()  # drop the graph
        out: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        for (n, _), g in zip(flat, grads):
            out[n].append(g)
        return out


class ExactGradients:
    """Identity "projection": the full flattened per-problem weight gradients (for tests and reference runs)."""

    name = "exact"

    def project_layer(self, name, x, gy, owner, num_problems):
        return per_problem_outer(x.float(), gy.float(), owner, num_problems).flatten(1)

    def finalize(self, blocks):
        return blocks


def capture_batch(model, ref_model, batch, loss_config: GRPOLossConfig, layers: dict[str, nn.Linear], temperature: float = 1.0):
    """(x, gy) of each layer for one batch from one forward and one backward of sum_p loss_p.

    Returns per layer x [N, T, in], gy [N, T, out] and the problem of each of the N rows. When every problem's
    K rollouts share its prompt (as rollouts do), the prompt runs once per problem and its keys and values are
    shared by the K completions: rows are then whole problems, prompt tokens followed by all K completions.
    """
    models = [model] + ([ref_model] if loss_config.beta else [])
    shareable = all(getattr(m.config, "model_type", None) in _PLAIN_DECODERS for m in models)
    layout = _shared_prefix_layout(batch) if shareable else None
    ref_logp = None
    if loss_config.beta:
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
        loss = per_problem_loss(logp, batch, loss_config, ref_logp=ref_logp).sum()
        output_grads = capture.output_grads(loss)
    if layout is None:
        return {n: x[0] for n, x in capture.inputs.items()}, {n: g[0] for n, g in output_grads.items()}, batch.problem_index

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
    if not torch.equal(batch.input_ids[:, :lp] * prompt_mask.repeat_interleave(k, 0), prompt_ids.repeat_interleave(k, 0)):
        return None  # some rows of a problem have different prompts
    index = (row_prompt[:, None] + torch.arange(lc)[None, :]).clamp(max=batch.input_ids.shape[1] - 1)
    completion_mask = (torch.arange(lc)[None, :] < (lengths - row_prompt)[:, None]).long()
    completion_ids = batch.input_ids.gather(1, index) * completion_mask
    return _PrefixLayout(prompt_ids, prompt_mask, prompt_len, completion_ids, completion_mask, k)


def _shared_prefix_logprobs(model, batch, layout: _PrefixLayout, temperature: float) -> torch.Tensor:
    """`token_logprobs` with each prompt run once and its key/value cache repeated for its K completions."""
    from transformers import DynamicCache

    k, (num, lp) = layout.samples, layout.prompt_ids.shape
    base = model.base_model
    cache = DynamicCache(config=model.config)
    prompt = base(
        input_ids=layout.prompt_ids, attention_mask=layout.prompt_mask, position_ids=torch.arange(lp).expand(num, lp),
        past_key_values=cache, use_cache=True,
    )
    cache.batch_repeat_interleave(k)  # differentiable: gradients from all K completions sum into the prompt
    lc = layout.completion_ids.shape[1]
    row_prompt = layout.prompt_len.repeat_interleave(k)
    completion = base(
        input_ids=layout.completion_ids,
        attention_mask=torch.cat([layout.prompt_mask.repeat_interleave(k, 0), layout.completion_mask], dim=1),
        position_ids=row_prompt[:, None] + torch.arange(lc)[None, :],
        past_key_values=cache, use_cache=True,
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
    template: str | PromptFormat,
    scope: Scope = "all_linear",
    last_blocks: int = 1,
    problems_per_batch: int = 32,
    temperature: float = 1.0,
) -> FeatureBatchResult:
    """Projected gradient of each problem's GRPO loss (at `model`, KL against `ref_model`).

    Problems whose rollouts all got the same reward have zero advantage; callers skip them (see
    `rollouts.learnable_problems`) since their gradient is at most the small KL term.
    """
    layers = linear_layers(model, scope, last_blocks)
    if not layers:
        raise ValueError(f"gradient scope {scope!r} selects no linear layers")
    model.eval()  # deterministic forward (no dropout); gradients still flow
    blocks = []
    for start in range(0, problems.height, problems_per_batch):
        chunk = problems[start : start + problems_per_batch]
        batch = to_rollout_batch(chunk, rollouts, tokenizer, template, loss_config.scale_rewards, loss_config.advantage_eps)
        inputs, output_grads, owner = capture_batch(model, ref_model, batch, loss_config, layers, temperature)
        per_layer = [
            projector.project_layer(name, inputs[name], output_grads[name], owner, batch.num_problems)
            for name in layers
        ]
        blocks.append(projector.finalize(torch.cat(per_layer, dim=1)))
    width = blocks[0].shape[1] if blocks else 0
    features = torch.cat(blocks) if blocks else torch.zeros(0, width)
    return FeatureBatchResult(problems["problem_id"].to_list(), features)


@dataclass(frozen=True)
class FeatureBatch:
    """A content-defined batch of problems whose features are computed together and cached as one file."""

    key: str  # hash of the namespace and every member's row key: names the cached file
    problem_ids: tuple[str, ...]  # in key order, the order the batch is computed in
    shard: int


def feature_row_keys(problems: pl.DataFrame, rollouts: pl.DataFrame) -> list[str]:
    """Per problem: the hash of its content and of its rollouts (token ids and rewards, in sample order), i.e. of
    everything its GRPO loss reads besides the policy and the stage settings."""
    from .row_cache import problem_keys, stable_hash

    samples = rollouts.group_by("problem_id").agg(
        pl.col("token_ids").sort_by("sample_index"), pl.col("reward").sort_by("sample_index")
    )
    ordered = problems.select("problem_id").join(samples, on="problem_id", how="left", maintain_order="left")
    return [
        stable_hash(key, json.dumps(ids), json.dumps(rewards))
        for key, ids, rewards in zip(problem_keys(problems), ordered["token_ids"].to_list(), ordered["reward"].to_list(), strict=True)
    ]


def plan_feature_batches(
    problems: pl.DataFrame, rollouts: pl.DataFrame, namespace_key: str, expected_size: int, num_shards: int
) -> list[FeatureBatch]:
    """Content-defined batches of `problems` (see `row_cache.content_batches`), each assigned to a shard by its
    key. Neither the batches nor their contents depend on the shard count or on the rest of the pool."""
    from .row_cache import content_batches, shard_of, stable_hash

    keys = feature_row_keys(problems, rollouts)
    ids = problems["problem_id"].to_list()
    batches = []
    for members in content_batches(keys, expected_size):
        key = stable_hash(namespace_key, *(keys[i] for i in members))
        batches.append(FeatureBatch(key, tuple(ids[i] for i in members), shard_of(key, num_shards)))
    return batches


def compute_missing_feature_batches(
    cache, ns, batches: list[FeatureBatch], problems: pl.DataFrame, rollouts: pl.DataFrame, load_models, features_fn
) -> dict:
    """Compute and publish every batch of `batches` that `cache` lacks, one file per batch as it finishes.
    `load_models` is called only if something is missing; `features_fn(models, problems)` returns a
    `FeatureBatchResult` for one batch's problems."""
    stats = {"batches": len(batches), "reused_batches": 0, "computed_batches": 0, "computed_problems": 0}
    models = None
    for batch in batches:
        if cache.has_batch(ns, batch.key):
            stats["reused_batches"] += 1
            continue
        models = models or load_models()
        members = pl.DataFrame({"problem_id": list(batch.problem_ids)}).join(problems, on="problem_id", how="left", maintain_order="left")
        result = features_fn(models, members)
        cache.put_batch(ns, batch.key, TensorBundle({"features": result.features.contiguous()}, {"problem_ids": json.dumps(result.problem_ids)}))
        stats["computed_batches"] += 1
        stats["computed_problems"] += len(batch.problem_ids)
    return stats


def gather_features(cache, ns, batches: list[FeatureBatch], problem_ids: list[str]) -> FeatureBatchResult:
    """The cached features of every batch, rows in `problem_ids` order (every id must belong to a batch)."""
    blocks, ids = [], []
    for batch in batches:
        bundle = cache.get_batch(ns, batch.key)
        stored = json.loads(bundle.metadata["problem_ids"])
        if stored != list(batch.problem_ids):
            raise ValueError(f"cached feature batch {batch.key[:16]} holds other problems than planned")
        blocks.append(bundle.tensors["features"])
        ids.extend(stored)
    if not blocks:
        return FeatureBatchResult([], torch.zeros(0, 0))
    features = torch.cat(blocks)
    row = {pid: i for i, pid in enumerate(ids)}
    return FeatureBatchResult(list(problem_ids), features[[row[pid] for pid in problem_ids]])


def loop_gradients(model, ref_model, tokenizer, problems, rollouts, loss_config: GRPOLossConfig, template="qa", scope: Scope = "all_linear") -> torch.Tensor:
    """The reference `gradient_features` is checked and timed against (the LESS way): one forward/backward per
    problem, reading each scored layer's weight .grad. [P, sum of layer sizes], rows in `problems` order."""
    layers = linear_layers(model, scope)
    rows = []
    for i in range(problems.height):
        batch = to_rollout_batch(problems[i : i + 1], rollouts, tokenizer, template, loss_config.scale_rewards, loss_config.advantage_eps)
        ref_logp = None
        if loss_config.beta:
            with torch.no_grad():
                ref_logp = token_logprobs(ref_model, batch)
        model.zero_grad(set_to_none=True)
        per_problem_loss(token_logprobs(model, batch), batch, loss_config, ref_logp=ref_logp).sum().backward()
        rows.append(torch.cat([layer.weight.grad.flatten() for layer in layers.values()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


class NonFiniteError(FloatingPointError):
    """NaN or inf where a number was required; the message names the problems."""


def drop_nonfinite(result: FeatureBatchResult, policy: Literal["fail", "exclude"]) -> tuple[FeatureBatchResult, list[str]]:
    """Check every problem's features. `fail` raises naming the problems; `exclude` zeroes their rows (they then
    score like zero-variance problems) and returns their ids so the stage can count and list them."""
    bad_rows = (~torch.isfinite(result.features).all(dim=1)).nonzero().flatten().tolist()
    bad_ids = [result.problem_ids[i] for i in bad_rows]
    if bad_ids and policy == "fail":
        raise NonFiniteError(f"non-finite gradient features for {len(bad_ids)} problems, e.g. {bad_ids[:5]}")
    features = result.features.clone()
    features[bad_rows] = 0.0
    return FeatureBatchResult(result.problem_ids, features), bad_ids
