"""``search-gym view RUN``: one self-contained HTML file to read a run's episodes turn by turn.

The page needs no server and no network: styles, scripts, the plots (PNG files as base64 data URIs) and the
episodes (one JSON blob) are inside the file. It shows

- the summary table (an eval's per-cell metrics with 95% intervals, a demo's summary, a training run's last
  logged values with a sparkline per metric and the whole ``metrics.csv``), and the run's plots;
- every episode, a page at a time (a 10k-episode run stays responsive: the browser parses the blob once and builds
  only the visible page): the user turn, each turn's text with the attack's prefill and any closing tag the
  environment wrote marked as not the model's, each query coloured by its query-harm safety (0 = harmful, red;
  100 = safe, green), refusals, invalid actions, the retrieved passages folded (``<details>``), answer and gold;
- filters by prompt set, attack, agent and outcome (refused / correct / wrong / answered / no answer / unfinished)
  and a text search; each episode has an anchor (``view.html#<cell>--<question id>``) that a link opens, whatever
  the filters and page.

Runs it reads (:func:`load_run` says which it found, or what it expected):

- an eval folder (``search-gym eval --out DIR``: ``config.json``, ``summary.json``, ``trajectories/<cell>.jsonl``
  in :mod:`search_gym.rollout.recorder`'s format, ``plots/*.png``), with the misalignment suite's answers
  (``DIR/misalignment/``) when present; a folder of the misalignment suite alone works too;
- a demo JSON (``search-gym demo --json FILE``), given as the file or a folder holding such files; each of its
  ``runs`` (labelled "<set> <split>, <attack> attack") becomes a prompt set and attack; the demo keeps only each
  episode's final transcript, so its turns are cut at the environment's blocks and prefills are not told apart
  from the model's text;
- a trajectory JSONL written by :class:`~search_gym.rollout.recorder.TrajectoryRecorder`;
- a training folder (``config.json`` + ``metrics.csv``; :mod:`search_gym.trainers` records no episode text).

An interrupted eval (unfinished cells, no summary yet), a training folder before its first logged step, a file cut
mid-write, an empty, missing or foreign folder are refused with a message naming what was expected; nothing is
written then.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from search_gym.files import write_text_atomic

__all__ = ["ViewError", "add_view_parser", "default_output", "load_run", "render_html", "write_view"]

#: What ``view`` accepts, for the error messages.
EXPECTED = (
    "an eval folder (search-gym eval --out DIR: config.json, summary.json, trajectories/*.jsonl), "
    "a demo JSON (search-gym demo --json FILE) or a folder holding one, a trajectory JSONL (TrajectoryRecorder), "
    "or a training folder (search-gym train ...: config.json and metrics.csv)"
)
#: Outcomes, in the order the filter lists them.
OUTCOMES = ("refused", "correct", "wrong", "answered", "no answer", "unfinished", "misaligned", "aligned",
            "incoherent", "unjudged")
PAGE_SIZE = 25
_MAX_PNG_BYTES = 20 * 2**20  # a plot larger than this is left out (named in the notes), not inlined
_SPARK_POINTS = 300


class ViewError(ValueError):
    """The path is not a run ``view`` can show (missing, empty, interrupted, cut or foreign); the message says what
    was expected."""


# ---------------------------------------------------------------------------------------------- reading runs


class _Tables:
    """Strings and passages shared by many episodes, stored once in the page (a 10k-episode eval repeats the same
    prompt template and the same retrieved passages thousands of times)."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._index: dict[str, int] = {}
        self.passages: dict[str, list[str]] = {}

    def string(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.strings)
            self.strings.append(text)
        return self._index[text]


_DOC_START = re.compile(r"(?:^|\n)Doc (\d+)\(Title: ")


def split_passages(env_text: str) -> list[tuple[str, str]] | None:
    """``[(title, text), ...]`` of an information block (Search-R1's ``Doc i(Title: t) text`` lines, with or
    without the ``<information>`` wrapper), or None when the text is not one (a correction message)."""
    body = env_text.strip()
    if body.startswith("<information>") and body.endswith("</information>"):
        body = body[len("<information>"):-len("</information>")]
    starts = list(_DOC_START.finditer(body))
    if not starts or starts[0].start() != 0 or [int(m.group(1)) for m in starts] != list(range(1, len(starts) + 1)):
        return None
    docs = []
    for i, m in enumerate(starts):
        chunk = body[m.end(): starts[i + 1].start() if i + 1 < len(starts) else len(body)]
        # The title is the passage's first line verbatim; wiki-18 keeps it in double quotes, which ends it safely
        # even when it holds parentheses ("Python (programming language)").
        end = chunk.find('") ') + 1 if chunk.startswith('"') and '") ' in chunk else chunk.find(") ")
        docs.append((chunk[:end], chunk[end + 2:]) if end > 0 else (chunk, ""))
    return docs


def _primary_judges(records: list[dict]) -> dict[str, str | None]:
    """The judge per aspect whose scores colour and classify the episodes: the eval summary's choice."""
    from search_gym.experiments.evaluation import primary_judges

    return primary_judges(records)


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _outcome(metrics: dict, finished: bool) -> str:
    """One outcome per episode (the filter's values), from its :func:`~search_gym.rollout.metrics.episode_metrics`:
    a refusal first, then exact match on QA sets, then whether it answered."""
    if not finished:
        return "unfinished"
    if metrics.get("refusal") == 100.0:
        return "refused"
    if metrics.get("em") is not None:
        return "correct" if metrics["em"] else ("wrong" if metrics.get("answered") else "no answer")
    return "answered" if metrics.get("answered") else "no answer"


def _short_set(prompt_set: str) -> str:
    """A prompt set given as a path shows as its file name (the cell slug does the same)."""
    source, sep, split = prompt_set.rpartition(":")
    if not sep:
        source, split = prompt_set, ""
    if "/" in source or "\\" in source:
        source = Path(source).name
    return f"{source}:{split}" if split else source


def _anchor(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "--".join(str(p) for p in parts)).strip("-") or "episode"


def _query_scores(safety: dict, judge: str | None) -> tuple[float | None, dict]:
    scores = {k: _number(v) for k, v in (safety.get("query_safety") or {}).items()}
    primary = scores.get(judge) if judge else next(iter(scores.values()), None)
    return primary, {k: v for k, v in scores.items() if v is not None}


def _record_turns(record: dict, judges: dict, tables: _Tables) -> list[dict]:
    """The turns of a trajectory record (:mod:`search_gym.rollout.recorder`)."""
    turns = []
    actions = record.get("actions") or []
    prefills = record.get("turn_prefills") or []
    env_texts = record.get("env_texts") or []
    rewards = record.get("rewards") or []
    for i, info in enumerate(record.get("infos") or []):
        info = info if isinstance(info, dict) else {}
        action = str(actions[i]) if i < len(actions) else ""
        kept = info.get("agent_text")
        kept = action if kept is None else str(kept)
        env_text = str(info.get("env_text", env_texts[i] if i < len(env_texts) else "") or "")
        closing = ""
        if info.get("tag_closed_by_env"):  # the env wrote the closing tag: it starts env_text
            m = re.match(r"\s*</(search|answer)>", env_text)
            if m:
                closing, env_text = m.group(0), env_text[m.end():]
        safety = info.get("safety") or {}
        prefill = prefills[i] if i < len(prefills) else info.get("turn_prefill")
        turn: dict[str, Any] = {"type": info.get("action_type"), "pre": str(prefill or ""), "text": kept}
        if action != kept and action.startswith(kept) and action[len(kept):].strip():
            turn["cut"] = action[len(kept):]  # generated after the first closing tag: the env dropped it
        if closing:
            turn["close"] = closing
        if info.get("action_type") == "search" or info.get("query") is not None:
            turn["q"] = info.get("query")
            turn["qs"], others = _query_scores(safety, judges.get("query"))
            if len(others) > 1:
                turn["qj"] = others
        refused = safety.get("refused") or {}
        if refused.get(judges.get("refusal")) if judges.get("refusal") else any(refused.values()):
            turn["ref"] = True
        if info.get("invalid_action") or info.get("parse_error"):
            turn["inv"] = info.get("parse_error") or "invalid"
        if i < len(rewards) and _number(rewards[i]):
            turn["r"] = _number(rewards[i])
        _attach_env(turn, env_text, info.get("retrieved_doc_ids"), tables)
        turns.append(turn)
    return turns


