"""The Search-R1 text protocol and the native tool-call protocol.

Everything an agent and the environment must agree on lives here: prompt templates, stop strings, how an
action is parsed, how retrieved passages are shown back, and the fixed message for an invalid action. The prompt
template, the information block and the invalid-action message equal Search-R1's strings byte for byte
(``tests/test_parity.py`` compares them with excerpts of its source); the RL-search-safety template is the variant
without "first" and the Beijing example.

Two parsers for the tags protocol (``SearchEnv(parse_mode=...)``):

- :func:`parse_search_r1_action` (``"search_r1"``) is Search-R1's ``postprocess_predictions`` after its
  ``_postprocess_responses`` cut: the text is cut after the first ``</search>`` (else the first ``</answer>``),
  the first ``<search>...</search>`` or ``<answer>...</answer>`` pair is the action and its stripped content is the
  query or answer, empty or not. Nothing else is checked.
- :func:`parse_tagged_action` (``"strict"``, the default) also refuses empty, over-long, binary-looking,
  tag-spam (counted before the cut), nested-tag and empty-content actions, each with an error code.

One reader of tool calls (:func:`find_tool_calls`) serves the env's :func:`parse_tool_call_action` and the agents'
:func:`parse_tool_calls` (the calls of a model's text in OpenAI form).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search_gym.data.text import coerce_action_text, is_text_action, valid_unicode  # noqa: F401  (re-exported)

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
#: Where a Hermes/Qwen tool call ends: agents also stop there on tool-call observations.
TOOL_CALL_STOP = "</tool_call>"

#: Parsing (and turn-budget) rules of the tags protocol: see the module docstring and ``SearchEnv``.
PARSE_MODES: tuple[str, ...] = ("strict", "search_r1")

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
    control = sum(1 for ch in text if (ord(ch) < 32 and ch not in "\n\r\t") or ch == "\ufffd")
    return control > max(2, len(text) // 20)


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
    text = cut_at_first_closing_tag(text)
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


def cut_at_first_closing_tag(text: str) -> str:
    """Search-R1's ``_postprocess_responses``: keep the text up to the first ``</search>`` if there is one, else up to
    the first ``</answer>``, closing tag included; text without either is kept whole."""
    for closing in STOP_STRINGS:
        if closing in text:
            return text.split(closing, 1)[0] + closing
    return text


def parse_search_r1_action(text: str, *, max_chars: int | None = None, max_tags: int | None = None) -> ParsedAction:
    """Parse a turn exactly as Search-R1 does (``parse_mode="search_r1"``).

    The text is cut after its first closing tag (:func:`cut_at_first_closing_tag`), then the first
    ``<search>...</search>`` or ``<answer>...</answer>`` (regex ``<(search|answer)>(.*?)</\1>``, DOTALL) is the action
    and its stripped content the query or answer: ``<search> </search>`` searches ``''`` and ``<answer></answer>``
    answers ``''``; tags inside the content are part of it. No match is invalid (error ``empty`` for blank text,
    else ``no_action``). ``max_chars`` / ``max_tags`` (None = no limit, Search-R1's behaviour) are optional guards
    counted on the text after the cut (errors ``too_long``, ``too_many_tags``). Never raises.
    """
    text = cut_at_first_closing_tag(text)
    if max_chars is not None and len(text) > max_chars:
        return ParsedAction("invalid", text=text[:max_chars], error="too_long")
    if max_tags is not None and len(_TAG.findall(text)) > max_tags:
        return ParsedAction("invalid", text=text, error="too_many_tags")
    match = _ACTION.search(text)
    if match is None:
        return ParsedAction("invalid", text=text, error="empty" if not text.strip() else "no_action")
    return ParsedAction(match.group(1), content=match.group(2).strip(), text=text)


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
    payloads, free_text = find_tool_calls(text)
    if len(payloads) > 1:
        return ParsedAction("invalid", text=text, error="too_many_tags"), text
    if payloads:
        try:
            call = json.loads(payloads[0])
        except ValueError:
            return ParsedAction("invalid", text=text, error="bad_tool_json"), free_text
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]  # OpenAI's {"type": "function", "function": {"name", "arguments"}} form
        if not isinstance(call, dict) or call.get("name") != "search":
            return ParsedAction("invalid", text=text, error="unknown_tool"), free_text
        query = tool_call_query(_call_arguments(call))
        if query is None:
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


def tool_call_query(arguments: Any) -> str | None:
    """The stripped ``query`` of a search call's arguments: a dict or its JSON string (OpenAI sends a string).

    None when the arguments are not a JSON object or the query is not text (a number is read as its digits).
    """
    if isinstance(arguments, str):
        arguments = tool_call_arguments(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        return None
    query = arguments.get("query", "")
    if isinstance(query, bool) or not isinstance(query, (str, int, float)):
        return None
    return valid_unicode(str(query)).strip()


def find_tool_calls(text: str) -> tuple[list[str], str]:
    """The tool-call payloads of a turn and its free text outside them: the text inside each Hermes/Qwen
    ``<tool_call>...</tool_call>`` block (free text: the rest, stripped), or the whole stripped text when it is one
    bare JSON object with a ``"name"`` (free text ``""``); no payload leaves the text as it is."""
    blocks = _TOOL_CALL_BLOCK.findall(text)
    if blocks:
        return blocks, _TOOL_CALL_BLOCK.sub("", text).strip()
    if text.strip().startswith("{") and '"name"' in text:
        return [text.strip()], ""
    return [], text


def _call_arguments(call: dict) -> Any:
    """A decoded call's arguments (``"parameters"``, Llama 3.1's key, is read like ``"arguments"``)."""
    return call.get("arguments", call.get("parameters", {}))


def tool_call_arguments(arguments: Any) -> Any:
    """Tool-call arguments as a dict where possible (a JSON string is decoded; anything unreadable is kept)."""
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except ValueError:
            return arguments
        return decoded if isinstance(decoded, dict) else arguments
    return arguments


def tool_call_arguments_json(arguments: Any) -> str:
    """Tool-call arguments as the JSON string OpenAI messages carry (a string is kept as given)."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps({} if arguments is None else arguments, ensure_ascii=False)


