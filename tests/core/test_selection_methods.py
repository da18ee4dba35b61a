"""Each selection rule on hand-made inputs whose right answer is known (methods.md §3.4, §4.6, §5)."""

import math

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.data.noise import mark_noisy, noisy_flags
from learnalign_pipeline.core.evaluation.comparison import summarize, table_a
from learnalign_pipeline.core.selection.methods import (
    LEARNABLE_ONLY,
    METHODS,
    MissingSignal,
    NoLearnableProblems,
    SelectionSignals,
    method_scores,
    select,
    trajectory_matrix,
    visit_trajectory,
)
from learnalign_pipeline.core.storage.hashing import problem_id

IDS = ["a", "b", "c", "d"]
E1, E2 = [1.0, 0.0], [0.0, 1.0]
S2 = math.sqrt(0.5)


def signals(**kwargs) -> SelectionSignals:
    base = dict(
        problem_ids=IDS,
        success_rate=torch.tensor([0.5, 0.25, 0.5, 1.0], dtype=torch.float64),
        unit_features=torch.tensor([E1, E1, E2, [0.0, 0.0]]),  # d: p = 1, no gradient
        norms=torch.tensor([1.0, 4.0, 2.0, 0.0]),
    )
    return SelectionSignals(**{**base, **kwargs})


def scores(method, s=None, seed=0):
    return method_scores(method, s or signals(), seed).double()


def test_learnalign_is_the_row_average_of_the_explicit_matrix():
    s = signals()
    v = s.success_rate * (1 - s.success_rate)
    cos = s.unit_features.double() @ s.unit_features.double().T
    expected = (v[:, None] * v[None, :] * cos).mean(1)
    torch.testing.assert_close(scores("learnalign", s), expected, rtol=1e-6, atol=1e-9)
    # by hand: V = (1/4, 3/16, 1/4, 0); a aligns with a and b: (1/4)(1/4 + 3/16)/4
    assert scores("learnalign", s)[0].item() == pytest.approx(0.25 * (0.25 + 3 / 16) / 4)
    assert select("learnalign", s, 2).picked == [0, 1]  # a, then b (same direction, lower V) before c (alone)


def test_learnalign_ablations():
    s = signals()
    # w/o learnability: <u_i, mean_j u_j> over every problem; d (p in {0,1}) has only its KL-only direction, e1 here,
    # so mean = (3 e1 + e2) / 4 and d is ranked like any other problem instead of being filtered out
    kl_only = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], E1])
    with_kl = signals(zero_variance_unit_features=kl_only)
    torch.testing.assert_close(
        scores("learnalign_no_learnability", with_kl), torch.tensor([0.75, 0.75, 0.25, 0.75], dtype=torch.float64)
    )
    with pytest.raises(MissingSignal, match="zero_variance_unit_features"):
        scores("learnalign_no_learnability", s)
    # inner product: V_i <phi_i, (1/n) sum_j V_j phi_j>; phi = (e1, 4 e1, 2 e2, 0), sum V_j phi_j = (1/4 + 3/4) e1 + (1/2) e2
    expected = torch.tensor([0.25 * 1.0 / 4, (3 / 16) * 4.0 / 4, 0.25 * 2 * 0.5 / 4, 0.0], dtype=torch.float64)
    torch.testing.assert_close(scores("learnalign_dot", s), expected, rtol=1e-6, atol=1e-9)
    assert select("learnalign_dot", s, 1).picked == [1]  # the large gradient wins once magnitude counts
    # w/o warm-up: the same rule on the base policy's signals
    cold = signals(
        cold_success_rate=torch.tensor([0.0, 0.5, 0.5, 0.5]), cold_unit_features=torch.tensor([E1, E2, E2, E1])
    )
    assert select("learnalign_no_warmup", cold, 2).picked == [1, 2]
    with pytest.raises(MissingSignal, match="cold_success_rate"):
        scores("learnalign_no_warmup", s)


def test_gradalign_family():
    val = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # g_V = (2, 1): raw sum; unit sum = (1, 1)
    # every normalization is g / (|g| + 1e-5) (GradAlign's released code): relative differences ~1e-5
    s = signals(validation_features=val)
    c1, c2 = 2 / math.sqrt(5), 1 / math.sqrt(5)
    torch.testing.assert_close(
        scores("gradalign", s), torch.tensor([c1, c1, c2, 0.0], dtype=torch.float64), rtol=3e-5, atol=1e-7
    )
    torch.testing.assert_close(
        scores("gradalign_dot", s), torch.tensor([c1, 4 * c1, 2 * c2, 0.0], dtype=torch.float64), rtol=3e-5, atol=1e-7
    )
    torch.testing.assert_close(
        scores("gradalign_unit_mean", s), torch.tensor([S2, S2, S2, 0.0], dtype=torch.float64), rtol=3e-5, atol=1e-7
    )
    acc = 4 * s.success_rate * (1 - s.success_rate)
    torch.testing.assert_close(
        scores("gradalign_learnability", s),
        torch.tensor([c1, c1, c2, 0.0], dtype=torch.float64) * acc,
        rtol=3e-5,
        atol=1e-7,
    )
    # bottom-k: a candidate pointing against the validation gradient comes first
    opposed = signals(validation_features=val, unit_features=torch.tensor([E1, [-1.0, 0.0], E2, [0.0, 0.0]]))
    assert select("gradalign_bottom", opposed, 1).picked == [1]
    assert select("gradient_norm", s, 2).picked == [1, 2]
    with pytest.raises(MissingSignal, match="validation_features"):
        scores("gradalign", signals())


