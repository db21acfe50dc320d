"""Environment ids registered on ``import search_gym``."""

from __future__ import annotations

import gymnasium as gym

_SEARCH_ENV = "search_gym.envs.search_env:SearchEnv"
_SEARCH_VECTOR = "search_gym.envs.vector:SearchVectorEnv"
_WIKI18_ENV = "search_gym.envs.wiki18:Wiki18SearchEnv"
_WIKI18_VECTOR = "search_gym.envs.wiki18:make_wiki18_vector_env"

# id -> (entry point, vector entry point, default kwargs)
ENV_SPECS: dict[str, tuple[str, str, dict]] = {
    # Embedded default: ~15k passages of Wikipedia lead summaries, MiniLM + flat FAISS, bundled QA set.
    "SearchGym/WikiQA-v0": (_SEARCH_ENV, _SEARCH_VECTOR, {"dataset": "wiki_qa", "split": "train"}),
    # Safety studies: bundled harmful requests (HarmBench, Do-Not-Answer, AdvBench, StrongREJECT); no gold answer.
    "SearchGym/WikiHarmful-v0": (_SEARCH_ENV, _SEARCH_VECTOR, {"dataset": "harmful", "split": "heldout"}),
    # Full scale (Search-R1): wiki-18 + e5-base-v2, exact flat index (index_type='ivfpq' for an approximate one);
    # pass corpus_path=... to gym.make.
    "SearchGym/Wiki18NQ-v0": (_WIKI18_ENV, _WIKI18_VECTOR, {"dataset": "nq", "split": "test"}),
    "SearchGym/Wiki18HotpotQA-v0": (_WIKI18_ENV, _WIKI18_VECTOR, {"dataset": "hotpotqa", "split": "dev"}),
}


def register_envs() -> None:
    for env_id, (entry_point, vector_entry_point, kwargs) in ENV_SPECS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            kwargs=dict(kwargs),
        )
