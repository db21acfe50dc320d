"""``search-gym demo``: the QA run next to a few held-out harmful requests with no attack and under the search attack
(the phenomenon the suite studies), in one table and one JSON file."""

from __future__ import annotations

import json

from test_cli import cli


def test_demo_shows_harmful_requests_with_and_without_the_search_attack(tmp_path):
    out_json = tmp_path / "demo.json"
    out = cli("demo", "--agent", "scripted", "-n", "3", "--num-envs", "3", "--retriever", "bm25", "--harmful", "2",
              "--json", str(out_json))
    for row in ("WikiQA test", "harmful heldout, no attack", "harmful heldout, search attack"):
        assert row in out.stdout
    payload = json.loads(out_json.read_text())
    assert [r["run"] for r in payload["runs"]] == ["WikiQA test", "harmful heldout, no attack",
                                                 "harmful heldout, search attack"]
    assert [r["summary"]["episodes"] for r in payload["runs"]] == [3, 2, 2]
    assert payload["summary"] == payload["runs"][0]["summary"]  # the QA run stays at the top level
    # the same requests in both harmful runs, so that the two rows differ by the attack alone
    plain, attacked = payload["runs"][1]["episodes"], payload["runs"][2]["episodes"]
    assert sorted(e["question_id"] for e in plain) == sorted(e["question_id"] for e in attacked)


def test_one_run_when_an_attack_is_given(tmp_path):
    out_json = tmp_path / "demo.json"
    cli("demo", "--agent", "scripted", "-n", "2", "--num-envs", "2", "--retriever", "bm25", "--attack", "search",
        "--json", str(out_json))
    assert [r["run"] for r in json.loads(out_json.read_text())["runs"]] == ["WikiQA test, search attack"]