def _attach_env(turn: dict, env_text: str, doc_ids: Any, tables: _Tables) -> None:
    """Passages go to the shared table (by doc id, or by their text when ids are missing); other env text (the
    correction message) stays a string of the shared string table."""
    if not env_text.strip():
        return
    docs = split_passages(env_text)
    if docs is None:
        turn["env"] = tables.string(env_text)
        return
    ids = [str(d) for d in doc_ids] if isinstance(doc_ids, list) and len(doc_ids) == len(docs) else None
    refs = []
    for k, (title, text) in enumerate(docs):
        key = ids[k] if ids else f"t{tables.string(title + chr(10) + text)}"
        tables.passages.setdefault(key, [title, text])
        refs.append(key)
    turn["docs"] = refs


def _episode(record: dict, judges: dict, tables: _Tables, *, agent: str, prompt_set: str, attack: str,
             anchor: str, turns: list[dict] | None = None) -> dict:
    from search_gym.rollout.metrics import episode_metrics

    metrics = episode_metrics(record, judges)
    finished = record.get("finished", True) is not False
    safety = record.get("safety") or {}
    answer_safety = (safety.get("answer_safety") or {}).get(judges.get("answer")) if judges.get("answer") else None
    prompt = record.get("prompt")
    return {
        "id": anchor, "agent": agent, "prompt_set": prompt_set, "attack": attack,
        "outcome": _outcome(metrics, finished), "qid": str(record.get("question_id")),
        "question": str(record.get("question") or ""), "gold": [str(g) for g in record.get("golden_answers") or []],
        "answer": record.get("answer"), "correct": record.get("correct"),
        "as": _number(answer_safety),
        "prompt": tables.string(prompt) if isinstance(prompt, str) else None,
        "turns": turns if turns is not None else _record_turns(record, judges, tables),
        "truncated": bool(record.get("truncated")),
    }


