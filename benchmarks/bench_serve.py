"""Retrieval server vs in-process retrieval, side by side in one run: queries/s and p50 / p99 latency.

The server is a real ``search-gym serve`` subprocess on loopback (the same retriever config as the in-process
side, the same built index); clients are threads sharing one :class:`RemoteRetriever` (one keep-alive connection
each, client cache off so every query really goes to the server). Queries are the embedded QA test questions,
cycled.

Each scenario is ``clients`` concurrent clients, each sending requests of ``per_request`` queries (both sides
answer the same ``--queries`` queries per phase):

* server: exactly that, through HTTP; the server's micro-batcher joins concurrent requests into one encoder +
  FAISS call;
* in-process: ``Retriever.search`` on batches of ``clients x per_request`` queries, one after another: the same
  number of queries in flight, batched perfectly for free (what one process holding the index and all the
  queries would do). Latency is per call there, per request on the server.

For server phases the table also gives the queries per retriever call the micro-batcher achieved and the share
of the phase's wall time the server spent inside the retriever (the rest is HTTP, JSON and waiting for clients).
Every phase also records the CPU time of both processes (this one and the server) per query: when the CPU is the
bottleneck, "in-process / server CPU per query" is the throughput ratio to expect. It is steadier than wall-clock
rates on a machine others are loading only with ``--threads 1``: with several threads, OpenMP workers spin while
they wait for a descheduled peer, and that spinning is counted as CPU time too.

Repeats are interleaved (in-process then server, then server then in-process, ...) so load on the machine hits
both sides alike; queries/s is the median over repeats with the min-max spread. The run is bounded: a fixed number
of queries per phase and a wall-clock cap for the whole run (a phase cut short by the cap says so). Any failed
request is an error; the script exits with status 1 if there was one.

    nice -n 5 python benchmarks/bench_serve.py --scenarios 32x1 1x32 --queries 256 --repeats 3 [--threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata as md
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Phase:
    """One measured phase: latencies in seconds, queries answered, wall time, errors, whether the cap cut it."""

    latencies: list[float] = field(default_factory=list)
    queries: int = 0
    wall: float = 0.0
    errors: int = 0
    capped: bool = False
    retries: int = 0
    batches: int = 0  # server phases: retriever calls the server made
    search_s: float = 0.0  # server phases: seconds the server spent inside the retriever
    cpu_s: float = float("nan")  # CPU seconds of this process and the server process together during the phase

    @property
    def qps(self) -> float:
        return self.queries / self.wall if self.wall > 0 else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "search_gym.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--retriever", args.retriever, "--index-type", args.index_type, "--log-level", "warning",
           "--max-wait-ms", str(args.max_wait_ms)] + (["--device", args.device] if args.device else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log in {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"server did not come up in 600 s; log in {log_path}")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def measured(fn, server_pid: int, *args) -> Phase:
    """Run one phase and record the CPU time both processes spent in it.

    Why: on a shared, saturated CPU, wall-clock rates swing with other people's jobs, while the CPU time a query
    costs barely moves; when the CPU is the bottleneck, throughput is inversely proportional to it.
    """
    before = process_cpu_seconds(os.getpid()) + process_cpu_seconds(server_pid)
    phase = fn(*args)
    phase.cpu_s = process_cpu_seconds(os.getpid()) + process_cpu_seconds(server_pid) - before
    return phase


def query_stream(questions: list[str], start: int, n: int) -> list[str]:
    return [questions[(start + i) % len(questions)] for i in range(n)]


def run_in_process(retriever, questions: list[str], clients: int, per_request: int, n_queries: int, k: int,
                   deadline: float) -> Phase:
    batch = clients * per_request
    calls = max(1, n_queries // batch)
    phase = Phase()
    t0 = time.perf_counter()
    for c in range(calls):
        if time.monotonic() > deadline:
            phase.capped = True
            break
        queries = query_stream(questions, c * batch, batch)
        t = time.perf_counter()
        try:
            out = retriever.search(queries, k=k)
            if len(out) != len(queries) or any(len(row) != k for row in out):
                phase.errors += 1
        except Exception:  # noqa: BLE001 - counted, reported, exit status 1
            phase.errors += 1
        phase.latencies.append(time.perf_counter() - t)
        phase.queries += batch
    phase.wall = time.perf_counter() - t0
    return phase


def run_server(remote, questions: list[str], clients: int, per_request: int, n_queries: int, k: int,
               deadline: float) -> Phase:
    phase = Phase()
    lock = threading.Lock()
    per_client = max(1, n_queries // (clients * per_request))  # requests per client
    retries_before = remote.stats["retries"]
    health_before = remote.health()

    def client(c: int) -> None:
        for r in range(per_client):
            if time.monotonic() > deadline:
                with lock:
                    phase.capped = True
                return
            queries = query_stream(questions, (r * clients + c) * per_request, per_request)
            t = time.perf_counter()
            try:
                out = remote.search(queries, k=k)
                ok = len(out) == len(queries) and all(len(row) == k for row in out)
            except Exception:  # noqa: BLE001
                ok = False
            dt = time.perf_counter() - t
            with lock:
                phase.latencies.append(dt)
                phase.queries += per_request
                phase.errors += 0 if ok else 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    phase.wall = time.perf_counter() - t0
    phase.retries = remote.stats["retries"] - retries_before
    health_after = remote.health()
    phase.batches = health_after["batches"] - health_before["batches"]
    phase.search_s = health_after["search_seconds"] - health_before["search_seconds"]
    return phase


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retriever", default="dense", choices=["dense", "bm25", "hybrid"], help="retriever kind")
    parser.add_argument("--index-type", default="flat", help="dense index type")
    parser.add_argument("--device", default=None, help="torch device of the encoder, both sides (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch + FAISS threads, both sides (default: the libraries' own, all cores). 1 keeps "
                             "OpenMP spin-waiting out of the measurement on a small CPU that others are loading")
    parser.add_argument("--scenarios", nargs="+", default=["32x1", "1x32"],
                        help="CLIENTSxQUERIES_PER_REQUEST, e.g. 32x1 (32 concurrent clients, 1 query each)")
    parser.add_argument("--queries", type=int, default=640, help="queries per phase (both sides)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every phase")
    parser.add_argument("--k", type=int, default=3, help="passages per query (Search-R1's topk)")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="server's micro-batch wait")
    parser.add_argument("--time-limit", type=float, default=900.0, help="wall-clock cap of the whole run, s")
    parser.add_argument("--json", default=None, help="write every phase's numbers to this file")
    args = parser.parse_args()
    scenarios = []
    for spec in args.scenarios:
        clients, _, per_request = spec.lower().partition("x")
        scenarios.append((int(clients), int(per_request)))
    if any(c < 1 or q < 1 for c, q in scenarios) or args.queries < 1 or args.repeats < 1:
        parser.error("scenarios, --queries and --repeats must be positive")

    from search_gym.build import load_questions
    from search_gym.retrieval import RemoteRetriever, RetrieverConfig, get_retriever

    t_start = time.monotonic()
    deadline = t_start + args.time_limit
    if args.threads:
        from search_gym.retrieval.server import set_threads

        set_threads(args.threads)  # this (main) thread runs the in-process searches
    questions = [q.question for q in load_questions("wiki_qa", "test")]
    retriever = get_retriever(RetrieverConfig(kind=args.retriever, index_type=args.index_type, device=args.device))
    retriever.search(questions[:64], k=args.k)  # loads the index and encoder, warms both up
    port = free_port()
    log_path = os.path.join(tempfile.gettempdir(), f"bench_serve_{port}.log")
    proc = start_server(args, port, log_path)
    remote = RemoteRetriever(f"http://127.0.0.1:{port}", cache_size=0, retry_s=30.0)
    try:
        with ThreadPoolExecutor(8) as pool:  # warm the server the same way (first encoder calls are slower)
            list(pool.map(lambda i: remote.search(questions[i * 8:(i + 1) * 8], k=args.k), range(8)))
        results: dict[tuple[int, int], dict[str, list[Phase]]] = {s: {"in-process": [], "server": []}
                                                                   for s in scenarios}
        for rep in range(args.repeats):
            for clients, per_request in scenarios:
                runs = {"in-process": (run_in_process, retriever), "server": (run_server, remote)}
                # alternate which side goes first, so neither always follows the other's warm caches
                for side in (("in-process", "server") if rep % 2 == 0 else ("server", "in-process")):
                    fn, target = runs[side]
                    results[(clients, per_request)][side].append(measured(
                        fn, proc.pid, target, questions, clients, per_request, args.queries, args.k, deadline))
            print(f"repeat {rep + 1}/{args.repeats} done at {time.monotonic() - t_start:.0f} s", file=sys.stderr)
        health = remote.health()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    print(f"\n{args.retriever} retriever ({retriever.name}, encoder device {args.device or 'auto'}), "
          f"{len(questions)} QA test questions cycled, k={args.k}; {args.queries} queries per phase; "
          f"{args.repeats} interleaved repeats; {os.cpu_count()} CPUs, load average at the end "
          f"{os.getloadavg()[0]:.1f}; uvicorn {md.version('uvicorn')} ({loop}, {http_impl}), fastapi "
          f"{md.version('fastapi')}; server micro-batch wait {args.max_wait_ms:g} ms; torch/FAISS threads "
          f"{args.threads or 'default'}; server batches {health['batches']} for {health['requests']} requests "
          f"(largest {health['max_batch_queries']} queries)\n")
    print("| scenario | path | queries per phase | queries/s (median) | min-max across repeats | p50 ms | p99 ms | "
          "errors | server / in-process | queries per retriever call | wall in retriever | CPU ms per query | "
          "in-process / server CPU per query |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    total_errors, dump = 0, {}
    for (clients, per_request), sides in results.items():
        scenario = f"{clients} client{'s' if clients > 1 else ''} x {per_request} quer{'ies' if per_request > 1 else 'y'}"
        medians, cpu = {}, {}
        for side, phases in sides.items():
            cpu[side] = statistics.median(1000 * p.cpu_s / p.queries for p in phases)
            qps = [p.qps for p in phases]
            lat = [x for p in phases for x in p.latencies]
            errors = sum(p.errors for p in phases)
            total_errors += errors
            medians[side] = statistics.median(qps)
            capped = " (capped)" if any(p.capped for p in phases) else ""
            if side == "in-process":
                label, ratio, per_call = f"in-process search, batches of {clients * per_request}", "-", \
                    f"{clients * per_request}"
                inside, cpu_ratio = "100%", "-"
            else:
                label, ratio = "HTTP server", f"{medians['server'] / medians['in-process']:.2f}x"
                per_call = f"{sum(p.queries for p in phases) / max(1, sum(p.batches for p in phases)):.1f}"
                inside = f"{100 * sum(p.search_s for p in phases) / sum(p.wall for p in phases):.0f}%"
                cpu_ratio = f"{cpu['in-process'] / cpu['server']:.2f}x"
            print(f"| {scenario} | {label}{capped} | {phases[0].queries} | {medians[side]:,.1f} | "
                  f"{min(qps):,.1f}-{max(qps):,.1f} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | {errors} | {ratio} | "
                  f"{per_call} | {inside} | {cpu[side]:.1f} | {cpu_ratio} |")
            dump[f"{clients}x{per_request}/{side}"] = [
                {"qps": p.qps, "queries": p.queries, "wall_s": p.wall, "errors": p.errors, "capped": p.capped,
                 "retries": p.retries, "p50_ms": pct(p.latencies, 50), "p99_ms": pct(p.latencies, 99),
                 "server_batches": p.batches, "server_search_s": p.search_s, "cpu_s": p.cpu_s}
                for p in phases]
    retries = sum(p.retries for sides in results.values() for p in sides["server"])
    print(f"\nerrors: {total_errors}; client retries: {retries}; run took {time.monotonic() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "health": health, "phases": dump}, f, indent=1)
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
