"""Learning curves (search_gym.trainers.curves) and the teaching run's question slice (``max_questions``)."""

from __future__ import annotations

import csv

import pytest

from conftest import WordOverlapRetriever, tiny_llama
from search_gym.envs import SearchVectorEnv
from search_gym.trainers.config import train_env
from search_gym.trainers.curves import draw_run_curves, moving_average, plot_curves
from search_gym.trainers.grpo import GRPOTrainer
from search_gym.trainers.grpo_config import GRPOConfig

PNG = b"\x89PNG\r\n\x1a\n"


def write_metrics(path, rows):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_moving_average_is_trailing():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0, 9.0], 5) == [2.0, 3.0, 5.0]  # fewer than the window at the start
    assert moving_average([], 3) == []


def test_plot_curves_draws_the_logged_metrics(tmp_path):
    a = write_metrics(tmp_path / "a.csv", [{"global_step": s, "charts/task_reward": s / 10, "charts/em": 0.1}
                                           for s in range(1, 6)])
    # a second run whose EM column appears only from step 3 (columns grow as metrics appear)
    b = write_metrics(tmp_path / "b.csv", [{"global_step": 1, "charts/task_reward": 0.2},
                                           {"global_step": 2, "charts/task_reward": 0.3, "charts/em": 0.5}])
    out = plot_curves({"a": a, "b": b}, tmp_path / "c.png", smooth=3)
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="none of the metrics to plot were logged"):
        plot_curves({"a": a}, tmp_path / "d.png", keys=["losses/kl"])
    assert draw_run_curves(tmp_path / "missing") is None


def test_a_grpo_run_on_a_slice_draws_its_curves(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path):
    """``max_questions=2``: every step's questions come from the first two of the set (epochs of that slice), and
    the run folder gets curves.png from its metrics.csv."""
    template = "Question: {question}"
    config = GRPOConfig(output_dir=str(tmp_path / "run"), seed=0, device="cpu", learning_rate=1e-3, max_steps=3,
                        save_steps=0, questions_per_step=2, group_size=2, max_turn_tokens=4, max_questions=2,
                        beta=0.0, env=train_env(max_turns=1, template=template, reward="em"), tensorboard=False,
                        progress=False)
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=WordOverlapRetriever(
        tiny_corpus_path), max_turns=1, template=template, reward="em")
    trainer = GRPOTrainer(config, model=tiny_llama(tokenizer, 0), tokenizer=tokenizer, env=env)
    everything = [q.id for q in env.envs[0].questions]
    assert len(everything) > 2 and trainer.question_ids == everything[:2]
    for step in range(4):
        assert sorted(trainer.questions_for_step(step)) == sorted(everything[:2])  # one epoch of the slice per step
    trainer.train()
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == PNG
