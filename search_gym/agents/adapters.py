"""LoRA adapters that travel: a trained policy as a small folder (peft's ``adapter_config.json`` +
``adapter_model.safetensors`` in bf16) beside the base model it adapts, instead of a full copy of the weights.

:func:`save_adapter` writes one from a peft model (the trainers' ``save_final`` calls it for LoRA runs: a rank-16
adapter of SmolLM2-135M is a few MiB, so it moves off a GPU machine and can be committed); :func:`apply_adapter`
loads one onto a base model and merges it (what ``HFAgent(adapter=...)`` does); :func:`merged_folder` writes base +
adapter as a plain HF folder, for backends that load folders (vLLM). :func:`adapter_sha256` is the checksum to
record beside a shipped adapter.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Adapters shipped inside the package (bf16, a few MiB each, committed with their SHA256SUMS and the command that
# made them in the folder's README.md): name -> folder under search_gym/agents/weights/.
SHIPPED_DIR = Path(__file__).with_name("weights")
SHIPPED_ADAPTERS = ("smollm2-aligned",)

__all__ = ["save_adapter", "apply_adapter", "merged_folder", "cached_merge", "adapter_sha256", "is_adapter_folder",
           "shipped_adapter", "SHIPPED_ADAPTERS"]


def is_adapter_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def save_adapter(model: Any, folder: str | os.PathLike, *, dtype: str = "bfloat16") -> Path:
    """Write the LoRA adapter of a peft ``model`` to ``folder`` with its weights cast to ``dtype`` (bf16 halves
    the file; training keeps its own precision). Returns the folder."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not hasattr(model, "peft_config"):
        raise ValueError("save_adapter needs a peft model (a LoRA run); a plain model has no adapter to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = getattr(torch, dtype)
    weights = {k: v.detach().to("cpu", target).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    model.peft_config["default"].save_pretrained(str(folder))
    save_file(weights, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return folder


def apply_adapter(model: Any, adapter: str | os.PathLike, *, merge: bool = True) -> Any:
    """``model`` with the LoRA adapter of folder ``adapter`` loaded (weights cast to the model's dtype) and, with
    ``merge``, merged into its weights (a plain model again, as fast as the base)."""
    from peft import PeftModel

    if not is_adapter_folder(adapter):
        raise FileNotFoundError(f"{adapter} is not a LoRA adapter folder (it needs {ADAPTER_CONFIG} and "
                                f"{ADAPTER_WEIGHTS}; a LoRA training run writes one to <output_dir>/adapter)")
    dtype = next(model.parameters()).dtype
    peft_model = PeftModel.from_pretrained(model, str(adapter), torch_dtype=dtype)
    for param in peft_model.parameters():  # the bf16 file's values, in the model's precision
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
    return peft_model.merge_and_unload() if merge else peft_model


def merged_folder(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Base + adapter merged into a plain HF folder ``out`` (reused when it already holds this adapter's merge)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    stamp = out / "adapter.sha256"
    digest = adapter_sha256(adapter)
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return out
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(base), adapter)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    stamp.write_text(digest + "\n")
    return out


def cached_merge(base: str | os.PathLike, adapter: str | os.PathLike) -> Path:
    """:func:`merged_folder` in the cache's models folder, named by the adapter's hash (one merge per adapter): the
    plain HF folder that vLLM and the trainers load for base + adapter."""
    from search_gym.paths import models_dir

    return merged_folder(base, adapter, models_dir() / f"merged-{adapter_sha256(adapter)[:16]}")


def adapter_sha256(adapter: str | os.PathLike) -> str:
    """SHA-256 of the adapter's weights file (what a shipped adapter records beside it)."""
    h = hashlib.sha256()
    with open(Path(adapter) / ADAPTER_WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_adapter(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of a shipped adapter (``SHIPPED_ADAPTERS``), its weights checked against the SHA256SUMS beside them.

    ``root`` replaces the package's ``weights/`` folder (tests). A missing folder or a wrong checksum is an error
    that says how to get the adapter back or make one, never a silent fall back to the base model.
    """
    if name not in SHIPPED_ADAPTERS:
        raise ValueError(f"unknown shipped adapter {name!r}; shipped: {list(SHIPPED_ADAPTERS)}")
    folder = Path(root or SHIPPED_DIR) / name
    parts = sorted(folder.glob(f"{ADAPTER_WEIGHTS}.part-*"))
    if parts and not (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_CONFIG).is_file():
        return _joined_parts(folder, parts, _listed_sha256(folder))
    if not is_adapter_folder(folder):
        raise FileNotFoundError(
            f"the shipped adapter {name!r} is not in {folder} ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} expected): "
            "reinstall search-gym from a complete checkout, or train one with `search-gym train sft --config "
            "examples/configs/sft_aligned_smollm2.yaml` and pass adapter=<output_dir>/adapter")
    expected = _listed_sha256(folder)
    actual = adapter_sha256(folder)
    if actual != expected:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS} has sha256 {actual}, SHA256SUMS says {expected}: the file is "
                         "damaged or was replaced (a git-lfs pointer?); restore it from the repository")
    return folder


def _listed_sha256(folder: Path) -> str:
    """The SHA-256 that ``folder/SHA256SUMS`` lists for the adapter's weights file."""
    sums = folder / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            digest, _, fname = line.strip().partition("  ")
            if fname == ADAPTER_WEIGHTS:
                return digest
    raise FileNotFoundError(f"{sums} has no line for {ADAPTER_WEIGHTS}: the shipped adapter cannot be checked")


def _joined_parts(folder: Path, parts: list[Path], expected: str) -> Path:
    """A shipped adapter whose weights are committed in parts (``adapter_model.safetensors.part-00``, ...; every
    file of the repository stays under 16 MiB): the parts joined once into the cache, checked against SHA256SUMS."""
    import shutil

    from search_gym.files import atomic_output
    from search_gym.paths import models_dir

    out = models_dir() / "adapters" / f"{folder.name}-{expected[:16]}"
    if is_adapter_folder(out) and adapter_sha256(out) == expected:
        return out
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / ADAPTER_WEIGHTS) as tmp, open(tmp, "wb") as joined:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, joined)
    shutil.copyfile(folder / ADAPTER_CONFIG, out / ADAPTER_CONFIG)
    actual = adapter_sha256(out)
    if actual != expected:
        (out / ADAPTER_WEIGHTS).unlink()
        raise ValueError(f"the parts of {folder / ADAPTER_WEIGHTS} join to sha256 {actual}, SHA256SUMS says "
                         f"{expected}: a part is damaged, missing or was replaced (a git-lfs pointer?); restore "
                         "them from the repository")
    return out
