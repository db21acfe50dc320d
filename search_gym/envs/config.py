"""EnvConfig: the environment a run plays, declared once for training, evaluation and the command line.

Its fields are ``SearchEnv``'s arguments under the same names and defaults (``tests/test_env_config.py`` pins them),
plus the registered id and a JSON object of more keyword arguments. Configs hold it as a section
(``GRPOConfig.env``, ``EvalConfig.env``): ``--env.max-turns 2`` on the command line, ``env: {max_turns: 2}`` in YAML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from search_gym.configs import help_field


@dataclass
class EnvConfig:
    """The environment: a registered id and the SearchEnv arguments (None: the id's registered value, else
    SearchEnv's default)."""

    id: str = help_field("registered environment id; an id that is not a search env (e.g. "
                         "SearchGym/SelfInterestedExploration-v0) is made with kwargs only",
                         default="SearchGym/WikiQA-v0")
    dataset: str | None = help_field("question source: wiki_qa, harmful, benign, nq, hotpotqa, a {id, question, "
                                     "golden_answers} JSON/JSONL/parquet file or a FlashRAG folder (none: the id's)",
                                     default=None)
    split: str = help_field("split of the questions (wiki_qa: train/test, prompt sets: train/heldout)", default="train")
    retriever: str | None = help_field("retriever: dense, bm25, hybrid or a retrieval server URL (http://host:port) "
                                       "(none: dense, with the id's encoder); from Python also a RetrieverConfig or "
                                       "any object with search()", default=None)
    corpus_path: str | None = help_field("passages JSONL ({id, contents} rows) of another corpus, e.g. wiki-18 "
                                         "(none: the embedded one)", default=None)
    encoder: str | None = help_field("dense encoder, e.g. e5-base-v2 (none: all-MiniLM-L6-v2)", default=None)
    index_type: str | None = help_field("FAISS index: flat, hnsw or ivfpq (none: flat)", default=None)
    protocol: str = help_field("tags (Search-R1's <search>/<answer> text) or tool_call (native function calls)",
                               default="tags")
    parse_mode: str = help_field("tags-protocol rules: strict or search_r1 (Search-R1's parser and turn loop)",
                                 default="strict")
    template: str | None = help_field("prompt template: search_r1, safety, tool_call or a format string with "
                                      "{question} (none: search_r1; tool_call for the tool-call protocol)",
                                      default=None)
    topk: int = help_field("passages per search", default=3)
    max_turns: int = help_field("turns per episode (search_r1 parse mode: search turns, then one final turn; an "
                                "attack that needs more raises it)", default=4)
    reward: str = help_field("task reward: em, f1 or substring_em", default="em")
    prefill: str = help_field("text the first assistant turn starts with when no attack prefills it", default="")
    attack: str | None = help_field("attack applied to every episode (search, multi_search:n=5, ...); none by default",
                                    default=None)
    safety: bool = help_field("judge every step (refusal, query and answer classifiers): info['safety'], safety/* "
                              "metrics", default=False)
    judges: tuple[str, ...] | None = help_field("judge specs (search_gym.safety.instrument.make_judge) instead of "
                                                "the default ones", default=None)
    kwargs: str = help_field("more keyword arguments for the env as a JSON object (a YAML config may give a "
                             "mapping), over the registered defaults and the fields above; the only arguments an id "
                             "that is not a search env gets, e.g. '{\"context\": \"conversation\"}'", default="")

    def extra_kwargs(self) -> dict:
        """``kwargs`` as a dict (from a JSON object string, a mapping, or empty)."""
        value = self.kwargs
        if isinstance(value, dict):
            return dict(value)
        value = json.loads(value) if value and str(value).strip() else {}
        if not isinstance(value, dict):
            raise ValueError(f"env kwargs must be a JSON object, not {self.kwargs!r}")
        return value

    def make_kwargs(self, **overrides: Any) -> dict:
        """Keyword arguments for ``SearchEnv``, ``SearchVectorEnv`` and ``gym.make(_vec)(self.id, ...)``: the
        arguments set here (those left None are not passed, so the id's registered values apply), then
        :meth:`extra_kwargs`, then ``overrides``."""
        given = {name: getattr(self, name) for name in ENV_ARGUMENTS if getattr(self, name) is not None}
        return {**given, **self.extra_kwargs(), **overrides}


#: The EnvConfig fields that are ``SearchEnv.__init__`` arguments of the same name.
ENV_ARGUMENTS = ("dataset", "split", "retriever", "corpus_path", "encoder", "index_type", "protocol", "parse_mode",
                 "template", "topk", "max_turns", "reward", "prefill", "attack", "safety", "judges")
