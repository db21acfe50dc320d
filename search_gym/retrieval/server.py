"""HTTP retrieval server speaking Search-R1's ``/retrieve`` protocol (FastAPI + uvicorn: ``pip install
'search-gym[serve]'``), so verl, SkyRL, GEM and Search-R1's own rollout code can search our indexes.

Protocol (Search-R1, ``search_r1/search/retrieval_server.py``)::

    POST /retrieve   {"queries": ["q1", "q2"], "topk": 3, "return_scores": false}
      -> {"result": [[doc, doc, doc], [doc, ...]]}                                  (return_scores false)
      -> {"result": [[{"document": doc, "score": 0.83}, ...], ...]}                 (return_scores true)
    doc = {"id": "123", "contents": "\\"Title\\"\\ntext"}                              (the corpus row's fields)

``topk`` may be omitted or null (the server's ``--topk``, 3 by default, as in Search-R1); ``return_scores``
defaults to false; other fields are ignored. As in Search-R1's dense server, an empty query string is searched
like any other (the dense encoder sees only its prefix); BM25 returns no passage for it.

The dialects of other clients are answered in the shape and encoding each expects (:func:`parse_request`):

* ``{"query": "q1", ...}`` (one string; SkyRL's search tool since July 2025, skyrl-gym 0.4.0): answered as
  ``queries: ["q1"]`` is, a list of one result list, in JSON;
* a msgpack body (GEM's ``SearchTool``, gem-llm 0.1.0, whose own server is a mosec one): ``{"query": "q1", ...}``
  gets a msgpack ``{"result": [{"document": doc, "score": 0.83 or None}, ...]}``, the flat list of its one query
  with a score slot even when no score was asked for (as GEM's server answers); ``queries`` lists in msgpack get
  the Search-R1 shape, in msgpack. A body is read as msgpack when its Content-Type says ``msgpack`` or when it
  starts with a byte no JSON text starts with (GEM's client sends no Content-Type).

Exactly one of ``queries`` and ``query`` must be given.

Where it differs on purpose: bad requests get a 4xx with ``{"detail": "..."}`` (in the request's encoding)
instead of being coerced or crashing a worker (malformed JSON or msgpack 400; wrong or missing fields, ``topk``
<= 0 or above ``max_topk`` 422; a body over ``max_body_bytes`` 413), and a corpus smaller than ``topk`` gives fewer
passages instead of Search-R1's FAISS ``-1`` ids (which its server turns into the last corpus row).
``GET /health`` reports readiness and counters. Decoding msgpack needs the ``msgpack`` package (the serve extra).

Concurrent requests are searched together (:class:`~search_gym.retrieval.batcher.MicroBatcher`): one encoder
pass and one FAISS call per batch.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime to inject the
# Request, and the FastAPI names are imported inside create_app (the extra is optional), where only real
# annotation objects can reach them.
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from search_gym.retrieval.base import Hit, accepts_keep_empty
from search_gym.retrieval.batcher import MicroBatcher

logger = logging.getLogger(__name__)

#: The environment variable through which ``search-gym serve --workers N`` hands each worker process its settings.
SERVE_ENV_VAR = "SEARCH_GYM_SERVE_CONFIG"
INSTALL_HINT = "the retrieval server needs FastAPI and uvicorn: pip install 'search-gym[serve]'"


@dataclass(frozen=True)
class ServerSettings:
    """Limits and batching of one server process."""

    default_topk: int = field(default=3, metadata={"help": "passages per query when a request gives no topk"})
    max_topk: int = field(default=1000, metadata={"help": "largest topk a request may ask for (422 above)"})
    max_body_bytes: int = field(default=10 * 1024 * 1024,
                                metadata={"help": "largest request body in bytes (413 above)"})
    max_batch: int = field(default=256, metadata={"help": "most queries searched in one retriever call"})
    max_wait_ms: float = field(default=2.0,
                               metadata={"help": "how long an idle server waits for more requests to join a batch"})
    threads: int | None = field(default=None,
                                metadata={"help": "torch and FAISS threads of the search thread; None = libraries' "
                                                  "default (all cores)"})

    def __post_init__(self) -> None:
        for name in ("default_topk", "max_topk", "max_body_bytes", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk={self.default_topk} is above max_topk={self.max_topk}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RetrieveRequest:
    """A decoded /retrieve request: what to search and how to answer (see the module docstring's dialects)."""

    queries: list[str]
    topk: int
    return_scores: bool
    single: bool = False  # the body gave one ``query`` string instead of a ``queries`` list
    msgpack: bool = False  # the body was msgpack: answer in msgpack


def parse_retrieve_request(payload: Any, settings: ServerSettings, *, msgpack: bool = False) -> RetrieveRequest:
    """The :class:`RetrieveRequest` of a decoded /retrieve body, or :class:`RequestError` (422)."""
    example = '{"queries": ["who wrote hamlet"], "topk": 3, "return_scores": true}'
    if not isinstance(payload, dict):
        raise RequestError(422, f"the body must be a JSON object like {example}, got a JSON {_json_type(payload)}")
    if "queries" in payload and "query" in payload:
        raise RequestError(422, "give either 'queries' (a list of strings) or 'query' (one string), not both")
    single = "query" in payload and "queries" not in payload
    if single:
        if not isinstance(payload["query"], str):
            raise RequestError(422, f"'query' must be a string, got a JSON {_json_type(payload['query'])}")
        queries = [payload["query"]]
    elif "queries" not in payload:
        raise RequestError(422, f"missing field 'queries' (a list of strings; or 'query', one string), e.g. {example}")
    else:
        queries = payload["queries"]
        if not isinstance(queries, list):
            raise RequestError(422, f"'queries' must be a list of strings, got a JSON {_json_type(queries)}")
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise RequestError(422, f"queries[{i}] must be a string, got a JSON {_json_type(q)}")
    topk = payload.get("topk")
    if topk is None:
        topk = settings.default_topk
    else:
        if isinstance(topk, float) and topk.is_integer():
            topk = int(topk)  # 3.0 from a loosely typed client
        if isinstance(topk, bool) or not isinstance(topk, int):
            raise RequestError(422, f"'topk' must be a positive integer, got a JSON {_json_type(topk)}")
        if topk <= 0:
            raise RequestError(422, f"'topk' must be a positive integer, got {topk}")
        if topk > settings.max_topk:
            raise RequestError(422, f"'topk'={topk} is above this server's limit of {settings.max_topk}")
    return_scores = payload.get("return_scores", False)
    if return_scores is None:
        return_scores = False
    if not isinstance(return_scores, bool):
        raise RequestError(422, f"'return_scores' must be true or false, got a JSON {_json_type(return_scores)}")
    return RetrieveRequest(queries, topk, return_scores, single=single, msgpack=msgpack)


#: First bytes a JSON text can start with (RFC 8259: whitespace, then a value); anything else is taken for msgpack.
_JSON_FIRST_BYTES = frozenset(b' \t\r\n{["-0123456789tfn')


def is_msgpack(body: bytes, content_type: str | None) -> bool:
    """Whether a request body is msgpack: said by its Content-Type, or sniffed from its first byte (GEM's client
    posts raw msgpack bytes with no Content-Type)."""
    if content_type and "msgpack" in content_type.lower():
        return True
    if content_type and "json" in content_type.lower():
        return False
    return bool(body) and body[0] not in _JSON_FIRST_BYTES


def decode_body(body: bytes, content_type: str | None) -> tuple[Any, bool]:
    """``(payload, was_msgpack)`` of a request body, or :class:`RequestError` 400 when it does not decode."""
    if is_msgpack(body, content_type):
        try:
            import msgpack
        except ImportError:
            raise RequestError(415, "msgpack bodies need the msgpack package on the server: "
                                    "pip install 'search-gym[serve]'") from None
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False), True
        except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types for bad bytes
            raise RequestError(400, f"the body is not valid msgpack ({type(exc).__name__}: {exc})") from None
    try:
        return json.loads(body), False
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc})") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def hit_document(hit: Hit) -> dict[str, str]:
    """A hit as Search-R1's server returns a passage: the corpus row's ``id`` and ``contents``."""
    return {"id": hit.doc_id, "contents": hit.contents}


