"""The tool-call protocol played by real agents: rendering tools through chat templates, parsing the model's calls,
the OpenAI-compatible agent's ``tools`` / ``tool_calls`` round trip, and a whole ``protocol="tool_call"`` episode.

- The bundled SmolLM2's chat template ignores ``tools=`` (and drops an assistant message's ``tool_calls``): the
  schema, calls and results are rendered as text in the Hermes/Qwen2.5 format instead (checked here).
- A tokenizer given a Qwen2.5-style tool-calling template (below, as Jinja text) renders them itself; a tiny random
  LlamaForCausalLM whose logits are scripted writes a fixed ``<tool_call>`` turn through the real ``generate``.
- OpenAIAgent talks to a scripted OpenAI-compatible server on loopback that checks every request is valid OpenAI
  chat and answers with ``tool_calls`` the way vLLM's tool parser does.
"""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import observation

from search_gym.agents.hf import HFAgent
from search_gym.agents.openai_agent import OpenAIAgent
from search_gym.agents.prompting import (
    HERMES_TOOLS_PROMPT,
    chat_messages,
    hermes_tool_messages,
    is_tool_call_observation,
    observation_tools,
    render_prompt,
    template_takes_tools,
)
from search_gym.agents.vllm_agent import VLLMAgent
from search_gym.envs.protocol import (
    PROMPT_TEMPLATES,
    SEARCH_TOOL,
    STOP_STRINGS,
    TOOL_CALL_STOP,
    parse_tool_call_action,
    parse_tool_calls,
)
from search_gym.envs.search_env import SearchEnv

# Qwen2.5-Instruct's chat template (tool calling part), as shipped in its tokenizer_config.json.
QWEN25_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QUESTION = "What is the capital of France?"
PASSAGES = 'Doc 1(Title: "Paris") Paris is the capital and most populous city of France.'
SCHEMA_JSON = json.dumps(SEARCH_TOOL)
CALL_BLOCK = '<tool_call>\n{"name": "search", "arguments": {"query": "capital of France"}}\n</tool_call>'
FIRST_TURN = {"messages": ({"role": "user", "content": PROMPT_TEMPLATES["tool_call"].format(question=QUESTION)},),
              "prefill": ""}


def _after_search(arguments, with_ids: bool = True) -> dict:
    """The observation after one search: OpenAI form (ids, JSON-string arguments) or an older env's (neither)."""
    call = {"type": "function", "function": {"name": "search", "arguments": arguments}}
    tool = {"role": "tool", "name": "search", "content": PASSAGES}
    if with_ids:
        call, tool = {"id": "call_0", **call}, {**tool, "tool_call_id": "call_0"}
    messages = FIRST_TURN["messages"] + ({"role": "assistant", "content": "", "tool_calls": [call]}, tool)
    return {"messages": messages, "prefill": ""}


