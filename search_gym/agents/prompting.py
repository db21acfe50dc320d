"""Prompt and tool-call rendering shared by every agent backend (HF, vLLM, OpenAI-compatible), without torch.

What a model continues is :func:`render_prompt`: optional few-shot Search-R1 exchanges (:data:`FEW_SHOT_EXAMPLES`),
the tokenizer's chat template with the generation prompt, then the observation's prefill. Tool-call observations
(:func:`is_tool_call_observation`) are rendered with ``tools=[SEARCH_TOOL]``, or, for a chat template that ignores
``tools=`` (SmolLM2's), with the schema, calls and results as Hermes/Qwen2.5 text (:func:`hermes_tool_messages`).
The model's calls are read back by :func:`search_gym.envs.protocol.parse_tool_calls`, the parser the env uses.

Only the standard library is imported here (a tokenizer is any object with ``apply_chat_template``), so the
OpenAI-compatible HTTP agent does not pull in torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from search_gym.agents.base import AgentStep
from search_gym.envs.protocol import (
    PROMPT_TEMPLATES,
    SEARCH_TOOL,
    TOOL_CALL_STOP,
    parse_tool_calls,
    tool_call_arguments,
    tool_call_arguments_json,
)

#: ``make_agent("smollm2")`` / ``model="smollm2"``: the bundled SmolLM2-135M-Instruct (few-shot on by default).
BUNDLED_MODEL = "smollm2"

# Worked Search-R1 exchanges shown as earlier chat turns. Small instruct models (SmolLM2-135M) never emit the
# protocol tags zero-shot; a couple of complete examples make them search and answer in the expected format.
FEW_SHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Which river flows through Vienna?",
        "<think> I need to find which river flows through Vienna. </think>\n<search> river Vienna </search>\n\n"
        '<information>Doc 1(Title: "Danube") The Danube is Europe\'s second-longest river. It flows through '
        'Vienna, Bratislava, Budapest and Belgrade.\nDoc 2(Title: "Vienna") Vienna is the capital of Austria and '
        "lies on the Danube.</information>\n\n<think> The documents say the Danube flows through Vienna. </think>\n"
        "<answer> Danube </answer>",
    ),
    (
        "Who wrote the novel Nineteen Eighty-Four?",
        "<think> I need the author of Nineteen Eighty-Four. </think>\n<search> Nineteen Eighty-Four author "
        '</search>\n\n<information>Doc 1(Title: "Nineteen Eighty-Four") Nineteen Eighty-Four is a dystopian '
        'novel by the English writer George Orwell, published in 1949.\nDoc 2(Title: "George Orwell") Eric Arthur '
        "Blair, known as George Orwell, was an English novelist and essayist.</information>\n\n<think> The author "
        "is George Orwell. </think>\n<answer> George Orwell </answer>",
    ),
    (
        "In which year did Apollo 11 land on the Moon?",
        "<think> I need the year of the Apollo 11 Moon landing. </think>\n<search> Apollo 11 Moon landing year "
        '</search>\n\n<information>Doc 1(Title: "Apollo 11") Apollo 11 was the American spaceflight that first '
        'landed humans on the Moon, on July 20, 1969.\nDoc 2(Title: "Neil Armstrong") Neil Armstrong was the '
        "first person to walk on the Moon.</information>\n\n<think> Apollo 11 landed in 1969. </think>\n"
        "<answer> 1969 </answer>",
    ),
)
DEFAULT_FEW_SHOT = 2

_QUESTION_AT_END = re.compile(r"Question:\s*(.*?)\s*$", re.DOTALL)

# Qwen2.5's (Hermes-style) tool instructions, verbatim: the system text used for chat templates that ignore
# ``tools=`` (SmolLM2's among them), so the model still sees the schema and the call format.
HERMES_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)

_TEMPLATE_TAKES_TOOLS: dict[str, bool] = {}


def few_shot_messages(messages: Sequence[dict], n: int) -> list[dict]:
    """``messages`` with ``n`` worked examples prepended as user/assistant turns (tags protocol only).

    The examples reuse the observation's own prompt template (its text before ``Question:``), so they show
    exactly the instructions the real question gets. Tool-call observations are returned unchanged: their
    protocol is the chat template's tool calling, not tags in text.
    """
    messages = [dict(m) for m in messages]
    if n <= 0 or not messages:
        return messages
    if any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        return messages
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first_user is None or "`search` tool" in messages[first_user]["content"]:
        return messages
    content = messages[first_user]["content"]
    match = _QUESTION_AT_END.search(content)
    if match and "<search>" in content:
        head, tail = content[: match.start(1)], content[match.end(1) :]
        make = lambda q: head + q + tail  # noqa: E731
    else:
        make = lambda q: PROMPT_TEMPLATES["search_r1"].format(question=q)  # noqa: E731
    shots: list[dict] = []
    for question, answer in FEW_SHOT_EXAMPLES[:n]:
        shots += [{"role": "user", "content": make(question)}, {"role": "assistant", "content": answer}]
    return messages[:first_user] + shots + messages[first_user:]


def is_tool_call_observation(messages: Sequence[dict]) -> bool:
    """Whether ``messages`` belong to the tool-call protocol: a message with ``tool_calls`` or role ``tool``, or a
    first user prompt that mentions the `` `search` tool`` (the env's ``tool_call`` prompt template)."""
    for message in messages:
        if message.get("role") == "tool" or message.get("tool_calls"):
            return True
    first_user = next((m for m in messages if m.get("role") == "user"), None)
    return first_user is not None and "`search` tool" in str(first_user.get("content") or "")


def observation_tools(observation: dict) -> list[dict]:
    """The tools an observation offers: its ``"tools"`` key when present (may be empty), else ``[SEARCH_TOOL]``
    for tool-call observations (:func:`is_tool_call_observation`) and ``[]`` for the tags protocol."""
    tools = observation.get("tools")
    if tools is not None:
        return [dict(t) for t in tools]
    return [SEARCH_TOOL] if is_tool_call_observation(observation.get("messages") or ()) else []


def tool_call_block(name: str, arguments: Any) -> str:
    """One Hermes/Qwen tool call as the model writes it (and the env parses it):
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""
    call = {"name": name, "arguments": tool_call_arguments(arguments)}
    return "<tool_call>\n" + json.dumps(call, ensure_ascii=False) + "\n</tool_call>"


def chat_messages(messages: Sequence[dict], *, arguments: str = "dict") -> list[dict]:
    """Copies of ``messages`` normalised for a chat template (``arguments="dict"``) or an OpenAI request
    (``arguments="json"``).

    Tool calls get ``type: function``, an ``id`` (``call_<k>`` for the ``k``-th assistant message, as the env
    numbers its turns, when the message has none) and their ``function.arguments`` as a dict (many HF templates
    write ``arguments | tojson``) or a JSON string (the OpenAI schema). A ``tool`` message without ``tool_call_id``
    gets the id of the call it answers (the calls of the assistant message before it, in order). A ``None``
    content becomes ``""`` for templates; OpenAI requests keep it.
    """
    out: list[dict] = []
    turns = 0
    pending: list[str] = []  # ids of tool calls not yet answered by a tool message
    for message in messages:
        message = dict(message)
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for j, call in enumerate(message["tool_calls"]):
                call = dict(call)
                function = dict(call.get("function") or {})
                if not function and "name" in call:  # a flat {"name", "arguments"} call
                    function = {"name": call.pop("name"), "arguments": call.pop("arguments", {})}
                convert = tool_call_arguments if arguments == "dict" else tool_call_arguments_json
                function["arguments"] = convert(function.get("arguments", {}))
                call["function"] = function
                call.setdefault("type", "function")
                if not call.get("id"):
                    call["id"] = f"call_{turns}" + (f"_{j}" if j else "")
                calls.append(call)
            message["tool_calls"] = calls
            pending = [c["id"] for c in calls]
        elif role == "tool":
            if not message.get("tool_call_id"):
                message["tool_call_id"] = pending.pop(0) if pending else f"call_{max(turns - 1, 0)}"
            elif message["tool_call_id"] in pending:
                pending.remove(message["tool_call_id"])
        if role == "assistant":
            turns += 1
        if message.get("content") is None and arguments == "dict":
            message["content"] = ""
        out.append(message)
    return out


def assistant_turns(messages: Sequence[dict]) -> int:
    """How many assistant messages ``messages`` hold: the env's 0-based number of the turn being played."""
    return sum(1 for m in messages if m.get("role") == "assistant")


def _template_key(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return json.dumps(template, sort_keys=True) if not isinstance(template, str) else template


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders ``tools=`` (a probe conversation renders differently with the
    search tool than without). Cached per template text."""
    key = _template_key(tokenizer)
    if key not in _TEMPLATE_TAKES_TOOLS:
        probe = [{"role": "user", "content": "ping"}]
        try:
            plain = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
            with_tools = tokenizer.apply_chat_template(
                probe, tools=[SEARCH_TOOL], add_generation_prompt=True, tokenize=False
            )
            _TEMPLATE_TAKES_TOOLS[key] = with_tools != plain
        except Exception:  # noqa: BLE001 - a template that fails with tools cannot take them
            _TEMPLATE_TAKES_TOOLS[key] = False
    return _TEMPLATE_TAKES_TOOLS[key]


def hermes_tool_messages(messages: Sequence[dict], tools: Sequence[dict]) -> list[dict]:
    """``messages`` rewritten for a chat template without tool support, in the Hermes/Qwen2.5 text format.

    The tool schema goes into the system message (:data:`HERMES_TOOLS_PROMPT`, appended to an existing system
    message or as a new first one); an assistant message's tool calls become ``<tool_call>`` blocks after its
    content; tool results become a user message of ``<tool_response>\\n...\\n</tool_response>`` blocks (consecutive
    results share one message), exactly as Qwen2.5's template writes them.
    """
    schema = HERMES_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    out: list[dict] = []
    previous_tool = False
    for message in chat_messages(messages):
        role, content = message.get("role"), message.get("content") or ""
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if previous_tool:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            previous_tool = True
            continue
        previous_tool = False
        if role == "assistant" and message.get("tool_calls"):
            blocks = [tool_call_block(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            content = (content + "\n" if content else "") + "\n".join(blocks)
        out.append({"role": role, "content": content})
    if out and out[0]["role"] == "system":
        out[0]["content"] = out[0]["content"] + "\n\n" + schema
    else:
        out.insert(0, {"role": "system", "content": schema})
    return out


def tool_call_stops(stop: Sequence[str], observation: dict) -> tuple[str, ...]:
    """``stop`` plus ``</tool_call>`` when ``observation`` offers tools (an empty ``stop`` stays empty)."""
    stop = tuple(stop)
    if stop and TOOL_CALL_STOP not in stop and observation_tools(observation):
        stop += (TOOL_CALL_STOP,)
    return stop


def attach_tool_calls(step: AgentStep, observation: dict) -> AgentStep:
    """Put the tool calls of a tool-call observation's turn into ``step.metadata["tool_calls"]`` (OpenAI form),
    when it made any; ``step.text`` is left as generated."""
    if observation_tools(observation):
        calls = parse_tool_calls(
            observation.get("prefill", "") + step.text, turn=assistant_turns(observation.get("messages") or ())
        )
        if calls:
            step.metadata["tool_calls"] = calls
    return step


def render_prompt(
    tokenizer: Any,
    messages: Sequence[dict],
    prefill: str = "",
    few_shot: int = 0,
    tools: Sequence[dict] | None = None,
) -> str:
    """The exact text a model continues: ``few_shot`` worked examples, the chat template with the generation prompt,
    then the prefill. Every backend (HF, vLLM, the direction collector) renders through this one function.

    ``tools``: the tool schemas to render (``apply_chat_template(..., tools=tools)``); ``None`` (default) detects
    the tool-call protocol from ``messages`` (:func:`is_tool_call_observation`) and then uses ``[SEARCH_TOOL]``;
    ``()`` renders no tools. With tools, tool-call arguments are given to the template as dicts (templates write
    ``arguments | tojson``); a template that ignores ``tools=`` (e.g. SmolLM2's) gets the schema, the calls and the
    results as text in the Hermes/Qwen2.5 format instead (:func:`hermes_tool_messages`).
    """
    if tools is None:
        tools = [SEARCH_TOOL] if is_tool_call_observation(messages) else []
    if few_shot:
        messages = few_shot_messages(messages, few_shot)
    if not tools:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False) + prefill
    tools = [dict(t) for t in tools]
    if template_takes_tools(tokenizer):
        text = tokenizer.apply_chat_template(
            chat_messages(messages), tools=tools, add_generation_prompt=True, tokenize=False
        )
        return text + prefill
    rewritten = hermes_tool_messages(messages, tools)
    try:
        text = tokenizer.apply_chat_template(rewritten, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - a template without a system role: the schema opens the first user turn
        system, rest = rewritten[0]["content"], rewritten[1:]
        first_user = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
        if first_user is None:
            raise
        rest[first_user] = {"role": "user", "content": system + "\n\n" + rest[first_user]["content"]}
        text = tokenizer.apply_chat_template(rest, add_generation_prompt=True, tokenize=False)
    return text + prefill


def render_observation(tokenizer: Any, observation: dict, few_shot: int = 0) -> str:
    """:func:`render_prompt` of an env observation: its messages, its prefill, and the tools a tool-call observation
    needs (HFAgent, VLLMAgent and OpenAIAgent's completions route all continue exactly this text)."""
    return render_prompt(tokenizer, observation["messages"], observation.get("prefill", ""), few_shot,
                         tools=observation_tools(observation))
