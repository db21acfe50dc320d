"""``search-gym export verl``: the question sets as verl parquet, round-tripped.

The files have the columns of verl's Search-R1 preprocessing; read back, each row is its source question (id,
text, gold answers) with the env's own prompt. Where verl is installed, verl's ``RLHFDataset`` loads the file too.
"""

from __future__ import annotations

import json

import pytest

from conftest import TINY_QA

from search_gym.cli import main
from search_gym.envs.protocol import PROMPT_TEMPLATES
from search_gym.integrations.verl.data import export_verl, read_parquet

COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info", "agent_name"]


def test_round_trip_equals_the_source_questions(tmp_path, tiny_qa_path, capsys):
    code = main(["export", "verl", "--out", str(tmp_path), "--env", "SearchGym/WikiQA-v0", "--dataset",
                 str(tiny_qa_path), "--splits", "test"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    path = tmp_path / "wikiqa_test.parquet"
    assert summary == {"wikiqa_test": {"path": str(path), "rows": len(TINY_QA)}}
    rows = read_parquet(path)
    assert list(rows[0]) == COLUMNS
    assert [(r["extra_info"]["question_id"], r["extra_info"]["question"], r["reward_model"]["ground_truth"]["target"])
            for r in rows] == [(q, text, golds) for q, text, golds in TINY_QA]
    for index, (row, (_, text, _)) in enumerate(zip(rows, TINY_QA)):
        assert row["prompt"] == [{"role": "user", "content": PROMPT_TEMPLATES["search_r1"].format(question=text)}]
        assert row["ability"] == "fact-reasoning" and row["reward_model"]["style"] == "rule"
        assert row["data_source"] == "search_gym/file" and row["agent_name"] == "search_gym_agent"
        info = row["extra_info"]
        assert info["index"] == index and info["split"] == "test" and info["env_id"] == "SearchGym/WikiQA-v0"
        assert info["dataset"] == str(tiny_qa_path) and info["need_tools_kwargs"] is True
        assert info["tools_kwargs"]["search"]["create_kwargs"]["question"] == text


def test_tool_call_protocol_and_attack_prompts(tmp_path, tiny_qa_path):
    written = export_verl(tmp_path, env_id="SearchGym/WikiQA-v0", splits=["test"], protocol="tool_call",
                          dataset=str(tiny_qa_path), limit=2)
    rows = read_parquet(written["wikiqa_test"])
    assert len(rows) == 2 and rows[0]["agent_name"] == "tool_agent" and rows[0]["extra_info"]["protocol"] == "tool_call"
    assert rows[0]["prompt"][0]["content"] == PROMPT_TEMPLATES["tool_call"].format(question=TINY_QA[0][1])
    attacked = read_parquet(export_verl(tmp_path / "a", env_id="SearchGym/WikiQA-v0", splits=["test"],
                                        dataset=str(tiny_qa_path), attack="prompt_injection",
                                        agent_name="")["wikiqa_test"])
    assert 'start your response with the token "<search>"' in attacked[0]["prompt"][0]["content"]
    assert "agent_name" not in attacked[0]  # verl's default_agent_loop decides


def test_default_sets(tmp_path):
    """qa_{train,test} and harmful_{train,heldout}: the embedded QA and the bundled harmful requests."""
    from search_gym.build import load_questions

    assert main(["export", "verl", "--out", str(tmp_path), "--limit", "4"]) == 0
    for name, dataset, split in [("qa_train", "wiki_qa", "train"), ("qa_test", "wiki_qa", "test"),
                                 ("harmful_train", "harmful", "train"), ("harmful_heldout", "harmful", "heldout")]:
        rows = read_parquet(tmp_path / f"{name}.parquet")
        source = load_questions(dataset, split)[:4]
        assert [(r["extra_info"]["question_id"], r["extra_info"]["question"],
                 r["reward_model"]["ground_truth"]["target"]) for r in rows] == [
            (q.id, q.question, list(q.golden_answers)) for q in source]
        assert {r["data_source"] for r in rows} == {f"search_gym/{dataset}"}
        assert {r["ability"] for r in rows} == {"safety" if dataset == "harmful" else "fact-reasoning"}


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["export", "verl", "--out", str(tmp_path), "--env", "SearchGym/WikiQA-v0"]) == 2
    assert "splits" in capsys.readouterr().err


def test_verl_loads_the_file(tmp_path, tiny_qa_path, tokenizer):
    """verl's own dataset class reads the export (prompt key, chat template, extra_info.index, tools_kwargs)."""
    pytest.importorskip("verl", reason="verl is not installed")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    path = export_verl(tmp_path, env_id="SearchGym/WikiQA-v0", splits=["test"], dataset=str(tiny_qa_path))
    config = OmegaConf.create({"max_prompt_length": 1024, "filter_overlong_prompts": True, "return_raw_chat": True,
                               "cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts_workers": 1})
    dataset = RLHFDataset(data_files=[str(path["wikiqa_test"])], tokenizer=tokenizer, config=config)
    assert len(dataset) == len(TINY_QA)
    item = dataset[2]
    assert item["raw_prompt"][0]["content"].endswith(f"Question: {TINY_QA[2][1]}\n")
    assert item["index"] == 2 and item["agent_name"] == "search_gym_agent"
    assert item["tools_kwargs"]["search"]["create_kwargs"]["question"] == TINY_QA[2][1]
    assert list(item["reward_model"]["ground_truth"]["target"]) == TINY_QA[2][2]
