"""Run-config presets. The asset configs' defaults are the embedded demo; these override them.

Use one from Python (`job.execute_in_process(run_config=SMOKE)`) or the CLI (`learnalign demo --preset smoke`).
"""

from __future__ import annotations

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
    },
    "resources": {"task": {"config": {"max_new_tokens": 16}}},
}

PRESETS: dict[str, dict] = {"smoke": SMOKE, "demo": {}}
