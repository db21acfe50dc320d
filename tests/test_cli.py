"""Every subcommand end to end, as a user runs it (a subprocess on the bundled data with BM25, tiny models), and
the metrics the main command reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import WordOverlapRetriever, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``search-gym ...`` in a fresh process (same interpreter, the session's private cache)."""
    out = subprocess.run([sys.executable, "-m", "search_gym.cli", *args], capture_output=True, text=True,
                         cwd=cwd, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, f"search-gym {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm2_folder) -> Path:
    """A tiny random Llama with the bundled model's tokenizer, saved as a folder any subcommand can load."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = tiny_llama(tokenizer)
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_help_lists_every_subcommand_in_plain_text():
    out = cli("--help").stdout
    for name in ("setup", "demo", "eval", "info", "directions", "judges", "train"):
        assert name in out
    assert "``" not in out and ":class:" not in out
    for sub in (("train", "sft"), ("train", "grpo"), ("train", "ppo"), ("eval",), ("demo",), ("directions",)):
        assert "usage:" in cli(*sub, "--help").stdout


def test_info_and_setup_data():
    assert "environment ids" in cli("info").stdout
    assert "data ready" in cli("setup", "--index", "bm25", "--no-classifier").stdout


def test_demo_scripted_json_and_harmful_env(tmp_path):
    out_json = tmp_path / "demo.json"
    out = cli("demo", "--agent", "scripted", "-n", "6", "--num-envs", "4", "--retriever", "bm25", "--safety", "false",
              "--json", str(out_json))
    assert "EM" in out.stdout
    payload = json.loads(out_json.read_text())
    assert payload["summary"]["episodes"] == 6
    assert all(ep["turns"] in (1, 2, 3, 4) for ep in payload["episodes"])
    # --split is the QA id's default only: the harmful id keeps its held-out split (was a crash)
    out = cli("demo", "--env", "SearchGym/WikiHarmful-v0", "--agent", "scripted", "-n", "2", "--num-envs", "2",
              "--retriever", "bm25", "--safety", "false")
    assert "WikiHarmful heldout" in out.stdout


def test_eval_subcommand_with_a_config_file(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("agents: [scripted]\nprompt_sets: ['qa:test']\nattacks: [none, search]\nnum_prompts: 3\n"
                      "retriever: bm25\njudges: [refusal]\nsimilarity: false\n")
    out = cli("eval", "--config", str(config), "--out", str(tmp_path / "ev"), "--no-plots", "--no-progress",
              "--num-envs", "2")
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {c["attack"] for c in summary["cells"]} == {"none", "search"}
    assert all(c["episodes"] == 3 for c in summary["cells"])
    # the flat env keys of the version before the env section still load, with one line naming the new ones
    assert f"{config}: deprecated flat keys, now nested: retriever -> env.retriever, judges -> env.judges" in out.stderr
    saved = json.loads((tmp_path / "ev" / "config.json").read_text())
    assert (saved["config"]["env"]["retriever"], saved["cell_settings"]["retriever"]) == ("bm25", "bm25")


def test_eval_help_groups_the_env_section():
    out = cli("eval", "--help").stdout
    env = out[out.index("\nenv:\n"):]
    for flag in ("--env.max-turns", "--env.retriever", "--env.template", "--env.topk", "--env.judges",
                 "--env.corpus-path", "--env.encoder", "--env.index-type", "--env.parse-mode"):
        assert f"{flag} " in env
    for flag in ("--max-turns", "--retriever", "--judges", "--topk"):  # the old flat flags parse, unlisted
        assert f" {flag} " not in out and f"[{flag} " not in out
    for flag in ("--env.id", "--env.dataset", "--env.split", "--env.attack", "--env.safety"):  # set per cell
        assert flag not in out


def test_train_subcommands_on_a_tiny_model(tmp_path, tiny_model_dir):
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--progress", "false", "--tensorboard", "false"]
    rl = ["--env.retriever", "bm25", "--max-steps", "1", "--questions-per-step", "2", "--env.max-turns", "2",
          "--max-turn-tokens", "8", "--env.safety", "false"]
    cli("train", "grpo", *common, *rl, "--group-size", "2", "--beta", "0", "--output-dir", str(tmp_path / "grpo"))
    # the flat flags these fields had before the env section still work, with one line naming the new ones
    flat = ["--retriever", "bm25", "--max-steps", "1", "--questions-per-step", "2", "--max-turns", "2",
            "--max-turn-tokens", "8", "--safety", "false"]
    ppo = cli("train", "ppo", *common, *flat, "--group-size", "1", "--kl-coef", "0", "--output-dir",
              str(tmp_path / "ppo"))
    assert ("deprecated flat flags, now nested: --retriever -> --env.retriever, --max-turns -> --env.max-turns, "
            "--safety -> --env.safety") in ppo.stderr
    cli("train", "sft", *common, "--retriever", "bm25", "--max-steps", "2", "--batch-size", "2", "--qa-limit", "6",
        "--harmful-limit", "3", "--benign-limit", "2", "--output-dir", str(tmp_path / "sft"))
    for run in ("grpo", "ppo", "sft"):
        assert (tmp_path / run / "metrics.csv").exists()
        assert any((tmp_path / run).glob("checkpoint-*/trainer_state.pt"))
    assert (tmp_path / "sft" / "final" / "config.json").exists()
    for run in ("grpo", "ppo"):  # the run's config.json, nested as the flags
        saved = json.loads((tmp_path / run / "config.json").read_text())
        assert (saved["env"]["retriever"], saved["env"]["max_turns"], saved["env"]["safety"]) == ("bm25", 2, False)


def test_examples_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--episodes", "1", "--retriever",
                          "bm25"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = tmp_path / "m.csv"
    metrics.write_text("global_step,charts/em\n1,0.5\n2,0.75\n")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "plot_metrics.py"), str(metrics), "--metrics",
                          "charts/em", "--out", str(tmp_path / "p.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and (tmp_path / "p.png").exists(), out.stderr[-2000:]


class _AnswersFrance:
    """Answers the France question right away; writes nothing usable for the others (they run out of turns)."""

    def seed(self, seed):
        pass

    def act_batch(self, observations):
        from search_gym.agents import AgentStep, question_of

        return [AgentStep("<answer> Paris </answer>" if "France" in question_of(o) else "no idea")
                for o in observations]


def test_em_counts_unanswered_as_wrong_whatever_the_order(tiny_qa_path, tiny_corpus_path):
    from search_gym.envs.vector import SearchVectorEnv
    from search_gym.experiments.demo import run_episodes

    ems = []
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 0, 3, 4, 2]):
        venv = SearchVectorEnv(num_envs=2, dataset=str(tiny_qa_path), max_turns=2,
                               retriever=WordOverlapRetriever(tiny_corpus_path))
        summary = run_episodes(venv, _AnswersFrance(), order, progress=False)
        assert all(e.turns <= 2 for e in summary.episodes)
        ems.append(summary.exact_match)
    assert ems == [0.2, 0.2, 0.2]  # 1 of 5: unanswered episodes are wrong, not left out


def test_vector_env_seeds_and_stable_info_dtypes(tiny_qa_path, tiny_corpus_path):
    from search_gym.envs.vector import SearchVectorEnv

    venv = SearchVectorEnv(num_envs=3, dataset=str(tiny_qa_path), retriever=WordOverlapRetriever(tiny_corpus_path))
    venv.reset(seed=[3, 4, 5])
    for first in ("no idea", "<answer> Paris </answer>"):  # which sub-env reports first must not matter
        venv.reset(seed=[3, 4, 5], options={"per_env": [{"question_id": "q0"}] * 3})
        _, _, _, _, infos = venv.step([first, "<answer> Paris </answer>", "still thinking"])
        assert infos["correct"].dtype == bool and infos["answered"].dtype == bool
        assert infos["score"].dtype == np.float64
        assert list(infos["answered"]) == [first != "no idea", True, False]
        assert np.isnan(infos["score"][2])
    with pytest.raises(ValueError, match="seed needs 3"):
        venv.reset(seed=[1, 2])


def test_imports_run_one_way():
    """data <- retrieval <- safety <- envs <- agents <- trainers <- integrations: no module imports a layer above
    its own."""
    import ast

    layers = ["data", "retrieval", "safety", "envs", "agents", "trainers", "integrations"]
    roots = {"data": ROOT / "search_gym" / "data", "retrieval": ROOT / "search_gym" / "retrieval",
             "safety": ROOT / "search_gym" / "safety", "envs": ROOT / "search_gym" / "envs",
             "agents": ROOT / "agents", "trainers": ROOT / "trainers",
             "integrations": ROOT / "search_gym" / "integrations"}
    offenders = []
    for layer, folder in roots.items():
        above = layers[layers.index(layer) + 1:]
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    if any(name == f"search_gym.{up}" or name.startswith(f"search_gym.{up}.") for up in above):
                        offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_lazy_agents_are_listed():
    import search_gym.agents as agents

    assert {"HFAgent", "VLLMAgent", "OpenAIAgent"} <= set(dir(agents))


def test_directions_subcommands_on_a_tiny_model(tmp_path, tiny_model_dir):
    run = tmp_path / "dirs"
    cli("directions", "extract", "--dir", str(run), "--model", str(tiny_model_dir), "--device", "cpu",
        "--n-train", "6", "--n-heldout", "4", "--batch-size", "8")
    cli("directions", "select", "--dir", str(run))
    direction = next(run.glob("harmfulness*.safetensors"))
    cli("directions", "steer", "--dir", str(run), "--model", str(tiny_model_dir), "--device", "cpu",
        "--n-prompts", "2", "--max-new-tokens", "4", "--coeffs=-1,0,1", "--out", str(tmp_path / "steer"))
    cli("directions", "drift", "--direction", str(direction), "--checkpoint", f"0={tiny_model_dir}",
        "--checkpoint", f"1={tiny_model_dir}", "--out", str(tmp_path / "drift"), "--n-prompts", "4",
        "--device", "cpu")
    assert any((tmp_path / "drift").iterdir())


def test_misalignment_example_writes_both_curves(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "misalignment_curves.py"), "--out", str(tmp_path),
                          "--episodes", "4", "--rounds", "6"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "misalignment_violation_rate.png").exists()
    assert (tmp_path / "misalignment_diffusion.png").exists()
