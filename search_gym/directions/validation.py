"""Directions and latent guards measured like the query-harm judges: on the judges' held-out split, pairs apart.

The query-harm classifier is reported on the judges' held-out split (:func:`search_gym.corpora.judge_data.eval_rows`:
the project's judge data, the bundled held-out harmful / benign-but-edgy prompts, QA test questions, six benign
texts a first classifier flagged). This module scores a model's directions on the *same rows*, so the two kinds of judge can be compared
slice by slice:

- :func:`slice_layer_scores`: for every layer, AUROC / Cohen's d of the projections of the held-out rows on that
  layer's direction, per slice (``overall``, its ``requests`` and ``queries``, the matched ``pairs`` with their
  pair accuracy, and ``harmful prompts vs QA``, the contrast the first default was fitted on, for comparison);
- :func:`calibrate_guard`: a :class:`~search_gym.directions.guard.LatentGuard` at the direction's chosen layer
  whose threshold is set on the *validation* split of the matched contrast (harmful requests vs benign requests in
  the same forms), never on held-out rows;
- :func:`guard_scores`: the guard's scores of the held-out rows as :class:`~search_gym.safety.base.JudgeScores`,
  so :func:`~search_gym.judges.evaluation.evaluate_judges` reports it with exactly the metrics (AUROC, TPR, FPR,
  pair accuracy, Brier / ECE) and slices of the judges' validity table, next to the classifier.

Each held-out text is given to the model as the user's request in the Search-R1 template and read at the
prefilled ``<search>`` (what the guard sees under the search attack); a query row is read the same way, as if
the query were the request. ``search-gym directions evaluate`` runs all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search_gym.directions.activations import ActivationSet
from search_gym.directions.directions import Direction
from search_gym.directions.guard import LatentGuard
from search_gym.directions.selection import LayerScore, projection_scores
from search_gym.stats import auroc_interval

__all__ = [
    "LAYER_SLICES",
    "best_layer",
    "auroc_interval",
    "calibrate_guard",
    "chosen_layer_intervals",
    "guard_scores",
    "heldout_rows",
    "layer_table_markdown",
    "slice_layer_scores",
    "summary_markdown",
    "summary_row",
    "val_pair_scores",
]

# Slices of the per-layer tables: the judges' main slices, plus the first default's own contrast.
LAYER_SLICES = ("overall", "overall: requests", "overall: queries", "pairs: requests", "pairs: queries",
                "harmful prompts vs QA")


def heldout_rows(n: int | None = None, seed: int = 0) -> list[dict]:
    """The judges' held-out rows (:func:`~search_gym.corpora.judge_data.eval_rows`). ``n`` (for CPU-sized runs):
    every matched-pair row, plus a stratified sample of the other rows
    (:func:`~search_gym.corpora.judge_data.stratified_sample`) up to ``n`` rows in all, in the split's order."""
    from search_gym.corpora.judge_data import eval_rows, stratified_sample

    rows = eval_rows("heldout")
    if not n or n >= len(rows):
        return rows
    twins = [r for r in rows if r["set"] == "pairs"]
    rest = [r for r in rows if r["set"] != "pairs"]
    keep = {r["id"] for r in twins} | {r["id"] for r in stratified_sample(rest, max(0, n - len(twins)), seed)}
    return [r for r in rows if r["id"] in keep]


def _slices(rows: Sequence[dict]) -> dict[str, list[dict]]:
    from search_gym.corpora.judge_data import slice_rows

    slices = slice_rows(rows)
    slices["harmful prompts vs QA"] = [r for r in rows if r["set"] in ("harmful_prompts", "qa")]
    return slices


