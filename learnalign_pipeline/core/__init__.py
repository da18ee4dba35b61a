"""The pipeline's computations: pure Python, torch and polars, no Dagster (the adapters in `defs/` call in).

Sub-packages follow the pipeline; each imports only from those above it in this list:

    storage     content hashes, verified artifact files, the row cache
    task        prompt templates and verifiers; TaskConfig, shared by every stage that generates
    data        the problem table, the embedded arithmetic generator, file loaders, noisy pools, fingerprints
    policy      the built-in tiny policy, generation backends (transformers, vLLM), rollouts
    training    the GRPO loss, GRPOConfig and PretrainConfig, the GRPO loop, pre-training, resumable states
    selection   gradient capture and projection, the cached rollout/feature stages, LearnAlign scoring,
                every selection rule, GradAlign's curriculum
    evaluation  pass@1 benchmarks, the method-comparison table and plot

`settings.py` holds the two helpers every settings object uses. Naming: `*Config` is a settings object people
tune (a frozen dataclass with help text per field, validated in `__post_init__`, its defaults the embedded
demo's); `*Spec` is a value object passed between functions, with no defaults of its own.
"""
