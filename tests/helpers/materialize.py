"""Materialize assets of `learnalign_job` in this process against the on-disk instance in $DAGSTER_HOME and
the artifact root under $LEARNALIGN_HOME, then print one JSON line per asset with its recorded metadata.

Tests run it as a subprocess so that it can be killed (SIGKILL) or run twice at once:
    python tests/helpers/materialize.py '<json run config>' asset [asset ...]
"""

import json
import sys

import dagster as dg
import torch


def main() -> None:
    torch.set_num_threads(1)  # bitwise comparisons across processes need the same thread count
    run_config, names = json.loads(sys.argv[1]), sys.argv[2:]
    from learnalign_pipeline.definitions import defs

    job = defs().resolve_job_def("learnalign_job")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=run_config, instance=instance, asset_selection=[dg.AssetKey(n) for n in names]
        )
        assert result.success
        for name in names:
            event = instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization
            plain = {k: v.value for k, v in event.metadata.items() if isinstance(v.value, (str, int, float))}
            print(json.dumps({"asset": name, "run_id": result.run_id, **plain}), flush=True)


if __name__ == "__main__":
    main()