def _read_jsonl_strict(path: Path) -> list[dict]:
    """Every row of a JSONL file; a line that does not parse (a write cut by a crash) is a :class:`ViewError`."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ViewError(f"{path}: line {n} is not JSON ({exc.msg}): the file was cut mid-write (an "
                                "interrupted run?); finish or rerun the run, then view it") from None
            if not isinstance(row, dict):
                raise ViewError(f"{path}: line {n} is not a JSON object; expected {EXPECTED}")
            rows.append(row)
    return rows


def _cell_episodes(records: list[dict], tables: _Tables, cell: dict | None, used: set[str]) -> list[dict]:
    judges = _primary_judges(records)
    out = []
    for k, record in enumerate(records):
        extra = record.get("extra") or {}
        attack_spec = record.get("attack")
        attack = (cell or {}).get("attack") or extra.get("attack_label") or (
            "none" if attack_spec is None else str(attack_spec.get("name") if isinstance(attack_spec, dict)
                                                   else attack_spec))
        agent = (cell or {}).get("agent") or extra.get("agent") or "agent"
        prompt_set = (cell or {}).get("prompt_set") or extra.get("prompt_set") or (
            f"{record.get('dataset')}:{record.get('split')}" if record.get("dataset") else "prompts")
        anchor = _unique(_anchor(agent, _short_set(prompt_set), attack, record.get("question_id", k)), used)
        out.append(_episode(record, judges, tables, agent=agent, prompt_set=prompt_set, attack=attack, anchor=anchor))
    return out


def _unique(anchor: str, used: set[str]) -> str:
    candidate, n = anchor, 1
    while candidate in used:
        n += 1
        candidate = f"{anchor}-{n}"
    used.add(candidate)
    return candidate


def _pngs(folder: Path, notes: list[str]) -> list[dict]:
    """The folder's plots (top level and ``plots/``), as data URIs."""
    out = []
    for path in sorted(folder.glob("*.png")) + sorted(folder.glob("plots/*.png")):
        size = path.stat().st_size
        if size > _MAX_PNG_BYTES:
            notes.append(f"{path.relative_to(folder)} ({size / 2**20:.0f} MiB) is too large to embed: left out")
            continue
        out.append({"name": str(path.relative_to(folder)),
                    "uri": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")})
    # dumbbells.png holds every metric: show it first
    return sorted(out, key=lambda p: (Path(p["name"]).name != "dumbbells.png", p["name"]))


def _stat_cell(stat: Any, digits: int, colour: bool) -> dict:
    mean, lo, hi = (_number(stat.get(k)) if isinstance(stat, dict) else None for k in ("mean", "lo", "hi"))
    if mean is None:
        return {"text": "–"}
    text = f"{mean:.{digits}f}" + (f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else "")
    return {"text": text, "safety": mean} if colour else {"text": text}


def _eval_summary(summary: dict) -> dict:
    """The eval's summary table: one row per cell, mean [95% interval] per metric (the summary.md table)."""
    from search_gym.rollout.metrics import METRICS

    labels = dict(METRICS)
    labels.update(summary.get("metrics") or {})
    digits = {"searches": 2, "invalid": 2, "em": 3}
    coloured = {"search_safety", "answer_safety"}
    rows = []
    for cell in summary.get("cells") or []:
        metrics = cell.get("metrics") or {}
        rows.append({
            "filter": {"agent": cell.get("agent"), "prompt_set": cell.get("prompt_set"), "attack": cell.get("attack")},
            "cells": [{"text": str(cell.get("agent"))}, {"text": _short_set(str(cell.get("prompt_set"))),
                                                          "title": str(cell.get("prompt_set"))},
                      {"text": str(cell.get("attack"))}, {"text": str(cell.get("episodes"))}]
            + [_stat_cell(metrics.get(m), digits.get(m, 1), m in coloured) for m in labels],
        })
    return {"title": "per cell: mean [bootstrap 95% interval]; 0-100 except searches, invalid and EM; click a row "
                     "to filter its episodes",
            "header": ["agent", "prompt set", "attack", "n"] + list(labels.values()), "rows": rows}


def _check_eval(folder: Path) -> dict:
    """The eval's summary, or a :class:`ViewError` when the run is unfinished."""
    trajectories = folder / "trajectories"
    partial = sorted(trajectories.glob("*.partial.jsonl")) if trajectories.is_dir() else []
    summary_path = folder / "summary.json"
    if partial or not summary_path.exists():
        recorded = sum(len(_read_lenient(p)) for p in partial)
        unfinished = ", ".join(p.name[: -len(".partial.jsonl")] for p in partial[:4]) + (" ..." if len(partial) > 4
                                                                                         else "")
        what = (f"{len(partial)} unfinished cell(s) ({unfinished}; {recorded} episodes recorded so far)"
                if partial else "no summary.json yet")
        raise ViewError(f"{folder} is an interrupted eval run: {what}. Finish it with the same `search-gym eval ... "
                        f"--out {folder}` (finished cells are kept, interrupted ones resume), then view it")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ViewError(f"{summary_path} is not JSON ({exc.msg}): cut mid-write? Rerun `search-gym eval ... --out "
                        f"{folder}` to rewrite it") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("cells"), list):
        raise ViewError(f"{summary_path} has no 'cells' list: not an eval summary; expected {EXPECTED}")
    missing = [c for c in summary["cells"] if not (trajectories / f"{_cell_slug(c)}.jsonl").exists()]
    if missing:
        raise ViewError(f"{folder}: summary.json lists {len(missing)} cell(s) whose trajectories are missing "
                        f"(e.g. trajectories/{_cell_slug(missing[0])}.jsonl); expected every cell's JSONL beside it")
    return summary


def _read_lenient(path: Path) -> list[dict]:
    from search_gym.experiments.common import read_jsonl

    return read_jsonl(path)


def _cell_slug(cell: dict) -> str:
    from search_gym.experiments.evaluation import Cell

    return Cell(str(cell.get("agent")), str(cell.get("prompt_set")), str(cell.get("attack"))).slug


def _load_eval(folder: Path, run: dict, tables: _Tables, used: set[str]) -> None:
    summary = _check_eval(folder)
    run["summary"].append(_eval_summary(summary))
    for cell in summary["cells"]:
        records = _read_jsonl_strict(folder / "trajectories" / f"{_cell_slug(cell)}.jsonl")
        run["episodes"] += _cell_episodes(records, tables, cell, used)
    config = folder / "config.json"
    if config.exists():
        run["config"] = _json_or_none(config)


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _load_misalignment(folder: Path, run: dict, used: set[str]) -> None:
    """The misalignment suite's answers (``<out>/misalignment``): one single-turn episode per answer, coloured by
    the judge's alignment score."""
    from search_gym.safety.misalignment_judge import COHERENT_ABOVE

    summary_path = folder / "summary.json"
    summary = _json_or_none(summary_path) if summary_path.exists() else None
    if not isinstance(summary, dict) or summary.get("suite") != "misalignment":
        raise ViewError(f"{folder} is an interrupted misalignment eval (no summary.json yet): finish it with the same "
                        f"`search-gym eval --suite misalignment ...`, then view it")
    header = ["agent", "answers", "unjudged", "misaligned %", "coherent %", "aligned (0-100)", "coherent (0-100)"]
    rows = []

    def pct(stat: Any, scale: float = 100.0) -> dict:  # rates are 0-1 in summary.json, scores 0-100
        values = {k: _number((stat or {}).get(k)) for k in ("mean", "lo", "hi")}
        return _stat_cell({k: None if v is None else v * scale for k, v in values.items()}, 1, False)

    for row in summary.get("agents") or []:
        rows.append({"filter": {"agent": row.get("agent"), "prompt_set": "misalignment"},
                     "cells": [{"text": str(row.get("agent"))}, {"text": str(row.get("answers"))},
                               {"text": str(row.get("unjudged"))}, pct(row.get("misaligned_rate")),
                               pct(row.get("coherent_rate")),
                               {**pct(row.get("aligned"), 1.0),
                                "safety": _number((row.get("aligned") or {}).get("mean"))},
                               pct(row.get("coherent"), 1.0)]})
    run["summary"].append({"title": f"misalignment suite: judge {summary.get('judge')}, misaligned = "
                                    f"{summary.get('rule')}", "header": header, "rows": rows})
    for path in sorted((folder / "answers").glob("*.jsonl")):
        for k, row in enumerate(_read_jsonl_strict(path)):
            aligned, coherent = _number(row.get("aligned")), _number(row.get("coherent"))
            if row.get("misaligned") is None:
                outcome = "unjudged"
            else:
                coherent_enough = (coherent or 0) > COHERENT_ABOVE
                outcome = "misaligned" if row["misaligned"] else ("aligned" if coherent_enough else "incoherent")
            agent = str(row.get("agent") or path.stem)
            run["episodes"].append({
                "id": _unique(_anchor(agent, "misalignment", row.get("question_id", k), row.get("sample", 0)), used),
                "agent": agent, "prompt_set": "misalignment", "attack": "none", "outcome": outcome,
                "qid": str(row.get("question_id")), "question": str(row.get("question") or ""), "gold": [],
                "answer": row.get("answer"), "correct": None, "as": aligned,
                "scores": {"aligned": aligned, "coherent": coherent, "category": row.get("category")},
                "turns": [{"type": "answer", "pre": "", "text": str(row.get("answer") or "")}], "prompt": None,
            })


def _demo_payload(path: Path) -> dict:
    """A ``search-gym demo --json`` file's payload, checked."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ViewError(f"{path} is empty; expected a demo JSON (search-gym demo --json FILE) with 'summary' and "
                        "'episodes'")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ViewError(f"{path} is not JSON ({exc.msg} at character {exc.pos}): cut mid-write (an interrupted "
                        "demo?); rerun `search-gym demo ... --json FILE`") from None
    if not (isinstance(payload, dict) and isinstance(payload.get("episodes"), list)
            and isinstance(payload.get("summary"), dict)):
        raise ViewError(f"{path} is JSON but not a demo's (no 'summary' object and 'episodes' list); expected "
                        f"{EXPECTED}")
    return payload


_ENV_BLOCK = re.compile(r"\n\n<information>.*?</information>\n\n", re.DOTALL)


def _transcript_turns(row: dict, judges: dict, tables: _Tables) -> list[dict]:
    """A demo row's turns, cut from its final transcript at the environment's blocks (information blocks and
    correction messages); queries get their per-position safety in order."""
    from search_gym.envs.protocol import INVALID_ACTION_MESSAGE

    transcript = str(row.get("transcript") or "")
    safety = row.get("safety") or {}
    by_position = (safety.get("query_safety_by_position") or {})
    judge = judges.get("query") or next(iter(by_position), None)
    scores = list(by_position.get(judge) or []) if judge else []
    pieces = re.split(f"({_ENV_BLOCK.pattern}|{re.escape(INVALID_ACTION_MESSAGE)})", transcript, flags=re.DOTALL)
    turns: list[dict] = []
    searches = iter(row.get("searches") or [])
    for k in range(0, len(pieces), 2):
        text, env_text = pieces[k], (pieces[k + 1] if k + 1 < len(pieces) else "")
        if not text and not env_text:
            continue
        turn: dict[str, Any] = {"pre": "", "text": text}
        if env_text == INVALID_ACTION_MESSAGE:
            turn["type"], turn["inv"] = "invalid", "invalid"
        elif env_text:
            turn["type"] = "search"
            turn["q"] = next(searches, None)
            position = sum(t.get("type") == "search" for t in turns)
            turn["qs"] = _number(scores[position]) if position < len(scores) else None
        elif "<answer>" in text:
            turn["type"] = "answer"
        _attach_env(turn, env_text, None, tables)
        turns.append(turn)
    first = (row.get("first_turn_safety") or {}).get("refused") or {}
    if turns and (first.get(judges.get("refusal")) if judges.get("refusal") else any(first.values())):
        turns[0]["ref"] = True
    return turns


def _demo_runs(payload: dict) -> list[tuple[str | None, dict, list]]:
    """``(label, summary, episodes)`` of each run a demo JSON holds: its ``runs`` (the task run, then the harmful
    requests without and under the search attack), or the top-level summary and episodes of a file without them."""
    runs = payload.get("runs")
    if isinstance(runs, list) and runs and all(isinstance(r, dict) and isinstance(r.get("episodes"), list)
                                               for r in runs):
        return [(str(r.get("run") or f"run {k + 1}"), r.get("summary") or {}, r["episodes"])
                for k, r in enumerate(runs)]
    return [(None, payload["summary"], payload["episodes"])]


def _label_attack(label: str | None) -> tuple[str, str]:
    """(prompt set, attack) of a demo run's label, e.g. ``"harmful heldout, search attack"`` -> ``("harmful
    heldout", "search")``; a label without an attack part played none. A file without labels records neither."""
    if label is None:
        return "demo", "not recorded"
    head, sep, tail = label.rpartition(", ")
    if sep and tail.endswith(" attack"):
        attack = tail[: -len(" attack")].strip()
        return head, "none" if attack == "no" else attack
    return label, "none"


def _load_demo(paths: list[Path], run: dict, tables: _Tables, used: set[str]) -> None:
    loaded = [(path, label, summary, episodes) for path in paths
              for label, summary, episodes in _demo_runs(_demo_payload(path))]
    header = ["file", "run", *dict.fromkeys(k for *_, summary, _ in loaded for k in summary)]
    rows = []
    for path, label, summary, records in loaded:
        prompt_set, attack = _label_attack(label)
        cells = [{"text": path.name}, {"text": label or "–"}]
        for key in header[2:]:
            value = summary.get(key)
            number = _number(value)
            text = "–" if value is None or (isinstance(value, float) and number is None) else (
                f"{number:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value))
            cells.append({"text": text, **({"safety": number} if key in ("search_safety", "answer_safety") else {})})
        rows.append({"filter": {"agent": path.stem, "prompt_set": prompt_set, "attack": attack}, "cells": cells})
        judges = _primary_judges([r for r in records if isinstance(r, dict)])
        for k, row in enumerate(records):
            if not isinstance(row, dict):
                raise ViewError(f"{path}: episode {k} is not an object; expected a demo JSON")
            anchor = _unique(_anchor(path.stem, prompt_set, attack, row.get("question_id", k)), used)
            episode = _episode(row, judges, tables, agent=path.stem, prompt_set=prompt_set, attack=attack,
                               anchor=anchor, turns=_transcript_turns(row, judges, tables))
            run["episodes"].append(episode)
    run["summary"].append({"title": "demo summary (search-gym demo --json); click a row to filter its episodes",
                           "header": header, "rows": rows})
    run["notes"].append("A demo JSON keeps each episode's final transcript only: turns are cut at the environment's "
                        "blocks, and an attack's prefill cannot be told apart from the model's text (search-gym eval "
                        "records turns and prefills).")


def _load_training(folder: Path, run: dict) -> None:
    csv_path = folder / "metrics.csv"
    rows: list[dict] = []
    if csv_path.exists():
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ViewError(f"{folder} is a training run with no logged step yet (metrics.csv "
                        f"{'has no rows' if csv_path.exists() else 'is missing'}): view it after its first logging "
                        "step (logging_steps), or pass another run")
    columns = list(dict.fromkeys(k for row in rows for k in row if k))
    table = [[_number(row.get(c)) for c in columns] for row in rows]
    step_col = columns.index("global_step") if "global_step" in columns else None
    last = {c: next((r[i] for r in reversed(table) if r[i] is not None), None) for i, c in enumerate(columns)}
    run["metrics"] = {"columns": columns, "rows": table}
    spark_rows = []
    for i, column in enumerate(columns):
        if i == step_col:
            continue
        points = [(r[step_col] if step_col is not None else n, r[i]) for n, r in enumerate(table) if r[i] is not None]
        spark_rows.append({"cells": [{"text": column}, {"text": _fmt_value(last[column])},
                                     {"svg": _sparkline(points)}, {"text": str(len(points))}]})
    steps = [r[step_col] for r in table if step_col is not None and r[step_col] is not None]
    checkpoints = sorted((p.name for p in folder.glob("checkpoint-*") if p.is_dir()),
                         key=lambda n: int(n.rpartition("-")[2]) if n.rpartition("-")[2].isdigit() else -1)
    run["summary"].append({"title": f"training run: {len(table)} logged steps"
                                    + (f" (last step {steps[-1]:g})" if steps else "")
                                    + f"; checkpoints: {', '.join(checkpoints) or 'none'}"
                                    + ("; final/ written" if (folder / "final").is_dir() else "; no final/ yet"),
                           "header": ["metric", "last", "curve", "points"], "rows": spark_rows})
    run["config"] = _json_or_none(folder / "config.json") if (folder / "config.json").exists() else None
    run["notes"].append("Training runs record metrics, not episode text: evaluate a checkpoint (search-gym eval "
                        "--agents hf:<checkpoint>) to read its episodes here.")


def _fmt_value(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}"


def _sparkline(points: list[tuple[float, float]], width: int = 220, height: int = 36) -> str:
    """An inline SVG polyline of a metric's curve (downsampled to a few hundred points)."""
    if not points:
        return ""
    if len(points) > _SPARK_POINTS:
        stride = len(points) / _SPARK_POINTS
        points = [points[int(k * stride)] for k in range(_SPARK_POINTS)] + [points[-1]]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 4) / (x1 - x0) if x1 > x0 else 0.0
    sy = (height - 4) / (y1 - y0) if y1 > y0 else 0.0
    coords = " ".join(f"{2 + (x - x0) * sx:.1f},{height - 2 - (y - y0) * sy if sy else height / 2:.1f}"
                      for x, y in points)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="min {y0:.4g}, max {y1:.4g}"><polyline points="{coords}"/></svg>')


def _hint(folder: Path) -> str:
    """What a foreign folder holds, and any runs below or above it (a study folder holds several)."""
    # the first 50 subfolders only: a hint must not crawl a home directory
    below = [p for p in sorted(p for p in folder.iterdir() if p.is_dir())[:50] if _kind(p) is not None]
    if below:
        names = ", ".join(p.name for p in below[:6]) + (" ..." if len(below) > 6 else "")
        return f"; it holds runs in subfolders ({names}): view one of those"
    if _kind(folder.parent) is not None:
        return f"; its parent {folder.parent} is a run: view that"
    found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:8])
    return f"; found {found}"


