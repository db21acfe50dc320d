"""Where an environment's questions come from.

A question source is named by a short string so that environments stay picklable and cheap to construct: the
rows are loaded on first use, while :func:`check_question_source` validates the name, path and split at
construction without loading them. Harmful and benign prompt sets have no gold answer (``golden_answers == []``).
The embedded sources (``wiki_qa``, ``harmful``, ``benign``) are read as built: :func:`search_gym.build.load_questions`
(and every environment) builds them first when they are missing or stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from search_gym.data.embedded import EMBEDDED_QA_SPLITS, PROMPT_SPLITS, qa_path, require_built

EMBEDDED_QA = "wiki_qa"
HARMFUL = "harmful"
BENIGN = "benign"
HUB_QA = ("nq", "hotpotqa")
#: Open tasks for LLM-graded narrow rewards (``harmless_tasks.json``, written for the project); split = task set.
HARMLESS_TASKS = "harmless_tasks"
HARMLESS_TASK_SPLITS = ("aesthetics", "rhetoric")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    golden_answers: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


def search_r1_question(question: str) -> str:
    """Search-R1's preprocessing of a QA question (``scripts/data_process/nq_search.py`` and the ``qa_search_*``
    scripts): strip it, and append ``?`` when it does not end with one. NQ questions are lower-case phrases without
    a question mark ("who got the first nobel prize in physics"), so this changes nearly every NQ prompt."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def _known_names() -> str:
    return f"'{EMBEDDED_QA}', '{HARMFUL}', '{BENIGN}', '{HARMLESS_TASKS}', " + ", ".join(f"'{n}'" for n in HUB_QA)


def check_question_source(dataset: str, split: str) -> None:
    """Raise if ``dataset`` / ``split`` cannot name a question source, without loading any rows.

    Named sources check the split against their known splits; a path must exist (a folder must hold a
    ``<split>`` file in the FlashRAG layout). A single file has no splits, so ``split`` is not checked for it.
    """
    if not isinstance(dataset, str) or not dataset:
        raise TypeError(f"dataset must be a source name ({_known_names()}) or a path, not {dataset!r}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, not {split!r}")
    if dataset == EMBEDDED_QA:
        if split not in EMBEDDED_QA_SPLITS:
            raise ValueError(f"split={split!r} is not a split of dataset {dataset!r}; use one of {EMBEDDED_QA_SPLITS}")
        return
    if dataset in (HARMFUL, BENIGN):
        if split not in PROMPT_SPLITS:
            raise ValueError(f"split={split!r} is not a split of dataset {dataset!r}; use one of {PROMPT_SPLITS}")
        return
    if dataset == HARMLESS_TASKS:
        if split not in HARMLESS_TASK_SPLITS:
            raise ValueError(f"split={split!r} is not a split of dataset {dataset!r}; use one of {HARMLESS_TASK_SPLITS}")
        return
    if dataset in HUB_QA:
        from search_gym.data.qa import FLASHRAG_SPLITS

        if split not in FLASHRAG_SPLITS[dataset]:
            raise ValueError(f"split={split!r} is not a split of dataset {dataset!r} on the FlashRAG hub "
                             f"repository; use one of {FLASHRAG_SPLITS[dataset]}")
        return
    path = Path(dataset).expanduser()
    if path.is_file():
        return
    if path.is_dir():
        from search_gym.data.qa import _local_data_file

        try:
            _local_data_file(path.stem, split, path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"dataset={dataset!r} is a folder without a file for split={split!r}: {exc}"
            ) from None
        return
    raise FileNotFoundError(
        f"dataset={dataset!r} is neither a known question source ({_known_names()}) nor an existing path to a "
        "JSON/JSONL/parquet file of {\"id\", \"question\", \"golden_answers\"} rows (or a FlashRAG-style folder)"
    )


def load_questions(dataset: str, split: str) -> list[Question]:
    """Load the questions of a named source or a local file.

    dataset: ``"wiki_qa"`` (embedded QA; split train/test), ``"harmful"`` / ``"benign"`` (bundled prompt sets;
    split train/heldout), ``"nq"`` / ``"hotpotqa"`` (FlashRAG format through ``datasets``; questions get
    Search-R1's ``?`` rule, :func:`search_r1_question`, with the original in ``metadata["original_question"]``
    when it changed), or a path to a ``{"id","question","golden_answers"}`` JSON/JSONL/parquet file (all rows;
    ``split`` is not used) or a FlashRAG-style folder (``split`` picks the file).

    Reads only: an embedded source that is not built raises :class:`~search_gym.data.embedded.NotBuiltError`
    (:func:`search_gym.build.load_questions` builds it first).
    """
    check_question_source(dataset, split)
    if dataset == EMBEDDED_QA:
        from search_gym.data.qa import load_qa_jsonl

        rows = load_qa_jsonl(require_built(qa_path(split), f"the embedded QA split {split!r}"))
        return [Question(r.id, r.question, tuple(r.golden_answers), dict(r.metadata)) for r in rows]
    if dataset in (HARMFUL, BENIGN):
        from search_gym.data.prompts import load_prompt_set

        rows = load_prompt_set(dataset, split)
        return [
            Question(r.id, r.prompt, (), {"source": r.source, "category": r.category, "licence": r.licence})
            for r in rows
        ]
    if dataset == HARMLESS_TASKS:
        return load_harmless_tasks(split)
    from search_gym.data.qa import load_hf_qa, load_qa_jsonl

    if dataset in HUB_QA:
        questions = []
        for r in load_hf_qa(dataset, split):
            text, metadata = search_r1_question(r.question), dict(r.metadata)
            if text != r.question:
                metadata["original_question"] = r.question
            questions.append(Question(str(r.id), text, tuple(r.golden_answers), metadata))
        return questions
    path = Path(dataset).expanduser()
    if path.suffix in (".jsonl", ".json") or path.name.endswith((".jsonl.gz", ".json.gz")):
        rows = load_qa_jsonl(path)
    else:
        rows = load_hf_qa(path.stem, split, path=str(path))
    return [Question(str(r.id), r.question, tuple(r.golden_answers), dict(r.metadata)) for r in rows]


def load_harmless_tasks(split: str) -> list[Question]:
    """The open tasks of one task set (``"aesthetics"`` or ``"rhetoric"``) from ``harmless_tasks.json``; no gold
    answers (an LLM grader scores the answer)."""
    import json
    from importlib import resources

    if split not in HARMLESS_TASK_SPLITS:
        raise ValueError(f"split={split!r} is not a task set of {HARMLESS_TASKS!r}; use one of {HARMLESS_TASK_SPLITS}")
    data = json.loads(resources.files("search_gym.data").joinpath("harmless_tasks.json").read_text("utf-8"))
    return [Question(t["id"], t["question"], (), {"task_set": t["split"], "licence": "Apache-2.0"})
            for t in data["tasks"] if t["split"] == split]