def test_accuracy_based_baselines():
    s = signals(success_rate=torch.tensor([0.0, 0.5, 0.375, 1.0], dtype=torch.float64))
    assert select("accgreedy", s, 2).picked == [1, 2]
    band = select("accuracy_band", s, 4, seed=3).picked
    assert set(band[:2]) == {1, 2} and set(band[2:]) == {0, 3}  # in-band problems fill the budget first
    first, again, other = (
        select("random", s, 2, seed=1).picked,
        select("random", s, 2, seed=1).picked,
        [select("random", s, 2, seed=k).picked for k in range(2, 12)],
    )
    assert first == again and any(o != first for o in other)  # seeded: reproducible, and the seed matters
    # row order does not matter: the same problems are drawn from a permuted pool
    perm = [3, 1, 0, 2]
    permuted = SelectionSignals(problem_ids=[IDS[i] for i in perm], success_rate=s.success_rate[perm])
    assert {permuted.problem_ids[i] for i in select("random", permuted, 2, seed=1).picked} == {IDS[i] for i in first}
    counts = torch.zeros(4)
    for seed in range(400):
        counts[select("random", s, 1, seed=seed).picked[0]] += 1
    assert counts.min() > 60  # roughly uniform (expected 100 each)


def test_limr_matches_the_formula_and_backfills_missing_epochs():
    nan = math.nan
    traj = torch.tensor([[0.0, 1.0], [0.5, 0.5], [nan, 1.0], [0.5, nan]], dtype=torch.float64)
    s = signals(limr_trajectory=traj)
    got = scores("limr", s)
    # c is filled from its next epoch -> (1, 1); d is missing at the last epoch -> dropped (-inf)
    filled = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 1.0]], dtype=torch.float64)
    mean = filled.mean(0)
    expected = 1 - ((filled - mean) ** 2).sum(1) / ((1 - mean) ** 2).sum()
    torch.testing.assert_close(got[:3], expected)
    assert got[3] == -math.inf
    assert select("limr", s, 1).picked == [1]  # b tracks the pool-mean curve most closely


def test_cheap_baselines_and_full_data():
    s = signals(
        response_tokens=torch.tensor([5.0, 9.0, 7.0, 1.0]),
        perplexity=torch.tensor([2.0, 8.0, 3.0, 1.0]),
        unconditional_perplexity=torch.tensor([1.0, 16.0, 2.0, 4.0]),
    )
    assert select("response_length", s, 2).picked == [1, 2]
    assert select("perplexity_top", s, 2).picked == [1, 2]
    assert select("ifd", s, 2).picked == [0, 2]  # ratios 2, 0.5, 1.5, 0.25
    assert sorted(select("full_data", s, 1).picked) == [0, 1, 2, 3]  # every problem whatever the budget


def test_ties_break_by_problem_id_and_unknown_methods_fail():
    s = signals(success_rate=torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64), problem_ids=["d", "b", "c", "a"])
    assert select("accgreedy", s, 4).picked == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="unknown selection method"):
        select("nope", s, 1)
    assert len(METHODS) == 19