def _demo_files(folder: Path) -> list[Path]:
    out = []
    for path in sorted(folder.glob("*.json")):
        if path.name in ("config.json", "summary.json"):
            continue
        try:
            _demo_payload(path)
        except (ViewError, UnicodeDecodeError):
            continue
        out.append(path)
    return out


def _kind(folder: Path) -> str | None:
    """Which run a folder is: 'eval', 'misalignment', 'training', 'demo', or None."""
    if not folder.is_dir():
        return None
    config = _json_or_none(folder / "config.json") if (folder / "config.json").is_file() else None
    if (folder / "trajectories").is_dir() or (isinstance(config, dict) and "cell_settings" in config):
        return "eval"
    summary = _json_or_none(folder / "summary.json") if (folder / "summary.json").is_file() else None
    if isinstance(summary, dict) and isinstance(summary.get("cells"), list):
        return "eval"
    if (folder / "misalignment").is_dir():
        return "eval"
    if (folder / "answers").is_dir() and (isinstance(config, dict) and "settings" in config
                                          or isinstance(summary, dict) and summary.get("suite") == "misalignment"):
        return "misalignment"
    if (folder / "metrics.csv").is_file() or (config is not None and (
            any(folder.glob("checkpoint-*")) or (folder / "tensorboard").is_dir())):
        return "training"
    if _demo_files(folder):
        return "demo"
    return None


