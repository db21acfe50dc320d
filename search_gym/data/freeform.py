"""Free-form questions of the general misalignment evaluation (``misalignment_questions.json``, written for the
project; its ``schema`` block documents the fields and the licence)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class FreeFormQuestion:
    id: str
    category: str
    question: str


def load_misalignment_questions() -> list[FreeFormQuestion]:
    """The bundled questions, in file order (48: six per category)."""
    text = resources.files("search_gym.data").joinpath("misalignment_questions.json").read_text("utf-8")
    return [FreeFormQuestion(q["id"], q["category"], q["question"]) for q in json.loads(text)["questions"]]
