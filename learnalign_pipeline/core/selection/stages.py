"""The two cached selection stages, rollouts (LearnAlign step 2) and gradient features (step 3), as objects over
the row cache: each derives its cache namespace from its settings objects (so the key cannot drift from what
determines the rows), plans its work into shards, computes what the cache lacks and gathers the result.

The Dagster adapters (`defs/selection/`) and the benchmark scripts call these same objects, so a figure measured
by a script is measured on the code the assets run. Shards only decide where rows are computed: the gathered
result never depends on the shard count, the executor or the number of reruns.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import torch

from ..compute import CPU, ComputeConfig
from ..policy.generation import GenerationBackend, SamplingSpec
from ..policy.rollouts import ROLLOUT_SCHEMA, learnable_problems, sample_rollouts
from ..storage.artifacts import TensorBundle
from ..storage.hashing import code_digest, stable_hash
from ..storage.row_cache import Namespace, RowCache, content_batches, problem_keys, shard_of
from ..task.config import TaskConfig
from ..task.verify import Verifier
from ..training.grpo import GRPOLossConfig
from .config import FeatureConfig, RolloutConfig
from .features import FeatureBatchResult, gradient_features, memory_budget

# The code each stage's rows are computed by: these modules and every module of the package they import. Its
# digest is part of the namespace key, so an edit to generation, a verifier, the prompts or the gradient math
# starts a fresh namespace and cached rows of other code are never served (no version number to remember).
ROLLOUT_CODE = ("policy.rollouts", "policy.generation", "policy.vllm_backend", "task.verify", "task.prompts")
FEATURE_CODE = ("selection.features", "selection.capture", "selection.projection", "training.grpo", "task.prompts")


def code_version(modules: tuple[str, ...]) -> str:
    package = __name__.rsplit(".", 2)[0]  # learnalign_pipeline.core
    return code_digest(*(f"{package}.{m}" for m in modules))


def library_versions(*names: str) -> dict[str, str | None]:
    """Versions of the libraries whose kernels compute the rows (a new torch may round differently)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def shard_rows(problems: pl.DataFrame, shard: int, num_shards: int) -> pl.DataFrame:
    """The problems whose content hash falls in `shard`."""
    mask = [shard_of(k, num_shards) == shard for k in problem_keys(problems)]
    return problems.filter(pl.Series(mask, dtype=pl.Boolean))


class RolloutStage:
    """K sampled, verified completions per problem, cached per problem under (policy, settings, task)."""

    def __init__(self, cache: RowCache, settings: RolloutConfig, task: TaskConfig, policy: str, engine: dict):
        """`policy` is the checkpoint's content digest; `engine` what else of the generation engine decides the
        samples (e.g. the vLLM weights dtype)."""
        self.cache, self.settings, self.task = cache, settings, task
        rows = dataclasses.asdict(settings)
        del rows["problems_per_file"]  # how rows are grouped into files, not what they are
        self.namespace: Namespace = cache.namespace(
            "rollouts",
            {
                "code": code_version(ROLLOUT_CODE),
                "libraries": library_versions(
                    "torch", "transformers", *(["vllm"] if settings.backend == "vllm" else [])
                ),
                "policy": policy,
                "rollouts": rows,
                "task": dataclasses.asdict(task),
                "engine": engine,
            },
        )

    def plan(self, problems: pl.DataFrame, num_shards: int) -> list[dict]:
        """Per shard: its index and problem count."""
        shards = [shard_of(k, num_shards) for k in problem_keys(problems)]
        return [{"shard": i, "problems": shards.count(i)} for i in range(num_shards)]

    def generate_missing(
        self, problems: pl.DataFrame, make_backend: Callable[[], GenerationBackend], verifier: Verifier
    ) -> dict:
        """Generate the rollouts of `problems` that the cache lacks, publishing one file per `problems_per_file`
        problems as it finishes (a killed run keeps every finished file). `make_backend` is called only if
        something is missing. Returns counts for metadata."""
        s = self.settings
        keys = problem_keys(problems)
        cached = self.cache.rows(self.namespace, keys)
        have = set(cached["row_key"].to_list()) if cached is not None else set()
        missing = problems.with_columns(pl.Series("row_key", keys)).filter(~pl.col("row_key").is_in(list(have)))
        stats = {
            "problems": problems.height,
            "reused_problems": problems.height - missing.height,
            "generated_problems": 0,
            "files": 0,
            "generated_tokens": 0,
        }
        if not missing.height:
            return stats
        backend, spec = make_backend(), self.sampling()
        for start in range(0, missing.height, s.problems_per_file):
            chunk = missing[start : start + s.problems_per_file]
            rows = sample_rollouts(backend, chunk, spec, verifier, self.task.prompt_format(), s.seed)
            rows = rows.with_columns(
                pl.col("problem_id").replace_strict(chunk["problem_id"], chunk["row_key"]).alias("row_key")
            )
            self.cache.put_rows(self.namespace, rows)
            stats["generated_problems"] += chunk.height
            stats["files"] += 1
            stats["generated_tokens"] += int(rows["num_tokens"].sum())
        return stats

    def sampling(self) -> SamplingSpec:
        s = self.settings
        return SamplingSpec(
            num_samples=s.num_samples, temperature=s.temperature, top_p=s.top_p, max_new_tokens=self.task.max_new_tokens
        )

    def gather(self, problems: pl.DataFrame) -> pl.DataFrame:
        """Every problem's cached rollouts in `problems` order and sample order, as `sample_rollouts` returns them."""
        keys = problem_keys(problems)
        cached = self.cache.rows(self.namespace, keys)
        order = pl.DataFrame({"row_key": keys, "_position": range(len(keys)), "_id": problems["problem_id"]})
        empty = pl.DataFrame(schema={**ROLLOUT_SCHEMA, "row_key": pl.String()})
        rows = order.join(cached if cached is not None else empty, on="row_key", how="left")
        lacking = rows.filter(pl.col("sample_index").is_null())
        if lacking.height:
            raise ValueError(
                f"rollouts are missing from the row cache for {lacking.height} problems, e.g. "
                f"{lacking['_id'].head(3).to_list()} ({self.namespace.path}); rematerialize rollouts_and_success_rates "
                "to generate them again"
            )
        return rows.sort("_position", "sample_index").select(list(ROLLOUT_SCHEMA)).cast(ROLLOUT_SCHEMA)


