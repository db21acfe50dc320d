"""benchmarks/passage_choice_fit.py: which passage the student names in the grounded thought ("Doc 2 (Title) ..."),
read at the digit token of SFT rows; checked on rows built by the grounded teacher and against a full forward."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import WordOverlapRetriever, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("passage_choice_fit", ROOT / "benchmarks" / "passage_choice_fit.py")
fit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fit)


def test_the_digit_token_is_the_teachers_passage_and_scores_equal_a_full_forward(tokenizer, tiny_qa_path,
                                                                                 tiny_corpus_path):
    from search_gym.agents.baselines import _information_docs
    from search_gym.agents.teachers import answer_passage
    from search_gym.trainers.rollout import decode
    from search_gym.trainers.sft import build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    config = SFTConfig(teacher="aligned", grounded_thought=True, progress=False)
    episodes = build_sft_episodes(config, tokenizer, num_envs=4, progress=False,
                                  datasets={"qa": (str(tiny_qa_path), "train"), "harmful": None, "benign": None},
                                  env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)})
    rows = [dataclasses.asdict(ep) for ep in episodes]
    hits = [fit.passage_token(row, tokenizer) for row in rows]
    assert rows and all(hit is not None for hit in hits)
    for row, (k, taught) in zip(rows, hits):
        text = decode(tokenizer, row["response_ids"])
        # the taught digit is the passage holding the gold answer, and the token before it ends "Doc "
        assert taught == answer_passage(row["golden_answers"], _information_docs(text)) + 1
        assert decode(tokenizer, row["response_ids"][:k]).endswith("Doc ")
    one_turn = {**rows[0], "spans": [(0, len(rows[0]["response_ids"]), "policy")]}
    assert fit.passage_token(one_turn, tokenizer) is None and fit.passage_token({**rows[0], "golden_answers": []},
                                                                                tokenizer) is None
    model = tiny_llama(tokenizer, seed=2).eval()
    scored = fit.score(model, tokenizer, [(row, row["prompt_ids"] + row["response_ids"][:k], taught)
                                          for row, (k, taught) in zip(rows[:2], hits[:2])], "cpu")
    for row, (k, taught), s in zip(rows, hits, scored):
        ids = torch.tensor([row["prompt_ids"] + row["response_ids"][:k]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        digits = [float(logp[tokenizer.convert_tokens_to_ids(d)]) for d in fit.DIGITS]
        assert s["logp"] == pytest.approx(digits, abs=2e-4) and s["taught"] == taught
        assert s["picked"] == 1 + max(range(3), key=lambda i: digits[i])
    summary = fit.summarise(scored)
    assert sum(v["n"] for v in summary.values()) == 2
