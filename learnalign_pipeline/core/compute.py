"""Where model computations run and in which precision: one setting for every stage that runs a model.

CUDA when present, else CPU. Weights are held in float32 (master weights: an update of 1e-6 relative rounds away
in bfloat16, which resolves about 2**-8); on CUDA the forward and backward passes run under bfloat16 autocast, on
CPU everything stays float32, which keeps CPU runs bitwise reproducible. Every tensor a core function creates is
made on the device of the tensors it works on; tests run the core paths with a `meta` default device, so a
factory call that forgets its `device=` fails there instead of on a GPU.

`gemm_peak` measures what the device's matmuls reach, the denominator of every utilization figure the benchmarks
report (scripts/gpu_check.py, scripts/bench_smollm2.py): measured, not a datasheet's; `PeakMemory` the peak memory
of a span of work.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .settings import require, require_finite, setting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ComputeConfig:
    """Device and precision of the policy computations (rollouts with transformers, features, training)."""

    device: str = setting("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:<index>")
    autocast: Literal["auto", "bfloat16", "float16", "off"] = setting(
        "auto", "mixed precision of forward/backward passes: auto = bfloat16 on CUDA, off (float32) on CPU"
    )

    def __post_init__(self) -> None:
        require_finite(self)
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"{self.device!r} is not auto, cpu, cuda or cuda:<index>",
        )

    def torch_device(self) -> torch.device:
        """The device to compute on; asking for CUDA where there is none is an error, not a silent CPU run."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"compute device {self.device!r} was requested but CUDA is not available: use 'auto' or 'cpu'"
            )
        return device

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain float32."""
        if self.autocast == "off":
            return None
        if self.autocast == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else None
        return DTYPES[self.autocast]

    def autocast_context(self):
        """`torch.autocast` on the compute device with `autocast_dtype()`, or a no-op for float32."""
        dtype = self.autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device().type, dtype=dtype)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move `model` to the compute device with float32 (master) weights."""
        return model.to(device=self.torch_device(), dtype=torch.float32)

    def for_shard(self, shard: int, gpus_per_shard: int = 1) -> ComputeConfig:
        """The setting of sharded step `shard` on a node with several GPUs: its own GPU(s), so the multiprocess
        executor's parallel shard steps do not all land on GPU 0. Unchanged for an explicit device or on CPU."""
        if self.device not in ("auto", "cuda") or not torch.cuda.is_available():
            return self
        first = shard_gpus(shard, gpus_per_shard, torch.cuda.device_count())[0]
        return replace(self, device=f"cuda:{first}")

    def visible_devices(self, gpus: int = 1) -> str | None:
        """CUDA_VISIBLE_DEVICES for a process (a vLLM engine) that should use `gpus` GPUs starting at this
        setting's device, in the numbering of the calling process; None on CPU."""
        device = self.torch_device()
        if device.type != "cuda":
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        start = device.index or 0
        return ",".join(ids[(start + i) % len(ids)] for i in range(gpus))

    def launched(self, gpus: int) -> tuple[ComputeConfig, dict[str, str]]:
        """(the setting, the environment) of a child process that computes on `gpus` GPUs starting at this
        setting's device: an explicit `cuda:<i>` becomes that process's CUDA_VISIBLE_DEVICES (its `cuda:0`), since
        the trainer and accelerate place ranks on `cuda:<local rank>` whatever the setting says."""
        if self.device in ("auto", "cpu", "cuda"):
            return self, {}
        return replace(self, device="cuda"), {"CUDA_VISIBLE_DEVICES": self.visible_devices(gpus) or ""}


