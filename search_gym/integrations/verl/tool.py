"""A verl tool (``verl.tools.base_tool.BaseTool``) that searches through search-gym's retriever and judges each query.

verl's ``ToolAgentLoop`` (``actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent`` or the rows'
``agent_name`` column) parses the model's native tool calls (``multi_turn.format``: hermes, ...) and calls
``create`` / ``execute`` / ``release`` of the tool named in the call. Declare the tool in a tool config
(``multi_turn.tool_config_path``; ``examples/verl/search_gym_tool_config.yaml``)::

    tools:
      - class_name: search_gym.integrations.verl.tool.SearchGymTool
        config: {type: native, retriever: "http://127.0.0.1:8000", topk: 3, judges: [query_classifier]}

The tool schema defaults to search-gym's ``SEARCH_TOOL`` (``search(query: str)``, the env's tool-call protocol);
a schema with verl's ``query_list`` array (verl's Search-R1 example) is served too, one search per query.

Per call, ``execute`` returns the passages in Search-R1's listing (``Doc i(Title: ...) text``, what the env's
tool-call protocol returns), a step reward (``safety_reward_weight`` times the call's safety penalty; 0 by
default) and the call's safety in the tool metrics: per query judge ``query_safety`` (0-100, 100 = safe) and
``query_flagged``, ``query_similarity`` (MiniLM cosine of the query and the request, the ``question`` of the
row's ``tools_kwargs.search.create_kwargs``), ``flags`` (``oversized_query``, ``non_english``,
``injection_in_retrieved``) and the retrieved ids. verl 0.9.1's ``ToolAgentLoop`` drops that metrics dict, so the
same record is also appended to the trajectory's ``agent_data.extra_fields["search_gym_tool_calls"]``: verl passes
extra fields to the reward function as ``extra_info``, where :func:`~search_gym.integrations.verl.reward.\
compute_score` turns them into the safety penalty.

Config keys: ``retriever`` (``"dense"`` / ``"bm25"`` / ``"hybrid"``, a server URL, a dict of ``RetrieverConfig``
fields, or in Python any object with ``search``; ``retrieval_service_url``, verl's key, is read as a URL),
``corpus_path``, ``encoder``, ``index_type``, ``topk`` (3), ``judges`` (query-aspect judge specs of
``search_gym.safety.make_judge``, default ``["query_classifier"]``; ``[]`` = none), ``similarity`` (true),
``safety_reward_weight`` (0.0), ``max_query_chars`` (2048, the env's ``oversized_query`` limit).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from search_gym.envs.protocol import SEARCH_TOOL, format_passages, tool_call_query
from search_gym.integrations._concurrency import serial
from search_gym.integrations.verl.reward import safety_penalty_from_scores

#: ``agent_data.extra_fields`` key (and so ``extra_info`` key of the reward function) of the per-query records.
TOOL_CALLS_KEY = "search_gym_tool_calls"
_MAX_JUDGE_CHARS = 4096


class SearchGymTool(BaseTool):
    """verl ``BaseTool`` over search-gym's retrieval and query judges (module docstring: config and outputs)."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        config = dict(config or {})
        if tool_schema is None:
            tool_schema = OpenAIFunctionToolSchema.model_validate(SEARCH_TOOL)
        super().__init__(config, tool_schema)
        self.topk = int(config.get("topk", 3))
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        self._retriever_spec = config.get("retriever", config.get("retrieval_service_url"))
        self._overrides = {k: config[k] for k in ("corpus_path", "encoder", "index_type") if config.get(k)}
        self._retriever = None
        judges = config.get("judges", ["query_classifier"])
        self._judge_specs = [judges] if isinstance(judges, (str, dict)) else list(judges or [])
        self._judges = None
        self.similarity = bool(config.get("similarity", True))
        self.safety_reward_weight = float(config.get("safety_reward_weight", 0.0))
        self.max_query_chars = int(config.get("max_query_chars", 2048))
        self._instances: dict[str, dict] = {}

    # ------------------------------------------------------------------ lazy resources (built on first use)

    @property
    def retriever(self):
        if self._retriever is None:
            spec = self._retriever_spec
            from search_gym.envs.search_env import _resolve_retriever
            from search_gym.retrieval.factory import get_retriever

            # the env's own reading of a retriever spec (instance, kind, dict or RetrieverConfig, plus overrides)
            config, retriever = _resolve_retriever(spec, self._overrides.get("corpus_path"),
                                                   self._overrides.get("encoder"), self._overrides.get("index_type"))
            if retriever is None:
                retriever = get_retriever(config)  # shared per process
            # Calls of concurrent trajectories run in threads: in-process retrieval one search at a time.
            self._retriever = serial(retriever)
        return self._retriever

    @property
    def judges(self) -> list:
        if self._judges is None:
            from search_gym.safety.instrument import shared_judge

            judges = [shared_judge(spec) for spec in self._judge_specs]
            wrong = [j.name for j in judges if j.aspect != "query"]
            if wrong:
                raise ValueError(f"SearchGymTool judges queries; {wrong} are not query-aspect judges")
            self._judges = judges
        return self._judges

    # ------------------------------------------------------------------ BaseTool

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        """Start a tool instance; ``create_kwargs`` (verl 0.9's ``ToolAgentLoop`` passes them under that key, older
        rollouts as keyword arguments) may give the ``question`` the queries are compared with."""
        create_kwargs = kwargs.get("create_kwargs", kwargs) or {}
        instance_id = instance_id or str(uuid4())
        self._instances[instance_id] = {"request": str(create_kwargs.get("question") or ""), "calls": []}
        return instance_id, ToolResponse()

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[ToolResponse, float,
                                                                                                   dict]:
        """Search each query of the call, judge it, and return (passages, step reward, safety metrics)."""
        state = self._instances.get(instance_id)
        if state is None:  # a call without create (a caller that skips the lifecycle): judge without a request
            _, _ = await self.create(instance_id)
            state = self._instances[instance_id]
        queries = _queries(parameters)
        if not queries:
            return (ToolResponse(text="Error: the search call needs a non-empty 'query' string."), 0.0,
                    {"error": "empty_query", "num_queries": 0})
        records, texts = await asyncio.to_thread(self._search_and_judge, queries, state["request"])
        state["calls"].extend(records)
        agent_data = kwargs.get("agent_data")
        if agent_data is not None and hasattr(agent_data, "extra_fields"):
            agent_data.extra_fields.setdefault(TOOL_CALLS_KEY, []).extend(records)
        penalty = safety_penalty_from_scores([_first_score(r) for r in records], "min")
        reward = self.safety_reward_weight * penalty if self.safety_reward_weight and penalty else 0.0
        metrics = {"num_queries": len(records), "queries": records}
        if len(records) == 1:
            metrics.update(records[0])
        return ToolResponse(text="\n---\n".join(texts)), float(reward), metrics

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        """The instance's safety penalty, ``-(100 - mean query safety) / 100`` (first query judge), 0 without
        scored searches."""
        state = self._instances.get(instance_id) or {"calls": []}
        return float(safety_penalty_from_scores([_first_score(r) for r in state["calls"]], "mean") or 0.0)

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._instances.pop(instance_id, None)

    # ------------------------------------------------------------------ work (in a thread: never blocks verl's loop)

    def _search_and_judge(self, queries: list[str], request: str) -> tuple[list[dict], list[str]]:
        from search_gym.safety.base import JudgeInput
        from search_gym.safety.instrument import find_injection, looks_non_english, shared_similarity

        hits = self.retriever.search(queries, k=self.topk)
        inputs = [JudgeInput(q[:_MAX_JUDGE_CHARS], request) for q in queries]
        scores: dict[str, list] = {}
        for judge in self.judges:
            try:
                scores[judge.name] = list(judge.judge(inputs))
            except Exception as exc:  # a failing judge must not fail the rollout: the score is None
                scores[judge.name] = [exc] * len(queries)
        similarity: list = [None] * len(queries)
        if self.similarity and request.strip():
            try:
                similarity = shared_similarity().score([(q[:_MAX_JUDGE_CHARS], request) for q in queries])
            except Exception:  # the similarity is a measurement; no encoder must not fail the rollout
                similarity = [None] * len(queries)
        records, texts = [], []
        for k, (query, found) in enumerate(zip(queries, hits)):
            flags = []
            if len(query) > self.max_query_chars:
                flags.append("oversized_query")
            if looks_non_english(query):
                flags.append("non_english")
            if find_injection([h.contents for h in found]):
                flags.append("injection_in_retrieved")
            record = {"query": query, "query_safety": {}, "query_flagged": {}, "errors": {},
                      "query_similarity": _number(similarity[k]), "flags": flags,
                      "retrieved_doc_ids": [str(h.doc_id) for h in found]}
            for name, results in scores.items():
                result = results[k]
                if isinstance(result, Exception):
                    record["query_safety"][name], record["query_flagged"][name] = None, None
                    record["errors"][name] = f"{type(result).__name__}: {result}"[:500]
                else:
                    record["query_safety"][name] = _number(result.safety)
                    record["query_flagged"][name] = None if result.flagged is None else bool(result.flagged)
            records.append(record)
            texts.append(format_passages(found))
        return records, texts


def _queries(parameters: Any) -> list[str]:
    """The call's queries: ``query`` (search-gym's schema; a JSON string of the arguments is read too) or verl's
    ``query_list``; empty ones are dropped."""
    if isinstance(parameters, dict) and isinstance(parameters.get("query_list"), (list, tuple)):
        found = [tool_call_query({"query": q}) for q in parameters["query_list"]]
    else:
        found = [tool_call_query(parameters)]
    return [q for q in found if q]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


def _first_score(record: dict) -> float | None:
    scores = record.get("query_safety") or {}
    return next(iter(scores.values()), None)
