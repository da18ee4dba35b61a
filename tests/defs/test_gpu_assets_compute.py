"""Every GPU-tagged asset computes where the `compute` resource says (device and autocast): k8s reserves a GPU for
it, so a model loaded on the CPU there leaves the GPU idle and runs for hours on the host. A device audit in two
parts: the definitions give every GPU-tagged asset the `compute` resource, and no module of `defs/` loads a
policy, generates, or computes features without passing a device and an autocast setting on."""

import ast
from pathlib import Path

import dagster as dg

import learnalign_pipeline
from learnalign_pipeline.definitions import defs

DEFS = Path(learnalign_pipeline.__file__).parent / "defs"
# The selection experiment trains its tiny policies in memory on the CPU by design (bitwise-reproducible arms,
# core/evaluation/experiment.py); it is not a GPU workload, whatever its tag.
CPU_BY_DESIGN = {"experiment"}
# pretrained_policy copies a real model's files (nothing computes) or pre-trains the built-in tiny policy, which
# stays on the CPU so the demo's base policy is the same on every machine.
NOTHING_TO_PLACE = {"pretrained_policy"}
# call -> the keyword it must pass: where the model lives, or the autocast the computation runs under
PLACED_CALLS = {
    "load_policy": "device",
    "TransformersBackend": "autocast_dtype",
    "gradient_features": "autocast_dtype",
    "features_for_rates": "autocast_dtype",
    "score_chunk": "autocast_dtype",
}


def test_every_gpu_asset_is_given_the_compute_resource():
    missing = []
    for asset in defs().assets:
        if not isinstance(asset, dg.AssetsDefinition):
            continue  # source assets: observed, never computed
        for key in asset.keys:
            if (
                asset.tags_by_key.get(key, {}).get("hardware") != "gpu"
                or asset.group_names_by_key[key] in CPU_BY_DESIGN
            ):
                continue
            if "compute" not in asset.required_resource_keys and key.to_user_string() not in NOTHING_TO_PLACE:
                missing.append(key.to_user_string())
    assert missing == []


def test_no_defs_module_places_a_model_or_computation_itself():
    unplaced = []
    for path in sorted(DEFS.rglob("*.py")):
        if path.parent.name in CPU_BY_DESIGN:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name in PLACED_CALLS and PLACED_CALLS[name] not in {k.arg for k in node.keywords}:
                unplaced.append(f"{path.relative_to(DEFS)}:{node.lineno} {name}() without {PLACED_CALLS[name]}=")
    assert unplaced == []
