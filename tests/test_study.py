"""``search-gym study``: stage order, resuming (finished stages skipped), the report's table and plots.

Stages are replaced by fakes that write what the real ones write (the trainers, evaluation and direction toolkit
are tested on their own); the report reads real-format eval summaries, metrics.csv and drift.jsonl files.
"""

from __future__ import annotations

import csv
import json

import pytest

from search_gym.experiments.study import STAGES, Study, StudyConfig, study_table


def _metric(mean, n=10):
    return {"mean": mean, "lo": mean - 1, "hi": mean + 1, "n": n}


class FakeStudy(Study):
    """Each stage writes its output the way the real stage does; ``calls`` records what ran."""

    calls: list[str]
    fail_at: str | None = None

    def _write_eval(self, stage: str, safety: float) -> None:
        cells = []
        for prompt_set in (self.config.harmful_set, self.config.qa_set):
            for attack in self.config.attacks:
                metrics = {"search_safety": _metric(safety), "refusal": _metric(50.0), "searches": _metric(1.0),
                           "em": _metric(0.4) if prompt_set == self.config.qa_set else {"mean": None, "n": 0}}
                cells.append({"prompt_set": prompt_set, "attack": attack, "episodes": 10, "metrics": metrics})
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        (self.root / stage / "summary.json").write_text(json.dumps({"cells": cells}))

    def _record(self, stage):
        self.calls.append(stage)
        if stage == self.fail_at:
            raise KeyboardInterrupt(stage)

    def stage_sft(self):
        self._record("sft")
        (self.final("sft")).mkdir(parents=True)
        (self.final("sft") / "config.json").write_text("{}")

    def stage_directions(self):
        self._record("directions")
        (self.root / "directions").mkdir(parents=True)
        (self.root / "directions" / "layer_scores.json").write_text("{}")
        self.direction_path.write_text("x")

    def _train(self, run, penalty):
        folder = self.root / run
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["global_step", "charts/episodic_return", "charts/em", "safety/search_safety", "safety/projection"])
            for step in (1, 2, 3):
                w.writerow([step, 0.1 * step, 0.1 * step, 90 - step * (1 - penalty), 0.2 * step * (1 - penalty)])
        with open(folder / "drift.jsonl", "w") as f:
            for step in (0, 2):
                f.write(json.dumps({"step": step, "layer": 3, "mean": 0.1 * step, "harmless_mean": -0.1}) + "\n")
        (folder / "final").mkdir()
        (folder / "final" / "config.json").write_text("{}")
        (folder / "config.json").write_text(json.dumps({"penalty_lambda": penalty}))

    def stage_grpo(self):
        self._record("grpo")
        self._train("grpo", 0.0)

    def stage_grpo_penalty(self):
        self._record("grpo_penalty")
        self._train("grpo_penalty", self.config.penalty_lambda)

    def stage_eval_sft(self):
        self._record("eval_sft")
        self._write_eval("eval_sft", 95.0)

    def stage_eval_grpo(self):
        self._record("eval_grpo")
        self._write_eval("eval_grpo", 60.0)

    def stage_eval_grpo_penalty(self):
        self._record("eval_grpo_penalty")
        self._write_eval("eval_grpo_penalty", 85.0)


def make(tmp_path, **kw) -> FakeStudy:
    study = FakeStudy(StudyConfig(output_dir=str(tmp_path / "study"), progress=False, **kw))
    study.calls = []
    return study


def test_stages_run_in_order_and_the_report_is_written(tmp_path):
    study = make(tmp_path)
    summary = study.run()
    assert study.calls == [s for s in STAGES if s != "report"]
    assert set(summary["models"]) == {"sft", "grpo", "grpo_penalty"}
    table = (study.root / "study.md").read_text()
    # 3 models x 2 prompt sets x 3 attacks rows, each metric with its interval; EM only on the QA rows
    rows = [line for line in table.splitlines() if line.startswith("| sft") or line.startswith("| grpo")]
    assert len(rows) == 18
    assert "| grpo | harmful:heldout | search | 10 | 60.0 [59.0, 61.0] |" in table
    assert all(row.rstrip(" |").endswith("–") for row in rows if "harmful:heldout" in row)
    for png in ("curves.png", "drift.png"):
        assert (study.root / png).stat().st_size > 1000
    assert json.loads((study.root / "study.json").read_text())["training"]["grpo_penalty"]["penalty_lambda"] == 0.5
    # what stands behind the numbers heads the report
    assert "- `grpo_penalty`:" in table and "penalty lambda 0.5" in table and "up to 660 prompts per cell" in table


