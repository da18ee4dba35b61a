"""How much memory one batched forward/backward of the gradient-feature stage takes, from the model's config and
the batch's lengths, and the sub-batches of whole problems that keep it under a budget.

The counts come from exact accounting of what autograd saves in a Qwen2-architecture decoder layer when the
weights are frozen and gradients flow through activations only (sdpa attention; `saved_tensors_hooks`, five
shapes, `docs/results.md`), per token and layer:
  float32:            4 * (3 I + 4 h + 2 kv + heads) bytes
  bfloat16 autocast:  2 * (3 I + 2 kv + heads) + 12 h bytes   (RMSNorm keeps float32 copies)
with h the hidden size, I the MLP width and kv = key/value heads x head dim. On top of that: the gradients in flight
while a layer is differentiated, (2 I + 4 h) per token; the projected inputs the hooks hold until their gradient
arrives; one chunk of full-vocabulary logits (logits, their float32 copy, the saved log-softmax and its gradient);
and the per-problem accumulators. With activation checkpointing, the completion pass keeps only each layer's input
(h per token and layer) and recomputes one layer at a time. Those layer inputs are the residual stream, which
stays in the master weights' float32 under autocast (only the matmuls run in bfloat16).

Under autocast the weights are cast for every call: autocast caches the cast only for weights that require grad,
and here they are frozen, so each linear call of a pass that autograd keeps saves its own bfloat16 copy of the
weight for backward (`fixed_bytes`): one copy of every matmul weight for the shared-prompt pass, another for the
completion pass unless it is checkpointed (then one layer's copy at a time), and the head's. The sub-batch planner
takes these copies out of the budget before it fills it with activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int  # key/value heads x head dim
    vocab: int  # logit columns (config.vocab_size, padding included)
    parameters: int
    master_bytes: int = 4  # bytes per weight and residual-stream number (float32 master weights)

    def layer_matmul_parameters(self) -> int:
        """Weights of one decoder layer's linear maps (q, k, v, o and the gated MLP)."""
        h = self.hidden
        return h * (2 * h + 2 * self.kv_dim) + 3 * h * self.intermediate

    def matmul_parameters(self) -> int:
        """N of the FLOP counts: every matmul weight, the output head once (tied or not); no embedding lookup."""
        return self.layers * self.layer_matmul_parameters() + self.vocab * self.hidden

    def feature_flops(self, prompt_tokens: int, completion_tokens: int, checkpointing: bool) -> float:
        """FLOPs of one gradient-feature pass (attention scores left out): the weights are frozen, so a token costs
        4N (forward 2N, activation gradient 2N); completion tokens also run the head, and with activation
        checkpointing their layers and the row-chunked head run forward again (6N). Prompt tokens, shared by a
        problem's K completions, count once and skip the head."""
        layers = self.layers * self.layer_matmul_parameters()
        head = self.vocab * self.hidden
        completion = 6 if checkpointing else 4
        return 4 * prompt_tokens * layers + completion * completion_tokens * (layers + head)

    @classmethod
    def of(cls, config, parameters: int = 0) -> ModelShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=config.num_attention_heads,
            kv_dim=kv_heads * head_dim,
            vocab=config.vocab_size,
            parameters=parameters,
        )


