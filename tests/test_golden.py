"""Golden files: the demo loop, the eval harness, the trainers' rollouts and GRPO steps produce exactly what they
produced when the files were written (tests/golden/make_golden.py says what each case runs and how to rewrite
them). Floats are compared to 6 significant digits (the files' rounding), everything else exactly."""

from __future__ import annotations

import json
import math

import pytest

from golden.make_golden import CASES, compute, path_of


def assert_same(got, want, where="") -> None:
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and isinstance(want, (int, float)), f"{where}: {got!r} != {want!r}"
        assert math.isclose(got, want, rel_tol=2e-5, abs_tol=1e-9), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: not a dict: {got!r}"
        assert sorted(got) == sorted(want), f"{where}: keys differ: {sorted(set(got) ^ set(want))}"
        for k in want:
            assert_same(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, smollm2_folder):
    want = json.loads(path_of(name).read_text())
    got = json.loads(json.dumps(compute(name)))  # the same JSON round trip as the file
    assert_same(got, want, name)


def test_assert_same_catches_a_changed_value():
    with pytest.raises(AssertionError, match="a/b"):
        assert_same({"a": {"b": 1.0}}, {"a": {"b": 1.001}})
    with pytest.raises(AssertionError, match="keys differ"):
        assert_same({"a": 1}, {"b": 1})
