"""The GPU check of issue 14: the selection stages' GPU code paths on Qwen2.5-1.5B and -7B shapes, in one run.

Needs only torch and transformers (no polars, Dagster or vLLM; nothing is downloaded: the models are built from
their config.json values with random weights, which have the real models' shapes, memory and speed). Prints:

1. device audit: the feature capture, the GRPO loss and seeded sampling with every tensor on the GPU;
2. feature stage on Qwen2.5-1.5B (float32 master weights, bfloat16 autocast, K = 8 rollouts, prompts of 120
   tokens, completions of 300): problems/s and peak memory per sub-batch size, with and without activation
   checkpointing, beside the estimate of `core/selection/memory.py`;
3. batched features vs one backward per problem (weight gradients, then the same Kronecker projection of each
   layer's dW: the LESS-style loop), problems/s and ratio;
4. the same feature stage on Qwen2.5-7B (untied lm_head);
5. sampler memory at 24 vs 512 new tokens (64 rows, the 1.5B vocabulary): noise pre-allocated as
   [rows, steps, vocab] (before issue 14) vs drawn per step;
6. checkpoint save (bfloat16 save_pretrained of the 1.5B model) and the time to hash it once;
7. one TRL GRPO step on Qwen2.5-1.5B (issue 15): GRPOTrainer with the project's settings mapping, seeded
   transformers rollouts (4 problems x 8 samples, 300 new tokens, no vLLM), a KL reference, gradient checkpointing,
   micro-batches of 8 with accumulation, bfloat16 autocast over float32 master weights: step time and peak memory.
   The GPU machine has no TRL: carry it (`--vendor DIR`, a `pip install --target DIR` of trl==1.16.0 and
   datasets==5.2.0 with their pure-Python dependencies for that machine's Python); without it the check says so.

GPU memory is capped at 79 GiB, so "OOM" means "does not fit an 80 GB card"; no check starts after 420 s.
    python scripts/gpu_check.py           # on the GPU machine, from the repository root (< 8 min on one H200)
    python scripts/gpu_check.py --only trl --vendor .gpu_vendor   # just check 7, TRL from a carried directory
    python scripts/gpu_check.py --tiny    # the same code on CPU with tiny shapes, in about a minute (CI runs it)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from learnalign_pipeline.core.compute import ComputeConfig  # noqa: E402
from learnalign_pipeline.core.policy.generation import SamplingSpec, SeededGumbelSampler  # noqa: E402
from learnalign_pipeline.core.policy.model import save_policy  # noqa: E402
from learnalign_pipeline.core.selection.capture import capture_features, linear_layers  # noqa: E402
from learnalign_pipeline.core.selection.memory import FeatureMemory, ModelShape, plan_sub_batches  # noqa: E402
from learnalign_pipeline.core.selection.projection import KroneckerProjector  # noqa: E402
from learnalign_pipeline.core.storage.hashing import tree_digest  # noqa: E402
from learnalign_pipeline.core.training.grpo import (  # noqa: E402
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
ROWS: list[tuple[str, str, str]] = []
STARTED = time.perf_counter()


def report(check: str, quantity: str, value: str) -> None:
    ROWS.append((check, quantity, value))
    print(f"  {check:<34} {quantity:<58} {value}", flush=True)


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


def rollout_lists(problems: int, samples: int, prompt_len: int, completion_len: int, vocab: int, seed: int):
    """(prompt ids, completion ids, advantages) of `problems` problems with `samples` random completions each and
    mixed rewards (every advantage non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=gen).tolist() for _ in range(problems)]
    completions = [
        [torch.randint(0, vocab, (completion_len,), generator=gen).tolist() for _ in range(samples)]
        for _ in range(problems)
    ]
    rewards = torch.tensor([[float(k % 2) for k in range(samples)]] * problems)
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    return prompts, completions, advantages


