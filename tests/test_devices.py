"""search_gym.devices: the names configs use for devices and dtypes, and the TF32 switch of the trainers."""

import pytest
import torch

from search_gym.devices import allow_tf32, resolve_device, resolve_dtype


def test_dtype_names_and_a_clear_error():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_device_default_follows_cuda():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_tf32_only_on_cuda_and_only_when_asked(matmul_precision):
    torch.set_float32_matmul_precision("highest")
    assert allow_tf32("cpu", True) is False  # a CPU run keeps exact float32 products
    assert allow_tf32("cuda", False) is False  # off leaves the caller's setting alone
    assert torch.get_float32_matmul_precision() == "highest"
    assert allow_tf32("cuda:0", True) is True  # the switch is global; no CUDA device is needed to set it
    assert torch.get_float32_matmul_precision() == "high"


def test_the_trainer_config_reaches_the_switch(matmul_precision, monkeypatch, tokenizer, tmp_path):
    from conftest import tiny_llama
    from search_gym.trainers.core import load_policy
    from search_gym.trainers.sft_config import SFTConfig

    tiny_llama(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    seen = []
    monkeypatch.setattr("search_gym.devices.allow_tf32", lambda device, enabled: seen.append((device.type, enabled)))
    for tf32 in (False, True):
        model, _, device = load_policy(SFTConfig(model=str(tmp_path), tf32=tf32, device="cpu"))
        assert device.type == "cpu" and model.training
    assert seen == [("cpu", False), ("cpu", True)]
