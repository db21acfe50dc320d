"""Ship an accepted warm-start adapter: copy what `tools/aligned_pilot.sh collect` brought back into the package's
shipped-adapter folder (search_gym/agents/weights/<name>/), weights in parts of at most 15 MiB (every file of the
repository stays under 16 MiB), with SHA256SUMS for the joined file, after checking that the parts join to the
sha256 the GPU machine wrote.

    python tools/ship_adapter.py /work/.device/NN/r6a/adapter            # -> search_gym/agents/weights/smollm2-aligned
    python tools/ship_adapter.py ADAPTER --name smollm2-aligned --root /tmp/weights   # elsewhere (tests, dry runs)

ADAPTER holds adapter_config.json and either adapter_model.safetensors or its parts
(adapter_model.safetensors.part-NN + adapter_model.safetensors.sha256). The folder's README.md (how the adapter was
made) is left for the person shipping to rewrite; the script prints what it replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from search_gym.agents.adapters import join_parts

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PART_BYTES = 15 * 1024 * 1024


def joined_bytes(folder: Path) -> bytes:
    """The adapter's weights: the whole file, or its parts joined and checked against the .sha256 beside them."""
    whole = folder / WEIGHTS
    if whole.is_file():
        return whole.read_bytes()
    parts = sorted(folder.glob(f"{WEIGHTS}.part-*"))
    if not parts:
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS} nor {WEIGHTS}.part-NN")
    listed = folder / f"{WEIGHTS}.sha256"
    if not listed.is_file():
        raise FileNotFoundError(f"{listed} is missing: the joined parts cannot be checked")
    with tempfile.TemporaryDirectory() as tmp:
        joined = join_parts(parts, Path(tmp) / WEIGHTS, listed.read_text().split()[0], source=str(folder / WEIGHTS),
                            listed_in=listed.name)
        return joined.read_bytes()


def ship(adapter: Path, target: Path, base_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> dict:
    """Replace the adapter in ``target`` by ``adapter``'s; returns {"sha256", "bytes", "files", "replaced"}. The
    config's ``base_model_name_or_path`` (the GPU machine's cache path) becomes ``base_id``, the hub model the
    bundled GGUF was quantised from: the path exists nowhere else, and the loaders apply the adapter to the model
    they were given."""
    if not (adapter / CONFIG).is_file():
        raise FileNotFoundError(f"{adapter / CONFIG} is missing: not an adapter folder")
    data = joined_bytes(adapter)
    digest = hashlib.sha256(data).hexdigest()
    target.mkdir(parents=True, exist_ok=True)
    replaced = sorted(p.name for p in target.iterdir() if p.name.startswith(WEIGHTS) or p.name in (CONFIG, "SHA256SUMS"))
    for name in replaced:
        (target / name).chmod(0o644)
        (target / name).unlink()
    config = json.loads((adapter / CONFIG).read_text())
    if str(config.get("base_model_name_or_path", "")).startswith("/"):
        config["base_model_name_or_path"] = base_id
    (target / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    files = [CONFIG]
    if len(data) <= PART_BYTES:
        (target / WEIGHTS).write_bytes(data)
        files.append(WEIGHTS)
    else:
        for k in range(0, len(data), PART_BYTES):
            name = f"{WEIGHTS}.part-{k // PART_BYTES:02d}"
            (target / name).write_bytes(data[k:k + PART_BYTES])
            files.append(name)
    (target / "SHA256SUMS").write_text(f"{digest}  {WEIGHTS}\n")
    return {"sha256": digest, "bytes": len(data), "files": files + ["SHA256SUMS"], "replaced": replaced}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", type=Path, help="the collected adapter folder")
    parser.add_argument("--name", default="smollm2-aligned", help="the shipped adapter's name (its folder)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "search_gym" / "agents"
                        / "weights", help="the shipped adapters' folder")
    args = parser.parse_args(argv)
    out = ship(args.adapter, args.root / args.name)
    print(f"shipped {args.adapter} -> {args.root / args.name}: {out['bytes'] / 2**20:.1f} MiB, sha256 {out['sha256']}")
    print(f"  files: {', '.join(out['files'])}; replaced: {', '.join(out['replaced']) or 'nothing'}")
    print("  next: rewrite README.md there (recipe, command, card, time), the README's smollm2-aligned row, and re-run "
          "`python benchmarks/bench_first_run.py --record` for the demo table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
