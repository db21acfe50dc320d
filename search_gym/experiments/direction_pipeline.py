"""``search-gym directions {extract,select,evaluate,steer,drift}``: the direction pipeline from the command line.

It sits on the experiments floor, not in ``search_gym/directions``: ``evaluate`` scores the directions' latent
guards beside the query classifier with the judges' evaluation (``search_gym.judges``, a floor above directions),
and the study calls :func:`extract` and :func:`select`.

A run folder (``--dir``) holds everything one model's pipeline produces::

    acts/<kind>_<split>_<position>.safetensors   activations (+ .json metadata); kind: matched_harmful,
                                                   matched_benign (the default contrast), harmful, qa, benign
    harmfulness.safetensors                        harmful - harmless (first --harmless contrast) @ <search> prefill
    harmfulness_<kind>.safetensors                 the same for each --harmless contrast (matched, qa, benign)
    harmfulness_all.safetensors                    against all --harmless kinds pooled (with several kinds)
    refusal.safetensors                            harmful - harmless @ last prompt token, no prefill (Arditi)
    attack_search.safetensors                      prefilled <search> - the model's own first <search> on harmful
                                                   prompts (RL-search-safety's contrast; with --natural N)
    cosines.json                                   cosine(refusal / other contrasts, harmfulness) per layer
    layer_scores.json / .png / .md                 val matched-pair AUROC and Cohen's d per layer, chosen layer
    evaluate.json / .md, evaluate_<dir>.md / .png  the judges' held-out split: per-layer AUROC per slice (matched
                                                   pairs apart), latent guards beside the query classifier
    steering.json / .png / .md                     steering sweep (steer)
    drift.json / .png / .md                        checkpoint drift (drift)

Held-out discipline: directions are fitted on ``train``, layers and guard thresholds chosen on the ``val`` split of
the matched contrast (its matched pairs for the layer), and the judges' ``heldout`` split is read only by
``evaluate``. Every step skips activations that are already collected with the same provenance, so re-running is
cheap.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_directions_parser", "extract", "flag_options", "main", "select"]


def _layers_arg(value: str) -> Any:
    return value if value == "all" else [int(x) for x in value.split(",")]


def _count_arg(value: str) -> int | None:
    """A prompt count, or ``all`` (None: every prompt of the split)."""
    return None if value == "all" else int(value)


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


# The two prompt kinds of each contrast (activations.load_prompts kinds).
SIDES = {"matched": ("matched_harmful", "matched_benign"), "qa": ("harmful", "qa"), "benign": ("harmful", "benign")}
# Every direction's layer is chosen on these: the validation split of the matched contrast (its pairs).
VAL_SIDES = SIDES["matched"]


def _collect(parts, folder: Path, args: argparse.Namespace, position: str, prefill: str,
             specs: list[tuple[str, str, int | None]]) -> dict[tuple[str, str], Any]:
    """Activations of each ``(kind, split, n)`` at ``position``, stored (and reused) under ``<dir>/acts``."""
    from search_gym.directions.activations import ActivationConfig, collect_activations, load_prompts

    config = ActivationConfig(position=position, prefill=prefill, template=args.template, few_shot=args.few_shot,
                              layers=args.layers, batch_size=args.batch_size)
    out = {}
    for kind, split, n in specs:
        if (kind, split) in out:
            continue
        # A bundled set's train draw leaves out the judges' val carve: layers are chosen on val.
        prompts = load_prompts(kind, split, n, seed=args.seed, without_val=True)
        out[(kind, split)] = collect_activations(parts, prompts, config, label=f"{kind}/{split}",
                                                 out=_acts_path(folder, kind, split, position),
                                                 progress=args.progress)
        _print(f"  {kind}/{split} @ {position}: {len(out[(kind, split)])} prompts "
               f"({out[(kind, split)].meta.get('seconds', 0):.1f} s)")
    return out


def _specs(kinds: list[str], args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    specs = []
    for kind in kinds:
        for side in SIDES[kind]:
            specs.append((side, "train", args.n_train))
    specs += [(side, "val", args.n_val) for side in VAL_SIDES]
    # the first recipe's held-out draws (bundled held-out splits), so its old figures stay reproducible
    for kind in kinds:
        if kind != "matched" and args.n_heldout != 0:
            specs += [(side, "heldout", args.n_heldout) for side in SIDES[kind]]
    return specs


def _cmd_extract(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import ActivationSet, load_prompts
    from search_gym.directions.contrasts import prefill_vs_own_search
    from search_gym.directions.directions import (
        attack_search_direction,
        cosine_per_layer,
        harmfulness_direction,
        refusal_direction,
    )

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.harmless.split(",") if k.strip()]
    if not kinds or any(k not in SIDES for k in kinds):
        raise SystemExit(f"--harmless takes a comma list of {tuple(SIDES)}")
    parts = _load_model(args.model, args.device, args.dtype)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    (folder / "extract.json").write_text(json.dumps(settings, indent=1, default=str))
    _print(f"model {parts.name}; activations at the <search> prefill")
    search = _collect(parts, folder, args, "search", "<search>", _specs(kinds, args))
    if args.refusal:
        _print("activations at the last prompt token, no prefill (refusal direction)")
        last = _collect(parts, folder, args, "last_prompt", "", _specs(kinds[:1], args))
    num_layers = next(iter(search.values())).meta["num_layers"]
    directions = {}
    for kind in kinds:
        harmful, harmless = SIDES[kind]
        d = harmfulness_direction(search[(harmful, "train")], search[(harmless, "train")], method=args.method)
        d.meta.update(num_layers=num_layers, harmless=kind, contrast=kind, harmful_kind=harmful,
                      harmless_kind=harmless)
        d.save(folder / f"harmfulness_{kind}.safetensors")
        directions[kind] = d
    main = directions[kinds[0]]
    main.save(folder / "harmfulness.safetensors")
    if len(kinds) > 1:
        pooled = ActivationSet.concat([search[(SIDES[kind][1], "train")] for kind in kinds], label="+".join(kinds))
        harmful_sides = {SIDES[kind][0] for kind in kinds}
        harmful = (search[(SIDES[kinds[0]][0], "train")] if len(harmful_sides) == 1 else
                   ActivationSet.concat([search[(side, "train")] for side in sorted(harmful_sides)],
                                        label="+".join(sorted(harmful_sides))))
        d = harmfulness_direction(harmful, pooled, method=args.method)
        d.meta.update(num_layers=num_layers, harmless="+".join(kinds), contrast="pooled")
        d.save(folder / "harmfulness_all.safetensors")
    harmful, harmless = SIDES[kinds[0]]
    cosines = {}
    if args.refusal:
        refusal = refusal_direction(last[(harmful, "train")], last[(harmless, "train")], method=args.method)
        refusal.meta.update(num_layers=num_layers, harmless=kinds[0], contrast=kinds[0])
        refusal.save(folder / "refusal.safetensors")
        cosines["refusal_vs_harmfulness"] = cosine_per_layer(refusal, main)
        _print("cosine(refusal, harmfulness) per layer: "
               + ", ".join(f"{layer}:{c:.2f}" for layer, c in cosines["refusal_vs_harmfulness"].items()))
    for kind in kinds[1:]:
        cosines[f"harmfulness_{kind}_vs_harmfulness"] = cosine_per_layer(directions[kind], main)
    if args.natural > 0:
        # RL-search-safety's contrast: the attack's <search> minus the model's own first <search>, harmful prompts
        prompts = load_prompts(harmful, "train", args.natural, seed=args.seed, without_val=True)
        attack, own = prefill_vs_own_search(parts, prompts, template=args.template, few_shot=args.natural_few_shot,
                                            layers=args.layers, batch_size=args.batch_size,
                                            max_new_tokens=args.natural_max_new_tokens, label=harmful)
        own.save(folder / "acts" / f"{harmful}_train_own_search.safetensors")
        attack.save(folder / "acts" / f"{harmful}_train_attack_search.safetensors")
        _print(f"the model wrote <search> itself on {len(own)}/{len(prompts)} prompts")
        if len(own) >= 2:
            d = attack_search_direction(attack, own, method=args.method)
            d.meta.update(num_layers=num_layers, contrast="prefill_vs_own")
            d.save(folder / "attack_search.safetensors")
            cosines["attack_search_vs_harmfulness"] = cosine_per_layer(d, main)
    (folder / "cosines.json").write_text(json.dumps(cosines, indent=1))
    _print(f"directions written to {folder}")
    return 0


def _direction_position(direction: Any, name: str) -> str:
    return (direction.meta.get("pos") or {}).get("position") or ("last_prompt" if name == "refusal" else "search")


def _val_sets(folder: Path, position: str):
    from search_gym.directions.activations import ActivationSet

    paths = [_acts_path(folder, side, "val", position) for side in VAL_SIDES]
    if not all(p.exists() for p in paths):
        return None
    return tuple(ActivationSet.load(p) for p in paths)


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
    from search_gym.directions.validation import val_pair_scores

    folder = Path(args.dir)
    name = args.direction
    path = folder / f"{name}.safetensors"
    direction = Direction.load(path)
    position = _direction_position(direction, name)
    scores = {}
    val = _val_sets(folder, position)
    if val is not None:
        # the discipline: choose on the validation split's matched pairs; held-out rows are for reporting only
        harmful, benign = val
        try:
            scores["val pairs"] = val_pair_scores(direction, harmful, benign)
        except ValueError as exc:  # a small --n-val draw can leave (almost) no pair whole
            _print(f"warning: {exc}; choosing on all val rows of the matched contrast instead")
        scores["val matched"] = layer_scores(direction, harmful, benign)
        reference = "val pairs" if "val pairs" in scores else "val matched"
        basis = scores[reference]
    else:
        # a run folder from before the matched contrast: its held-out activations, as it was chosen then
        harmful_path = _acts_path(folder, "harmful", "heldout", position)
        if not harmful_path.exists():
            raise SystemExit(f"no validation activations in {folder / 'acts'}: run extract first")
        harmful = ActivationSet.load(harmful_path)
        for kind in ("qa", "benign"):
            held = _acts_path(folder, kind, "heldout", position)
            if held.exists():
                scores[f"vs {kind}"] = layer_scores(direction, harmful, ActivationSet.load(held))
        if not scores:
            raise SystemExit(f"no held-out harmless activations in {folder / 'acts'}: run extract first")
        trained_on = [k for k in str(direction.meta.get("harmless", "")).split("+") if f"vs {k}" in scores]
        if len(trained_on) > 1:
            reference = "mean of " + ", ".join(f"vs {k}" for k in trained_on)
            basis = mean_scores([scores[f"vs {k}"] for k in trained_on])
        else:
            reference = f"vs {trained_on[0]}" if trained_on else next(iter(scores))
            basis = scores[reference]
        _print(f"warning: {folder} has no matched val activations; choosing on held-out rows ({reference}) as "
               "before. Re-run extract to choose on validation pairs.")
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
          title=f"{name} direction ({direction.meta.get('model', '')}): separation on {reference.split(' ')[0]}")
    _print(table)
    _print(f"chosen layer {chosen} ({reference}), saved in {path}")
    return 0


def _guard_for(direction: Any, folder: Path, layer: int):
    """The latent guard of a direction: threshold on the matched contrast's val split when the folder has it,
    else (an older run folder) on the direction's own train contrast."""
    from search_gym.directions.activations import ActivationSet
    from search_gym.directions.guard import LatentGuard

    val = _val_sets(folder, "search")
    if val is not None:
        return LatentGuard.calibrate(direction, *val, layer=layer)
    harmful = direction.meta.get("harmful_kind", "harmful")
    harmless = direction.meta.get("harmless_kind", direction.meta.get("harmless", "qa"))
    return LatentGuard.calibrate(direction, ActivationSet.load(_acts_path(folder, harmful, "train", "search")),
                                 ActivationSet.load(_acts_path(folder, harmless, "train", "search")), layer=layer)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import ActivationSet, collect_activations
    from search_gym.directions.directions import Direction
    from search_gym.directions.selection import plot_layer_scores
    from search_gym.directions.validation import (
        calibrate_guard,
        chosen_layer_intervals,
        guard_scores,
        heldout_rows,
        layer_table_markdown,
        slice_layer_scores,
        summary_markdown,
        summary_row,
        val_pair_scores,
    )
    from search_gym.judges.evaluation import evaluate_judges, report_markdown, score_judge, write_report

    folder = Path(args.dir)
    names = ([n.strip() for n in args.directions.split(",") if n.strip()] if args.directions else
             sorted(p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors")
                    if p.name.startswith(("harmfulness", "attack_search"))))
    if not names:
        raise SystemExit(f"no directions in {folder}: run extract and select first")
    directions = {n: Direction.load(folder / f"{n}.safetensors") for n in names}
    main_kind = directions.get("harmfulness") and directions["harmfulness"].meta.get("harmless")
    if not args.directions and main_kind and f"harmfulness_{main_kind}" in directions:
        del directions["harmfulness"]  # the same direction as harmfulness_<its contrast>, scored once
    val = _val_sets(folder, "search")
    if val is None:
        raise SystemExit(f"no matched val activations in {folder / 'acts'}: run extract (this version) first")
    model = args.model or next(iter(directions.values())).meta.get("model")
    parts = _load_model(model, args.device, args.dtype)
    rows = heldout_rows(args.n_rows, seed=args.seed)
    # The held-out rows are read exactly as the validation rows were (template, few-shot context, layers), i.e.
    # as the guard reads an attacked episode; a direction fitted in another context (the prefill-vs-own-search
    # one uses a few-shot context) is still judged in this one.
    context = val[0].meta
    _print(f"{len(rows)} held-out rows of the judges' split, read at the <search> prefill")
    acts = collect_activations(parts, [(r["id"], r["text"]) for r in rows], position="search", prefill="<search>",
                               template=context.get("template") or "search_r1",
                               few_shot=context.get("few_shot") or 0,
                               layers=list(val[0].layers), batch_size=args.batch_size, label="judges/heldout",
                               out=folder / "acts" / f"judges_heldout{'' if not args.n_rows else args.n_rows}"
                                                     f"_search.safetensors", progress=args.progress)
    per_direction, scored, summary = {}, [], []
    for name, direction in directions.items():
        if _direction_position(direction, name) != "search":
            continue
        if direction.chosen_layer is None:
            _print(f"skipping {name}: no chosen layer (run `search-gym directions select --direction {name}`)")
            continue
        table = slice_layer_scores(direction, acts, rows)
        try:
            selection = {"val pairs (selection)": val_pair_scores(direction, *val)}
        except ValueError:
            selection = {}
        per_direction[name] = {"chosen_layer": direction.chosen_layer, "contrast": direction.meta.get("contrast"),
                               "selection": direction.meta.get("selection"),
                               "scores": {k: [s.to_dict() for s in v] for k, v in (selection | table).items()}}
        row = summary_row(name, selection | table, direction.chosen_layer)
        for slice_name, interval in chosen_layer_intervals(direction, acts, rows, direction.chosen_layer).items():
            row[f"{slice_name} 95% CI"] = list(interval)
        summary.append(row)
        guard = calibrate_guard(direction, *val, name=f"latent_guard[{name}@{direction.chosen_layer}]")
        cal = guard.calibration
        scored.append(guard_scores(guard, acts, rows, note=(
            f"direction {name} ({direction.meta.get('contrast')}) at layer {direction.chosen_layer}, Youden "
            f"threshold on the matched val split (TPR {cal.tpr:.3f}, FPR {cal.fpr:.3f} there)")))
        if direction.meta.get("contrast") in ("qa", "benign"):
            # its first recipe: threshold from its own train contrast (what the guard of the first default did)
            harm, harmless = direction.meta.get("harmful_kind", "harmful"), direction.meta.get("harmless_kind")
            train = [_acts_path(folder, harm, "train", "search"), _acts_path(folder, harmless, "train", "search")]
            if harmless and all(p.exists() for p in train):
                old = calibrate_guard(direction, *(ActivationSet.load(p) for p in train),
                                      name=f"latent_guard[{name}@{direction.chosen_layer}, train threshold]")
                scored.append(guard_scores(old, acts, rows, note=(
                    f"direction {name} at layer {direction.chosen_layer}, Youden threshold on its own train "
                    f"contrast ({harm} vs {harmless}), the first recipe")))
        (folder / f"evaluate_{name}.md").write_text(
            f"# {name}: AUROC per layer on the judges' held-out split ({len(rows)} rows)\n\n"
            + layer_table_markdown(table, chosen=direction.chosen_layer, extra=selection) + "\n")
        _plot(plot_layer_scores, {k: v for k, v in (selection | table).items()
                                  if k in ("val pairs (selection)", "overall", "pairs: requests", "pairs: queries",
                                           "harmful prompts vs QA")},
              folder / f"evaluate_{name}.png", chosen=direction.chosen_layer,
              title=f"{name} ({direction.meta.get('model', '')}): per-layer separation")
    if args.classifier:
        from search_gym.safety.instrument import make_judge

        scored.append(score_judge(make_judge(args.classifier), rows, name=args.classifier))
    report = evaluate_judges(scored, rows)
    report["directions"] = per_direction
    report["summary"] = summary
    report["rows"] = len(rows)
    write_report(report, folder / "evaluate.json")
    text = report_markdown(report, title=f"Latent guards and the query classifier on the judges' held-out split "
                                          f"({len(rows)} rows)")
    text = f"## Summary ({len(rows)} held-out rows)\n\n{summary_markdown(report)}\n\n{text}"
    (folder / "evaluate.md").write_text(text + "\n")
    for name, entry in per_direction.items():
        _print((folder / f"evaluate_{name}.md").read_text())
    _print(text)
    return 0


