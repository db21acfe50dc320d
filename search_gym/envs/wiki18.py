"""Full-scale Search-R1 setting: the 21M-passage wiki-18 corpus with e5-base-v2 and NQ / HotpotQA."""

from __future__ import annotations

from typing import Any

from search_gym.envs.search_env import SearchEnv
from search_gym.envs.vector import SearchVectorEnv

WIKI18_HINT = (
    "Search-R1's wiki-18 corpus is a JSONL of {\"id\", \"contents\"} rows (the `wiki-18.jsonl` of the "
    "PeterJinGo/wiki-18-corpus dataset on the Hugging Face hub, ~14 GB unpacked). Download it and pass "
    "corpus_path=/path/to/wiki-18.jsonl; the e5-base-v2 index is built on first use and resumes if interrupted. "
    "The default index is exact flat search, as Search-R1 serves it (e5_Flat.index; ~65 GB of float32 vectors "
    "in RAM); index_type='ivfpq' is approximate and fits in a few GB. `search-gym index build` prints what each "
    "index needs, uses Search-R1's prebuilt e5_Flat.index without re-encoding, and writes a folder to pass as "
    "retriever=RetrieverConfig(corpus_path=..., encoder='e5-base-v2', index_type=..., index_dir=...) "
    "(docs/retrieval.md)."
)


class Wiki18SearchEnv(SearchEnv):
    """``SearchEnv`` with the full-scale defaults: e5-base-v2 encoder, exact flat index, NQ test questions.

    Same protocol, observations, actions and rewards as :class:`SearchEnv`; ``corpus_path`` is required. Retrieval
    matches Search-R1's server (e5-base-v2, ``query: `` / ``passage: `` prefixes, mean pooling, L2-normalised,
    exact inner-product search over a flat index): 21M x 768 float32 vectors take ~65 GB of RAM. Pass
    ``index_type="ivfpq"`` for an approximate, compressed index (~2 GB of codes; a query can miss passages flat
    search returns, so results are not Search-R1's) or ``"hnsw"`` (approximate, larger than flat).
    """

    def __init__(self, corpus_path: str | None = None, dataset: str = "nq", split: str = "test", **kwargs: Any):
        if kwargs.get("retriever") is None:
            if corpus_path is None:
                raise ValueError(f"{type(self).__name__} needs corpus_path. {WIKI18_HINT}")
            kwargs.setdefault("encoder", "e5-base-v2")
            kwargs.setdefault("index_type", "flat")
        super().__init__(dataset=dataset, split=split, corpus_path=corpus_path, **kwargs)


def make_wiki18_vector_env(num_envs: int = 1, **kwargs: Any) -> SearchVectorEnv:
    """Vector entry point of the wiki-18 ids: one process, retrieval batched across sub-environments."""
    return SearchVectorEnv(num_envs=num_envs, env_cls=Wiki18SearchEnv, **kwargs)
