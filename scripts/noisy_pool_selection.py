"""Noisy share of every method's selection on a pool with corrupted gold answers (no training: GradAlign's
cheapest diagnostic). Materializes the demo graph up to the selection with `raw_problems.noisy_share`, then the
comparison's signals and `comparison_subsets`, in its own LEARNALIGN_HOME, and prints the per-method table.

    PYTHONPATH=. python scripts/noisy_pool_selection.py --share 0.3 --kind wrong --home /tmp/noisy_home
"""

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--kind", choices=["wrong", "random"], default="wrong")
    parser.add_argument("--home", default="/tmp/learnalign_noisy")
    args = parser.parse_args()
    os.environ["LEARNALIGN_HOME"] = args.home
    import dagster as dg

    from learnalign_pipeline.cli import IN_PROCESS, prepare_environment
    from learnalign_pipeline.definitions import reconstructable_job

    prepare_environment()
    noisy = {"raw_problems": {"config": {"noisy_share": args.share, "noise_kind": args.kind}}}
    upstream = [
        "benchmark_problems",
        "benchmark_rejected_problems",
        "raw_problems",
        "rejected_problems",
        "pretrained_policy",
        "warmup_policy",
        "rollouts",
        "success_rates",
        "projected_gradients",
        "learnability_scores",
        "alignment_scores",
        "alignment_matrix",
        "selected_subset",
    ]
    signals = [
        "validation_problems",
        "validation_gradients",
        "cold_start_signals",
        "answer_perplexity",
        "full_data_policy",
        "limr_trajectories",
        "comparison_subsets",
    ]
    with dg.DagsterInstance.get() as instance:
        for job, keys, config in [
            ("learnalign_job", upstream, {**IN_PROCESS, "ops": noisy}),
            ("selection_comparison_job", signals, IN_PROCESS),
        ]:
            result = dg.execute_job(
                reconstructable_job(job),
                instance=instance,
                asset_selection=[dg.AssetKey(k) for k in keys],
                run_config=config,
            )
            if not result.success:
                raise SystemExit(f"run {result.run_id} failed")
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("comparison_subsets")
        ).asset_materialization.metadata
        print(f"pool noisy share: {metadata['pool_noisy_share'].value}\n\n{metadata['per_method'].value}")


if __name__ == "__main__":
    main()
