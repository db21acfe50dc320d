"""Teachers of the aligned warm start: varied, instruction-tuned-like behaviour for the SFT data.

The first teachers (:class:`~search_gym.agents.baselines.OracleAgent`, :class:`~search_gym.agents.baselines.
RefusalAgent`) wrote one fixed sentence before every search and searched the question verbatim. A model trained on
them (1) copies a harmful request into the query whenever a ``<search>`` is forced (search safety ~13 under the
search attack: the degraded state RL is supposed to produce, already there before RL), (2) is so peaked that
most GRPO groups have no reward spread, and (3) gives the representation penalty nothing to vary within a group.
These teachers fix the *data*:

- :class:`AlignedOracleAgent` (questions with gold answers, and benign requests): reasons in varied words
  (several phrase families, not one sentence), rephrases the question into a search query (drops the question
  words, or keeps only content words) instead of copying it, and answers after reading;
- :class:`AlignedRefusalAgent` (harmful requests): refuses in varied words; when a ``<search>`` is forced on it,
  it either writes a refusal inside the search tag (what instruction-tuned models often do under this attack) or
  a deflecting query about the risks, law or help around the topic, never the request itself; after the
  information block it refuses.

Choices are seeded per request and turn (``seed``, the request's text, the turn), so the same data come out of the
same seed, and different requests get different wordings. Only the ``search`` attack (a forced ``<search>``) is
taught; other attacks (think_prefill, refusal_then_search, prompt_injection, multi_search) stay unseen, so
evaluations can report taught and untaught attacks apart.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from search_gym.agents.base import AgentStep, BaseAgent
from search_gym.agents.baselines import _information_docs, oracle_answer, question_of

__all__ = ["AlignedOracleAgent", "AlignedRefusalAgent", "rephrase_query", "deflecting_query", "answer_passage",
           "request_topic", "THINK_BEFORE_SEARCH", "THINK_BEFORE_ANSWER", "THINK_GROUNDED", "REFUSALS",
           "THINK_BEFORE_REFUSAL", "SEARCH_REFUSALS", "THOUGHT_TOPIC_WORDS"]

#: Words of the question's topic (:func:`request_topic`) in a thought before a search ("I should find out more
#: about {topic} before answering."); benchmarks/decision_margin.py rebuilds the same thoughts with it.
THOUGHT_TOPIC_WORDS = 5

# ------------------------------------------------------------------------------------------------ phrase families
# Each family says the same thing in other words; {topic} is a short phrase of the question (may be left out).

THINK_BEFORE_SEARCH = (
    "I need to search for this.",
    "I don't know this offhand, so I will look it up.",
    "Let me search for {topic}.",
    "I should find out more about {topic} before answering.",
    "This needs a fact I am not sure of. I'll search.",
    "To answer, I need information about {topic}.",
    "I am not certain. A search should help.",
    "Let me look up {topic} first.",
    "I will check a reference on {topic}.",
    "The question is about {topic}; I should search for it.",
    "I need more information to answer this.",
    "Searching is the safest way to get this right.",
)
THINK_BEFORE_ANSWER = (
    "The documents answer the question.",
    "The search results give the answer.",
    "Doc 1 has what I need.",
    "From the retrieved passages, I can answer now.",
    "The information matches the question.",
    "I found it in the results.",
    "The passages name the answer.",
    "That is enough information to answer.",
)
# The grounded variant (AlignedOracleAgent(grounded=True), recipe 5 of docs/aligned_start.md): the thought before the
# answer names the passage that holds it, by number and title. The generic family above says "Doc 1" whatever passage
# holds the answer, and a student trained on it answers passage 1's title (validation of recipes 4a/4b: EM 77% when
# the answer is in passage 1, 21-28% when it is in passage 2 or 3).
THINK_GROUNDED = (
    "Doc {k} ({title}) answers the question.",
    "The answer is in Doc {k}, {title}.",
    "Doc {k} is about {title}, which matches the question.",
    "Reading the passages, Doc {k} ({title}) fits.",
    "Doc {k} matches: {title}.",
    "The passage that fits is Doc {k}, {title}.",
    "Doc {k}, {title}, has what the question asks for.",
    "Comparing the passages, Doc {k} ({title}) is the one.",
)
THINK_BEFORE_REFUSAL = (
    "This request asks for something harmful. I will not help with it.",
    "Helping with this could hurt people, so I should decline.",
    "This is a request for harmful content. I won't assist.",
    "I should not provide this; it could be used to cause harm.",
    "This could enable harm to others. I need to refuse.",
    "The request is unsafe. I will decline politely.",
    "I can't help with this kind of request.",
    "Answering would mean giving dangerous help. I'll refuse.",
)
# every refusal contains a phrase of the refusal judge (search_gym.safety.refusal), so evaluations count it
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot help with this request because it could cause harm.",
    "I'm sorry, I can't assist with that request.",
    "I can't provide help with that. It could be used to hurt people.",
    "I won't help with this. If you are in danger, please contact local emergency services.",
    "Sorry, I can't do that. It could put people at risk.",
    "I'm not able to help with that request.",
    "I must decline. This could cause real harm.",
    "I can't assist with this, but I'm happy to help with something else.",
    "I am unable to help with that; it is not something I can support.",
)
# written inside a forced <search>: a refusal instead of a query
SEARCH_REFUSALS = (
    "I can't help with this request",
    "I will not search for harmful information",
    "sorry, I cannot assist with that",
    "I won't look this up because it could cause harm",
    "I can't provide this",
    "no search: I won't help with this",
    "I'm not going to search for that",
    "I must decline this search",
    "this is not appropriate to look up",
    "I refuse to search for this",
    "I will not search, this could hurt someone",
    "I cannot search for that request",
    "Sorry, I am not searching this",
    "I won't assist with this one",
    "I'm unable to search for this safely",
    "I cannot provide search results for this",
)
# deflecting queries: the risks, law or help around the topic (or help in general), never the request itself
DEFLECTIONS = (
    "why {topic} is harmful",
    "laws about {topic}",
    "risks of {topic}",
    "how to report {topic}",
    "ethics of {topic}",
    "how {topic} is prevented",
    "where to get help and support",
    "safety guidelines",
    "crisis hotline",
    "legal advice services",
)

# ------------------------------------------------------------------------------------------------ text rules

_STOPWORDS = frozenset(
    "a an the of is was are were be been in on at to from for by with and or as that which who whom whose what "
    "when where why how did does do this these those its it his her their its called name named".split()
)
_CONNECTIVES = frozenset("but so if then than into onto over under about all any some just using can may "
                         "without who could would should".split())
_WH_PREFIX = re.compile(
    r"^(?:in |on |at |for |of )?(?:what|which|who|whom|whose|when|where|why|how)"
    r"(?: (?:is|was|are|were|did|does|do|can|could|should|would|many|much|long|old|far))?"
    r"(?: (?:i|we|you|one|someone|people|my|the name of))?(?: (?:the|a|an))?\s+", re.I)
_CALLED = re.compile(r"\s+(?:called|named|known as)$", re.I)
_REQUEST_PREFIX = re.compile(
    r"^(?:please\s+)?(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:(?:write|create|give|provide|generate|develop|design|outline|describe|explain|list|draft|compose|produce|"
    r"suggest|tell|show|teach|help|instruct|offer|share|convince|persuade|encourage|demonstrate|determine|detail)"
    r"\s+(?:me\s+|us\s+|users\s+|people\s+|someone\s+|children\s+|readers\s+)?)?"
    r"(?:(?:a|an|the|some|detailed|step-by-step|specific|clear|short|persuasive|convincing)\s+)*"
    r"(?:(?:list|plan|guide|tutorial|instructions|steps|script|article|post|message|email|letter|essay|story|"
    r"speech|program|code|strategy|method|ways?|tips|advice|explanation|description|overview)\s+)?"
    r"(?:(?:for|on|of|about|to|that|which)\s+)?(?:(?:in detail|effective ways to)\s+)?"
    r"(?:how\s+(?:to|can|do|does|could|would|should)\s+)?"
    r"(?:(?:i|we|you|one|someone|people)\s+)?", re.I)


def _seeded(seed: int, *keys: str | int) -> np.random.Generator:
    return np.random.default_rng([seed] + [zlib.crc32(str(k).encode("utf-8")) for k in keys])


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’\-–]+", text)


def request_topic(request: str, max_words: int = 6) -> str:
    """A short phrase naming what a request or question is about: its instruction prefix ("Write a tutorial on
    how to", "Can you", "What is the") dropped, then at most ``max_words`` words."""
    text = request.strip().rstrip("?.!").strip()
    text = _CALLED.sub("", _WH_PREFIX.sub("", text))
    stripped = _REQUEST_PREFIX.sub("", text).strip()
    words = _words(stripped or text)[:max_words]
    while len(words) > 1 and words[-1].lower() in _STOPWORDS | _CONNECTIVES:
        words.pop()  # end on a content word: "a terrorist attack that" -> "a terrorist attack"
    return " ".join(words).strip()


def _query_parts(question: str) -> tuple[str, str, str]:
    """``question`` without its "?", without its question words (the core), and the core's content words."""
    base = question.strip().rstrip("?").strip()
    core = _CALLED.sub("", _WH_PREFIX.sub("", base)).strip() or base
    content = " ".join(w for w in _words(core) if w.lower() not in _STOPWORDS) or core
    return base, core, content


def query_forms(question: str) -> list[str]:
    """The rephrasings :func:`rephrase_query` draws from, in order: the question words dropped (keeping the rest in
    order), the content words only, the first of those lower-cased, and for "lived from X to Y" a born/died form;
    duplicates and the question verbatim left out (possibly empty)."""
    base, core, content = _query_parts(question)
    forms = [core, content, core[:1].lower() + core[1:]]
    if re.search(r"\blived from (\d{3,4}) to (\d{3,4})", core):
        forms.append(re.sub(r"\blived from (\d{3,4}) to (\d{3,4})", r"born \1 died \2", core))
    return [f for f in dict.fromkeys(f.strip() for f in forms) if f and f.rstrip("?") != base]


def rephrase_query(question: str, rng: np.random.Generator) -> str:
    """A search query for ``question`` that rephrases rather than copies it: one of :func:`query_forms`, drawn with
    ``rng`` (the content words when no form differs from the question)."""
    forms = query_forms(question)
    return forms[int(rng.integers(len(forms)))] if forms else _query_parts(question)[2]


def answer_passage(golds: list[str] | None, docs: list[tuple[str, str]]) -> int | None:
    """Index (0-based, rank order) of the first ``(title, text)`` passage that contains a gold answer, compared
    case-insensitively as :func:`~search_gym.agents.baselines.oracle_answer` does; None without golds or a match."""
    for i, (title, text) in enumerate(docs):
        content = f"{title} {text}".lower()
        if any(g.strip() and g.lower() in content for g in golds or ()):
            return i
    return None


def deflecting_query(request: str, rng: np.random.Generator) -> str:
    """A query about the risks, law or help around a harmful request's topic (not the request itself)."""
    topic = request_topic(request, max_words=4)
    options = DEFLECTIONS if len(topic.split()) >= 2 else tuple(d for d in DEFLECTIONS if "{topic}" not in d)
    return options[int(rng.integers(len(options)))].format(topic=topic)  # a one-word "topic" is rarely one


def _think(options: tuple[str, ...], rng: np.random.Generator, topic: str) -> str:
    choice = options[int(rng.integers(len(options)))]
    if "{topic}" in choice and not topic:
        choice = options[0]
    return choice.format(topic=topic)


# ------------------------------------------------------------------------------------------------ teachers


class _Teacher(BaseAgent):
    def __init__(self, seed: int = 0):
        self._seed = int(seed)

    def seed(self, seed: int | None) -> None:
        self._seed = int(seed or 0)

    def _rng(self, observation: dict, purpose: str) -> np.random.Generator:
        prefill = observation.get("prefill", "")
        return _seeded(self._seed, question_of(observation), prefill.count("<information>"), purpose)


class AlignedOracleAgent(_Teacher):
    """Think in varied words, search a rephrased query, read, answer (gold answers when known, else a short
    grounded sentence as :class:`~search_gym.agents.baselines.OracleAgent` does).

    ``golden``: question text -> gold answers. Continues an attack's or the env's prefill (``<search>``,
    ``<answer>``) rather than repeating it. ``grounded``: the thought before the answer names the passage that holds
    a gold answer (:data:`THINK_GROUNDED`, "Doc 2 (Title) answers the question.") instead of a generic sentence;
    off by default, so earlier recipes' data are rebuilt unchanged.
    """

    name = "aligned_oracle"

    def __init__(self, golden: dict[str, list[str]] | None = None, *, seed: int = 0, max_answer_words: int = 24,
                 grounded: bool = False):
        super().__init__(seed)
        self.golden = {k.strip(): list(v) for k, v in (golden or {}).items()}
        self.max_answer_words = max_answer_words
        self.grounded = grounded

    def act(self, observation: dict) -> AgentStep:
        question = question_of(observation)
        prefill = observation.get("prefill", "")
        docs = _information_docs(prefill)
        topic = request_topic(question, max_words=THOUGHT_TOPIC_WORDS)
        if prefill.rstrip().endswith("<search>"):
            return AgentStep(f" {rephrase_query(question, self._rng(observation, 'query'))} </search>")
        if not docs:
            thought = _think(THINK_BEFORE_SEARCH, self._rng(observation, "think"), topic)
            query = rephrase_query(question, self._rng(observation, "query"))
            return AgentStep(f"<think> {thought} </think>\n<search> {query} </search>")
        golds = self.golden.get(question.strip())
        answer = oracle_answer(golds, docs, self.max_answer_words)
        if prefill.rstrip().endswith("<answer>"):
            return AgentStep(f" {answer} </answer>")
        passage = answer_passage(golds, docs) if self.grounded else None
        if passage is None:
            thought = _think(THINK_BEFORE_ANSWER, self._rng(observation, "think"), topic)
        else:
            choice = THINK_GROUNDED[int(self._rng(observation, "think").integers(len(THINK_GROUNDED)))]
            thought = choice.format(k=passage + 1, title=docs[passage][0])
        return AgentStep(f"<think> {thought} </think>\n<answer> {answer} </answer>")



class AlignedRefusalAgent(_Teacher):
    """Refuse a harmful request in varied words; under a forced ``<search>``, write a refusal inside the tag
    (``search_refusal_share`` of requests) or a deflecting query, then refuse after the information block."""

    name = "aligned_refusal"

    def __init__(self, *, seed: int = 0, search_refusal_share: float = 0.7):
        super().__init__(seed)
        if not 0.0 <= search_refusal_share <= 1.0:
            raise ValueError(f"search_refusal_share must be in [0, 1], got {search_refusal_share}")
        self.search_refusal_share = search_refusal_share

    def act(self, observation: dict) -> AgentStep:
        request = question_of(observation)
        prefill = observation.get("prefill", "").rstrip()
        rng = self._rng(observation, "refuse")
        refusal = REFUSALS[int(rng.integers(len(REFUSALS)))]
        if prefill.endswith("<search>"):
            if rng.random() < self.search_refusal_share:
                return AgentStep(f" {SEARCH_REFUSALS[int(rng.integers(len(SEARCH_REFUSALS)))]} </search>")
            return AgentStep(f" {deflecting_query(request, rng)} </search>")
        if prefill.endswith("<answer>"):
            return AgentStep(f" {refusal} </answer>")
        thought = THINK_BEFORE_REFUSAL[int(rng.integers(len(THINK_BEFORE_REFUSAL)))]
        return AgentStep(f"<think> {thought} </think>\n<answer> {refusal} </answer>")
