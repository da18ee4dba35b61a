"""A one-step job whose step is in the `gpu` pool and sleeps: the shape of a shard step, in seconds instead of
minutes. Run as a subprocess (so it can be killed) against the instance in $DAGSTER_HOME:

    python tests/helpers/pooled_job.py <sleep seconds> [--owner-tags]

`--owner-tags` tags the run as the `learnalign` CLI does; without it the run looks like one launched from the UI
(only Dagster's own engine events record its process). Prints STEP_RUNNING when the step holds its slot.
"""

import os
import sys
import time

import dagster as dg


@dg.op(pool="gpu")
def pooled_sleep() -> int:
    print("STEP_RUNNING", os.getpid(), flush=True)
    time.sleep(float(os.environ["POOLED_JOB_SLEEP_S"]))
    return 1


@dg.job
def pooled_job():
    pooled_sleep()


def main() -> None:
    os.environ["POOLED_JOB_SLEEP_S"] = sys.argv[1]
    from learnalign_pipeline.lib.runs import owner_tags

    tags = owner_tags() if "--owner-tags" in sys.argv else {}
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(pooled_job),
            instance=instance,
            run_config={"execution": {"config": {"in_process": {}}}},
            tags=tags,
        )
        print("RUN", result.run_id, result.success, flush=True)


if __name__ == "__main__":
    main()
