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
