"""A LoRA run's checkpoint is its adapter + optimizer state (small enough to leave a GPU machine), and resuming
from it gives the same next step as an uninterrupted run (issue 27 part 2: runs continue on another machine)."""

from __future__ import annotations

import pytest
import torch

from search_gym.trainers.core import checkpoints
from test_trainers import OddTokenGRPO, comparable, frozen, grpo_config, make_env, params, tiny_model


def lora_trainer(tokenizer, tiny_qa_path, retriever, output_dir, **overrides) -> OddTokenGRPO:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    policy = get_peft_model(tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return OddTokenGRPO(grpo_config(output_dir, **overrides), model=policy, tokenizer=tokenizer,
                        env=make_env(tiny_qa_path, retriever), reference=frozen(tiny_model(tokenizer)))


def test_lora_checkpoint_holds_the_adapter_and_resumes_exactly(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    schedule = dict(lr_scheduler="constant", warmup_steps=2, save_steps=1)
    run_a = lora_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "a", max_steps=3, **schedule)
    rows_a = run_a.train()
    run_b = lora_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "b", max_steps=2, **schedule)
    run_b.train()
    step, folder = checkpoints(tmp_path / "b")[-1]
    assert step == 2
    names = {p.name for p in folder.iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names  # the adapter, not the model
    resumed = lora_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "b", max_steps=3, **schedule)
    rows_c = resumed.train()
    assert [r["step"] for r in rows_c] == [3]
    step3_a, step3_c = comparable(rows_a[2]), comparable(rows_c[0])
    assert step3_a.keys() == step3_c.keys()
    for key in step3_a:
        assert step3_c[key] == pytest.approx(step3_a[key], abs=1e-6, rel=0), key
    final_a, final_c = params(run_a.model), params(resumed.model)
    assert any("lora_" in k for k in final_a)
    for key in final_a:
        torch.testing.assert_close(final_c[key], final_a[key], atol=1e-6, rtol=0)
