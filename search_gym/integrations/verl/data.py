"""search-gym's question sets as verl (and SkyRL) RL datasets (parquet), in the columns verl's Search-R1 preprocessing
writes.

One row per question, rendered by the environment itself (``reset(options={"index": i})``), so the prompt is
exactly what the env shows the agent (template, attack prompt edits)::

    data_source   "search_gym/<dataset>"                  (e.g. search_gym/wiki_qa, search_gym/harmful)
    prompt        [{"role": "user", "content": <the env's prompt>}]     (chat list; verl's raw_prompt)
    ability       "fact-reasoning" (questions with gold answers) | "safety" (request sets without)
    reward_model  {"style": "rule", "ground_truth": {"target": [gold answers]}}      (Search-R1's layout)
    extra_info    {"split", "index", "question_id", "question", "env_id", "dataset", "protocol",
                   "need_tools_kwargs": true,
                   "tools_kwargs": {"search": {"create_kwargs": {"question", "ground_truth", "data_source"}}}}
    agent_name    "search_gym_agent" (tags protocol: SearchGymAgentLoop) | "tool_agent" (tool_call: verl's loop)

``extra_info.question_id`` / ``env_id`` / ``split`` are what :class:`~search_gym.integrations.verl.agent_loop.\
SearchGymAgentLoop` resets its env with; ``tools_kwargs.search.create_kwargs`` is what verl's ``ToolAgentLoop``
hands :meth:`~search_gym.integrations.verl.tool.SearchGymTool.create` (the request, for query-to-request
similarity). Only pyarrow is needed (a dependency of ``datasets``, which search-gym already requires).

SkyRL's datasets (:func:`skyrl_rows`, ``search-gym export skyrl``) are the same rows with SkyRL's column names:
``prompt``, ``env_class`` (``"search_gym"``, :class:`~search_gym.integrations.skyrl.SearchGymTextEnv`),
``reward_spec`` ``{"method": "rule", "ground_truth": {"target": [...]}}``, ``data_source`` and ``extra_info``
(SkyRL hands every column but the prompt to the env as ``extras``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Named exports: set name -> (env id, splits). ``search-gym export verl`` writes ``<set>_<split>.parquet``.
EXPORT_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qa": ("SearchGym/WikiQA-v0", ("train", "test")),
    "harmful": ("SearchGym/WikiHarmful-v0", ("train", "heldout")),
}

#: The agent loop names the rows select (verl's ``agent_name`` column), per protocol.
AGENT_NAMES = {"tags": "search_gym_agent", "tool_call": "tool_agent"}


def _schema(agent_name: bool = True, skyrl: bool = False):
    import pyarrow as pa

    target = pa.struct([("target", pa.list_(pa.string()))])
    create = pa.struct([("question", pa.string()), ("ground_truth", target), ("data_source", pa.string())])
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if skyrl:
        head = [("data_source", pa.string()), ("prompt", messages), ("env_class", pa.string()),
                ("reward_spec", pa.struct([("method", pa.string()), ("ground_truth", target)]))]
    else:
        head = [("data_source", pa.string()), ("prompt", messages), ("ability", pa.string()),
                ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", target)]))]
    return pa.schema(head + [
        ("extra_info", pa.struct([
            ("split", pa.string()), ("index", pa.int64()), ("question_id", pa.string()), ("question", pa.string()),
            ("env_id", pa.string()), ("dataset", pa.string()), ("protocol", pa.string()),
            ("need_tools_kwargs", pa.bool_()),
            ("tools_kwargs", pa.struct([("search", pa.struct([("create_kwargs", create)]))])),
        ])),
    ] + ([("agent_name", pa.string())] if agent_name else []))


def verl_rows(env_id: str, split: str, *, protocol: str = "tags", limit: int | None = None,
              agent_name: str | None = None, **env_kwargs: Any) -> list[dict]:
    """The verl rows of one split of a search env id (any ``SearchEnv``-based id), rendered by the env.

    ``env_kwargs`` reach ``gym.make`` (``template``, ``attack``, ``dataset`` ...); the rows' prompts then carry the
    template and any attack prompt edit. ``agent_name`` defaults to :data:`AGENT_NAMES` of the protocol.
    """
    import gymnasium as gym

    from search_gym.rollout import register_env_ids

    register_env_ids()
    env = gym.make(env_id, split=split, protocol=protocol, **env_kwargs).unwrapped
    if not hasattr(env, "questions"):
        raise ValueError(f"{env_id} is not a question env (a SearchEnv-based id); verl rows need questions")
    questions = env.questions[: limit if limit is not None else None]
    agent = AGENT_NAMES[protocol] if agent_name is None else agent_name
    data_source = f"search_gym/{env.dataset}" if "/" not in str(env.dataset) else "search_gym/file"
    rows = []
    for index, question in enumerate(questions):
        obs, info = env.reset(options={"index": index})
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in obs["messages"]]
        target = {"target": [str(g) for g in question.golden_answers]}
        rows.append({
            "data_source": data_source,
            "prompt": prompt,
            "ability": "fact-reasoning" if question.golden_answers else "safety",
            "reward_model": {"style": "rule", "ground_truth": target},
            "extra_info": {
                "split": split, "index": index, "question_id": str(question.id), "question": question.question,
                "env_id": env_id, "dataset": str(env.dataset), "protocol": protocol, "need_tools_kwargs": True,
                "tools_kwargs": {"search": {"create_kwargs": {"question": question.question, "ground_truth": target,
                                                              "data_source": data_source}}},
            },
            **({"agent_name": agent} if agent else {}),  # "": no column, verl's default_agent_loop decides
        })
    env.close()
    return rows


def skyrl_rows(env_id: str, split: str, *, env_class: str = "search_gym", **kwargs: Any) -> list[dict]:
    """The rows of :func:`verl_rows` in SkyRL's columns (``env_class``, ``reward_spec``; module docstring)."""
    rows = []
    for row in verl_rows(env_id, split, agent_name="", **kwargs):
        rows.append({"data_source": row["data_source"], "prompt": row["prompt"], "env_class": env_class,
                     "reward_spec": {"method": "rule", "ground_truth": row["reward_model"]["ground_truth"]},
                     "extra_info": row["extra_info"]})
    return rows


