"""``search-gym serve``: run the Search-R1-compatible retrieval server over any retriever config.

    search-gym serve                                   # embedded corpus, MiniLM, flat FAISS, 127.0.0.1:8000
    search-gym serve --retriever bm25 --port 8001
    search-gym serve --corpus wiki-18.jsonl --encoder e5-base-v2 --index-type ivfpq --host 0.0.0.0 --workers 2
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from search_gym.retrieval.factory import RetrieverConfig
from search_gym.retrieval.server import INSTALL_HINT, SERVE_ENV_VAR, ServerSettings


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``serve`` subcommand on the main CLI's subparsers."""
    help_ = RetrieverConfig.help()
    server_help = ServerSettings.help()
    p = sub.add_parser(
        "serve",
        help="HTTP retrieval server with Search-R1's POST /retrieve API (needs the 'serve' extra)",
        description="Serve a retriever over Search-R1's protocol: POST /retrieve {\"queries\": [...], \"topk\": k, "
        "\"return_scores\": bool} -> {\"result\": [[doc | {\"document\": doc, \"score\": s}, ...], ...]}; "
        "GET /health. Concurrent requests are batched into one encoder + FAISS call. The index is built first "
        "when it is missing. Clients: RetrieverConfig(kind='http://host:port') or Search-R1's search_url.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--retriever", default="dense", choices=["dense", "bm25", "hybrid"], help=help_["kind"])
    p.add_argument("--corpus", default=None, help=help_["corpus_path"])
    p.add_argument("--encoder", default="minilm", help=help_["encoder"])
    p.add_argument("--index-type", default="flat", help=help_["index_type"])
    p.add_argument("--index-dir", default=None, help=help_["index_dir"])
    p.add_argument("--device", default=None, help=help_["device"])
    p.add_argument("--rrf-k", type=float, default=60.0, help=help_["rrf_k"])
    p.add_argument("--topk", type=int, default=3, help=server_help["default_topk"])
    p.add_argument("--max-topk", type=int, default=1000, help=server_help["max_topk"])
    p.add_argument("--max-batch", type=int, default=256, help=server_help["max_batch"])
    p.add_argument("--max-wait-ms", type=float, default=2.0, help=server_help["max_wait_ms"])
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MiB (413 above)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port; each loads its own copy of the index (RAM x N)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / FAISS threads per worker (default: all cores with 1 worker, cores / N with N)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs CPU)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """Build (if needed) and load the index, then run uvicorn until interrupted."""
    try:
        import fastapi  # noqa: F401  (create_app imports it; checked here for one clear message)
        import uvicorn
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    from search_gym.retrieval.factory import clear_retrievers, make_retriever
    from search_gym.retrieval.server import create_app, worker_environment

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers < 1:
        print("--workers must be >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"--port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    threads = args.threads
    if threads is None and args.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // args.workers)  # N workers x all cores would oversubscribe
    try:
        config = RetrieverConfig(kind=args.retriever, corpus_path=args.corpus, encoder=args.encoder,
                                 index_type=args.index_type, index_dir=args.index_dir, device=args.device,
                                 rrf_k=args.rrf_k)
        settings = ServerSettings(default_topk=args.topk, max_topk=args.max_topk,
                                  max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_batch=args.max_batch,
                                  max_wait_ms=args.max_wait_ms, threads=threads)
        retriever = make_retriever(config)
        if hasattr(retriever, "build"):
            folders = retriever.build(progress=True)  # once here, so N workers do not race to build it
            logging.getLogger(__name__).info("index ready: %s", folders)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"search-gym serve: {exc}", file=sys.stderr)
        return 2

    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log}
    if args.workers == 1:
        uvicorn.run(create_app(retriever, settings), **common)
        return 0
    # Several workers: uvicorn spawns processes that each import the app factory, which reads this variable.
    # The parent's copy of the index is dropped first so it does not sit in RAM beside the workers' copies.
    os.environ[SERVE_ENV_VAR] = worker_environment(config, settings)
    del retriever
    clear_retrievers()
    gc.collect()
    uvicorn.run("search_gym.retrieval.server:app_from_env", factory=True, workers=args.workers, **common)
    return 0