@dataclass(frozen=True)
class FeatureBatch:
    """A content-defined batch of problems whose features are computed together and cached as one file."""

    key: str  # hash of the namespace and every member's row key: names the cached file
    problem_ids: tuple[str, ...]  # in key order, the order the batch is computed in
    shard: int

    def as_json(self) -> dict:
        return {"key": self.key, "problem_ids": list(self.problem_ids), "shard": self.shard}

    @classmethod
    def from_json(cls, value: dict) -> FeatureBatch:
        return cls(value["key"], tuple(value["problem_ids"]), value["shard"])


def feature_row_keys(problems: pl.DataFrame, rollouts: pl.DataFrame) -> list[str]:
    """Per problem: the hash of its content and of its rollouts (token ids and rewards, in sample order), i.e. of
    everything its GRPO loss reads besides the policy and the stage settings."""
    samples = rollouts.group_by("problem_id").agg(
        pl.col("token_ids").sort_by("sample_index"), pl.col("reward").sort_by("sample_index")
    )
    ordered = problems.select("problem_id").join(samples, on="problem_id", how="left", maintain_order="left")
    return [
        stable_hash(key, json.dumps(ids), json.dumps(rewards))
        for key, ids, rewards in zip(
            problem_keys(problems), ordered["token_ids"].to_list(), ordered["reward"].to_list(), strict=True
        )
    ]


# (model, reference or None, tokenizer), loaded only when a batch must be computed
Models = tuple[torch.nn.Module, torch.nn.Module | None, object]


