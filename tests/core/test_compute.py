import pytest
import torch

from learnalign_pipeline.core.compute import ComputeConfig


def test_auto_is_float32_cpu_without_cuda():
    compute = ComputeConfig()
    if torch.cuda.is_available():
        assert compute.torch_device().type == "cuda" and compute.autocast_dtype() == torch.bfloat16
    else:
        assert compute.torch_device() == torch.device("cpu") and compute.autocast_dtype() is None


def test_explicit_cuda_without_cuda_is_an_error_not_a_silent_cpu_run():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ComputeConfig(device="cuda").torch_device()


def test_autocast_runs_matmuls_in_the_chosen_dtype_on_cpu():
    a = torch.randn(4, 4)
    with ComputeConfig(device="cpu", autocast="bfloat16").autocast_context():
        assert (a @ a).dtype == torch.bfloat16
    with ComputeConfig(device="cpu").autocast_context():
        assert (a @ a).dtype == torch.float32


def test_place_keeps_float32_master_weights():
    model = torch.nn.Linear(3, 3).to(torch.bfloat16)
    assert ComputeConfig(device="cpu").place(model).weight.dtype == torch.float32


@pytest.mark.parametrize("bad", ["gpu", "cuda0", ""])
def test_bad_device_names_are_refused(bad):
    with pytest.raises(ValueError, match="device"):
        ComputeConfig(device=bad)


def test_shards_spread_over_the_gpus_of_a_node():
    from learnalign_pipeline.core.compute import shard_gpus

    assert [shard_gpus(i, 1, 4) for i in range(4)] == [[0], [1], [2], [3]]
    assert [shard_gpus(i, 1, 2) for i in range(4)] == [[0], [1], [0], [1]]  # more shards than GPUs: they share
    assert [shard_gpus(i, 2, 8) for i in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # tensor parallel pairs
    assert shard_gpus(5, 4, 4) == [0, 1, 2, 3]


def test_shard_settings_are_unchanged_on_cpu_or_with_an_explicit_device():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    assert ComputeConfig().for_shard(3) == ComputeConfig()
    assert ComputeConfig(device="cpu").visible_devices() is None
