"""OpenAIAgent against real HTTP servers on loopback.

- A small OpenAI-compatible server written here (``/v1/completions`` and ``/v1/chat/completions`` served by an
  HFAgent, OpenAI semantics: the stop string is NOT included in the text), bound to 127.0.0.1, answering a
  bounded number of short requests and shut down by the fixture.
- llama.cpp's server (``python -m llama_cpp.server``) on the bundled GGUF: marked ``slow`` and ``server`` and
  skipped when ``llama_cpp`` is not installed (``pip install 'llama-cpp-python[server]'`` builds it from source;
  run with ``python -m pytest tests/test_openai_agent.py -m server``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import observation

from search_gym.agents.hf import HFAgent
from search_gym.agents.openai_agent import OpenAIAgent, OpenAIServerError, restore_stop_string

from search_gym.assets import asset_path
from search_gym.envs.protocol import STOP_STRINGS

SERVED_NAME = "smollm2-loopback"
MAX_TOKENS = 24




# The <search> prefill (the search attack): the server must continue the prefill, the agent restore the stop string.
OBSERVATIONS = [
    observation("What is the capital of France?", prefill="<search>"),
    observation("Who created the Python programming language?", prefill="<search>"),
]


# ---------------------------------------------------------------------------------------------- loopback server


def _make_handler(agent: HFAgent, lock: threading.Lock, log: list):
    tokenizer = agent.tokenizer

    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # a stuck client cannot hold a server thread forever

        def log_message(self, *args):  # keep pytest output clean
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
            if body.get("model") != SERVED_NAME:
                return self._send(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
            if self.path == "/v1/completions":
                prompt = body["prompt"]
            elif self.path == "/v1/chat/completions":
                prompt = tokenizer.apply_chat_template(
                    body["messages"],
                    tokenize=False,
                    add_generation_prompt=body.get("add_generation_prompt", True),
                    continue_final_message=body.get("continue_final_message", False),
                )
            else:
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            with lock:  # one generation at a time; requests stay bounded by MAX_TOKENS
                step = agent.complete(
                    [prompt], max_new_tokens=min(int(body["max_tokens"]), MAX_TOKENS), stop=body.get("stop") or ()
                )[0]
                log.append((self.path, body, prompt, step))
            text = step.text
            if step.finish_reason == "stop":  # OpenAI semantics: the stop string is not returned
                text = text[: -len(step.metadata["stop_string"])]
            finish = "length" if step.finish_reason == "length" else "stop"
            if self.path == "/v1/completions":
                choice = {
                    "index": 0,
                    "text": text,
                    "finish_reason": finish,
                    "logprobs": {"token_logprobs": step.logprobs} if body.get("logprobs") else None,
                }
            else:
                content = [{"logprob": lp} for lp in step.logprobs]
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": {"content": content} if body.get("logprobs") else None,
                }
            usage = {"prompt_tokens": len(step.prompt_ids), "completion_tokens": len(step.completion_ids)}
            return self._send(200, {"object": "text_completion", "choices": [choice], "usage": usage})

    return Handler


@pytest.fixture(scope="module")
def loopback_server(smollm2):
    _, model, tokenizer = smollm2
    log: list = []
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), _make_handler(HFAgent(model, tokenizer, few_shot=0), threading.Lock(), log)
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def completions_run(smollm2, loopback_server):
    url, log = loopback_server
    agent = OpenAIAgent(SERVED_NAME, base_url=url, tokenizer=smollm2[2], few_shot=1, max_new_tokens=MAX_TOKENS)
    steps = agent.act_batch(OBSERVATIONS)  # two concurrent requests
    served = {prompt: step for _, _, prompt, step in log}
    return agent, steps, [served[agent.render(o)] for o in OBSERVATIONS], list(log)


def test_completions_endpoint_continues_the_prefill_like_hf(smollm2, completions_run):
    _, model, tokenizer = smollm2
    agent, steps, served, log = completions_run
    hf = HFAgent(model, tokenizer, few_shot=1)
    assert {prompt for _, _, prompt, _ in log} == {hf.render(o) for o in OBSERVATIONS}  # HFAgent's exact prompt
    assert agent.render(OBSERVATIONS[0]).endswith("<|im_start|>assistant\n<search>")
    for step, ref in zip(steps, served):
        assert step.text == ref.text and step.text.endswith("</search>")  # the server dropped it; restored
        assert not step.text.lstrip().startswith("<search>")
        assert step.finish_reason == "stop" and step.metadata["stop_string"] == "</search>"
        assert step.logprobs == pytest.approx(ref.logprobs, abs=1e-6)
        assert step.hidden is None and step.prompt_ids is None and step.completion_ids is None
    for path, body, _, _ in log:
        assert path == "/v1/completions" and body["stop"] == list(STOP_STRINGS) and body["logprobs"] == 1
        assert body["temperature"] == 0.0 and "seed" not in body


def test_chat_endpoint_continues_the_final_assistant_message(loopback_server, completions_run):
    url, log = loopback_server
    agent = OpenAIAgent(SERVED_NAME, base_url=url, endpoint="chat", few_shot=1, max_new_tokens=MAX_TOKENS)
    step = agent.act(OBSERVATIONS[1])
    expected = completions_run[1][1]
    assert step.text == expected.text and step.logprobs == pytest.approx(expected.logprobs, abs=1e-6)
    path, body, prompt, _ = log[-1]
    assert path == "/v1/chat/completions" and body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False and body["messages"][-1] == {
        "role": "assistant",
        "content": "<search>",
    }
    assert prompt == completions_run[0].render(OBSERVATIONS[1])  # same text as the completions route


def test_server_errors_are_reported(smollm2, loopback_server):
    url, _ = loopback_server
    agent = OpenAIAgent("no-such-model", base_url=url, tokenizer=smollm2[2], few_shot=0, max_new_tokens=4)
    with pytest.raises(OpenAIServerError, match="404.*not found"):
        agent.act(OBSERVATIONS[0])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    agent = OpenAIAgent(
        SERVED_NAME, base_url=f"http://127.0.0.1:{closed_port}/v1", tokenizer=smollm2[2], retries=0, timeout=5
    )
    with pytest.raises(OpenAIServerError, match="cannot reach"):
        agent.act(OBSERVATIONS[0])


def test_hidden_states_are_refused():
    with pytest.raises(ValueError, match="cannot return hidden states"):
        OpenAIAgent(SERVED_NAME, endpoint="chat", layers=[4])


def test_restore_stop_string():
    assert restore_stop_string("<search>", " Paris ", STOP_STRINGS) == (" Paris </search>", "</search>")
    assert restore_stop_string("", "<think> a </think>\n<answer> Paris ", STOP_STRINGS)[1] == "</answer>"
    assert restore_stop_string("", "<search> q </search> then <answer> x ", STOP_STRINGS)[1] == "</answer>"
    assert restore_stop_string("", "I refuse.", STOP_STRINGS) == ("I refuse.", None)  # stopped by EOS
    assert restore_stop_string("", " q </search>", STOP_STRINGS) == (" q </search>", "</search>")  # kept by server
    assert restore_stop_string("", " q ", STOP_STRINGS, stop_reason="</answer>") == (" q </answer>", "</answer>")


# ---------------------------------------------------------------------------------------------- llama.cpp server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'llama-cpp-python[server]'")
def test_llama_cpp_server_on_the_bundled_gguf(smollm2, tmp_path):
    folder, _, tokenizer = smollm2
    port = _free_port()
    server_log = open(tmp_path / "llama_server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(asset_path("smollm2")),
            "--model_alias",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--logits_all",
            "true",
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "llama.cpp server did not start:\n" + (tmp_path / "llama_server.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
        agent = OpenAIAgent(SERVED_NAME, base_url=url, tokenizer=tokenizer, few_shot=1, max_new_tokens=MAX_TOKENS)
        steps = agent.act_batch(OBSERVATIONS)
        for step in steps:
            assert step.finish_reason in ("stop", "length") and step.text
            assert step.logprobs and all(lp <= 0 for lp in step.logprobs)
            assert not step.text.lstrip().startswith("<search>")  # continued the prefill
        assert any(step.text.endswith("</search>") for step in steps)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server_log.close()
