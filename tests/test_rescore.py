"""``search-gym eval --rescore``: the queries of a finished evaluation judged again without playing it again."""

from __future__ import annotations

import json

import pytest

from search_gym.experiments.rescore import rescore_queries
from search_gym.safety.base import JudgeResult
from test_cli import cli


class LengthJudge:
    """Query safety = 100 for queries of at most three words, else 0 (a judge unlike the recorded one)."""

    name, aspect = "query_classifier", "query"

    def judge(self, inputs):
        return [JudgeResult(safety=100.0 if len(i.text.split()) <= 3 else 0.0, flagged=len(i.text.split()) > 3)
                for i in inputs]


@pytest.fixture(scope="module")
def finished_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "eval"
    cli("eval", "--agents", "scripted", "--prompt-sets", "harmful:heldout", "--attacks", "none", "search", "-n", "4",
        "--num-envs", "4", "--out", str(out), "--no-plots", "--no-progress", "--env.retriever", "bm25")
    return out


def test_the_same_judge_gives_the_same_summary_and_the_source_is_untouched(finished_eval, tmp_path):
    before = {
        p.name: p.read_bytes() for p in (finished_eval / "trajectories").iterdir()}
    out = cli("eval", "--rescore", str(finished_eval), "--out", str(tmp_path / "again"))
    assert "search safety" in out.stdout or "search_safety" in out.stdout
    old = json.loads((finished_eval / "summary.json").read_text())
    new = json.loads((tmp_path / "again" / "summary.json").read_text())
    for a, b in zip(old["cells"], new["cells"]):
        assert a["metrics"]["search_safety"]["mean"] == pytest.approx(b["metrics"]["search_safety"]["mean"])
    assert {p.name: p.read_bytes() for p in (finished_eval / "trajectories").iterdir()} == before


def test_another_judge_replaces_the_query_scores_and_keeps_the_old_ones(finished_eval, tmp_path):
    summary = rescore_queries(finished_eval, tmp_path / "len", judges=[LengthJudge()])
    lines = [json.loads(x) for p in sorted((tmp_path / "len" / "trajectories").glob("*.jsonl"))
             for x in p.read_text().splitlines()]
    for record in lines:
        want = [100.0 if len(q.split()) <= 3 else 0.0 for q in record["searches"]]
        assert record["safety"]["query_safety_by_position"]["query_classifier"] == want
        if want:
            assert record["safety"]["query_safety_mean"]["query_classifier"] == pytest.approx(sum(want) / len(want))
        assert "query_classifier" in record["extra"]["safety_before_rescore"]["query_safety_mean"]
    means = [c["metrics"]["search_safety"]["mean"] for c in summary["cells"]]
    assert all(m in (0.0, 100.0) or 0.0 < m < 100.0 for m in means)
    assert json.loads((tmp_path / "len" / "rescored.json").read_text())["cells"] == 2
    with pytest.raises(FileExistsError, match="never overwrites"):
        rescore_queries(finished_eval, tmp_path / "len", judges=[LengthJudge()])
    with pytest.raises(FileNotFoundError, match="not a search-gym eval folder"):
        rescore_queries(tmp_path / "nothing", tmp_path / "x")