def test_a_killed_study_resumes_at_the_unfinished_stage(tmp_path):
    study = make(tmp_path)
    study.fail_at = "grpo"
    with pytest.raises(KeyboardInterrupt, match="^grpo$"):
        study.run()
    assert study.calls == ["sft", "directions", "eval_sft", "grpo"]
    again = make(tmp_path)
    again.run()
    # grpo had not written final/ when it was killed, so it runs again (resuming from its own checkpoints)
    assert again.calls == ["grpo", "eval_grpo", "grpo_penalty", "eval_grpo_penalty"]
    third = make(tmp_path)
    third.run()
    assert third.calls == []


def test_an_incomplete_eval_is_not_skipped(tmp_path):
    study = make(tmp_path)
    study.run()
    summary = json.loads((study.root / "eval_grpo" / "summary.json").read_text())
    summary["cells"] = summary["cells"][:-1]  # one cell missing (killed between cells)
    (study.root / "eval_grpo" / "summary.json").write_text(json.dumps(summary))
    again = make(tmp_path)
    again.run()
    assert again.calls == ["eval_grpo"]


def test_without_sft_the_model_is_the_aligned_start(tmp_path):
    study = make(tmp_path, sft_config="", model="some/aligned-model")
    study.run()
    assert "sft" not in study.calls and study.aligned == "some/aligned-model"


def test_unknown_stage_and_cli(tmp_path):
    with pytest.raises(ValueError, match="unknown stages"):
        Study(StudyConfig(stages=("sft", "rlhf")))
    from search_gym.cli import build_parser

    args = build_parser().parse_args(["study", "--output-dir", str(tmp_path), "--penalty-lambda", "0.2",
                                      "--attacks", "none", "search", "--stages", "report"])
    from search_gym.trainers.config import build_config

    config = build_config(StudyConfig, args, None)
    assert config.penalty_lambda == 0.2 and config.attacks == ("none", "search") and config.stages == ("report",)
    assert study_table({"models": {}}).count("\n") == 1


@pytest.mark.parametrize("override, expected", [(0, 200), (7, 7)])
def test_grpo_runs_get_the_study_settings(tmp_path, monkeypatch, override, expected):
    """Both GRPO runs train the aligned model from the shared GRPO config, with the study's seed, penalty and (when
    given) step count."""
    import search_gym.trainers.grpo as grpo

    seen = []

    class Recorder:
        def __init__(self, config):
            seen.append(config)

        def train(self):
            return []

        def save_final(self):
            return None

    monkeypatch.setattr(grpo, "GRPOTrainer", Recorder)
    (tmp_path / "grpo.yaml").write_text("max_steps: 200\nquestions_per_step: 4\ngroup_size: 2\n")
    study = Study(StudyConfig(output_dir=str(tmp_path / "study"), grpo_config=str(tmp_path / "grpo.yaml"), seed=3,
                              grpo_max_steps=override, progress=False))
    study.stage_grpo_penalty()
    (config,) = seen
    assert config.max_steps == expected and config.questions_per_step == 4 and config.seed == 3
    assert config.model == str(study.final("sft")) and config.output_dir == str(study.root / "grpo_penalty")
    assert config.penalty.lambda_ == study.config.penalty_lambda and config.penalty.direction == str(study.direction_path)


def test_directions_stage_calls_the_direction_functions(tmp_path, monkeypatch):
    """The directions stage calls ``extract`` and ``select`` as Python functions: the aligned model, the study's seed
    and device, and ``direction_args`` as keywords (the command line's defaults for the rest)."""
    import search_gym.experiments.direction_pipeline as directions

    seen = []
    monkeypatch.setattr(directions, "_cmd_extract", lambda args: seen.append(("extract", args)))
    monkeypatch.setattr(directions, "_cmd_select", lambda args: seen.append(("select", args)))
    study = Study(StudyConfig(output_dir=str(tmp_path / "study"), sft_config="", model="some/model", seed=5,
                              device="cpu", direction="harmfulness_qa", direction_args="--n-train all --no-refusal"))
    study.stage_directions()
    (_, extract), (_, select) = seen
    assert [name for name, _ in seen] == ["extract", "select"]
    assert (extract.dir, extract.model, extract.seed, extract.device) == (str(tmp_path / "study" / "directions"),
                                                                          "some/model", 5, "cpu")
    assert extract.n_train is None and extract.refusal is False and extract.n_heldout == 64
    assert select.dir == extract.dir and select.direction == "harmfulness_qa"
    with pytest.raises(TypeError, match="unknown options"):
        directions.extract(tmp_path, no_such_flag=1)


