"""The GGUF conversion's fast path (search_gym.agents.gguf._fast_gguf): the same parse, once, then put back."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from search_gym.agents import gguf as conversion  # noqa: E402


def _write_small_gguf(path) -> None:
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny")
    writer.add_block_count(2)
    writer.add_uint32("tiny.u32", 7)
    writer.add_float32("tiny.f32", 0.25)
    writer.add_bool("tiny.flag", True)
    writer.add_token_list([f"tok{i}" for i in range(300)] + ["", "ä ü", "<|im_end|>"])
    writer.add_token_merges([f"t o{i}" for i in range(200)])
    writer.add_token_types([1] * 303)
    writer.add_array("tiny.floats", [0.5, 1.5, -2.0])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((16, 8)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((8, 8)).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_fast_reader_parses_exactly_like_gguf_reader(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_small_gguf(path)
    slow, fast = gguf.GGUFReader(str(path)), conversion._fast_reader_class()(str(path))
    assert list(fast.fields) == list(slow.fields)
    for name, want in slow.fields.items():
        got = fast.fields[name]
        assert (got.offset, got.name, got.data, got.types) == (want.offset, want.name, want.data, want.types), name
        assert len(got.parts) == len(want.parts)
        for a, b in zip(got.parts, want.parts):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert fast.data_offset == slow.data_offset and fast.alignment == slow.alignment
    assert [t.name for t in fast.tensors] == [t.name for t in slow.tensors]
    for a, b in zip(fast.tensors, slow.tensors):
        assert (a.tensor_type, list(a.shape), a.n_elements, a.n_bytes, a.data_offset) == \
               (b.tensor_type, list(b.shape), b.n_elements, b.n_bytes, b.data_offset)
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data)


def test_fast_gguf_parses_each_file_once_and_puts_gguf_back(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_small_gguf(path)
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with conversion._fast_gguf():
        first, second = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(tmp_path / "." / "tiny.gguf"))
        assert first is second  # config, tokenizer and weights share one parse
        assert isinstance(first, reader_class)
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).mapping == name_map(arch, 2).mapping
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map
    with pytest.raises(RuntimeError), conversion._fast_gguf():
        raise RuntimeError("a failed conversion")
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map


@pytest.mark.slow
@pytest.mark.needs_asset("smollm2")
def test_fast_conversion_writes_the_same_model_as_transformers_alone(tmp_path, monkeypatch):
    """The bundled GGUF converted with and without the fast path: same config, tokenizer files and weights."""
    import contextlib

    from safetensors.numpy import load_file

    from search_gym.assets import asset_path

    source = asset_path("smollm2")
    fast = conversion.convert_gguf(source, tmp_path / "fast", progress=False)
    monkeypatch.setattr(conversion, "_fast_gguf", contextlib.nullcontext)
    monkeypatch.setattr(conversion, "_no_init_weights", contextlib.nullcontext)
    plain = conversion.convert_gguf(source, tmp_path / "plain", progress=False)
    names = sorted(p.name for p in fast.iterdir())
    assert names == sorted(p.name for p in plain.iterdir())
    for name in names:
        if name == "model.safetensors":
            a, b = load_file(fast / name), load_file(plain / name)
            assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
        else:
            assert (fast / name).read_bytes() == (plain / name).read_bytes(), name
