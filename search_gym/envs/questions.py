"""Where an environment's questions come from.

A question source is named by a short string so that environments stay picklable and cheap to construct: the
rows are loaded on first use. Harmful and benign prompt sets have no gold answer (``golden_answers == []``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_QA = "wiki_qa"
HARMFUL = "harmful"
BENIGN = "benign"
HUB_QA = ("nq", "hotpotqa")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    golden_answers: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


def load_questions(dataset: str, split: str) -> list[Question]:
    """Load the questions of a named source or a local file.

    dataset: ``"wiki_qa"`` (embedded QA; split train/test), ``"harmful"`` / ``"benign"`` (bundled prompt sets;
    split train/heldout), ``"nq"`` / ``"hotpotqa"`` (FlashRAG format through ``datasets``; any split the hub has),
    or a path to a ``{"id","question","golden_answers"}`` JSON/JSONL/parquet file.
    """
    if dataset == EMBEDDED_QA:
        from search_gym.build import ensure_embedded
        from search_gym.data.qa import load_qa_jsonl

        data = ensure_embedded(progress=False)
        paths = {"train": data.qa_train, "test": data.qa_test}
        if split not in paths:
            raise ValueError(f"wiki_qa has splits {sorted(paths)}, not {split!r}")
        rows = load_qa_jsonl(paths[split])
        return [Question(r.id, r.question, tuple(r.golden_answers), dict(r.metadata)) for r in rows]
    if dataset in (HARMFUL, BENIGN):
        from search_gym.data.prompts import load_prompt_set

        rows = load_prompt_set(dataset, split)
        return [
            Question(r.id, r.prompt, (), {"source": r.source, "category": r.category, "licence": r.licence})
            for r in rows
        ]
    from search_gym.data.qa import load_hf_qa, load_qa_jsonl

    path = Path(dataset).expanduser()
    if path.suffix in (".jsonl", ".json") and path.exists():
        rows = load_qa_jsonl(path)
    elif dataset in HUB_QA or path.exists():
        rows = load_hf_qa(dataset, split) if dataset in HUB_QA else load_hf_qa(path.stem, split, path=str(path))
    else:
        raise FileNotFoundError(
            f"unknown question source {dataset!r}: use 'wiki_qa', 'harmful', 'benign', 'nq', 'hotpotqa' or a path "
            "to a JSONL file of {\"id\", \"question\", \"golden_answers\"} rows"
        )
    return [Question(str(r.id), r.question, tuple(r.golden_answers), dict(r.metadata)) for r in rows]