@pytest.mark.parametrize("agent, share, expected", [("vllm", 0.15, {"llm_kwargs": {"gpu_memory_utilization": 0.15}}),
                                                    ("vllm", 0.0, {}), ("hf", 0.15, {})])
def test_evaluations_get_the_engine_share(tmp_path, monkeypatch, agent, share, expected):
    """eval_gpu_memory_utilization reaches the vLLM agent (so an evaluation can share the GPU with training); an HF
    agent, or share 0 (vLLM's default), passes nothing."""
    import search_gym.experiments.evaluation as evaluation

    seen = []
    monkeypatch.setattr(evaluation, "run_eval", seen.append)
    study = Study(StudyConfig(output_dir=str(tmp_path / "study"), eval_agent=agent, eval_gpu_memory_utilization=share,
                              progress=False))
    study.stage_eval_sft()
    (config,) = seen
    assert config.agent_kwargs == expected and config.agents == (f"{agent}:{study.aligned}",)


def test_one_index_for_training_and_evaluation(tmp_path, monkeypatch):
    """The evaluations play with the index the GRPO runs train with: grpo_config's env.retriever by default, dense
    when it sets none, the study's --retriever over both."""
    import search_gym.experiments.evaluation as evaluation

    seen = []
    monkeypatch.setattr(evaluation, "run_eval", seen.append)
    (tmp_path / "grpo.yaml").write_text("env:\n  retriever: bm25\n  max_turns: 2\n")
    (tmp_path / "plain.yaml").write_text("env:\n  max_turns: 2\n")
    for grpo_config, retriever, expected in [("grpo.yaml", None, "bm25"), ("plain.yaml", None, "dense"),
                                             ("grpo.yaml", "hybrid", "hybrid")]:
        study = Study(StudyConfig(output_dir=str(tmp_path / "study"), grpo_config=str(tmp_path / grpo_config),
                                  retriever=retriever, progress=False))
        study.stage_eval_sft()
        assert study.index == expected and seen[-1].env.retriever == expected
    import search_gym.trainers.grpo as grpo

    class Recorder:
        def __init__(self, config):
            seen.append(config)

        def train(self):
            pass

        def save_final(self):
            pass

    monkeypatch.setattr(grpo, "GRPOTrainer", Recorder)
    study.stage_grpo()  # the last study: grpo.yaml's bm25 overridden by --retriever hybrid, its max_turns kept
    assert seen[-1].env.retriever == "hybrid" and seen[-1].env.max_turns == 2


@pytest.mark.slow
def test_the_real_stages_run_end_to_end_on_the_bundled_model(tmp_path):
    """Every real stage at toy sizes on the CPU (about 10 minutes on 2 cores): SFT, directions, the evaluations,
    both GRPO runs with the penalty and drift, and the report. Run on purpose: ``pytest -m slow tests/test_study.py``.
    The numbers mean nothing at these sizes; the point is that the stages fit together."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "sft.yaml").write_text("model: smollm2\nmax_steps: 3\nbatch_size: 4\nsave_steps: 2\nqa_limit: 8\n"
                                       "harmful_limit: 8\nbenign_limit: 4\nbenign_repeat: 1\ninstruct_limit: -1\n"
                                       "pair_harmful_limit: -1\n")
    grpo = (root / "examples/configs/grpo_study.yaml").read_text()
    for key, value in (("max_steps", 2), ("questions_per_step", 2), ("group_size", 2), ("max_turn_tokens", 16),
                       ("save_steps", 1), ("drift_every", 1), ("drift_prompts", 4)):
        grpo = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line for line in grpo.splitlines())
    grpo = grpo.replace("generation_backend: vllm", "generation_backend: hf")
    (tmp_path / "grpo.yaml").write_text(grpo)
    config = StudyConfig(output_dir=str(tmp_path / "study"), sft_config=str(tmp_path / "sft.yaml"),
                         grpo_config=str(tmp_path / "grpo.yaml"),
                         direction_args="--n-train 8 --n-val 8 --n-heldout 8 --no-refusal", attacks=("none", "search"),
                         eval_prompts=4, eval_num_envs=4, eval_max_new_tokens=16, eval_agent="hf", device="cpu",
                         progress=False)
    summary = Study(config).run()
    assert set(summary["models"]) == {"sft", "grpo", "grpo_penalty"}
    assert all(len(cells) == 4 for cells in summary["models"].values())
    for name in ("study.md", "study.json", "curves.png", "drift.png"):
        assert (tmp_path / "study" / name).stat().st_size > 0
    drift = (tmp_path / "study" / "grpo_penalty" / "drift.jsonl").read_text().splitlines()
    assert len(drift) >= 2  # a drift record per saved checkpoint
