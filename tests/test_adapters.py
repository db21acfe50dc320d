"""LoRA adapters that travel (search_gym.agents.adapters): a LoRA run writes a bf16 adapter folder beside its merged
final model; base + adapter loads back to the same logits; resuming from an adapter checkpoint + optimiser state
gives the same next step as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama


def lora_model(tokenizer, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give it weights so the round trip tests something
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.05)
    return model


def test_save_final_writes_a_bf16_adapter_that_loads_back_to_the_same_logits(tokenizer, tmp_path):
    from safetensors.torch import load_file

    from search_gym.agents.adapters import ADAPTER_WEIGHTS, adapter_sha256, is_adapter_folder
    from search_gym.agents.hf import HFAgent
    from search_gym.trainers.core import save_final

    model = lora_model(tokenizer)
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    base_folder = tmp_path / "base"
    tiny_llama(tokenizer, seed=0).save_pretrained(base_folder)
    tokenizer.save_pretrained(base_folder)
    save_final(tmp_path / "run", model, tokenizer)
    adapter = tmp_path / "run" / "adapter"
    assert is_adapter_folder(adapter) and len(adapter_sha256(adapter)) == 64
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    assert weights and all(w.dtype == torch.bfloat16 for w in weights.values())
    assert all("lora_" in k for k in weights)  # the adapter alone, not the base weights
    agent = HFAgent(str(base_folder), device="cpu", adapter=adapter)
    merged = HFAgent(str(tmp_path / "run" / "final"), device="cpu")  # the fp32 merge written by save_final
    with torch.no_grad():
        got, want = agent.model(ids).logits, merged.model(ids).logits
        base = tiny_llama(tokenizer, seed=0)(ids).logits
    assert (want - base).abs().max() > 1e-3  # the adapter changes the model...
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # ...and its bf16 copy gives the same logits


def test_a_missing_adapter_says_what_a_folder_needs(tokenizer, tmp_path):
    from search_gym.agents.adapters import apply_adapter

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        apply_adapter(tiny_llama(tokenizer), tmp_path)
    with pytest.raises(ValueError, match="peft model"):
        from search_gym.agents.adapters import save_adapter

        save_adapter(tiny_llama(tokenizer), tmp_path / "x")


def test_truncate_adapter_keeps_the_update_at_full_rank_and_is_the_best_lower_rank_one(tokenizer, tmp_path):
    """At the adapter's own rank the truncation is the same model (logits to bf16 tolerance); at a lower rank each
    module's update is the best approximation of that rank (Eckart-Young: the error is the dropped singular values),
    with the scale kept and peft loading the result."""
    import json

    from safetensors.torch import load_file

    from search_gym.agents.adapters import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_adapter, save_adapter,
                                            truncate_adapter)

    model = lora_model(tokenizer)
    save_adapter(model, tmp_path / "r4", dtype="float32")
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        want = apply_adapter(tiny_llama(tokenizer, seed=0), tmp_path / "r4")(ids).logits
        same = truncate_adapter(tmp_path / "r4", tmp_path / "t4", 4, dtype="float32")
        got = apply_adapter(tiny_llama(tokenizer, seed=0), tmp_path / "t4")(ids).logits
    assert same["energy_kept"]["min"] == pytest.approx(1.0) and same["modules"] > 0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    info = truncate_adapter(tmp_path / "r4", tmp_path / "t2", 2, dtype="float32")
    config = json.loads((tmp_path / "t2" / ADAPTER_CONFIG).read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4  # alpha / r = 2, as the rank-4 adapter's 8 / 4
    old, new = load_file(str(tmp_path / "r4" / ADAPTER_WEIGHTS)), load_file(str(tmp_path / "t2" / ADAPTER_WEIGHTS))
    kept = []
    for key in (k for k in old if ".lora_A." in k):
        b_key = key.replace(".lora_A.", ".lora_B.")
        assert new[key].shape[0] == 2 and new[b_key].shape[1] == 2
        full = 2.0 * old[b_key].double() @ old[key].double()
        u, s, vh = torch.linalg.svd(full)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        torch.testing.assert_close(2.0 * new[b_key].double() @ new[key].double(), best, atol=1e-5, rtol=1e-5)
        kept.append(float((s[:2] ** 2).sum() / (s ** 2).sum()))
    assert info["energy_kept"]["min"] == pytest.approx(min(kept)) and info["energy_kept"]["min"] < 1.0
    with torch.no_grad():
        lower = apply_adapter(tiny_llama(tokenizer, seed=0), tmp_path / "t2")(ids).logits
    assert (lower - want).abs().max() > 1e-4  # a lower rank is another model: it must be validated again
    with pytest.raises(ValueError, match="rank must be in 1..4"):
        truncate_adapter(tmp_path / "r4", tmp_path / "t5", 5)