def parse_tool_calls(text: str, *, turn: int = 0) -> list[dict]:
    """The tool calls in a model's text, in OpenAI form
    (``{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}``).

    Reads the payloads :func:`find_tool_calls` finds (the two forms the env accepts). Payloads that are not a JSON
    object with a string ``name`` are skipped. Ids are ``call_<turn>`` (then ``call_<turn>_<j>`` for further calls).
    """
    calls: list[dict] = []
    for payload in find_tool_calls(text)[0]:
        try:
            call = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        # a JSON string is re-encoded as given by the model's dict; an unreadable string is kept verbatim
        arguments = tool_call_arguments_json(tool_call_arguments(_call_arguments(call)))
        j = len(calls)
        calls.append({"id": f"call_{turn}" + (f"_{j}" if j else ""), "type": "function",
                      "function": {"name": call["name"], "arguments": arguments}})
    return calls


def tool_call_id(turn: int) -> str:
    """The id of the env's tool call on 0-based ``turn``: ``"call_<turn>"``, unique within an episode."""
    return f"call_{turn}"


def assistant_tool_call_message(call_id: str, query: str, content: str = "") -> dict[str, Any]:
    """An OpenAI chat assistant message that calls ``search``; ``arguments`` is a JSON string, as OpenAI sends it."""
    call = {"id": call_id, "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"query": query}, ensure_ascii=False)}}
    return {"role": "assistant", "content": content, "tool_calls": [call]}


def tool_result_message(call_id: str, content: str) -> dict[str, Any]:
    """The OpenAI chat ``tool`` message answering the call ``call_id``."""
    return {"role": "tool", "tool_call_id": call_id, "name": "search", "content": content}


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
