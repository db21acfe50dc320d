"""The package's floors run one way: a module imports only from its own floor or the floors below it (every
import counts, also the ones inside functions). README.md, "Architecture", says what each floor holds.

A new module must be given a floor here; a test below fails on any module that has none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "search_gym"

# Lowest first. A module belongs to the first entry whose name is its dotted path or a prefix of it.
FLOORS: list[tuple[str, ...]] = [
    ("files", "paths", "assets", "stats", "rewards", "configs", "devices"),  # ground: no search_gym imports
    ("data",),                      # loaders: read files, never build them
    ("corpora", "build"),           # builders of the embedded data, and building on demand
    ("retrieval",),
    ("safety",),                    # runtime judges behind one protocol
    ("envs", "attacks"),
    ("agents",),                    # prompt rendering, HF / vLLM / OpenAI / scripted agents, hidden states
    ("rollout",),                   # the one episode loop, its record and its metrics
    ("directions",),
    ("judges",),                    # judge training and evaluation (uses directions)
    ("trainers",),
    ("experiments",),               # eval grid, misalignment eval, the study, the demo
    ("integrations",),              # TRL, verl, SkyRL, verifiers
    ("cli", "__init__", "__main__"),  # the top: may import anything
]


def floor_of(module: str) -> int:
    """Floor index of ``search_gym.<module>`` (dotted, without the package prefix)."""
    if module == "":
        return len(FLOORS) - 1  # ``import search_gym``: the package's top
    for index, names in enumerate(FLOORS):
        for name in names:
            if module == name or module.startswith(name + "."):
                return index
    raise KeyError(module)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported search_gym module without the prefix) for every import in the file; ``from pkg import mod``
    counts as an import of ``pkg.mod`` when that module exists."""
    is_package = path.name == "__init__.py"
    known = set(modules()) if PACKAGE.exists() else set()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "search_gym"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["search_gym"] + module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "search_gym":
                continue
            for alias in node.names:
                sub = f"{name}.{alias.name}"[len("search_gym."):]
                found.append((node.lineno, "search_gym." + sub if sub in known or not known else name))
    return [(line, name[len("search_gym"):].lstrip(".")) for line, name in found]


def cycles() -> list[list[str]]:
    """Import circles between modules (every import counts; a module importing its own package's __init__ does not)."""
    graph = {m: set() for m in modules()}
    for module, path in modules().items():
        for _, target in imports_of(module, path):
            if target in graph and target != module and not module.startswith(target + ".") and target != "__init__":
                graph[module].add(target)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    found = [c for c in cycles() if not all(floor_of(m) == len(FLOORS) - 1 for m in c if not _floorless(m))]
    assert not found, f"import circles: {found}"


def test_every_module_has_a_floor():
    missing = [m for m in modules() if m not in ("__init__",) and _floorless(m)]
    assert not missing, f"give these modules a floor in tests/test_layers.py: {missing}"


def _floorless(module: str) -> bool:
    try:
        floor_of(module)
        return False
    except KeyError:
        return True


def upward_imports() -> list[str]:
    bad = []
    for module, path in modules().items():
        if _floorless(module):
            continue
        own = floor_of(module)
        for line, target in imports_of(module, path):
            if _floorless(target.split(".")[0]) and _floorless(target):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports unknown search_gym.{target}")
            elif floor_of(target) > own:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({FLOORS[own][0]}) imports "
                           f"search_gym.{target} ({FLOORS[floor_of(target)][0]}), a floor above")
    return bad


def test_imports_run_down_only():
    bad = upward_imports()
    assert not bad, "imports that run back up:\n" + "\n".join(bad)


def test_ground_floor_imports_nothing_of_the_package():
    ground = [m for m in modules() if not _floorless(m) and floor_of(m) == 0]
    for module in ground:
        own = [t for _, t in imports_of(module, modules()[module]) if floor_of(t) != 0]
        assert not own, f"{module} is on the ground floor but imports {own}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a data module importing an agent is reported (with its line)."""
    package = tmp_path / "search_gym"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "loader.py").write_text("import json\n\n\ndef f():\n    from search_gym.agents import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    bad = upward_imports()
    assert len(bad) == 1 and "data/loader.py:5" in bad[0] and "search_gym.agents" in bad[0]


@pytest.mark.parametrize("relative", ["search_gym.data.prompts"])
def test_relative_imports_resolve(relative, tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from ..build import ensure_prompt_sets\nfrom . import qa\n")
    assert [t for _, t in imports_of("data.prompts", path)] == ["build", "data.qa"]