@dataclass(frozen=True)
class FeatureMemory:
    """The estimator for one model, projection and precision."""

    shape: ModelShape
    held_per_token: int  # numbers the hooks keep per token until the gradient arrives (sum of projected input widths)
    accumulator_per_problem: int  # numbers of one problem's per-layer accumulators
    autocast_bf16: bool = False
    checkpointing: bool = False

    @property
    def activation_bytes(self) -> int:
        return 2 if self.autocast_bf16 else 4

    def layer_bytes_per_token(self) -> int:
        """Bytes autograd saves per token in one decoder layer (module docstring)."""
        s = self.shape
        if self.autocast_bf16:
            return 2 * (3 * s.intermediate + 2 * s.kv_dim + s.heads) + 12 * s.hidden
        return 4 * (3 * s.intermediate + 4 * s.hidden + 2 * s.kv_dim + s.heads)

    def logits_bytes_per_token(self) -> int:
        return self.shape.vocab * (self.activation_bytes + 12)

    def batch_bytes(self, problems: int, samples: int, prompt_len: int, completion_len: int, chunk_rows: int) -> int:
        """Peak bytes of one shared-prompt batch: `problems` prompts padded to `prompt_len`, `problems * samples`
        completions padded to `completion_len`, the head run `chunk_rows` rows at a time. For a batch
        without shared prompts pass prompt_len=0 and completion_len = the whole padded row."""
        s, act = self.shape, self.activation_bytes
        prompt_tokens = problems * prompt_len
        completion_tokens = problems * samples * completion_len
        layer = self.layer_bytes_per_token()
        in_flight = (2 * s.intermediate + 4 * s.hidden) * act
        if self.checkpointing:  # each layer's input: the residual stream, in the master weights' dtype
            residual = s.layers * s.hidden * s.master_bytes
            activations = prompt_tokens * s.layers * layer + completion_tokens * (residual + layer)
        else:
            activations = (prompt_tokens + completion_tokens) * s.layers * layer
        tokens = prompt_tokens + completion_tokens
        logits = min(chunk_rows, problems * samples) * completion_len * self.logits_bytes_per_token()
        hooks = tokens * self.held_per_token * 4 + problems * self.accumulator_per_problem * 4
        return activations + tokens * in_flight + logits + hooks

    def fixed_bytes(self, shared_prompts: bool = True) -> int:
        """Held for the pass whatever the batch: under autocast, the 16-bit weight copies autograd saves (module
        docstring) for the prompt pass (`shared_prompts`), for the completion pass or one recomputed layer, and
        for the head."""
        if not self.autocast_bf16:
            return 0
        s = self.shape
        layers = s.layers * s.layer_matmul_parameters()
        passes = int(shared_prompts) + (0 if self.checkpointing else 1)
        recomputed = s.layer_matmul_parameters() if self.checkpointing else 0
        return 2 * (passes * layers + recomputed + s.vocab * s.hidden)


def feature_memory(model, layers: dict, projector, autocast_dtype, checkpointing: bool) -> FeatureMemory:
    """The estimator for `model`'s features over `layers` with `projector`."""
    held = accumulator = 0
    for name, layer in layers.items():
        probe = torch.zeros(1, layer.in_features, device="cpu")
        a = projector.project_input(name, probe).shape[-1]
        b = projector.project_output(name, torch.zeros(1, layer.out_features, device="cpu")).shape[-1]
        held, accumulator = held + a, accumulator + a * b
    parameters = sum(p.numel() for p in model.parameters())
    return FeatureMemory(
        ModelShape.of(model.config, parameters),
        held,
        accumulator,
        autocast_bf16=autocast_dtype in (torch.bfloat16, torch.float16),
        checkpointing=checkpointing,
    )


def plan_sub_batches(
    lengths: list[tuple[int, int]], samples: int, memory: FeatureMemory, budget_bytes: int
) -> tuple[list[list[int]], int]:
    """(groups of consecutive problem indices, head chunk in rows) such that each group's estimated bytes stay
    under `budget_bytes` less the weight copies of `memory.fixed_bytes()`. `lengths[i]` is problem i's (prompt
    tokens, longest completion). The head chunk is the largest number of rows whose logits take at most a quarter
    of that. A problem that alone exceeds it forms a group by itself (it cannot be split: its K rows share one
    normalization)."""
    budget_bytes = max(budget_bytes - memory.fixed_bytes(), 1)
    longest = max((c for _, c in lengths), default=1)
    chunk_rows = max(1, (budget_bytes // 4) // max(longest * memory.logits_bytes_per_token(), 1))
    groups: list[list[int]] = []
    prompt_max = completion_max = 0
    for i, (prompt, completion) in enumerate(lengths):
        grown = (max(prompt_max, prompt), max(completion_max, completion))
        size = len(groups[-1]) + 1 if groups else 1
        if groups and memory.batch_bytes(size, samples, *grown, chunk_rows) <= budget_bytes:
            groups[-1].append(i)
            prompt_max, completion_max = grown
        else:
            groups.append([i])
            prompt_max, completion_max = prompt, completion
    return groups, chunk_rows
