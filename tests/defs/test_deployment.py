"""What a cluster deployment relies on, checked on the definitions and a real instance: every accelerator step is
in the `gpu` pool and carries Kubernetes GPU requests, the pool is limited on the instance `learnalign` writes, and
the automation the daily loop needs is on by default."""

import json

import dagster as dg
import yaml

from learnalign_pipeline.cli import DAGSTER_YAML
from learnalign_pipeline.definitions import defs

HEAVY_OPS = [
    "pretrained_policy",
    "warmup_policy",
    "rollouts_and_success_rates",
    "projected_gradients",
    "trained_policy",
    "benchmark_results",
]


def test_accelerator_steps_request_a_gpu_from_kubernetes():
    job = defs().resolve_job_def("learnalign_job")
    for name in HEAVY_OPS:
        definition = job.graph.node_named(name).definition
        # Sharded stages are graphs: their shard steps use the accelerator, their plan and collect steps do not.
        steps = (
            [n.definition for n in definition.nodes if "shard_" in n.name]
            if isinstance(definition, dg.GraphDefinition)
            else [definition]
        )
        assert steps, name
        for step in steps:
            k8s = json.loads(step.tags["dagster-k8s/config"])  # op tags are stored as JSON strings
            resources = k8s["container_config"]["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1", name
            assert any(t["key"] == "nvidia.com/gpu" for t in k8s["pod_spec_config"]["tolerations"]), name
            assert step.pool == "gpu", name
        if isinstance(definition, dg.GraphDefinition):
            plain = [n.definition for n in definition.nodes if "shard_" not in n.name]
            assert plain and all("dagster-k8s/config" not in d.tags and d.pool is None for d in plain), name
    cpu_only = {"learnability_scores", "selected_subset"}
    for name in cpu_only:
        assert "dagster-k8s/config" not in job.graph.node_named(name).definition.tags, name


def test_the_local_instance_limits_the_gpu_pool_to_one_step():
    with dg.instance_for_test(overrides=yaml.safe_load(DAGSTER_YAML)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1


def test_automation_is_on_by_default_and_every_asset_has_a_condition():
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    covered = set()
    for name in ("learnalign_reselection", "learnalign_nightly"):
        sensor = definitions.resolve_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        covered |= {k.to_user_string() for k in sensor.asset_selection.resolve(graph)}
    # The sources are targeted (observed on their cron), so no asset falls to Dagster's default sensor (stopped).
    assert {"pool_dataset", "benchmark_dataset", "raw_problems", "trained_policy", "training_window"} <= covered
    names = {s.name for s in definitions.get_repository_def().sensor_defs}
    assert names == {"learnalign_reselection", "learnalign_nightly"}, names
    assert definitions.resolve_schedule_def("periodic_reselection").default_status == dg.DefaultScheduleStatus.RUNNING
    manual = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).tags.get("learnalign/automation") == "manual"
    }
    assert "comparison_report" in manual and "selected_subset" not in manual  # the comparison is run by people
    assert all(graph.get(dg.AssetKey(k)).automation_condition is None for k in manual)
    unmanaged = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is None}
    assert unmanaged - manual == {"training_window"}  # observed by people (`learnalign train-now`) to open the window
    labels = {
        k.to_user_string(): graph.get(k).automation_condition.get_label()
        for k in graph.get_all_asset_keys()
        if k.to_user_string() not in unmanaged
    }
    assert labels["pool_dataset"].startswith("on_cron") and labels["benchmark_dataset"].startswith("on_cron")
    assert (
        labels["selected_subset"] == labels["rollouts"] == labels["raw_problems"] == "re-select when an input changes"
    )
    assert labels["warmup_policy"] == labels["trained_policy"] == labels["benchmark_results"]
    assert labels["trained_policy"].startswith("train in the window 02:00-06:00 UTC")
    # The window is stated where a person looks: the asset's description.
    assert "nightly training window 02:00-06:00 UTC" in graph.get(dg.AssetKey("trained_policy")).description
