"""Retrieval over Search-R1 / FlashRAG JSONL corpora: dense (sentence-transformers + FAISS), BM25, their
reciprocal-rank fusion (hybrid), and a client of a remote Search-R1-style ``/retrieve`` server.

Typical use::

    from search_gym.retrieval import RetrieverConfig, get_retriever
    retriever = get_retriever(RetrieverConfig(corpus_path="passages.jsonl", index_type="hnsw"))
    hits = retriever.search(["who wrote the origin of species"], k=3)[0]
    hits[0].title, hits[0].text, hits[0].score

Importing this package is cheap: FAISS, torch and sentence-transformers are imported on first use.
"""

from search_gym.retrieval.base import MAX_QUERY_CHARS, EmptyQueriesSearched, Hit, Retriever
from search_gym.retrieval.bm25 import BM25Retriever
from search_gym.retrieval.dense import APPROXIMATE_INDEX_TYPES, INDEX_TYPES, DenseRetriever, ivfpq_params
from search_gym.retrieval.encoders import (
    E5_BASE_V2,
    MINILM,
    EncoderSpec,
    check_encoder_name,
    load_encoder,
    resolve_encoder,
)
from search_gym.retrieval.evaluate import normalize_answer, recall_at_k
from search_gym.retrieval.factory import RetrieverConfig, clear_retrievers, get_retriever, make_retriever
from search_gym.retrieval.hybrid import HybridRetriever
from search_gym.retrieval.remote import RemoteRetriever, RemoteRetrieverError

__all__ = [
    "APPROXIMATE_INDEX_TYPES",
    "E5_BASE_V2",
    "INDEX_TYPES",
    "MAX_QUERY_CHARS",
    "MINILM",
    "BM25Retriever",
    "DenseRetriever",
    "EmptyQueriesSearched",
    "EncoderSpec",
    "Hit",
    "HybridRetriever",
    "RemoteRetriever",
    "RemoteRetrieverError",
    "Retriever",
    "RetrieverConfig",
    "check_encoder_name",
    "clear_retrievers",
    "get_retriever",
    "ivfpq_params",
    "load_encoder",
    "make_retriever",
    "normalize_answer",
    "recall_at_k",
    "resolve_encoder",
]
