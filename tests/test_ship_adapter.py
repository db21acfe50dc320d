"""tools/ship_adapter.py: an accepted adapter brought back in parts goes into the shipped-adapter folder in parts
of at most PART_BYTES, with SHA256SUMS, and search_gym.agents.adapters.shipped_adapter joins it back."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ship_adapter", ROOT / "tools" / "ship_adapter.py")
ship_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship_tool)


def collected(folder: Path, data: bytes, part: int, sha: str | None = None) -> Path:
    """What aligned_pilot.sh collect brings back: config, the weights in parts, their sha256."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                            "base_model_name_or_path": "/tmp/sg/cache/models/x"}))
    for k in range(0, len(data), part):
        (folder / f"adapter_model.safetensors.part-{k // part:02d}").write_bytes(data[k:k + part])
    (folder / "adapter_model.safetensors.sha256").write_text(
        f"{sha or hashlib.sha256(data).hexdigest()}  adapter_model.safetensors\n")
    return folder


def test_ship_joins_checks_splits_and_loads_back(tmp_path, monkeypatch):
    from search_gym.agents.adapters import shipped_adapter

    data = bytes(range(256)) * 5  # 1,280 bytes
    monkeypatch.setattr(ship_tool, "PART_BYTES", 500)
    target = tmp_path / "weights" / "smollm2-aligned"
    target.mkdir(parents=True)
    (target / "adapter_model.safetensors").write_bytes(b"old")  # the adapter it replaces
    (target / "README.md").write_text("how it was made")
    out = ship_tool.ship(collected(tmp_path / "in", data, part=300), target)
    assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["bytes"] == 1280
    assert out["replaced"] == ["adapter_model.safetensors"]
    parts = sorted(p.name for p in target.glob("adapter_model.safetensors.part-*"))
    assert parts == [f"adapter_model.safetensors.part-0{k}" for k in range(3)]  # 500 + 500 + 280
    assert not (target / "adapter_model.safetensors").exists() and (target / "README.md").is_file()
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and config["r"] == 4
    monkeypatch.setenv("SEARCH_GYM_CACHE", str(tmp_path / "cache"))
    joined = shipped_adapter("smollm2-aligned", root=tmp_path / "weights")
    assert (joined / "adapter_model.safetensors").read_bytes() == data


def test_parts_that_do_not_join_to_their_sha256_are_refused(tmp_path):
    bad = collected(tmp_path / "in", b"abcdef" * 10, part=16, sha="0" * 64)
    with pytest.raises(ValueError, match="join to sha256 .* says 0000"):
        ship_tool.ship(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