OPENAI_FORM = _after_search(json.dumps({"query": "capital of France"}))
OLD_FORM = _after_search({"query": "capital of France"}, with_ids=False)


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def qwen_tokenizer(smollm2_folder):
    """SmolLM2's vocabulary (it has <|im_start|> / <|im_end|>) with a Qwen2.5 tool-calling chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    tokenizer.chat_template = QWEN25_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------------------------------------- rendering


def test_smollm2_template_ignores_tools_so_the_schema_goes_in_a_hermes_system_message(smol_tokenizer):
    plain = smol_tokenizer.apply_chat_template(list(OPENAI_FORM["messages"]), add_generation_prompt=True,
                                               tokenize=False)
    with_tools = smol_tokenizer.apply_chat_template(list(OPENAI_FORM["messages"]), tools=[SEARCH_TOOL],
                                                    add_generation_prompt=True, tokenize=False)
    assert plain == with_tools and SCHEMA_JSON not in with_tools  # tools= is silently dropped...
    assert "<|im_start|>assistant\n<|im_end|>" in plain and '"query"' not in plain  # ...and so are the tool_calls
    assert not template_takes_tools(smol_tokenizer)

    text = render_prompt(smol_tokenizer, OPENAI_FORM["messages"])
    system = HERMES_TOOLS_PROMPT.format(tools=SCHEMA_JSON)
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nAnswer the given question.")
    assert f"<|im_start|>assistant\n{CALL_BLOCK}<|im_end|>\n" in text
    assert f"<|im_start|>user\n<tool_response>\n{PASSAGES}\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert render_prompt(smol_tokenizer, OLD_FORM["messages"]) == text  # dict arguments, no ids: same prompt


def test_smollm2_first_turn_and_tags_observations(smol_tokenizer):
    first = render_prompt(smol_tokenizer, FIRST_TURN["messages"])
    assert SCHEMA_JSON in first and "<tool_call>\n{\"name\": <function-name>" in first  # detected from the prompt
    tags = observation(QUESTION, prefill="<search>")
    plain = smol_tokenizer.apply_chat_template(list(tags["messages"]), add_generation_prompt=True, tokenize=False)
    assert render_prompt(smol_tokenizer, tags["messages"], "<search>") == plain + "<search>"  # tags: unchanged
    assert render_prompt(smol_tokenizer, FIRST_TURN["messages"], tools=()) == smol_tokenizer.apply_chat_template(
        list(FIRST_TURN["messages"]), add_generation_prompt=True, tokenize=False)  # tools=() renders none
    system_first = ({"role": "system", "content": "Be brief."},) + FIRST_TURN["messages"]
    assert render_prompt(smol_tokenizer, system_first).startswith(
        "<|im_start|>system\nBe brief.\n\n" + HERMES_TOOLS_PROMPT.format(tools=SCHEMA_JSON) + "<|im_end|>")


def test_qwen_template_renders_the_schema_and_prior_calls_and_results(qwen_tokenizer):
    assert template_takes_tools(qwen_tokenizer)
    text = render_prompt(qwen_tokenizer, OPENAI_FORM["messages"])
    assert text == qwen_tokenizer.apply_chat_template(
        chat_messages(OPENAI_FORM["messages"]), tools=[SEARCH_TOOL], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert f"<tools>\n{SCHEMA_JSON}\n</tools>" in text
    assert f"<|im_start|>assistant\n{CALL_BLOCK}<|im_end|>\n" in text  # arguments rendered as a JSON object
    assert f"<|im_start|>user\n<tool_response>\n{PASSAGES}\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert render_prompt(qwen_tokenizer, OLD_FORM["messages"]) == text
    # Without the conversion the template would write the JSON string as a quoted string:
    raw = qwen_tokenizer.apply_chat_template(list(OPENAI_FORM["messages"]), tools=[SEARCH_TOOL], tokenize=False)
    assert '"arguments": "{\\"query\\": \\"capital of France\\"}"' in raw
    # The fallback for templates without tools writes the conversation exactly as Qwen's template does: given the
    # same system line, Qwen's template without tools= renders the rewritten messages into the same prompt.
    qwen_default = {"role": "system", "content": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}
    rewritten = hermes_tool_messages((qwen_default,) + OPENAI_FORM["messages"], [SEARCH_TOOL])
    assert all("tool_calls" not in m and m["role"] != "tool" for m in rewritten)
    assert qwen_tokenizer.apply_chat_template(rewritten, add_generation_prompt=True, tokenize=False) == text


def test_tool_call_detection_and_observation_tools():
    assert is_tool_call_observation(FIRST_TURN["messages"]) and is_tool_call_observation(OLD_FORM["messages"])
    assert not is_tool_call_observation(observation(QUESTION)["messages"])
    assert observation_tools(FIRST_TURN) == [SEARCH_TOOL] and observation_tools(observation(QUESTION)) == []
    assert observation_tools({**FIRST_TURN, "tools": []}) == []  # an explicit "tools" key decides
    custom = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    assert observation_tools({**observation(QUESTION), "tools": [custom]}) == [custom]


def test_chat_messages_make_older_env_messages_valid_openai_chat():
    messages = chat_messages(OLD_FORM["messages"], arguments="json")
    call = messages[1]["tool_calls"][0]
    assert call == {"type": "function", "function": {"name": "search", "arguments": '{"query": "capital of France"}'},
                    "id": "call_0"}
    assert messages[2]["tool_call_id"] == "call_0" and messages[2]["name"] == "search"
    assert chat_messages(OPENAI_FORM["messages"], arguments="json") == [dict(m) for m in OPENAI_FORM["messages"]]
    as_dicts = chat_messages(OPENAI_FORM["messages"])
    assert as_dicts[1]["tool_calls"][0]["function"]["arguments"] == {"query": "capital of France"}
    assert OPENAI_FORM["messages"][1]["tool_calls"][0]["function"]["arguments"].startswith("{")  # input untouched


def test_parse_tool_calls_gives_openai_form():
    text = "I should search.\n" + CALL_BLOCK
    function = {"name": "search", "arguments": '{"query": "capital of France"}'}
    assert parse_tool_calls(text, turn=2) == [{"id": "call_2", "type": "function", "function": function}]
    string_args = '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>'
    assert parse_tool_calls(string_args)[0]["function"]["arguments"] == '{"query": "x"}'
    assert parse_tool_calls('{"name": "search", "parameters": {"query": "y"}}')[0]["function"]["arguments"] == (
        '{"query": "y"}')  # a bare JSON object, Llama 3.1's "parameters"
    two = CALL_BLOCK + "\n" + CALL_BLOCK.replace("capital of France", "Seine")
    assert [c["id"] for c in parse_tool_calls(two, turn=1)] == ["call_1", "call_1_1"]
    assert parse_tool_calls('<tool_call>{"name": "search", "arguments": </tool_call>') == []  # bad JSON: none
    assert parse_tool_calls("<answer> Paris </answer>") == []


def test_agents_and_env_read_tool_calls_with_one_parser():
    import search_gym.agents.hf as hf

    assert hf.parse_tool_calls is parse_tool_calls and hf.render_prompt is render_prompt  # old paths still work
    for text in ("I should search.\n" + CALL_BLOCK, '{"name": "search", "parameters": {"query": "y"}}'):
        (call,) = parse_tool_calls(text)
        action, _ = parse_tool_call_action(text, max_chars=10_000, max_tags=8)
        assert action.kind == "search" and json.loads(call["function"]["arguments"])["query"] == action.content


# ---------------------------------------------------------------------------------------------- HFAgent, tiny model

TAIL = "\nAnd some text the model writes after the call."


def _tiny_scripted_llama(tokenizer, script: list[int]):
    """A random 2-layer Llama whose logits always put all mass on the next token of ``script``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    class Scripted(LlamaForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            out = super().forward(input_ids=input_ids, **kwargs)
            if input_ids.shape[1] > 1:  # the prompt pass starts a new generation
                self.k = 0
            token = self.script[min(self.k, len(self.script) - 1)]
            self.k += 1
            logits = torch.full_like(out.logits, -1e4)
            logits[..., token] = 0.0
            out.logits = logits
            return out

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    model = Scripted(config).eval()
    model.script, model.k = script, 0
    return model


@pytest.fixture(scope="module")
def scripted(qwen_tokenizer):
    encode = lambda t: qwen_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    script = encode("I should search.\n") + encode(CALL_BLOCK) + encode(TAIL) + [qwen_tokenizer.eos_token_id]
    model = _tiny_scripted_llama(qwen_tokenizer, script)
    return HFAgent(model, qwen_tokenizer, device="cpu", max_new_tokens=80)


def test_hf_agent_renders_tools_stops_at_tool_call_and_reports_openai_calls(scripted, qwen_tokenizer):
    tags = observation(QUESTION)
    tool_step, tags_step = scripted.act_batch([OPENAI_FORM, tags])
    assert qwen_tokenizer.decode(tool_step.prompt_ids) == render_prompt(qwen_tokenizer, OPENAI_FORM["messages"])
    assert SCHEMA_JSON in qwen_tokenizer.decode(tool_step.prompt_ids)
    assert tool_step.text == "I should search.\n" + CALL_BLOCK  # as generated, cut at </tool_call>
    assert tool_step.finish_reason == "stop" and tool_step.metadata["stop_string"] == TOOL_CALL_STOP
    assert tool_step.metadata["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "search", "arguments": '{"query": "capital of France"}'}}]  # second turn: call_1
    parsed, free_text = parse_tool_call_action(tool_step.text, max_chars=4000, max_tags=10)
    assert parsed.kind == "search" and parsed.content == "capital of France" and free_text == "I should search."
    assert len(tool_step.logprobs) == len(tool_step.completion_ids)
    # A tags observation in the same batch keeps the tags stop strings: it runs on to the end of the script.
    assert qwen_tokenizer.decode(tags_step.prompt_ids) == render_prompt(qwen_tokenizer, tags["messages"])
    assert SCHEMA_JSON not in qwen_tokenizer.decode(tags_step.prompt_ids)
    assert tags_step.text == "I should search.\n" + CALL_BLOCK + TAIL and tags_step.finish_reason == "eos"
    assert "tool_calls" not in tags_step.metadata
    assert scripted.stops_for(tags) == STOP_STRINGS
    assert scripted.stops_for(FIRST_TURN) == (*STOP_STRINGS, TOOL_CALL_STOP)


def test_hf_agent_plays_a_tool_call_episode(scripted, tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, protocol="tool_call")
    obs, info = env.reset(options={"index": 0})
    step = scripted.act({**obs, "tools": info["tools"]})
    assert step.metadata["tool_calls"][0]["id"] == "call_0"
    obs, _, _, _, info = env.step(step)
    assert info["action_type"] == "search" and info["query"] == "capital of France"
    call = obs["messages"][1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"query": "capital of France"}
    assert CALL_BLOCK in scripted.render(obs)  # the env's call is rendered back as the model wrote it


def test_vllm_agent_renders_and_stops_like_hf(qwen_tokenizer, scripted):
    from types import SimpleNamespace

    class Engine:
        def generate(self, prompts, params, use_tqdm=True):
            self.params = params
            steps = scripted.generate_ids([p["prompt_token_ids"] for p in prompts], stop=params[0].stop)
            return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[SimpleNamespace(
                text=s.text, token_ids=s.completion_ids, logprobs=None, finish_reason="stop",
                stop_reason=s.metadata.get("stop_string"))]) for p, s in zip(prompts, steps)]

    engine = Engine()
    agent = VLLMAgent("unused", llm=engine, tokenizer=qwen_tokenizer, max_new_tokens=80)
    step = agent.act(OPENAI_FORM)
    assert list(engine.params[0].stop) == [*STOP_STRINGS, TOOL_CALL_STOP]
    assert qwen_tokenizer.decode(step.prompt_ids) == render_prompt(qwen_tokenizer, OPENAI_FORM["messages"])
    assert step.text.endswith(TOOL_CALL_STOP) and step.metadata["tool_calls"][0]["id"] == "call_1"


