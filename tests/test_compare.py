"""Paired comparison of two finished evaluations (search_gym.experiments.compare, `search-gym eval --compare`)."""

from __future__ import annotations

import json

import pytest

from search_gym.experiments.compare import compare_evals, comparison_markdown
from search_gym.experiments.evaluation import Cell


def record(qid, *, correct, refused, searches=1):
    return {"question_id": qid, "golden_answers": ["x"], "correct": correct, "num_searches": searches,
            "answer": None if refused else "x", "infos": [{"safety": {"refused": {"refusal_substring": refused}}}],
            "safety": {"refused": {"refusal_substring": refused}, "query_safety_mean": {"query_classifier": 50.0}}}


def write_eval(root, agent, rows, prompt_set="qa:dev", attack="none"):
    cell = Cell(agent, prompt_set, attack)
    folder = root / "trajectories"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{cell.slug}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{cell.slug}.meta.json").write_text(json.dumps({"cell": cell.__dict__}))
    return root


def test_paired_differences_by_question(tmp_path):
    # before: q0..q3 correct on q0, q1; after: correct on q0..q2, q3 refused; q4 only after (unpaired)
    before = write_eval(tmp_path / "a", "sft", [record(f"q{i}", correct=i < 2, refused=False) for i in range(4)])
    rows = [record(f"q{i}", correct=i < 3, refused=i == 3) for i in range(3, -1, -1)]  # another order
    after = write_eval(tmp_path / "b", "grpo", rows + [record("q4", correct=True, refused=False)])
    result = compare_evals(before, after, n_boot=200)
    (row,) = result["cells"]
    assert row["agents"] == ["sft", "grpo"] and row["paired"] == 4 and row["only_after"] == 1
    em = row["metrics"]["em"]
    assert em["before"] == 0.5 and em["after"] == 0.75 and em["mean"] == pytest.approx(0.25) and em["n"] == 4
    assert em["lo"] <= 0.25 <= em["hi"]
    assert row["metrics"]["refusal"]["mean"] == pytest.approx(25.0)  # one of the four pairs went 0 -> 100
    text = comparison_markdown(result)
    assert "| qa:dev | none | EM | 4 | 0.500 | 0.750 | 0.250 [" in text and "1 only after (left out)" in text
    # one pair of four moved by 1: sd 0.5, so (1.96 + 0.84) x 0.5 / 2 = 0.700 is the smallest difference detectable
    assert em["mde"] == pytest.approx(0.7004, abs=1e-3) and "] | 0.700 |" in text


def test_compare_refuses_what_it_cannot_pair(tmp_path):
    before = write_eval(tmp_path / "a", "sft", [record("q0", correct=True, refused=False)])
    other = write_eval(tmp_path / "b", "sft", [record("q0", correct=True, refused=False)], attack="search")
    with pytest.raises(ValueError, match="share no \\(prompt set, attack\\) cell"):
        compare_evals(before, other)
    with pytest.raises(FileNotFoundError, match="is not a finished evaluation"):
        compare_evals(before, tmp_path / "missing")
    write_eval(tmp_path / "a", "grpo", [record("q0", correct=True, refused=False)])
    with pytest.raises(ValueError, match="for two agents"):
        compare_evals(before, other)


def test_file_prompt_sets_pair_by_content_not_path(tmp_path):
    """The same dev file rebuilt in two folders pairs; a different file of the same name does not."""
    rows = [record(f"q{i}", correct=i < 2, refused=False) for i in range(4)]
    for folder in ("one", "two", "three"):
        (tmp_path / folder).mkdir()
    (tmp_path / "one" / "qa.jsonl").write_text('{"question": "a"}\n')
    (tmp_path / "two" / "qa.jsonl").write_text('{"question": "a"}\n')
    (tmp_path / "three" / "qa.jsonl").write_text('{"question": "b"}\n')
    before = write_eval(tmp_path / "a", "r1", rows, prompt_set=f"{tmp_path}/one/qa.jsonl:dev")
    after = write_eval(tmp_path / "b", "r2", rows, prompt_set=f"{tmp_path}/two/qa.jsonl:dev")
    (row,) = compare_evals(before, after, n_boot=50)["cells"]
    assert row["paired"] == 4 and row["prompt_set"] == f"{tmp_path}/one/qa.jsonl:dev"
    other = write_eval(tmp_path / "c", "r3", rows, prompt_set=f"{tmp_path}/three/qa.jsonl:dev")
    with pytest.raises(ValueError, match="share no"):
        compare_evals(before, other)
    with pytest.raises(ValueError, match="share no") as refused:  # both files present: no hint about paths
        compare_evals(before, other)
    assert "keyed by their path" not in str(refused.value)
    (tmp_path / "two" / "qa.jsonl").unlink()  # a copy not on this machine keys by path: the error says which
    with pytest.raises(ValueError, match=f"keyed by their path .*{tmp_path}/two/qa.jsonl:dev"):
        compare_evals(before, after)


def test_an_episode_export_pairs_like_its_folder_after_the_prompt_file_is_gone(tmp_path):
    """`--export-episodes` keeps what pairing needs: comparing against the export gives the folder's result, also
    once the dev file (and the trajectories) are deleted; the export is byte-stable and a foreign file is refused."""
    from search_gym.experiments.compare import export_episodes

    for dev in ("dev", "dev2"):  # one file rebuilt byte for byte in two run folders, as on two machines
        (tmp_path / dev).mkdir()
        (tmp_path / dev / "qa.jsonl").write_text('{"question": "a"}\n')
    prompt_set = f"{tmp_path}/dev/qa.jsonl:dev"
    before = write_eval(tmp_path / "a", "r1", [record(f"q{i}", correct=i < 2, refused=False) for i in range(4)],
                        prompt_set=prompt_set)
    after = write_eval(tmp_path / "b", "r2", [record(f"q{i}", correct=i < 3, refused=i == 3) for i in range(4)],
                       prompt_set=f"{tmp_path}/dev2/qa.jsonl:dev")
    folders = compare_evals(before, after, n_boot=200)
    assert export_episodes(before, tmp_path / "a.jsonl.gz") == 4
    first = (tmp_path / "a.jsonl.gz").read_bytes()
    assert export_episodes(before, tmp_path / "a.jsonl.gz") == 4 and (tmp_path / "a.jsonl.gz").read_bytes() == first
    export_episodes(after, tmp_path / "b.jsonl")  # plain JSON lines without .gz
    (tmp_path / "dev" / "qa.jsonl").unlink()
    (tmp_path / "dev2" / "qa.jsonl").unlink()  # keyed by path now, the two would not pair
    for path in (before / "trajectories", after / "trajectories"):
        for f in path.iterdir():
            f.unlink()
    exported = compare_evals(tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl", n_boot=200)
    (a,), (b,) = folders["cells"], exported["cells"]
    assert b["paired"] == 4 and b["agents"] == ["r1", "r2"] and b["prompt_set"] == prompt_set
    for m in ("em", "refusal", "searches"):
        assert b["metrics"][m] == a["metrics"][m]
    (tmp_path / "other.jsonl").write_text('{"question_id": "q0"}\n')
    with pytest.raises(ValueError, match="is not an episode export"):
        compare_evals(tmp_path / "other.jsonl", tmp_path / "b.jsonl")