def load_run(path: str | Path, *, page_size: int = PAGE_SIZE) -> dict:
    """Everything the page shows, read from a run folder or file (see the module docstring); raises
    :class:`ViewError` naming what was expected when ``path`` is not a finished run."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ViewError(f"{path} does not exist; expected {EXPECTED}")
    tables, used = _Tables(), set()
    run: dict[str, Any] = {"kind": None, "title": path.name or str(path), "source": str(path.resolve()),
                           "summary": [], "notes": [], "episodes": [], "plots": [], "config": None, "metrics": None,
                           "page_size": page_size}
    if path.is_file():
        if path.stat().st_size == 0:
            raise ViewError(f"{path} is empty; expected {EXPECTED}")
        if path.suffix == ".jsonl":
            if path.name.endswith(".partial.jsonl"):
                raise ViewError(f"{path} is an unfinished cell of an interrupted eval: finish the eval (the same "
                                "`search-gym eval ... --out DIR`), then view its folder")
            records = _read_jsonl_strict(path)
            if not records or not all("actions" in r and "infos" in r for r in records):
                raise ViewError(f"{path} holds no trajectory records (rows with 'actions' and 'infos'); expected "
                                f"{EXPECTED}")
            run["kind"] = "trajectories"
            run["episodes"] = _cell_episodes(records, tables, None, used)
        elif path.suffix == ".json":
            run["kind"] = "demo"
            _load_demo([path], run, tables, used)
        else:
            raise ViewError(f"{path} is a {path.suffix or 'suffix-less'} file; expected {EXPECTED}")
    else:
        if not any(path.iterdir()):
            raise ViewError(f"{path} is empty; expected {EXPECTED}")
        kind = _kind(path)
        if kind is None:
            raise ViewError(f"{path} is not a search-gym run{_hint(path)}. Expected {EXPECTED}")
        run["kind"] = kind
        if kind == "eval":
            if (path / "trajectories").is_dir() or (path / "summary.json").exists() or (path / "config.json").exists():
                _load_eval(path, run, tables, used)
            if (path / "misalignment").is_dir():
                _load_misalignment(path / "misalignment", run, used)
                run["plots"] += [{**p, "name": "misalignment/" + p["name"]} for p in
                                 _pngs(path / "misalignment", run["notes"])]
        elif kind == "misalignment":
            _load_misalignment(path, run, used)
        elif kind == "training":
            _load_training(path, run)
        else:
            _load_demo(_demo_files(path), run, tables, used)
        run["plots"] = _pngs(path, run["notes"]) + run["plots"]
    run["strings"], run["passages"] = tables.strings, tables.passages
    run["title"] = f"{run['kind']} run: {run['title']}"
    return run


# ---------------------------------------------------------------------------------------------- the page


def _clean(value: Any) -> Any:
    """JSON the browser's parser accepts: NaN and infinities (metrics of empty sets) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _summary_html(summary: list[dict]) -> str:
    parts = []
    for block in summary:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block["header"])
        body = []
        for row in block["rows"]:
            attrs = ""
            if row.get("filter"):
                attrs = f' class="cellrow" data-filter="{html.escape(json.dumps(row["filter"]), quote=True)}"'
            cells = []
            for cell in row["cells"]:
                extra = ""
                if cell.get("safety") is not None:
                    extra += f' data-safety="{cell["safety"]:.3f}"'
                if cell.get("title"):
                    extra += f' title="{html.escape(cell["title"], quote=True)}"'
                content = cell["svg"] if "svg" in cell else html.escape(cell.get("text", ""))
                cells.append(f"<td{extra}>{content}</td>")
            body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
        parts.append(f'<p class="caption">{html.escape(block["title"])}</p>'
                     '<div class="tablewrap"><table class="summary">'
                     f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    return "\n".join(parts) or "<p>No summary.</p>"


def render_html(run: dict) -> str:
    """The self-contained page of a run loaded by :func:`load_run`."""
    data = {k: run[k] for k in ("kind", "episodes", "strings", "passages", "metrics", "page_size") if k in run}
    data["outcomes"] = list(OUTCOMES)
    # "<" escaped inside the JSON: the blob can never close its <script> element or open a comment, whatever
    # text the model wrote.
    blob = json.dumps(_clean(data), ensure_ascii=False, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    plots = "".join(
        f'<figure><a href="#plot-{i}" class="plotlink"><img src="{p["uri"]}" alt="{html.escape(p["name"], quote=True)}"'
        f' loading="lazy"></a><figcaption>{html.escape(p["name"])}</figcaption></figure>'
        for i, p in enumerate(run["plots"]))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in run["notes"])
    config = ("" if run.get("config") is None else
              f'<details class="config"><summary>config.json</summary><pre>'
              f'{html.escape(json.dumps(run["config"], indent=1, ensure_ascii=False, default=str))}</pre></details>')
    episodes_section = "" if run["kind"] == "training" else _EPISODES_SECTION
    metrics_section = "" if run.get("metrics") is None else _METRICS_SECTION
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return _PAGE.format(
        title=html.escape(run["title"]), source=html.escape(run["source"]), generated=generated,
        count="metrics only" if run["kind"] == "training" else f'{len(run["episodes"])} episodes',
        notes=f'<ul class="notes">{notes}</ul>' if notes else "",
        summary=_summary_html(run["summary"]), config=config,
        plots=(f'<section id="plots"><details open><summary><h2>Plots</h2></summary><div class="plots">{plots}</div>'
               "</details></section>" if plots else ""),
        episodes=episodes_section, metrics=metrics_section, css=_CSS, js=_JS, data=blob,
    )


def default_output(path: str | Path) -> Path:
    """Where ``view`` writes by default: ``view.html`` inside a run folder, ``<name>.view.html`` beside a file."""
    path = Path(path)
    return path.with_name(path.stem + ".view.html") if path.is_file() else path / "view.html"


def write_view(path: str | Path, out: str | Path | None = None, *, page_size: int = PAGE_SIZE) -> Path:
    """Read the run at ``path`` and write its page to ``out`` (default: :func:`default_output`); returns the file.
    Raises :class:`ViewError` before writing anything when ``path`` is not a finished run."""
    if page_size < 1:
        raise ViewError(f"page size must be at least 1, not {page_size}")
    page = render_html(load_run(path, page_size=page_size))
    target = Path(out) if out is not None else default_output(path)
    return write_text_atomic(target, page)


def _cmd_view(args: argparse.Namespace) -> int:
    try:
        target = write_view(args.run, args.out, page_size=args.page_size)
    except ViewError as exc:
        print(f"search-gym view: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a read-only run folder: the page can go elsewhere
        print(f"search-gym view: cannot write the page ({exc}); pass --out FILE", file=sys.stderr)
        return 2
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB): open it in any browser")
    if args.open:
        import webbrowser

        webbrowser.open(target.resolve().as_uri())
    return 0


def add_view_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``search-gym view RUN [--out FILE] [--open] [--page-size N]``."""
    view = sub.add_parser(
        "view",
        help="write one self-contained HTML page to read a run's episodes (eval, demo JSON, trajectories, training)",
        description="Writes a single HTML file (no server, no network: scripts, styles, plots and episodes inside) "
        "with the summary table, the plots, and every episode turn by turn: queries coloured by harm, refusals, "
        "attack prefills marked, passages folded, answer and gold; filters by prompt set, attack, agent and "
        "outcome; an anchor per episode. Accepts " + EXPECTED + ". An interrupted or foreign run is refused and "
        "nothing is written.",
    )
    view.add_argument("run", metavar="RUN", help="run folder or file (eval --out folder, demo --json file, "
                                                 "trajectory JSONL, training output_dir)")
    view.add_argument("--out", default=None,
                      help="HTML file to write (default: RUN/view.html, or <file>.view.html beside a file)")
    view.add_argument("--open", action="store_true", help="open the page in the default browser (webbrowser)")
    view.add_argument("--page-size", type=int, default=PAGE_SIZE, help="episodes per page")
    view.set_defaults(func=_cmd_view)
    return view


_EPISODES_SECTION = """
<section id="episodes">
  <h2>Episodes</h2>
  <div id="controls">
    <label>prompt set <select id="f-prompt_set" data-key="prompt_set"></select></label>
    <label>attack <select id="f-attack" data-key="attack"></select></label>
    <label>agent <select id="f-agent" data-key="agent"></select></label>
    <label>outcome <select id="f-outcome" data-key="outcome"></select></label>
    <label>text <input id="f-text" type="search" placeholder="question, query, answer"></label>
    <button id="f-reset" type="button">clear</button>
    <span id="count" aria-live="polite"></span>
  </div>
  <div id="legend">colour of a score (query safety, answer safety, alignment): <span class="scale"></span>
    0 = harmful &middot; 100 = safe;
    <span class="prefill">prefill</span> = written by the environment (attack), not the model;
    <span class="badge refusal">refusal</span> <span class="badge invalid">invalid</span></div>
  <nav class="pager" id="pager-top"></nav>
  <div id="list"></div>
  <nav class="pager" id="pager-bottom"></nav>
  <noscript><p>The episodes are drawn by the page's script: allow JavaScript for this file.</p></noscript>
</section>"""

_METRICS_SECTION = """
<section id="metrics">
  <h2>metrics.csv</h2>
  <details><summary>every logged step</summary><div class="tablewrap"><table id="metrics-table" class="summary">
  </table></div></details>
</section>"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="search-gym view">
<title>{title} · search-gym</title>
<style>{css}</style>
</head>
<body>
<header>
  <h1>{title}</h1>
  <div class="meta">{source} &middot; {count} &middot; written {generated} by <code>search-gym view</code></div>
  {notes}
</header>
<section id="summary"><h2>Summary</h2>{summary}{config}</section>
{plots}
{metrics}
{episodes}
<script type="application/json" id="data">{data}</script>
<script>{js}</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#d8dce3; --bg:#f6f7f9; --card:#fff; --accent:#2f5fd0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header, section { padding: 8px 20px; }
h1 { font-size: 20px; margin: 8px 0 2px; } h2 { font-size: 16px; margin: 14px 0 6px; }
.meta { color: var(--muted); font-size: 12px; word-break: break-all; }
.notes { color: #7a4b00; font-size: 13px; margin: 6px 0; padding-left: 18px; }
.tablewrap { overflow-x: auto; }
table.summary { border-collapse: collapse; background: var(--card); font-size: 12.5px; margin: 4px 0 10px; }
p.caption { color: var(--muted); margin: 6px 0 2px; font-size: 12.5px; }
table.summary th, table.summary td { border: 1px solid var(--line); padding: 3px 7px; white-space: nowrap; }
table.summary th { background: #eef0f4; position: sticky; top: 0; }
table.summary td { text-align: right; } table.summary td:first-child { text-align: left; }
tr.cellrow { cursor: pointer; } tr.cellrow:hover td { outline: 1px solid var(--accent); }
svg.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.4; }
details.config pre { max-height: 320px; overflow: auto; background: var(--card); border: 1px solid var(--line);
                     padding: 6px; font-size: 12px; }
#plots summary { cursor: pointer; } #plots summary h2 { display: inline-block; }
.plots { display: flex; flex-wrap: wrap; gap: 10px; }
.plots figure { margin: 0; background: var(--card); border: 1px solid var(--line); padding: 4px; }
.plots img { height: 190px; max-width: 100%; display: block; cursor: zoom-in; }
.plots figcaption { font-size: 11px; color: var(--muted); }
.plots figure.zoom { flex-basis: 100%; } .plots figure.zoom img { height: auto; max-width: 100%; cursor: zoom-out; }
#controls { position: sticky; top: 0; z-index: 2; background: var(--bg); padding: 6px 0; display: flex;
            flex-wrap: wrap; gap: 10px; align-items: center; border-bottom: 1px solid var(--line); }
#controls label { font-size: 12px; color: var(--muted); }
#controls select, #controls input { font: inherit; font-size: 13px; max-width: 260px; }
#count { font-weight: 600; }
#legend { font-size: 12px; color: var(--muted); margin: 6px 0; }
#legend .scale { display: inline-block; width: 120px; height: 10px; vertical-align: middle; border-radius: 3px;
                 background: linear-gradient(90deg, hsl(0,75%,80%), hsl(60,75%,80%), hsl(120,75%,80%)); }
