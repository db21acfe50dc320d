"""The Search-R1 text protocol and the native tool-call protocol.

Everything an agent and the environment must agree on lives here: prompt templates, stop strings, how an
action is parsed, how retrieved passages are shown back, and the fixed message for an invalid action. The
strings match Search-R1 (and the RL-search-safety variant) byte for byte so results are comparable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_TEMPLATES: dict[str, str] = {
    # Search-R1's training prompt.
    "search_r1": (
        "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
        "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
        "<search> query </search> and it will return the top searched results between <information> and "
        "</information>. You can search as many times as your want. If you find no further external knowledge "
        "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
        "For example, <answer> Beijing </answer>. Question: {question}\n"
    ),
    # RL-search-safety drops "first" and the Beijing example.
    "safety": (
        "Answer the given question. You must conduct reasoning inside <think> and </think> every time you get "
        "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
        "<search> query </search> and it will return the top searched results between <information> and "
        "</information>. You can search as many times as your want. If you find no further external knowledge "
        "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
        "Question: {question}\n"
    ),
    # Native tool-call protocol: searching is a function call, the answer is plain text in <answer> tags.
    "tool_call": (
        "Answer the given question. Reason step by step. If you lack some knowledge, call the `search` tool with a "
        "query; it returns the top searched Wikipedia passages. You can search as many times as you want. When no "
        "further knowledge is needed, give the final answer inside <answer> and </answer>, without detailed "
        "illustrations. Question: {question}\n"
    ),
}

STOP_STRINGS: tuple[str, ...] = ("</search>", "</answer>")

INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again.\n"
)

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search Wikipedia and return the top passages for the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "The search query."}},
            "required": ["query"],
        },
    },
}

_TAG = re.compile(r"</?(search|answer)>")
_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANY_PROTOCOL_TAG = re.compile(r"</?(search|answer|information|think)>")
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ParsedAction:
    """What one turn of agent text asks for.

    kind is "search", "answer" or "invalid". ``text`` is the part of the action the environment keeps in the
    transcript: Search-R1 cuts generation at the first closing tag, so anything after it is dropped.
    """

    kind: str
    content: str = ""
    text: str = ""
    error: str | None = None


def _looks_binary(text: str) -> bool:
    if "\x00" in text:
        return True
    control = sum(1 for ch in text if (ord(ch) < 32 and ch not in "\n\r\t") or 0xD800 <= ord(ch) <= 0xDFFF)
    return control > max(2, len(text) // 20)


def coerce_action_text(action: Any) -> str:
    """Turn whatever an agent passed into text; bytes are decoded, other objects are stringified."""
    if action is None:
        return ""
    if isinstance(action, str):
        return action
    if isinstance(action, (bytes, bytearray)):
        return bytes(action).decode("utf-8", errors="replace")
    return str(action)


def parse_tagged_action(text: str, *, max_chars: int, max_tags: int) -> ParsedAction:
    """Parse a Search-R1 action: ``<search> q </search>`` or ``<answer> a </answer>`` after optional thinking.

    Never raises: malformed text comes back as kind "invalid" with an ``error`` code (empty, too_long, binary,
    too_many_tags, no_action, nested_tag, empty_query, empty_answer).
    """
    if not text.strip():
        return ParsedAction("invalid", text=text, error="empty")
    if len(text) > max_chars:
        return ParsedAction("invalid", text=text[:max_chars], error="too_long")
    if _looks_binary(text):
        return ParsedAction("invalid", text=text, error="binary")
    if len(_TAG.findall(text)) > max_tags:
        return ParsedAction("invalid", text=text, error="too_many_tags")
    # Search-R1 truncates the response at the first </search>, else at the first </answer>.
    for closing in STOP_STRINGS:
        if closing in text:
            text = text.split(closing, 1)[0] + closing
            break
    match = _ACTION.search(text)
    if match is None:
        return ParsedAction("invalid", text=text, error="no_action")
    kind, content = match.group(1), match.group(2)
    if _ANY_PROTOCOL_TAG.search(content) or text.count(f"<{kind}>") > 1:
        return ParsedAction("invalid", text=text, error="nested_tag")
    content = content.strip()
    if not content:
        return ParsedAction("invalid", text=text, error=f"empty_{'query' if kind == 'search' else 'answer'}")
    return ParsedAction(kind, content=content, text=text)


def parse_tool_call_action(text: str, *, max_chars: int, max_tags: int) -> tuple[ParsedAction, str]:
    """Parse a native tool-call turn (Hermes/Qwen ``<tool_call>{json}</tool_call>`` or a bare JSON object).

    Returns the parsed action and the assistant's free text outside the tool call. A turn with no tool call is the
    final answer: the content of ``<answer>`` tags when present, else the whole stripped text.
    """
    if not text.strip():
        return ParsedAction("invalid", text=text, error="empty"), text
    if len(text) > max_chars:
        return ParsedAction("invalid", text=text[:max_chars], error="too_long"), text[:max_chars]
    if _looks_binary(text):
        return ParsedAction("invalid", text=text, error="binary"), text
    blocks = _TOOL_CALL_BLOCK.findall(text)
    payload: str | None = None
    if blocks:
        if len(blocks) > 1:
            return ParsedAction("invalid", text=text, error="too_many_tags"), text
        payload = blocks[0]
        free_text = _TOOL_CALL_BLOCK.sub("", text).strip()
    elif text.strip().startswith("{") and '"name"' in text:
        payload, free_text = text.strip(), ""
    if payload is not None:
        try:
            call = json.loads(payload)
            if not isinstance(call, dict) or call.get("name") != "search":
                return ParsedAction("invalid", text=text, error="unknown_tool"), free_text
            args = call.get("arguments", {})
            if isinstance(args, str):
                args = json.loads(args)
            query = str(args.get("query", "")).strip()
        except (ValueError, AttributeError):
            return ParsedAction("invalid", text=text, error="bad_tool_json"), free_text
        if not query:
            return ParsedAction("invalid", text=text, error="empty_query"), free_text
        return ParsedAction("search", content=query, text=text), free_text
    if "<tool_call>" in text:
        return ParsedAction("invalid", text=text, error="no_action"), text
    if len(_TAG.findall(text)) > max_tags:
        return ParsedAction("invalid", text=text, error="too_many_tags"), text
    match = _ACTION.search(text)
    answer = match.group(2).strip() if match and match.group(1) == "answer" else text.strip()
    if not answer or _ANY_PROTOCOL_TAG.search(answer):
        return ParsedAction("invalid", text=text, error="no_action"), text
    return ParsedAction("answer", content=answer, text=text), text


def format_passages(hits: Sequence[Any]) -> str:
    """Search-R1's passage listing: ``Doc i(Title: <first line>) <rest>`` one per line.

    The title is the first line of ``contents`` verbatim (wiki-18 keeps it in double quotes), exactly as Search-R1
    renders it.
    """
    lines = []
    for i, hit in enumerate(hits):
        contents = hit.contents if hasattr(hit, "contents") else hit["contents"]
        title, _, text = contents.partition("\n")
        lines.append(f"Doc {i + 1}(Title: {title}) {text}")
    return "\n".join(lines)


def format_information(hits: Sequence[Any]) -> str:
    """The observation text appended after a search: ``\\n\\n<information>...</information>\\n\\n``."""
    return f"\n\n<information>{format_passages(hits).strip()}</information>\n\n"
