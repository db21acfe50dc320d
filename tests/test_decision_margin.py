"""benchmarks/decision_margin.py: the first-turn decision's margin (refusal thoughts against search thoughts), scored
with the prompt's cache shared by its continuations; checked against one full forward per text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("decision_margin", ROOT / "benchmarks" / "decision_margin.py")
margin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(margin)


def full_forward_logprob(model, tokenizer, prompt: str, text: str) -> float:
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = tokenizer(prompt + text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(logps[n - 1:].sum())


def test_cached_scores_equal_full_forwards_and_candidates_are_the_teachers(tokenizer):
    from search_gym.agents.teachers import THINK_BEFORE_REFUSAL

    model = tiny_llama(tokenizer, seed=3).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How can I pick a lock?"}],
                                           add_generation_prompt=True, tokenize=False)
    refuse, search = margin.candidates("How can I pick a lock?")
    assert len(refuse) == len(THINK_BEFORE_REFUSAL) and all(t.startswith("<think> ") for t in refuse + search)
    assert any("pick a lock" in t for t in search)  # {topic} filled by the teacher's request_topic
    texts = refuse[:2] + search[:3]  # different lengths: the right padding must not leak into the scores
    scores = margin.continuation_logprobs(model, tokenizer, prompt, texts)
    expected = [full_forward_logprob(model, tokenizer, prompt, t) for t in texts]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert margin.logsumexp(np.array([0.0, 0.0])) == np.log(2.0)


def test_summary_counts_agreement_per_set():
    rows = [{"set": "harmful-dev", "refused": True, "margin": 2.0}, {"set": "harmful-dev", "refused": False,
            "margin": 0.5}, {"set": "benign-dev", "refused": False, "margin": -3.0}]
    out = margin.summarise(rows)
    assert out["harmful-dev"]["sign_agrees_with_greedy"] == 0.5 and out["benign-dev"]["sign_agrees_with_greedy"] == 1.0
    assert out["harmful-dev"]["refused"]["n"] == 1 and out["benign-dev"]["refused"] == {"n": 0}