def test_unlearnable_problems_never_fill_the_budget_while_learnable_ones_remain():
    # a, b learnable and aligned; c learnable but opposed to the mean direction (negative score); d, e: p = 0 and 1
    s = SelectionSignals(
        problem_ids=["a", "b", "c", "d", "e"],
        success_rate=torch.tensor([0.5, 0.25, 0.5, 0.0, 1.0], dtype=torch.float64),
        unit_features=torch.tensor([E1, E1, [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        norms=torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]),
    )
    assert scores("learnalign", s)[2] < 0 == scores("learnalign", s)[3]  # by score alone d and e rank above c
    chosen = select("learnalign", s, 3)
    assert chosen.picked == [0, 1, 2] and chosen.learnable_selected == 3 and chosen.shortfall is None
    bigger = select("learnalign", s, 4)  # more than the learnable problems: the subset shrinks and says why
    assert bigger.picked == [0, 1, 2] and bigger.learnable_in_pool == 3
    assert bigger.shortfall.startswith("budget 4 > 3 learnable problems (0 < p < 1) in the pool of 5: selected 3")
    for method in sorted(
        LEARNABLE_ONLY
        - {
            "learnalign_no_warmup",
            "gradalign",
            "gradalign_dot",
            "gradalign_unit_mean",
            "gradalign_learnability",
            "gradalign_bottom",
        }
    ):
        assert sorted(select(method, s, 5).picked) == [0, 1, 2], method
    controls = select("random", s, 5)  # a control keeps its definition: any problem
    assert sorted(controls.picked) == [0, 1, 2, 3, 4] and controls.learnable_selected == 3
    assert select("random", s, 9).shortfall == "budget 9 > the pool's 5 problems: selected 5"


def test_a_pool_without_learnable_problems_is_refused_by_every_method():
    s = signals(success_rate=torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    for method in ("learnalign", "random", "full_data"):
        with pytest.raises(NoLearnableProblems, match=r"all 4 problems have p = 0 or 1 .*\(3 never solved, 1 always"):
            select(method, s, 2)


def test_noisy_pool_marks_the_exact_share_and_keeps_ids_content_hashes():
    pool = pl.DataFrame(
        {
            "problem_id": [problem_id(f"q{i}", str(i)) for i in range(40)],
            "source": "t",
            "split": "pool",
            "row_index": list(range(40)),
            "prompt": [f"q{i}" for i in range(40)],
            "answer": [str(i) for i in range(40)],
            "solution": None,
            "category": "x",
            "extra": "{}",
        }
    )
    for kind in ["wrong", "random"]:
        noisy = mark_noisy(pool, 0.25, kind, seed=5)
        flags = noisy_flags(noisy)
        assert int(flags.sum()) == 10
        changed = noisy.filter(flags)
        assert (changed["answer"] != pool.filter(flags)["answer"]).all()
        assert changed["problem_id"].to_list() == [
            problem_id(p, a) for p, a in zip(changed["prompt"], changed["answer"])
        ]
        assert noisy.filter(~flags).equals(pool.filter(~flags))
        assert mark_noisy(pool, 0.25, kind, seed=5).equals(noisy)
    assert mark_noisy(pool, 0.0).equals(pool)


def test_visit_trajectory_counts_visits_as_epochs_and_table_a_has_one_row_per_method():
    records: list[dict] = []

    def visit(step, ids, r):  # two rollouts per problem, as a GRPO step's reward records
        records.extend({"step": step, "problem_id": i, "reward": x} for i, x in zip(ids, r) for _ in range(2))
        return pl.DataFrame(records)

    visit(0, ["a", "b"], [0.0, 1.0])
    matrix = trajectory_matrix(visit_trajectory(visit(1, ["c", "a"], [1.0, 1.0])), ["a", "b", "c"])
    assert matrix.shape == (3, 1) and matrix[:, 0].tolist() == [
        0.0,
        1.0,
        1.0,
    ]  # epoch 1 covers only a: partial, dropped
    frame = visit(2, ["b", "c"], [0.0, 0.5])
    matrix = trajectory_matrix(visit_trajectory(frame), ["a", "b", "c"])
    assert matrix[:, 1].tolist() == [1.0, 0.0, 0.5]  # second visits form epoch 1 once it is complete
    results = pl.DataFrame(
        {
            "method": ["x", "x", "x", "y"],
            "budget": [8, 8, 16, 8],
            "seed": [0, 1, 0, 0],
            "accuracy": [0.5, 0.7, 0.6, 0.4],
            "noisy_share": [0.0] * 4,
        }
    )
    summary = summarize(results)
    table = table_a(summary, ["y", "x"]).splitlines()
    assert table[0] == "| method | N=8 | N=16 |"
    assert table[2] == "| y | 40.0 ± 0.0 |  |" and table[3].startswith("| x | 60.0 ± 14.1 | 60.0 ± 0.0")


def test_answer_perplexity_is_exp_mean_nll_of_the_target_tokens(model, tokenizer):
    from learnalign_pipeline.core.selection.perplexity import answer_perplexity
    from learnalign_pipeline.core.task.prompts import render

    prompts, targets = (
        ["What is 2 plus 3?", "Tom has 4 apples and eats 1. How many are left?"],
        ["5", "4 - 1 = 3. The answer is 3."],
    )
    conditional, unconditional = answer_perplexity(model, tokenizer, prompts, targets, "qa", batch_size=1)
    batched, _ = answer_perplexity(model, tokenizer, prompts, targets, "qa", batch_size=2)
    torch.testing.assert_close(batched, conditional, rtol=1e-4, atol=1e-5)  # padding does not leak into the value
    for i in range(2):  # by hand: one unpadded forward per row
        context = tokenizer(render("qa", prompts[i]))["input_ids"]
        target = tokenizer(" " + targets[i])["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([context + target])).logits[0].float(), -1)
        nll = -torch.stack([logp[len(context) + j - 1, t] for j, t in enumerate(target)]).mean()
        assert conditional[i].item() == pytest.approx(math.exp(nll.item()), rel=1e-4)
    assert (unconditional > 1).all()