# ---------------------------------------------------------------------------------------------- HFAgent, SmolLM2


def test_smollm2_plays_a_tool_call_turn(smollm2, tiny_qa_path, overlap_retriever):
    _, model, tokenizer = smollm2
    agent = HFAgent(model, tokenizer, max_new_tokens=24)
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, protocol="tool_call")
    obs, _ = env.reset(options={"index": 0})
    step = agent.act(obs)
    prompt = tokenizer.decode(step.prompt_ids)
    assert prompt == render_prompt(tokenizer, obs["messages"]) and SCHEMA_JSON in prompt
    assert step.completion_ids and step.finish_reason in ("stop", "eos", "length")
    if TOOL_CALL_STOP in step.text:
        assert step.text.endswith(TOOL_CALL_STOP)
    _, _, _, _, info = env.step(step)
    assert info["action_type"] in ("search", "answer", "invalid")


# ---------------------------------------------------------------------------------------------- OpenAIAgent

SERVED = "tool-loopback"


def _check_openai_messages(messages: list) -> str | None:
    """Why ``messages`` are not valid OpenAI chat (None when they are)."""
    call_ids: set = set()
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            return f"bad role {m.get('role')!r}"
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("id"), str) or call.get("type") != "function":
                return f"tool call without id/type: {call}"
            arguments = call["function"]["arguments"]
            if not isinstance(arguments, str) or not isinstance(json.loads(arguments), dict):
                return f"arguments must be a JSON string of an object: {arguments!r}"
            call_ids.add(call["id"])
        if m.get("role") == "tool" and m.get("tool_call_id") not in call_ids:
            return f"tool message answers no earlier call: {m}"
        if m.get("role") != "assistant" and not isinstance(m.get("content"), str):
            return "content must be a string"
    return None


