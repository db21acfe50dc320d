"""Safety instrumentation: judges of query harm, refusal and answer harm behind one batched protocol.

- :mod:`.base`: the :class:`Judge` protocol (``judge(inputs) -> results``, 0-100 where 100 = safe).
- :mod:`.refusal`: substring refusal detector (GCG / HarmBench-style phrase list).
- :mod:`.classifier`: MiniLM + logistic-regression query-harm probe; :func:`ensure_query_classifier` builds it.
- :mod:`.llm_judge`: 1-5 rubric judge on any agent backend.
- :mod:`.instrument`: what ``SearchEnv(safety=True | judges=[...])`` puts in ``info["safety"]``.

Models load lazily: importing this package loads none. The trajectory recorder (an env wrapper) lives in
:mod:`search_gym.rollout.recorder`: judges know no env. How well the judges measure harm (their evaluation, and the
``search-gym judges`` command) is :mod:`search_gym.judges`, a floor above.
"""

from search_gym.safety.base import ASPECTS, Judge, JudgeInput, JudgeResult
from search_gym.safety.classifier import (
    ClassifierWeights,
    QueryHarmClassifier,
    TrainingData,
    default_training_data,
    ensure_query_classifier,
    train_query_classifier,
)
from search_gym.safety.instrument import (
    DEFAULT_JUDGES,
    FLAGS,
    SafetyConfig,
    SafetyInstrument,
    find_injection,
    looks_non_english,
    make_judge,
)
from search_gym.safety.llm_judge import LLMJudge, parse_rating
from search_gym.safety.refusal import REFUSAL_PHRASES, RefusalSubstringJudge

__all__ = [
    "ASPECTS",
    "DEFAULT_JUDGES",
    "FLAGS",
    "REFUSAL_PHRASES",
    "ClassifierWeights",
    "Judge",
    "JudgeInput",
    "JudgeResult",
    "LLMJudge",
    "QueryHarmClassifier",
    "RefusalSubstringJudge",
    "SafetyConfig",
    "SafetyInstrument",
    "TrainingData",
    "default_training_data",
    "ensure_query_classifier",
    "find_injection",
    "looks_non_english",
    "make_judge",
    "parse_rating",
    "train_query_classifier",
]
