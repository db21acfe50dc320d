"""The retrieval server (``search-gym serve``), its micro-batcher, and the remote retriever that talks to it.

Real servers on loopback: ``search-gym serve`` subprocesses on a free port over the tiny fixture corpus (BM25, and
MiniLM + FAISS: the bundled asset is required), and uvicorn in a thread around test-double retrievers where the test
needs to control timing (batching) or failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack  # the serve and test extras install it (GEM's client posts msgpack bodies)
import pytest
import uvicorn
from starlette.responses import JSONResponse

from conftest import TINY_QA, needs_minilm

from search_gym.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    RemoteRetriever,
    RemoteRetrieverError,
    RetrieverConfig,
    make_retriever,
)
from search_gym.retrieval.batcher import MicroBatcher
from search_gym.retrieval.remote import parse_server_url
from search_gym.retrieval.server import ServerSettings, create_app

QUERIES = ["What is the capital of France?", "Which opera did Georges Bizet compose?", "highest mountain",
           "Who created the Python programming language?", "largest planet in the Solar System"]
MIB = 1024 * 1024
EXCERPTS = Path(__file__).parent / "data" / "search_r1" / "generation_py_excerpts.txt"


# ------------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(url: str, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    _, host, port, _ = parse_server_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        if chunked:
            conn.putrequest(method, path)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body or b""), MIB):
                piece = body[i:i + MIB]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(url: str, payload: Any) -> tuple[int, Any]:
    status, data = http_request(url, "POST", "/retrieve", json.dumps(payload).encode(),
                                {"Content-Type": "application/json"})
    return status, json.loads(data)


class ServerProcess:
    """``search-gym serve`` in a subprocess on loopback; the log goes to a file (a pipe could fill and block it)."""

    def __init__(self, log_dir: Path, *args: str, port: int | None = None):
        self.args, self.port = list(args), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"serve-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "search_gym.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning", *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_request(self.url, "GET", "/health")[0] == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def serve_in_thread(app):
    """uvicorn around ``app`` in a daemon thread on a free port; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-thread server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)


