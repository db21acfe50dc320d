"""The paired bootstrap on a constructed example: when two models are scored on the same prompts, the
prompt-to-prompt spread cancels in the differences, so the paired interval is narrow where an unpaired one is not."""

from __future__ import annotations

import numpy as np
import pytest

from search_gym.stats import bootstrap_ci, paired_bootstrap_ci


def test_paired_interval_sees_a_shift_that_prompt_spread_hides():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(50, 30, size=200)  # prompts differ a lot ...
    a = difficulty + rng.normal(0, 1, size=200)
    b = difficulty + 2.0 + rng.normal(0, 1, size=200)  # ... model b is 2 points better on every one
    paired = paired_bootstrap_ci(a, b, n_boot=2000, seed=0)
    assert paired["n"] == 200
    assert paired["mean"] == pytest.approx(float(np.mean(b - a)))
    assert 1.5 < paired["lo"] < paired["mean"] < paired["hi"] < 2.5  # the shift, tightly
    # the same data treated as two independent samples: the interval of the difference of means spans 0
    lo_a, hi_a = bootstrap_ci(a, n_boot=2000, seed=0)["lo"], bootstrap_ci(a, n_boot=2000, seed=0)["hi"]
    lo_b, hi_b = bootstrap_ci(b, n_boot=2000, seed=1)["lo"], bootstrap_ci(b, n_boot=2000, seed=1)["hi"]
    assert lo_b < hi_a  # the two unpaired intervals overlap


def test_paired_drops_incomplete_pairs_and_needs_alignment():
    out = paired_bootstrap_ci([1.0, None, 3.0, float("nan")], [2.0, 5.0, 5.0, 1.0], n_boot=200, seed=0)
    assert out["n"] == 2 and out["mean"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="paired values must be aligned: 2 vs 3"):
        paired_bootstrap_ci([1.0, 2.0], [1.0, 2.0, 3.0])


def test_minimum_detectable_effect_of_the_pairs():
    from statistics import NormalDist

    from search_gym.stats import paired_mde

    diffs = np.array([-1.0, 1.0] * 50)  # sd of the differences 1.005 (ddof 1), n 100
    out = paired_mde(np.zeros(100), diffs)
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)  # 2.8016
    assert out["n"] == 100 and out["sd"] == pytest.approx(float(np.std(diffs, ddof=1)))
    assert out["mde"] == pytest.approx(z * out["sd"] / 10) and 0.28 < out["mde"] < 0.29
    # four times the pairs halve it; a higher power asks for a larger effect
    assert paired_mde(np.zeros(400), np.tile(diffs, 4))["mde"] == pytest.approx(out["mde"] / 2, rel=0.01)
    assert paired_mde(np.zeros(100), diffs, power=0.9)["mde"] > out["mde"]
    # the same pairs as paired_bootstrap_ci: incomplete ones dropped; one pair has no spread to read
    assert paired_mde([1.0, None, 3.0], [2.0, 4.0, float("nan")]) == {"mde": None, "sd": None, "n": 1}
    with pytest.raises(ValueError, match="paired values must be aligned: 1 vs 2"):
        paired_mde([1.0], [1.0, 2.0])
