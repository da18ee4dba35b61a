"""Resumable training: the full state of a training loop every few steps, so a killed run continues where it
stopped and ends with the same bytes as an uninterrupted one.

A state is a directory `step_<n>/` under a content-keyed resume directory (the key hashes everything the
result depends on, so a rerun of the same stage finds it and a changed stage never does):

- `model/`: the weights, a `save_pretrained` directory (safetensors);
- `optimizer.safetensors`: every tensor of the optimizer state (AdamW moments and step counts);
- `rng.safetensors`: torch's CPU generator state as a uint8 tensor;
- `state.json`: step, optimizer hyperparameters (param groups), the training log so far, and the sha256 of
  every other file, checked before a state is used.

Nothing is pickled. A state is written to a scratch directory and published with one rename, so a reader sees
a whole state or none; a state that fails its checks is skipped (the run starts from an older one or from
scratch, which gives the same result, only later).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from ..storage.hashing import settings_hash, sha256_file

STATE_FILE = "state.json"
STEP_PREFIX = "step_"


def resume_key(**inputs) -> str:
    """The hash of everything a training result depends on."""
    return settings_hash(inputs)


@dataclass
class TrainingState:
    step: int  # steps finished; training continues with step index `step`
    history: list[dict]
    weights: dict[str, torch.Tensor]  # model state_dict, read into memory so a concurrent clean-up cannot pull it away
    optimizer: dict  # torch optimizer state_dict
    rng: torch.Tensor  # torch.get_rng_state()


def _optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (safetensors) and plain values (JSON)."""
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{name}"] = value
    return tensors, {"plain": plain, "param_groups": state["param_groups"]}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["plain"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class ResumeDirectory:
    """The training states of one stage (one resume key); keeps only the newest."""

    def __init__(self, path: Path, warn=None):
        self.path = Path(path)
        self.warn = warn  # warn(message): hears of states that were skipped
        self.resumed_from_step = 0  # set by `latest()`: the step of the state it returned

    def save(self, step: int, model, optimizer: torch.optim.Optimizer, history: list[dict]) -> Path | None:
        """Publish the state after `step` steps; None (with a warning) when it could not be written, e.g. because
        a concurrent run of the same stage finished and cleared the directory. Training goes on either way."""
        scratch = self.path / f".{STEP_PREFIX}{step:06d}.{uuid.uuid4().hex}.tmp"
        try:
            return self._save(scratch, step, model, optimizer, history)
        except Exception as error:  # noqa: BLE001 - a state is an optimization; failing to save it must not fail training
            shutil.rmtree(scratch, ignore_errors=True)
            if self.warn:
                self.warn(
                    f"could not save the training state after step {step} in {self.path}: {type(error).__name__}: {error}"
                )
            return None

    def _save(self, scratch: Path, step: int, model, optimizer: torch.optim.Optimizer, history: list[dict]) -> Path:
        scratch.mkdir(parents=True)
        model.save_pretrained(scratch / "model", safe_serialization=True)
        tensors, meta = _optimizer_to_files(optimizer.state_dict())
        safetensors.torch.save_file(tensors, scratch / "optimizer.safetensors")
        safetensors.torch.save_file({"cpu": torch.get_rng_state()}, scratch / "rng.safetensors")
        files = {p.relative_to(scratch).as_posix(): sha256_file(p) for p in sorted(scratch.rglob("*")) if p.is_file()}
        (scratch / STATE_FILE).write_text(
            json.dumps({"step": step, "history": history, "optimizer": meta, "files": files}, default=float)
        )
        for path in scratch.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        final = self.path / f"{STEP_PREFIX}{step:06d}"
        try:
            os.rename(scratch, final)
        except OSError:  # another run of the same stage published this step first: same inputs, same state
            shutil.rmtree(scratch, ignore_errors=True)
        for older in self._steps():
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
        return final

    def _steps(self) -> list[Path]:
        try:
            return sorted(p for p in self.path.iterdir() if p.name.startswith(STEP_PREFIX) and p.is_dir())
        except (
            FileNotFoundError,
            NotADirectoryError,
        ):  # nothing saved yet, or a concurrent run of the stage finished and cleared it
            return []

    def latest(self, dtype: torch.dtype = torch.float32) -> TrainingState | None:
        """The newest state whose files match their recorded digests, read into memory (weights in `dtype`); None
        when there is none."""
        for path in reversed(self._steps()):
            try:
                state = _load(path, dtype)
                self.resumed_from_step = state.step
                return state
            except Exception as error:  # noqa: BLE001 - deleted meanwhile, truncated, tampered: start from an older one
                if self.warn:
                    self.warn(f"skipping training state {path}: {type(error).__name__}: {error}")
        return None

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _load(path: Path, dtype: torch.dtype) -> TrainingState:
    from transformers import AutoModelForCausalLM

    record = json.loads((path / STATE_FILE).read_text())
    for name, digest in record["files"].items():
        if sha256_file(path / name) != digest:
            raise ValueError(f"{path / name} does not match the digest recorded in {STATE_FILE}")
    optimizer = _optimizer_from_files(safetensors.torch.load_file(path / "optimizer.safetensors"), record["optimizer"])
    rng = safetensors.torch.load_file(path / "rng.safetensors")["cpu"]
    weights = AutoModelForCausalLM.from_pretrained(path / "model", dtype=dtype, use_safetensors=True).state_dict()
    return TrainingState(step=record["step"], history=record["history"], weights=weights, optimizer=optimizer, rng=rng)


def restore(state: TrainingState, model, optimizer: torch.optim.Optimizer) -> None:
    """Put `state` into `model` and `optimizer` in place (the optimizer keeps pointing at the model's tensors)."""
    with torch.no_grad():
        model.load_state_dict(state.weights)
    optimizer.load_state_dict(state.optimizer)
    torch.set_rng_state(state.rng)
