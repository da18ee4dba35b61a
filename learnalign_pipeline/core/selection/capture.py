"""Per-problem gradient features from one batched forward and one backward of sum_p loss_p, projected inside the
hooks.

A forward hook on each scored nn.Linear keeps `project_input(x)` for that call and registers a hook on the layer's
output; in backward that hook receives gy, projects it and adds this call's per-problem outer products
sum_t gy_t' x_t'^T to the layer's [P, b, a] accumulator at once. Because a causal LM processes rows independently
and `per_problem_loss` normalizes each problem by its own quantities, the backward pass of sum_p loss_p delivers to
problem p's rows exactly d loss_p / d output, so the accumulator holds each problem's exact projected weight
gradient. Weights are frozen during the pass (no weight gradient is ever formed), and what the hooks keep per
token is the projected width (k_in per layer with `KroneckerProjector`), not the layer's.

A layer may be called any number of times per batch: the prompt pass and the completion pass of the shared-prompt
forward, the output head once on completion positions only (an untied lm_head is a scored layer), and the head in
row chunks. Each forward call declares which problem each of its rows belongs to (`FeatureCapture.rows`).

Memory is bounded further by two switches: `checkpointing` recomputes each decoder layer of the completion pass in
backward instead of keeping its activations (the model's own autograd state, ~3I + 4h numbers per token and layer,
is most of what remains), and the output head, log-softmax and gather run in chunks of whole problems, so
full-vocabulary logits exist for one chunk at a time. `memory.py` estimates the bytes either way.

Only linear weights count (biases, norms and embeddings are left out, as LESS and LoGra do); they hold nearly
all of a transformer's parameters. When a problem's K rollouts share its prompt, the prompt runs once and its
key/value cache is shared by the K completions.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..training.grpo import GRPOLossConfig, per_problem_loss
from .projection import Projector, per_problem_outer

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


class FeatureCapture:
    """Hooks that turn one batched backward into per-problem projected gradients (module docstring).

    While active, every parameter is frozen and only the embedding output requires grad, so the forward pass
    records just what activation gradients need. `stop()` before the backward pass: recomputation of checkpointed
    layers then runs the forward hooks again, and they must not count a call twice.
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Linear], projector: Projector, num_problems: int):
        self.model, self.layers, self.projector, self.num_problems = model, layers, projector, num_problems
        self.sums: dict[str, torch.Tensor] = {}  # layer -> [P, b, a] running per-problem sums
        self._owner: torch.Tensor | None = None
        self._active = False
        self._handles: list = []
        self._frozen: list[nn.Parameter] = []

    def __enter__(self) -> FeatureCapture:
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        embed = self.model.get_input_embeddings()
        self._handles.append(embed.register_forward_hook(lambda module, args, output: output.requires_grad_()))
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for p in self._frozen:
            p.requires_grad_(True)
        self._active = False

    @contextlib.contextmanager
    def rows(self, owner: torch.Tensor):
        """The forward calls inside belong to problems `owner` ([rows] problem index of each row)."""
        self._owner = owner
        try:
            yield
        finally:
            self._owner = None

    def stop(self) -> None:
        self._active = False

    def _hook(self, name: str):
        def forward_hook(module, args, output):
            if not self._active or not output.requires_grad:
                return
            if self._owner is None:
                raise RuntimeError(f"{name} ran outside FeatureCapture.rows(): its rows' problems are unknown")
            owner, device = self._owner, output.device
            with torch.autocast(device.type, enabled=False):
                x = self.projector.project_input(name, args[0].detach())

            def gradient_hook(gy):
                with torch.autocast(device.type, enabled=False):
                    g = self.projector.project_output(name, gy.detach())
                    block = per_problem_outer(x, g, owner, self.num_problems)
                self.sums[name] = block if name not in self.sums else self.sums[name] + block

            output.register_hook(gradient_hook)

        return forward_hook

    def features(self) -> torch.Tensor:
        """[P, width]: each layer's block (zeros for a layer no gradient reached), in layer order, finalized."""
        blocks = []
        for name, layer in self.layers.items():
            outer = self.sums.get(name)
            if outer is None:  # e.g. a layer after the last position any loss reads
                like = layer.weight
                a = self.projector.project_input(name, torch.zeros(1, layer.in_features, device=like.device)).shape[-1]
                b = self.projector.project_output(name, torch.zeros(1, layer.out_features, device=like.device)).shape[
                    -1
                ]
                outer = torch.zeros(self.num_problems, b, a, device=like.device)
            blocks.append(self.projector.layer_block(name, outer))
        return self.projector.finalize(torch.cat(blocks, dim=1))