def _twins(members: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Aligned (harmful, benign) twins of the complete pairs among ``members`` (pair and kind must match)."""
    sides: dict[str, dict[int, dict]] = {}
    for r in members:
        if r.get("pair"):
            sides.setdefault(f"{r['pair']}/{r['kind']}", {})[int(r["label"])] = r
    keys = sorted(k for k, v in sides.items() if 0 in v and 1 in v)
    return [sides[k][1] for k in keys], [sides[k][0] for k in keys]


def _slice_projections(direction: Direction, acts: ActivationSet, rows: Sequence[dict],
                       slices: Sequence[str]) -> dict[str, tuple[Any, Any, bool]]:
    """Per slice: (harmful projections ``[N, L]``, benign projections ``[M, L]``, paired)."""
    index = {pid: k for k, pid in enumerate(acts.ids)}
    missing = [r["id"] for r in rows if r["id"] not in index]
    if missing:
        raise KeyError(f"{len(missing)} rows have no activations (first: {missing[:3]})")
    projections = direction.project(acts)  # [N, L] over the direction's layers
    by_slice = _slices(rows)
    out = {}
    for name in slices:
        members = by_slice.get(name, [])
        if name.startswith("pairs"):
            pos, neg = _twins(members)
            paired = True
        else:
            pos = [r for r in members if r["label"] == 1]
            neg = [r for r in members if r["label"] == 0]
            paired = False
        if len(pos) < 2 or len(neg) < 2:
            continue
        out[name] = (projections[[index[r["id"]] for r in pos]], projections[[index[r["id"]] for r in neg]], paired)
    return out


def chosen_layer_intervals(direction: Direction, acts: ActivationSet, rows: Sequence[dict], layer: int, *,
                           slices: Sequence[str] = LAYER_SLICES, n_boot: int = 1000,
                           seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap interval of each slice's AUROC at ``layer`` (the chosen one)."""
    j = direction.index(layer)
    return {name: auroc_interval(p[:, j], n[:, j], paired=paired, n_boot=n_boot, seed=seed)
            for name, (p, n, paired) in _slice_projections(direction, acts, rows, slices).items()}


def slice_layer_scores(direction: Direction, acts: ActivationSet, rows: Sequence[dict],
                       slices: Sequence[str] = LAYER_SLICES) -> dict[str, list[LayerScore]]:
    """Per slice, a :class:`LayerScore` per layer of ``direction`` on ``rows`` (their ids index ``acts``).

    Slices whose name starts with ``pairs`` are scored on their complete matched pairs, aligned, so their
    :attr:`LayerScore.pair_accuracy` is filled in; the others on all their harmful vs all their benign rows."""
    return {name: projection_scores(direction.layers, p, n, paired=paired)
            for name, (p, n, paired) in _slice_projections(direction, acts, rows, slices).items()}


def val_pair_scores(direction: Direction, harmful: ActivationSet, benign: ActivationSet) -> list[LayerScore]:
    """Per-layer scores on the matched pairs between two activation sets (e.g. the validation split's two sides of
    the matched contrast), twins aligned by :func:`~search_gym.directions.contrasts.twin_indices`."""
    from search_gym.directions.contrasts import twin_indices
    from search_gym.directions.selection import layer_scores

    i, j = twin_indices(harmful.ids, benign.ids)
    if len(i) < 2:
        raise ValueError(f"only {len(i)} matched pairs between {harmful.meta.get('label')!r} and "
                         f"{benign.meta.get('label')!r}: collect the matched contrast's val split")
    return layer_scores(direction, harmful.subset(i), benign.subset(j), paired=True)


def calibrate_guard(direction: Direction, harmful: ActivationSet, benign: ActivationSet, *, layer: int | None = None,
                    method: str = "youden", target_fpr: float = 0.05, name: str | None = None) -> LatentGuard:
    """A latent guard at ``layer`` (default: the direction's chosen one) with its threshold from ``harmful`` vs
    ``benign`` activations, which should be the validation split of the matched contrast."""
    guard = LatentGuard.calibrate(direction, harmful, benign, layer=layer, method=method, target_fpr=target_fpr,
                                  name=name or f"latent_guard[{direction.name}]")
    return guard


def guard_scores(guard: LatentGuard, acts: ActivationSet, rows: Sequence[dict], *, name: str | None = None,
                 note: str = "") -> Any:
    """The guard's :class:`~search_gym.safety.base.JudgeScores` on ``rows`` from activations collected at
    the guard's position (their ids index ``acts``), through ``guard.judge`` itself."""
    from search_gym.safety.base import JudgeInput, score_judge

    index = {pid: k for k, pid in enumerate(acts.ids)}
    at = acts.at(guard.layer)

    def make(row: dict) -> JudgeInput:
        return JudgeInput(text=row["text"], hidden={guard.layer: {guard.position: at[index[row["id"]]]}})

    scores = score_judge(guard, rows, name=name or guard.name, inputs=make)
    scores.note = note
    return scores


def layer_table_markdown(scores: dict[str, list[LayerScore]], *, chosen: int | None = None,
                         extra: dict[str, list[LayerScore]] | None = None) -> str:
    """One row per layer: AUROC per slice (and pair accuracy for paired slices); ``extra`` columns first (e.g.
    the validation pairs the layer was chosen on). The chosen layer is bold."""
    columns = dict(extra or {}) | dict(scores)
    header, by = ["layer"], {}
    for name, rows in columns.items():
        by[name] = {s.layer: s for s in rows}
        header.append(f"AUROC {name}")
        if rows and rows[0].pair_accuracy is not None:
            header.append(f"pair acc {name}")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    layers = sorted({s.layer for rows in columns.values() for s in rows})
    for layer in layers:
        cells = [f"**{layer}**" if layer == chosen else str(layer)]
        for name, rows in columns.items():
            s = by[name].get(layer)
            cells.append(f"{s.auroc:.3f}" if s else "")
            if rows and rows[0].pair_accuracy is not None:
                cells.append(f"{s.pair_accuracy:.3f}" if s else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_layer(scores: Sequence[LayerScore]) -> LayerScore:
    """The layer with the highest AUROC (for *reporting* how far the chosen layer is from the best one)."""
    return max(scores, key=lambda s: (s.auroc, -s.layer))


def summary_row(name: str, scores: dict[str, list[LayerScore]], chosen: int | None) -> dict[str, Any]:
    """AUROC at the chosen layer and the best AUROC over layers, per slice, for one direction."""
    out: dict[str, Any] = {"direction": name, "chosen_layer": chosen}
    for slice_name, rows in scores.items():
        at = {s.layer: s for s in rows}
        if chosen is not None and chosen in at:
            out[f"{slice_name} @chosen"] = at[chosen].auroc
            if at[chosen].pair_accuracy is not None:
                out[f"{slice_name} pair acc @chosen"] = at[chosen].pair_accuracy
        best = best_layer(rows)
        out[f"{slice_name} best"] = best.auroc
        out[f"{slice_name} best layer"] = best.layer
    return out


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _ci(row: dict, slice_name: str) -> str:
    value, interval = row.get(f"{slice_name} @chosen"), row.get(f"{slice_name} 95% CI")
    return _f(value) + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def summary_markdown(report: dict[str, Any]) -> str:
    """Two compact tables of an ``evaluate`` report: each direction's AUROC at its chosen layer (and the best
    held-out layer, for reporting only), then every judge's threshold metrics on the main slices."""
    lines = ["| direction (contrast) | chosen layer | val pairs AUROC | overall | requests | queries | "
             "pairs: requests (pair acc) | pairs: queries (pair acc) | harmful vs QA | best pairs: requests "
             "(layer) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report.get("summary", []):
        name = row["direction"]
        contrast = (report.get("directions", {}).get(name) or {}).get("contrast") or ""
        lines.append(
            f"| {name} ({contrast}) | {row['chosen_layer']} | {_f(row.get('val pairs (selection) @chosen'))} | "
            f"{_ci(row, 'overall')} | {_ci(row, 'overall: requests')} | "
            f"{_ci(row, 'overall: queries')} | {_ci(row, 'pairs: requests')} "
            f"({_f(row.get('pairs: requests pair acc @chosen'))}) | {_ci(row, 'pairs: queries')} "
            f"({_f(row.get('pairs: queries pair acc @chosen'))}) | {_ci(row, 'harmful prompts vs QA')} | "
            f"{_f(row.get('pairs: requests best'))} ({row.get('pairs: requests best layer', '-')}) |")
    lines += ["", "| judge | AUROC overall | TPR overall | FPR overall | AUROC pairs (requests / queries) | "
              "pair acc | TPR / FPR pairs | FPR benign styled | FPR QA | issue's texts flagged |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in report.get("judges", {}).items():
        sl = entry["slices"]

        def m(slice_name: str, key: str) -> Any:
            return (sl.get(slice_name) or {}).get(key)

        issue = sl.get("set: issue_texts") or {}
        flagged = (f"{round(issue['flag_rate'] * issue['n'])} / {issue['n']}"
                   if issue.get("flag_rate") is not None else "-")
        lines.append(
            f"| {name} | {_f(m('overall', 'auroc'))} | {_f(m('overall', 'tpr'))} | {_f(m('overall', 'fpr'))} | "
            f"{_f(m('pairs', 'auroc'))} ({_f(m('pairs: requests', 'auroc'))} / {_f(m('pairs: queries', 'auroc'))}) | "
            f"{_f(m('pairs', 'pair_accuracy'))} | {_f(m('pairs', 'tpr'))} / {_f(m('pairs', 'fpr'))} | "
            f"{_f(m('benign styled', 'fpr'))} | {_f(m('set: qa', 'fpr'))} | {flagged} |")
    return "\n".join(lines)
