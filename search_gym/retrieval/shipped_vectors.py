"""Passage embeddings shipped inside the package, so that the embedded default's dense index needs no encoding pass.

On a 2-core machine, encoding the embedded default corpus (12,324 passages) with all-MiniLM-L6-v2 is most of a
newcomer's first run (258 s of README command 1's 422 s, benchmarks/RESULTS.md). The package carries those
embeddings instead: made once from a float32 encoding, stored as float16 (9.5 MB), next to a JSON record that says
which corpus (its content fingerprint) and which encoder (its passage identity: name, prefix, normalisation,
maximum length) they belong to, and the sha256 of the array file.

:class:`~search_gym.retrieval.dense.DenseRetriever` looks here before it encodes: when a record names exactly the
corpus and encoder being built and the file's checksum is right, the rows (upcast to float32) become the index and
``meta.json`` says ``vectors_from: "shipped:<file>"``. Any other corpus or encoder, another encoder precision asked
for, ``shipped_vectors=False`` (``search-gym index build --shipped-vectors false``) or a damaged file: it encodes as
before. Float16 storage moves a unit vector's entries by at most 1.2e-4 (the shipped record's ``max_abs_error``); how
much that moves retrieval is measured by ``benchmarks/bench_shipped_vectors.py`` and recorded in benchmarks/RESULTS.md.

Regenerate after the embedded corpus or the default encoder changes (``tests/test_shipped_vectors.py`` fails when
the shipped record no longer matches the corpus the package builds)::

    python -m search_gym.retrieval.shipped_vectors INDEX_DIR   # a float32 flat index folder of that corpus
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from search_gym.data.corpus import file_fingerprint

logger = logging.getLogger(__name__)

#: Where the records (``*.json``) and arrays (``*.f16.npy``) live: package data, installed with search-gym.
SHIPPED_DIR = Path(__file__).resolve().parent / "vectors"
RECORD_FORMAT = 1


def find_record(corpus_fingerprint: str, encoder_identity: dict[str, Any], count: int,
                folder: Path | None = None) -> dict[str, Any] | None:
    """The shipped record for this corpus + encoder (+ its ``path``), or None when none matches."""
    folder = SHIPPED_DIR if folder is None else Path(folder)
    for record_path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("unreadable shipped-vectors record %s (%s): ignored", record_path, exc)
            continue
        if (record.get("format") == RECORD_FORMAT and record.get("corpus_fingerprint") == corpus_fingerprint
                and record.get("encoder") == encoder_identity and record.get("count") == count):
            return {**record, "path": str(record_path.with_name(record["file"]))}
    return None


def load_vectors(record: dict[str, Any]) -> np.ndarray | None:
    """The record's rows as float32, or None (with a warning saying why) when the file is missing or damaged."""
    path = Path(record["path"])
    if not path.is_file():
        logger.warning("shipped vectors %s are missing: encoding instead", path)
        return None
    actual = file_fingerprint(path)
    if actual != record["sha256"]:
        logger.warning("shipped vectors %s have sha256 %s, the record says %s: encoding instead", path, actual,
                       record["sha256"])
        return None
    vectors = np.load(path, allow_pickle=False)
    if vectors.shape != (record["count"], record["dim"]):
        logger.warning("shipped vectors %s have shape %s, the record says %s: encoding instead", path, vectors.shape,
                       (record["count"], record["dim"]))
        return None
    return vectors.astype(np.float32)


def lookup(corpus_fingerprint: str, encoder_identity: dict[str, Any], count: int,
           folder: Path | None = None) -> tuple[np.ndarray, str] | None:
    """``(float32 vectors, source name)`` for this corpus + encoder, or None to encode."""
    record = find_record(corpus_fingerprint, encoder_identity, count, folder)
    if record is None:
        return None
    vectors = load_vectors(record)
    return None if vectors is None else (vectors, f"shipped:{record['file']}")


def export(index_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the float16 vectors + record of a float32-encoded flat index folder; returns the record's path."""
    import faiss

    index_dir = Path(index_dir)
    meta = json.loads((index_dir / "meta.json").read_text())
    if meta.get("kind") != "dense" or meta.get("index_type") != "flat":
        raise ValueError(f"{index_dir} is a {meta.get('kind')} {meta.get('index_type')} index; export takes a dense "
                         "flat index (its vectors are the exact embeddings)")
    if meta.get("vectors_from") != "encoded" or meta.get("encoder", {}).get("dtype", "float32") != "float32":
        raise ValueError(f"{index_dir} was not encoded here in float32 (vectors_from={meta.get('vectors_from')}, "
                         f"dtype={meta.get('encoder', {}).get('dtype')}); shipped vectors start from a float32 "
                         "encoding")
    flat = faiss.read_index(str(index_dir / "index.faiss"))
    vectors32 = flat.reconstruct_n(0, flat.ntotal)  # a flat index stores the embeddings themselves
    vectors16 = vectors32.astype(np.float16)
    max_abs_error = float(np.abs(vectors16.astype(np.float32) - vectors32).max()) if len(vectors32) else 0.0
    del flat, vectors32
    encoder = meta["encoder"]
    identity = {key: encoder[key] for key in ("name", "passage_prefix", "normalize", "max_seq_length")}
    out_dir = SHIPPED_DIR if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = encoder["name"].replace("/", "--").lower()
    stem = f"{meta['corpus_fingerprint'][:12]}-{slug}"
    array_path = out_dir / f"{stem}.f16.npy"
    np.save(array_path, vectors16, allow_pickle=False)
    record = {
        "format": RECORD_FORMAT,
        "file": array_path.name,
        "sha256": file_fingerprint(array_path),
        "corpus_fingerprint": meta["corpus_fingerprint"],
        "corpus_name": Path(meta["corpus_path"]).name,
        "encoder": identity,
        "count": int(vectors16.shape[0]),
        "dim": int(vectors16.shape[1]),
        "dtype": "float16",
        "made_from": {"encoder_dtype": "float32", "built_at": meta.get("built_at"),
                      "versions": meta.get("versions"), "max_abs_error_float16": max_abs_error},
    }
    record_path = out_dir / f"{stem}.json"
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the shipped float16 passage vectors of a float32 flat index.")
    parser.add_argument("index_dir", help="a dense flat index folder (meta.json + index.faiss), encoded in float32")
    parser.add_argument("--out", default=None, help=f"where to write them (default {SHIPPED_DIR})")
    args = parser.parse_args(argv)
    path = export(args.index_dir, args.out)
    record = json.loads(path.read_text())
    print(f"wrote {path} and {record['file']}: {record['count']:,} x {record['dim']} float16, "
          f"max abs error {record['made_from']['max_abs_error_float16']:.2e}")


if __name__ == "__main__":
    main()
