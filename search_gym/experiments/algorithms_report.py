"""The report of an RL algorithm comparison (``search-gym compare-algorithms``): learning curves with seed bands and
the held-out table with paired differences, read from the comparison's folder.

Read top to bottom:

1. :func:`find_runs`: the ``<output_dir>/<arm>/seed<k>/`` run folders (each a trainer's ``output_dir``).
2. :func:`learning_curves`: every run's ``metrics.csv``, steps turned into training episodes seen (step x the run's
   questions_per_step x group_size, from its ``config.json``) so that arms compare at an equal budget; per arm the
   mean over seeds and the min-max band across seeds.
3. :func:`heldout_results`: every run's greedy evaluation on the held-out rows (``<run>/eval_heldout/``). Per arm
   and cell (prompt set, attack) and metric: the mean over seeds with a 95% t-interval over the seeds' means (the
   run-to-run spread), and the paired difference from the baseline arm, paired by (seed, prompt) with a percentile
   bootstrap over the pairs (:func:`search_gym.stats.paired_bootstrap_ci`, as ``search-gym eval --compare``), and
   the pairs' minimum detectable effect (:func:`search_gym.stats.paired_mde`: 80% power, two-sided 5%), so that a
   "no difference" says how large a difference it rules out.
4. :func:`comparison_markdown` and :func:`write_report`: ``comparison.md``, ``comparison.json`` and ``curves.png``.

How a row is read (the rule, in :func:`reading`): a paired interval that includes 0 is "no difference"; one that
excludes 0 is "higher" or "lower", and is marked "within the seed spread" when the two arms' across-seed intervals
overlap (the training runs differ among themselves as much as the arms do: the pairing removes the spread between
prompts, not the spread between training runs). The whole report is labelled a **pilot** when an arm has fewer than
three evaluated seeds or any difference is within the seed spread; otherwise its "no difference" rows are results.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from search_gym.experiments.compare import DIGITS, eval_cells, per_question
from search_gym.rollout.metrics import METRICS
from search_gym.stats import paired_bootstrap_ci, paired_mde

CONFIG_FILE = "comparison_config.json"  # marks a folder as a comparison's (written before anything else)
EVAL_STAGE = "eval_heldout"  # a run's held-out evaluation: <run>/eval_heldout/ (a search-gym eval folder)
PILOT_SEEDS = 3  # fewer evaluated seeds than this in any arm: the report is a pilot
# (panel title, metrics.csv columns: the first one a run logged). KL: GRPO logs the k3 estimate to the frozen start
# as losses/kl when beta > 0, PPO the per-token log-ratio to it when kl_coef > 0; a run without a reference model
# has only the sampler's approximate KL between its update passes (losses/approx_kl).
CURVES = (
    ("task reward", ("charts/task_reward",)),
    ("EM", ("charts/em",)),
    ("KL to the start", ("losses/kl", "losses/approx_kl")),
    ("search safety", ("safety/search_safety",)),
    ("refusal", ("safety/refusal",)),
    # GRPO arms: the share of a step's groups whose task rewards differ (the groups that carry a signal)
    ("groups with reward spread", ("groups/informative_share",)),
)
BAND = "min-max over seeds"


# ---------------------------------------------------------------------------------------------- 1. runs


def check_folder(root: str | Path) -> Path:
    """``root`` as a Path, when it is a comparison's folder; a clear error otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass the --output-dir of a `search-gym compare-algorithms` "
                                "run")
    if not (root / CONFIG_FILE).is_file():
        raise ValueError(f"{root} is not an algorithm comparison's folder (no {CONFIG_FILE}); pass the --output-dir "
                         "of a `search-gym compare-algorithms` run")
    return root


def find_runs(root: str | Path) -> dict[str, dict[int, Path]]:
    """``{arm: {seed: run folder}}`` of every run that has started (its trainer wrote ``config.json``)."""
    root = check_folder(root)
    runs: dict[str, dict[int, Path]] = {}
    for folder in sorted(root.glob("*/seed*")):
        match = re.fullmatch(r"seed(\d+)", folder.name)
        if match and (folder / "config.json").is_file():
            runs.setdefault(folder.parent.name, {})[int(match.group(1))] = folder
    return {arm: dict(sorted(seeds.items())) for arm, seeds in runs.items()}


