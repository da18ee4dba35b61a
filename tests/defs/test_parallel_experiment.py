"""`learnalign experiment --parallel N`: seed shards run N at a time in forked processes that share the cores, and
the `gpu` pool holds N slots for the run only."""

import dagster as dg
import pytest

from learnalign_pipeline.cli import gpu_pool_slots, parallel_execution
from learnalign_pipeline.lib.tags import GPU_POOL


def test_parallel_execution_is_the_multiprocess_executor_with_threads_split(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = parallel_execution(2)["execution"]["config"]["multiprocess"]
    assert config["max_concurrent"] == 2 and "torch" in config["start_method"]["forkserver"]["preload_modules"]
    import os

    assert os.environ["OMP_NUM_THREADS"] == "1"  # two processes on two cores: one thread each
    with pytest.raises(ValueError, match="must be >= 1"):
        parallel_execution(0)


def test_the_gpu_pool_holds_n_slots_during_the_run_and_its_count_after():
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(GPU_POOL, 1)
        with gpu_pool_slots(instance, 2):
            assert storage.get_concurrency_info(GPU_POOL).slot_count == 2
        assert storage.get_concurrency_info(GPU_POOL).slot_count == 1
        with gpu_pool_slots(instance, None):  # no switch: left alone
            assert storage.get_concurrency_info(GPU_POOL).slot_count == 1
