"""Model-free baseline agents for tests, benchmarks and demos."""

from __future__ import annotations

import json
import re

import numpy as np

from search_gym.agents.base import AgentStep, BaseAgent

_QUESTION = re.compile(r"Question:\s*(.*?)\s*$", re.DOTALL)
_FIRST_DOC = re.compile(r"Doc 1\(Title: (.*?)\) ")


def question_of(observation: dict) -> str:
    """The question inside the user prompt (after the templates' ``Question:``), else the whole prompt."""
    user = [m["content"] for m in observation["messages"] if m["role"] == "user"]
    text = user[0] if user else ""
    match = _QUESTION.search(text)
    return (match.group(1) if match else text).strip()


def _top_title(information: str) -> str | None:
    match = _FIRST_DOC.search(information)
    return match.group(1).strip().strip('"').strip() if match else None


class ScriptedAgent(BaseAgent):
    """Search the question verbatim, then answer with the title of the top retrieved passage.

    Works in both protocols and continues an attack's prefill (``"<search>"`` or ``"<answer>"``) rather than
    repeating it. On the embedded QA set this is a strong retrieval-only baseline: most questions ask for the
    article a description names.
    """

    name = "scripted"

    def act(self, observation: dict) -> AgentStep:
        question = question_of(observation)
        prefill = observation.get("prefill", "")
        messages = observation["messages"]
        if _is_tool_prompt(messages):
            if messages[-1]["role"] == "tool":
                return AgentStep(f"<answer> {_top_title(messages[-1]['content']) or question} </answer>")
            call = json.dumps({"name": "search", "arguments": {"query": question}})
            return AgentStep(f"<tool_call>{call}</tool_call>")
        info_start = prefill.rfind("<information>")
        title = _top_title(prefill[info_start:]) if info_start >= 0 else None
        tail = prefill.rstrip()
        if tail.endswith("<search>"):
            return AgentStep(f" {question} </search>")
        if tail.endswith("<answer>"):
            return AgentStep(f" {title or question} </answer>")
        if title is None:
            return AgentStep(f"<think> I need to search for this. </think>\n<search> {question} </search>")
        return AgentStep(f"<think> The top document answers it. </think>\n<answer> {title} </answer>")


def _is_tool_prompt(messages) -> bool:
    """Tool-call protocol: the prompt names the `search` tool, or a tool already answered."""
    return any(m["role"] == "tool" for m in messages) or "`search` tool" in messages[0]["content"]


class RandomAgent(BaseAgent):
    """Seeded random behaviour: searches random words of the question, answers random words, or writes noise."""

    name = "random"

    def __init__(self, seed: int | None = 0):
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, observation: dict) -> AgentStep:
        words = question_of(observation).split() or ["wikipedia"]
        pick = lambda n: " ".join(self.rng.choice(words, size=min(n, len(words)), replace=False))  # noqa: E731
        roll = self.rng.random()
        if roll < 0.5:
            return AgentStep(f"<search> {pick(4)} </search>")
        if roll < 0.8:
            return AgentStep(f"<answer> {pick(2)} </answer>")
        noise = "".join(self.rng.choice(list("abc <>/search answer"), size=int(self.rng.integers(0, 40))))
        return AgentStep(noise)


_DOC_LINE = re.compile(r"Doc \d+\(Title: (.*?)\) (.*)")
_REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot help with this request because it could cause harm.",
    "I'm sorry, I can't assist with that request.",
    "I can't provide help with that. It could be used to hurt people.",
)


def _information_docs(prefill: str) -> list[tuple[str, str]]:
    """``(title, text)`` of the passages in the last ``<information>`` block of a transcript."""
    start = prefill.rfind("<information>")
    if start < 0:
        return []
    block = prefill[start + len("<information>"):].split("</information>", 1)[0]
    docs = []
    for line in block.splitlines():
        match = _DOC_LINE.match(line.strip())
        if match:
            docs.append((match.group(1).strip().strip('"').strip(), match.group(2).strip()))
    return docs


