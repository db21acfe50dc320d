"""``search-gym directions {extract,select,steer,drift}``: the direction pipeline from the command line.

A run folder (``--dir``) holds everything one model's pipeline produces::

    acts/<kind>_<split>_<position>.safetensors   activations (+ .json metadata); kind: harmful, qa, benign
    harmfulness.safetensors                        harmful - harmless(first --harmless kind) @ <search> prefill
    harmfulness_<kind>.safetensors                 the same against each --harmless kind
    harmfulness_all.safetensors                    against all --harmless kinds pooled (with several kinds)
    refusal.safetensors                            harmful - harmless @ last prompt token, no prefill (Arditi)
    attack_search.safetensors                      attack <search> - natural <search> (with --natural N)
    cosines.json                                   cosine(refusal, harmfulness) per layer
    layer_scores.json / .png / .md                 held-out AUROC and Cohen's d per layer, chosen layer (select)
    steering.json / .png / .md                     steering sweep (steer)
    drift.json / .png / .md                        checkpoint drift (drift)

Every step skips activations that are already collected with the same provenance, so re-running is cheap.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_directions_parser", "main"]

HARMLESS_KINDS = ("qa", "benign")


def _layers_arg(value: str) -> Any:
    return value if value == "all" else [int(x) for x in value.split(",")]


def _print(text: str) -> None:
    print(text, flush=True)


def _plot(draw: Any, *args: Any, **kwargs: Any) -> None:
    """Draw a PNG when matplotlib is installed (it is optional); the JSON and markdown outputs never need it."""
    try:
        draw(*args, **kwargs)
    except ImportError as exc:
        _print(f"no plot: {exc}")


def _load_model(name: str, device: str | None, dtype: str):
    from search_gym.directions.activations import hf_parts

    return hf_parts(name, device=device, dtype=dtype)


def _acts_path(folder: Path, kind: str, split: str, position: str) -> Path:
    return folder / "acts" / f"{kind}_{split}_{position}.safetensors"


def _collect_all(parts, folder: Path, args: argparse.Namespace, position: str, prefill: str,
                 kinds: list[str]) -> dict[tuple[str, str], Any]:
    from search_gym.directions.activations import ActivationConfig, collect_activations, load_prompts

    config = ActivationConfig(position=position, prefill=prefill, template=args.template, few_shot=args.few_shot,
                              layers=args.layers, batch_size=args.batch_size)
    sizes = {"train": args.n_train, "heldout": args.n_heldout}
    out = {}
    for kind in ["harmful", *kinds]:
        for split, n in sizes.items():
            prompts = load_prompts(kind, split, n, seed=args.seed)
            out[(kind, split)] = collect_activations(parts, prompts, config, label=f"{kind}/{split}",
                                                     out=_acts_path(folder, kind, split, position),
                                                     progress=args.progress)
            _print(f"  {kind}/{split} @ {position}: {len(out[(kind, split)])} prompts "
                   f"({out[(kind, split)].meta.get('seconds', 0):.1f} s)")
    return out


def _cmd_extract(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import (
        ActivationSet,
        collect_activations,
        collect_natural_search,
        load_prompts,
    )
    from search_gym.directions.directions import (
        attack_search_direction,
        cosine_per_layer,
        harmfulness_direction,
        refusal_direction,
    )

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.harmless.split(",") if k.strip()]
    if not kinds or any(k not in HARMLESS_KINDS for k in kinds):
        raise SystemExit(f"--harmless takes a comma list of {HARMLESS_KINDS}")
    parts = _load_model(args.model, args.device, args.dtype)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    (folder / "extract.json").write_text(json.dumps(settings, indent=1, default=str))
    _print(f"model {parts.name}; activations at the <search> prefill")
    search = _collect_all(parts, folder, args, "search", "<search>", kinds)
    _print("activations at the last prompt token, no prefill (refusal direction)")
    last = _collect_all(parts, folder, args, "last_prompt", "", kinds[:1])
    meta = {"num_layers": search[("harmful", "train")].meta["num_layers"]}
    directions = {}
    for kind in kinds:
        d = harmfulness_direction(search[("harmful", "train")], search[(kind, "train")], method=args.method)
        d.meta.update(meta, harmless=kind)
        d.save(folder / f"harmfulness_{kind}.safetensors")
        directions[kind] = d
    main = directions[kinds[0]]
    main.save(folder / "harmfulness.safetensors")
    if len(kinds) > 1:
        pooled = ActivationSet.concat([search[(kind, "train")] for kind in kinds], label="+".join(kinds))
        d = harmfulness_direction(search[("harmful", "train")], pooled, method=args.method)
        d.meta.update(meta, harmless="+".join(kinds))
        d.save(folder / "harmfulness_all.safetensors")
    refusal = refusal_direction(last[("harmful", "train")], last[(kinds[0], "train")], method=args.method)
    refusal.meta.update(meta, harmless=kinds[0])
    refusal.save(folder / "refusal.safetensors")
    cosines = cosine_per_layer(refusal, main)
    (folder / "cosines.json").write_text(json.dumps({"refusal_vs_harmfulness": cosines}, indent=1))
    _print("cosine(refusal, harmfulness) per layer: "
           + ", ".join(f"{layer}:{c:.2f}" for layer, c in cosines.items()))
    if args.natural > 0:
        prompts = load_prompts("harmful", "train", args.natural, seed=args.seed)
        natural = collect_natural_search(parts, prompts, template=args.template, few_shot=args.natural_few_shot,
                                         layers=args.layers, batch_size=args.batch_size)
        natural.save(folder / "acts" / "harmful_train_natural_search.safetensors")
        attack = collect_activations(parts, prompts, template=args.template, few_shot=args.natural_few_shot,
                                     layers=args.layers, batch_size=args.batch_size, label="harmful/attack",
                                     out=folder / "acts" / "harmful_train_attack_search.safetensors")
        _print(f"natural <search> in {len(natural)}/{len(prompts)} prompts")
        if len(natural) >= 2:
            d = attack_search_direction(attack, natural, method=args.method)
            d.meta.update(meta)
            d.save(folder / "attack_search.safetensors")
            cos = cosine_per_layer(d, main)
            (folder / "cosines.json").write_text(json.dumps(
                {"refusal_vs_harmfulness": cosines, "attack_search_vs_harmfulness": cos}, indent=1))
    _print(f"directions written to {folder}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import ActivationSet
    from search_gym.directions.directions import Direction
    from search_gym.directions.selection import (
        choose_layer,
        layer_scores,
        mean_scores,
        plot_layer_scores,
        scores_markdown,
    )

    folder = Path(args.dir)
    name = args.direction
    path = folder / f"{name}.safetensors"
    direction = Direction.load(path)
    position = (direction.meta.get("pos") or {}).get("position") or ("last_prompt" if name == "refusal" else "search")
    harmful = ActivationSet.load(_acts_path(folder, "harmful", "heldout", position))
    scores = {}
    for kind in HARMLESS_KINDS:
        held = _acts_path(folder, kind, "heldout", position)
        if held.exists():
            scores[f"vs {kind}"] = layer_scores(direction, harmful, ActivationSet.load(held))
    if not scores:
        raise SystemExit(f"no held-out harmless activations in {folder / 'acts'}: run extract first")
    # choose on the comparison the direction was trained for; a pooled direction on the mean of its comparisons
    trained_on = [k for k in str(direction.meta.get("harmless", "")).split("+") if f"vs {k}" in scores]
    if len(trained_on) > 1:
        reference = "mean of " + ", ".join(f"vs {k}" for k in trained_on)
        basis = mean_scores([scores[f"vs {k}"] for k in trained_on])
    else:
        reference = f"vs {trained_on[0]}" if trained_on else next(iter(scores))
        basis = scores[reference]
    chosen = choose_layer(basis, num_layers=direction.meta.get("num_layers"), max_depth=args.max_depth,
                          min_layer=args.min_layer)
    direction = direction.with_chosen_layer(chosen)
    direction.meta["selection"] = {"on": reference, "max_depth": args.max_depth, "min_layer": args.min_layer}
    direction.save(path)
    if name == "harmfulness":  # the per-kind copy of the main direction gets the same choice
        kind = direction.meta.get("harmless")
        if kind and (folder / f"harmfulness_{kind}.safetensors").exists():
            direction.save(folder / f"harmfulness_{kind}.safetensors")
    table = scores_markdown(scores, chosen=chosen)
    stem = "layer_scores" if name == "harmfulness" else f"layer_scores_{name}"
    (folder / f"{stem}.json").write_text(json.dumps(
        {"direction": name, "chosen_layer": chosen, "chosen_on": reference,
         "scores": {k: [s.to_dict() for s in v] for k, v in scores.items()}}, indent=1))
    (folder / f"{stem}.md").write_text(table + "\n")
    _plot(plot_layer_scores, scores, args.plot or folder / f"{stem}.png", chosen=chosen,
          title=f"{name} direction ({direction.meta.get('model', '')}): held-out separation")
    _print(table)
    _print(f"chosen layer {chosen} ({reference}), saved in {path}")
    return 0


def _import_judge(spec: str):
    """``module:attr``: a Judge instance, or a callable returning one."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit("--judge takes 'latent' or 'package.module:factory'")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if callable(obj) and not hasattr(obj, "judge") else obj


