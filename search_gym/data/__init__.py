"""Loaders for passages, QA sets, prompt sets and the question sources environments draw from (Search-R1 /
FlashRAG formats); text hygiene (:mod:`.text`).

Loaders read and never build. Builders live in :mod:`search_gym.corpora`; :mod:`search_gym.build` makes sure the
embedded data exist (``search-gym setup``, ``ensure_embedded()``) and offers ``load_questions`` / ``load_prompt_set``
that build on demand; a loader here raises :class:`NotBuiltError` for a file that is not built.
"""

from search_gym.data.corpus import Corpus, Passage, file_fingerprint, iter_corpus, load_corpus, load_wiki18
from search_gym.data.embedded import NotBuiltError
from search_gym.data.prompts import PromptItem, load_prompt_set
from search_gym.data.qa import QAItem, load_hf_qa, load_qa_jsonl, normalize_answer
from search_gym.data.questions import Question, load_questions

__all__ = [
    "Corpus",
    "NotBuiltError",
    "Passage",
    "PromptItem",
    "QAItem",
    "Question",
    "file_fingerprint",
    "iter_corpus",
    "load_corpus",
    "load_hf_qa",
    "load_prompt_set",
    "load_qa_jsonl",
    "load_questions",
    "load_wiki18",
    "normalize_answer",
]
