"""search-gym index build: every index type, resumption after a kill, Search-R1's formats and prebuilt flat index,
the env's retriever loading the result, the estimates, and the errors. Offline: a tiny random BERT encoder."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from conftest import TINY_PASSAGES, write_jsonl

from search_gym.retrieval.dense import DenseRetriever
from search_gym.retrieval.factory import RetrieverConfig, get_retriever
from search_gym.retrieval.index_build import (
    IndexBuildConfig,
    build_index,
    count_passages,
    estimate_resources,
    hnsw_bytes_per_vector,
    ivfpq_for_budget,
    open_flat_vectors,
)

N_EXTRA = 52  # 60 passages: four shards of 16 in the resume tests


pytestmark = pytest.mark.usefixtures("isolated_retrievers")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """A sentence-transformers folder: random 2-layer BERT (32-d) over a word-level vocabulary of the test corpus.

    Random weights embed equal texts equally and different texts differently, which is all these tests need (a
    passage searched with its own text must come first); built offline in well under a second.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("encoder") / "tiny-bert"
    folder.mkdir()
    # BERT's pre-tokeniser splits words from punctuation; the vocabulary is made the same way (no [UNK]s).
    words = sorted({w for title, text in passages() for w in re.findall(r"\w+|[^\w\s]", f"{title} {text}".lower())})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = BertTokenizerFast(vocab=vocab)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=128),
                      add_pooling_layer=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def passages() -> list[tuple[str, str]]:
    """conftest's 8 passages plus 52 made of seeded random syllable-words (all different, deterministic)."""
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "do", "fe", "gu", "hi", "ja", "ko"]

    def word() -> str:
        return "".join(rng.choice(syllables, size=rng.integers(2, 4)))

    extra = [(f"{word().title()} {i}", " ".join(word() for _ in range(12)) + ".") for i in range(N_EXTRA)]
    return list(TINY_PASSAGES) + extra


