"""Your own model the way you bring it: `pretrained_policy.model_path` may name a GGUF file. It is converted once
(per file content) into a float32 `save_pretrained` artifact whose logits equal the GGUF-loaded model's."""

import dagster as dg
import torch

from learnalign_pipeline.core.policy.gguf import load_gguf
from learnalign_pipeline.core.policy.model import load_policy
from learnalign_pipeline.core.storage.artifacts import read_artifact
from learnalign_pipeline.core.storage.hashing import sha256_file
from learnalign_pipeline.core.task.prompts import PromptFormat, encode_prompt

PROMPTS = [
    PromptFormat("lm_eval_gsm8k", chat=True),
    PromptFormat("lm_eval_gsm8k"),
    PromptFormat("boxed", chat=True),
]
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?"


def materialize(run_config, instance):
    from learnalign_pipeline.definitions import defs

    job = defs().resolve_job_def("learnalign_job")
    keys = [dg.AssetKey("benchmark_problems"), dg.AssetKey("pretrained_policy")]
    assert job.execute_in_process(run_config=run_config, instance=instance, asset_selection=keys).success
    return instance.get_latest_materialization_event(dg.AssetKey("pretrained_policy")).asset_materialization


def test_a_gguf_file_becomes_a_checkpoint_with_the_same_logits(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    run_config = {"ops": {"pretrained_policy": {"config": {"model_path": str(smollm2_gguf)}}}}
    with dg.instance_for_test() as instance:
        event = materialize(run_config, instance)
        converted = next((tmp_path / "home" / "artifacts" / ".gguf").iterdir())
        stamp = (converted / "model.safetensors").stat().st_mtime_ns
        again = materialize(run_config, instance)  # converted once: the second run copies the same conversion
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp
    assert again.metadata["sha256"].value == event.metadata["sha256"].value
    assert event.metadata["source_sha256"].value == sha256_file(smollm2_gguf) == converted.name
    checkpoint = read_artifact(event.metadata["path"].value, event.metadata["sha256"].value)

    model, tokenizer = load_policy(checkpoint.path)
    reference, reference_tokenizer = load_gguf(smollm2_gguf)
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert event.metadata["parameters"].value == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        for fmt in PROMPTS:
            ids = encode_prompt(tokenizer, fmt.render(QUESTION, tokenizer))
            assert ids == encode_prompt(reference_tokenizer, fmt.render(QUESTION, reference_tokenizer))
            batch = torch.tensor([ids])
            assert torch.equal(model(input_ids=batch).logits, reference(input_ids=batch).logits)
