"""HFAgent: any transformers causal LM as a search agent, with token ids, logprobs, hidden states and steering.

The agent renders ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` and
appends the observation's ``prefill``; the completion continues that text (the prefill is never repeated in
``AgentStep.text``). Generation stops at ``</search>`` / ``</answer>`` (anything a final token carries past the stop
string is cut from the text) or at the tokenizer's end-of-sequence token.

Tool-call protocol (``SearchEnv(protocol="tool_call")``): an observation is a tool-call one when a message carries
``tool_calls`` or has role ``tool``, or the first user prompt mentions the `` `search` tool`` (the env's
``tool_call`` template); an observation's own ``"tools"`` key, when present, decides instead. Such observations
are rendered with ``apply_chat_template(messages, tools=[SEARCH_TOOL], ...)`` (see :func:`render_prompt`),
generation also stops at ``</tool_call>``, ``AgentStep.text`` is the model's text as written (the
``<tool_call>{...}</tool_call>`` block the env parses) and ``metadata["tool_calls"]`` holds the calls in OpenAI
form (:func:`parse_tool_calls`).

- ``logprobs``: the sampler's log-probabilities of the chosen tokens, ``log_softmax(logits / temperature)``
  (temperature 1 when greedy): what RL trainers need for importance ratios at the sampling temperature. The
  temperature is applied by the recording processor itself (generate runs at temperature 1), so the number
  recorded is exactly the distribution sampled from when ``top_p == 1``; with ``top_p < 1`` the nucleus
  renormalisation is not included. With ``min_new_tokens`` the EOS token is masked out first, as generation does.
- ``hidden``: captured by forward hooks during generation (see :mod:`search_gym.agents.hidden` for layers,
  positions and the HF off-by-one). Nothing is hooked when ``layers`` is empty (the default).
- Sampling: ``temperature=0`` is greedy; otherwise seeded multinomial sampling with ``temperature`` and
  ``top_p``. Only the sampling settings given here apply (a checkpoint's ``generation_config`` defaults such as
  top-k or repetition penalty are overridden), so runs are comparable across models.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from search_gym.agents.base import AgentStep, BaseAgent
from search_gym.agents.hidden import (
    GenerationCapture,
    assemble,
    decoder_layers,
    locate_positions,
    normalize_layers,
    normalize_positions,
    prompt_positions,
    steering,
)

from search_gym.envs.protocol import PROMPT_TEMPLATES, SEARCH_TOOL, STOP_STRINGS

BUNDLED_MODEL = "smollm2"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

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

_STOP_CRITERIA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

TOOL_CALL_STOP = "</tool_call>"
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

# Qwen2.5's (Hermes-style) tool instructions, verbatim: the system text used for chat templates that ignore
# ``tools=`` (SmolLM2's among them), so the model still sees the schema and the call format.
HERMES_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)

_TEMPLATE_TAKES_TOOLS: dict[str, bool] = {}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``"float32"``/``"bf16"``/``"fp16"``/``"auto"`` or a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _arguments_dict(arguments: Any) -> Any:
    """Tool-call arguments as a dict where possible (a JSON string is decoded; anything unreadable is kept)."""
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except ValueError:
            return arguments
        return decoded if isinstance(decoded, dict) else arguments
    return arguments


def _arguments_json(arguments: Any) -> str:
    """Tool-call arguments as the JSON string OpenAI messages carry (a string is kept as given)."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps({} if arguments is None else arguments, ensure_ascii=False)


