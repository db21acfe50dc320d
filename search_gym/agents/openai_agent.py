"""OpenAIAgent: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI...) as a search agent.

Two ways to continue the observation's prefill, which is what makes attacks like the ``<search>`` prefill work
across servers:

- ``endpoint="completions"`` (default): ``/v1/completions`` with a prompt rendered locally by the model's chat
  template plus the prefill, exactly the text HFAgent continues. Needs the model's tokenizer locally (only for its
  chat template).
- ``endpoint="chat"``: ``/v1/chat/completions`` with the prefill as a final assistant message and
  ``continue_final_message=true, add_generation_prompt=false`` (vLLM and SGLang extensions; other servers may
  start a new assistant turn instead).

Tool-call observations (``SearchEnv(protocol="tool_call")``, detected as in HFAgent) go by default
(``tool_endpoint="chat"``) to ``/v1/chat/completions`` with ``tools=[SEARCH_TOOL]`` and the env's messages as valid
OpenAI chat (tool-call ``arguments`` as JSON strings, ``id`` / ``tool_call_id`` synthesised when an env gave none);
the reply's ``message.tool_calls`` become the action text the env parses (the content, then one
``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`` block per call) and ``metadata["tool_calls"]``
(OpenAI form). The server must parse tool calls (vLLM: ``--enable-auto-tool-choice --tool-call-parser hermes``;
llama.cpp: ``--jinja``); a reply that writes the block in its content instead is read from the text.
``tool_endpoint="completions"`` renders the tool prompt locally (:func:`~search_gym.agents.prompting.render_prompt` with
the tools), stops at ``</tool_call>`` too and reads the calls from the text, for servers without a tool parser.

Servers drop the stop string from the returned text; the agent puts the matching closing tag back (the one
closing the last open ``<search>``/``<answer>``, or ``<tool_call>`` on the tool completions route, or the server's
``stop_reason`` when it reports one) so the environment sees a complete action. Log-probabilities are returned
when the server sends them. Servers do not expose hidden states: ``hidden`` is always None and asking for
``layers`` raises ValueError. Token ids are None (the server tokenises).

HTTP uses the standard library (``urllib``), so no extra dependency; requests of a batch run concurrently
(servers batch them internally).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from search_gym.agents.base import AgentStep, BaseAgent
from search_gym.agents.prompting import (
    BUNDLED_MODEL,
    DEFAULT_FEW_SHOT,
    FEW_SHOT_EXAMPLES,
    assistant_turns,
    attach_tool_calls,
    chat_messages,
    few_shot_messages,
    observation_tools,
    render_observation,
    tool_call_block,
    tool_call_stops,
)
from search_gym.envs.protocol import STOP_STRINGS, TOOL_CALL_STOP

_TAG_PAIRS = (("<search>", "</search>"), ("<answer>", "</answer>"), ("<tool_call>", TOOL_CALL_STOP))


class OpenAIServerError(RuntimeError):
    """The server answered with an error status or an unreadable body."""


def restore_stop_string(
    prefill: str, text: str, stop: Sequence[str], stop_reason: Any = None
) -> tuple[str, str | None]:
    """Append the stop string the server cut off; returns ``(text, stop_string or None)``.

    Uses the server's ``stop_reason`` when it is one of ``stop``; else the closing tag of the last tag left open in
    ``prefill + text`` (a turn stopped by EOS leaves no tag open, and nothing is appended).
    """
    if any(text.endswith(s) for s in stop):
        return text, next(s for s in stop if text.endswith(s))
    if isinstance(stop_reason, str) and stop_reason in stop:
        return text + stop_reason, stop_reason
    whole = prefill + text
    best: tuple[int, str] | None = None
    for opening, closing in _TAG_PAIRS:
        start = whole.rfind(opening)
        if closing in stop and start > whole.rfind(closing) and (best is None or start > best[0]):
            best = (start, closing)
    if best is None:
        return text, None
    return text + best[1], best[1]


class OpenAIAgent(BaseAgent):
    """Search agent talking to an OpenAI-compatible HTTP server (see the module docstring).

    Args:
        model: the model name the server serves (``"model"`` field of requests).
        base_url: server root including ``/v1`` (default ``$OPENAI_BASE_URL`` or ``http://127.0.0.1:8000/v1``).
        api_key: bearer token (default ``$OPENAI_API_KEY``; local servers usually need none).
        endpoint: ``"completions"`` (prompt rendered locally) or ``"chat"``, for tags-protocol observations.
        tool_endpoint: ``"chat"`` (default: ``tools=`` sent, ``tool_calls`` read) or ``"completions"`` (tool prompt
            rendered locally, calls read from the text) for tool-call observations.
        tokenizer: tokenizer object, hub id or folder whose chat template renders prompts (``"completions"``
            only); ``"smollm2"`` for the bundled model; default: ``model``.
        max_new_tokens, temperature (0 = greedy), top_p, seed, stop, few_shot: as in HFAgent.
        logprobs: ask the server for the sampled tokens' log-probabilities.
        layers: must be None: servers expose no hidden states.
        timeout: seconds per HTTP request. retries: extra attempts on connection errors and 5xx answers.
        max_concurrency: simultaneous requests in ``act_batch``.
        extra_body: extra JSON fields for every request (server-specific options).
    """

    name = "openai"

    def __init__(
        self,
        model: str = BUNDLED_MODEL,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        endpoint: str = "completions",
        tool_endpoint: str = "chat",
        tokenizer: Any = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        stop: Sequence[str] | None = STOP_STRINGS,
        few_shot: bool | int | None = None,
        logprobs: bool = True,
        layers: Any = None,
        positions: Any = None,
        timeout: float = 120.0,
        retries: int = 2,
        max_concurrency: int = 8,
        extra_body: dict | None = None,
    ):
        if layers is not None or positions is not None:
            raise ValueError(
                "OpenAIAgent cannot return hidden states: OpenAI-compatible servers do not expose them. "
                "Use HFAgent, or VLLMAgent (hidden states from an HF forward over vLLM's tokens)."
            )
        if endpoint not in ("completions", "chat"):
            raise ValueError("endpoint must be 'completions' or 'chat'")
        if tool_endpoint not in ("completions", "chat"):
            raise ValueError("tool_endpoint must be 'completions' or 'chat'")
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.endpoint, self.tool_endpoint = endpoint, tool_endpoint
        self.max_new_tokens, self.temperature, self.top_p = int(max_new_tokens), float(temperature), float(top_p)
        self.stop = tuple(stop or ())
        if few_shot is None:
            few_shot = model == BUNDLED_MODEL
        self.few_shot = DEFAULT_FEW_SHOT if few_shot is True else int(few_shot or 0)
        if not 0 <= self.few_shot <= len(FEW_SHOT_EXAMPLES):
            raise ValueError(f"few_shot must be a bool or 0..{len(FEW_SHOT_EXAMPLES)}")
        self.logprobs = logprobs
        self.timeout, self.retries, self.max_concurrency = float(timeout), int(retries), int(max_concurrency)
        self.extra_body = dict(extra_body or {})
        self.tokenizer = (
            self._load_tokenizer(tokenizer if tokenizer is not None else model)
            if "completions" in (endpoint, tool_endpoint)
            else tokenizer
        )
        self.seed(seed)

    @staticmethod
    def _load_tokenizer(tokenizer: Any):
        if not isinstance(tokenizer, (str, os.PathLike)):
            return tokenizer
        from transformers import AutoTokenizer

        if tokenizer == BUNDLED_MODEL:
            from search_gym.agents.gguf import ensure_smollm2

            tokenizer = ensure_smollm2()
        return AutoTokenizer.from_pretrained(tokenizer)

    def seed(self, seed: int | None) -> None:
        self._seed, self._calls = seed, 0

    # ------------------------------------------------------------------ requests

    def _messages(self, observation: dict) -> list[dict]:
        messages = list(observation["messages"])
        return few_shot_messages(messages, self.few_shot) if self.few_shot else [dict(m) for m in messages]

    def render(self, observation: dict) -> str:
        """The prompt sent to ``/v1/completions``: chat template (with few-shot turns, or the tools of a tool-call
        observation) + prefill, the text HFAgent continues."""
        if self.tokenizer is None:
            raise ValueError("rendering a completions prompt needs the model's tokenizer")
        return render_observation(self.tokenizer, observation, self.few_shot)

    def _route(self, observation: dict) -> str:
        """``"completions"``, ``"chat"`` or ``"tools"`` (chat with ``tools=``) for this observation."""
        if observation_tools(observation):
            return "tools" if self.tool_endpoint == "chat" else "completions"
        return self.endpoint

    def _body(self, observation: dict, index: int) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "include_stop_str_in_output": True,  # vLLM/SGLang keep the stop string; others ignore the field
        }
        route = self._route(observation)
        # Tool calls stop at </tool_call> when the text is read here; a server's tool parser needs the whole turn.
        stop = tool_call_stops(self.stop, observation) if route == "completions" else self.stop
        if stop:
            body["stop"] = list(stop)
        if self.temperature > 0 and self._seed is not None:
            body["seed"] = hash((self._seed, self._calls, index)) & 0x7FFF_FFFF
        if route == "completions":
            body["prompt"] = self.render(observation)
            if self.logprobs:
                body["logprobs"] = 1
            path = "/completions"
        else:
            messages = self._messages(observation)
            if route == "tools":
                messages = chat_messages(messages, arguments="json")
                body["tools"] = observation_tools(observation)
            prefill = observation.get("prefill", "")
            if prefill:
                messages.append({"role": "assistant", "content": prefill})
                body.update(continue_final_message=True, add_generation_prompt=False)
            body["messages"] = messages
            if self.logprobs:
                body["logprobs"] = True
            path = "/chat/completions"
        body.update(self.extra_body)
        return path, body

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", errors="replace")[:2000]
                last = OpenAIServerError(f"{self.base_url + path} answered {exc.code}: {detail}")
                if exc.code < 500:
                    raise last from exc
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = OpenAIServerError(f"cannot reach {self.base_url + path}: {exc}")
            except json.JSONDecodeError as exc:
                raise OpenAIServerError(f"{self.base_url + path} sent a body that is not JSON") from exc
            if attempt < self.retries:
                time.sleep(0.5 * 2**attempt)
        assert last is not None
        raise last

    # ------------------------------------------------------------------ acting

    def act(self, observation: dict) -> AgentStep:
        return self.act_batch([observation])[0]

    def act_batch(self, observations: Sequence[dict]) -> list[AgentStep]:
        # Bodies (and their seeds) are built before any request goes out: the call number is fixed per batch.
        requests = [self._body(o, i) for i, o in enumerate(observations)]
        self._calls += 1
        if len(requests) <= 1:
            return [self._reply(o, *r) for o, r in zip(observations, requests)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(lambda args: self._reply(args[0], *args[1]), zip(observations, requests)))

    def _reply(self, observation: dict, path: str, body: dict) -> AgentStep:
        reply = self._post(path, body)
        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise OpenAIServerError(f"unexpected reply from {self.base_url + path}: {str(reply)[:500]}") from exc
        route = self._route(observation)
        calls: list[dict] = []
        if route == "completions":
            text = choice.get("text") or ""
            lp = (choice.get("logprobs") or {}).get("token_logprobs")
        else:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            content = (choice.get("logprobs") or {}).get("content")
            lp = [c.get("logprob") for c in content] if content else None
            if route == "tools" and message.get("tool_calls"):
                calls = chat_messages(
                    [{"role": "assistant", "content": text, "tool_calls": message["tool_calls"]}], arguments="json"
                )[0]["tool_calls"]
                turn = assistant_turns(observation.get("messages") or ())
                for j, call in enumerate(calls):  # ids as the env numbers its calls, where the server sent none
                    if not (message["tool_calls"][j] or {}).get("id"):
                        call["id"] = f"call_{turn}" + (f"_{j}" if j else "")
        finish = choice.get("finish_reason")
        server_finish = finish
        stop_string = None
        if calls:
            # The action the env parses: the free text, then the calls as Hermes/Qwen blocks.
            blocks = [tool_call_block(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            text = text + ("\n" if text and not text.endswith("\n") else "") + "\n".join(blocks)
            finish, stop_string = "stop", TOOL_CALL_STOP
        elif finish == "stop":
            stop = tool_call_stops(self.stop, observation) if route == "completions" else self.stop
            text, stop_string = restore_stop_string(
                observation.get("prefill", ""), text, stop, choice.get("stop_reason")
            )
            finish = "stop" if stop_string else "eos"
        # A missing entry stays as NaN so the list stays aligned with the completion's tokens.
        logprobs = [float("nan") if x is None else float(x) for x in lp] if lp else None
        metadata: dict[str, Any] = {"stop_string": stop_string} if stop_string else {}
        if server_finish not in (None, "stop", "length"):
            metadata["server_finish_reason"] = server_finish
        if reply.get("usage"):
            metadata["usage"] = reply["usage"]
        step = AgentStep(text=text, logprobs=logprobs, hidden=None, finish_reason=finish, metadata=metadata)
        if calls:
            step.metadata["tool_calls"] = calls
        else:  # tool calls written as text (completions route, or a server without a tool parser)
            attach_tool_calls(step, observation)
        return step

    def __repr__(self) -> str:
        return (
            f"OpenAIAgent(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.endpoint!r}, "
            f"tool_endpoint={self.tool_endpoint!r})"
        )
