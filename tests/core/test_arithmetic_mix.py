"""The embedded generator's mixes: the default reproduces the problems and corpus generated before mixes existed;
the realistic mix draws its (family, variant) cells by weight and sets shortcut rates per phrasing."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from learnalign_pipeline.core.data.arithmetic import (
    DEFAULT_SHORTCUT_RATES,
    MIXES,
    PHRASINGS,
    ArithmeticConfig,
    ArithmeticMix,
    arithmetic_frame,
    cell_of,
    generate_problems,
    pretraining_corpus,
)

# sha256 of arithmetic_frame(1024, 1, "pool").write_csv() and of json.dumps(pretraining_corpus(3000, 3, defaults))
# on main at 583a5ab, before mixes existed: the default mix must keep producing these exact bytes (problem ids,
# checkpoints and every demo number depend on them).
POOL_BEFORE_MIXES = "d4c8cc4109e11de96cd9bc1efe40f021a82483b2e1881349ae1fdbd1870e3cbc"
CORPUS_BEFORE_MIXES = "56d98538e97328d8d899500b673c590e85bae420a7ad3b2dd00274e41859fa7b"


def test_default_mix_reproduces_the_problems_and_corpus_from_before_mixes():
    for mix in (None, MIXES["default"]):
        pool = arithmetic_frame(1024, 1, "pool", mix=mix)
        assert hashlib.sha256(pool.write_csv().encode()).hexdigest() == POOL_BEFORE_MIXES
        corpus = pretraining_corpus(3000, 3, DEFAULT_SHORTCUT_RATES, mix=mix)
        assert hashlib.sha256(json.dumps(list(corpus)).encode()).hexdigest() == CORPUS_BEFORE_MIXES
    assert set(pool["extra"]) == {"{}"}


def test_realistic_mix_draws_cells_by_weight_and_records_the_variant():
    mix = MIXES["realistic"]
    problems = generate_problems(20_000, 5, mix=mix)
    counts = Counter(f"{p.family}/{p.variant}" for p in problems)
    total = sum(mix.cells.values())
    for cell, weight in mix.cells.items():
        expected = 20_000 * weight / total
        assert abs(counts[cell] - expected) < 4 * expected**0.5, cell  # within 4 binomial SDs
    for p in problems[:200]:
        assert p.prompt.startswith(PHRASINGS[p.family][p.variant].split("{")[0])
    frame = arithmetic_frame(300, 5, "pool", mix=mix)
    cells = cell_of(frame).to_list()
    assert cells == [f"{p.family}/{p.variant}" for p in problems[:300]][: len(cells)]
    assert set(json.loads(e)["variant"] for e in frame["extra"]) <= {0, 1, 2}


def test_realistic_corpus_sets_shortcut_rates_per_phrasing():
    mix = MIXES["realistic"]
    questions, targets = pretraining_corpus(9000, 3, DEFAULT_SHORTCUT_RATES, mix=mix)
    problems = generate_problems(9000, 3, mix=ArithmeticMix(cells={c: 1.0 for c in mix.cells}))
    assert questions == [p.prompt for p in problems]
    shortcut_share: dict[str, list[int]] = {}
    for p, target in zip(problems, targets):
        shortcut_share.setdefault(f"{p.family}/{p.variant}", []).append(int(target != p.solution))
    share = {cell: sum(v) / len(v) for cell, v in shortcut_share.items()}
    for family in ("sub", "two_step", "mul_add"):
        assert share[f"{family}/0"] == 0.0
        assert 0.4 < share[f"{family}/1"] < 0.6
        assert share[f"{family}/2"] == 1.0
    assert share["add/1"] == share["mul/2"] == 0.0  # no shortcut: the always-solved families
    assert len(share) == 15  # the corpus covers every phrasing uniformly


def test_mix_settings_are_validated():
    with pytest.raises(ValueError, match="unknown family"):
        ArithmeticMix(cells={"div/0": 1.0})
    with pytest.raises(ValueError, match="unknown variant"):
        ArithmeticMix(shortcut_rates={"sub/3": 0.5})
    with pytest.raises(ValueError, match="unknown mix"):
        ArithmeticConfig(mix="nope")
