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