def shard_gpus(shard: int, gpus_per_shard: int, gpu_count: int) -> list[int]:
    """The GPU indices of shard `shard` when each shard uses `gpus_per_shard` of `gpu_count` GPUs: consecutive
    blocks, wrapping around when there are more shards than blocks (those shards then share GPUs)."""
    if gpu_count < 1 or gpus_per_shard < 1:
        raise ValueError("gpu_count and gpus_per_shard must be >= 1")
    blocks = max(1, gpu_count // gpus_per_shard)
    first = (shard % blocks) * gpus_per_shard
    return [(first + i) % gpu_count for i in range(gpus_per_shard)]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a timer read before this measures nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    """FLOP/s of `size`^3 matmuls in `dtype` on `device`, run for at least `seconds` (and 3 products)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        a @ b
        runs += 1
        if runs % 10 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - started)


class PeakMemory:
    """Peak bytes above what was held when it started: CUDA's allocator statistics (allocated, reserved), or on the
    CPU the peak resident set (reset through /proc/self/clear_refs) for both. The resident set follows live tensors
    only where glibc hands freed blocks back at once: a process started with MALLOC_MMAP_THRESHOLD_=65536 (else the
    CPU figure is a lower bound)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.allocated, self.reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        else:
            with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.allocated = self.reserved = _resident_bytes("VmRSS")

    def peak_bytes(self) -> tuple[int, int]:
        """(allocated, reserved) at the peak since the start, less what was held then."""
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device) - self.allocated
            reserved = torch.cuda.max_memory_reserved(self.device) - self.reserved
            return allocated, reserved
        peak = _resident_bytes("VmHWM") - self.allocated
        return peak, peak


def _resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process; getrusage's lifetime peak where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def visible_gpus() -> int:
    """The CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class DeviceProblem:
    """A setting this machine's devices cannot run: `owner` is the settings object (the resource key), `field`
    its field (or the environment variable)."""

    owner: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def device_problems(
    compute: ComputeConfig,
    *,
    processes: int,
    vllm_training: bool,
    tensor_parallel_size: int,
    shards: int,
    gpus: int | None = None,
) -> list[DeviceProblem]:
    """What of the device settings cannot run on a machine with `gpus` visible GPUs (default: this one), found
    before a run starts instead of at the step that would crash (several training ranks on one GPU, a vLLM engine
    over more GPUs than there are). `processes` is the training process count as set (0 = one per GPU)."""
    gpus = visible_gpus() if gpus is None else gpus
    problems = []
    wanted = None if compute.device in ("auto", "cpu") else torch.device(compute.device)
    if wanted is not None and gpus == 0:
        problems.append(DeviceProblem("compute", "device", f"{compute.device!r} but this machine has no CUDA device"))
    elif wanted is not None and (wanted.index or 0) >= gpus:
        problems.append(
            DeviceProblem("compute", "device", f"{compute.device!r} but only {gpus} GPU(s) are visible (0..{gpus - 1})")
        )
    on_gpu = gpus > 0 and compute.device != "cpu"
    if on_gpu and processes > gpus:
        problems.append(
            DeviceProblem(
                "trainer",
                "processes",
                f"{processes} training processes but {gpus} visible GPU(s): each process needs a GPU of its own "
                f"(accelerate would put several ranks on one GPU); set processes to at most {gpus}, or 0 for one per "
                "GPU",
            )
        )
    if vllm_training and not on_gpu:
        problems.append(
            DeviceProblem(
                "trainer",
                "rollouts",
                "'vllm' generates with vLLM colocated in the training process, which needs a GPU and this run "
                "computes on the CPU: use rollouts 'seeded'",
            )
        )
    if gpus and tensor_parallel_size > gpus:
        problems.append(
            DeviceProblem(
                "generator",
                "tensor_parallel_size",
                f"{tensor_parallel_size} but {gpus} visible GPU(s): set it to at most {gpus}",
            )
        )
    elif gpus and shards * tensor_parallel_size > gpus:
        problems.append(
            DeviceProblem(
                "environment",
                "LEARNALIGN_NUM_SHARDS",
                f"{shards} shard steps x tensor_parallel_size {tensor_parallel_size} need {shards * tensor_parallel_size}"
                f" GPUs, {gpus} are visible: every shard would start its own engine and model on a shared GPU; set "
                f"LEARNALIGN_NUM_SHARDS={max(1, gpus // tensor_parallel_size)} (one shard per GPU group)",
            )
        )
    return problems


CPU = ComputeConfig(device="cpu")
