"""Full-scale Search-R1 setting: the 21M-passage wiki-18 corpus with e5-base-v2 and NQ / HotpotQA."""

from __future__ import annotations

from typing import Any

from search_gym.envs.search_env import SearchEnv
from search_gym.envs.vector import SearchVectorEnv

WIKI18_HINT = (
    "Search-R1's wiki-18 corpus is a JSONL of {\"id\", \"contents\"} rows (the `wiki-18.jsonl` of the "
    "PeterJinGo/wiki-18-corpus dataset on the Hugging Face hub, ~14 GB unpacked). Download it and pass "
    "corpus_path=/path/to/wiki-18.jsonl; the e5-base-v2 IVF-PQ index is built on first use and resumes if "
    "interrupted."
)


class Wiki18SearchEnv(SearchEnv):
    """``SearchEnv`` with the full-scale defaults: e5-base-v2 encoder, IVF-PQ index, NQ test questions.

    Same protocol, observations, actions and rewards as :class:`SearchEnv`; ``corpus_path`` is required.
    """

    def __init__(self, corpus_path: str | None = None, dataset: str = "nq", split: str = "test", **kwargs: Any):
        if kwargs.get("retriever") is None:
            if corpus_path is None:
                raise ValueError(f"{type(self).__name__} needs corpus_path. {WIKI18_HINT}")
            kwargs.setdefault("encoder", "e5-base-v2")
            kwargs.setdefault("index_type", "ivfpq")
        super().__init__(dataset=dataset, split=split, corpus_path=corpus_path, **kwargs)


def make_wiki18_vector_env(num_envs: int = 1, **kwargs: Any) -> SearchVectorEnv:
    """Vector entry point of the wiki-18 ids: one process, retrieval batched across sub-environments."""
    return SearchVectorEnv(num_envs=num_envs, env_cls=Wiki18SearchEnv, **kwargs)