def _import_judge(spec: str):
    """``module:attr``: a Judge instance, or a callable returning one."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit("--judge takes 'latent' or 'package.module:factory'")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if callable(obj) and not hasattr(obj, "judge") else obj


def _cmd_steer(args: argparse.Namespace) -> int:
    from search_gym.directions.activations import load_prompts
    from search_gym.directions.directions import Direction
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
        judge = _guard_for(direction, folder, layer)
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
    """Add ``directions`` with its five subcommands to a ``search-gym`` subparsers object; returns its parser."""
    parser = subparsers.add_parser("directions", help="harmfulness / refusal directions: extract, select, evaluate, "
                                                      "steer, drift",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="directions_command", required=True)

    extract = sub.add_parser("extract", help="collect activations and compute the directions")
    extract.add_argument("--dir", required=True, help="run folder (created)")
    _model_options(extract, "smollm2")
    extract.add_argument("--n-train", type=_count_arg, default=128,
                         help="prompts per class from the train splits, or 'all'")
    extract.add_argument("--n-val", type=_count_arg, default=None,
                         help="validation prompts per side of the matched contrast (default: all, so every "
                              "matched pair is complete); layers and guard thresholds are chosen on them")
    extract.add_argument("--n-heldout", type=_count_arg, default=64,
                         help="prompts per class from the bundled held-out splits, for the qa / benign kinds only "
                              "(the first recipe's figures); the judges' held-out split is read by `evaluate`")
    extract.add_argument("--harmless", default="matched",
                         help="contrasts, comma separated: matched (benign requests in the harmful ones' forms, "
                              "the default), qa (Wikipedia questions: the first default), benign (edgy but fine); "
                              "the first one defines the main direction")
    extract.add_argument("--template", default="search_r1", help="prompt template of the user turn")
    extract.add_argument("--few-shot", type=int, default=0, help="worked examples before the prompt")
    extract.add_argument("--layers", default="all", type=_layers_arg, help="'all' or comma-separated layers")
    extract.add_argument("--method", default="diff_of_means", choices=["diff_of_means", "pca"], help="estimator")
    extract.add_argument("--natural", type=int, default=0,
                         help="also compute RL-search-safety's contrast on N harmful train prompts: the prefilled "
                              "<search> minus the model's own first <search> (generates until it writes one)")
    extract.add_argument("--natural-few-shot", type=int, default=2,
                         help="few-shot examples for the own-search generation (small models need them; "
                              "RL-search-safety's models used 0)")
    extract.add_argument("--natural-max-new-tokens", type=int, default=64,
                         help="tokens the model may write before its first <search>")
    extract.add_argument("--no-refusal", dest="refusal", action="store_false",
                         help="skip the refusal direction (its last-prompt activations double the work)")
    extract.add_argument("--progress", action="store_true", help="print progress per shard")
    extract.set_defaults(func=_cmd_extract)

    select = sub.add_parser("select", help="AUROC / Cohen's d per layer on the val matched pairs, choose, plot")
    select.add_argument("--dir", required=True, help="run folder written by extract")
    select.add_argument("--direction", default="harmfulness",
                        help="harmfulness, refusal, harmfulness_<kind> or harmfulness_all")
    select.add_argument("--max-depth", type=float, default=0.8, help="only layers up to this fraction of depth")
    select.add_argument("--min-layer", type=int, default=0, help="only layers from this one")
    select.add_argument("--plot", default=None, help="PNG path (default: <dir>/layer_scores.png)")
    select.set_defaults(func=_cmd_select)

    evaluate = sub.add_parser("evaluate", help="directions and latent guards on the judges' held-out split, "
                                               "per layer, matched pairs apart, beside the query classifier")
    evaluate.add_argument("--dir", required=True, help="run folder written by extract and select")
    _model_options(evaluate, None)
    evaluate.add_argument("--directions", default=None,
                          help="comma-separated direction stems (default: every harmfulness* and attack_search)")
    evaluate.add_argument("--n-rows", type=int, default=None,
                          help="at most this many held-out rows: every matched-pair row plus a stratified sample "
                               "of the others (default: all)")
    evaluate.add_argument("--classifier", default="query_classifier",
                          help="text judge scored on the same rows for comparison ('' for none)")
    evaluate.add_argument("--progress", action="store_true", help="print progress per shard")
    evaluate.set_defaults(func=_cmd_evaluate)

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


def extract(dir: str | Path, **options: Any) -> int:
    """``search-gym directions extract`` as a function: one keyword per flag (``model``, ``seed``, ``device``,
    ``n_train`` (None: all), ``refusal``, ...: the flag's name with underscores), the command's defaults for the
    others. The study calls it; :func:`flag_options` turns extra flags given as text into keywords."""
    return _cmd_extract(_arguments("extract", dir=dir, **options))


def select(dir: str | Path, **options: Any) -> int:
    """``search-gym directions select`` as a function (keywords as :func:`extract`: ``direction``, ``max_depth``...)."""
    return _cmd_select(_arguments("select", dir=dir, **options))


def flag_options(command: str, flags: list[str]) -> dict[str, Any]:
    """The keywords that command-line ``flags`` of ``command`` set: ``["--n-train", "all", "--no-refusal"]`` ->
    ``{"n_train": None, "refusal": False}`` (flags left at their default are left out)."""
    defaults = vars(_parse([command, "--dir", "-"]))
    return {k: v for k, v in vars(_parse([command, "--dir", "-", *flags])).items() if v != defaults.get(k)}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search-gym")
    add_directions_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["directions", *argv])


def _arguments(command: str, *, dir: str | Path, **options: Any) -> argparse.Namespace:
    """The namespace the command line would give ``command`` with ``--dir dir``, updated with ``options``."""
    args = _parse([command, "--dir", str(dir)])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"directions {command}: unknown options {unknown}")
    vars(args).update(options)
    return args


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m search_gym.experiments.direction_pipeline extract ...``."""
    args = _parse(list(argv if argv is not None else sys.argv[1:]))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
