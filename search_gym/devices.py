"""Torch devices and dtypes from the names configs and command lines use (``"cuda"``, ``"bf16"``, ``"auto"``...).

torch is imported inside the functions only, so that importing this module (and the floors above it that never
call them) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Accepted dtype names -> torch dtype attribute.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``"float32"``/``"bf16"``/``"fp16"``/``"auto"`` or a torch dtype; None is float32."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return getattr(torch, DTYPE_NAMES[str(dtype).lower()])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_NAMES)} or 'auto'") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device; None is cuda when available, else cpu."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def allow_tf32(device: str | torch.device | None, enabled: bool) -> bool:
    """Let float32 matrix products on a CUDA ``device`` use TF32 tensor cores (``torch.set_float32_matmul_precision
    ("high")``, what Hugging Face's ``TrainingArguments(tf32=True)`` sets): faster on Ampere and later
    cards, products rounded to a 10-bit mantissa. Process-wide, like every torch precision switch; nothing is changed
    when ``enabled`` is false (the caller's setting stands) or the device is not CUDA. Returns whether it was set."""
    import torch

    if not enabled or resolve_device(device).type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    return True