class OracleAgent(BaseAgent):
    """A teacher for the SFT warm start: think, search the question, read, answer.

    ``golden``: question text -> gold answers. After the first search it answers with the first gold answer that
    the retrieved passages contain (as the passages spell it); when none does it answers with the top passage's
    title (trajectories are filtered on correctness afterwards). For a request without gold answers (benign-but-
    edgy prompts) it answers with :func:`short_grounded_answer`: a whole short sentence of the passages, so the
    turn fits a 64-token generation budget and ends at a sentence end: helpful, grounded, not a refusal.
    """

    name = "oracle"

    def __init__(self, golden: dict[str, list[str]] | None = None, max_answer_words: int = 24):
        self.golden = {k.strip(): list(v) for k, v in (golden or {}).items()}
        self.max_answer_words = max_answer_words

    def act(self, observation: dict) -> AgentStep:
        question = question_of(observation)
        prefill = observation.get("prefill", "")
        docs = _information_docs(prefill)
        if prefill.rstrip().endswith("<search>"):
            return AgentStep(f" {question} </search>")
        if not docs:
            return AgentStep(f"<think> I need to search for information about this. </think>\n<search> {question} </search>")
        answer = self._answer(question, docs)
        if prefill.rstrip().endswith("<answer>"):
            return AgentStep(f" {answer} </answer>")
        return AgentStep(f"<think> The documents answer the question. </think>\n<answer> {answer} </answer>")

    def _answer(self, question: str, docs: list[tuple[str, str]]) -> str:
        return oracle_answer(self.golden.get(question.strip()), docs, self.max_answer_words)


def oracle_answer(golds: list[str] | None, docs: list[tuple[str, str]], max_words: int = 24) -> str:
    """The teachers' answer after reading ``docs``: the first gold answer the passages contain (as the passages spell
    it), else the top passage's title; without gold answers, :func:`short_grounded_answer`."""
    if golds:
        text = " ".join(f"{t} {x}" for t, x in docs).lower()
        for gold in golds:
            if gold.strip() and gold.lower() in text:
                return gold
        return docs[0][0]
    return short_grounded_answer(docs, max_words)


def short_grounded_answer(docs: list[tuple[str, str]], max_words: int = 24) -> str:
    """The first passage (in rank order) whose opening sentence has at most ``max_words`` words gives that
    sentence; when every opening sentence is longer, the top passage's opening clause (cut at the last comma or
    semicolon within ``max_words`` words) ends with a full stop. A student copying the answer then learns to close
    it at a sentence end, never in the middle of a long sentence it cannot finish within its turn."""
    openings = [re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0] for _, text in docs if text.strip()]
    for sentence in openings:
        if len(sentence.split()) <= max_words:
            return sentence
    if not openings:
        return docs[0][0] if docs else ""
    words = openings[0].split()[:max_words]
    cuts = [i for i, w in enumerate(words) if w.endswith((",", ";", ":")) and i >= 5]
    kept = words[: cuts[-1] + 1] if cuts else words
    return " ".join(kept).rstrip(",;:") + "."


class RefusalAgent(BaseAgent):
    """Refuses every request inside ``<answer>`` tags after a short thought (the "aligned" SFT target on harmful
    prompts); the wording is one of a few refusals, picked deterministically from the request."""

    name = "refusal"

    def act(self, observation: dict) -> AgentStep:
        import zlib

        request = question_of(observation)
        refusal = _REFUSALS[zlib.crc32(request.encode("utf-8")) % len(_REFUSALS)]
        if observation.get("prefill", "").rstrip().endswith("<answer>"):
            return AgentStep(f" {refusal} </answer>")
        return AgentStep(f"<think> This request asks for something harmful. I will not help with it. </think>\n"
                         f"<answer> {refusal} </answer>")