def tool_call_block(name: str, arguments: Any) -> str:
    """One Hermes/Qwen tool call as the model writes it (and the env parses it):
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": _arguments_dict(arguments)}, ensure_ascii=False) + (
        "\n</tool_call>"
    )


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
                convert = _arguments_dict if arguments == "dict" else _arguments_json
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


def parse_tool_calls(text: str, *, turn: int = 0) -> list[dict]:
    """The tool calls in a model's text, in OpenAI form
    (``{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}``).

    Reads Hermes/Qwen ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, or the whole text when it
    is one bare JSON object with a ``"name"`` (the two forms the env accepts; ``"parameters"``, Llama 3.1's key, is
    read like ``"arguments"``). Blocks that are not a JSON object
    with a string ``name`` are skipped. Ids are ``call_<turn>`` (then ``call_<turn>_<j>`` for further calls).
    """
    payloads = _TOOL_CALL_BLOCK.findall(text)
    if not payloads and text.strip().startswith("{") and '"name"' in text:
        payloads = [text.strip()]
    calls: list[dict] = []
    for payload in payloads:
        try:
            call = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        # a JSON string is re-encoded as given by the model's dict; an unreadable string is kept verbatim
        arguments = _arguments_json(_arguments_dict(call.get("arguments", call.get("parameters", {}))))
        j = len(calls)
        calls.append(
            {
                "id": f"call_{turn}" + (f"_{j}" if j else ""),
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments},
            }
        )
    return calls


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


class _ChosenLogprobs:
    """Logits processor that applies the sampling temperature and records log_softmax(logits / T)[chosen token].

    Generation itself runs at temperature 1 with this processor scaling the scores, so the recorded numbers are the
    sampler's own (transformers applies user processors before its top-p / top-k warpers). At step t it sees the
    token chosen at step t-1 (the last column of ``input_ids``), so only the previous step's log-probabilities are
    held, one [B, V] at a time; :meth:`finish` reads the final step's with the last generated tokens.
    """

    def __init__(self, temperature: float = 1.0):
        self.temperature = float(temperature) if temperature and temperature > 0 else 1.0
        self.previous: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.values.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        if self.temperature != 1.0:
            scores = scores / self.temperature
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.values.append(self.previous.gather(1, last_tokens.reshape(-1, 1)).squeeze(1))
            self.previous = None
        if not self.values:
            return torch.zeros((last_tokens.shape[0], 0))
        return torch.stack(self.values, dim=1).cpu()


class HFAgent(BaseAgent):
    """A transformers causal LM that plays SearchEnv (see the module docstring for the conventions).

    Args:
        model: hub id or local folder (``from_pretrained``), ``"smollm2"`` for the bundled SmolLM2-135M-Instruct
            (converted from its GGUF on first use), or an already loaded ``PreTrainedModel`` (then pass
            ``tokenizer``).
        tokenizer: a tokenizer; loaded from ``model`` when it is a name or path.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default cuda when available. A loaded model stays where
            it is unless a device is given.
        dtype: ``"float32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"``.
        max_new_tokens / min_new_tokens: generation length bounds per turn (``min_new_tokens`` also blocks EOS).
        temperature: 0 for greedy decoding, else sampling temperature. top_p: nucleus sampling mass.
        seed: sampling seed; each call draws from ``(seed, call number)`` in a forked RNG, so the global torch
            RNG is untouched and a re-seeded agent replays the same samples. None uses the global RNG.
        layers: decoder blocks to capture (ints, negatives from the end, or ``"all"``); None captures nothing.
        positions: which positions to keep (default: all of ``POSITIONS`` when layers are given).
        few_shot: worked protocol examples to prepend (True = 2, an int = that many, up to 3); default on for
            the bundled model, off otherwise.
        stop: stop strings (default ``STOP_STRINGS``); ``()`` generates until EOS or the length limit. Tool-call
            observations also stop at ``</tool_call>`` (unless ``stop=()``).
        batch_size: split ``act_batch`` into chunks of this many prompts (None: one batch).
        cache_implementation: ``generate``'s KV cache ("static" preallocates it, the form ``torch.compile`` needs;
            None keeps the dynamic cache; benchmarks/bench_generation_cache.py measures both on your hardware).
            Ignored while hidden states are captured (``layers``).
        model_kwargs: extra ``from_pretrained`` arguments (e.g. ``attn_implementation``).
    """

    name = "hf"

    def __init__(
        self,
        model: str | os.PathLike | Any = BUNDLED_MODEL,
        tokenizer: Any = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "float32",
        max_new_tokens: int = 256,
        min_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        layers: int | Iterable[int] | str | None = None,
        positions: str | Iterable[str] | None = None,
        few_shot: bool | int | None = None,
        stop: Sequence[str] | None = STOP_STRINGS,
        batch_size: int | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict | None = None,
        cache_implementation: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        bundled = isinstance(model, str) and model == BUNDLED_MODEL
        if isinstance(model, (str, os.PathLike)):
            if bundled:
                from search_gym.agents.gguf import ensure_smollm2

                source: str | os.PathLike = ensure_smollm2()
            else:
                source = model
            model_kwargs = dict(model_kwargs or {})
            self.model = AutoModelForCausalLM.from_pretrained(
                source, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **model_kwargs
            )
            if "device_map" not in model_kwargs:  # a device map already placed (maybe sharded) the weights
                self.model.to(resolve_device(device))
            self.device = next(self.model.parameters()).device
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model_name = str(model)
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer along with an already loaded model")
            self.model, self.tokenizer = model, tokenizer
            if device is not None:
                self.model.to(resolve_device(device))
            self.device = next(self.model.parameters()).device
            self.model_name = getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        if not isinstance(model, torch.nn.Module):
            self.model.eval()  # loaded here; a model passed in (a policy being trained) keeps its mode
        if max_new_tokens < 1 or not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError("need max_new_tokens >= 1 and 0 <= min_new_tokens <= max_new_tokens")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
        self.max_new_tokens, self.min_new_tokens = int(max_new_tokens), int(min_new_tokens)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.num_layers = len(decoder_layers(self.model))
        self.layers = normalize_layers(layers, self.num_layers)
        self.positions = normalize_positions(positions) if self.layers else ()
        if few_shot is None:
            few_shot = bundled
        self.few_shot = DEFAULT_FEW_SHOT if few_shot is True else int(few_shot or 0)
        if not 0 <= self.few_shot <= len(FEW_SHOT_EXAMPLES):
            raise ValueError(f"few_shot must be a bool or 0..{len(FEW_SHOT_EXAMPLES)}")
        self.stop = tuple(stop or ())
        self.batch_size = batch_size
        self.cache_implementation = cache_implementation
        self.eos_token_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        self._stop_criteria: dict[tuple[str, ...], Any] = {}
        self.seed(seed)

    # ------------------------------------------------------------------ configuration helpers

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if source is None:
                continue
            for i in [source] if isinstance(source, int) else source:
                if i not in ids:
                    ids.append(int(i))
        if not ids:
            raise ValueError("the tokenizer and the model define no end-of-sequence token")
        return ids

    def seed(self, seed: int | None) -> None:
        self._seed, self._calls = seed, 0

    def _generation_config(self, max_new_tokens: int):
        from transformers import GenerationConfig

        settings: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            use_cache=True,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        if self.cache_implementation and not self.layers:
            # capturing hidden states may feed one token past the generation budget (_feed_last_token), which a
            # preallocated cache has no room for: hooks run on the dynamic cache
            settings["cache_implementation"] = self.cache_implementation
        if self.temperature > 0:
            # temperature 1 here: _ChosenLogprobs divides by self.temperature and records the sampler's logprobs
            settings.update(do_sample=True, temperature=1.0, top_p=self.top_p, top_k=0, typical_p=1.0)
        else:
            settings.update(do_sample=False)
        return GenerationConfig(**settings)

    def _stopping(self, stop: tuple[str, ...]):
        from transformers import StoppingCriteriaList, StopStringCriteria

        if not stop:
            return None
        try:  # building the criterion scans the whole vocabulary (~1 s): share it between agents
            cache = _STOP_CRITERIA.setdefault(self.tokenizer, {})
        except TypeError:
            cache = self._stop_criteria
        if stop not in cache:
            cache[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return StoppingCriteriaList([cache[stop]])

    # ------------------------------------------------------------------ prompts

    def render(self, observation: dict) -> str:
        """The exact text the model continues: chat template (with few-shot turns, or the tools of a tool-call
        observation) + the observation's prefill."""
        return render_observation(self.tokenizer, observation, self.few_shot)

    def stops_for(self, observation: dict) -> tuple[str, ...]:
        """The stop strings of one observation's turn: the agent's, plus ``</tool_call>`` for tool-call ones."""
        return tool_call_stops(self.stop, observation)

    def encode(self, text: str) -> list[int]:
        # The chat template already wrote any BOS / special tokens as text.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ acting

    def act_batch(self, observations: Sequence[dict]) -> list[AgentStep]:
        prompts = [self.render(o) for o in observations]
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, o in enumerate(observations):  # one generate call per set of stop strings (one, in practice)
            groups.setdefault(self.stops_for(o), []).append(i)
        steps: list[AgentStep | None] = [None] * len(observations)
        for stop, indices in groups.items():
            for i, step in zip(indices, self.complete([prompts[i] for i in indices], stop=stop)):
                steps[i] = step
        for observation, step in zip(observations, steps):
            attach_tool_calls(step, observation)
        return steps  # type: ignore[return-value]

    def complete(
        self, prompts: Sequence[str], *, max_new_tokens: int | None = None, stop: Sequence[str] | None = None
    ) -> list[AgentStep]:
        """Continue raw prompt texts (already templated). ``max_new_tokens`` / ``stop`` override the agent's."""
        prompt_ids = [self.encode(p) for p in prompts]
        return self.generate_ids(prompt_ids, max_new_tokens=max_new_tokens, stop=stop)

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[AgentStep]:
        """Continue token-id prompts, in chunks of ``batch_size``."""
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        max_new = int(max_new_tokens or self.max_new_tokens)
        stops = self.stop if stop is None else tuple(stop)
        size = self.batch_size or max(1, len(prompt_ids))
        steps: list[AgentStep] = []
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the caller's mode comes back afterwards
        try:
            for start in range(0, len(prompt_ids), size):
                steps += self._generate([list(p) for p in prompt_ids[start : start + size]], max_new, stops)
        finally:
            self.model.train(was_training)
        return steps

    def _rng(self):
        if self.temperature <= 0 or self._seed is None:
            return nullcontext()
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        context = torch.random.fork_rng(devices=devices)

        @contextmanager
        def seeded():
            with context:
                torch.manual_seed(hash((self._seed, self._calls)) & 0x7FFF_FFFF_FFFF_FFFF)
                yield

        return seeded()

    @torch.no_grad()
    def _generate(self, prompt_ids: list[list[int]], max_new_tokens: int, stop: tuple[str, ...]) -> list[AgentStep]:
        batch, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        pad_lengths = [width - len(p) for p in prompt_ids]
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for b, ids in enumerate(prompt_ids):
            input_ids[b, pad_lengths[b] :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, pad_lengths[b] :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)

        capture = None
        if self.layers:
            before = [prompt_positions(self.tokenizer, ids, self.positions) for ids in prompt_ids]
            capture = GenerationCapture(
                self.model,
                self.layers,
                [sorted({i for v in p.values() for i in v}) for p in before],
                pad_lengths,
                keep_completion=any(p in self.positions for p in ("search", "query_mean", "generated")),
            )
        chosen = _ChosenLogprobs(self.temperature)
        from transformers import LogitsProcessorList

        with self._rng(), capture or nullcontext():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(max_new_tokens),
                logits_processor=LogitsProcessorList([chosen]),
                stopping_criteria=self._stopping(stop),
            )
            self._calls += 1
            new_tokens = out.sequences[:, width:]
            logprobs = chosen.finish(new_tokens[:, -1]).tolist()
            new_rows = new_tokens.tolist()
            finished = [self._finish(prompt_ids[b], new_rows[b], stop) for b in range(batch)]
            located = []
            if capture is not None:
                located = [
                    locate_positions(self.tokenizer, prompt_ids[b], finished[b][0], self.positions)
                    for b in range(batch)
                ]
                fed = capture.completion_steps
                if any(i - len(prompt_ids[b]) >= fed for b, loc in enumerate(located) for v in loc.values() for i in v):
                    self._feed_last_token(out, attention_mask, new_tokens)

        hidden: list[dict | None] = [None] * batch
        if capture is not None:
            rows = capture.gather(
                [(len(prompt_ids[b]), [i for v in located[b].values() for i in v]) for b in range(batch)]
            )
            hidden = [assemble(located[b], rows[b]) for b in range(batch)]
        steps = []
        for b in range(batch):
            completion, text, reason, stop_string = finished[b]
            steps.append(
                AgentStep(
                    text=text,
                    prompt_ids=list(prompt_ids[b]),
                    completion_ids=completion,
                    logprobs=logprobs[b][: len(completion)],
                    hidden=hidden[b],
                    finish_reason=reason,
                    metadata={"stop_string": stop_string} if stop_string else {},
                )
            )
        return steps

    def _feed_last_token(self, out, prompt_mask: torch.Tensor, new_tokens: torch.Tensor) -> None:
        """One more decoding step over the last generated token, so hooks see its hidden state.

        ``generate`` stops right after sampling the final token, so that token was never fed through the model.
        Positions follow generate's own rule (cumulative attention mask), the KV cache is the one it returned.
        """
        batch, steps = new_tokens.shape
        mask = torch.cat([prompt_mask, prompt_mask.new_ones((batch, steps))], dim=1)
        position_ids = (mask.cumsum(-1) - 1)[:, -1:]
        backbone = getattr(self.model, "base_model", self.model)
        backbone(
            input_ids=new_tokens[:, -1:],
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=out.past_key_values,
            use_cache=True,
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _continuation(self, prompt_ids: list[int], prompt_text: str, ids: list[int]) -> str:
        """Text of ``ids`` as a continuation of the prompt (SentencePiece drops a leading space when decoded alone)."""
        if not ids:
            return ""
        full = self._decode(prompt_ids + ids)
        return full[len(prompt_text) :] if full.startswith(prompt_text) else self._decode(ids)

    def _finish(self, prompt_ids: list[int], row: list[int], stop: tuple[str, ...]):
        """Cut one generated row: ``(completion_ids, text, finish_reason, stop_string)``.

        The row ends at the first EOS (kept in the ids, not in the text) or at the token that completes a stop
        string (text cut right after the stop string); padding after a finished row is dropped.
        """
        eos_at = next((j for j, t in enumerate(row) if t in self.eos_token_ids), None)
        body = row[:eos_at] if eos_at is not None else row
        prompt_text = self._decode(prompt_ids)
        text = self._continuation(prompt_ids, prompt_text, body)
        hits = [(text.find(s), s) for s in stop if s in text]
        if hits:
            start, string = min(hits)
            end = start + len(string)
            # the shortest prefix of tokens whose text already contains this stop string
            lo, hi = 1, len(body)
            while lo < hi:
                mid = (lo + hi) // 2
                if len(self._continuation(prompt_ids, prompt_text, body[:mid])) >= end:
                    hi = mid
                else:
                    lo = mid + 1
            return body[:lo], text[:end], "stop", string
        if eos_at is not None:
            return row[: eos_at + 1], text, "eos", None
        return row, text, "length", None

    # ------------------------------------------------------------------ steering

    @contextmanager
    def steer(self, direction: Any, layer: int, coeff: float = 1.0):
        """While active, add ``coeff * direction`` to decoder block ``layer``'s output at every position.

        ``direction`` is a ``[d]`` tensor / array (used as given: normalise it yourself if you want unit norm).
        The hook is removed on exit, also on exceptions. Contexts nest (their additions sum).
        """
        with steering(self.model, direction, layer, coeff):
            yield self

    def __repr__(self) -> str:
        return (
            f"HFAgent(model={self.model_name!r}, device={self.device}, temperature={self.temperature}, "
            f"layers={list(self.layers)}, positions={list(self.positions)}, few_shot={self.few_shot})"
        )