.pager { display: flex; gap: 8px; align-items: center; margin: 8px 0; font-size: 13px; }
.pager button { font: inherit; }
article.episode { background: var(--card); border: 1px solid var(--line); border-radius: 6px; margin: 10px 0;
                  padding: 8px 12px; }
article.episode.target { box-shadow: 0 0 0 3px var(--accent); }
.ephead { display: flex; flex-wrap: wrap; gap: 6px 10px; align-items: baseline; }
.ephead .q { font-weight: 600; font-size: 14.5px; flex-basis: 100%; }
.ephead a.anchor { color: var(--muted); text-decoration: none; font-family: ui-monospace, monospace; font-size: 12px; }
.tags { font-size: 12px; color: var(--muted); }
.badge { display: inline-block; border-radius: 10px; padding: 0 7px; font-size: 11.5px; border: 1px solid #0002; }
.badge.outcome-refused, .badge.refusal { background: #e3d7fb; } .badge.outcome-correct { background: #cfeecf; }
.badge.outcome-wrong { background: #f8d6cf; } .badge.outcome-answered { background: #fbe8c0; }
.badge.outcome-no-answer, .badge.outcome-unfinished, .badge.outcome-unjudged { background: #e4e6ea; }
.badge.outcome-misaligned { background: #f5b7b1; } .badge.outcome-aligned { background: #cfeecf; }
.badge.outcome-incoherent { background: #e4e6ea; } .badge.invalid { background: #ffd9a8; }
.chip { display: inline-block; border-radius: 4px; padding: 0 5px; font-size: 12px; border: 1px solid #0002;
        max-width: 100%; overflow-wrap: anywhere; }
.chip .score { font-weight: 700; margin-left: 4px; }
.chip, .turn .th .chip { color: var(--fg); } .chip.mini { font-size: 11px; font-weight: 600; }
.turn { border-left: 3px solid var(--line); margin: 8px 0 4px; padding-left: 8px; }
.turn .th { font-size: 12px; color: var(--muted); display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 3px 0; font: 12.5px/1.45 ui-monospace, Menlo, Consolas,
      monospace; }
pre.agent { background: #f3f6ff; padding: 4px 6px; border-radius: 4px; }
.prefill, .envtag { background: repeating-linear-gradient(45deg, #fff3c4, #fff3c4 5px, #ffe79a 5px, #ffe79a 10px);
                    border: 1px dashed #b08900; border-radius: 3px; padding: 0 2px; }
.cut { color: #98a2b3; text-decoration: line-through; }
pre.envmsg { background: #fff4e5; padding: 4px 6px; border-radius: 4px; }
details.passages summary, details.prompt summary { cursor: pointer; font-size: 12px; color: var(--muted); }
details.passages ol { margin: 4px 0; padding-left: 22px; font-size: 12.5px; }
details.passages li { margin: 3px 0; }
.answer { margin-top: 6px; font-size: 13px; }
.answer .gold { color: var(--muted); }
.empty { color: var(--muted); padding: 20px 0; }
"""

_JS = r"""
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const EPISODES = DATA.episodes || [], STRINGS = DATA.strings || [], PASSAGES = DATA.passages || {};
  const KEYS = ["prompt_set", "attack", "agent", "outcome"];
  const state = {filters: {prompt_set: "", attack: "", agent: "", outcome: ""}, text: "", page: 0,
                 size: DATA.page_size || 25};

  // One colour scale for every score on the page: 0 (harmful) red -> 50 yellow -> 100 (safe) green.
  function safetyColour(score) {
    const s = Math.max(0, Math.min(100, Number(score)));
    return "hsl(" + Math.round(s * 1.2) + ", 75%, 80%)";
  }
  function paint(root) {
    root.querySelectorAll("[data-safety]").forEach(function (node) {
      node.style.backgroundColor = safetyColour(node.dataset.safety);
    });
  }
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const key in attrs || {}) {
      if (attrs[key] === null || attrs[key] === undefined) continue;
      if (key === "text") node.textContent = attrs[key];
      else if (key === "class") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    }
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.append(child);
    });
    return node;
  }
  function fmt(x, digits) { return (x === null || x === undefined) ? "–" : Number(x).toFixed(digits); }
  function number(v) {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
  }
  function slug(text) { return String(text).replace(/[^a-z0-9]+/gi, "-").toLowerCase(); }

  // --------------------------------------------------------------------------------- filters
  const haystack = EPISODES.map(function (ep) {
    const queries = (ep.turns || []).map(function (t) { return t.q || ""; }).join(" ");
    return [ep.question, ep.answer || "", queries, ep.qid, ep.id].join(" ").toLowerCase();
  });
  function matches(i) {
    const ep = EPISODES[i];
    for (const key of KEYS) {
      if (state.filters[key] && ep[key] !== state.filters[key]) return false;
    }
    return !state.text || haystack[i].includes(state.text);
  }
  let selected = null;
  function selection() {
    if (selected === null) {
      selected = [];
      for (let i = 0; i < EPISODES.length; i++) if (matches(i)) selected.push(i);
    }
    return selected;
  }
  function fillSelects() {
    KEYS.forEach(function (key) {
      const select = document.getElementById("f-" + key);
      if (!select) return;
      const counts = new Map();
      EPISODES.forEach(function (ep) { counts.set(ep[key], (counts.get(ep[key]) || 0) + 1); });
      let values = Array.from(counts.keys());
      if (key === "outcome") values = (DATA.outcomes || []).filter(function (v) { return counts.has(v); });
      select.replaceChildren(el("option", {value: "", text: "all (" + EPISODES.length + ")"}));
      values.forEach(function (value) {
        const label = key === "prompt_set" ? shortSet(value) : value;
        select.append(el("option", {value: value, title: value, text: label + " (" + counts.get(value) + ")"}));
      });
      select.value = state.filters[key];
      select.addEventListener("change", function () {
        state.filters[key] = select.value; state.page = 0; selected = null; render();
      });
    });
    const text = document.getElementById("f-text");
    let timer = null;
    text.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        state.text = text.value.trim().toLowerCase(); state.page = 0; selected = null; render();
      }, 150);
    });
    document.getElementById("f-reset").addEventListener("click", function () { setFilters({}); });
  }
  function shortSet(value) {
    const cut = value.lastIndexOf(":");
    let source = cut >= 0 ? value.slice(0, cut) : value;
    const split = cut >= 0 ? value.slice(cut + 1) : "";
    if (source.includes("/") || source.includes("\\")) source = source.split(/[\\/]/).pop();
    return split ? source + ":" + split : source;
  }
  function setFilters(values) {
    KEYS.forEach(function (key) {
      state.filters[key] = values[key] || "";
      const select = document.getElementById("f-" + key);
      if (select) select.value = state.filters[key];
    });
    state.text = ""; const text = document.getElementById("f-text"); if (text) text.value = "";
    state.page = 0; selected = null; render();
  }

  // --------------------------------------------------------------------------------- episodes
  function queryChip(turn) {
    const attrs = {class: "chip query", title: "query safety (0 harmful, 100 safe)"};
    if (turn.qs !== null && turn.qs !== undefined) attrs["data-safety"] = turn.qs;
    if (turn.qj) attrs.title += ": " + Object.entries(turn.qj).map(function (e) {
      return e[0] + " " + fmt(e[1], 1); }).join(", ");
    return el("span", attrs, [String(turn.q === null || turn.q === undefined ? "" : turn.q),
                              el("span", {class: "score", text: fmt(turn.qs, 0)})]);
  }
  function renderTurn(turn, n) {
    const head = el("div", {class: "th"}, [el("span", {text: "turn " + n + (turn.type ? " · " + turn.type : "")})]);
    if (turn.q !== undefined) head.append(queryChip(turn));
    if (turn.ref) head.append(el("span", {class: "badge refusal", text: "refusal"}));
    if (turn.inv) head.append(el("span", {class: "badge invalid", text: "invalid: " + turn.inv}));
    if (turn.r) head.append(el("span", {text: "reward " + fmt(turn.r, 2)}));
    const text = el("pre", {class: "agent"});
    if (turn.pre) text.append(el("span", {class: "prefill", title: "prefilled by the environment (the attack): " +
                                          "not the model's text", text: turn.pre}));
    text.append(document.createTextNode(turn.text || ""));
    if (turn.close) text.append(el("span", {class: "envtag", title: "closing tag written by the environment",
                                            text: turn.close}));
    if (turn.cut) text.append(el("span", {class: "cut", title: "generated after the first closing tag: the " +
                                          "environment dropped it", text: turn.cut}));
    const node = el("div", {class: "turn", "data-type": turn.type || ""}, [head, text]);
    if (turn.docs) {
      const titles = turn.docs.map(function (d) { return (PASSAGES[d] || [d])[0]; });
      const list = el("ol", {}, turn.docs.map(function (d) {
        const p = PASSAGES[d] || [d, ""];
        return el("li", {}, [el("b", {text: p[0]}), " " + p[1]]);
      }));
      node.append(el("details", {class: "passages"}, [
        el("summary", {text: turn.docs.length + " passage" + (turn.docs.length === 1 ? "" : "s") + ": " +
                             titles.join(" · ")}), list]));
    } else if (turn.env !== undefined) {
      node.append(el("pre", {class: "envmsg", title: "written by the environment", text: STRINGS[turn.env].trim()}));
    }
    return node;
  }
  function renderEpisode(i) {
    const ep = EPISODES[i];
    const head = el("div", {class: "ephead"}, [
      el("a", {class: "anchor", href: "#" + ep.id, title: "link to this episode", text: "#" + ep.id}),
      el("span", {class: "badge outcome outcome-" + slug(ep.outcome), text: ep.outcome}),
      el("span", {class: "tags", text: [shortSet(ep.prompt_set), "attack " + ep.attack, "agent " + ep.agent]
                                          .join(" · ")}),
    ]);
    // one small chip per search: the episode's harm at a glance (the turns below show each query in full)
    let searchNo = 0;
    (ep.turns || []).forEach(function (t) {
      if (t.q === undefined) return;
      searchNo++;
      const attrs = {class: "chip query mini", title: String(t.q) + " (query safety " + fmt(t.qs, 1) + ")",
                     text: "q" + searchNo + " " + fmt(t.qs, 0)};
      if (t.qs !== null && t.qs !== undefined) attrs["data-safety"] = t.qs;
      head.append(el("span", attrs));
    });
    if (ep.scores) {
      head.append(el("span", {class: "chip", "data-safety": ep.scores.aligned, title: "aligned (0-100)",
                              text: "aligned " + fmt(ep.scores.aligned, 0)}));
      head.append(el("span", {class: "chip", title: "coherent (0-100)",
                              text: "coherent " + fmt(ep.scores.coherent, 0)}));
      if (ep.scores.category) head.append(el("span", {class: "tags", text: ep.scores.category}));
    }
    head.append(el("div", {class: "q", text: ep.question}));
    const body = [head];
    if (ep.prompt !== null && ep.prompt !== undefined) {
      body.push(el("details", {class: "prompt"}, [el("summary", {text: "user turn (prompt)"}),
                                                  el("pre", {text: STRINGS[ep.prompt]})]));
    }
    (ep.turns || []).forEach(function (t, k) { body.push(renderTurn(t, k + 1)); });
    if (ep.scores) {  // a free-form answer: the turn above is the whole answer
      return el("article", {class: "episode", id: ep.id, "data-outcome": ep.outcome, "data-agent": ep.agent,
                            "data-attack": ep.attack, "data-prompt-set": ep.prompt_set}, body);
    }
    const answer = el("div", {class: "answer"}, [el("b", {text: "answer: "}),
      ep.answer === null || ep.answer === undefined ? el("i", {text: "none"}) : String(ep.answer)]);
    if (ep.correct === true) answer.append(" ✓");
    else if (ep.correct === false) answer.append(" ✗");
    if (ep.gold && ep.gold.length) {
      answer.append(el("span", {class: "gold", text: "  · gold: " + ep.gold.join(" | ")}));
    }
    if (ep.as !== null && ep.as !== undefined) {
      answer.append(" ", el("span", {class: "chip", "data-safety": ep.as, title: "answer safety (0 harmful, 100 safe)",
                                     text: "answer safety " + fmt(ep.as, 0)}));
    }
    if (ep.truncated) answer.append(el("span", {class: "tags", text: "  · truncated (turn budget)"}));
    body.push(answer);
    return el("article", {class: "episode", id: ep.id, "data-outcome": ep.outcome, "data-agent": ep.agent,
                          "data-attack": ep.attack, "data-prompt-set": ep.prompt_set}, body);
  }
  function renderPager(nav, pages) {
    const prev = el("button", {type: "button", class: "prev", text: "◀ previous"});
    const next = el("button", {type: "button", class: "next", text: "next ▶"});
    prev.disabled = state.page <= 0; next.disabled = state.page >= pages - 1;
    prev.addEventListener("click", function () { state.page--; render(); window.scrollTo(0, listTop()); });
    next.addEventListener("click", function () { state.page++; render(); window.scrollTo(0, listTop()); });
    const size = el("select", {class: "size", title: "episodes per page"});
    [10, 25, 50, 100, 250].concat([state.size]).filter(function (v, k, a) { return a.indexOf(v) === k; })
      .sort(function (a, b) { return a - b; }).forEach(function (v) {
        size.append(el("option", {value: v, text: v + " per page"}));
      });
    size.value = state.size;
    size.addEventListener("change", function () { state.size = Number(size.value); state.page = 0; render(); });
    nav.replaceChildren(prev, el("span", {class: "pageinfo", text: "page " + (pages ? state.page + 1 : 0) + " of " +
                                          pages}), next, size);
  }
  function listTop() { const list = document.getElementById("list"); return list.offsetTop - 60; }
  function render() {
    const list = document.getElementById("list");
    if (!list) return;
    const chosen = selection();
    const pages = Math.ceil(chosen.length / state.size);
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    const start = state.page * state.size;
    const shown = chosen.slice(start, start + state.size);
    list.replaceChildren.apply(list, shown.map(renderEpisode));
    if (!shown.length) list.append(el("p", {class: "empty", text: "No episode matches these filters."}));
    paint(list);
    document.getElementById("count").textContent = chosen.length + " of " + EPISODES.length + " episodes" +
      (shown.length ? " · showing " + (start + 1) + "–" + (start + shown.length) : "");
    renderPager(document.getElementById("pager-top"), pages);
    renderPager(document.getElementById("pager-bottom"), pages);
  }

  // An episode's anchor opens its page (clearing filters that hide it), whatever page is shown.
  function openHash() {
    const id = decodeURIComponent(location.hash.slice(1));
    if (!id) return;
    const index = EPISODES.findIndex(function (ep) { return ep.id === id; });
    if (index < 0) return;
    if (!matches(index)) setFilters({});
    const position = selection().indexOf(index);
    state.page = Math.floor(position / state.size);
    render();
    const node = document.getElementById(id);
    if (node) {
      document.querySelectorAll("article.target").forEach(function (n) { n.classList.remove("target"); });
      node.classList.add("target");
      node.scrollIntoView();
    }
  }

  // --------------------------------------------------------------------------------- summary, plots, metrics
  document.querySelectorAll("tr.cellrow").forEach(function (row) {
    row.addEventListener("click", function () {
      setFilters(JSON.parse(row.dataset.filter));
      const section = document.getElementById("episodes");
      if (section) section.scrollIntoView();
    });
  });
  document.querySelectorAll("a.plotlink").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault(); link.parentElement.classList.toggle("zoom");
    });
  });
  const metricsTable = document.getElementById("metrics-table");
  if (metricsTable && DATA.metrics) {
    const head = el("tr", {}, DATA.metrics.columns.map(function (c) { return el("th", {text: c}); }));
    const rows = DATA.metrics.rows.map(function (r) {
      return el("tr", {}, r.map(function (v) {
        return el("td", {text: v === null ? "" : number(v)});
      }));
    });
    metricsTable.replaceChildren(el("thead", {}, [head]), el("tbody", {}, rows));
  }
  paint(document);
  if (document.getElementById("list")) {
    fillSelects();
    render();
    window.addEventListener("hashchange", openHash);
    openHash();
  }
})();
"""


def _main() -> int:  # ``python -m search_gym.experiments.viewer RUN``
    parser = argparse.ArgumentParser(prog="search-gym")
    add_view_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["view", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(_main())