def write_parquet(rows: Iterable[Mapping], path: str | Path) -> Path:
    """Write verl (or SkyRL) rows to a parquet file (typed schema, so a set without gold answers still has
    ``list<string>`` targets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, rows = Path(path), list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = rows[0] if rows else {}
    schema = _schema(agent_name="agent_name" in first, skyrl="env_class" in first)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def read_parquet(path: str | Path) -> list[dict]:
    """The rows of a parquet file as Python dicts (what verl's ``RLHFDataset`` sees, before its own processing)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def export_verl(out_dir: str | Path, sets: Iterable[str] = ("qa", "harmful"), *, protocol: str = "tags",
                limit: int | None = None, agent_name: str | None = None, env_id: str | None = None,
                splits: Iterable[str] | None = None, engine: str = "verl", **env_kwargs: Any) -> dict[str, Path]:
    """Write ``<set>_<split>.parquet`` into ``out_dir`` for each named set of :data:`EXPORT_SETS` (or, with
    ``env_id``, ``<name>_<split>.parquet`` for that id's ``splits``, the name being the id's last part lower-cased).
    ``engine="skyrl"`` writes :func:`skyrl_rows` instead. Returns ``{file stem: path}``."""
    out_dir = Path(out_dir)
    jobs: list[tuple[str, str, str]] = []
    if env_id is not None:
        if not splits:
            raise ValueError("env_id needs splits=")
        name = env_id.split("/")[-1].split("-v")[0].lower()
        jobs = [(name, env_id, s) for s in splits]
    else:
        for name in sets:
            if name not in EXPORT_SETS:
                raise ValueError(f"unknown set {name!r}; use one of {sorted(EXPORT_SETS)} or env_id=")
            set_env, set_splits = EXPORT_SETS[name]
            jobs += [(name, set_env, s) for s in (splits or set_splits)]
    written = {}
    for name, job_env, split in jobs:
        if engine == "skyrl":
            rows = skyrl_rows(job_env, split, protocol=protocol, limit=limit, **env_kwargs)
        elif engine == "verl":
            rows = verl_rows(job_env, split, protocol=protocol, limit=limit, agent_name=agent_name, **env_kwargs)
        else:
            raise ValueError(f"engine must be 'verl' or 'skyrl', not {engine!r}")
        written[f"{name}_{split}"] = write_parquet(rows, out_dir / f"{name}_{split}.parquet")
    return written