def _cmd_steer(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import ActivationSet, load_prompts
    from search_gym.directions.directions import Direction
    from search_gym.directions.guard import LatentGuard
    from search_gym.directions.steering import SteeringConfig, steering_sweep

    folder = Path(args.dir)
    direction = Direction.load(folder / f"{args.direction}.safetensors")
    layer = args.layer if args.layer is not None else direction.chosen_layer
    if layer is None:
        raise SystemExit("no --layer given and the direction has no chosen layer: run `directions select` first")
    model = args.model or direction.meta.get("model")
    parts = _load_model(model, args.device, args.dtype)
    judge = None
    if args.judge == "latent":
        judge = LatentGuard.calibrate(
            direction,
            ActivationSet.load(_acts_path(folder, "harmful", "train", "search")),
            ActivationSet.load(_acts_path(folder, direction.meta.get("harmless", "qa"), "train", "search")),
            layer=layer)
    elif ":" in args.judge:
        judge = _import_judge(args.judge)
    elif args.judge:
        from search_gym.safety.instrument import make_judge

        judge = make_judge(args.judge)
    config = SteeringConfig(coeffs=tuple(float(c) for c in args.coeffs.split(",")),
                            scale=float(args.scale) if args.scale not in ("gap", "norm") else args.scale,
                            readout_layer=args.readout_layer, generate=not args.no_generate, few_shot=args.few_shot,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    prompts = load_prompts(args.prompts, "heldout", args.n_prompts, seed=args.seed)
    result = steering_sweep(parts, direction, prompts, layer=layer, config=config, judge=judge)
    table = result.to_markdown()
    out = Path(args.out) if args.out else folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "steering.json").write_text(json.dumps(dict(result.to_dict(), prompts=prompts, few_shot=args.few_shot,
                                                       monotonic_fraction=result.monotonic_fraction()), indent=1))
    (out / "steering.md").write_text(table + "\n")
    _plot(result.plot, out / "steering.png", title=f"steering {args.direction} at layer {layer} ({args.prompts} prompts)")
    _print(table)
    _print(f"readout projection monotonic in coeff: {result.is_monotonic()} "
           f"(per prompt: {result.monotonic_fraction():.0%})")
    return 0


def _cmd_drift(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import load_prompts
    from search_gym.directions.directions import Direction
    from search_gym.directions.drift_tracking import drift

    direction = Direction.load(args.direction)
    checkpoints = []
    for spec in args.checkpoint:
        step, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit("--checkpoint takes STEP=PATH")
        checkpoints.append((int(step), path))
    harmful = load_prompts("harmful", "heldout", args.n_prompts, seed=args.seed)
    harmless = load_prompts(args.harmless, "heldout", args.n_prompts, seed=args.seed) if args.harmless else None
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = drift(checkpoints, direction, harmful, harmless_prompts=harmless, layers=layers, device=args.device,
                  dtype=args.dtype, cache_dir=out / "acts")
    (out / "drift.json").write_text(json.dumps(table.to_dicts(), indent=1))
    (out / "drift.md").write_text(table.to_markdown() + "\n")
    _plot(table.plot, out / "drift.png")
    _print(table.to_markdown())
    return 0


def _model_options(parser: argparse.ArgumentParser, default_model: str | None) -> None:
    parser.add_argument("--model", default=default_model,
                        help="'smollm2' (bundled), a model folder or a hub id" +
                             ("" if default_model else " (default: the model recorded in the direction)"))
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", help="float32, bf16 or fp16")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt subsets")


def add_directions_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``directions`` with its four subcommands to a ``search-gym`` subparsers object; returns its parser."""
    parser = subparsers.add_parser("directions", help="harmfulness / refusal directions: extract, select, steer, drift",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="directions_command", required=True)

    extract = sub.add_parser("extract", help="collect activations and compute the directions")
    extract.add_argument("--dir", required=True, help="run folder (created)")
    _model_options(extract, "smollm2")
    extract.add_argument("--n-train", type=int, default=128, help="prompts per class from the train splits")
    extract.add_argument("--n-heldout", type=int, default=64, help="prompts per class from the held-out splits")
    extract.add_argument("--harmless", default="qa,benign",
                         help="harmless classes, comma separated: qa (Wikipedia questions), benign (edgy but fine); "
                              "the first one defines the main direction")
    extract.add_argument("--template", default="search_r1", help="prompt template of the user turn")
    extract.add_argument("--few-shot", type=int, default=0, help="worked examples before the prompt")
    extract.add_argument("--layers", default="all", type=_layers_arg, help="'all' or comma-separated layers")
    extract.add_argument("--method", default="diff_of_means", choices=["diff_of_means", "pca"], help="estimator")
    extract.add_argument("--natural", type=int, default=0,
                         help="also compute the attack-search vs natural-search direction on N harmful prompts "
                              "(generates until the model writes <search>)")
    extract.add_argument("--natural-few-shot", type=int, default=2, help="few-shot examples for natural search")
    extract.add_argument("--progress", action="store_true", help="print progress per shard")
    extract.set_defaults(func=_cmd_extract)

    select = sub.add_parser("select", help="held-out AUROC / Cohen's d per layer, choose the layer, plot")
    select.add_argument("--dir", required=True, help="run folder written by extract")
    select.add_argument("--direction", default="harmfulness",
                        help="harmfulness, refusal, harmfulness_<kind> or harmfulness_all")
    select.add_argument("--max-depth", type=float, default=0.8, help="only layers up to this fraction of depth")
    select.add_argument("--min-layer", type=int, default=0, help="only layers from this one")
    select.add_argument("--plot", default=None, help="PNG path (default: <dir>/layer_scores.png)")
    select.set_defaults(func=_cmd_select)

    steer = sub.add_parser("steer", help="steering sweep: coeff x scale at the chosen layer")
    steer.add_argument("--dir", required=True, help="run folder written by extract (and select)")
    _model_options(steer, None)
    steer.add_argument("--direction", default="harmfulness", help="direction file stem in --dir")
    steer.add_argument("--layer", type=int, default=None, help="steered layer (default: the chosen one)")
    steer.add_argument("--readout-layer", type=int, default=None, help="layer the projection is read at")
    steer.add_argument("--coeffs", default="-2,-1,0,1,2", help="comma-separated coefficients")
    steer.add_argument("--scale", default="gap", help="gap, norm or a number")
    steer.add_argument("--prompts", default="harmful", choices=["harmful", "benign", "qa"],
                       help="held-out prompts to steer on")
    steer.add_argument("--n-prompts", type=int, default=8, help="how many prompts")
    steer.add_argument("--max-new-tokens", type=int, default=24, help="tokens per generated query / response")
    steer.add_argument("--no-generate", action="store_true", help="projections only (no query / refusal)")
    steer.add_argument("--few-shot", type=int, default=0,
                       help="worked examples before each prompt (small models only write real queries with them)")
    steer.add_argument("--out", default=None, help="output folder for steering.{json,md,png} (default: --dir)")
    steer.add_argument("--judge", default="latent",
                       help="query judge: 'latent' (guard calibrated on the train activations), a safety judge "
                            "name (query_classifier, llm_query), 'module:factory', or '' for none")
    steer.set_defaults(func=_cmd_steer)

    drift = sub.add_parser("drift", help="project checkpoints on a base direction")
    drift.add_argument("--direction", required=True, help="a direction .safetensors (base model)")
    drift.add_argument("--checkpoint", action="append", required=True, help="STEP=PATH, repeat per checkpoint")
    drift.add_argument("--out", required=True, help="output folder")
    drift.add_argument("--n-prompts", type=int, default=64, help="held-out prompts per class")
    drift.add_argument("--harmless", default="qa", help="harmless class for gap / AUROC ('' for none)")
    drift.add_argument("--layers", default=None, help="comma-separated layers (default: the chosen layer)")
    drift.add_argument("--device", default=None, help="torch device")
    drift.add_argument("--dtype", default="float32", help="float32, bf16 or fp16")
    drift.add_argument("--seed", type=int, default=0, help="seed of the prompt subsets")
    drift.set_defaults(func=_cmd_drift)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m search_gym.directions.cli extract ...``."""
    parser = argparse.ArgumentParser(prog="search-gym")
    sub = parser.add_subparsers(dest="command", required=True)
    add_directions_parser(sub)
    args = parser.parse_args(["directions", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
