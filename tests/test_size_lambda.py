"""Sizing the representation penalty's lambda from a probe run (issue 27, part 4): lambda x the projection's
within-group std = target x the task reward's within-group std, from the per-step group metrics."""

from __future__ import annotations

import csv
import json

import pytest

from search_gym.trainers.shaping import size_lambda


def _rows(pairs):
    return [{"global_step": str(i + 1), "groups/penalty_std": str(p), "groups/task_reward_std": str(t)}
            for i, (p, t) in enumerate(pairs)]


def test_lambda_is_the_target_ratio_of_the_mean_spreads():
    # probe at lambda 2: projection std = penalty std / 2 = (0.01 + 0.03) / 2 / 2 = 0.01; task std (0.2 + 0.4) / 2 = 0.3
    sized = size_lambda(_rows([(0.01, 0.2), (0.03, 0.4)]), lambda_used=2.0, target=0.35)
    assert sized["projection_std"] == pytest.approx(0.01) and sized["task_reward_std"] == pytest.approx(0.3)
    assert sized["lambda"] == pytest.approx(0.35 * 0.3 / 0.01)  # 10.5
    assert sized["band"] == pytest.approx((0.2 * 30, 0.5 * 30)) and sized["steps"] == 2
    assert sized["ratio_at_lambda_used"] == pytest.approx(2 * 0.01 / 0.3)
    # the sized lambda gives the target ratio: lambda x projection std / task std
    assert sized["lambda"] * sized["projection_std"] / sized["task_reward_std"] == pytest.approx(0.35)


@pytest.mark.parametrize("rows, lam, target, message", [
    (_rows([(0.0, 0.2), (0.0, 0.3)]), 1.0, 0.35, "cancels in group-relative advantages at any lambda"),
    (_rows([(0.01, 0.0)]), 1.0, 0.35, "task reward has no spread"),
    (_rows([(0.01, 0.2)]), 0.0, 0.35, "penalty on"),
    (_rows([(0.01, 0.2)]), 1.0, 0.9, "must lie in the band"),
    ([{"global_step": "1", "charts/em": "0.5"}], 1.0, 0.35, "no step logged groups/penalty_std"),
])
def test_bad_probes_say_why(rows, lam, target, message):
    with pytest.raises(ValueError, match=message):
        size_lambda(rows, lam, target=target)


def test_a_relu_probe_with_no_positive_projection_says_the_relu_is_why():
    # the CPU pilot from recipe 8a (docs/grpo_sweep.md): with relu on, every benign QA search projected <= 0
    rows = [{**row, "safety/projection": "0.0"} for row in _rows([(0.0, 0.17)])]
    with pytest.raises(ValueError, match="with relu on, max\\(0, p\\) was 0 for every episode"):
        size_lambda(rows, 1.0, relu=True)
    # a ReLU probe whose episodes did project > 0 somewhere but never differed within a group: the general message
    rows = [{**row, "safety/projection": "0.2"} for row in _rows([(0.0, 0.17)])]
    with pytest.raises(ValueError, match="is the text before the first <search> the same"):
        size_lambda(rows, 1.0, relu=True)


def test_the_cli_reads_a_run_folder(tmp_path, capsys):
    from search_gym.cli import main

    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["global_step", "groups/penalty_std", "groups/task_reward_std"])
        writer.writeheader()
        writer.writerows(_rows([(0.004, 0.25), (0.006, 0.35)]))
    (tmp_path / "config.json").write_text(json.dumps({"penalty": {"lambda": 1.0, "searches": "first"}}))
    assert main(["train", "size-lambda", str(tmp_path), "--target", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "lambda = 15 (ratio 0.25)" in out and "lambda 12-30" in out  # 0.25 x 0.3 / 0.005; 0.2-0.5 x 60
    with pytest.raises(SystemExit, match="metrics.csv does not exist"):
        main(["train", "size-lambda", str(tmp_path / "nowhere")])
    # the run's penalty.relu reaches the sizing: a ReLU probe that projected nothing above 0 says so
    relu_run = tmp_path / "relu"
    relu_run.mkdir()
    with open(relu_run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["global_step", "groups/penalty_std", "groups/task_reward_std",
                                               "safety/projection"])
        writer.writeheader()
        writer.writerows({**row, "safety/projection": "0.0"} for row in _rows([(0.0, 0.25)]))
    (relu_run / "config.json").write_text(json.dumps({"penalty": {"lambda": 1.0, "relu": True}}))
    with pytest.raises(SystemExit, match="with relu on"):
        main(["train", "size-lambda", str(relu_run)])