@pytest.fixture
def corpus(tmp_path):
    """Search-R1's wiki-18 format: {"id", "contents": '"Title"\\ntext'}."""
    rows = [{"id": str(i), "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(passages())]
    return write_jsonl(tmp_path / "wiki-18.jsonl", rows)


def contents(i: int) -> str:
    title, text = passages()[i]
    return f'"{title}"\n{text}'


def config(corpus, encoder, out, **kw) -> IndexBuildConfig:
    kw.setdefault("shard_size", 16)
    kw.setdefault("device", "cpu")
    return IndexBuildConfig(corpus=str(corpus), encoder=encoder, out=str(out), progress=False, **kw)


def quiet(_line: str) -> None:
    pass


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_build_each_type_finds_the_passage(corpus, tiny_encoder, tmp_path, index_type):
    lines: list[str] = []
    # IVF-PQ at 2 dimensions per code byte: the default 8 per byte is too coarse for 60 random-BERT embeddings
    # (mean cosine ~0.95 to each other) to keep every passage first for its own text.
    extra = {"pq_m": 16} if index_type == "ivfpq" else {}
    result = build_index(config(corpus, tiny_encoder, tmp_path / index_type, index=index_type, **extra),
                         echo=lines.append)
    assert lines[0].startswith(f"estimate for 60 passages x 32-d, {index_type}")  # exact count, printed first
    meta = json.loads((tmp_path / index_type / "meta.json").read_text())
    assert meta["index_type"] == index_type and meta["count"] == 60 and meta["dim"] == 32
    assert meta["encoded_passages"] == 60
    assert not (tmp_path / index_type / "shards").exists()  # deleted after the build by default
    retriever = result.retriever
    for i in (0, 3, 17, 59):
        hit = retriever.search([contents(i)], k=3)[0][0]
        assert hit.doc_id == str(i), (index_type, i)
        assert hit.title == passages()[i][0]


@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_interrupted_build_resumes_and_equals_an_uninterrupted_one(corpus, tiny_encoder, tmp_path, index_type):
    out = tmp_path / "resumed"
    seen: list[tuple[int, int]] = []

    def kill_after_two(done, total):
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt("simulated kill after 2 shards")

    with pytest.raises(KeyboardInterrupt, match="simulated kill after 2 shards"):
        build_index(config(corpus, tiny_encoder, out, index=index_type), on_shard=kill_after_two, echo=quiet)
    assert seen == [(1, 4), (2, 4)]
    assert sorted(p.name for p in (out / "shards").glob("*.npy")) == ["000000.npy", "000001.npy"]
    assert json.loads((out / "shards" / "manifest.json").read_text())["count"] == 60
    assert not (out / "meta.json").exists()  # not a finished index: nothing would load it

    seen.clear()
    resumed = build_index(config(corpus, tiny_encoder, out, index=index_type), on_shard=lambda *a: seen.append(a),
                          echo=quiet)
    assert seen == [(3, 4), (4, 4)]  # the two saved shards were not encoded again
    assert resumed.meta["encoded_passages"] == 60 - 2 * 16

    fresh = build_index(config(corpus, tiny_encoder, tmp_path / "fresh", index=index_type), echo=quiet)
    a, b = resumed.retriever, fresh.retriever
    if index_type == "flat":
        np.testing.assert_array_equal(a._index.reconstruct_n(0, 60), b._index.reconstruct_n(0, 60))
    queries = a.encode_queries([contents(i) for i in range(0, 60, 7)])
    for x, y in zip(a.search_embeddings(queries, 5), b.search_embeddings(queries, 5)):
        np.testing.assert_array_equal(x, y)


def test_search_r1_and_flashrag_rows_load(tmp_path, tiny_encoder):
    rows = [{"id": i, "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(passages()[:30])]  # int ids
    rows += [{"id": f"f{i}", "title": t, "text": x} for i, (t, x) in enumerate(passages()[30:])]  # FlashRAG
    path = tmp_path / "mixed.jsonl"
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n\n")  # blank lines between rows are allowed
    result = build_index(config(path, tiny_encoder, tmp_path / "idx"), echo=quiet)
    hit = result.retriever.search([contents(4)], k=1)[0][0]
    assert (hit.doc_id, hit.title, hit.text) == ("4", passages()[4][0], passages()[4][1])
    hit = result.retriever.search([contents(40)], k=1)[0][0]
    assert (hit.doc_id, hit.title) == ("f10", passages()[40][0])


def _prebuilt_flat(corpus, encoder, path) -> np.ndarray:
    """A FAISS IndexFlatIP of the corpus's embeddings, as Search-R1 ships e5_Flat.index."""
    import faiss

    probe = DenseRetriever(corpus, encoder=encoder, index_dir=path.parent / "probe", progress=False)
    emb = probe._encode_passages([contents(i) for i in range(60)])
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    faiss.write_index(index, str(path))
    return emb


def test_prebuilt_flat_is_linked_and_converted_without_encoding(corpus, tiny_encoder, tmp_path, monkeypatch):
    prebuilt = tmp_path / "e5_Flat.index"
    emb = _prebuilt_flat(corpus, tiny_encoder, prebuilt)
    _, view = open_flat_vectors(prebuilt)
    np.testing.assert_array_equal(np.asarray(view), emb)

    def no_encoding(self, texts):
        raise AssertionError("a prebuilt index must not be re-encoded")

    monkeypatch.setattr(DenseRetriever, "_encode_passages", no_encoding)
    flat = build_index(config(corpus, tiny_encoder, tmp_path / "flat", prebuilt=str(prebuilt)), echo=quiet)
    link = tmp_path / "flat" / "index.faiss"
    assert link.is_symlink() and os.path.samefile(link, prebuilt)  # linked, not copied
    assert flat.meta["vectors_from"] == str(prebuilt) and flat.meta["encoded_passages"] == 0
    monkeypatch.undo()
    assert flat.retriever.search([contents(9)], k=1)[0][0].doc_id == "9"

    monkeypatch.setattr(DenseRetriever, "_encode_passages", no_encoding)
    hnsw = build_index(config(corpus, tiny_encoder, tmp_path / "hnsw", index="hnsw", prebuilt=str(prebuilt)),
                       echo=quiet)
    assert not (tmp_path / "hnsw" / "index.faiss").is_symlink()
    monkeypatch.undo()
    assert hnsw.retriever.search([contents(21)], k=1)[0][0].doc_id == "21"


def test_prebuilt_of_another_corpus_is_refused(corpus, tiny_encoder, tmp_path):
    import faiss

    index = faiss.IndexFlatIP(32)
    index.add(np.eye(32, dtype=np.float32)[:10])
    faiss.write_index(index, str(tmp_path / "other.index"))
    with pytest.raises(ValueError, match="10 vectors but the corpus .* has 60 passages"):
        build_index(config(corpus, tiny_encoder, tmp_path / "x", prebuilt=str(tmp_path / "other.index")), echo=quiet)
    hnsw = faiss.IndexHNSWFlat(32, 8)
    hnsw.add(np.eye(32, dtype=np.float32))
    faiss.write_index(hnsw, str(tmp_path / "graph.index"))
    with pytest.raises(ValueError, match="not a FAISS flat index"):
        build_index(config(corpus, tiny_encoder, tmp_path / "y", prebuilt=str(tmp_path / "graph.index")), echo=quiet)


def test_env_retriever_loads_a_custom_built_index_without_rebuilding(corpus, tiny_encoder, tmp_path):
    out = tmp_path / "custom-ivfpq"
    build_index(config(corpus, tiny_encoder, out, index="ivfpq", nlist=1, pq_m=16, nprobe=1), echo=quiet)
    # What an environment does with RetrieverConfig / gym.make(..., index_dir=...): no build parameters given.
    retriever = get_retriever(RetrieverConfig(corpus_path=str(corpus), encoder=tiny_encoder, index_type="ivfpq",
                                              index_dir=str(out)))
    assert retriever.search([contents(11)], k=1)[0][0].doc_id == "11"
    assert retriever.builds == 0  # loaded as built, not rebuilt with the defaults
    assert retriever.meta["index_params"]["m"] == 16
    import faiss

    assert faiss.extract_index_ivf(retriever._index).nprobe == 1  # the build's nprobe is the folder's default
    # A parameter asked for explicitly and different from the folder's still rebuilds.
    other = DenseRetriever(corpus, encoder=tiny_encoder, index_type="ivfpq", index_dir=out, pq_m=8, progress=False)
    other.load()
    assert other.builds == 1 and other.meta["index_params"]["m"] == 8


def test_shared_shard_dir_encodes_once_for_several_index_types(corpus, tiny_encoder, tmp_path, monkeypatch):
    shards = tmp_path / "shards-e5"
    build_index(config(corpus, tiny_encoder, tmp_path / "flat", shard_dir=str(shards)), echo=quiet)
    assert len(list(shards.glob("*.npy"))) == 4  # kept: the folder was given

    def no_encoding(self, texts):
        raise AssertionError("shards in shard_dir should have been reused")

    monkeypatch.setattr(DenseRetriever, "_encode_passages", no_encoding)
    result = build_index(config(corpus, tiny_encoder, tmp_path / "ivfpq", index="ivfpq", shard_dir=str(shards)),
                         echo=quiet)
    assert result.meta["encoded_passages"] == 0


def test_estimates_follow_the_arithmetic():
    n, dim = 21_015_324, 768
    flat = estimate_resources(n, dim, "flat", encoder_bytes=0)
    assert flat.index_bytes == n * dim * 4  # 64.6 GB: Search-R1's e5_Flat.index
    assert flat.disk_peak_bytes == pytest.approx(2 * n * dim * 4 + 8 * (n + 1))  # shards + index
    ivf = estimate_resources(n, dim, "ivfpq", pq_m=96, encoder_bytes=0)
    assert ivf.params["nlist"] == round(4 * n ** 0.5)
    assert ivf.index_bytes == pytest.approx(n * (96 + 8) + ivf.params["nlist"] * dim * 4 + 256 * dim * 4)
    m = ivfpq_for_budget(n, dim, 16)
    fits = estimate_resources(n, dim, "ivfpq", pq_m=m, encoder_bytes=0.5e9)
    assert max(fits.build_peak_ram_bytes, fits.search_ram_bytes) <= 16e9
    bigger = min(d for d in range(m + 1, dim // 2 + 1) if dim % d == 0)
    over = estimate_resources(n, dim, "ivfpq", pq_m=bigger, encoder_bytes=0.5e9)
    assert max(over.build_peak_ram_bytes, over.search_ram_bytes) > 16e9
    with pytest.raises(ValueError, match="fits 1 GB"):
        ivfpq_for_budget(n, dim, 1)


def test_hnsw_estimate_matches_faiss(tmp_path):
    import faiss

    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    index = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    faiss.write_index(index, str(tmp_path / "h.index"))
    measured = os.path.getsize(tmp_path / "h.index")
    assert measured == pytest.approx(3000 * hnsw_bytes_per_vector(16, 8), rel=0.05)


def test_count_passages_estimates_large_files(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": str(i), "contents": "x" * 50} for i in range(5000)])
    assert count_passages(path) == (5000, True)
    monkeypatch.setattr("search_gym.retrieval.index_build.EXACT_COUNT_MAX_BYTES", 0)
    n, exact = count_passages(path, sample_rows=100)
    assert not exact and abs(n - 5000) <= 250  # ids grow longer down the file: the first rows are shorter


def test_clear_errors(tmp_path, corpus, tiny_encoder, capsys):
    with pytest.raises(FileNotFoundError, match="corpus file .*missing.jsonl does not exist"):
        IndexBuildConfig(corpus=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="not an index type; use one of flat, hnsw, ivfpq"):
        IndexBuildConfig(corpus=str(corpus), index="ivf")
    with pytest.raises(ValueError, match="--corpus is required"):
        IndexBuildConfig()
    with pytest.raises(ValueError, match="compressed"):
        IndexBuildConfig(corpus=str(tmp_path / "wiki-18.jsonl.gz"))
    with pytest.raises(FileNotFoundError, match="prebuilt index"):
        IndexBuildConfig(corpus=str(corpus), prebuilt=str(tmp_path / "e5_Flat.index"))
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        IndexBuildConfig(corpus=str(corpus), shard_size=0)

    from search_gym.cli import main

    assert main(["index", "build", "--corpus", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().out
    assert main(["index", "build", "--corpus", str(corpus), "--index", "annoy"]) == 2
    assert "not an index type" in capsys.readouterr().out


def test_cli_dry_run_prints_the_estimate_and_builds_nothing(corpus, tiny_encoder, tmp_path, capsys):
    from search_gym.cli import main

    out = tmp_path / "never"
    code = main(["index", "build", "--corpus", str(corpus), "--encoder", tiny_encoder, "--index", "ivfpq",
                 "--pq-m", "8", "--out", str(out), "--dry-run", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "estimate for 60 passages x 32-d, ivfpq" in text
    assert "codes + ids 60 x (5 + 8) B" in text  # 8 codes of 5 bits: 60 rows train at most 2**5 centroids


def test_cli_build_then_search(corpus, tiny_encoder, tmp_path, capsys):
    from search_gym.cli import main

    out = tmp_path / "cli-hnsw"
    code = main(["index", "build", "--corpus", str(corpus), "--encoder", tiny_encoder, "--index", "hnsw",
                 "--out", str(out), "--device", "cpu", "--shard-size", "32", "--no-progress"])
    assert code == 0 and f"index ready in {out}" in capsys.readouterr().out
    retriever = DenseRetriever(corpus, encoder=tiny_encoder, index_type="hnsw", index_dir=out, progress=False)
    assert retriever.search([contents(33)], k=1)[0][0].doc_id == "33" and retriever.builds == 0


def test_wiki18_env_searches_the_built_index(corpus, tiny_encoder, tiny_qa_path, tmp_path):
    from search_gym.envs.wiki18 import Wiki18SearchEnv

    out = tmp_path / "env-ivfpq"
    build_index(config(corpus, tiny_encoder, out, index="ivfpq", pq_m=16), echo=quiet)
    retriever = RetrieverConfig(corpus_path=str(corpus), encoder=tiny_encoder, index_type="ivfpq", index_dir=str(out))
    env = Wiki18SearchEnv(dataset=str(tiny_qa_path), retriever=retriever, topk=1)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(f"<search> {contents(0)} </search>")
    assert not terminated
    assert 'Doc 1(Title: "Paris") Paris is the capital' in info["env_text"]  # Search-R1's observation format
    assert get_retriever(retriever).builds == 0  # the env used the folder as built


def test_streamed_flat_file_is_what_faiss_writes_and_loads_memory_mapped(tmp_path, corpus, tiny_encoder):
    import faiss

    from search_gym.retrieval.dense import write_flat_index

    x = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float32)
    index = faiss.IndexFlatIP(24)
    index.add(x)
    faiss.write_index(index, str(tmp_path / "faiss.index"))
    write_flat_index(tmp_path / "streamed.index", [x[:300], x[300:600], x[600:]], 1000, 24)
    assert (tmp_path / "streamed.index").read_bytes() == (tmp_path / "faiss.index").read_bytes()
    with pytest.raises(ValueError, match="of 1001 rows got 1000"):
        write_flat_index(tmp_path / "short.index", [x], 1001, 24)

    result = build_index(config(corpus, tiny_encoder, tmp_path / "flat"), echo=quiet)
    assert result.retriever.mmap  # the builder maps what it wrote instead of reading 4dN bytes into RAM
    plain = DenseRetriever(corpus, encoder=tiny_encoder, index_dir=tmp_path / "flat", progress=False)
    q = plain.encode_queries([contents(5), contents(50)])
    for a, b in zip(plain.search_embeddings(q, 4), result.retriever.search_embeddings(q, 4)):
        np.testing.assert_array_equal(a, b)
    assert plain.builds == 0


# ------------------------------------------------------------------------------------------------ --dtype


def test_dtype_flag_reaches_the_builder_and_its_retriever(corpus, tiny_encoder, tmp_path, monkeypatch):
    from search_gym.cli import main
    from search_gym.retrieval import index_build
    from search_gym.retrieval.index_build import make_build_retriever

    seen: list[IndexBuildConfig] = []
    monkeypatch.setattr(index_build, "build_index", lambda config, **kw: seen.append(config))
    assert main(["index", "build", "--corpus", str(corpus), "--encoder", tiny_encoder, "--out", str(tmp_path / "x"),
                 "--device", "cuda", "--dtype", "bfloat16"]) == 0
    assert main(["index", "build", "--corpus", str(corpus), "--encoder", tiny_encoder, "--out", str(tmp_path / "x"),
                 "--device", "cuda"]) == 0
    assert [c.dtype for c in seen] == ["bfloat16", "float32"]  # float32 unless asked
    assert IndexBuildConfig.help()["dtype"].startswith("encoder weight precision: float32 | float16 | bfloat16")

    # The builder's DenseRetriever carries it (constructing it loads nothing, so no GPU is needed here).
    retriever = make_build_retriever(config(corpus, tiny_encoder, tmp_path / "y", device="cuda", dtype="float16"),
                                     device="cuda")
    assert retriever.dtype == retriever.encode_dtype == "float16"
    assert make_build_retriever(config(corpus, tiny_encoder, tmp_path / "z"), device="cpu").dtype == "float32"


def test_half_dtype_on_cpu_fails_early_with_a_clear_error(corpus, tiny_encoder, tmp_path, monkeypatch, capsys):
    from search_gym.cli import main
    from search_gym.retrieval import encoders, index_build
    from search_gym.retrieval.encoders import load_encoder

    def no_encoding(self, texts):
        raise AssertionError("nothing may be encoded before the dtype is refused")

    monkeypatch.setattr(DenseRetriever, "_encode_passages", no_encoding)
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(ValueError, match=f"dtype {dtype} needs a CUDA device.*use dtype float32 on CPU"):
            config(corpus, tiny_encoder, tmp_path / "cpu", dtype=dtype)  # --device cpu: refused by the config
        with pytest.raises(ValueError, match="use dtype float32 on CPU"):
            DenseRetriever(corpus, encoder=tiny_encoder, device="cpu", dtype=dtype)
        with pytest.raises(ValueError, match="use dtype float32 on CPU"):
            load_encoder(tiny_encoder, "cpu", dtype=dtype)
    assert main(["index", "build", "--corpus", str(corpus), "--encoder", tiny_encoder, "--device", "cpu",
                 "--dtype", "float16", "--out", str(tmp_path / "cli")]) == 2
    assert "use dtype float32 on CPU" in capsys.readouterr().out
    assert not (tmp_path / "cli").exists()

    # --device auto on a machine without CUDA: refused by build_index before the estimate (and any model load).
    monkeypatch.setattr(index_build, "resolve_device", lambda device: "cpu")
    lines: list[str] = []
    auto = IndexBuildConfig(corpus=str(corpus), encoder=tiny_encoder, out=str(tmp_path / "auto"), dtype="float16",
                            progress=False)
    with pytest.raises(ValueError, match="needs a CUDA device, got device 'cpu'"):
        build_index(auto, echo=lines.append)
    assert lines == [] and not (tmp_path / "auto").exists()
    # device=None leaves the choice to sentence-transformers; a model that lands on the CPU is refused after loading.
    if not _cuda():
        monkeypatch.setattr(encoders, "_MODELS", {})
        with pytest.raises(ValueError, match="loaded on cpu: use dtype float32 on CPU"):
            load_encoder(tiny_encoder, None, dtype="float16")
        assert encoders._MODELS == {}  # the refused model is not cached

    with pytest.raises(ValueError, match="'float8' is not an encoder dtype; use one of float32, float16, bfloat16"):
        config(corpus, tiny_encoder, tmp_path / "bad", dtype="float8")
    prebuilt = tmp_path / "e5_Flat.index"
    prebuilt.write_bytes(b"")
    with pytest.raises(ValueError, match="--prebuilt encodes nothing"):
        IndexBuildConfig(corpus=str(corpus), encoder=tiny_encoder, prebuilt=str(prebuilt), device="cuda",
                         dtype="float16")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_dtype_is_recorded_and_a_resume_in_another_dtype_re_encodes(corpus, tiny_encoder, tmp_path):
    out = tmp_path / "resumed"
    seen: list[tuple[int, int]] = []

    def kill_after(shards):
        def on_shard(done, total):
            seen.append((done, total))
            if done == shards:
                raise KeyboardInterrupt(f"simulated kill after {shards} shards")
        return on_shard

    with pytest.raises(KeyboardInterrupt, match="simulated kill after 2 shards"):
        build_index(config(corpus, tiny_encoder, out), on_shard=kill_after(2), echo=quiet)
    manifest_path = out / "shards" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["dtype"] == "float32"

    # A manifest written before the dtype was recorded holds float32 shards: they are resumed, not re-encoded.
    del manifest["dtype"]
    manifest_path.write_text(json.dumps(manifest))
    seen.clear()
    with pytest.raises(KeyboardInterrupt, match="simulated kill after 3 shards"):
        build_index(config(corpus, tiny_encoder, out), on_shard=kill_after(3), echo=quiet)
    assert seen == [(3, 4)]

    # Shards of a half-precision build (as a GPU run interrupted would leave them) are not mixed with float32 ones:
    # like a changed encoder or shard size, the other dtype's shards are encoded again.
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "dtype": "float16"}))
    seen.clear()
    result = build_index(config(corpus, tiny_encoder, out), on_shard=lambda *a: seen.append(a), echo=quiet)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.meta["encoded_passages"] == 60
    assert result.meta["encoder"]["dtype"] == "float32"

    # meta.json's dtype: unset accepts the folder's, one asked for and different rebuilds (as other build settings).
    meta = json.loads((out / "meta.json").read_text())
    meta["encoder"]["dtype"] = "float16"
    (out / "meta.json").write_text(json.dumps(meta))
    loaded = DenseRetriever(corpus, encoder=tiny_encoder, index_dir=out, device="cpu", progress=False)
    assert loaded.search([contents(7)], k=1)[0][0].doc_id == "7" and loaded.builds == 0
    rebuilt = DenseRetriever(corpus, encoder=tiny_encoder, index_dir=out, device="cpu", dtype="float32",
                             progress=False)
    rebuilt.load()
    assert rebuilt.builds == 1 and rebuilt.meta["encoder"]["dtype"] == "float32"


def test_half_precision_embeddings_reach_faiss_as_unit_float32(tiny_encoder):
    """encode() with a half-precision model (bfloat16 here, which the CPU runs): float32 out, normalised in float32,
    close to but not equal to the float32 model's vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    from search_gym.retrieval.encoders import encode

    texts = [contents(i) for i in range(6)]
    full = SentenceTransformer(tiny_encoder, device="cpu")  # not the shared cache's model: it is cast below
    ref = encode(full, texts)
    half = full.to(torch.bfloat16)
    emb = encode(half, texts)
    assert emb.dtype == np.float32 and emb.flags["C_CONTIGUOUS"] and emb.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    cosine = (emb * ref).sum(axis=1)
    assert cosine.min() > 0.98