def capture_features(
    model,
    ref_model,
    batch,
    loss_config: GRPOLossConfig,
    layers: dict[str, nn.Linear],
    projector: Projector,
    temperature: float = 1.0,
    checkpointing: bool = False,
    head_chunk_rows: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[P, width] projected per-problem gradients of one batch (on the model's device) from one forward and one
    backward of sum_p loss_p. `ref_model` is the KL reference: None without a KL term, `model` itself when the
    policy is its own reference (its log-probs, detached: no second forward)."""
    self_reference = ref_model is model
    models = [model] + ([ref_model] if loss_config.beta and not self_reference else [])
    shareable = all(getattr(m.config, "model_type", None) in _PLAIN_DECODERS for m in models)
    layout = _shared_prefix_layout(batch) if shareable else None
    device = model.device
    batch = batch.to(device)
    layout = layout.to(device) if layout is not None else None
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    chunk = head_chunk_rows or batch.input_ids.shape[0]
    ref_logp = None
    if loss_config.beta and not self_reference:
        with torch.no_grad(), autocast():
            ref_logp = sequence_logprobs(ref_model, batch, layout, temperature, chunk_rows=chunk)
    with FeatureCapture(model, layers, projector, batch.num_problems) as capture:
        with autocast():
            logp = sequence_logprobs(model, batch, layout, temperature, capture, checkpointing, chunk)
        if loss_config.beta and self_reference:
            ref_logp = logp.detach()
        loss = per_problem_loss(logp, batch, loss_config, ref_logp=ref_logp).sum()
        capture.stop()
        loss.backward()
        return capture.features()


def sequence_logprobs(
    model,
    batch,
    layout: _PrefixLayout | None,
    temperature: float,
    capture: FeatureCapture | None = None,
    checkpointing: bool = False,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """[R, T-1] log-probability of each next token (0 outside completions), as `grpo.token_logprobs` computes it,
    with every forward call's rows declared to `capture`. With a shared-prompt `layout` each prompt runs once and
    its key/value cache serves its K completions."""
    rows = capture.rows if capture is not None else (lambda owner: contextlib.nullcontext())
    device = batch.input_ids.device
    base = model.base_model
    if layout is None:
        width = batch.completion_mask.shape[1]
        targeted = batch.completion_mask.any(dim=0).nonzero()
        first = int(targeted[0]) if targeted.numel() else width
        with rows(batch.problem_index), _recomputed_layers(model, checkpointing):
            hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state[:, first:-1]
        targets = batch.input_ids[:, first + 1 :]
        logp = _head_logprobs(model, hidden, targets, temperature, batch.problem_index, capture, chunk_rows)
        return torch.nn.functional.pad(logp, (first, 0))
    k, (num, lp) = layout.samples, layout.prompt_ids.shape
    cache = DynamicCache(config=model.config)
    with rows(torch.arange(num, device=device)):  # prompts run once; their activations are kept (P x Lp tokens)
        prompt = base(
            input_ids=layout.prompt_ids,
            attention_mask=layout.prompt_mask,
            position_ids=torch.arange(lp, device=device).expand(num, lp),
            past_key_values=cache,
            use_cache=True,
        )
    cache.batch_repeat_interleave(k)  # differentiable: gradients from all K completions sum into the prompt
    recompute = checkpointing and _freeze_prefix(cache)
    lc = layout.completion_ids.shape[1]
    row_prompt = layout.prompt_len.repeat_interleave(k)
    owner = torch.arange(num, device=device).repeat_interleave(k)
    with rows(owner), _recomputed_layers(model, recompute):
        completion = base(
            input_ids=layout.completion_ids,
            attention_mask=torch.cat([layout.prompt_mask.repeat_interleave(k, 0), layout.completion_mask], dim=1),
            position_ids=row_prompt[:, None] + torch.arange(lc, device=device)[None, :],
            past_key_values=cache,
            use_cache=True,
        )
    last_prompt = prompt.last_hidden_state[torch.arange(num, device=device), layout.prompt_len - 1]
    hidden = torch.cat([last_prompt.repeat_interleave(k, 0)[:, None], completion.last_hidden_state[:, :-1]], dim=1)
    logp = _head_logprobs(model, hidden, layout.completion_ids, temperature, owner, capture, chunk_rows)
    logp = torch.where(layout.completion_mask.bool(), logp, 0.0)
    # back to the right-padded [R, T-1] layout: completion token j of row r is target column prompt_len - 1 + j
    width = batch.completion_mask.shape[1]
    full = torch.zeros(logp.shape[0], width + lc, dtype=logp.dtype, device=device)
    full = full.scatter(1, (row_prompt - 1)[:, None] + torch.arange(lc, device=device)[None, :], logp)
    return full[:, :width]


def _head_logprobs(model, hidden, targets, temperature, owner, capture, chunk_rows):
    """log p(target) through the output head, `chunk_rows` rows at a time; with more than one chunk under autograd,
    each chunk is recomputed in backward, so full-vocabulary logits exist for one chunk only (at Qwen2.5's 151,936
    columns they would otherwise outweigh every layer's activations together)."""
    head = model.get_output_embeddings()

    def chunk_logprobs(h, t):
        logits = head(h)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # log-softmax in float32 at least
        if temperature != 1.0:
            logits = logits / temperature
        return torch.log_softmax(logits, dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)

    rows = hidden.shape[0]
    step = rows if chunk_rows is None else max(1, chunk_rows)
    pieces = []
    for start in range(0, rows, step):
        part = slice(start, start + step)
        with capture.rows(owner[part]) if capture is not None else contextlib.nullcontext():
            if step < rows and torch.is_grad_enabled():
                pieces.append(checkpoint(chunk_logprobs, hidden[part], targets[part], use_reentrant=False))
            else:
                pieces.append(chunk_logprobs(hidden[part], targets[part]))
    return torch.cat(pieces)


class _PrefixLayer(DynamicLayer):
    """A cache layer holding a fixed prompt prefix: `update` returns prefix + new keys and values without storing
    them, so a recomputed decoder layer sees exactly what its first run saw."""

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _freeze_prefix(cache: DynamicCache) -> bool:
    """Make every layer of `cache` a read-only prefix; False (cache untouched) if it has layers of another kind
    (e.g. sliding windows), for which the completion pass then keeps its activations."""
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return False
    for layer in cache.layers:
        layer.__class__ = _PrefixLayer
    return True


@contextlib.contextmanager
def _recomputed_layers(model, enabled: bool):
    """Run each decoder layer under non-reentrant activation checkpointing: its activations are recomputed in
    backward instead of kept. (transformers' own gradient checkpointing drops the key/value cache the
    shared-prompt pass needs, so the layers' forward is wrapped here instead.)"""
    if not enabled:
        yield
        return
    layers = model.base_model.layers
    for layer in layers:
        forward = layer.forward
        layer.forward = lambda *args, _f=forward, **kwargs: checkpoint(_f, *args, use_reentrant=False, **kwargs)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


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

    def to(self, device) -> _PrefixLayout:
        move = {
            f: getattr(self, f).to(device)
            for f in ("prompt_ids", "prompt_mask", "prompt_len", "completion_ids", "completion_mask")
        }
        return _PrefixLayout(**move, samples=self.samples)


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
    device = owner.device
    first_rows = torch.arange(num, device=device) * k
    prompt_len = row_prompt[first_rows]
    if not torch.equal(row_prompt, prompt_len.repeat_interleave(k)):
        return None
    lp, lc = int(prompt_len.max()), int((lengths - row_prompt).max())
    cols = torch.arange(lp, device=device)
    prompt_mask = (cols[None, :] < prompt_len[:, None]).long()
    prompt_ids = batch.input_ids[first_rows, :lp] * prompt_mask  # padding as token 0: masked out anyway
    if not torch.equal(
        batch.input_ids[:, :lp] * prompt_mask.repeat_interleave(k, 0), prompt_ids.repeat_interleave(k, 0)
    ):
        return None  # some rows of a problem have different prompts
    positions = torch.arange(lc, device=device)[None, :]
    index = (row_prompt[:, None] + positions).clamp(max=batch.input_ids.shape[1] - 1)
    completion_mask = (positions < (lengths - row_prompt)[:, None]).long()
    completion_ids = batch.input_ids.gather(1, index) * completion_mask
    return _PrefixLayout(prompt_ids, prompt_mask, prompt_len, completion_ids, completion_mask, k)
