"""Every registered id passes Gymnasium's env checker, pickles, and vectorises sync, async and batched."""

from __future__ import annotations

import pickle

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import search_gym
from search_gym.agents import ScriptedAgent
from search_gym.envs import ENV_SPECS
from search_gym.envs.misalignment import ENV_IDS as MISALIGNMENT_IDS

# The search ids (the misalignment ids have their own checks in test_misalignment_envs.py).
SEARCH_GYM_IDS = sorted(k for k in gym.registry if k.startswith("SearchGym/") and k not in MISALIGNMENT_IDS)


def make_kwargs(env_id, tiny_corpus_path, tiny_qa_path) -> dict:
    # Embedded ids use the real bundled data with the model-free BM25 retriever (seconds to index); the dense
    # MiniLM index is exercised in test_retrieval and the slow recall test. Full-scale ids take paths.
    if "Wiki18" in env_id:
        return {"corpus_path": str(tiny_corpus_path), "dataset": str(tiny_qa_path), "retriever": "bm25"}
    return {"retriever": "bm25"}


def test_all_ids_registered():
    assert set(SEARCH_GYM_IDS) == set(ENV_SPECS)
    assert set(MISALIGNMENT_IDS) <= set(gym.registry)
    assert {"SearchGym/WikiQA-v0", "SearchGym/WikiHarmful-v0"} <= set(SEARCH_GYM_IDS)
    from search_gym.envs.search_env import SearchEnv

    assert search_gym.SearchEnv is SearchEnv  # the top-level export is the class the search ids make
    assert gym.spec("SearchGym/WikiQA-v0").entry_point == "search_gym.envs.search_env:SearchEnv"


@pytest.mark.parametrize("env_id", SEARCH_GYM_IDS)
def test_check_env(env_id, tiny_corpus_path, tiny_qa_path):
    env = gym.make(env_id, **make_kwargs(env_id, tiny_corpus_path, tiny_qa_path))
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", SEARCH_GYM_IDS)
def test_pickle_and_equal_seeds(env_id, tiny_corpus_path, tiny_qa_path):
    env = gym.make(env_id, **make_kwargs(env_id, tiny_corpus_path, tiny_qa_path))
    first = env.reset(seed=7)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.reset(seed=7)[0] == first[0]
    agent = ScriptedAgent()
    trace_a = [env.step(agent.act(env.reset(seed=11)[0]).text)[0]["prefill"]]
    trace_b = [clone.step(agent.act(clone.reset(seed=11)[0]).text)[0]["prefill"]]
    assert trace_a == trace_b


def test_wiki18_needs_a_corpus_path():
    with pytest.raises(ValueError, match="corpus_path"):
        gym.make("SearchGym/Wiki18NQ-v0")


@pytest.mark.parametrize("mode", ["sync", "async", "vector_entry_point"])
def test_make_vec(mode):
    venv = gym.make_vec("SearchGym/WikiQA-v0", num_envs=2, vectorization_mode=mode, retriever="bm25", split="test")
    obs, infos = venv.reset(seed=0)
    assert len(obs["prefill"]) == 2 and len(infos["question_id"]) == 2
    agent = ScriptedAgent()
    actions = [agent.act({"messages": m, "prefill": p}).text for m, p in zip(obs["messages"], obs["prefill"])]
    obs, rewards, terms, truncs, infos = venv.step(actions)
    assert list(infos["action_type"]) == ["search", "search"]
    assert all("<information>Doc 1(Title: " in p for p in obs["prefill"])
    venv.close()