def _make_handler(log: list):
    class Handler(BaseHTTPRequestHandler):
        timeout = 30

        def log_message(self, *args):
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            log.append((self.path, body))
            if self.path == "/v1/chat/completions":
                problem = _check_openai_messages(body["messages"])
                if problem:
                    return self._send(400, {"error": {"message": problem}})
                last = body["messages"][-1]
                if last["role"] == "tool":  # answer with the top passage's title; the stop string is not returned
                    title = re.search(r'Doc 1\(Title: "?([^")]*)"?\)', last["content"]).group(1)
                    message = {"role": "assistant", "content": f"<answer> {title} ", "tool_calls": []}
                    finish = "stop"
                else:  # vLLM's hermes parser: the call comes back parsed, content is the text before it
                    question = re.search(r"Question: (.*)", last["content"]).group(1).strip()
                    message = {"role": "assistant", "content": "Let me search.", "tool_calls": [
                        {"id": "chatcmpl-tool-1", "type": "function",
                         "function": {"name": "search", "arguments": json.dumps({"query": question})}}]}
                    finish = "tool_calls"
                choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            elif self.path == "/v1/completions":  # a server without a tool parser, fed a locally rendered prompt
                if "<tool_response>" in body["prompt"]:
                    text, stop = "<answer> Paris ", "</answer>"
                else:
                    text, stop = CALL_BLOCK[: -len(TOOL_CALL_STOP)], TOOL_CALL_STOP
                choice = {"index": 0, "text": text, "finish_reason": "stop", "stop_reason": stop,
                          "logprobs": None}
            else:
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            return self._send(200, {"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    return Handler


@pytest.fixture(scope="module")
def tool_server():
    log: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(log))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_openai_agent_sends_tools_and_turns_tool_calls_into_an_action(tool_server):
    url, log = tool_server
    agent = OpenAIAgent(SERVED, base_url=url, endpoint="chat")
    step = agent.act(FIRST_TURN)
    path, body = log[-1]
    assert path == "/v1/chat/completions" and body["tools"] == [SEARCH_TOOL]
    assert body["messages"] == [dict(m) for m in FIRST_TURN["messages"]]
    assert step.metadata["tool_calls"] == [{"id": "chatcmpl-tool-1", "type": "function", "function": {
        "name": "search", "arguments": json.dumps({"query": QUESTION})}}]
    assert step.text == "Let me search.\n" + '<tool_call>\n{"name": "search", "arguments": {"query": "%s"}}\n' \
        "</tool_call>" % QUESTION
    assert step.finish_reason == "stop" and step.metadata["server_finish_reason"] == "tool_calls"
    parsed, free_text = parse_tool_call_action(step.text, max_chars=4000, max_tags=10)
    assert parsed.kind == "search" and parsed.content == QUESTION and free_text == "Let me search."


def test_openai_agent_sends_older_env_messages_as_valid_openai_chat(tool_server):
    url, log = tool_server
    agent = OpenAIAgent(SERVED, base_url=url, endpoint="chat")
    step = agent.act(OLD_FORM)  # the server answers 400 on invalid OpenAI chat
    sent = log[-1][1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == "call_0"
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"query": "capital of France"}'
    assert step.text == "<answer> Paris </answer>" and step.metadata["stop_string"] == "</answer>"
    assert "tool_calls" not in step.metadata


def test_openai_agent_tags_observations_keep_the_completions_route(tool_server, smol_tokenizer):
    url, log = tool_server
    agent = OpenAIAgent(SERVED, base_url=url, tokenizer=smol_tokenizer, few_shot=0)  # endpoint="completions"
    agent.act(FIRST_TURN)
    assert log[-1][0] == "/v1/chat/completions" and "tools" in log[-1][1]  # tool-call obs: chat with tools
    agent.act(observation(QUESTION, prefill="<search>"))
    path, body = log[-1]
    assert path == "/v1/completions" and "tools" not in body and body["stop"] == list(STOP_STRINGS)
    assert body["prompt"].endswith("<|im_start|>assistant\n<search>") and SCHEMA_JSON not in body["prompt"]


def test_openai_agent_tool_calls_through_completions(tool_server, qwen_tokenizer):
    url, log = tool_server
    agent = OpenAIAgent(SERVED, base_url=url, tool_endpoint="completions", tokenizer=qwen_tokenizer)
    step = agent.act(OPENAI_FORM)
    path, body = log[-1]
    assert path == "/v1/completions" and body["prompt"] == render_prompt(qwen_tokenizer, OPENAI_FORM["messages"])
    step = agent.act(FIRST_TURN)
    body = log[-1][1]
    assert body["stop"] == [*STOP_STRINGS, TOOL_CALL_STOP] and SCHEMA_JSON in body["prompt"]
    assert step.text == CALL_BLOCK and step.metadata["stop_string"] == TOOL_CALL_STOP  # restored
    assert step.metadata["tool_calls"][0]["function"]["arguments"] == '{"query": "capital of France"}'


def test_openai_agent_plays_a_tool_call_episode_to_the_answer(tool_server, tiny_qa_path, overlap_retriever):
    url, log = tool_server
    agent = OpenAIAgent(SERVED, base_url=url, endpoint="chat")
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, protocol="tool_call")
    obs, info = env.reset(options={"index": 0})
    assert info["tools"] == [SEARCH_TOOL]
    start = len(log)
    for _ in range(4):
        step = agent.act(obs)
        obs, reward, terminated, truncated, info = env.step(step)
        if terminated or truncated:
            break
    assert terminated and info["answer"] == "Paris" and info["correct"] is True and reward == 1.0
    assert info["searches"] == [QUESTION] and info["turn"] == 2
    bodies = [b for _, b in log[start:]]
    assert len(bodies) == 2 and all(b["tools"] == [SEARCH_TOOL] for b in bodies)
    second = bodies[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]
    assert second[1]["tool_calls"][0]["id"] == second[2]["tool_call_id"]
    assert json.loads(second[1]["tool_calls"][0]["function"]["arguments"]) == {"query": QUESTION}