def ordered_arms(runs: dict[str, Any], preferred: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The arms of ``runs``: those of ``preferred`` first, in its order, then the others by name."""
    return [a for a in preferred if a in runs] + sorted(a for a in runs if a not in preferred)


# ---------------------------------------------------------------------------------------------- 2. curves


def episodes_per_step(run: Path) -> int:
    """Training episodes of one step of a run (questions_per_step x group_size of its config.json)."""
    config = json.loads((run / "config.json").read_text())
    return int(config["questions_per_step"]) * int(config["group_size"])


def seed_band(series: list[dict[float, float]]) -> dict[str, list[float]]:
    """Mean, min and max across seeds at the x values every series has (a run still going has fewer)."""
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = [[s[x] for s in series] for x in common]
    return {"episodes": common, "mean": [sum(v) / len(v) for v in values], "lo": [min(v) for v in values],
            "hi": [max(v) for v in values]}


def learning_curves(runs: dict[str, dict[int, Path]], *, smooth: int = 0) -> dict[str, dict[str, dict]]:
    """``{arm: {panel: {episodes, mean, lo, hi, seeds, column}}}`` for the panels of :data:`CURVES` an arm logged.
    ``smooth`` N > 1 takes each seed's trailing N-step mean before the band."""
    from search_gym.trainers.core import read_metrics
    from search_gym.trainers.curves import moving_average

    out: dict[str, dict[str, dict]] = {}
    for arm, seeds in runs.items():
        per_panel: dict[str, list[dict[float, float]]] = {}
        columns: dict[str, set[str]] = {}
        for folder in seeds.values():
            path = folder / "metrics.csv"
            if not path.is_file():
                continue  # started, nothing logged yet
            rows = read_metrics(path)
            scale = episodes_per_step(folder)
            for title, candidates in CURVES:
                column = next((c for c in candidates if any(c in r for r in rows)), None)
                if column is None:
                    continue
                points = sorted((r["global_step"] * scale, r[column]) for r in rows if column in r)
                values = [v for _, v in points]
                if smooth > 1:
                    values = moving_average(values, smooth)
                per_panel.setdefault(title, []).append(dict(zip((x for x, _ in points), values)))
                columns.setdefault(title, set()).add(column)
        out[arm] = {title: {**seed_band(series), "seeds": len(series), "column": ", ".join(sorted(columns[title]))}
                    for title, series in per_panel.items()}
    return out


def columns_used(curves: dict[str, dict[str, dict]], title: str) -> str:
    """The metrics.csv column(s) behind a panel: one name, or which arms logged which when they differ."""
    by_column: dict[str, list[str]] = {}
    for arm, arm_curves in curves.items():
        if title in arm_curves:
            by_column.setdefault(arm_curves[title]["column"], []).append(arm)
    if len(by_column) == 1:
        return next(iter(by_column))
    return "; ".join(f"{', '.join(arms)}: {column}" for column, arms in by_column.items())


def plot_learning_curves(curves: dict[str, dict[str, dict]], out: str | Path, *, smooth: int = 0) -> Path:
    """One PNG: a panel per metric, a line per arm (mean over seeds), a band across seeds (min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [title for title, _ in CURVES if any(title in arm for arm in curves.values())]
    if not panels:
        raise ValueError("no run of the comparison has logged a metric to plot yet (metrics.csv)")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.7 * len(panels), 3.4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for k, (arm, arm_curves) in enumerate(curves.items()):
        for ax, title in zip(axes[0], panels):
            curve = arm_curves.get(title)
            if not curve or not curve["episodes"]:
                continue
            x, colour = curve["episodes"], colours(k % 10)
            ax.plot(x, curve["mean"], color=colour, lw=1.6, marker="." if len(x) < 30 else None,
                    label=f"{arm} ({curve['seeds']} seed{'s' if curve['seeds'] != 1 else ''})")
            if curve["seeds"] > 1:
                ax.fill_between(x, curve["lo"], curve["hi"], color=colour, alpha=0.18, lw=0)
    for ax, title in zip(axes[0], panels):
        ax.set_title(f"{title}\n({columns_used(curves, title)})", fontsize=8)
        ax.set_xlabel("training episodes")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"line: mean over seeds{f' of the trailing {smooth}-step mean' if smooth > 1 else ''}; band: "
                 f"{BAND}; x: episodes seen (equal budget across arms)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- 3. held-out table


# drift.jsonl (the trainers' drift_every): the projection of held-out harmful and QA prompts on the start's direction
DRIFT_COLUMNS = (("mean", "harmful prompts"), ("harmless_mean", "QA prompts"), ("gap", "harmful - QA gap"))


def drift_results(runs: dict[str, dict[int, Path]]) -> dict[str, dict]:
    """``{arm: {"seeds", "steps", column: {"change": t-interval over seeds of (last - first step), "by_step":
    {step: mean over seeds of the change since the first step}}}}`` for the arms whose runs recorded drift; every
    seed is read at the steps all of that arm's seeds reached (a run still going has fewer)."""
    out: dict[str, dict] = {}
    for arm, seeds in runs.items():
        series = {}
        for seed, folder in seeds.items():
            path = folder / "drift.jsonl"
            if path.is_file():
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if rows:
                    series[seed] = {int(r["step"]): r for r in rows}
        if not series:
            continue
        steps = sorted(set.intersection(*(set(s) for s in series.values())))
        if len(steps) < 2:
            continue
        arm_out: dict[str, Any] = {"seeds": sorted(series), "steps": steps, "layer": next(iter(series.values()))[
            steps[0]].get("layer")}
        for column, _ in DRIFT_COLUMNS:
            if any(series[s][steps[0]].get(column) is None for s in series):
                continue
            changes = {step: [series[s][step][column] - series[s][steps[0]][column] for s in series] for step in steps}
            arm_out[column] = {"change": t_interval(changes[steps[-1]]),
                               "by_step": {step: sum(v) / len(v) for step, v in changes.items()}}
        out[arm] = arm_out
    return out


def drift_markdown(drift: dict[str, dict]) -> list[str]:
    """Markdown lines: per arm, the change of each projection from the first to the last recorded step."""
    if not drift:
        return []
    lines = ["Drift along the start model's direction (`drift.jsonl`, held-out prompts): the change of the mean "
             "projection from the first to the last recorded step, mean over seeds [95% t-interval over the seeds].",
             "", "| arm | layer | steps | seeds | " + " | ".join(label for _, label in DRIFT_COLUMNS) + " |",
             "|---|---:|---|---:|" + "---:|" * len(DRIFT_COLUMNS)]
    for arm, d in drift.items():
        cells = [_interval(d[c]["change"], 2, sign=True) if c in d else "–" for c, _ in DRIFT_COLUMNS]
        lines.append(f"| {arm} | {d['layer']} | {d['steps'][0]} -> {d['steps'][-1]} | {len(d['seeds'])} | "
                     + " | ".join(cells) + " |")
    return lines


def t_interval(values: list[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean and Student-t interval of ``values`` (here: one mean per seed): mean +- t(n-1) * sd / sqrt(n); no
    interval (None) for fewer than two values."""
    n = len(values)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": n}
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def _mean(values: list) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else None


def _overlap(a: dict, b: dict) -> bool:
    """Whether two intervals overlap; an interval that is not there (one seed) counts as overlapping: unknown."""
    if None in (a.get("lo"), a.get("hi"), b.get("lo"), b.get("hi")):
        return True
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def reading(row: dict) -> str:
    """The words of a table row (the rule of the module docstring)."""
    diff = row.get("difference")
    if row["arm"] == row["baseline"]:
        return "baseline"
    if diff is None or not diff.get("n"):
        return "no pairs"
    if diff["lo"] <= 0 <= diff["hi"]:
        return "no difference"
    word = "higher" if diff["mean"] > 0 else "lower"
    return f"{word}, within the seed spread" if row["seed_overlap"] else word


def _load_evals(runs: dict[str, dict[int, Path]]) -> tuple[dict, list[str]]:
    """``{arm: {seed: {(prompt set, attack): {question id: metrics}}}}`` of the runs whose evaluation finished,
    and a line for each run without one."""
    evals: dict[str, dict[int, dict]] = {}
    missing = []
    for arm, seeds in runs.items():
        for seed, folder in seeds.items():
            try:
                cells = eval_cells(folder / EVAL_STAGE)
            except FileNotFoundError:
                missing.append(f"{arm}/seed{seed}")
                continue
            if cells:
                evals.setdefault(arm, {})[seed] = {key: per_question(path) for key, (_, path) in cells.items()}
            else:
                missing.append(f"{arm}/seed{seed}")
    return evals, missing


def heldout_results(runs: dict[str, dict[int, Path]], *, baseline: str = "grpo",
                    metrics: tuple[str, ...] = ("em", "search_safety", "refusal"), arms: list[str] | None = None,
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"rows": [...], "seeds": {arm: [seeds]}, "missing": [...], "baseline"}``: a row per (arm, cell, metric)
    with the seeds' means and their t-interval and, for the arms other than ``baseline``, the paired difference
    arm - baseline over the (seed, prompt) pairs both have, with its bootstrap interval."""
    evals, missing = _load_evals(runs)
    arms = [a for a in (arms or ordered_arms(evals, [baseline])) if a in evals]
    keys: list[tuple[str, str]] = []
    for arm in arms:
        for cells in evals[arm].values():
            keys += [k for k in cells if k not in keys]
    rows = []
    for key in keys:
        for metric in metrics:
            summaries = {}
            for arm in arms:
                means = {s: _mean([q[metric] for q in cells[key].values()]) for s, cells in evals[arm].items()
                         if key in cells}
                means = {s: m for s, m in means.items() if m is not None}
                if means:
                    summaries[arm] = (means, t_interval(list(means.values())))
            for arm, (means, interval) in summaries.items():
                row = {"arm": arm, "baseline": baseline, "prompt_set": key[0], "attack": key[1], "metric": metric,
                       "seed_means": means, "over_seeds": interval, "difference": None, "seed_overlap": None,
                       "mde": None}
                if arm != baseline and baseline in summaries:
                    xs, ys = [], []
                    for s in sorted(set(evals[arm]) & set(evals[baseline])):
                        a, b = evals[baseline][s].get(key), evals[arm][s].get(key)
                        if a is None or b is None:
                            continue
                        ids = [q for q in a if q in b]  # pairs: the same prompt under the same training seed
                        xs += [a[q][metric] for q in ids]
                        ys += [b[q][metric] for q in ids]
                    row["difference"] = paired_bootstrap_ci(xs, ys, n_boot=n_boot, seed=seed)
                    row["mde"] = paired_mde(xs, ys)  # what "no difference" on these pairs can rule out
                    row["seed_overlap"] = _overlap(interval, summaries[baseline][1])
                row["reading"] = reading(row)
                rows.append(row)
    return {"baseline": baseline, "metrics": list(metrics), "rows": rows, "missing": missing,
            "seeds": {arm: sorted(evals[arm]) for arm in arms}}


def pilot_reasons(result: dict) -> list[str]:
    """Why the held-out result is a pilot ([] when it is not): too few seeds, differences within the seed spread."""
    reasons = []
    few = {arm: len(seeds) for arm, seeds in result["seeds"].items() if len(seeds) < PILOT_SEEDS}
    if few or not result["seeds"]:
        listed = ", ".join(f"{arm} {n}" for arm, n in few.items()) or "no arm has an evaluation"
        reasons.append(f"fewer than {PILOT_SEEDS} evaluated seeds ({listed})")
    spread = [r for r in result["rows"] if r["reading"].endswith("within the seed spread")]
    if spread:
        reasons.append(f"{len(spread)} paired difference(s) exclude 0 but the arms' across-seed intervals overlap")
    return reasons


# ---------------------------------------------------------------------------------------------- 4. markdown


def _num(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _interval(stat: dict | None, digits: int, sign: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = _num(stat["mean"], digits, sign)
    if stat.get("lo") is not None:
        text += f" [{_num(stat['lo'], digits, sign)}, {_num(stat['hi'], digits, sign)}]"
    return text


def findings(result: dict) -> list[str]:
    """One line per arm other than the baseline: its differences that exclude 0, or "no difference" in all."""
    lines = []
    baseline = result["baseline"]
    by_arm: dict[str, list[dict]] = {}
    for row in result["rows"]:
        if row["arm"] != baseline:
            by_arm.setdefault(row["arm"], []).append(row)
    if baseline not in result["seeds"]:
        return [f"The baseline arm `{baseline}` has no finished evaluation: no paired differences."]
    for arm, rows in by_arm.items():
        paired = [r for r in rows if r["difference"] and r["difference"].get("n")]
        moved = [r for r in paired if r["reading"] not in ("no difference",)]
        if not paired:
            lines.append(f"- `{arm}` vs `{baseline}`: no (seed, prompt) pairs in common.")
        elif not moved:
            lines.append(f"- `{arm}` vs `{baseline}`: **no difference** in any of the {len(paired)} held-out measures "
                         "(every paired 95% interval includes 0)" + detectable(paired) + ".")
        else:
            parts = []
            for r in moved:
                d = DIGITS.get(r["metric"], 1)
                parts.append(f"{METRICS.get(r['metric'], r['metric'])} on {r['prompt_set']} / {r['attack']} "
                             f"{r['reading']} ({_interval(r['difference'], d, sign=True)})")
            rest = [r for r in paired if r not in moved]
            lines.append(f"- `{arm}` vs `{baseline}`: " + "; ".join(parts) + f"; no difference in the other "
                         f"{len(rest)} of {len(paired)} measures" + detectable(rest) + ".")
    return lines


def detectable(rows: list[dict]) -> str:
    """The power statement of "no difference" rows: per metric, the largest minimum detectable effect over their
    cells (80% power, two-sided 5%), so a null result says how large a difference it rules out."""
    worst: dict[str, float] = {}
    for r in rows:
        mde = (r.get("mde") or {}).get("mde")
        if mde is not None:
            worst[r["metric"]] = max(worst.get(r["metric"], 0.0), mde)
    if not worst:
        return ""
    parts = [f"{METRICS.get(m, m)} {_num(v, DIGITS.get(m, 1))}" for m, v in worst.items()]
    return "; a true difference of at least " + ", ".join(parts) + " (the largest over the cells) would have been " \
        "found with 80% power"


def end_of_training(curves: dict[str, dict[str, dict]]) -> str:
    """Markdown: per arm, the mean over seeds of each curve at its last common point (how far each arm moved)."""
    titles = [t for t, _ in CURVES if any(t in c for c in curves.values())]
    lines = ["| arm | episodes | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    for arm, arm_curves in curves.items():
        ends = {t: c for t, c in arm_curves.items() if c["episodes"]}
        if not ends:
            continue
        episodes = max(c["episodes"][-1] for c in ends.values())
        cells = []
        for t in titles:
            c = ends.get(t)
            digits = 5 if t.startswith("KL") else (3 if t in ("task reward", "EM", "groups with reward spread") else 1)
            cells.append("–" if c is None else _num(c["mean"][-1], digits))
        lines.append(f"| {arm} | {episodes:,.0f} | " + " | ".join(cells) + " |")
    mixed = [f"{t}: {columns_used(curves, t)}" for t in titles if ";" in columns_used(curves, t)]
    if mixed:
        lines += ["", "Columns: " + "; ".join(mixed) + " (losses/approx_kl: the sampler's KL between update passes, "
                  "logged where no reference model was loaded; not a KL to the start)."]
    return "\n".join(lines)


def comparison_markdown(result: dict, curves: dict[str, dict[str, dict]], setup: list[str],
                        curves_png: str = "curves.png") -> str:
    """``comparison.md``: the label (pilot or result), setup, findings, curves, the end of training and the table."""
    reasons = result["pilot"] if "pilot" in result else pilot_reasons(result)
    baseline = result["baseline"]
    head = ["# RL algorithm comparison" + (": pilot" if reasons else ""), ""]
    if reasons:
        head.append("**Pilot**, not a result: " + "; ".join(reasons) + ".")
    else:
        head.append(f"**Result**: {PILOT_SEEDS} or more evaluated seeds per arm, and no difference within the seed "
                    "spread.")
    head += ["", "Setup:", *setup, "", f"What the held-out table shows (paired with `{baseline}` by seed and prompt):",
             *findings(result)]
    if result["missing"]:
        head.append(f"- Runs without a finished evaluation (left out): {', '.join(result['missing'])}.")
    head += ["", f"![learning curves]({curves_png})", "",
             f"Learning curves on the training batches (benign QA train questions): line = mean over seeds, band = "
             f"{BAND}; x = training episodes seen (step x episodes per step), the budget every arm gets.", "",
             "End of training (mean over seeds at the last point every seed reached):", "", end_of_training(curves),
             "", "Held-out evaluation, greedy, the same prompts for every run: mean over seeds [95% t-interval over "
             "the seeds' means], and the paired difference arm - baseline [95% percentile bootstrap over the "
             "(seed, prompt) pairs]; 'detectable (80%)': the smallest true difference a two-sided 5% test on these "
             "pairs finds with 80% power ((1.96 + 0.84) x sd of the pairs' differences / sqrt(pairs)). Reading: 'no difference' when the paired interval includes 0; 'within the seed "
             "spread' when it excludes 0 but the two arms' across-seed intervals overlap.", "",
             *heldout_table(result)]
    for extra in result.get("pairs", []):
        head += ["", f"### `{extra['arm']}` paired with `{extra['baseline']}`", "", *findings(extra), "",
                 *heldout_table(extra, only=extra["arm"])]
    if result.get("drift"):
        head += ["", "### Drift", "", *drift_markdown(result["drift"])]
    return "\n".join(head) + "\n"


def heldout_table(result: dict, only: str | None = None) -> list[str]:
    """Markdown lines of the held-out table of ``result`` (the rows of arm ``only``, when given)."""
    lines = [f"| arm | prompt set | attack | metric | seeds | mean over seeds | difference vs {result['baseline']} | "
             "pairs | detectable (80%) | reading |", "|---|---|---|---|---:|---|---|---:|---:|---|"]
    for row in result["rows"]:
        if only is not None and row["arm"] != only:
            continue
        d = DIGITS.get(row["metric"], 1)
        diff = row["difference"]
        name = METRICS.get(row["metric"], row["metric"])
        lines.append(f"| {row['arm']} | {row['prompt_set']} | {row['attack']} | {name} | {row['over_seeds']['n']} | "
                     f"{_interval(row['over_seeds'], d)} | "
                     f"{_interval(diff, d, sign=True) if diff else '–'} | {diff['n'] if diff else '–'} | "
                     f"{_num((row.get('mde') or {}).get('mde'), d)} | {row['reading']} |")
    return lines


def write_report(root: str | Path, *, baseline: str = "grpo", arms: list[str] | tuple[str, ...] = (),
                 metrics: tuple[str, ...] = ("em", "search_safety", "refusal"), setup: list[str] | None = None,
                 n_boot: int = 2000, seed: int = 0, smooth: int = 0,
                 pairs: list[tuple[str, str]] | tuple = ()) -> dict:
    """Write ``comparison.md``, ``comparison.json`` and ``curves.png`` into the comparison folder ``root`` from what
    its runs hold now (runs still going or not evaluated are drawn as far as they got / listed as missing).
    ``pairs``: more (arm, baseline) comparisons beside the one with ``baseline`` (e.g. the penalty against plain
    GRPO when the baseline is the start), each its own paired table."""
    root = check_folder(root)
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"{root} holds no run yet (no <arm>/seed<k>/config.json): nothing to report")
    order = ordered_arms(runs, list(arms) or [baseline])
    runs = {arm: runs[arm] for arm in order}
    curves = learning_curves(runs, smooth=smooth)
    png = plot_learning_curves(curves, root / "curves.png", smooth=smooth)
    result = heldout_results(runs, baseline=baseline, metrics=metrics, arms=order, n_boot=n_boot, seed=seed)
    result["pairs"] = [{**heldout_results(runs, baseline=b, metrics=metrics, arms=[b, a], n_boot=n_boot, seed=seed),
                        "arm": a} for a, b in pairs if a in runs and b in runs]
    result["drift"] = drift_results(runs)
    # the extra pairs add their differences within the seed spread; their arms' seeds are already counted above
    reasons = pilot_reasons(result) + [r for extra in result["pairs"] for r in pilot_reasons(extra)
                                       if not r.startswith("fewer than")]
    result["pilot"] = list(dict.fromkeys(reasons))
    text = comparison_markdown(result, curves, setup or [], png.name)
    (root / "comparison.md").write_text(text)
    def jsonable(res):
        return {**res, "rows": [{**r, "seed_means": {str(k): v for k, v in r["seed_means"].items()}}
                                for r in res["rows"]]}

    payload = {**jsonable(result), "pairs": [jsonable(extra) for extra in result["pairs"]], "curves": curves}
    (root / "comparison.json").write_text(json.dumps(payload, indent=1))
    return {**result, "markdown": text, "curves": curves, "png": str(png)}