def rollout_batch(problems: int, samples: int, prompt_len: int, completion_len: int, vocab: int, seed: int):
    return build_rollout_batch(*rollout_lists(problems, samples, prompt_len, completion_len, vocab, seed), pad_id=0)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def peak(device, base):
    return (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else float("nan")


def estimator(model, layers, projector, autocast, checkpointing) -> FeatureMemory:
    shape = ModelShape.of(model.config, sum(p.numel() for p in model.parameters()))
    held = sum(projector.k_in for _ in layers)
    return FeatureMemory(shape, held, len(layers) * projector.k_in * projector.k_out, autocast, checkpointing)


def check_device_audit(model, device, compute):
    """Everything on the GPU: features, loss, sampling. A tensor made on the CPU fails here."""
    batch = rollout_batch(2, 2, 16, 8, min(300, model.config.vocab_size), seed=1)
    layers = linear_layers(model)
    features = capture_features(
        model,
        model,
        batch,
        LOSS,
        layers,
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
    ok = features.device.type == device.type and loss.device.type == device.type and picks.device.type == device.type
    report("1 device audit", "features, loss and sampler on the compute device", "ok" if ok else "MIXED DEVICES")


def check_features(name, model, device, compute, shapes, checkpointing_arms, time_limit):
    samples, prompt_len, completion_len = shapes["samples"], shapes["prompt"], shapes["completion"]
    layers, projector = linear_layers(model), KroneckerProjector(16, 16, seed=0)
    autocast = compute.autocast_dtype()
    for checkpointing in checkpointing_arms:
        memory = estimator(model, layers, projector, autocast is not None, checkpointing)
        for problems in shapes["problems"]:
            if time.perf_counter() - STARTED > time_limit:
                report(f"2 features [{name}]", "stopped", "time limit")
                return
            batch = rollout_batch(problems, samples, prompt_len, completion_len, TOKENIZER_SIZE[name], seed=problems)
            _, chunk_rows = plan_sub_batches(
                [(prompt_len, completion_len)] * problems, samples, memory, shapes["budget"]
            )
            label = f"P={problems} K={samples} ckpt={'on' if checkpointing else 'off'}"
            try:
                base = reset_peak(device)
                capture_features(
                    model,
                    model,
                    batch,
                    LOSS,
                    layers,
                    projector,
                    checkpointing=checkpointing,
                    head_chunk_rows=chunk_rows,
                    autocast_dtype=autocast,
                )  # warm-up
                synchronize(device)
                started = time.perf_counter()
                capture_features(
                    model,
                    model,
                    batch,
                    LOSS,
                    layers,
                    projector,
                    checkpointing=checkpointing,
                    head_chunk_rows=chunk_rows,
                    autocast_dtype=autocast,
                )
                synchronize(device)
                seconds = time.perf_counter() - started
                estimate = (
                    memory.batch_bytes(problems, samples, prompt_len, completion_len, chunk_rows) + memory.fixed_bytes()
                )
                report(
                    f"2 features [{name}]",
                    f"{label}: problems/s, peak GiB (estimate)",
                    f"{problems / seconds:.2f}, {peak(device, base) / 2**30:.2f} ({estimate / 2**30:.2f})",
                )
            except torch.OutOfMemoryError:
                report(f"2 features [{name}]", label, "OOM")
                return


def check_batched_vs_loop(name, model, device, compute, shapes):
    """The batched in-hook features vs one forward/backward per problem reading weight gradients (then the same
    Kronecker projection of each dW), on the same problems."""
    problems, samples = shapes["loop_problems"], shapes["samples"]
    prompts, completions, advantages = rollout_lists(
        problems, samples, shapes["prompt"], shapes["completion"], TOKENIZER_SIZE[name], seed=7
    )
    batch = build_rollout_batch(prompts, completions, advantages, pad_id=0)
    singles = [build_rollout_batch([prompts[p]], [completions[p]], advantages[p : p + 1], 0) for p in range(problems)]
    layers, projector = linear_layers(model), KroneckerProjector(16, 16, seed=0)
    autocast = compute.autocast_dtype()
    memory = estimator(model, layers, projector, autocast is not None, True)
    _, chunk_rows = plan_sub_batches(
        [(shapes["prompt"], shapes["completion"])] * problems, samples, memory, shapes["budget"]
    )

    def batched():
        return capture_features(
            model,
            model,
            batch,
            LOSS,
            layers,
            projector,
            checkpointing=True,
            head_chunk_rows=chunk_rows,
            autocast_dtype=autocast,
        )

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
            rows.append(torch.cat(blocks))
        model.zero_grad(set_to_none=True)
        return torch.stack(rows)

    try:
        times = {}
        for key, fn in (("batched", batched), ("loop", loop)):
            fn()  # warm-up
            synchronize(device)
            started = time.perf_counter()
            fn()
            synchronize(device)
            times[key] = time.perf_counter() - started
        report(
            f"3 batched vs loop [{name}]",
            f"{problems} problems: problems/s batched / loop",
            f"{problems / times['batched']:.2f} / {problems / times['loop']:.2f}",
        )
        report(
            f"3 batched vs loop [{name}]",
            "ratio batched / loop (goal >= 3x)",
            f"{times['loop'] / times['batched']:.2f}x",
        )
    except torch.OutOfMemoryError:
        report(f"3 batched vs loop [{name}]", f"{problems} problems", "OOM")


def check_sampler(name, device, vocab, rows, steps_arms):
    for arm in ("before", "per-step"):
        for steps in steps_arms:
            spec = SamplingSpec(1, 1.0, 1.0, steps)
            scores = torch.randn(rows, vocab, device=device)
            try:
                base = reset_peak(device)
                if arm == "before":
                    noise = torch.empty(rows, steps, vocab, device=device)
                    for row in range(rows):
                        u = torch.rand(
                            steps, vocab, generator=torch.Generator(device=device).manual_seed(row), device=device
                        )
                        noise[row] = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
                    for s in range(steps):
                        (scores + noise[:, s]).argmax(-1)
                    del noise
                else:
                    sampler = SeededGumbelSampler(list(range(rows)), spec)
                    ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
                    for _ in range(steps):
                        sampler(ids, scores).argmax(-1)
                synchronize(device)
                used = peak(device, base)
                value = (
                    "n/a on CPU (scripts/bench_feature_memory.py measures it)"
                    if math.isnan(used)
                    else f"{used / 2**20:.0f} MiB"
                )
                report(f"5 sampler [{name}, {rows} rows]", f"{arm} at {steps} new tokens: peak", value)
            except torch.OutOfMemoryError:
                report(f"5 sampler [{name}, {rows} rows]", f"{arm} at {steps} new tokens", "OOM")


def check_checkpoint(name, model):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy"
        started = time.perf_counter()
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
        save_policy(model, tokenizer, path, dtype=torch.bfloat16)
        saved = time.perf_counter() - started
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        started = time.perf_counter()
        tree_digest(path)
        hashed = time.perf_counter() - started
    report(
        f"6 checkpoint [{name}]",
        "bf16 save_pretrained GiB / s, hash once s",
        f"{size / 2**30:.2f} / {saved:.1f}, {hashed:.1f}",
    )


def check_trl_step(name, device, compute, shapes):
    """One GRPO optimizer step through TRL's GRPOTrainer as the training stages run it (core/training/trl_engine.py:
    the settings mapping, seeded transformers rollouts, the verifier reward), on `name`'s shapes."""
    try:
        import datasets
        import trl
    except ImportError as error:
        report(f"7 TRL GRPO step [{name}]", "skipped", f"TRL not importable ({error}): pass --vendor DIR")
        return
    try:
        import polars  # noqa: F401
    except ImportError:  # the GPU machine: core/data builds its polars schema at import; nothing here uses it
        sys.modules["polars"] = _stand_in_module("polars")
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers.trainer_callback import PrinterCallback

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from learnalign_pipeline.core.task.config import TaskConfig
    from learnalign_pipeline.core.task.verify import RolloutRewards
    from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig
    from learnalign_pipeline.core.training.trl_engine import SeededRollouts, VerifierReward, trl_args

    problems, samples = shapes["trl_problems"], shapes["samples"]
    grpo = GRPOConfig(steps=1, problems_per_step=problems, num_samples=samples, beta=0.04, checkpoint_every=0)
    task = TaskConfig(max_new_tokens=shapes["completion"])
    trainer = TrainerConfig(micro_batch_rows=shapes["trl_micro"], gradient_checkpointing=True)
    vocab = {chr(0x21 + i): i for i in range(90)}  # a small byte-free BPE: 90 printable characters, pad and eos
    vocab.update({"<pad>": 90, "<eos>": 91})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    gen = torch.Generator().manual_seed(0)
    prompts = [
        "".join(chr(0x21 + int(c)) for c in torch.randint(0, 90, (shapes["prompt"],), generator=gen))
        for _ in range(problems)
    ]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy"
        model = build(name, device)
        save_policy(
            model, tokenizer, path, dtype=torch.bfloat16
        )  # the KL reference is loaded from disk, as in training
        del model
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        args = trl_args(grpo, task, trainer, compute, str(Path(directory) / "trl"))
        dataset = datasets.Dataset.from_dict(
            {"prompt": prompts, "answer": ["0"] * problems, "problem_id": [f"p{i}" for i in range(problems)]}
        )

        class LengthParity:
            name = "parity"

            def score_batch(self, completions, golds):
                return [float(len(c) % 2 == 0) for c in completions]

        try:
            base = reset_peak(device)
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
            )
            step.remove_callback(PrinterCallback)
            synchronize(device)
            started = time.perf_counter()
            step.train()
            synchronize(device)
            seconds = time.perf_counter() - started
            logged = [h for h in step.state.log_history if "reward" in h][-1]
            report(
                f"7 TRL GRPO step [{name}]",
                f"{problems}x{samples} rows, {shapes['completion']} new tokens: step s, peak GiB",
                f"{seconds:.1f}, {peak(device, base) / 2**30:.2f}",
            )
            report(
                f"7 TRL GRPO step [{name}]",
                "generated tokens/row, loss, kl",
                f"{logged['completions/mean_length']:.0f}, {logged['loss']:.4g}, {logged.get('kl', 0.0):.3g}",
            )
        except torch.OutOfMemoryError:
            report(f"7 TRL GRPO step [{name}]", f"{problems}x{samples} rows", "OOM")


def _stand_in_module(name: str):
    """A module whose every attribute is a no-op callable, for a package the GPU machine lacks and whose only use
    on this path is at import time."""
    import types

    class _Anything:
        def __call__(self, *args, **kwargs):
            return self

        def __getattr__(self, attribute):
            return self

    module = types.ModuleType(name)
    module.__getattr__ = lambda attribute: _Anything()
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: exercises the code, measures nothing")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds after which no check starts")
    parser.add_argument("--only", choices=["trl"], help="run only this check")
    parser.add_argument(
        "--vendor", type=Path, help="a directory of packages the machine lacks (trl, datasets), put first on sys.path"
    )
    args = parser.parse_args()
    if args.vendor:
        sys.path.insert(0, str(args.vendor.resolve()))
    compute = ComputeConfig()
    device = compute.torch_device()
    if args.tiny:
        names = ("tiny-tied", "tiny-untied")
        shapes = dict(
            samples=2,
            prompt=12,
            completion=8,
            problems=(1, 3),
            loop_problems=2,
            budget=64 << 20,
            trl_problems=2,
            trl_micro=2,
        )
        sampler = ("tiny-tied", 448, 8, (24, 512))
    else:
        if device.type != "cuda":
            sys.exit("no CUDA device: run with --tiny to exercise the script on CPU")
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 79 * 2**30 / total), device)
        names = ("Qwen2.5-1.5B", "Qwen2.5-7B")
        shapes = dict(
            samples=8,
            prompt=120,
            completion=300,
            problems=(1, 4, 8),
            loop_problems=4,
            budget=60 << 30,
            trl_problems=4,
            trl_micro=8,
        )
        sampler = ("Qwen2.5-1.5B", 151_936, 64, (24, 512))
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", autocast {compute.autocast_dtype()}",
        flush=True,
    )
    if args.only == "trl":
        check_trl_step(names[0], device, compute, shapes)
        names = ()
    for i, name in enumerate(names):
        if time.perf_counter() - STARTED > args.time_limit:
            break
        model = build(name, device)
        report(
            f"model [{name}]",
            "parameters, untied head",
            f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}B, {not model.config.tie_word_embeddings}",
        )
        if i == 0:
            check_device_audit(model, device, compute)
        first = dict(shapes) if i == 0 else {**shapes, "problems": shapes["problems"][:2]}
        check_features(name, model, device, compute, first, (False, True) if i == 0 else (True,), args.time_limit)
        if i == 0:
            check_batched_vs_loop(name, model, device, compute, shapes)
            check_checkpoint(name, model)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if names and time.perf_counter() - STARTED <= args.time_limit:
        check_sampler(sampler[0], device, sampler[1], sampler[2], sampler[3])
    if names and time.perf_counter() - STARTED <= args.time_limit:
        check_trl_step(names[0], device, compute, shapes)
    print(f"\nfinished in {time.perf_counter() - STARTED:.0f} s\n\n| check | quantity | value |\n|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(ROWS, indent=1))


if __name__ == "__main__":
    main()
