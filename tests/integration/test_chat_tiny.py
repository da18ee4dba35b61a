"""The `chat_tiny` preset materializes every asset of `learnalign_job`: the GSM8K preset's code path (chat template,
lm-eval's template and stop string, vLLM rollouts and benchmark) on the embedded pool, with a tiny policy that has
Qwen2.5-Instruct's quirks (padded vocabulary, untied lm_head, two EOS ids, bf16 weights on disk). vLLM engines are
counted while it runs: never two alive at once."""

import json

import dagster as dg
import pytest
import torch
from safetensors import safe_open
from testing_utils import requires_vllm
from transformers import AutoTokenizer

from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend
from learnalign_pipeline.core.storage.artifacts import read_artifact
from learnalign_pipeline.presets import CHAT_TINY

pytestmark = pytest.mark.slow


@requires_vllm
def test_chat_tiny_materializes_every_asset_with_one_engine_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path))
    alive, started, peak = set(), [], [0]
    real_engine, real_close = VLLMBackend._engine, VLLMBackend.close

    def engine(self):
        if self._llm is None:
            started.append(self.model_path)
        llm = real_engine(self)
        alive.add(id(self))
        peak[0] = max(peak[0], len(alive))
        return llm

    def close(self):
        real_close(self)
        alive.discard(id(self))

    monkeypatch.setattr(VLLMBackend, "_engine", engine)
    monkeypatch.setattr(VLLMBackend, "close", close)
    from learnalign_pipeline.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def("learnalign_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=CHAT_TINY, instance=instance)
        assert result.success
        keys = job.asset_layer.executable_asset_keys & definitions.resolve_asset_graph().materializable_asset_keys
        events = {k.to_user_string(): instance.get_latest_materialization_event(k).asset_materialization for k in keys}
    assert all(event is not None for event in events.values()), [k for k, e in events.items() if e is None]
    assert peak[0] == 1 and not alive  # one engine at a time, none left running
    assert len(started) == 4  # rollouts (warm-up policy), then the benchmark's three checkpoints one after another

    def artifact(name):
        meta = events[name].metadata
        return read_artifact(meta["path"].value, meta["sha256"].value)

    base = artifact("pretrained_policy").path
    config = json.loads((base / "config.json").read_text())
    assert config["vocab_size"] > len(AutoTokenizer.from_pretrained(base)) and config["tie_word_embeddings"] is False
    assert json.loads((base / "generation_config.json").read_text())["eos_token_id"] == [
        config["eos_token_id"],
        config["pad_token_id"],
    ]
    for name in ("pretrained_policy", "warmup_policy", "trained_policy"):  # the base model's dtype, kept
        path = artifact(name).path
        assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
        with safe_open(path / "model.safetensors", "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        assert (path / "manifest.json").exists()
    rollouts = artifact("rollouts")
    assert rollouts["finish_reason"].is_in(["stop", "length"]).all()
    stop_ids = {config["eos_token_id"], config["pad_token_id"]}  # <|im_end|>, <|endoftext|>
    for ids, reason in zip(rollouts["token_ids"].to_list(), rollouts["finish_reason"].to_list()):
        assert not stop_ids & set(ids[:-1])  # a stop id only ever ends a completion; nothing after it
        assert reason == "stop" or ids[-1] not in stop_ids
    assert events["rollouts"].metadata["backend"].value == "vllm"
    features = artifact("projected_gradients")
    assert features.tensors["unit_features"].shape[1] > 0 and torch.isfinite(features.tensors["norms"]).all()
    table = artifact("benchmark_results")
    assert set(table["backend"]) == {"vllm"} and set(table["template"]) == {"lm_eval_gsm8k_chat"}