class FeatureStage:
    """Projected per-problem GRPO gradients of the learnable problems (0 < p < 1), cached per content-defined
    batch under (policy, reference, loss, projection, prompt format).

    Batches are content-defined (`row_cache.content_batches`) because one batched forward/backward gives a
    problem's features up to float rounding that depends on its batch-mates: the same problems always form the
    same batches, so a cached batch holds exactly the numbers a fresh run computes.
    """

    def __init__(
        self,
        cache: RowCache,
        settings: FeatureConfig,
        task: TaskConfig,
        loss: GRPOLossConfig,
        policy: str,
        reference: str | None,
        compute: ComputeConfig = CPU,
    ):
        """`policy` and `reference` are checkpoint content digests (`reference` None when the loss has no KL term);
        `compute` where the features are computed (its device type and precision are part of what a row holds)."""
        self.cache, self.settings, self.task, self.loss, self.compute = cache, settings, task, loss, compute
        projection = dataclasses.asdict(settings)
        for unused in ("problems_per_batch", "on_nonfinite"):  # batching and failure policy: not what a row holds
            del projection[unused]
        self.namespace: Namespace = cache.namespace(
            "gradient_features",
            {
                "code": code_version(FEATURE_CODE),
                "libraries": library_versions("torch", "transformers"),
                "policy": policy,
                "reference_policy": reference if loss.beta else None,
                "loss": dataclasses.asdict(loss),
                "projection": projection,
                "prompt": self.task.prompt_format().name,
                "compute": {"device": compute.torch_device().type, "autocast": str(compute.autocast_dtype())},
            },
        )

    def active(self, problems: pl.DataFrame, rates: pl.DataFrame) -> pl.DataFrame:
        """The pool rows of the learnable problems, in `rates` order."""
        return (
            learnable_problems(rates)
            .select("problem_id")
            .join(problems, on="problem_id", how="left", maintain_order="left")
        )

    def plan(
        self, problems: pl.DataFrame, rollouts: pl.DataFrame, rates: pl.DataFrame, num_shards: int
    ) -> list[FeatureBatch]:
        """Content-defined batches of the learnable problems, each assigned to a shard by its key. Neither the
        batches nor their contents depend on the shard count or on the rest of the pool."""
        active = self.active(problems, rates)
        keys = feature_row_keys(active, rollouts)
        ids = active["problem_id"].to_list()
        batches = []
        for members in content_batches(keys, self.settings.problems_per_batch):
            key = stable_hash(self.namespace.key, *(keys[i] for i in members))
            batches.append(FeatureBatch(key, tuple(ids[i] for i in members), shard_of(key, num_shards)))
        return batches

    def compute_missing(
        self,
        batches: list[FeatureBatch],
        problems: pl.DataFrame,
        rollouts: pl.DataFrame,
        load_models: Callable[[], Models],
    ) -> dict:
        """Compute and publish every batch the cache lacks, one file per batch as it finishes. `load_models` is
        called only if something is missing."""
        stats = {"batches": len(batches), "reused_batches": 0, "computed_batches": 0, "computed_problems": 0}
        models, projector = None, self.settings.projector()
        for batch in batches:
            if self.cache.has_batch(self.namespace, batch.key):
                stats["reused_batches"] += 1
                continue
            models = models or load_models()
            model, reference, tokenizer = models
            members = pl.DataFrame({"problem_id": list(batch.problem_ids)}).join(
                problems, on="problem_id", how="left", maintain_order="left"
            )
            result = gradient_features(
                model,
                reference,
                tokenizer,
                members,
                rollouts,
                self.loss,
                projector,
                self.task.prompt_format(),
                scope=self.settings.scope,
                last_blocks=self.settings.last_blocks,
                problems_per_batch=members.height,
                checkpointing=self.settings.activation_checkpointing,
                memory_budget_bytes=memory_budget(model, self.settings.memory_budget_gib),
                autocast_dtype=self.compute.autocast_dtype(),
            )
            bundle = TensorBundle(
                {"features": result.features.contiguous()}, {"problem_ids": json.dumps(result.problem_ids)}
            )
            self.cache.put_batch(self.namespace, batch.key, bundle)
            stats["computed_batches"] += 1
            stats["computed_problems"] += len(batch.problem_ids)
        return stats

    def gather(self, batches: list[FeatureBatch], problem_ids: list[str]) -> FeatureBatchResult:
        """The cached features of every batch, rows in `problem_ids` order (every id must belong to a batch)."""
        blocks, ids = [], []
        for batch in batches:
            bundle = self.cache.get_batch(self.namespace, batch.key)
            if bundle is None:
                raise ValueError(
                    f"feature batch {batch.key[:16]} is missing from the row cache or was corrupted after its shard "
                    f"published it ({self.namespace.path}); rematerialize projected_gradients to compute it again"
                )
            stored = json.loads(bundle.metadata["problem_ids"])
            if stored != list(batch.problem_ids):
                raise ValueError(f"cached feature batch {batch.key[:16]} holds other problems than planned")
            blocks.append(bundle.tensors["features"])
            ids.extend(stored)
        if not blocks:
            return FeatureBatchResult([], torch.zeros(0, 0))
        features = torch.cat(blocks)
        row = {pid: i for i, pid in enumerate(ids)}
        return FeatureBatchResult(list(problem_ids), features[[row[pid] for pid in problem_ids]])
