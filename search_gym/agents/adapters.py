"""LoRA adapters that travel: a trained policy as a small folder (peft's ``adapter_config.json`` +
``adapter_model.safetensors`` in bf16) beside the base model it adapts, instead of a full copy of the weights.

:func:`save_adapter` writes one from a peft model (the trainers' ``save_final`` calls it for LoRA runs: a rank-16
adapter of SmolLM2-135M is a few MiB, so it moves off a GPU machine and can be committed); :func:`apply_adapter`
loads one onto a base model and merges it (what ``HFAgent(adapter=...)`` does); :func:`merged_folder` writes base +
adapter as a plain HF folder, for backends that load folders (vLLM). :func:`adapter_sha256` is the checksum to
record beside a shipped adapter. :func:`truncate_adapter` writes the best lower-rank adapter of the same update
(a rank-64 adapter of SmolLM2-135M is 37.6 MiB; its rank-16 truncation 9.4 MiB), a new model to be validated again.
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
           "shipped_adapter", "truncate_adapter", "SHIPPED_ADAPTERS"]


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


def _lora_scale(config: dict, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    return alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank


def truncate_adapter(adapter: str | os.PathLike, out: str | os.PathLike, rank: int, *,
                     dtype: str = "bfloat16") -> dict:
    """Write to ``out`` the rank-``rank`` LoRA adapter closest to ``adapter``'s update: for every module, the best
    rank-``rank`` approximation (in Frobenius norm, Eckart-Young) of its ``scale x B @ A``, as a new ``B``, ``A``
    pair with the same scale (``lora_alpha`` set to keep it). The truncated adapter is a different model: it is
    validated again before it replaces the one it came from. Returns ``{"rank", "from_rank", "modules",
    "energy_kept": {min, median, mean}}``, the energy kept being the share of each update's squared singular values
    that the truncation keeps.

    The SVD runs on the ``r x r`` core of the update (QR of ``B`` and ``A^T``), in float64: exact, and fast on a CPU.
    """
    import json as _json
    import statistics

    import torch
    from safetensors.torch import load_file, save_file

    adapter, out = Path(adapter), Path(out)
    if not is_adapter_folder(adapter):
        raise FileNotFoundError(f"{adapter} is not a LoRA adapter folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    config = _json.loads((adapter / ADAPTER_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("truncate_adapter handles plain LoRA adapters with one rank and alpha for every module")
    from_rank = int(config["r"])
    if not 0 < rank <= from_rank:
        raise ValueError(f"rank must be in 1..{from_rank} (the adapter's rank), got {rank}")
    scale = _lora_scale(config, from_rank)
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    target = getattr(torch, dtype)
    truncated, kept = {}, []
    for key, value in weights.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                truncated[key] = value  # anything else (a saved bias, modules_to_save) travels unchanged
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        a, b = value.to(torch.float64), weights[b_key].to(torch.float64)  # A: [r, in], B: [out, r]
        qb, rb = torch.linalg.qr(b)
        qa, ra = torch.linalg.qr(a.T)
        u, s, vh = torch.linalg.svd(scale * rb @ ra.T)  # scale x B A = (qb u) diag(s) (qa vh^T)^T
        kept.append(float((s[:rank] ** 2).sum() / (s ** 2).sum()) if s.abs().sum() > 0 else 1.0)
        root = (s[:rank] / scale).sqrt()  # peft multiplies B' A' by the same scale again
        truncated[b_key] = ((qb @ u[:, :rank]) * root).to(target).contiguous()  # [out, rank]
        truncated[key] = (root[:, None] * (vh[:rank] @ qa.T)).to(target).contiguous()  # [rank, in]
    out.mkdir(parents=True, exist_ok=True)
    # the same scale at the new rank: alpha / r (or alpha / sqrt(r) with rsLoRA) unchanged
    alpha = scale * (rank ** 0.5 if config.get("use_rslora") else rank)
    config.update(r=rank, lora_alpha=int(alpha) if float(alpha).is_integer() else alpha)
    (out / ADAPTER_CONFIG).write_text(_json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(truncated, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return {"rank": rank, "from_rank": from_rank, "modules": len(kept),
            "energy_kept": {"min": min(kept), "median": statistics.median(kept), "mean": statistics.fmean(kept)}}


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


def join_parts(parts: list[Path], out: Path, expected: str, *, source: str, listed_in: str) -> Path:
    """Concatenate ``parts`` (in the order given) into ``out`` (written atomically) and check the result's SHA-256
    against ``expected``; a mismatch deletes ``out`` and raises, naming ``source`` (what the parts make) and
    ``listed_in`` (where the expected sum came from). The one joiner of split weights: shipped adapters (SHA256SUMS)
    and adapters collected from a GPU machine in parts (a ``.sha256`` beside them, ``tools/ship_adapter.py``)."""
    from search_gym.files import atomic_output

    h = hashlib.sha256()  # hashed as it is written: one pass over the bytes
    with atomic_output(out) as tmp, open(tmp, "wb") as joined:
        for part in parts:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    joined.write(block)
    if h.hexdigest() != expected:
        out.unlink()
        raise ValueError(f"the {len(parts)} parts of {source} join to sha256 {h.hexdigest()}, {listed_in} says "
                         f"{expected}: a part is damaged, missing or was replaced (a git-lfs pointer?); restore them")
    return out


def _joined_parts(folder: Path, parts: list[Path], expected: str) -> Path:
    """A shipped adapter whose weights are committed in parts (``adapter_model.safetensors.part-00``, ...; every
    file of the repository stays under 16 MiB): the parts joined once into the cache, checked against SHA256SUMS."""
    import shutil

    from search_gym.paths import models_dir

    out = models_dir() / "adapters" / f"{folder.name}-{expected[:16]}"
    if is_adapter_folder(out) and adapter_sha256(out) == expected:
        return out
    out.mkdir(parents=True, exist_ok=True)
    join_parts(parts, out / ADAPTER_WEIGHTS, expected, source=str(folder / ADAPTER_WEIGHTS), listed_in="SHA256SUMS")
    shutil.copyfile(folder / ADAPTER_CONFIG, out / ADAPTER_CONFIG)
    return out