def format_result(results: Sequence[Sequence[Hit]], return_scores: bool) -> dict[str, Any]:
    """The Search-R1 /retrieve response body for per-query hit lists."""
    if return_scores:
        return {"result": [[{"document": hit_document(h), "score": float(h.score)} for h in row] for row in results]}
    return {"result": [[hit_document(h) for h in row] for row in results]}


def response_body(request: RetrieveRequest, results: Sequence[Sequence[Hit]]) -> dict[str, Any]:
    """The response of ``request``'s dialect: GEM's (msgpack, one ``query``) is the flat list of its query with a
    score slot on every item (None when not asked for); every other dialect gets the Search-R1 shape."""
    if request.msgpack and request.single:
        return {"result": [{"document": hit_document(h), "score": float(h.score) if request.return_scores else None}
                           for h in (results[0] if results else [])]}
    return format_result(results, request.return_scores)


def encode_body(body: Any, as_msgpack: bool) -> tuple[bytes, str]:
    """``(bytes, media type)`` of a response in the request's encoding."""
    if as_msgpack:
        import msgpack

        return msgpack.packb(body, use_bin_type=True), "application/msgpack"
    return dumps(body), "application/json"


def dumps(body: Any) -> bytes:
    """Compact UTF-8 JSON; falls back to ASCII escapes for text that is not valid Unicode (lone surrogates)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def set_threads(n: int | None) -> None:
    """Torch intra-op threads and the calling thread's OpenMP (FAISS) threads; None leaves the defaults."""
    if n is None:
        return
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def create_app(retriever: Any, settings: ServerSettings | None = None):
    """A FastAPI app serving ``retriever`` over Search-R1's /retrieve protocol (plus ``GET /health``).

    The retriever is loaded (its index built if missing) when the app starts, before the first request is taken.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    import contextlib

    settings = settings or ServerSettings()
    keep_empty = accepts_keep_empty(retriever)  # then '' is searched like any query, as Search-R1 does

    def search(queries: list[str], k: int) -> list[list[Hit]]:
        if keep_empty:
            return retriever.search(queries, k, keep_empty=True)
        return retriever.search(queries, k)

    def warm_up() -> None:
        # Runs in the search thread: OpenMP thread counts are per thread, and the index loads before serving.
        set_threads(settings.threads)
        if hasattr(retriever, "load"):
            retriever.load()

    batcher = MicroBatcher(search, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000.0,
                           on_start=warm_up)
    started = {"at": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        t0 = time.perf_counter()
        await batcher.start()
        started["at"] = time.time()
        logger.info("retriever %s ready in %.1f s", getattr(retriever, "name", retriever), time.perf_counter() - t0)
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="search-gym retrieval server", lifespan=lifespan,
                  description="Search-R1's /retrieve protocol over a search-gym retriever")
    app.state.retriever = retriever
    app.state.batcher = batcher
    app.state.settings = settings

    def answer(body: Any, as_msgpack: bool, status: int = 200) -> Response:
        content, media_type = encode_body(body, as_msgpack)
        return Response(content, status_code=status, media_type=media_type)

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Response:
        as_msgpack = False
        try:
            body = await read_body(request, settings.max_body_bytes)
            content_type = request.headers.get("content-type")
            as_msgpack = is_msgpack(body, content_type)
            payload, as_msgpack = decode_body(body, content_type)
            parsed = parse_retrieve_request(payload, settings, msgpack=as_msgpack)
        except RequestError as exc:
            return answer({"detail": exc.message}, as_msgpack and exc.status != 415, exc.status)
        if not parsed.queries:
            return answer({"result": []}, parsed.msgpack)
        try:
            results = await batcher.submit(parsed.queries, parsed.topk)
        except Exception as exc:  # noqa: BLE001 - one failed search must not take the server down
            logger.exception("search failed for %d queries", len(parsed.queries))
            return answer({"detail": f"retrieval failed: {type(exc).__name__}: {exc}"}, parsed.msgpack, 500)
        return answer(response_body(parsed, results), parsed.msgpack)

    @app.get("/health")
    async def health() -> Any:
        passages = None
        with contextlib.suppress(Exception):
            passages = len(retriever)
        return JSONResponse({
            "status": "ok",
            "retriever": str(getattr(retriever, "name", type(retriever).__name__)),
            "passages": passages,
            "pid": os.getpid(),
            "started_at": started["at"],
            "default_topk": settings.default_topk,
            "max_topk": settings.max_topk,
            **batcher.stats.as_dict(),
        })

    return app


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, or :class:`RequestError` 413 when it is longer than ``limit`` bytes.

    A body that is too long is still read to its end (discarded, up to a hard cap) before answering: a client
    such as ``requests`` sends the whole body before it reads the response, and a server that closed the
    connection early would make it see a connection reset instead of the 413 and its message.
    """
    declared = request.headers.get("content-length")
    drain_cap = max(4 * limit, 64 << 20)
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise RequestError(400, f"bad Content-Length header {declared!r}") from None
        if declared_n > drain_cap:
            raise RequestError(413, f"the body is {declared_n} bytes; this server accepts at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > drain_cap:
            break
    if size > limit:
        raise RequestError(413, f"the body is {'over ' if size > drain_cap else ''}{size} bytes; this server "
                                f"accepts at most {limit} (split the queries over several requests)")
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------------ worker processes


def worker_environment(retriever_config: Any, settings: ServerSettings) -> str:
    """The JSON that ``search-gym serve --workers N`` puts in :data:`SERVE_ENV_VAR` for :func:`app_from_env`."""
    return json.dumps({"retriever": asdict(retriever_config), "settings": asdict(settings)})


def app_from_env():
    """App factory of a worker process (``uvicorn ...:app_from_env --factory``): settings from the environment."""
    from search_gym.retrieval.factory import RetrieverConfig, make_retriever

    raw = os.environ.get(SERVE_ENV_VAR)
    if not raw:
        raise RuntimeError(f"${SERVE_ENV_VAR} is not set; start workers with `search-gym serve --workers N`")
    spec = json.loads(raw)
    return create_app(make_retriever(RetrieverConfig(**spec["retriever"])), ServerSettings(**spec["settings"]))