def corpus_rows(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def search_r1_passages2string():
    """Search-R1's client-side formatting of a /retrieve result (``_passages2string``, verbatim test data)."""
    text = EXCERPTS.read_text(encoding="utf-8")
    body = re.split(r"^# === (.+?) ===\n", text, flags=re.M)
    sections = {body[i]: body[i + 1] for i in range(1, len(body), 2)}
    ns: dict[str, Any] = {}
    exec("class Manager:\n" + sections["_passages2string"], ns)
    return ns["Manager"]()._passages2string


class SlowRetriever:
    """Test double: sleeps per call (so concurrent requests pile up), records every call, fails on 'boom'."""

    name = "slow"

    def __init__(self, delay: float = 0.05):
        self.delay, self.calls = delay, []
        self.lock = threading.Lock()

    def search(self, queries, k=3):
        with self.lock:
            self.calls.append((list(queries), k))
        if "boom" in queries:
            raise RuntimeError("index exploded")
        time.sleep(self.delay)
        return [[Hit(f"{q}#{i}", f'"{q}"\npassage {i} for {q}', 1.0 / (i + 1)) for i in range(k)] for q in queries]

    def __len__(self):
        return 42


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bm25_server(tiny_corpus_path, tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("serve"), "--retriever", "bm25", "--corpus",
                           str(tiny_corpus_path)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bm25_local(tiny_corpus_path):
    return BM25Retriever(tiny_corpus_path, progress=False)


# ------------------------------------------------------------------------------------------------ protocol


def test_search_r1_request_without_scores_is_answered_as_search_r1_does(bm25_server, bm25_local, tiny_corpus_path):
    """{"result": [[doc, ...], ...]} with doc = the corpus row; the exact bytes Search-R1's FastAPI would send."""
    status, data = http_request(bm25_server.url, "POST", "/retrieve",
                                json.dumps({"queries": QUERIES, "topk": 3, "return_scores": False}).encode(),
                                {"Content-Type": "application/json"})
    assert status == 200
    body = json.loads(data)
    assert list(body) == ["result"] and len(body["result"]) == len(QUERIES)
    rows = corpus_rows(tiny_corpus_path)
    local = bm25_local.search(QUERIES, k=3)
    for docs, hits in zip(body["result"], local):
        assert isinstance(docs, list) and 0 < len(docs) <= 3
        for doc, hit in zip(docs, hits):
            assert list(doc) == ["id", "contents"] and doc == rows[doc["id"]]  # the row itself, keys in order
            assert doc["contents"].startswith('"') and "\n" in doc["contents"]  # '"Title"\ntext'
        assert [d["id"] for d in docs] == [h.doc_id for h in hits]
    expected = {"result": [[{"id": h.doc_id, "contents": h.contents} for h in hits] for hits in local]}
    assert data == JSONResponse(expected).body  # how Search-R1's server (FastAPI's default response) encodes it


def test_search_r1_request_with_scores(bm25_server, bm25_local):
    status, data = http_request(bm25_server.url, "POST", "/retrieve",
                                json.dumps({"queries": QUERIES, "topk": 2, "return_scores": True}).encode(),
                                {"Content-Type": "application/json"})
    assert status == 200
    body = json.loads(data)
    local = bm25_local.search(QUERIES, k=2)
    for items, hits in zip(body["result"], local):
        assert len(items) == len(hits)
        for item, hit in zip(items, hits):
            assert list(item) == ["document", "score"] and list(item["document"]) == ["id", "contents"]
            assert type(item["score"]) is float and item["score"] == hit.score
            assert item["document"] == {"id": hit.doc_id, "contents": hit.contents}
        assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    expected = {"result": [[{"document": {"id": h.doc_id, "contents": h.contents}, "score": h.score} for h in hits]
                           for hits in local]}
    assert data == JSONResponse(expected).body
    # Search-R1's rollout code reads it: its _passages2string gives our env's information block text.
    from search_gym.envs.protocol import format_information

    passages2string = search_r1_passages2string()
    for items, hits in zip(body["result"], local):
        theirs = f"\n\n<information>{passages2string(items).strip()}</information>\n\n"
        assert theirs == format_information(hits)


def test_topk_default_empty_queries_and_unknown_fields(bm25_server):
    status, body = post(bm25_server.url, {"queries": ["capital largest", ""], "extra": 1})  # 4 passages match
    assert status == 200
    assert len(body["result"][0]) == 3  # topk omitted -> the server's --topk (3, Search-R1's default)
    assert body["result"][1] == []  # BM25 has no term to match in '' (Search-R1's BM25 server returns none too)
    assert post(bm25_server.url, {"queries": ["capital of France"], "topk": None})[1]["result"][0][0]["id"] == "0"
    assert post(bm25_server.url, {"queries": []}) == (200, {"result": []})
    status, body = post(bm25_server.url, {"queries": ["capital"], "topk": 100})  # more than the 8 passages
    assert status == 200 and 0 < len(body["result"][0]) <= 8


# ------------------------------------------------------------------------------------------------ other dialects
# The request bodies below are the ones each client builds, read from its source (attribution inline); the
# response is then read the way that client reads it.


def skyrl_passages2string(retrieval_result):
    """skyrl-gym 0.4.0, skyrl_gym/tools/search.py ``_passages2string`` (Apache-2.0), as its SearchToolGroup applies
    it to every entry of ``response.json()["result"]``."""
    format_reference = ""
    for idx, doc_item in enumerate(retrieval_result):
        content = doc_item["document"]["contents"].strip()
        format_reference += f"Doc {idx+1}: {content}\n"
    return format_reference


def test_skyrl_single_query_json_request(bm25_server, bm25_local):
    """skyrl-gym 0.4.0 ``call_search_api``: ``payload = {"query": query, "topk": topk, "return_scores":
    return_scores}`` posted as JSON (``return_scores=True`` from its SearchToolGroup); it iterates
    ``result`` as one list of passages per query."""
    query = QUERIES[0]
    status, data = http_request(bm25_server.url, "POST", "/retrieve",
                                json.dumps({"query": query, "topk": 3, "return_scores": True}).encode(),
                                {"Content-Type": "application/json", "Accept": "application/json"})
    assert status == 200
    body = json.loads(data)
    hits = bm25_local.search([query], k=3)[0]
    expected = {"result": [[{"document": {"id": h.doc_id, "contents": h.contents}, "score": h.score} for h in hits]]}
    assert body == expected  # a list of one result list: what `queries: [query]` gets
    assert post(bm25_server.url, {"queries": [query], "topk": 3, "return_scores": True}) == (200, expected)
    pretty = "\n---\n".join(skyrl_passages2string(r) for r in body["result"])
    assert pretty.startswith("Doc 1: \"Paris\"") and pretty.count("Doc ") == len(hits)


def gem_passages2string(result):
    """gem-llm 0.1.0, gem/tools/search_tool.py ``SearchTool._passages2string`` (Apache-2.0)."""
    format_reference = ""
    for idx, doc_item in enumerate(result):
        content = doc_item["document"]["contents"]
        title = content.split("\n")[0]
        text = "\n".join(content.split("\n")[1:])
        format_reference += f"Doc {idx + 1} (Title: {title})\n{text}\n\n"
    return format_reference


@pytest.mark.parametrize("return_scores", [True, False])
def test_gem_msgpack_request(bm25_server, bm25_local, return_scores):
    """gem-llm 0.1.0 ``SearchTool._search``: ``requests.post(url, data=msgspec.msgpack.encode({"query": query,
    "topk": self.topk, "return_scores": True}))`` with no Content-Type; it reads
    ``msgspec.msgpack.decode(response.content)["result"]`` as the flat list of its one query."""
    query = QUERIES[3]
    payload = msgpack.packb({"query": query, "topk": 3, "return_scores": return_scores})
    status, data = http_request(bm25_server.url, "POST", "/retrieve", payload)
    assert status == 200
    result = msgpack.unpackb(data)["result"]
    hits = bm25_local.search([query], k=3)[0]
    assert [item["document"] for item in result] == [{"id": h.doc_id, "contents": h.contents} for h in hits]
    assert [item["score"] for item in result] == ([h.score for h in hits] if return_scores else [None] * len(hits))
    assert gem_passages2string(result).startswith('Doc 1 (Title: "Python (programming language)")\nPython is')


def test_msgpack_batch_and_errors_answer_in_msgpack(bm25_server, bm25_local):
    status, data = http_request(bm25_server.url, "POST", "/retrieve",
                                msgpack.packb({"queries": QUERIES[:2], "topk": 2}),
                                {"Content-Type": "application/msgpack"})
    assert status == 200
    expected = {"result": [[{"id": h.doc_id, "contents": h.contents} for h in hits]
                           for hits in bm25_local.search(QUERIES[:2], k=2)]}
    assert msgpack.unpackb(data) == expected  # the Search-R1 shape, in msgpack
    assert post(bm25_server.url, {"queries": QUERIES[:2], "topk": 2}) == (200, expected)
    status, data = http_request(bm25_server.url, "POST", "/retrieve", b"\xc1\xc1",
                                {"Content-Type": "application/msgpack"})
    assert status == 400 and "not valid msgpack" in msgpack.unpackb(data)["detail"]
    status, data = http_request(bm25_server.url, "POST", "/retrieve", msgpack.packb({"query": 3}))
    assert status == 422 and "'query' must be a string" in msgpack.unpackb(data)["detail"]


BAD_REQUESTS = {
    "malformed JSON": (b'{"queries": ["a"', 400, "not valid JSON"),
    "not an object": (b'["a", "b"]', 422, "JSON object"),
    "missing queries": (b'{"topk": 3}', 422, "missing field 'queries'"),
    "query and queries": (b'{"query": "a", "queries": ["b"]}', 422, "not both"),
    "query not a string": (b'{"query": ["a"]}', 422, "'query' must be a string"),
    "queries not a list": (b'{"queries": "a"}', 422, "list of strings"),
    "queries item not a string": (b'{"queries": ["a", 3]}', 422, "queries[1]"),
    "topk zero": (b'{"queries": ["a"], "topk": 0}', 422, "positive integer"),
    "topk negative": (b'{"queries": ["a"], "topk": -2}', 422, "positive integer"),
    "topk not a number": (b'{"queries": ["a"], "topk": "3"}', 422, "positive integer"),
    "topk above the limit": (b'{"queries": ["a"], "topk": 5000}', 422, "limit"),
    "return_scores not a bool": (b'{"queries": ["a"], "return_scores": "yes"}', 422, "true or false"),
    "body over 10 MB": (b'{"queries": ["' + b"a" * (10 * MIB) + b'"]}', 413, "at most"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(bm25_server, case):
    body, status, message = BAD_REQUESTS[case]
    got, data = http_request(bm25_server.url, "POST", "/retrieve", body, {"Content-Type": "application/json"})
    assert got == status
    assert message in json.loads(data)["detail"]
    assert post(bm25_server.url, {"queries": ["capital of France"], "topk": 1})[1]["result"][0][0]["id"] == "0"
    assert http_request(bm25_server.url, "GET", "/health")[0] == 200


def test_chunked_body_over_the_limit_is_refused_and_a_large_body_under_it_is_served(bm25_server):
    big = b'{"queries": ["' + b"a" * (11 * MIB) + b'"]}'
    status, data = http_request(bm25_server.url, "POST", "/retrieve", big, chunked=True)  # no Content-Length
    assert status == 413 and "at most" in json.loads(data)["detail"]
    under = json.dumps({"queries": ["capital of France " + "x" * MIB], "topk": 1}).encode()  # ~1 MB: accepted
    status, data = http_request(bm25_server.url, "POST", "/retrieve", under)
    assert status == 200 and len(json.loads(data)["result"]) == 1
    assert http_request(bm25_server.url, "GET", "/nope")[0] == 404
    assert http_request(bm25_server.url, "GET", "/retrieve")[0] == 405


def test_health(bm25_server):
    status, data = http_request(bm25_server.url, "GET", "/health")
    health = json.loads(data)
    assert status == 200 and health["status"] == "ok" and health["passages"] == 8
    assert health["retriever"].startswith("bm25") and health["default_topk"] == 3


# ------------------------------------------------------------------------------------------------ batching


def test_micro_batcher_joins_concurrent_requests_and_groups_by_k():
    retriever = SlowRetriever(delay=0.05)

    async def scenario():
        batcher = MicroBatcher(retriever.search, max_batch=64, max_wait_s=0.01)
        await batcher.start()
        try:
            jobs = [batcher.submit([f"q{i}", f"r{i}"], 2 if i % 2 else 3) for i in range(20)]
            return await asyncio.gather(*jobs), batcher.stats
        finally:
            await batcher.stop()

    results, stats = asyncio.run(scenario())
    for i, rows in enumerate(results):  # every request gets its own queries' results, at its own k
        k = 2 if i % 2 else 3
        assert [[h.doc_id for h in row] for row in rows] == [[f"q{i}#{j}" for j in range(k)],
                                                              [f"r{i}#{j}" for j in range(k)]]
    assert stats.requests == 20 and stats.queries == 40
    assert len(retriever.calls) == stats.batches <= 4  # one call per distinct k, not one per request
    assert all(len({k}) == 1 for _, k in retriever.calls) and {k for _, k in retriever.calls} == {2, 3}


def test_micro_batcher_respects_max_batch_and_reports_errors():
    retriever = SlowRetriever(delay=0.0)

    async def scenario():
        batcher = MicroBatcher(retriever.search, max_batch=4, max_wait_s=0.05)
        await batcher.start()
        try:
            ok = await asyncio.gather(*[batcher.submit([f"q{i}"], 1) for i in range(10)])
            with pytest.raises(RuntimeError, match="exploded"):
                await batcher.submit(["boom"], 1)
            after = await batcher.submit(["fine"], 1)
            return ok, after
        finally:
            await batcher.stop()

    ok, after = asyncio.run(scenario())
    assert [row[0][0].doc_id for row in ok] == [f"q{i}#0" for i in range(10)]
    assert max(len(q) for q, _ in retriever.calls) <= 4
    assert after[0][0].doc_id == "fine#0"


def test_server_batches_concurrent_http_requests_into_few_retriever_calls():
    retriever = SlowRetriever(delay=0.1)
    with serve_in_thread(create_app(retriever, ServerSettings(max_wait_ms=5))) as url:
        def one(i: int):
            return i, post(url, {"queries": [f"query {i}"], "topk": 2, "return_scores": True})

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(one, range(24)))
        for i, (status, body) in answers:
            assert status == 200
            assert [item["document"]["id"] for item in body["result"][0]] == [f"query {i}#0", f"query {i}#1"]
            assert [item["score"] for item in body["result"][0]] == [1.0, 0.5]
        assert sum(len(q) for q, _ in retriever.calls) == 24
        assert len(retriever.calls) <= 8, retriever.calls  # 24 requests, a handful of encoder + FAISS calls
        health = json.loads(http_request(url, "GET", "/health")[1])
        assert health["requests"] == 24 and health["batches"] == len(retriever.calls)
        assert health["max_batch_queries"] > 1


def test_a_failing_search_gets_a_500_and_the_server_keeps_serving():
    retriever = SlowRetriever(delay=0.0)
    with serve_in_thread(create_app(retriever)) as url:
        status, body = post(url, {"queries": ["boom"]})
        assert status == 500 and "index exploded" in body["detail"]
        status, body = post(url, {"queries": ["fine"], "topk": 1})
        assert status == 200 and body["result"][0][0]["id"] == "fine#0"


def test_server_settings_are_validated():
    with pytest.raises(ValueError, match="max_batch"):
        ServerSettings(max_batch=0)
    with pytest.raises(ValueError, match="default_topk"):
        ServerSettings(default_topk=5, max_topk=3)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServerSettings(max_wait_ms=-1)


def test_several_worker_processes_share_the_port(tiny_corpus_path, tmp_path):
    server = ServerProcess(tmp_path, "--retriever", "bm25", "--corpus", str(tiny_corpus_path), "--workers", "2")
    server.start()
    try:
        pids, deadline = set(), time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:  # the second worker may still be starting
            # a new connection per request: the kernel spreads them over the workers that are up
            pids.add(json.loads(http_request(server.url, "GET", "/health")[1])["pid"])
            time.sleep(0.05)
        assert len(pids) == 2 and server.proc.pid not in pids
        assert post(server.url, {"queries": ["capital of France"], "topk": 1})[1]["result"][0][0]["id"] == "0"
    finally:
        server.stop()


def test_serve_refuses_bad_arguments(tmp_path):
    run = subprocess.run([sys.executable, "-m", "search_gym.cli", "serve", "--retriever", "hybrid", "--index-dir",
                          str(tmp_path), "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "index_dir" in run.stderr
    run = subprocess.run([sys.executable, "-m", "search_gym.cli", "serve", "--corpus", str(tmp_path / "none.jsonl"),
                          "--retriever", "bm25", "--port", str(free_port())], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "does not exist" in run.stderr


# ------------------------------------------------------------------------------------------------ remote retriever


def test_remote_retriever_returns_the_in_process_passages(bm25_server, bm25_local):
    remote = RemoteRetriever(bm25_server.url + "/retrieve")  # Search-R1's search_url form works too
    queries = QUERIES + ["   ", "capital of France"]
    for k in (1, 3):
        assert remote.search(queries, k=k) == bm25_local.search(queries, k=k)  # ids, contents and scores exact
    assert remote.search(["", "capital"], k=2, keep_empty=True) == bm25_local.search(["", "capital"], k=2,
                                                                                       keep_empty=True)
    assert remote.search("capital of France", k=1) == bm25_local.search("capital of France", k=1)
    assert remote.search([], k=3) == [] and remote.search(["x"], k=0) == [[]]
    assert len(remote) == 8


@needs_minilm
def test_remote_dense_retriever_matches_in_process_faiss(tiny_corpus_path, tmp_path):
    local = DenseRetriever(tiny_corpus_path, progress=False)
    expected = local.search(QUERIES, k=3)
    server = ServerProcess(tmp_path, "--retriever", "dense", "--corpus", str(tiny_corpus_path)).start()
    try:
        got = RemoteRetriever(server.url).search(QUERIES, k=3)
        for g, e in zip(got, expected):
            assert [(h.doc_id, h.contents) for h in g] == [(h.doc_id, h.contents) for h in e]
            assert [h.score for h in g] == pytest.approx([h.score for h in e], abs=1e-5)
        # Search-R1's dense server searches '' too (the encoder sees only its prefix); so do we.
        status, body = post(server.url, {"queries": [""], "topk": 2})
        assert status == 200 and len(body["result"][0]) == 2
    finally:
        server.stop()


def test_env_searches_through_the_server_like_in_process(bm25_server, tiny_corpus_path, tiny_qa_path):
    from search_gym.envs import SearchEnv

    remote_env = SearchEnv(dataset=str(tiny_qa_path), retriever=bm25_server.url, topk=2)
    local_env = SearchEnv(dataset=str(tiny_qa_path), retriever="bm25", corpus_path=str(tiny_corpus_path), topk=2)
    for env in (remote_env, local_env):
        env.reset(seed=0, options={"index": 0})
    action = "<think>look it up</think><search>capital of France</search>"
    remote_obs, *_ = remote_env.step(action)
    local_obs, *_ = local_env.step(action)
    assert remote_obs == local_obs and "Paris" in json.dumps(remote_obs)
    assert pickle.loads(pickle.dumps(remote_env)).retriever_config == remote_env.retriever_config


def test_a_run_survives_a_server_restart(tiny_corpus_path, tiny_qa_path, tmp_path):
    """A vector env stepping through the server keeps going while the server is stopped and started again, and
    sees exactly what an env holding the index in-process sees."""
    from search_gym.envs import SearchVectorEnv

    n = len(TINY_QA)
    server = ServerProcess(tmp_path, "--retriever", "bm25", "--corpus", str(tiny_corpus_path)).start()
    common = {"num_envs": n, "dataset": str(tiny_qa_path), "max_turns": 8}
    remote = SearchVectorEnv(retriever={"kind": server.url, "retry_s": 120.0, "timeout_s": 10.0}, **common)
    local = SearchVectorEnv(retriever="bm25", corpus_path=str(tiny_corpus_path), **common)
    options = {"per_env": [{"index": i} for i in range(n)]}
    assert remote.reset(seed=0, options=options)[0] == local.reset(seed=0, options=options)[0]
    restarter = None
    try:
        for step in range(4):
            if step == 2:  # stop the server; bring it back on the same port a second later, mid-step
                server.stop()
                restarter = threading.Thread(target=lambda: (time.sleep(1.0), server.start()))
                restarter.start()
            # new queries every step, so the client cache cannot hide the outage
            actions = [f"<search>{q} {'and more ' * step}</search>" for _, q, _ in TINY_QA]
            remote_step, local_step = remote.step(actions), local.step(actions)
            assert remote_step[0] == local_step[0]  # observations, information blocks included
            assert (remote_step[1] == local_step[1]).all() and (remote_step[3] == local_step[3]).all()
            assert "<information>Doc 1(Title:" in json.dumps(remote_step[0])
        assert remote.retriever.stats["retries"] > 0  # the outage was really waited out
    finally:
        if restarter is not None:
            restarter.join(120)
        server.stop()


def test_remote_retriever_cache_is_an_lru(bm25_server):
    remote = RemoteRetriever(bm25_server.url, cache_size=2)
    remote.search(["capital of France", "capital of France"], k=1)  # duplicates are sent once
    assert remote.stats["queries_sent"] == 1 and remote.stats["requests"] == 1
    remote.search(["capital of France"], k=1)
    assert remote.stats == {"requests": 1, "retries": 0, "cache_hits": 1, "queries_sent": 1}
    remote.search(["capital of France"], k=2)  # another k is another entry
    remote.search(["opera"], k=1)  # evicts the least recently used: ("capital of France", 1)
    assert remote.stats["requests"] == 3
    remote.search(["capital of France"], k=1)
    assert remote.stats["requests"] == 4
    uncached = RemoteRetriever(bm25_server.url, cache_size=0)
    uncached.search(["opera"], k=1)
    uncached.search(["opera"], k=1)
    assert uncached.stats["requests"] == 2 and uncached.stats["cache_hits"] == 0
    clone = pickle.loads(pickle.dumps(remote))
    assert clone.stats["requests"] == 0 and clone.search(["opera"], k=1) == remote.search(["opera"], k=1)


def test_remote_retriever_splits_large_batches(bm25_server, bm25_local):
    remote = RemoteRetriever(bm25_server.url, batch_size=2, cache_size=0)
    assert remote.search(QUERIES, k=2) == bm25_local.search(QUERIES, k=2)
    assert remote.stats["requests"] == 3


def test_remote_retriever_keeps_requests_under_the_body_limit(bm25_server, bm25_local):
    """400 long 4-byte-per-character queries are 13 MB of JSON: sent in ~4 MiB requests, never a 413."""
    queries = [f"capital {i} " + "\U0001F600" * 8100 for i in range(400)]
    remote = RemoteRetriever(bm25_server.url, cache_size=0)
    assert remote.search(queries, k=1) == bm25_local.search(queries, k=1)
    assert remote.stats["requests"] == 4
    assert remote.search(["Zürich, São Paulo, 東京 capital"], k=2) == bm25_local.search(["Zürich, São Paulo, 東京 capital"], k=2)


def test_remote_retriever_errors_are_clear(bm25_server):
    with pytest.raises(ValueError, match="HTTP 422.*limit"):  # a 4xx is the caller's mistake: not retried
        RemoteRetriever(bm25_server.url).search(["a"], k=5000)
    nobody = RemoteRetriever(f"http://127.0.0.1:{free_port()}", retry_s=1.0, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(RemoteRetrieverError, match="did not answer.*retry_s=1"):
        nobody.search(["a"], k=1)
    assert time.monotonic() - t0 < 10 and nobody.stats["retries"] > 0


def test_remote_retriever_retries_a_500_only_twice():
    retriever = SlowRetriever(delay=0.0)
    with serve_in_thread(create_app(retriever)) as url:
        remote = RemoteRetriever(url, backoff_s=0.01)
        with pytest.raises(RemoteRetrieverError, match="HTTP 500 3 times.*exploded"):
            remote.search(["boom"], k=1)
        assert len(retriever.calls) == 3 and remote.search(["ok"], k=1)[0][0].doc_id == "ok#0"


# ------------------------------------------------------------------------------------------------ config


def test_a_url_is_a_retriever_config():
    config = RetrieverConfig(kind="http://127.0.0.1:8000")
    assert config.kind == "remote" and config.url == "http://127.0.0.1:8000"
    assert RetrieverConfig(kind="remote", url="http://h:1/retrieve") == RetrieverConfig(kind="remote",
                                                                                        url="http://h:1/retrieve")
    retriever = make_retriever(RetrieverConfig(kind="https://search.example:9443/prefix/", timeout_s=5, retry_s=7))
    assert isinstance(retriever, RemoteRetriever) and retriever.url == "https://search.example:9443/prefix"
    assert (retriever.timeout_s, retriever.retry_s) == (5.0, 7.0)
    assert parse_server_url("http://localhost/retrieve") == ("http", "localhost", 80, "")
    for bad, match in [({"kind": "remote"}, "needs url"), ({"kind": "http://"}, "no host"),
                       ({"kind": "http://h:99999"}, "bad port"), ({"kind": "ftp://h"}, "must be one of"),
                       ({"kind": "http://h:1", "corpus_path": "x.jsonl"}, "do not apply"),
                       ({"kind": "dense", "url": "http://h:1"}, "only applies"),
                       ({"kind": "http://h:1", "timeout_s": 0}, "timeout_s"),
                       ({"kind": "http://h:1?x=1"}, "query string")]:
        with pytest.raises(ValueError, match=match):
            RetrieverConfig(**bad)
